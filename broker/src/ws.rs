//! MQTT over WebSocket on `/mqtt`: each WebSocket is bridged to an in-memory byte pipe and
//! handled by the same session code as TCP.

use crate::{Shared, Transport};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warp::Filter;

pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let stopped = shared.stopped();
    warp::serve(routes(shared, Transport::Ws))
        .incoming(listener)
        .graceful(stopped)
        .run()
        .await;
}

/// The `/mqtt` WebSocket endpoint as a filter (served plain here, or over TLS by the caller).
/// `transport`: `Ws`, or `Wss` when the caller serves it over TLS.
pub(crate) fn routes(
    shared: Arc<Shared>,
    transport: Transport,
) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    use warp::Reply;
    warp::path!("mqtt")
        .and(warp::ws())
        .and(warp::addr::remote())
        .map(move |ws: warp::ws::Ws, peer: Option<std::net::SocketAddr>| {
            let shared = shared.clone();
            let peer = peer.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            let reply = ws
                .max_message_size(shared.cfg.max_packet_size + 8)
                .on_upgrade(move |socket| bridge(socket, peer, transport, shared));
            warp::reply::with_header(
                reply,
                warp::http::header::SEC_WEBSOCKET_PROTOCOL,
                warp::http::HeaderValue::from_static("mqtt"),
            )
            .into_response()
        })
        .boxed()
}

async fn bridge(socket: warp::ws::WebSocket, peer: std::net::SocketAddr, transport: Transport, shared: Arc<Shared>) {
    let (front, back) = tokio::io::duplex(64 * 1024);
    shared.rt.spawn(crate::connect::run(
        Box::new(front),
        peer,
        transport,
        None,
        shared.clone(),
        None,
    ));
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut br, mut bw) = tokio::io::split(back);
    let inbound = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_binary() || msg.is_text()) && bw.write_all(msg.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = bw.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match br.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(warp::ws::Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    tokio::select! {
        _ = inbound => {},
        _ = outbound => {},
    }
}
