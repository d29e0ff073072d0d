//! MQTT throughput and latency (issues #4 and #12). Runs, in turn, against
//!   (a) Fluxgate: its session layer on rumqttd's router, registry credentials and channel
//!       policies, every message stored,
//!   (a') the same with `messages.store_mqtt = false` (MQTT not stored),
//!   (b) bare rumqttd with its own network layer, in the same process (no auth),
//!   (c) a reference broker: BENCH_MQTT_REFERENCE=host:port, or a local `mosquitto` started
//!       on a free port when the binary exists,
//! the scenarios p2p (4 publishers -> 4 subscribers, one topic each), fan-in (4 -> 1) and
//! fan-out (1 -> 4) at QoS 0 and 1 with 64-byte payloads, printing deliveries per second,
//! delivered / published (QoS 1: published = PUBACKed) and the loss, p50/p99 latency and the
//! ratios a/b, a/c and a'/b. Then p99 at a fixed 8,000 msg/s. The memory
//! figures (10,000 topics with a subscriber; connections per second and resident memory per
//! idle connection for N authenticated clients, BENCH_CONNECTIONS, default 10,000) come from
//! a separate `fluxgate serve` process, so they count the server alone.
//!
//! Run: `cargo bench --bench mqtt`. Knobs: BENCH_SECS (window per figure, default 3),
//! BENCH_ONLY (a label substring), BENCH_BROKERS (fluxgate,fg-relay,rumqttd,reference),
//! BENCH_CONNECTIONS, BENCH_TOPICS (0 skips), BENCH_SEGMENT_SIZE (mqtt.max_segment_size),
//! BENCH_WRITER_PRIORITY (normal|low|idle), BENCH_STORE_MQTT=false.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use fluxgate::config::Config;
use fluxgate::{App, Hooks};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// (client id, secret) per connection slot; None for brokers without auth.
    creds: Option<Vec<(String, String)>>,
    topics: Vec<String>,
}

struct Figures {
    rate: f64,
    delivered: u64,
    /// Messages published (QoS 1: acknowledged) times the subscribers of their topic.
    expected: u64,
    p50: Duration,
    p99: Duration,
}

fn epoch() -> &'static Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    E.get_or_init(Instant::now)
}

fn opts(t: &Target, slot: usize, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, t.addr.ip().to_string(), t.addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(c) = &t.creds {
        let (u, p) = &c[slot % c.len()];
        o.set_credentials(u, p);
    }
    o
}

async fn try_connect(t: &Target, slot: usize, id: &str) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let (c, mut el) = AsyncClient::new(opts(t, slot, id), 10_000);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((c, el)),
            Ok(_) => continue,
            Err(e) => return Err(format!("{}: connect failed: {e}", t.name)),
        }
    }
}

async fn connected(t: &Target, slot: usize, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    match try_connect(t, slot, id).await {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// The soft limit on open files (the server process inherits it): each proxied connection
/// costs the server three descriptors (the client link, both ends of the internal link).
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

/// Runs one scenario: `pubs[i]` publishes to topic index `pubs[i]`, `subs[j]` subscribes to
/// topic index `subs[j]`. `rate`: total messages per second, or None for as fast as possible.
async fn scenario(
    t: &Target,
    pubs: &[usize],
    subs: &[usize],
    qos: QoS,
    rate: Option<u64>,
    window: Duration,
) -> Figures {
    let count = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::<u64>::with_capacity(1 << 20)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (j, &ti) in subs.iter().enumerate() {
        let (c, mut el) = connected(t, j, &format!("bench-sub-{j}-{}", t.name)).await;
        c.subscribe(t.topics[ti].clone(), qos).await.expect("subscribe");
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
                break;
            }
        }
        let (count, lat) = (count.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let _c = c;
            // Never cancelled mid-poll (a cancelled poll can lose what rumqttc was writing):
            // the task is aborted once the figures are taken.
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        if p.payload.len() >= 8 {
                            let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8]));
                            let now = epoch().elapsed().as_micros() as u64;
                            if let Ok(mut l) = lat.lock() {
                                l.push(now.saturating_sub(sent));
                            }
                        }
                    }
                    Err(_) => break,
                    _ => {}
                }
            }
        }));
    }
    let published = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let per_pub_interval = rate.map(|r| Duration::from_secs_f64(pubs.len() as f64 / r as f64));
    for (i, &ti) in pubs.iter().enumerate() {
        let (c, mut el) = connected(t, subs.len() + i, &format!("bench-pub-{i}-{}", t.name)).await;
        let topic = t.topics[ti].clone();
        let acked = published.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Err(_) => break,
                    Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
        let (stop3, sent) = (stop.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = per_pub_interval.map(tokio::time::interval);
            while start.elapsed() < window && !stop3.load(Ordering::Relaxed) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let mut payload = vec![0u8; 64];
                payload[..8].copy_from_slice(&(epoch().elapsed().as_micros() as u64).to_be_bytes());
                if c.publish(topic.clone(), qos, false, payload).await.is_err() {
                    break;
                }
                if qos == QoS::AtMostOnce {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(window).await;
    let in_window = count.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    // Publishing has stopped: let what is in flight (publishers slowed by the broker still
    // have messages in their sockets) arrive before counting the loss: until everything
    // published came, or nothing came for 2 s.
    let per_topic = |ti: usize| subs.iter().filter(|&&s| s == ti).count() as u64;
    let fan = pubs.first().map(|&ti| per_topic(ti)).unwrap_or(1);
    let (mut last, mut still) = (u64::MAX, 0);
    while still < 20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = count.load(Ordering::Relaxed);
        if now >= published.load(Ordering::Relaxed) * fan {
            break;
        }
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    let delivered = count.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_unstable();
    let pct = |p: f64| Duration::from_micros(l.get(((l.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0));
    Figures {
        rate: in_window as f64 / elapsed.as_secs_f64(),
        delivered,
        expected: published.load(Ordering::Relaxed) * fan,
        p50: pct(0.5),
        p99: pct(0.99),
    }
}

/// Resident memory of a process ("self" or a pid), in KiB.
/// `fluxgate serve` as a child process, so that memory figures count the server alone. Its
/// registry is provisioned by opening the same database file from here.
struct ServerProcess {
    child: std::process::Child,
    addr: SocketAddr,
    store: storage::Store,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    async fn start(segment_size: usize) -> ServerProcess {
        let dir = tempfile::tempdir().expect("tmp");
        let addr = common::free_addr();
        let env = [
            ("FLUXGATE_MQTT_MAX_SEGMENT_SIZE", segment_size.to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        let child = common::serve_child(dir.path(), addr, &env).await;
        let db = dir.path().join("fluxgate.db");
        let store = tokio::task::spawn_blocking(move || {
            storage::Store::open(&db, &storage::StoreConfig::default()).expect("open the server's database")
        })
        .await
        .expect("open");
        // The server creates its super-admin just after it starts listening.
        let mut waited = 0;
        while store.user_by_identity("admin").ok().flatten().is_none() {
            waited += 1;
            assert!(waited < 3000, "fluxgate serve did not create its admin");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ServerProcess {
            child,
            addr,
            store,
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        common::rss_kib(self.child.id())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::main]
async fn main() {
    let secs: u64 = common::env("BENCH_SECS", 3);
    let window = Duration::from_secs(secs);
    let wanted: usize = common::env("BENCH_CONNECTIONS", 10_000);
    let n_conns = wanted.min(fd_limit().saturating_sub(256) / 3);
    if n_conns < wanted {
        println!("note: the open-file limit allows {n_conns} of {wanted} connections; raise it with `ulimit -n`");
    }
    epoch();

    // (a) Fluxgate with a domain, 4 channels and 8 clients connected to all of them.
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = common::config(dir.path().to_path_buf());
    cfg.tls.mqtts_addr = "127.0.0.1:0".into();
    cfg.log.level = "info".into();
    // BENCH_SEGMENT_SIZE overrides mqtt.max_segment_size (the router's per-topic log bound).
    cfg.mqtt.max_segment_size = common::env("BENCH_SEGMENT_SIZE", cfg.mqtt.max_segment_size);
    match std::env::var("BENCH_WRITER_PRIORITY").as_deref() {
        Ok("idle") => cfg.messages.writer_priority = fluxgate::config::WriterPriority::Idle,
        Ok("normal") => cfg.messages.writer_priority = fluxgate::config::WriterPriority::Normal,
        _ => {}
    }
    if std::env::var("BENCH_STORE_MQTT").is_ok_and(|v| v == "false") {
        cfg.messages.store_mqtt = false;
    }
    // The server gets its own runtime, as `fluxgate serve` has its own process and the
    // embedded rumqttd of (b) its own threads: the load generator never shares its workers.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("fluxgate-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let start_server = |cfg: Config| {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        server_rt.spawn(async move {
            let app = App::build(cfg, Hooks::default()).await.expect("build");
            let _ = ready_tx.send((
                app.store(),
                app.mqtt_addr(),
                app.broker_metrics(),
                app.pipeline_metrics(),
            ));
            app.run(std::future::pending()).await
        });
        ready
    };
    let (store, fluxgate_addr, broker_metrics, pipeline_metrics) =
        start_server(cfg.clone()).await.expect("server started");
    // (a') the same with messages.store_mqtt = false: the front alone, for the breakdown.
    let relay_dir = tempfile::tempdir().expect("tmp");
    let mut relay_cfg = cfg.clone();
    relay_cfg.data_dir = relay_dir.path().to_path_buf();
    relay_cfg.messages.store_mqtt = false;
    let (relay_store, relay_addr, _, _) = start_server(relay_cfg).await.expect("relay started");
    let (relay_topics, relay_creds, _) = tokio::task::spawn_blocking(move || provision(&relay_store, 8))
        .await
        .expect("provision");
    let (topics, creds, _) = tokio::task::spawn_blocking(move || provision(&store, 8))
        .await
        .expect("provision");

    // (b) rumqttd alone with the same router settings.
    let bcfg = broker::BrokerConfig {
        max_segment_size: cfg.mqtt.max_segment_size,
        max_segment_count: cfg.mqtt.max_segment_count,
        ..Default::default()
    };
    let bare = start_bare_rumqttd(&bcfg).await;

    // (c) the reference broker.
    let mut mosquitto = None;
    let reference: Option<SocketAddr> = match std::env::var("BENCH_MQTT_REFERENCE") {
        Ok(a) => a.parse().ok(),
        Err(_) => {
            let port = common::free_addr().port();
            match std::process::Command::new("mosquitto")
                .args(["-p", &port.to_string()])
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                Ok(child) => {
                    mosquitto = Some(child);
                    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                    let mut up = false;
                    for _ in 0..200 {
                        if tokio::net::TcpStream::connect(addr).await.is_ok() {
                            up = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    up.then_some(addr)
                }
                Err(_) => None,
            }
        }
    };

    let mut targets = vec![
        Target {
            name: "fluxgate",
            addr: fluxgate_addr,
            creds: Some(creds.clone()),
            topics: topics.clone(),
        },
        Target {
            name: "fg-relay",
            addr: relay_addr,
            creds: Some(relay_creds),
            topics: relay_topics,
        },
        Target {
            name: "rumqttd",
            addr: bare,
            creds: None,
            topics: topics.clone(),
        },
    ];
    if let Some(r) = reference {
        targets.push(Target {
            name: "reference",
            addr: r,
            creds: None,
            topics: topics.clone(),
        });
    } else {
        println!("no reference broker (set BENCH_MQTT_REFERENCE=host:port or install mosquitto)");
    }

    // BENCH_BROKERS: a comma-separated subset of fluxgate,fg-relay,rumqttd,reference.
    if let Ok(keep) = std::env::var("BENCH_BROKERS") {
        targets.retain(|t| keep.split(',').any(|k| k == t.name));
    }
    println!("MQTT benchmark: 64-byte payloads, {secs} s per figure");
    println!(
        "{:<22} {:<10} {:>14} {:>10} {:>10}",
        "scenario", "broker", "deliveries/s", "p50", "p99"
    );
    let scenarios: [(&str, Vec<usize>, Vec<usize>); 3] = [
        ("p2p 4x4", vec![0, 1, 2, 3], vec![0, 1, 2, 3]),
        ("fan-in 4->1", vec![0, 0, 0, 0], vec![0]),
        ("fan-out 1->4", vec![0], vec![0, 0, 0, 0]),
    ];
    // BENCH_ONLY: run only the figures whose label contains it (e.g. "p2p 4x4 qos1", "@8000").
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (name, pubs, subs) in &scenarios {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let label = format!("{name} qos{}", qos as u8);
            if !label.contains(&only) {
                continue;
            }
            let mut rates = std::collections::HashMap::new();
            for t in &targets {
                let stored_before = pipeline_metrics.stored.load(Ordering::Relaxed);
                let full_before = broker_metrics.pipeline_full.load(Ordering::Relaxed);
                let dropped_before = broker_metrics.dropped_qos0_full.load(Ordering::Relaxed)
                    + broker_metrics.dropped_queue_full.load(Ordering::Relaxed);
                let slowed_before = broker_metrics.publishers_slowed.load(Ordering::Relaxed);
                let skipped_before = broker_metrics.router_skipped.load(Ordering::Relaxed);
                let f = scenario(t, pubs, subs, qos, None, window).await;
                let storing = if t.name == "fluxgate" {
                    format!(
                        "   stored {} / not stored (queue full) {}; dropped by full session queues {}, publisher reads slowed {}, skipped by the router {}",
                        pipeline_metrics.stored.load(Ordering::Relaxed) - stored_before,
                        broker_metrics.pipeline_full.load(Ordering::Relaxed) - full_before,
                        broker_metrics.dropped_qos0_full.load(Ordering::Relaxed)
                            + broker_metrics.dropped_queue_full.load(Ordering::Relaxed)
                            - dropped_before,
                        broker_metrics.publishers_slowed.load(Ordering::Relaxed) - slowed_before,
                        broker_metrics.router_skipped.load(Ordering::Relaxed) - skipped_before
                    )
                } else {
                    String::new()
                };
                let loss = 100.0 * (1.0 - f.delivered as f64 / f.expected.max(1) as f64);
                println!(
                    "{label:<22} {:<10} {:>14.0} {:>10.2?} {:>10.2?}   delivered {}/{} (loss {loss:.2}%){storing}",
                    t.name, f.rate, f.p50, f.p99, f.delivered, f.expected
                );
                rates.insert(t.name, f.rate);
            }
            let ratio = |x: &str, y: &str| match (rates.get(x), rates.get(y)) {
                (Some(x), Some(y)) => format!("{:.2}", x / y.max(1.0)),
                _ => "-".into(),
            };
            println!(
                "{label:<22} ratio a/b {}   a/c {}   a'/b {}",
                ratio("fluxgate", "rumqttd"),
                ratio("fluxgate", "reference"),
                ratio("fg-relay", "rumqttd"),
            );
        }
    }
    for t in targets.iter().filter(|_| "p2p qos1 @8000/s".contains(&only)) {
        let f = scenario(t, &[0, 1, 2, 3], &[0, 1, 2, 3], QoS::AtLeastOnce, Some(8000), window).await;
        println!(
            "{:<22} {:<10} {:>14.0} {:>10.2?} {:>10.2?}",
            "p2p qos1 @8000/s", t.name, f.rate, f.p50, f.p99
        );
    }

    // Resident memory with BENCH_TOPICS (default 10,000) active channel topics: one client
    // subscribed to all of them (100 filters per SUBSCRIBE) while another publishes 20
    // messages of 1,600 bytes to each (32 KB, enough to fill the per-topic log bound).
    let n_topics: usize = common::env("BENCH_TOPICS", 10_000);
    // Memory figures come from a separate `fluxgate serve` process with the default config.
    let server = ServerProcess::start(cfg.mqtt.max_segment_size).await;
    if n_topics > 0 {
        let s3 = server.store.clone();
        let (topic_dev, many_topics) = tokio::task::spawn_blocking(move || many_channels(&s3, n_topics))
            .await
            .expect("topics");
        let before = server.rss_kib();
        let t = Target {
            name: "fluxgate",
            addr: server.addr,
            creds: Some(vec![topic_dev]),
            topics: many_topics.clone(),
        };
        let (sub, mut sub_el) = connected(&t, 0, "topic-reader").await;
        let chunks: Vec<Vec<String>> = many_topics.chunks(100).map(|c| c.to_vec()).collect();
        for chunk in &chunks {
            let filters = chunk
                .iter()
                .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtMostOnce));
            sub.subscribe_many(filters).await.expect("subscribe");
        }
        let mut acked = 0;
        while acked < chunks.len() {
            match sub_el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
        let received = Arc::new(AtomicU64::new(0));
        let r2 = received.clone();
        let reader = tokio::spawn(async move {
            let _sub = sub;
            while let Ok(e) = sub_el.poll().await {
                if let Event::Incoming(Packet::Publish(_)) = e {
                    r2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let (c, mut el) = connected(&t, 0, "topic-filler").await;
        let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
        for round in 0..20u8 {
            for topic in &many_topics {
                let _ = c
                    .publish(topic.clone(), QoS::AtMostOnce, false, vec![round; 1600])
                    .await;
            }
        }
        // Until deliveries stop arriving (QoS 0: the router may drop some for a slow reader).
        let mut last = u64::MAX;
        while received.load(Ordering::Relaxed) != last {
            last = received.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let after = server.rss_kib();
        println!(
            "topics: {n_topics} channel topics with a subscriber, 20 messages of 1,600 bytes each ({} of {} delivered): server resident memory {} MiB -> {} MiB (+{} MiB; router log bound {} KiB per topic)",
            received.load(Ordering::Relaxed),
            20 * n_topics,
            before / 1024,
            after / 1024,
            after.saturating_sub(before) / 1024,
            cfg.mqtt.max_segment_size * cfg.mqtt.max_segment_count / 1024
        );
        let _ = c.disconnect().await;
        driver.abort();
        reader.abort();
    }

    // Connections per second and memory per idle connection (Fluxgate, authenticated).
    let s4 = server.store.clone();
    let (_, _, all_clients) = tokio::task::spawn_blocking(move || provision(&s4, n_conns))
        .await
        .expect("provision");
    let before = server.rss_kib();
    let start = Instant::now();
    let mut held = Vec::with_capacity(all_clients.len());
    let mut set = tokio::task::JoinSet::new();
    let target = Target {
        name: "fluxgate",
        addr: server.addr,
        creds: None,
        topics: Vec::new(),
    };
    let all = Arc::new(all_clients);
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..64 {
        let (t, all, next) = (target.clone(), all.clone(), next.clone());
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= all.len() {
                    return mine;
                }
                let t = Target {
                    creds: Some(vec![all[i].clone()]),
                    ..t.clone()
                };
                match try_connect(&t, 0, &format!("idle-{i}")).await {
                    Ok((c, mut el)) => mine.push((c, tokio::spawn(async move { while el.poll().await.is_ok() {} }))),
                    Err(e) => {
                        eprintln!("{e}");
                        return mine;
                    }
                }
            }
        });
    }
    while let Some(Ok(v)) = set.join_next().await {
        held.extend(v);
    }
    let elapsed = start.elapsed();
    let after = server.rss_kib();
    println!(
        "connections: {} authenticated clients in {:.2?} = {:.0}/s; server resident memory {} MiB -> {} MiB = {:.1} KiB per idle connection",
        held.len(),
        elapsed,
        held.len() as f64 / elapsed.as_secs_f64(),
        before / 1024,
        after / 1024,
        (after.saturating_sub(before)) as f64 / held.len().max(1) as f64
    );
    if let Some(mut m) = mosquitto {
        let _ = m.kill();
    }
    server_rt.shutdown_background();
}

type Creds = Vec<(String, String)>;

/// A second domain with `n` channels and one client connected to all of them (both types).
fn many_channels(store: &storage::Store, n: usize) -> ((String, String), Vec<String>) {
    let d = common::domain(store, "topics", None);
    let channels: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    common::channels(store, &d.id, &channels);
    let creds = ("topic-dev".to_string(), "topic-dev-secret".to_string());
    common::clients(store, &d.id, std::slice::from_ref(&creds));
    store
        .connect(
            &d.id,
            std::slice::from_ref(&creds.0),
            &channels,
            &storage::ConnType::BOTH,
        )
        .expect("connect");
    (
        creds,
        channels.iter().map(|c| format!("channels/{c}/messages")).collect(),
    )
}

/// Creates a domain, 4 channels and `n` clients (at least 8, all connected to the 4
/// channels); returns the topics, the first 8 clients' credentials and every client's.
fn provision(store: &storage::Store, n: usize) -> (Vec<String>, Creds, Creds) {
    let d = common::domain(store, "bench", None);
    let channels: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    common::channels(store, &d.id, &channels);
    let all: Creds = (0..n.max(8))
        .map(|i| (format!("dev-{i}"), format!("secret-of-dev-{i}")))
        .collect();
    common::clients(store, &d.id, &all);
    for chunk in all.chunks(1000) {
        let ids: Vec<String> = chunk.iter().map(|c| c.0.clone()).collect();
        store
            .connect(&d.id, &ids, &channels, &storage::ConnType::BOTH)
            .expect("connect");
    }
    let topics = channels.iter().map(|c| format!("channels/{c}/messages")).collect();
    (topics, all[..8].to_vec(), all)
}

/// Bare rumqttd (its own network layer, MQTT 3.1.1, no authentication) with the same router
/// settings, on a free loopback port: the reference the engine is measured against.
async fn start_bare_rumqttd(cfg: &broker::BrokerConfig) -> SocketAddr {
    use std::collections::HashMap;
    let addr = common::free_addr();
    let conn = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: cfg.max_packet_size,
        max_inflight_count: cfg.inflight_window as usize,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "bare-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: conn,
    };
    let rcfg = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: cfg.max_connections + 16,
            max_outgoing_packet_count: 200,
            max_segment_size: cfg.max_segment_size,
            max_segment_count: cfg.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("bare-v4".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let mut broker = rumqttd::Broker::new(rcfg);
    std::thread::Builder::new()
        .name("rumqttd-bare".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("bare rumqttd stopped: {e}");
            }
        })
        .expect("thread");
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return addr;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("bare rumqttd did not come up on {addr}");
}
