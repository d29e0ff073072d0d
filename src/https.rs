//! Serving a warp filter over TLS: warp 0.4 has no built-in TLS and its acceptor trait is
//! sealed, so connections are accepted here, wrapped by tokio-rustls and handed to hyper
//! with the filter as the service. Used for HTTPS (the REST API) and secure WebSocket (MQTT).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

pub type Routes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

/// Serves `routes` on `listener` over TLS until `shutdown` completes. A failed or slow
/// handshake ends only that connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let (acceptor, routes) = (acceptor.clone(), routes.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(warp::service(routes));
            let conn = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            if let Err(e) = conn {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}
