//! MQTT throughput, loss and latency (issues #4, #12, #30), every party in a process of its
//! own: the brokers are (a) `fluxgate serve` with its defaults (registry credentials, channel
//! rights, every message stored), (a') the same with `messages.store_mqtt = false`, (b) bare
//! rumqttd with its own network layer and Fluxgate's router settings (this binary started
//! again as a server), (c) Debian's Mosquitto on a free port (or BENCH_MQTT_REFERENCE=host:port);
//! the load generator is this binary started again per run. Scenarios, 64-byte payloads, at
//! QoS 0 and 1 as fast as the publishers can: 4 publishers -> 4 subscribers on one channel
//! (every subscriber gets every message), p2p (4 -> 4, one topic each), fan-in (4 -> 1) and
//! fan-out (1 -> 4); then p50/p99 latency of the one-channel 4 -> 4 at 8,000 msg/s QoS 1.
//! Each figure is the median of BENCH_RUNS (3) runs, the brokers taking turns in a rotating
//! order; printed: deliveries per second, loss (delivered / published, QoS 1: published =
//! acknowledged), p50/p99, and the ratios a/b, a/c, a'/b and a/a'. Then memory figures of a
//! separate `fluxgate serve`: 10,000 topics with a subscriber (BENCH_TOPICS, 0 skips) and
//! idle authenticated connections with the connect rate (BENCH_CONNECTIONS, default 10,000).
//!
//! Run: `cargo bench --bench mqtt`. Knobs: BENCH_SECS (window per run, default 3),
//! BENCH_RUNS, BENCH_ONLY (a label substring), BENCH_BROKERS (fluxgate,fg-relay,rumqttd,
//! reference), BENCH_CONNECTIONS, BENCH_TOPICS.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;
mod mqtt_kit;

use mqtt_kit::servers::{self, ServerProcess};
use mqtt_kit::{load, median, Figures, Spec, Target};
use std::collections::HashMap;

/// The soft limit on open files (the server process inherits it).
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// The medians of one figure's runs against one broker.
struct Medians {
    rate: f64,
    loss: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn medians(runs: &[Figures]) -> Medians {
    let of = |f: &dyn Fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    Medians {
        rate: of(&|f| f.rate),
        loss: of(&|f| f.loss()),
        p50_ms: of(&|f| f.p50_us as f64 / 1000.0),
        p99_ms: of(&|f| f.p99_us as f64 / 1000.0),
    }
}

/// Runs one figure: `runs` rounds, the targets taking turns in a rotating order; with the
/// counters of the Fluxgate targets over them.
async fn figure(
    targets: &[Target],
    pubs: &[usize],
    subs: &[usize],
    qos: u8,
    rate: Option<u64>,
) -> (HashMap<String, Medians>, HashMap<String, [f64; 4]>) {
    let secs: u64 = common::env("BENCH_SECS", 3);
    let runs: usize = common::env("BENCH_RUNS", 3);
    let mut all: HashMap<String, Vec<Figures>> = HashMap::new();
    let mut before = HashMap::new();
    for t in targets {
        if let Some(url) = &t.metrics {
            before.insert(t.name.clone(), mqtt_kit::counters(url).await);
        }
    }
    for r in 0..runs {
        for k in 0..targets.len() {
            let t = &targets[(k + r) % targets.len()];
            let spec = Spec {
                target: t.clone(),
                pubs: pubs.to_vec(),
                subs: subs.to_vec(),
                qos,
                rate,
                secs,
            };
            let f = load::in_own_process(&spec).await;
            all.entry(t.name.clone()).or_default().push(f);
        }
    }
    let mut counted = HashMap::new();
    for t in targets {
        if let (Some(url), Some(b)) = (&t.metrics, before.get(&t.name)) {
            let a = mqtt_kit::counters(url).await;
            counted.insert(t.name.clone(), std::array::from_fn(|i| a[i] - b[i]));
        }
    }
    (all.into_iter().map(|(k, v)| (k, medians(&v))).collect(), counted)
}

#[tokio::main]
async fn main() {
    match std::env::var("FLUXGATE_BENCH_ROLE").as_deref() {
        Ok("load") => return load::main().await,
        Ok("rumqttd") => return servers::bare_rumqttd_main(),
        _ => {}
    }
    let wanted: usize = common::env("BENCH_CONNECTIONS", 10_000);
    let n_conns = wanted.min(fd_limit().saturating_sub(256) / 2);
    if n_conns < wanted {
        println!("note: the open-file limit allows {n_conns} of {wanted} connections; raise it with `ulimit -n`");
    }

    let fluxgate = ServerProcess::start(&[]).await;
    let relay = ServerProcess::start(&[("FLUXGATE_MESSAGES_STORE_MQTT", "false".to_string())]).await;
    let provisioned = |s: &ServerProcess| {
        let store = s.store.clone();
        tokio::task::spawn_blocking(move || servers::provision(&store, "bench", 8))
    };
    let (topics, creds, _) = provisioned(&fluxgate).await.expect("provision");
    let (relay_topics, relay_creds, _) = provisioned(&relay).await.expect("provision");
    let (_bare, bare_addr) = servers::bare_rumqttd().await;
    let reference = servers::mosquitto().await;

    let mut targets = vec![
        Target {
            name: "fluxgate".into(),
            addr: fluxgate.addr,
            creds: Some(creds),
            topics: topics.clone(),
            metrics: Some(format!("http://{}/metrics", fluxgate.http)),
        },
        Target {
            name: "fg-relay".into(),
            addr: relay.addr,
            creds: Some(relay_creds),
            topics: relay_topics,
            metrics: Some(format!("http://{}/metrics", relay.http)),
        },
        Target {
            name: "rumqttd".into(),
            addr: bare_addr,
            creds: None,
            topics: topics.clone(),
            metrics: None,
        },
    ];
    let _mosquitto = match reference {
        Some((child, addr)) => {
            targets.push(Target {
                name: "reference".into(),
                addr,
                creds: None,
                topics: topics.clone(),
                metrics: None,
            });
            child
        }
        None => {
            println!("no reference broker (set BENCH_MQTT_REFERENCE=host:port or install mosquitto)");
            None
        }
    };
    // BENCH_BROKERS: a comma-separated subset of fluxgate,fg-relay,rumqttd,reference.
    if let Ok(keep) = std::env::var("BENCH_BROKERS") {
        targets.retain(|t| keep.split(',').any(|k| k == t.name));
    }
    let runs: usize = common::env("BENCH_RUNS", 3);
    let secs: u64 = common::env("BENCH_SECS", 3);
    println!(
        "MQTT benchmark: 64-byte payloads, {secs} s per run, medians of {runs} runs (brokers in turn); load generator and every broker in processes of their own"
    );
    println!(
        "{:<24} {:<10} {:>14} {:>8} {:>9} {:>9}",
        "scenario", "broker", "deliveries/s", "loss", "p50 ms", "p99 ms"
    );
    let scenarios: [(&str, Vec<usize>, Vec<usize>); 4] = [
        ("4->4 one channel", vec![0, 0, 0, 0], vec![0, 0, 0, 0]),
        ("p2p 4x4", vec![0, 1, 2, 3], vec![0, 1, 2, 3]),
        ("fan-in 4->1", vec![0, 0, 0, 0], vec![0]),
        ("fan-out 1->4", vec![0], vec![0, 0, 0, 0]),
    ];
    // BENCH_ONLY: run only the figures whose label contains it (e.g. "p2p 4x4 qos1", "@8000").
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let mut figures: Vec<Row> = Vec::new();
    for (name, pubs, subs) in &scenarios {
        for qos in [0u8, 1] {
            figures.push((format!("{name} qos{qos}"), None, pubs.clone(), subs.clone(), qos));
        }
    }
    figures.push((
        "4->4 one channel @8000/s".into(),
        Some(8000),
        vec![0, 0, 0, 0],
        vec![0, 0, 0, 0],
        1,
    ));
    for (label, rate, pubs, subs, qos) in figures {
        if !label.contains(&only) {
            continue;
        }
        let (m, counted) = figure(&targets, &pubs, &subs, qos, rate).await;
        for t in &targets {
            if let Some(x) = m.get(&t.name) {
                let why = counted.get(&t.name).map_or(String::new(), |c| {
                    format!(
                        "   (all runs: router skipped {}, publisher reads slowed {}, disconnected: full queue {}, stalled {})",
                        c[0], c[1], c[2], c[3]
                    )
                });
                println!(
                    "{label:<24} {:<10} {:>14.0} {:>7.2}% {:>9.2} {:>9.2}{why}",
                    t.name, x.rate, x.loss, x.p50_ms, x.p99_ms
                );
            }
        }
        let ratio = |x: &str, y: &str, f: &dyn Fn(&Medians) -> f64| match (m.get(x), m.get(y)) {
            (Some(x), Some(y)) => format!("{:.2}", f(x) / f(y).max(1e-9)),
            _ => "-".into(),
        };
        let rate = |m: &Medians| m.rate;
        let p99 = |m: &Medians| m.p99_ms;
        if rate_limited(&label) {
            println!(
                "{label:<24} p99 ratio a/c {}   a/b {}   (p50 a/c {})",
                ratio("fluxgate", "reference", &p99),
                ratio("fluxgate", "rumqttd", &p99),
                ratio("fluxgate", "reference", &|m: &Medians| m.p50_ms),
            );
        } else {
            println!(
                "{label:<24} ratio a/b {}   a/c {}   a'/b {}   a/a' {}",
                ratio("fluxgate", "rumqttd", &rate),
                ratio("fluxgate", "reference", &rate),
                ratio("fg-relay", "rumqttd", &rate),
                ratio("fluxgate", "fg-relay", &rate),
            );
        }
    }
    drop(relay);

    // Memory figures come from the default `fluxgate serve` process, after the load.
    let n_topics: usize = common::env("BENCH_TOPICS", 10_000);
    if n_topics > 0 {
        mqtt_kit::memory::topics(&fluxgate, n_topics).await;
    }
    if n_conns > 0 {
        mqtt_kit::memory::connections(&fluxgate, n_conns).await;
    }
}

/// A figure to measure: label, rate (None: as fast as possible), publishers' and subscribers'
/// topic indexes, QoS.
type Row = (String, Option<u64>, Vec<usize>, Vec<usize>, u8);

fn rate_limited(label: &str) -> bool {
    label.contains('@')
}
