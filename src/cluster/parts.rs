//! Cluster mode's parts as the platform wires them: prepared last in `App::build` (NATS
//! connected, node registered, the store scoped to the node), the broker's port made before
//! the broker starts, and the node's tasks (retained messages, heartbeats, the outbox
//! follower, the janitor) started once it runs.

use super::follow::{Follower, Freshness};
use super::nats::NatsCluster;
use super::wire::Subjects;
use super::{connect, janitor, node_id, ClusterError, ClusterMetrics, Node, Role};
use crate::config::ClusterConfig;
use broker::BrokerHandle;
use std::sync::Arc;
use std::time::Duration;
use storage::{Change, Store};
use tokio::task::JoinHandle;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A node of a cluster, ready to serve.
pub struct Parts {
    pub node: Node,
    pub client: async_nats::Client,
    /// The connection shared subscriptions take their share on (see `Role::Shares`).
    pub shares: async_nats::Client,
    pub metrics: Arc<ClusterMetrics>,
    cfg: ClusterConfig,
}

/// The broker's port and the node's freshness (made before the broker starts).
pub struct Port {
    pub nats: Arc<NatsCluster>,
    fresh: Arc<Freshness>,
    peers: Arc<super::peers::Peers>,
}

/// The node's running tasks.
pub struct Running {
    /// Ends when another process took this node's id.
    pub beating: JoinHandle<()>,
    pub follow: JoinHandle<()>,
    janitor: JoinHandle<()>,
}

impl Running {
    pub fn stop(&self) {
        self.follow.abort();
        self.janitor.abort();
    }
}

impl Parts {
    /// Connects to NATS and registers the node (refused while another live process holds
    /// its id); from here the store keeps this node's per-node state. `None` outside
    /// cluster mode. The last step of `App::build`: nothing after it can fail.
    pub async fn prepare(
        cfg: &ClusterConfig,
        data_dir: &std::path::Path,
        store: &Store,
    ) -> Result<Option<Parts>, ClusterError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let id = node_id(cfg, data_dir)?;
        let metrics = Arc::new(ClusterMetrics::default());
        let client = connect(cfg, &id, metrics.clone(), Role::Main).await?;
        let shares = connect(cfg, &id, metrics.clone(), Role::Shares).await?;
        let node = Node::register(store, id, ms(cfg.node_timeout_ms)).await?;
        store.set_node(&node.id);
        tracing::info!(node = %node.id, "cluster mode: NATS connected, node registered");
        Ok(Some(Parts {
            node,
            client,
            shares,
            metrics,
            cfg: cfg.clone(),
        }))
    }

    fn subjects(&self) -> Subjects {
        Subjects {
            prefix: self.cfg.subject_prefix.clone(),
        }
    }

    /// The broker's cluster port.
    pub fn port(&self, store: &Store) -> Port {
        let fresh = Freshness::new(ms(self.cfg.stale_after_ms), self.metrics.clone());
        let peers = Arc::new(super::peers::Peers::default());
        let nats = NatsCluster::start(
            self.client.clone(),
            self.shares.clone(),
            self.subjects(),
            self.node.id.clone(),
            self.metrics.clone(),
            ms(self.cfg.flush_timeout_ms),
            store.clone(),
            fresh.clone(),
            peers.clone(),
            (ms(self.cfg.stale_after_ms), ms(self.cfg.node_timeout_ms)),
        );
        Port { nats, fresh, peers }
    }

    /// Once the broker runs: retained messages from the others, heartbeats, the outbox
    /// follower (fed by this node's change feed) and the janitor.
    pub async fn run(
        &self,
        port: Port,
        store: &Store,
        broker: Arc<BrokerHandle>,
        changes: tokio::sync::broadcast::Receiver<Change>,
    ) -> Running {
        if let Err(e) = port.nats.attach(broker.clone()).await {
            tracing::error!(error = %e, "cannot subscribe to retained messages on NATS");
        }
        let beating = tokio::spawn(self.node.clone().heartbeats(store.clone(), ms(self.cfg.heartbeat_ms)));
        let follower = Follower {
            store: store.clone(),
            broker,
            node: self.node.id.clone(),
            client: self.client.clone(),
            subjects: self.subjects(),
            fresh: port.fresh,
            metrics: self.metrics.clone(),
            poll: ms(self.cfg.poll_ms),
            peers: port.peers,
        };
        let janitor = tokio::spawn(janitor(
            store.clone(),
            self.node.id.clone(),
            ms(self.cfg.node_timeout_ms),
            ms(self.cfg.heartbeat_ms),
            follower.broker.clone(),
        ));
        let follow = tokio::spawn(follower.run(changes));
        Running {
            beating,
            follow,
            janitor,
        }
    }

    /// A clean stop: the node leaves the node table and flushes what it sent (bounded: a
    /// NATS server that is gone must not hold the stop).
    pub async fn leave(&self, store: &Store) {
        self.node.leave(store).await;
        let _ = tokio::time::timeout(ms(self.cfg.flush_timeout_ms), self.client.flush()).await;
        let _ = tokio::time::timeout(ms(self.cfg.flush_timeout_ms), self.shares.flush()).await;
    }
}
