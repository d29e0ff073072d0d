//! Message store benchmark (issue #5): sustained ingest (rows stored per second) through HTTP
//! and through MQTT, next to raw batch inserts of the same rows into SQLite measured in the same
//! run (the ratio is the figure), raw inserts into a second database file (the same-file
//! decision), and reader latency p50/p99 for filtered queries on BENCH_ROWS stored messages
//! (default 1,000,000).
//!
//! Run: `cargo bench --bench messages` (BENCH_SECS per ingest figure, default 5).

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use fluxgate::{App, Hooks};
use std::time::{Duration, Instant};
use storage::{ConnType, Store, StoreConfig};

use common::RECORDS_PER_MESSAGE;

fn raw_insert_rate(store: &Store, channel: &str, total: usize) -> f64 {
    let batch = common::message_rows(500, channel, 1_600_000_000.0);
    let start = Instant::now();
    for _ in 0..total / 500 {
        store.insert_messages(&batch).expect("insert");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main]
async fn main() {
    let secs: u64 = common::env("BENCH_SECS", 5);
    let n_rows: usize = common::env("BENCH_ROWS", 1_000_000);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = common::config(dir.path().to_path_buf());
    let app = App::build(cfg, Hooks::default()).await.expect("build");
    let (url, mqtt, store, stored) = (
        format!("http://{}", app.http_addr()),
        app.mqtt_addr(),
        app.store(),
        app.stored_messages(),
    );
    tokio::spawn(app.run(std::future::pending()));

    // Registry: one domain, one channel, four clients connected for both types.
    let s2 = store.clone();
    let (domain, channel) = tokio::task::spawn_blocking(move || {
        let d = common::domain(&s2, "bench", None);
        let h = uuid::Uuid::new_v4().to_string();
        common::channels(&s2, &d.id, std::slice::from_ref(&h));
        let creds: Vec<(String, String)> = (0..4)
            .map(|i| (format!("dev-{i}"), format!("secret-dev-{i}")))
            .collect();
        common::clients(&s2, &d.id, &creds);
        let ids: Vec<String> = (0..4).map(|i| format!("dev-{i}")).collect();
        s2.connect(&d.id, &ids, std::slice::from_ref(&h), &ConnType::BOTH)
            .expect("connect");
        (d.id, h)
    })
    .await
    .expect("setup");
    let _ = domain;
    println!("message store benchmark: {RECORDS_PER_MESSAGE} SenML records per message, {secs} s per ingest figure");

    // Reference: raw batch inserts of the same rows, same database file, then a second file.
    let s3 = store.clone();
    let ch = channel.clone();
    let raw = tokio::task::spawn_blocking(move || raw_insert_rate(&s3, &ch, 200_000))
        .await
        .expect("raw");
    let other = Store::open(&dir.path().join("other.db"), &StoreConfig::default()).expect("open");
    let raw_other = tokio::task::spawn_blocking(move || raw_insert_rate(&other, "x", 200_000))
        .await
        .expect("raw2");
    println!("{:<44} {raw:>12.0} rows/s", "raw batch insert (500/tx), same file");
    println!(
        "{:<44} {raw_other:>12.0} rows/s   ({:.2}x same file)",
        "raw batch insert (500/tx), second file",
        raw_other / raw
    );

    // HTTP ingest: 16 concurrent senders.
    let before = *stored.borrow();
    let start = Instant::now();
    let refused = common::http_senders(&url, &channel, secs).await;
    // Wait until everything accepted is committed, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http_rate = (*stored.borrow() - before) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{:<44} {http_rate:>12.0} rows/s   ({:.2}x raw; {refused} answered 503)",
        "HTTP ingest (16 senders)",
        http_rate / raw
    );

    // MQTT ingest: 4 publishers at QoS 0.
    let before = *stored.borrow();
    let start = Instant::now();
    common::mqtt_publishers(mqtt, &channel, secs).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mqtt_rate = (*stored.borrow() - before) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{:<44} {mqtt_rate:>12.0} rows/s   ({:.2}x raw)",
        "MQTT ingest (4 publishers, QoS 0)",
        mqtt_rate / raw
    );

    // Readers on a channel with n_rows messages.
    let big = uuid::Uuid::new_v4().to_string();
    let s4 = store.clone();
    let b2 = big.clone();
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || {
        for k in 0..n_rows / 5000 {
            let mut r = common::message_rows(5000, &b2, 1_600_000_000.0 + k as f64 * 5.0);
            for m in &mut r {
                m.publisher = format!("dev-{}", k % 10);
            }
            s4.insert_messages(&r).expect("insert");
        }
    })
    .await
    .expect("fill");
    println!("filled {n_rows} messages in one channel in {:.1?}", t0.elapsed());
    let queries = common::reader_queries();
    println!("{:<36} {:>10} {:>10}", "reader query", "p50", "p99");
    for (name, q) in queries {
        let (s5, b3) = (store.clone(), big.clone());
        let mut lat = tokio::task::spawn_blocking(move || {
            (0..20)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(s5.read_messages(&b3, &q).expect("read"));
                    t.elapsed()
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("read");
        println!(
            "{name:<36} {:>10.2?} {:>10.2?}",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }
}
