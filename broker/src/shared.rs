//! State shared by every session of one broker.

use crate::*;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// State shared by every session.
pub(crate) struct Shared {
    /// True once the broker stops accepting connections.
    pub stop: tokio::sync::watch::Sender<bool>,
    pub presence: Option<Arc<dyn Presence>>,
    pub cfg: BrokerConfig,
    pub auth: Arc<dyn Authorizer>,
    pub sink: Arc<dyn MessageSink>,
    pub metrics: Arc<Metrics>,
    pub registry: registry::Registry,
    pub router: router::RouterPort,
    /// Reading subscribers' backpressure on publishers over the router's log.
    pub pressure: Arc<crate::pressure::Pressure>,
    pub retained: retained::RetainedIndex,
    pub durable: durable::Durable,
    /// The session store (cluster mode: sessions move in from other nodes through it).
    pub sessions: Option<Arc<dyn SessionStore>>,
    pub pending: Arc<fair::FairSlots>,
    pub rt: tokio::runtime::Handle,
    pub next_origin: AtomicU64,
    /// Cluster mode: where accepted messages go to other nodes.
    pub cluster: Option<Arc<dyn Cluster>>,
    /// Cluster mode: the scopes this node's subscriptions need to hear.
    pub interest: Option<Arc<crate::cluster::Interest>>,
}

impl Shared {
    /// False while a cluster node cannot confirm it is current (it fails closed).
    pub(crate) fn current(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.current())
    }

    /// Resolves once the broker stops accepting connections.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}
