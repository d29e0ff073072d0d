//! The brokers measured, each in a process of its own: `fluxgate serve` (provisioned by
//! opening its database from here), bare rumqttd (this bench binary started again with
//! `FLUXGATE_BENCH_ROLE=rumqttd`), and Debian's Mosquitto.

use crate::common;
use std::net::SocketAddr;
use std::time::Duration;

pub type Creds = Vec<(String, String)>;

/// `fluxgate serve` as a child process with `env` added.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Its API (for `/metrics`).
    pub http: SocketAddr,
    pub store: storage::Store,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub async fn start(env: &[(&str, String)]) -> ServerProcess {
        let dir = tempfile::tempdir().expect("tmp");
        let (addr, http) = (common::free_addr(), common::free_addr());
        let mut env = env.to_vec();
        env.push(("RUST_LOG", "warn".to_string()));
        let child = common::serve_child_on(dir.path(), addr, Some(http), &env).await;
        let store = common::server_store(dir.path()).await;
        ServerProcess {
            child,
            addr,
            http,
            store,
            _dir: dir,
        }
    }

    pub fn rss_kib(&self) -> u64 {
        common::rss_kib(self.child.id())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process that is killed when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_listening(addr: SocketAddr, what: &str) {
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not come up on {addr}");
}

/// Bare rumqttd in its own process (this binary, role `rumqttd`), with Fluxgate's default
/// router settings.
pub async fn bare_rumqttd() -> (Child, SocketAddr) {
    let addr = common::free_addr();
    let child = std::process::Command::new(std::env::current_exe().expect("the bench binary"))
        .env("FLUXGATE_BENCH_ROLE", "rumqttd")
        .env("FLUXGATE_BENCH_ADDR", addr.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn bare rumqttd");
    let child = Child(child);
    wait_listening(addr, "bare rumqttd").await;
    (child, addr)
}

/// Debian's Mosquitto on a free port (`BENCH_MQTT_REFERENCE=host:port` names another
/// reference broker instead); None when there is none.
pub async fn mosquitto() -> Option<(Option<Child>, SocketAddr)> {
    if let Ok(a) = std::env::var("BENCH_MQTT_REFERENCE") {
        return a.parse().ok().map(|a| (None, a));
    }
    let addr = common::free_addr();
    let child = std::process::Command::new("mosquitto")
        .args(["-p", &addr.port().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let child = Child(child);
    wait_listening(addr, "mosquitto").await;
    Some((Some(child), addr))
}

/// The role process: bare rumqttd (its own network layer, MQTT 3.1.1, no authentication) on
/// `FLUXGATE_BENCH_ADDR`, until killed.
pub fn bare_rumqttd_main() {
    use std::collections::HashMap;
    let addr: SocketAddr = std::env::var("FLUXGATE_BENCH_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .expect("FLUXGATE_BENCH_ADDR");
    let cfg = broker::BrokerConfig::default();
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
            max_connections: 10_016,
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
    if let Err(e) = rumqttd::Broker::new(rcfg).start() {
        eprintln!("bare rumqttd stopped: {e}");
    }
}

/// A second domain with `n` channels and one client connected to all of them (both types).
pub fn many_channels(store: &storage::Store, n: usize) -> ((String, String), Vec<String>) {
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

/// Creates a domain (`route`), 4 channels and `n` clients (at least 8, all connected to the 4
/// channels); returns the topics, the first 8 clients' credentials and every client's.
pub fn provision(store: &storage::Store, route: &str, n: usize) -> (Vec<String>, Creds, Creds) {
    let d = common::domain(store, route, None);
    let channels: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    common::channels(store, &d.id, &channels);
    let all: Creds = (0..n.max(8))
        .map(|i| (format!("{route}-dev-{i}"), format!("secret-of-{route}-dev-{i}")))
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
