//! Following the cluster's changes: the store's outbox is the source of truth. Every node
//! reads it by number, applies each entry once and in order (a revocation, or another
//! node's claim on a session), and reads at once when told to: by a notice on NATS (another
//! node committed something), or by a change this node committed. It also reads every
//! `poll` on its own, so a node cut off from NATS is still current within that time. A node
//! that has not read the outbox successfully for `stale_after` fails closed (see
//! [`Freshness`]).

use super::wire::Subjects;
use super::ClusterMetrics;
use broker::BrokerHandle;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::{Change, Store};

/// Entries read at once.
const PAGE: u32 = 1000;

/// When this node last knew it was current with the outbox.
pub struct Freshness {
    start: Instant,
    /// Milliseconds after `start` of the last successful read.
    confirmed: AtomicU64,
    stale_after: Duration,
    stale: AtomicBool,
    metrics: Arc<ClusterMetrics>,
}

impl Freshness {
    pub fn new(stale_after: Duration, metrics: Arc<ClusterMetrics>) -> Arc<Freshness> {
        Arc::new(Freshness {
            start: Instant::now(),
            confirmed: AtomicU64::new(0),
            stale_after,
            stale: AtomicBool::new(false),
            metrics,
        })
    }

    /// Now, as `confirm_from` takes it.
    pub fn stamp(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A read of the outbox succeeded: current until `stale_after` from now.
    pub fn confirm(&self) {
        self.confirm_from(self.stamp());
    }

    /// A read of the outbox that began at `stamp` succeeded (and what it read is applied):
    /// current until `stale_after` from when it began, since it saw every change committed
    /// before then (and perhaps not those after). A node that waits `stale_after` after a
    /// commit thus knows every node still current has applied it (see `peers`).
    pub fn confirm_from(&self, stamp: u64) {
        self.confirmed.fetch_max(stamp, Ordering::AcqRel);
        if self.stale.swap(false, Ordering::AcqRel) {
            tracing::info!("current with the cluster's changes again: serving publishes and connections");
        }
    }

    /// Whether the last successful read is recent enough (counts each period it was not).
    pub fn current(&self) -> bool {
        let ok =
            self.stamp().saturating_sub(self.confirmed.load(Ordering::Acquire)) <= self.stale_after.as_millis() as u64;
        if !ok && !self.stale.swap(true, Ordering::AcqRel) {
            self.metrics.fail_closed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                after_ms = self.stale_after.as_millis() as u64,
                "cannot confirm this node is current with the cluster's changes: refusing publishes and new connections"
            );
        }
        ok
    }
}

/// Aborts a task when dropped (with the future that owns it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the follower needs.
pub struct Follower {
    pub store: Store,
    pub broker: Arc<BrokerHandle>,
    pub node: String,
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub fresh: Arc<Freshness>,
    pub metrics: Arc<ClusterMetrics>,
    pub poll: Duration,
    pub peers: Arc<super::peers::Peers>,
}

impl Follower {
    /// Follows the outbox from its current head until the task is dropped. `local` is this
    /// node's change feed: a change committed here is read (and told to the others) at once.
    pub async fn run(self, mut local: tokio::sync::broadcast::Receiver<Change>) {
        // Staleness is noticed (logged, counted) when it happens, not at the next device's
        // request: a read of the outbox may itself hang on an unreachable database.
        let fresh = self.fresh.clone();
        let every = self.poll;
        let _watch = AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = fresh.current();
            }
        }));
        let began = self.fresh.stamp();
        let mut last = loop {
            let s = self.store.clone();
            match tokio::task::spawn_blocking(move || s.outbox_head()).await {
                Ok(Ok(h)) => break h,
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the outbox head; retrying"),
                Err(_) => return,
            }
            tokio::time::sleep(self.poll).await;
        };
        self.index_all().await;
        self.fresh.confirm_from(began);
        // How far the others applied the outbox (see `peers`).
        let _hear_applied = match self.client.subscribe(self.subjects.applied()).await {
            Ok(mut sub) => {
                let peers = self.peers.clone();
                Some(AbortOnDrop(tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        if let Some((node, seq)) = super::peers::read_notice(&m.payload) {
                            peers.heard(node, seq);
                        }
                    }
                })))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear how far the other nodes applied the outbox");
                None
            }
        };
        let mut notices = match self.client.subscribe(self.subjects.changes()).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot hear change notices on NATS; following the outbox by polling only");
                None
            }
        };
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                n = async {
                    match notices.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if n.is_none() {
                        notices = None;
                    }
                }
                c = local.recv() => match c {
                    // Told to the other nodes, which read it at once.
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.notify().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
            let before = last;
            last = self.read_from(last).await;
            if last > before {
                let notice = super::peers::notice(&self.node, last);
                let _ = self.client.publish(self.subjects.applied(), notice).await;
            }
        }
    }

    /// Tells the other nodes that the outbox has something new.
    pub async fn notify(&self) {
        let _ = self.client.publish(self.subjects.changes(), bytes::Bytes::new()).await;
    }

    /// Reads and applies everything after `last`; returns the number of the last applied.
    async fn read_from(&self, mut last: i64) -> i64 {
        loop {
            let s = self.store.clone();
            let began = self.fresh.stamp();
            let read = tokio::task::spawn_blocking(move || s.outbox_after(last, PAGE)).await;
            let entries = match read {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot read the outbox");
                    return last;
                }
                Err(_) => return last,
            };
            let n = entries.len();
            for e in entries {
                if let Change::SessionIndexed { key } = &e.change {
                    self.reindex(key).await;
                }
                self.apply(e.seq, e.change);
                let lag_ms = (storage::now_micros() - e.at).max(0) / 1000;
                self.metrics.outbox_lag_ms.store(lag_ms as u64, Ordering::Relaxed);
                last = e.seq;
            }
            if n < PAGE as usize {
                self.fresh.confirm_from(began);
                return last;
            }
        }
    }

    /// Reads what another node holds for persistent session `key` into the broker's index
    /// of the cluster's persistent subscriptions.
    async fn reindex(&self, key: &str) {
        let (s, k) = (self.store.clone(), key.to_string());
        match tokio::task::spawn_blocking(move || s.session_elsewhere(&k)).await {
            Ok(Ok(held)) => self.broker.index_remote(
                key,
                held.as_ref()
                    .map(|(d, state)| (d.as_deref(), bytes::Bytes::copy_from_slice(state))),
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read a session for the index of the cluster's persistent subscriptions")
            }
            Err(_) => {}
        }
    }

    /// The index of the cluster's persistent subscriptions, read whole (at start, before
    /// the outbox is followed from its head).
    async fn index_all(&self) {
        let s = self.store.clone();
        match tokio::task::spawn_blocking(move || s.sessions_elsewhere()).await {
            Ok(Ok(all)) => {
                for (key, d, state) in all {
                    self.broker
                        .index_remote(&key, Some((d.as_deref(), bytes::Bytes::from(state))));
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the cluster's persistent sessions"),
            Err(_) => {}
        }
    }

    fn apply(&self, seq: i64, c: Change) {
        match c {
            Change::SessionClaimed { key, node } if node != self.node => self.broker.claimed(&key, seq.max(0) as u64),
            Change::SessionClaimed { .. } | Change::SessionIndexed { .. } => {}
            other => {
                if let Some(r) = crate::mqtt::revocation(other) {
                    self.broker.revoke(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_current_until_its_last_read_is_too_old_and_counts_each_stale_period() {
        let m = Arc::new(ClusterMetrics::default());
        // Last confirmed a minute ago, with a bound of one second.
        let f = Freshness {
            start: Instant::now()
                .checked_sub(Duration::from_secs(60))
                .unwrap_or_else(Instant::now),
            confirmed: AtomicU64::new(0),
            stale_after: Duration::from_secs(1),
            stale: AtomicBool::new(false),
            metrics: m.clone(),
        };
        assert!(!f.current());
        assert!(!f.current(), "still stale");
        assert_eq!(m.fail_closed.load(Ordering::Relaxed), 1, "one period");
        f.confirm();
        assert!(f.current());
    }
}
