//! Restart-proof persistent sessions (issue #13). Prints:
//!   1. QoS 1 deliveries/s to online persistent sessions ÷ to clean sessions (4 publishers →
//!      4 subscribers, 64-byte payloads; `fluxgate serve` as a separate process; medians of
//!      alternating runs). Target ≥ 0.8.
//!   2. Queued-message append rate ÷ the message pipeline's stored rows/s, both measured here
//!      on the storage layer with the batch sizes the two writers use (medians of alternating
//!      runs). Target ≥ 0.8.
//!   3. Restart time with BENCH_SESSIONS persistent sessions (default 10,000) holding
//!      BENCH_QUEUED queued messages (default 100,000): the server is killed with SIGKILL and
//!      restarted; time until a device's CONNACK says session present, and until its first
//!      queued message arrives. Target: serving again within 2 s.
//!   4. Resident memory per parked session (with its queued messages).
//!
//! Run: `cargo bench --bench sessions`. Knobs: BENCH_SECS (window per throughput run, default
//! 3), BENCH_RUNS (alternating runs, default 3), BENCH_SESSIONS, BENCH_QUEUED.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::{ConnType, SessionRow, SessionWrite, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `fluxgate serve` as a child process on a fixed port and data directory.
struct Server {
    child: std::process::Child,
}

impl Server {
    async fn start(dir: &std::path::Path, addr: SocketAddr) -> (Server, Duration) {
        let t0 = Instant::now();
        let env = [
            ("FLUXGATE_MQTT_MAX_CONNECTIONS", "100000".to_string()),
            ("RUST_LOG", "warn,broker::session=info,broker=info".to_string()),
        ];
        let child = common::serve_child(dir, addr, &env).await;
        (Server { child }, t0.elapsed())
    }

    fn rss_kib(&self) -> u64 {
        common::rss_kib(self.child.id())
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One domain, `channels` channels, `n` clients connected to all of them (both types).
fn provision(store: &Store, channels: usize, n: usize) -> (Vec<String>, Vec<(String, String)>) {
    let admin = loop {
        if let Ok(Some(a)) = store.user_by_identity("admin") {
            break a;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let d = common::domain(store, "sessions", Some(&admin.id));
    let chans: Vec<String> = (0..channels).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    common::channels(store, &d.id, &chans);
    let all: Vec<(String, String)> = (0..n).map(|i| (format!("s-{i}"), format!("secret-s-{i}"))).collect();
    common::clients(store, &d.id, &all);
    for chunk in all.chunks(1000) {
        let ids: Vec<String> = chunk.iter().map(|c| c.0.clone()).collect();
        store.connect(&d.id, &ids, &chans, &ConnType::BOTH).expect("connect");
    }
    (chans.iter().map(|c| format!("channels/{c}/messages")).collect(), all)
}

fn opts(addr: SocketAddr, id: &str, creds: &(String, String), clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o.set_clean_session(clean);
    o.set_credentials(&creds.0, &creds.1);
    o
}

async fn until_connack(el: &mut rumqttc::EventLoop) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return,
            Ok(_) => {}
            Err(e) => panic!("connect: {e}"),
        }
    }
}

/// QoS 1 deliveries per second, 4 publishers → 4 subscribers (one topic each).
async fn throughput(
    addr: SocketAddr,
    topics: &[String],
    creds: &[(String, String)],
    persistent: bool,
    window: Duration,
) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut subs = Vec::new();
    for (i, topic) in topics.iter().enumerate().take(4) {
        let (c, mut el) = AsyncClient::new(opts(addr, &format!("tp-sub-{i}"), &creds[i], !persistent), 1000);
        until_connack(&mut el).await;
        c.subscribe(topic.clone(), QoS::AtLeastOnce).await.expect("subscribe");
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
                break;
            }
        }
        let (count, stop) = (count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(_)))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => break,
                    _ => {}
                }
            }
        }));
        subs.push(c);
    }
    let start = Instant::now();
    for (i, topic) in topics.iter().enumerate().take(4) {
        let (c, mut el) = AsyncClient::new(opts(addr, &format!("tp-pub-{i}"), &creds[4 + i], true), 1000);
        until_connack(&mut el).await;
        let stop2 = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
                    break;
                }
            }
        }));
        let (topic, stop3) = (topic.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < window && !stop3.load(Ordering::Relaxed) {
                if c.publish(topic.clone(), QoS::AtLeastOnce, false, vec![7u8; 64])
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(window).await;
    let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Persistent subscribers end their sessions (clean reconnect), so runs stay independent.
    if persistent {
        for (i, _) in topics.iter().enumerate().take(4) {
            let (_c, mut el) = AsyncClient::new(opts(addr, &format!("tp-sub-{i}"), &creds[i], true), 10);
            until_connack(&mut el).await;
        }
    }
    rate
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn framed(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A 3.1.1 CONNECT with clean session 0.
fn connect_packet(id: &str, creds: &(String, String)) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, "MQTT");
    b.extend_from_slice(&[4, 0xC0, 0, 60]);
    put_str(&mut b, id);
    put_str(&mut b, &creds.0);
    put_str(&mut b, &creds.1);
    framed(0x10, &b)
}

/// Creates a parked persistent session: CONNECT (clean 0), SUBSCRIBE at QoS 1, SUBACK,
/// DISCONNECT.
async fn park(addr: SocketAddr, id: String, creds: (String, String), filter: String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut pkt = connect_packet(&id, &creds);
    let mut sub = vec![0, 1];
    put_str(&mut sub, &filter);
    sub.push(1);
    pkt.extend(framed(0x82, &sub));
    s.write_all(&pkt).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    // CONNACK (4 bytes) + SUBACK (5 bytes).
    while got.len() < 9 {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed while parking {id}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got[3], 0, "CONNACK");
    s.write_all(&[0xE0, 0]).await.expect("disconnect");
}

#[tokio::main]
async fn main() {
    let window = Duration::from_secs(common::env::<usize>("BENCH_SECS", 3) as u64);
    let runs = common::env::<usize>("BENCH_RUNS", 3).max(1);
    let sessions = common::env::<usize>("BENCH_SESSIONS", 10_000).max(1);
    let queued = common::env::<usize>("BENCH_QUEUED", 100_000).max(sessions);

    // 2. Storage-level append rates (no server).
    {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("b.db"), &Default::default()).expect("store");
        store
            .sessions_apply(&[SessionWrite::Put(SessionRow {
                key: "k".into(),
                owner: None,
                expiry_s: 3600,
                disconnected_at_ms: None,
                state: vec![1],
                inbound: vec![],
            })])
            .expect("session");
        let total = 100_000usize;
        let mut next = 1u64;
        let (mut appends, mut pipeline) = (Vec::new(), Vec::new());
        let rows: Vec<storage::NewMessage> = (0..500)
            .map(|i| storage::NewMessage {
                domain_id: "d".into(),
                channel: "c".into(),
                subtopic: String::new(),
                publisher: "p".into(),
                protocol: "mqtt".into(),
                name: format!("n{}", i % 10),
                time: 1_600_000_000.0 + i as f64,
                value: Some(i as f64),
                format: "senml",
                ..Default::default()
            })
            .collect();
        for _ in 0..runs {
            let t = Instant::now();
            for _ in 0..total / 2048 {
                let ops: Vec<SessionWrite> = (0..2048)
                    .map(|_| {
                        next += 1;
                        SessionWrite::Message {
                            id: next,
                            body: vec![9u8; 64 + 60],
                            targets: vec![("k".into(), vec![1])],
                        }
                    })
                    .collect();
                store.sessions_apply(&ops).expect("append");
            }
            appends.push((total / 2048 * 2048) as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..total / 500 {
                store.insert_messages(&rows).expect("insert");
            }
            pipeline.push(total as f64 / t.elapsed().as_secs_f64());
        }
        let (a, p) = (median(appends), median(pipeline));
        println!(
            "queued-message appends: {a:.0}/s; message pipeline rows: {p:.0}/s; ratio {:.2} (target >= 0.8)",
            a / p
        );
    }

    let dir = tempfile::tempdir().expect("tmp");
    let addr = common::free_addr();
    let (server, _) = Server::start(dir.path(), addr).await;
    let db = dir.path().join("fluxgate.db");
    let store = Store::open(&db, &Default::default()).expect("open the server's database");
    let n = sessions + 8;
    let s2 = store.clone();
    let (topics, creds) = tokio::task::spawn_blocking(move || provision(&s2, 5, n))
        .await
        .expect("provision");

    // 1. Throughput: persistent vs clean subscribers, alternating.
    let (mut clean, mut persistent) = (Vec::new(), Vec::new());
    let tp_creds = &creds[sessions..];
    for _ in 0..runs {
        clean.push(throughput(addr, &topics[..4], tp_creds, false, window).await);
        persistent.push(throughput(addr, &topics[..4], tp_creds, true, window).await);
    }
    let (c, p) = (median(clean), median(persistent));
    println!(
        "QoS 1 deliveries/s, 4 -> 4: clean sessions {c:.0}, persistent sessions {p:.0}; ratio {:.2} (target >= 0.8)",
        p / c
    );

    // 3/4. Park `sessions` sessions on 100 subtopics of the fifth channel, queue `queued`.
    let before = server.rss_kib();
    let base = topics[4].clone();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut parked = Vec::new();
    let t = Instant::now();
    for (i, cr) in creds.iter().take(sessions).enumerate() {
        let permit = sem.clone().acquire_owned().await.expect("permit");
        let filter = format!("{base}/{}", i % 100);
        parked.push(tokio::spawn(park(addr, format!("parked-{i}"), cr.clone(), filter)).map_permit(permit));
    }
    for p in parked {
        let _ = p.await;
    }
    let park_secs = t.elapsed().as_secs_f64();
    let (c, mut el) = AsyncClient::new(opts(addr, "filler", &creds[sessions], true), 1000);
    until_connack(&mut el).await;
    let per_message = sessions / 100;
    let messages = queued / per_message.max(1);
    let t = Instant::now();
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        while acked < messages {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    for m in 0..messages {
        c.publish(format!("{base}/{}", m % 100), QoS::AtLeastOnce, false, vec![5u8; 64])
            .await
            .expect("publish");
    }
    acker.await.expect("acks");
    let fill_secs = t.elapsed().as_secs_f64();
    let (kept, entries) = store.sessions_counts().expect("counts");
    println!(
        "parked {sessions} sessions in {park_secs:.1} s; queued {entries} entries ({messages} messages x {per_message} sessions) in {fill_secs:.1} s; {kept} sessions stored"
    );
    server.kill9();
    let (server, listening) = Server::start(dir.path(), addr).await;
    let t0 = Instant::now() - listening;
    // A parked device comes back: session present, then its first queued message.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    s.write_all(&connect_packet("parked-0", &creds[0]))
        .await
        .expect("connect");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut present_at = None;
    let first_at = loop {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
        if present_at.is_none() && got.len() >= 4 {
            assert_eq!((got[0], got[2], got[3]), (0x20, 1, 0), "CONNACK with session present");
            present_at = Some(t0.elapsed());
        }
        if got.len() > 4 && got[4] >> 4 == 3 {
            break t0.elapsed();
        }
    };
    let present_at = present_at.unwrap_or_default();
    let after = server.rss_kib();
    println!(
        "restart after SIGKILL with {kept} sessions / {entries} queued: listening {:.2} s, session present {:.2} s, first queued message {:.2} s (target: serving within 2 s)",
        listening.as_secs_f64(),
        present_at.as_secs_f64(),
        first_at.as_secs_f64()
    );
    println!(
        "resident memory: {before} KiB before parking, {after} KiB after the restart; {:.1} KiB per parked session (with {} queued messages each)",
        after.saturating_sub(before) as f64 / sessions as f64,
        entries / kept.max(1)
    );
}

/// Keeps a semaphore permit for as long as a task runs.
trait MapPermit: Sized {
    fn map_permit(self, p: tokio::sync::OwnedSemaphorePermit) -> tokio::task::JoinHandle<()>;
}

impl MapPermit for tokio::task::JoinHandle<()> {
    fn map_permit(self, p: tokio::sync::OwnedSemaphorePermit) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let _ = self.await;
            drop(p);
        })
    }
}
