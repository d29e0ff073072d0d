//! The broker's cluster port over core NATS: one export task publishes what this node
//! accepted (and flushes before the acknowledgements it holds may leave), one subscription per
//! scope this node's subscriptions need (reference counted by the broker) feeds the broker's
//! import entry. Retained messages travel on their own subject, which every node hears: each
//! node keeps it in its retained index, then delivers it to its subscribers, in one task, so
//! a subscriber that saw a retained message live finds it (or a newer one) in the index.

use super::wire::{self, Subjects};
use super::ClusterMetrics;
use async_nats::{Client, HeaderMap};
use broker::{BoxFuture, BrokerHandle, Carried, Scope};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Messages waiting for the export task; beyond this their cross-node copies are dropped
/// (counted): a NATS server that cannot keep up must not grow this node's memory.
const EXPORT_QUEUE: usize = 65_536;
/// Messages published between two flushes at most.
const EXPORT_BATCH: usize = 512;

struct Export {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    retained: bool,
    done: Option<oneshot::Sender<bool>>,
    /// Published once this resolves (the persistent-session entries it carries are
    /// committed); the messages after it wait.
    after: Option<oneshot::Receiver<bool>>,
}

/// This node's share of one shared subscription group: one queue subscription per subject.
type Sharing = HashMap<(String, String), Vec<tokio::task::JoinHandle<()>>>;

pub struct NatsCluster {
    client: Client,
    /// Queue subscriptions of shared subscription groups (hears this node's own messages).
    shares: Client,
    sharing: Arc<Mutex<Sharing>>,
    subjects: Subjects,
    node: String,
    exports: mpsc::Sender<Export>,
    listening: Arc<Mutex<HashMap<Scope, tokio::task::JoinHandle<()>>>>,
    /// `Scope::AllChannels` is heard: per-channel subscriptions stay quiet (no duplicates).
    all_channels: Arc<AtomicBool>,
    broker: Arc<OnceLock<Arc<BrokerHandle>>>,
    metrics: Arc<ClusterMetrics>,
    flush_timeout: Duration,
    store: storage::Store,
    fresh: Arc<super::follow::Freshness>,
    peers: Arc<super::peers::Peers>,
    /// How long a node that did not read the outbox keeps serving publishes, and when a
    /// node's heartbeat is too old for it to count as alive (see `settled`).
    stale_after: Duration,
    node_timeout: Duration,
}

/// Added to `stale_after` when waiting for the others without word from them.
const SETTLE_MARGIN: Duration = Duration::from_millis(50);

impl NatsCluster {
    /// Starts the export task on the current runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        client: Client,
        shares: Client,
        subjects: Subjects,
        node: String,
        metrics: Arc<ClusterMetrics>,
        flush_timeout: Duration,
        store: storage::Store,
        fresh: Arc<super::follow::Freshness>,
        peers: Arc<super::peers::Peers>,
        (stale_after, node_timeout): (Duration, Duration),
    ) -> Arc<NatsCluster> {
        let (tx, rx) = mpsc::channel(EXPORT_QUEUE);
        let broker = Arc::new(OnceLock::new());
        tokio::spawn(export_loop(
            client.clone(),
            rx,
            subjects.retained(),
            metrics.clone(),
            flush_timeout,
            broker.clone(),
        ));
        Arc::new(NatsCluster {
            client,
            shares,
            sharing: Arc::new(Mutex::new(HashMap::new())),
            subjects,
            node,
            exports: tx,
            listening: Arc::new(Mutex::new(HashMap::new())),
            all_channels: Arc::new(AtomicBool::new(false)),
            broker,
            metrics,
            flush_timeout,
            store,
            fresh,
            peers,
            stale_after,
            node_timeout,
        })
    }

    /// Connects the import side to the broker (it starts after this port exists) and
    /// starts hearing retained messages (kept, then delivered).
    pub async fn attach(&self, broker: Arc<BrokerHandle>) -> Result<(), async_nats::SubscribeError> {
        let _ = self.broker.set(broker.clone());
        let mut sub = self.client.subscribe(self.subjects.retained()).await?;
        // Gaps: persistent sessions read their stored queues again when messages for them
        // may have been missed: another node's (its notice), NATS's (slow consumer).
        let mut gaps = self.client.subscribe(self.subjects.gap()).await?;
        let b = broker.clone();
        tokio::spawn(async move {
            while gaps.next().await.is_some() {
                b.catch_up();
            }
        });
        let (m, b) = (self.metrics.clone(), broker.clone());
        tokio::spawn(async move {
            loop {
                m.missed.notified().await;
                b.catch_up();
            }
        });
        // This node's losses are announced to the others.
        let (m, client, subject) = (self.metrics.clone(), self.client.clone(), self.subjects.gap());
        tokio::spawn(async move {
            loop {
                m.lost_some.notified().await;
                let _ = client.publish(subject.clone(), Bytes::new()).await;
                let _ = client.flush().await;
            }
        });
        // After a gap (NATS lost and back), retained messages set meanwhile were missed: the
        // index is read again from the store, which has them all. Both sides of the gap
        // missed messages: this node's sessions catch up, and the others are told.
        let (m, b) = (self.metrics.clone(), broker.clone());
        tokio::spawn(async move {
            loop {
                m.reconnected.notified().await;
                b.catch_up();
                m.lost_some.notify_one();
                let b = b.clone();
                match tokio::task::spawn_blocking(move || b.reload_retained()).await {
                    Ok(Ok(n)) => tracing::info!(
                        topics = n,
                        "retained messages read again from the store after a NATS gap"
                    ),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot read retained messages again after a NATS gap"),
                    Err(_) => return,
                }
            }
        });
        let m = self.metrics.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match wire::decode(msg.headers.as_ref(), msg.payload) {
                    Some((_, c)) => {
                        m.received.fetch_add(1, Ordering::Relaxed);
                        broker.remember_retained(&c);
                        broker.import(&c);
                    }
                    None => m.inc_malformed(),
                }
            }
        });
        Ok(())
    }
}

impl broker::Cluster for NatsCluster {
    fn claim(&self, key: &str) -> BoxFuture<Result<u64, broker::PortError>> {
        let (store, key) = (self.store.clone(), key.to_string());
        let (client, subject) = (self.client.clone(), self.subjects.changes());
        Box::pin(async move {
            let r = tokio::task::spawn_blocking(move || store.claim_session(&key))
                .await
                .map_err(|e| broker::PortError::Unavailable("store", e.to_string()))?;
            let seq = r.map_err(|e| broker::PortError::Unavailable("store", e.to_string()))?;
            // The others read the outbox at once; without NATS they find it within a poll.
            let _ = client.publish(subject, Bytes::new()).await;
            Ok(seq.max(0) as u64)
        })
    }

    fn current(&self) -> bool {
        self.fresh.current()
    }

    fn settled(&self) -> BoxFuture<()> {
        let (store, peers, me) = (self.store.clone(), self.peers.clone(), self.node.clone());
        let timeout = self.node_timeout;
        let metrics = self.metrics.clone();
        // After `stale_after` from the commit, a node still serving publishes has read the
        // outbox since (see `Freshness::confirm_from`): the wait ends then at the latest.
        let deadline = tokio::time::Instant::now() + self.stale_after + SETTLE_MARGIN;
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || -> Result<_, storage::StoreError> {
                Ok((store.outbox_head()?, store.nodes()?))
            })
            .await;
            let Ok(Ok((head, nodes))) = read else {
                tokio::time::sleep_until(deadline).await;
                return;
            };
            let now = super::now_ms();
            let live = nodes
                .into_iter()
                .filter(|n| n.id != me && super::alive(n, now, timeout))
                .map(|n| n.id)
                .collect();
            if !peers.until_applied(&live, head, deadline).await {
                metrics.settle_waits.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    fn export(
        &self,
        c: Carried,
        wait: bool,
        after: Option<oneshot::Receiver<bool>>,
    ) -> Option<oneshot::Receiver<bool>> {
        let (done, rx) = match wait {
            true => {
                let (t, r) = oneshot::channel();
                (Some(t), Some(r))
            }
            false => (None, None),
        };
        let e = Export {
            subject: self.subjects.of(&c),
            headers: wire::headers(&c, &self.node),
            payload: c.payload,
            retained: c.retain,
            done,
            after,
        };
        if let Err(e) = self.exports.try_send(e) {
            // Full or stopped: the message is stored here, its live copies elsewhere are lost.
            self.metrics.lost.fetch_add(1, Ordering::Relaxed);
            self.metrics.lost_some.notify_one();
            let e = match e {
                mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
            };
            if let Some(d) = e.done {
                let _ = d.send(true);
            }
        }
        rx
    }

    fn share(&self, group: &str, filter: &str, on: bool) -> BoxFuture<()> {
        let key = (group.to_string(), filter.to_string());
        if !on {
            if let Ok(mut s) = self.sharing.lock() {
                // The subscriptions are dropped with their tasks: NATS unsubscribes.
                for t in s.remove(&key).into_iter().flatten() {
                    t.abort();
                }
            }
            return Box::pin(async {});
        }
        let queue = self.subjects.queue(group, filter);
        // Every subject the filter's messages can come on, retained ones included (a
        // retained message is published on its own subject only).
        let mut subjects: Vec<String> = Scope::of_filter(filter)
            .iter()
            .map(|s| self.subjects.listen(s))
            .collect();
        subjects.push(self.subjects.retained());
        let client = self.shares.clone();
        let (broker, metrics) = (self.broker.clone(), self.metrics.clone());
        let (sharing, flush_timeout) = (self.sharing.clone(), self.flush_timeout);
        Box::pin(async move {
            let mut tasks = Vec::new();
            for subject in subjects {
                let mut sub = match client.queue_subscribe(subject.clone(), queue.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(%subject, error = %e, "cannot take a shared subscription's share on NATS");
                        continue;
                    }
                };
                let (broker, metrics, key) = (broker.clone(), metrics.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    while let Some(msg) = sub.next().await {
                        let Some((_, c)) = wire::decode(msg.headers.as_ref(), msg.payload) else {
                            metrics.inc_malformed();
                            continue;
                        };
                        metrics.received.fetch_add(1, Ordering::Relaxed);
                        match broker.get() {
                            Some(b) => {
                                b.import_shared(&key.0, &key.1, &c);
                            }
                            None => {
                                metrics.lost_received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            if let Ok(mut s) = sharing.lock() {
                for old in s.insert(key, tasks).into_iter().flatten() {
                    old.abort();
                }
            }
            // The server has the subscriptions once a flush returns: nothing published after
            // the SUBACK slips past.
            let _ = tokio::time::timeout(flush_timeout, client.flush()).await;
        })
    }

    fn listen(&self, scope: Scope, on: bool) -> BoxFuture<()> {
        let subject = self.subjects.listen(&scope);
        if !on {
            if let Ok(mut l) = self.listening.lock() {
                if let Some(t) = l.remove(&scope) {
                    // The subscription is dropped with its task: NATS unsubscribes.
                    t.abort();
                }
            }
            if scope == Scope::AllChannels {
                self.all_channels.store(false, Ordering::Release);
            }
            return Box::pin(async {});
        }
        let client = self.client.clone();
        let (broker, metrics, all) = (self.broker.clone(), self.metrics.clone(), self.all_channels.clone());
        let (listening, flush_timeout) = (self.listening.clone(), self.flush_timeout);
        Box::pin(async move {
            let mut sub = match client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(%subject, error = %e, "cannot subscribe on NATS");
                    return;
                }
            };
            let channel = matches!(scope, Scope::Channel(_));
            if scope == Scope::AllChannels {
                all.store(true, Ordering::Release);
            }
            let task = tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    if channel && all.load(Ordering::Acquire) {
                        continue;
                    }
                    let Some((_, c)) = wire::decode(msg.headers.as_ref(), msg.payload) else {
                        metrics.inc_malformed();
                        continue;
                    };
                    metrics.received.fetch_add(1, Ordering::Relaxed);
                    match broker.get() {
                        Some(b) => b.import(&c),
                        None => {
                            metrics.lost_received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
            if let Ok(mut l) = listening.lock() {
                if let Some(old) = l.insert(scope, task) {
                    old.abort();
                }
            }
            // The server has the subscription once a flush returns: nothing published after
            // the SUBACK slips past.
            let _ = tokio::time::timeout(flush_timeout, client.flush()).await;
        })
    }
}

/// Publishes what this node accepted, in order; after each batch, one flush releases the
/// acknowledgements waiting for it. A disconnected client publishes nothing: the messages
/// are stored here, their live copies elsewhere are counted as lost, and this node's
/// shared subscription members get them from here (`BrokerHandle::share_here`).
async fn export_loop(
    client: Client,
    mut rx: mpsc::Receiver<Export>,
    retained: String,
    metrics: Arc<ClusterMetrics>,
    flush_timeout: Duration,
    broker: Arc<OnceLock<Arc<BrokerHandle>>>,
) {
    let mut batch = Vec::with_capacity(EXPORT_BATCH);
    while rx.recv_many(&mut batch, EXPORT_BATCH).await > 0 {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        let mut done = Vec::new();
        let mut sent = 0u64;
        for e in batch.drain(..) {
            done.extend(e.done);
            if let Some(a) = e.after {
                let _ = a.await;
            }
            if !connected {
                if let (Some(b), Some((_, c))) = (broker.get(), wire::decode(Some(&e.headers), e.payload)) {
                    b.share_here(&c);
                }
                continue;
            }
            // A retained message goes to every node (each keeps the retained set), on its own
            // subject only.
            let subject = if e.retained { retained.clone() } else { e.subject };
            if client.publish_with_headers(subject, e.headers, e.payload).await.is_ok() {
                sent += 1;
            }
        }
        let n = done.len().max(sent as usize) as u64;
        let flushed = connected
            && (done.is_empty() || matches!(tokio::time::timeout(flush_timeout, client.flush()).await, Ok(Ok(()))));
        if flushed {
            metrics.sent.fetch_add(sent, Ordering::Relaxed);
        } else {
            metrics.lost.fetch_add(n, Ordering::Relaxed);
            metrics.lost_some.notify_one();
        }
        for d in done {
            // Stored here either way: the acknowledgement goes.
            let _ = d.send(true);
        }
    }
}
