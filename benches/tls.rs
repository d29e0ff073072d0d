//! TLS benchmark (issue #7): MQTT connections per second over plain TCP (reference), TLS with
//! password and TLS with a client certificate (mTLS), and QoS 0 delivery throughput over TLS
//! against plain TCP in the same run.
//!
//! Run: `cargo bench --bench tls` (BENCH_SECS per throughput figure, default 3).

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use fluxgate::{App, Hooks};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::{CertRecord, ConnType};

#[derive(Clone)]
enum Mode {
    Plain,
    TlsPassword(Vec<u8>),
    Mtls(Vec<u8>, Vec<u8>, Vec<u8>),
}

fn opts(addr: SocketAddr, id: &str, mode: &Mode) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    match mode {
        Mode::Plain => {
            o.set_credentials("bench-dev", "bench-secret-1");
        }
        Mode::TlsPassword(ca) => {
            o.set_credentials("bench-dev", "bench-secret-1");
            o.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            }));
        }
        Mode::Mtls(ca, cert, key) => {
            o.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: Some((cert.clone(), key.clone())),
            }));
        }
    }
    o
}

async fn connect(addr: SocketAddr, id: &str, mode: &Mode) -> (AsyncClient, rumqttc::EventLoop) {
    let (c, mut el) = AsyncClient::new(opts(addr, id, mode), 10_000);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return (c, el),
            Ok(_) => {}
            Err(e) => panic!("connect failed: {e}"),
        }
    }
}

async fn connects_per_sec(addr: SocketAddr, mode: &Mode, n: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mode = mode.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 8 {
                let (c, mut el) = connect(addr, &format!("hs-{w}-{i}"), &mode).await;
                let _ = c.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn throughput(addr: SocketAddr, mode: &Mode, topic: &str, window: Duration) -> f64 {
    let (sub, mut sel) = connect(addr, "tp-sub", mode).await;
    sub.subscribe(topic, QoS::AtMostOnce).await.expect("sub");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sel.poll().await {
            break;
        }
    }
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (count.clone(), stop.clone());
    let reader = tokio::spawn(async move {
        while !s2.load(Ordering::Relaxed) {
            if let Ok(Ok(Event::Incoming(Packet::Publish(_)))) =
                tokio::time::timeout(Duration::from_millis(100), sel.poll()).await
            {
                c2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let (publ, mut pel) = connect(addr, "tp-pub", mode).await;
    let s3 = stop.clone();
    let driver = tokio::spawn(async move {
        while !s3.load(Ordering::Relaxed) {
            if tokio::time::timeout(Duration::from_millis(100), pel.poll())
                .await
                .is_ok_and(|r| r.is_err())
            {
                break;
            }
        }
    });
    let start = Instant::now();
    let t = topic.to_string();
    let s4 = stop.clone();
    let writer = tokio::spawn(async move {
        while !s4.load(Ordering::Relaxed) {
            if publ
                .publish(t.clone(), QoS::AtMostOnce, false, vec![7u8; 64])
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tokio::time::sleep(window).await;
    let n = count.load(Ordering::Relaxed);
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in [reader, driver, writer] {
        let _ = t.await;
    }
    let _ = sub.disconnect().await;
    rate
}

#[tokio::main]
async fn main() {
    let secs: u64 = common::env("BENCH_SECS", 3);
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = common::config(dir.path().to_path_buf());
    cfg.tls.mqtts_addr = "127.0.0.1:0".into();
    let app = App::build(cfg, Hooks::default()).await.expect("build");
    let (plain, tls, store) = (app.mqtt_addr(), app.mqtts_addr().expect("tls"), app.store());
    tokio::spawn(app.run(std::future::pending()));

    let d = common::domain(&store, "tls", None);
    let h = uuid::Uuid::new_v4().to_string();
    common::channels(&store, &d.id, std::slice::from_ref(&h));
    common::clients(&store, &d.id, &[("bench-dev".into(), "bench-secret-1".into())]);
    store
        .connect(&d.id, &["bench-dev".into()], std::slice::from_ref(&h), &ConnType::BOTH)
        .expect("connect");
    let ca = certs::Ca::load_or_create(dir.path(), None).expect("ca");
    let now = time::OffsetDateTime::now_utc();
    let issued = ca
        .issue_client(
            "bench-dev",
            now - time::Duration::hours(1),
            now + time::Duration::hours(2),
        )
        .expect("issue");
    store
        .insert_cert(&CertRecord {
            serial: issued.serial.clone(),
            domain_id: d.id.clone(),
            client_id: "bench-dev".into(),
            expire: issued.expire.unix_timestamp(),
            revoked_at: None,
        })
        .expect("record");
    let ca_pem = ca.pem().as_bytes().to_vec();
    let modes = [
        ("plain TCP (reference)", plain, Mode::Plain),
        ("TLS, password", tls, Mode::TlsPassword(ca_pem.clone())),
        (
            "TLS, client certificate",
            tls,
            Mode::Mtls(ca_pem, issued.cert_pem.into_bytes(), issued.key_pem.into_bytes()),
        ),
    ];
    println!("TLS benchmark (MQTT 3.1.1, 8 concurrent connectors, QoS 0 64-byte messages for throughput)");
    let mut reference = 0.0;
    for (name, addr, mode) in &modes {
        let rate = connects_per_sec(*addr, mode, 400).await;
        if reference == 0.0 {
            reference = rate;
        }
        println!(
            "{:<34} {rate:>10.0} connections/s   ({:.2}x plain)",
            format!("connect: {name}"),
            rate / reference
        );
    }
    let topic = format!("channels/{h}/messages");
    let plain_rate = throughput(plain, &modes[0].2, &topic, Duration::from_secs(secs)).await;
    let tls_rate = throughput(tls, &modes[1].2, &topic, Duration::from_secs(secs)).await;
    println!("{:<34} {plain_rate:>10.0} deliveries/s", "throughput: plain TCP");
    println!(
        "{:<34} {tls_rate:>10.0} deliveries/s   ({:.2}x plain)",
        "throughput: TLS",
        tls_rate / plain_rate
    );
}
