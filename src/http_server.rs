//! Serving a warp filter over plain TCP or TLS with the limits a public listener needs: warp
//! 0.4's own server has no request-head timeout, no idle timeout and no connection cap, and
//! its acceptor trait is sealed, so connections are accepted here and handed to hyper with the
//! filter as the service. Used for the REST API (HTTP or HTTPS) and secure WebSocket (MQTT).
//!
//! Limits: at most `max_connections`, shared fairly between sources (`broker::fair`): when all
//! are held, the oldest connection of the busiest source is closed for a newcomer if that
//! source holds more than `per_source` (else the newcomer is closed at once; counted, logged
//! once per burst); a TLS handshake and every request head must complete within
//! `header_timeout`, or within `OVER_SHARE_HEADER_TIMEOUT` for a connection whose source holds
//! more than its share; a connection on which nothing was read or written for `idle_timeout`
//! is closed (slowloris on a body, idle keep-alive).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;

pub type Routes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

/// Time and count limits of one HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// One source's share of `max_connections` (see the module's limits).
    pub per_source: usize,
}

/// The request-head (and TLS handshake) timeout of a connection whose source holds more than
/// its share: a flood of half-requests from one address is closed quickly.
pub const OVER_SHARE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a listener refused, for the logs and tests.
#[derive(Default, Debug)]
pub struct HttpCounters {
    pub refused_over_cap: AtomicU64,
    /// Connections closed to make room for another source's.
    pub shed_busiest: AtomicU64,
    pub closed_idle: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
}

/// Serves `routes` on `listener` (over TLS when `tls` is set) until `shutdown` completes;
/// requests in progress then finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    routes: Routes,
    limits: HttpLimits,
    counters: Arc<HttpCounters>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = broker::fair::FairSlots::new(limits.max_connections, limits.per_source);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut last_refusal_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or similar: wait instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let mut slot = match slots.acquire(peer) {
            broker::fair::Admitted::Free(s) => s,
            broker::fair::Admitted::Shed(s) => {
                counters.shed_busiest.fetch_add(1, Ordering::Relaxed);
                s
            }
            broker::fair::Admitted::Refused => {
                counters.refused_over_cap.fetch_add(1, Ordering::Relaxed);
                if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    last_refusal_log = Some(Instant::now());
                    tracing::warn!(
                        max = limits.max_connections,
                        "HTTP connection cap reached; closing new connections (http.max_connections)"
                    );
                }
                drop(tcp);
                continue;
            }
        };
        let (acceptor, routes, counters) = (acceptor.clone(), routes.clone(), counters.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let header_timeout = if slot.over_share() {
                limits.header_timeout.min(OVER_SHARE_HEADER_TIMEOUT)
            } else {
                limits.header_timeout
            };
            let activity = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let svc = WithPeer {
                inner: warp::service(routes),
                peer,
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let builder = builder.http1_only();
            let idle = idle_watch(activity.clone(), started, limits.idle_timeout);
            let result = match &acceptor {
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        h = tokio::time::timeout(header_timeout, acceptor.accept(tcp)) => h,
                        _ = slot.shed() => return,
                    };
                    let tls = match handshake {
                        Ok(Ok(s)) => {
                            counters.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                            s
                        }
                        Ok(Err(e)) => {
                            counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    let io = hyper_util::rt::TokioIo::new(Tracked::new(tls, activity, started));
                    let conn = watcher.watch(builder.serve_connection_with_upgrades(io, svc).into_owned());
                    tokio::select! { r = conn => Some(r), _ = idle => None, _ = slot.shed() => None }
                }
                None => {
                    let io = hyper_util::rt::TokioIo::new(Tracked::new(tcp, activity, started));
                    let conn = watcher.watch(builder.serve_connection_with_upgrades(io, svc).into_owned());
                    tokio::select! { r = conn => Some(r), _ = idle => None, _ = slot.shed() => None }
                }
            };
            match result {
                None => {
                    counters.closed_idle.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "HTTP connection closed: idle or incomplete request");
                }
                Some(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection ended with an error"),
                Some(Ok(())) => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Completes once nothing was read or written for `idle` (checked against the last activity).
async fn idle_watch(activity: Arc<AtomicU64>, started: Instant, idle: Duration) {
    let mut deadline = started + idle;
    loop {
        tokio::time::sleep_until(deadline.into()).await;
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        let next = last + idle;
        if next <= Instant::now() {
            return;
        }
        deadline = next;
    }
}

/// A stream that records when it last read or wrote (milliseconds since `started`).
struct Tracked<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl<S> Tracked<S> {
    fn new(inner: S, activity: Arc<AtomicU64>, started: Instant) -> Self {
        Tracked {
            inner,
            activity,
            started,
        }
    }
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Puts the peer's address into each request (`mgmt::Peer`), for both transports.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S, B> tower_service::Service<warp::http::Request<B>> for WithPeer<S>
where
    S: tower_service::Service<warp::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: warp::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(mgmt::Peer(self.peer));
        self.inner.call(req)
    }
}

/// Binds a TCP listener with the given accept backlog (the kernel caps it at somaxconn).
pub fn bind(addr: &str, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let std = broker::bind_listener(addr, backlog)?;
    tokio::net::TcpListener::from_std(std)
}
