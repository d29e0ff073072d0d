//! The bounded queue between the adapters (HTTP, MQTT) and the writer: a channel plus a
//! count of queued rows, and the broker's `MessageSink` over it.

use broker::{Message, MessageSink};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use storage::NewMessage;
use tokio::sync::{mpsc, oneshot};

pub(super) enum Envelope {
    /// Normalized rows (HTTP), with a commit notification for durable requests.
    Rows(Vec<NewMessage>, Option<oneshot::Sender<()>>),
    /// Raw MQTT payloads (what one read from a device carried), normalized by the writer.
    Mqtt(Vec<Message>),
}

impl Envelope {
    pub(super) fn rows(&self) -> usize {
        match self {
            Envelope::Rows(r, _) => r.len().max(1),
            Envelope::Mqtt(m) => m.len(),
        }
    }
}

/// The bounded queue: a channel plus a count of queued rows, so that one envelope can carry
/// many messages (one wake-up per batch, not per message) while the bound still counts rows.
#[derive(Clone)]
pub(super) struct Queue {
    pub(super) tx: mpsc::UnboundedSender<Envelope>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) capacity: usize,
    /// Signalled whenever rows leave the queue (MQTT sessions waiting for room).
    pub(super) room: Arc<tokio::sync::Notify>,
}

impl Queue {
    /// Reserves room for `n` rows, or for as many as fit when `partial`; returns how many.
    /// An empty queue takes any envelope, so an oversized one is never refused forever.
    pub(super) fn reserve(&self, n: usize, partial: bool) -> usize {
        let mut cur = self.queued.load(Ordering::Relaxed);
        loop {
            let room = self.capacity.saturating_sub(cur);
            let k = match () {
                _ if cur == 0 || n <= room => n,
                _ if partial => room,
                _ => 0,
            };
            if k == 0 {
                return 0;
            }
            match self
                .queued
                .compare_exchange_weak(cur, cur + k, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return k,
                Err(now) => cur = now,
            }
        }
    }

    /// Sends an envelope whose rows were reserved; false when the queue is closed.
    pub(super) fn send(&self, e: Envelope) -> bool {
        let n = e.rows();
        let sent = self.tx.send(e).is_ok();
        if !sent {
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
        sent
    }
}

/// A late-bound sink for the broker: the broker starts before the pipeline exists.
/// Set to `None` when MQTT messages are not stored (`messages.store_mqtt = false`).
#[derive(Default)]
pub struct LateSink(pub(super) std::sync::OnceLock<Option<Queue>>);

impl MessageSink for LateSink {
    fn offer(&self, mut batch: Vec<Message>) -> Vec<Message> {
        let n = batch.len();
        let q = match self.0.get() {
            Some(Some(q)) => q,
            Some(None) => return Vec::new(),
            None => return batch,
        };
        let k = q.reserve(n, true);
        if k == 0 {
            return batch;
        }
        let rest = batch.split_off(k);
        match q.send(Envelope::Mqtt(batch)) {
            true => rest,
            false => {
                tracing::error!("message pipeline closed: MQTT messages not stored");
                rest
            }
        }
    }

    fn room(&self) -> broker::BoxFuture<()> {
        match self.0.get() {
            Some(Some(q)) => {
                let room = q.room.clone();
                let (queued, capacity) = (q.queued.clone(), q.capacity);
                Box::pin(async move {
                    let n = room.notified();
                    tokio::pin!(n);
                    n.as_mut().enable();
                    if queued.load(Ordering::Acquire) < capacity {
                        return;
                    }
                    // Bounded so that a stopped writer cannot hang a session forever.
                    let _ = tokio::time::timeout(Duration::from_secs(1), n).await;
                })
            }
            Some(None) => Box::pin(async {}),
            // Not started yet (only during start-up).
            None => Box::pin(tokio::time::sleep(Duration::from_millis(10))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> (Queue, mpsc::UnboundedReceiver<Envelope>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let q = Queue {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            capacity,
            room: Arc::new(tokio::sync::Notify::new()),
        };
        (q, rx)
    }

    fn message(i: u8) -> Message {
        Message {
            domain_id: "d".into(),
            channel_id: "c".into(),
            subtopic: String::new(),
            publisher: "p".into(),
            transport: broker::Transport::Mqtt,
            payload: bytes::Bytes::from(vec![i]),
            received_at: 0,
            qos: 1,
        }
    }

    #[test]
    fn the_queue_bounds_rows_not_envelopes() {
        let (q, _rx) = queue(10);
        // An empty queue takes even an oversized envelope, so it is never refused forever.
        assert_eq!(q.reserve(25, false), 25);
        assert_eq!(q.reserve(1, false), 0, "full");
        assert_eq!(q.reserve(3, true), 0, "no room even for part");
        q.queued.store(7, Ordering::Relaxed);
        assert_eq!(q.reserve(5, false), 0, "whole or nothing");
        assert_eq!(q.reserve(5, true), 3, "as many as fit");
        assert_eq!(q.queued.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn the_mqtt_sink_stores_what_fits_and_reports_the_rest() {
        let (q, mut rx) = queue(4);
        q.queued.store(2, Ordering::Relaxed);
        let sink = LateSink::default();
        assert_eq!(sink.offer(vec![message(0)]).len(), 1, "no pipeline yet: refused");
        let _ = sink.0.set(Some(q));
        let refused = sink.offer((0..5).map(message).collect());
        assert_eq!(
            refused.iter().map(|m| m.payload[0]).collect::<Vec<_>>(),
            [2, 3, 4],
            "the rest, in order"
        );
        match rx.try_recv() {
            Ok(Envelope::Mqtt(ms)) => {
                assert_eq!(
                    ms.iter().map(|m| m.payload[0]).collect::<Vec<_>>(),
                    [0, 1],
                    "the first ones, in order"
                )
            }
            _ => panic!("expected one MQTT envelope"),
        }
        let relay_only = LateSink::default();
        let _ = relay_only.0.set(None);
        assert_eq!(
            relay_only.offer(vec![message(0)]).len(),
            0,
            "store_mqtt = false: accepted, not stored"
        );
    }
}
