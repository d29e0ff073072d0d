//! The start-up seam (#17 item 2): `App::build` binds every listener and starts nothing;
//! `App::run` starts everything and stops it in order; start-up errors are typed.

use crate::engine::env;
use crate::helpers::{test_config, TestApp};
use fluxgate::{App, AppError, Hooks};
use std::net::SocketAddr;

/// Whether something still holds `addr` (a fresh bind fails).
fn held(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_err()
}

/// Every listener (HTTP, MQTT, WS, MQTTS, WSS) is bound by `build` with port 0 resolved, and
/// a built app that is dropped without running releases them all.
#[tokio::test]
async fn build_binds_every_listener_and_a_dropped_app_releases_them() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    cfg.tls.wss_addr = "127.0.0.1:0".into();
    let app = App::build(cfg, Hooks::default()).await.expect("build");
    let addrs = [
        app.http_addr(),
        app.mqtt_addr(),
        app.ws_addr().expect("ws"),
        app.mqtts_addr().expect("mqtts"),
        app.wss_addr().expect("wss"),
    ];
    for a in addrs {
        assert_ne!(a.port(), 0, "{a}");
        assert!(held(a), "{a} is bound by build");
    }
    drop(app);
    for a in addrs {
        assert!(!held(a), "{a} is released when the app is dropped");
    }
}

/// A taken MQTT port fails `build` with a typed error naming the address; nothing keeps the
/// API port.
#[tokio::test]
async fn a_taken_port_is_a_typed_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    cfg.http.addr = http.to_string();
    cfg.mqtt.addr = addr.to_string();
    let err = App::build(cfg, Hooks::default()).await.err().expect("refused");
    assert!(
        matches!(&err, AppError::Broker(broker::BrokerError::Bind { addr: a, .. }) if *a == addr.to_string()),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(!held(http), "the API listener bound first was released");
}

/// Stopping: a v5 client gets DISCONNECT 0x8B (server shutting down), a 3.1.1 client is
/// closed, every message acknowledged before the stop is stored, and after `run` returns no
/// listener is held (a test server leaks nothing).
#[tokio::test]
async fn stopping_closes_sessions_then_drains_the_writer_and_frees_the_ports() {
    let e = env().await;
    let mut v5 = e.raw(true, "life-5").await;
    let mut v4 = e.raw(false, "life-4").await;
    let n = 50u16;
    for i in 1..=n {
        let payload = format!(r#"[{{"n":"life","v":{i}}}]"#);
        assert_eq!(
            v5.publish(&e.topic("x"), payload.as_bytes(), 1, false, i).await,
            0,
            "PUBACK"
        );
    }
    let addrs = [
        e.app.mqtt_addr,
        e.app.ws_addr.expect("ws"),
        e.app.mqtts_addr.expect("mqtts"),
    ];
    let http: SocketAddr = e.app.url.trim_start_matches("http://").parse().expect("http addr");
    let (h, t) = (e.h.clone(), e.t.clone());
    let dir = e.app.stop().await;
    assert_eq!(v5.closed().await, Some(0x8B), "v5: DISCONNECT server shutting down");
    assert_eq!(v4.closed().await, None, "3.1.1: closed");
    for a in addrs.into_iter().chain([http]) {
        assert!(!held(a), "{a} released after the stop");
    }
    let app = TestApp::spawn_in(dir).await;
    let (st, v) = app
        .read(&format!("/channels/{h}/messages?name=life"), &format!("Bearer {t}"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["total"], n, "every acknowledged message was stored: {v}");
}
