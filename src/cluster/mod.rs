//! Cluster mode: several identical nodes on one PostgreSQL store and a NATS server.
//! PostgreSQL is the system of record (messages, registry, sessions, the change outbox, the
//! node table); core NATS carries what must reach the other nodes quickly (messages, retained
//! messages, change notices). No home-made cluster protocol.
//!
//! - `wire`: subjects and the message headers.
//! - `nats`: the broker's cluster port over NATS.
//! - `parts`: how the platform wires them (prepare, the broker's port, the node's tasks).
//! - this module: the node's id and its row in the node table (registration refusing a live
//!   duplicate, heartbeats, a clean leave), the NATS connection and the counters.

pub mod follow;
pub mod nats;
pub mod parts;
pub mod peers;
pub mod wire;

use crate::config::{valid_token, ClusterConfig};
use rand::RngCore;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use storage::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.node_id: {0}")]
    NodeId(String),
    #[error("{0}")]
    Duplicate(String),
    #[error("cannot connect to NATS at {url}: {err}")]
    Connect { url: String, err: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What the cluster counts (exported at `/metrics`).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Messages handed to NATS for other nodes (flushed).
    pub sent: AtomicU64,
    /// Messages whose copies for other nodes were not handed over (NATS down, slow, or the
    /// export queue full); they are stored here.
    pub lost: AtomicU64,
    /// Messages received from other nodes.
    pub received: AtomicU64,
    /// Messages received before the broker could take them (start-up).
    pub lost_received: AtomicU64,
    /// Messages on our subjects that could not be read.
    pub malformed: AtomicU64,
    /// Reconnections to NATS after a loss.
    pub reconnects: AtomicU64,
    /// Messages NATS dropped for this node as a slow consumer (events).
    pub slow_consumer: AtomicU64,
    /// 1 while connected to NATS.
    pub connected: AtomicU64,
    /// Times this node failed closed (could not confirm it was current).
    pub fail_closed: AtomicU64,
    /// Milliseconds between the commit of the last outbox entry applied and its application.
    pub outbox_lag_ms: AtomicU64,
    /// Waits for the other nodes to know of a change that ran to their staleness bound
    /// (a node silent: dead, slow, or NATS down).
    pub settle_waits: AtomicU64,
    /// Woken at each connection to NATS (what was published meanwhile was missed).
    pub reconnected: tokio::sync::Notify,
    /// Woken when NATS dropped messages for this node (slow consumer).
    pub missed: tokio::sync::Notify,
    /// Woken when this node's messages did not reach the others (see `Subjects::gap`).
    pub lost_some: tokio::sync::Notify,
}

impl ClusterMetrics {
    pub fn inc_malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }
}

/// This node's id: configured, or generated once and kept in the data directory.
pub fn node_id(cfg: &ClusterConfig, data_dir: &Path) -> Result<String, ClusterError> {
    if !cfg.node_id.is_empty() {
        return Ok(cfg.node_id.clone());
    }
    let path = data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim().to_string();
            if valid_token(&id) {
                Ok(id)
            } else {
                Err(ClusterError::NodeId(format!(
                    "{} does not hold a valid node id",
                    path.display()
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{}", random_hex(6));
            std::fs::write(&path, format!("{id}\n"))
                .map_err(|e| ClusterError::NodeId(format!("cannot write {}: {e}", path.display())))?;
            Ok(id)
        }
        Err(e) => Err(ClusterError::NodeId(format!("cannot read {}: {e}", path.display()))),
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_ms() -> i64 {
    (storage::now_micros() / 1000) as i64
}

/// Whether node `n`'s last heartbeat (at `now`, Unix ms) is within `timeout` (a node that
/// left cleanly has none).
fn alive(n: &storage::NodeRow, now: i64, timeout: Duration) -> bool {
    n.heartbeat_at != 0 && now - n.heartbeat_at <= timeout.as_millis() as i64
}

/// This process's hold on its node id.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    /// One per process start.
    pub incarnation: String,
}

impl Node {
    /// Registers the node in the store: refused while another live process holds the id.
    pub async fn register(store: &Store, id: String, timeout: Duration) -> Result<Node, ClusterError> {
        let node = Node {
            id,
            incarnation: random_hex(8),
        };
        let (s, n) = (store.clone(), node.clone());
        let t = timeout.as_millis() as i64;
        let r = tokio::task::spawn_blocking(move || s.node_register(&n.id, &n.incarnation, now_ms(), t))
            .await
            .map_err(|e| ClusterError::Store(StoreError::Database(e.to_string())))?;
        match r {
            Ok(()) => Ok(node),
            Err(StoreError::Conflict(m)) => Err(ClusterError::Duplicate(format!(
                "{m}: another fluxgate node runs with cluster.node_id = {}; give each node its own id (or its own data directory)",
                node.id
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a heartbeat every `every` until the returned future ends: it resolves when
    /// another process took this node's id (this one must stop).
    pub async fn heartbeats(self, store: Store, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let (s, n) = (store.clone(), self.clone());
            let r = tokio::task::spawn_blocking(move || s.node_heartbeat(&n.id, &n.incarnation, now_ms())).await;
            match r {
                Ok(Err(StoreError::Conflict(m))) => {
                    tracing::error!(node = %self.id, "{m}");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(node = %self.id, error = %e, "cannot write the node's heartbeat"),
                _ => {}
            }
        }
    }

    /// A clean stop: the others need not wait for the heartbeat to run out.
    pub async fn leave(&self, store: &Store) {
        let (s, n) = (store.clone(), self.clone());
        let _ = tokio::task::spawn_blocking(move || s.node_leave(&n.id, &n.incarnation)).await;
    }
}

/// The cluster's CA, kept in the store so that every node issues and accepts the same
/// certificates: the first node to start puts its own there (the one in its data directory,
/// so a deployment that grew into a cluster keeps its devices' certificates). Blocks.
pub fn shared_ca(store: &Store, data_dir: &Path) -> Result<certs::Ca, crate::AppError> {
    const KEY: &str = "cluster_ca";
    let parse = |v: &str| -> Result<certs::Ca, crate::AppError> {
        let j: serde_json::Value =
            serde_json::from_str(v).map_err(|e| StoreError::Corrupt(format!("settings.{KEY}: {e}")))?;
        match (j["cert"].as_str(), j["key"].as_str()) {
            (Some(c), Some(k)) => Ok(certs::Ca::from_pem(c, k)?),
            _ => Err(StoreError::Corrupt(format!("settings.{KEY}: cert and key expected")).into()),
        }
    };
    if let Some(v) = store.setting(KEY)? {
        return parse(&v);
    }
    let local = certs::Ca::load_or_create(data_dir, None)?;
    let v = store.setting_or_insert(KEY, || {
        serde_json::json!({"cert": local.pem(), "key": local.key_pem()}).to_string()
    })?;
    parse(&v)
}

/// Shows the connections of dead nodes offline: every `every`, a node whose heartbeat is
/// older than `timeout` (or that left) has its presence rows cleared, once per incarnation,
/// and this node's persistent sessions catch up from the store (a node that died may have
/// acknowledged messages whose live copies never left it).
pub async fn janitor(store: Store, me: String, timeout: Duration, every: Duration, broker: Arc<broker::BrokerHandle>) {
    let mut cleared = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(every);
    // Session owners nobody needs are forgotten about once a minute.
    let prune_every = (60_000 / every.as_millis().max(1)).max(1) as u64;
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(prune_every) {
            let s = store.clone();
            let before = storage::now_micros() - 60_000_000;
            let _ = tokio::task::spawn_blocking(move || s.prune_session_owners(before)).await;
        }
        let s = store.clone();
        let Ok(Ok(nodes)) = tokio::task::spawn_blocking(move || s.nodes()).await else {
            continue;
        };
        let now = now_ms();
        for n in nodes {
            let dead = !alive(&n, now, timeout);
            if n.id == me || !dead || cleared.contains(&(n.id.clone(), n.incarnation.clone())) {
                continue;
            }
            let (s, id) = (store.clone(), n.id.clone());
            if let Ok(Ok(k)) =
                tokio::task::spawn_blocking(move || s.reset_presence_of(&id, storage::now_micros())).await
            {
                if k > 0 {
                    tracing::info!(node = %n.id, clients = k, "node stopped or dead: its connections shown offline");
                }
                broker.catch_up();
                cleared.insert((n.id, n.incarnation));
            }
        }
    }
}

/// Which of a node's two NATS connections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Exports, scopes, retained messages, change notices: never hears its own messages
    /// (`no_echo`), so nothing loops.
    Main,
    /// Shared subscriptions' queue groups only: it must hear this node's own messages, so
    /// that NATS picks among every node's members, this one's included.
    Shares,
}

/// Connects to NATS (retrying in the background after the first success; the first
/// connection must succeed), counting reconnections and slow-consumer drops.
pub async fn connect(
    cfg: &ClusterConfig,
    node: &str,
    metrics: Arc<ClusterMetrics>,
    role: Role,
) -> Result<async_nats::Client, ClusterError> {
    let url = cfg.nats_url.expose().to_string();
    let m = metrics.clone();
    let main = role == Role::Main;
    let opts = async_nats::ConnectOptions::new().name(match role {
        Role::Main => format!("fluxgate {node}"),
        Role::Shares => format!("fluxgate {node} shares"),
    });
    let opts = if main { opts.no_echo() } else { opts };
    let opts = opts
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |e| {
            let m = m.clone();
            async move {
                match e {
                    async_nats::Event::Connected if !main => tracing::info!("NATS connection (shares) back"),
                    async_nats::Event::Disconnected if !main => {
                        tracing::warn!("NATS connection (shares) lost; reconnecting")
                    }
                    async_nats::Event::Connected => {
                        m.reconnects.fetch_add(1, Ordering::Relaxed);
                        m.connected.store(1, Ordering::Relaxed);
                        m.reconnected.notify_waiters();
                        tracing::info!("NATS connection back");
                    }
                    async_nats::Event::Disconnected => {
                        m.connected.store(0, Ordering::Relaxed);
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        m.slow_consumer.fetch_add(1, Ordering::Relaxed);
                        m.missed.notify_one();
                    }
                    other => tracing::warn!(event = %other, "NATS"),
                }
            }
        });
    let client = opts.connect(url.as_str()).await.map_err(|e| ClusterError::Connect {
        url: redact(&url),
        err: e.to_string(),
    })?;
    if main {
        metrics.connected.store(1, Ordering::Relaxed);
    }
    Ok(client)
}

/// A NATS URL without its credentials, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nats_urls_are_shown_without_credentials() {
        assert_eq!(super::redact("nats://u:secret@h:4222"), "nats://***@h:4222");
        assert_eq!(super::redact("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn a_generated_node_id_is_kept() {
        let d = tempfile::tempdir().expect("dir");
        let cfg = crate::config::Config::defaults().cluster;
        let a = super::node_id(&cfg, d.path()).expect("generated");
        assert!(crate::config::valid_token(&a));
        assert_eq!(super::node_id(&cfg, d.path()).expect("kept"), a);
    }
}
