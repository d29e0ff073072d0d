//! The bounded queue between the adapters (HTTP, MQTT) and the writer: a channel plus a
//! count of queued rows, and the broker's `MessageSink` over it.

use super::PipelineMetrics;
use broker::{Message, MessageSink, NotTaken};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(super) enum Envelope {
    /// One message taken whole (HTTP), with a commit notification when asked for.
    One(Message, Option<oneshot::Sender<bool>>),
    /// What one read from a device carried (MQTT).
    Batch(Vec<Message>),
    /// No message: told once everything queued before it is committed.
    Barrier(oneshot::Sender<bool>),
}

impl Envelope {
    /// Someone waits for its commit (a barrier, or a message taken with `commit`): its batch
    /// goes to the writer at once instead of waiting for more.
    pub(super) fn waited(&self) -> bool {
        matches!(self, Envelope::Barrier(_) | Envelope::One(_, Some(_)))
    }

    /// Messages in it (the queue's bound counts messages; the writer makes their rows).
    pub(super) fn rows(&self) -> usize {
        match self {
            Envelope::One(..) => 1,
            Envelope::Batch(m) => m.len(),
            Envelope::Barrier(_) => 0,
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

/// The queue as the broker's sink sees it.
pub(super) struct Bound {
    pub(super) queue: Queue,
    /// `messages.store_mqtt`: when false, MQTT messages are taken and not stored (HTTP ones
    /// always are).
    pub(super) store_mqtt: bool,
    pub(super) metrics: std::sync::Arc<PipelineMetrics>,
}

/// A late-bound sink for the broker: the broker starts before the pipeline exists.
#[derive(Default)]
pub struct LateSink(pub(super) std::sync::OnceLock<Bound>);

impl MessageSink for LateSink {
    fn offer(&self, mut batch: Vec<Message>) -> Vec<Message> {
        let n = batch.len();
        let q = match self.0.get() {
            Some(b) if b.store_mqtt => &b.queue,
            Some(_) => return Vec::new(),
            None => return batch,
        };
        let k = q.reserve(n, true);
        if k == 0 {
            return batch;
        }
        let rest = batch.split_off(k);
        match q.send(Envelope::Batch(batch)) {
            true => rest,
            false => {
                tracing::error!("message pipeline closed: MQTT messages not stored");
                rest
            }
        }
    }

    fn take(&self, m: Message, commit: bool) -> Result<broker::BoxFuture<bool>, NotTaken> {
        let Some(b) = self.0.get() else {
            return Err(NotTaken::Closed);
        };
        if b.queue.reserve(1, false) == 0 {
            b.metrics.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(NotTaken::Full);
        }
        let (done, committed) = match commit {
            true => {
                let (t, r) = oneshot::channel();
                (Some(t), Some(r))
            }
            false => (None, None),
        };
        if !b.queue.send(Envelope::One(m, done)) {
            b.metrics.refused_closed.fetch_add(1, Ordering::Relaxed);
            return Err(NotTaken::Closed);
        }
        Ok(Box::pin(async move {
            match committed {
                Some(r) => r.await.unwrap_or(false),
                None => true,
            }
        }))
    }

    fn committed(&self) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        match self.0.get() {
            Some(b) if b.store_mqtt => {
                // A closed queue drops the sender: the receiver says "not committed".
                let _ = b.queue.send(Envelope::Barrier(tx));
            }
            _ => {
                let _ = tx.send(true);
            }
        }
        rx
    }

    fn room(&self) -> broker::BoxFuture<()> {
        match self.0.get() {
            Some(b) if b.store_mqtt => {
                let q = &b.queue;
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
            Some(_) => Box::pin(async {}),
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
            format: broker::PayloadFormat::Detect,
            received_at: 0,
            qos: 1,
        }
    }

    fn bound(q: Queue, store_mqtt: bool) -> Bound {
        let metrics = std::sync::Arc::new(PipelineMetrics::new(q.queued.clone()));
        Bound {
            queue: q,
            store_mqtt,
            metrics,
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
        let _ = sink.0.set(bound(q, true));
        let refused = sink.offer((0..5).map(message).collect());
        assert_eq!(
            refused.iter().map(|m| m.payload[0]).collect::<Vec<_>>(),
            [2, 3, 4],
            "the rest, in order"
        );
        match rx.try_recv() {
            Ok(Envelope::Batch(ms)) => {
                assert_eq!(
                    ms.iter().map(|m| m.payload[0]).collect::<Vec<_>>(),
                    [0, 1],
                    "the first ones, in order"
                )
            }
            _ => panic!("expected one MQTT envelope"),
        }
        let (q, mut rx) = queue(4);
        let relay_only = LateSink::default();
        let _ = relay_only.0.set(bound(q, false));
        assert_eq!(
            relay_only.offer(vec![message(0)]).len(),
            0,
            "store_mqtt = false: accepted, not stored"
        );
        assert!(rx.try_recv().is_err(), "nothing queued");
    }

    /// A message taken whole (HTTP) is stored even when MQTT is not, is refused when the
    /// queue is full (counted), and with `commit` resolves once its batch committed.
    #[tokio::test]
    async fn a_whole_message_is_taken_or_refused_and_reports_its_commit() {
        let (q, mut rx) = queue(1);
        let sink = LateSink::default();
        assert_eq!(
            sink.take(message(0), false).err(),
            Some(NotTaken::Closed),
            "no pipeline yet"
        );
        let _ = sink.0.set(bound(q, false));
        let stored = sink.take(message(1), true).expect("taken");
        assert_eq!(sink.take(message(2), false).err(), Some(NotTaken::Full));
        assert_eq!(
            sink.0.get().map(|b| b.metrics.refused_full.load(Ordering::Relaxed)),
            Some(1)
        );
        match rx.try_recv() {
            Ok(Envelope::One(m, Some(done))) => {
                assert_eq!(m.payload[0], 1);
                let _ = done.send(true);
            }
            _ => panic!("expected one whole message with a commit notification"),
        }
        assert!(stored.await, "committed");
    }
}
