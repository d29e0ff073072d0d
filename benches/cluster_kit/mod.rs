//! The cluster bench's kit: the processes it starts (nats-server, nodes), a provisioned
//! site, CPU readings from /proc, and the MQTT load (rate-limited QoS 1 publishers,
//! subscribers that time each delivery).

pub mod mobility;

use crate::common;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn epoch() -> &'static Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    E.get_or_init(Instant::now)
}

/// CPU seconds (user + system) of a process so far.
pub fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds of every process named `name`.
pub fn cpu_named(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .map(cpu_of)
        .sum()
}

pub struct Nats {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn nats() -> Option<Nats> {
    let addr = common::free_addr();
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &addr.port().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(Nats { child, addr })
}

/// A fresh database on the throwaway server; its URL.
pub fn database(admin: &str) -> String {
    let name = format!("fg_bench_{}", uuid::Uuid::new_v4().simple());
    let mut c = postgres::Client::connect(admin, postgres::NoTls).expect("connect");
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("database URL without a name"),
    }
}

/// A fresh database on the throwaway server (created off the runtime); its URL.
pub async fn fresh_database(admin: &str) -> String {
    let a = admin.to_string();
    tokio::task::spawn_blocking(move || database(&a)).await.expect("db")
}

/// Three cluster nodes on a fresh database.
pub async fn three_nodes(admin: &str, nats: SocketAddr) -> (String, Vec<Node>) {
    let db = fresh_database(admin).await;
    let nodes = vec![
        node(&db, Some(nats)).await,
        node(&db, Some(nats)).await,
        node(&db, Some(nats)).await,
    ];
    (db, nodes)
}

pub struct Node {
    pub child: std::process::Child,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    pub _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn node(db: &str, nats: Option<SocketAddr>) -> Node {
    let dir = tempfile::tempdir().expect("dir");
    let (mqtt, http) = (common::free_addr(), common::free_addr());
    let mut env = vec![
        ("FLUXGATE_STORE_URL", db.to_string()),
        (
            "FLUXGATE_LOG_LEVEL",
            std::env::var("BENCH_NODE_LOG").unwrap_or_else(|_| "off".into()),
        ),
    ];
    if let Some(n) = nats {
        env.push(("FLUXGATE_CLUSTER_NATS_URL", format!("nats://{n}")));
    }
    let child = common::serve_child_on(dir.path(), mqtt, Some(http), &env).await;
    Node {
        child,
        mqtt,
        http,
        _dir: dir,
    }
}

/// A domain, a channel and `n` devices that may publish and subscribe, written through the
/// API of `n0`.
pub struct Site {
    pub token: String,
    pub domain: String,
    pub channel: String,
    pub devices: Vec<(String, String)>,
}

pub async fn site(api: SocketAddr, n: usize) -> Site {
    let url = format!("http://{api}");
    let token = common::admin_token(&url).await;
    let c = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let (c, token, url) = (c.clone(), token.clone(), url.clone());
        async move {
            let r = c
                .post(format!("{url}{path}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("post");
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<serde_json::Value>().await.unwrap_or_default()
        }
    };
    let d = post(
        "/domains".into(),
        serde_json::json!({"name": "bench", "route": "bench"}),
    )
    .await;
    let domain = d["id"].as_str().expect("domain").to_string();
    let h = post(format!("/{domain}/channels"), serde_json::json!({"name": "c"})).await;
    let channel = h["id"].as_str().expect("channel").to_string();
    let mut devices = Vec::new();
    for i in 0..n {
        let v = post(
            format!("/{domain}/clients"),
            serde_json::json!({"name": format!("d{i}")}),
        )
        .await;
        devices.push((
            v["id"].as_str().expect("id").to_string(),
            v["credentials"]["secret"].as_str().expect("secret").to_string(),
        ));
    }
    let ids: Vec<&str> = devices.iter().map(|(i, _)| i.as_str()).collect();
    post(
        format!("/{domain}/channels/connect"),
        serde_json::json!({"client_ids": ids, "channel_ids": [channel], "types": ["publish", "subscribe"]}),
    )
    .await;
    Site {
        token,
        domain,
        channel,
        devices,
    }
}

pub fn opts(addr: SocketAddr, id: &str, dev: &(String, String)) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_credentials(dev.0.clone(), dev.1.clone());
    o.set_inflight(50);
    o
}

/// Latencies seen by subscribers: (publisher's node, subscriber's node, latency).
pub type Seen = Arc<Mutex<Vec<(u8, u8, Duration)>>>;

pub async fn subscriber(addr: SocketAddr, node: u8, id: &str, dev: &(String, String), topic: &str, seen: Seen) {
    let (c, mut el) = AsyncClient::new(opts(addr, id, dev), 10_000);
    c.subscribe(topic, QoS::AtLeastOnce).await.expect("subscribe");
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.expect("subscriber") {
            break;
        }
    }
    tokio::spawn(async move {
        while let Ok(e) = el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                if p.payload.len() >= 9 {
                    let sent = u64::from_be_bytes(p.payload[1..9].try_into().unwrap_or([0; 8]));
                    let now = epoch().elapsed().as_nanos() as u64;
                    if let Ok(mut s) = seen.lock() {
                        s.push((p.payload[0], node, Duration::from_nanos(now.saturating_sub(sent))));
                    }
                }
            }
        }
    });
}

/// Publishes QoS 1, 64-byte messages at `rate` per second for `secs`; returns how many.
pub async fn publisher(
    addr: SocketAddr,
    node: u8,
    id: &str,
    dev: &(String, String),
    topic: String,
    rate: f64,
    secs: f64,
) -> u64 {
    let (c, mut el) = AsyncClient::new(opts(addr, id, dev), 10_000);
    let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0;
    while Instant::now() < end {
        tick.tick().await;
        let mut p = vec![0u8; 64];
        p[0] = node;
        p[1..9].copy_from_slice(&(epoch().elapsed().as_nanos() as u64).to_be_bytes());
        c.publish(topic.clone(), QoS::AtLeastOnce, false, p)
            .await
            .expect("publish");
        n += 1;
    }
    // Let the acknowledgements and deliveries of the last messages finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    driver.abort();
    n
}
