//! The broker's presence port over the store: session events go through an unbounded
//! channel (the broker never waits) to one task that writes them in batches, then announces
//! each client's presence on a broadcast feed (for live views and tests).

use std::sync::Arc;
use storage::{PresenceChange, PresenceEvent, Store};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Events written per transaction, at most.
const BATCH: usize = 1024;

enum Msg {
    Event(PresenceEvent),
    /// Resolves once everything sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// The broker's [`broker::Presence`]: hands events to the writer task.
#[derive(Clone)]
pub struct StorePresence {
    tx: mpsc::UnboundedSender<Msg>,
}

impl StorePresence {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store, feed: broadcast::Sender<PresenceChange>) -> StorePresence {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(store, rx, feed));
        StorePresence { tx }
    }

    /// Waits until every event reported so far is in the store.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn send(&self, c: broker::Connection, connected: bool) {
        let e = PresenceEvent {
            domain_id: c.identity.domain_id,
            client_id: c.identity.client_id,
            mqtt_client_id: c.mqtt_client_id,
            remote_addr: c.remote.to_string(),
            protocol: c.transport.as_str().to_string(),
            at: c.at_ms.min(i64::MAX as u64 / 1000) as i64 * 1000,
            connected,
            claim: c.claim.min(i64::MAX as u64) as i64,
        };
        let _ = self.tx.send(Msg::Event(e));
    }
}

impl broker::Presence for StorePresence {
    fn connected(&self, c: broker::Connection) {
        self.send(c, true);
    }
    fn disconnected(&self, c: broker::Connection) {
        self.send(c, false);
    }
}

async fn writer(store: Store, mut rx: mpsc::UnboundedReceiver<Msg>, feed: broadcast::Sender<PresenceChange>) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Event(e) => batch.push(e),
                Msg::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let (s, events) = (store.clone(), std::mem::take(&mut batch));
            match tokio::task::spawn_blocking(move || s.apply_presence(&events)).await {
                Ok(Ok(changes)) => {
                    for c in changes {
                        let _ = feed.send(c);
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "presence not recorded"),
                Err(e) => tracing::warn!(error = %e, "presence writer task failed"),
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The presence port as the broker takes it.
pub fn port(p: &StorePresence) -> Arc<dyn broker::Presence> {
    Arc::new(p.clone())
}
