//! The broker's listeners: binding, and the accept loops (TCP, TLS; WebSocket is `ws`).

use crate::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The broker's bound listeners (the caller binds them, so every address is known, and a
/// port that is taken fails, before anything starts).
pub struct Listeners {
    /// MQTT over TCP.
    pub mqtt: std::net::TcpListener,
    /// MQTT over WebSocket (path `/mqtt`).
    pub ws: Option<std::net::TcpListener>,
    /// MQTT over TLS, with its server configuration.
    pub mqtts: Option<(std::net::TcpListener, Arc<tokio_rustls::rustls::ServerConfig>)>,
}

impl Listeners {
    /// Binds the MQTT listener, and the WebSocket and TLS ones when given. `send_buffer`
    /// (bytes, 0: the kernel's autotuning) caps each connection's socket send buffer, which
    /// the accepted sockets inherit: a device that stops reading then holds that much of
    /// the kernel's memory, not megabytes, and the rest waits in its session's bounded queue.
    pub fn bind(
        mqtt: &str,
        ws: Option<&str>,
        mqtts: Option<(&str, Arc<tokio_rustls::rustls::ServerConfig>)>,
        backlog: u32,
        send_buffer: usize,
    ) -> Result<Listeners, BrokerError> {
        let bind = |addr: &str| bind(addr, backlog, send_buffer);
        Ok(Listeners {
            mqtt: bind(mqtt)?,
            ws: ws.map(bind).transpose()?,
            mqtts: mqtts.map(|(a, c)| bind(a).map(|l| (l, c))).transpose()?,
        })
    }
}

pub(crate) fn bind(addr: &str, backlog: u32, send_buffer: usize) -> Result<std::net::TcpListener, BrokerError> {
    let bound = bind_listener(addr, backlog).and_then(|l| {
        if send_buffer > 0 {
            socket2::SockRef::from(&l).set_send_buffer_size(send_buffer)?;
        }
        Ok(l)
    });
    bound.map_err(|err| BrokerError::Bind {
        addr: addr.to_string(),
        err,
    })
}

/// Binds a non-blocking TCP listener with an explicit accept backlog (std's is 128; the kernel
/// caps the value at `net.core.somaxconn`). Shared with the HTTP listeners.
pub fn bind_listener(addr: &str, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sa = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "address resolves to nothing"))?;
    let s = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&sa.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Accepts on `l` until the broker stops, handing each connection (no Nagle) to `serve`.
async fn accept_loop(
    l: tokio::net::TcpListener,
    shared: Arc<Shared>,
    serve: impl Fn(tokio::net::TcpStream, SocketAddr, Arc<Shared>),
) {
    let stopped = shared.stopped();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            a = l.accept() => a,
        };
        match accepted {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                serve(s, peer, shared.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub(crate) async fn accept_tcp(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    accept_loop(l, shared, |s, peer, shared| {
        tokio::spawn(connect::run(Box::new(s), peer, Transport::Mqtt, None, shared, None));
    })
    .await
}

/// TLS: the handshake (bounded by the CONNECT timeout) runs in the connection's own task, so
/// a client that stalls or speaks plain TCP or an old TLS version affects only itself; it
/// holds a handshake slot from the start (TLS and CONNECT together), so silent TLS
/// connections are bounded and shed like plain ones.
pub(crate) async fn accept_tls(l: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    accept_loop(l, shared, move |s, peer, shared| {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(mut slot) = connect::admit(&shared, peer) else {
                return;
            };
            let accepted = tokio::select! {
                a = tokio::time::timeout(shared.cfg.connect_timeout, acceptor.accept(s)) => a,
                _ = slot.shed() => return,
            };
            match accepted {
                Ok(Ok(tls)) => {
                    Metrics::inc(&shared.metrics.tls_handshakes);
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    connect::run(Box::new(tls), peer, Transport::Mqtts, cert, shared, Some(slot)).await
                }
                Ok(Err(e)) => {
                    Metrics::inc(&shared.metrics.tls_failures);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed")
                }
                Err(_) => {
                    Metrics::inc(&shared.metrics.tls_failures);
                    tracing::debug!(%peer, "TLS handshake timed out")
                }
            }
        });
    })
    .await
}
