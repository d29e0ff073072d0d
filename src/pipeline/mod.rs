//! The message pipeline: one bounded in-process queue from the HTTP adapter and the broker
//! to a writer that inserts batches into the store, plus background retention.
//!
//! The queue is the interface: the broker's `MessageSink` over it takes what the broker's one
//! ingress accepted, from MQTT and HTTP alike (`crate::http_ingest` hands HTTP messages to
//! the broker). Modules: `queue` (the bounded queue and the sink over it), `writer` (batcher
//! and writer thread), `normalize` (rows from a message's payload, by its format),
//! `retention`.

use crate::config::MessagesConfig;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use storage::Store;
use tokio::sync::{mpsc, oneshot};

mod normalize;
mod queue;
mod retention;
mod writer;

pub use queue::LateSink;
use queue::{Bound, Envelope, Queue};
pub(crate) use retention::prune_outbox;
use writer::{batch_loop, writer_thread};

/// Counters of the pipeline.
#[derive(Debug)]
pub struct PipelineMetrics {
    pub stored: AtomicU64,
    pub stored_raw: AtomicU64,
    pub batches: AtomicU64,
    pub write_retries: AtomicU64,
    pub pruned: AtomicU64,
    /// HTTP messages refused because the queue was full (503) or the pipeline closed.
    pub refused_full: AtomicU64,
    pub refused_closed: AtomicU64,
    /// Rows waiting in the queue.
    pub queued: Arc<AtomicUsize>,
    /// When the batcher last took rows off the queue (µs since the epoch): a queue that holds
    /// rows while this stays old means the writer stopped taking batches.
    pub last_take: AtomicU64,
    /// Since when the writer has been writing its current batch (µs; 0: idle).
    pub writing_since: AtomicU64,
    /// Time to write one batch, seconds (registered with the metrics at start).
    pub batch_seconds: Option<prometheus::Histogram>,
}

/// A writer holding rows without committing for this long is reported stuck by `/health`.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

impl PipelineMetrics {
    fn new(queued: Arc<AtomicUsize>) -> PipelineMetrics {
        let opts = prometheus::HistogramOpts::new("pipeline_batch_duration_seconds", "Time to write one batch")
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        PipelineMetrics {
            stored: AtomicU64::new(0),
            stored_raw: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            write_retries: AtomicU64::new(0),
            pruned: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            refused_closed: AtomicU64::new(0),
            queued,
            last_take: AtomicU64::new(storage::now_micros() as u64),
            writing_since: AtomicU64::new(0),
            batch_seconds: prometheus::Histogram::with_opts(opts).ok(),
        }
    }

    /// `Err` naming the problem when one batch has been written (retried) for longer than
    /// [`STUCK_AFTER`], or rows have waited that long without the writer taking any.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(storage::now_micros() as u64)
    }

    fn check_at(&self, now: u64) -> Result<(), String> {
        let limit = STUCK_AFTER.as_micros() as u64;
        let since = self.writing_since.load(Ordering::Relaxed);
        if since != 0 && now.saturating_sub(since) > limit {
            return Err(format!(
                "writer stuck: one batch not committed for {} s (see the log for the store's error)",
                now.saturating_sub(since) / 1_000_000
            ));
        }
        let queued = self.queued.load(Ordering::Relaxed);
        let idle = now.saturating_sub(self.last_take.load(Ordering::Relaxed));
        if queued > 0 && idle > limit {
            return Err(format!(
                "writer stuck: {queued} rows queued, none taken for {} s",
                idle / 1_000_000
            ));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Pipeline {
    /// Total rows committed so far; embedders and tests await it.
    pub stored: tokio::sync::watch::Receiver<u64>,
    pub metrics: Arc<PipelineMetrics>,
}

/// Stops the writer after draining the queue.
pub struct Writer {
    stop: Option<oneshot::Sender<()>>,
    finished: oneshot::Receiver<()>,
    done: bool,
}

impl Writer {
    /// Resolves if the writer thread ends on its own (it never should before [`Writer::drain`]).
    pub async fn ended(&mut self) {
        let _ = (&mut self.finished).await;
        self.done = true;
    }

    /// Closes the queue, writes everything still in it, and waits for the last commit.
    pub async fn drain(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if !self.done {
            let _ = self.finished.await;
        }
    }
}

/// A pipeline whose queue exists (the broker's sink and the HTTP adapter can be wired to it)
/// but whose batcher, writer thread and retention task have not started.
pub struct Parked {
    rx: mpsc::UnboundedReceiver<Envelope>,
    stored_tx: tokio::sync::watch::Sender<u64>,
    queue: Queue,
    metrics: Arc<PipelineMetrics>,
}

/// Makes the queue (and points `sink` at it when MQTT messages are stored); starts nothing.
pub fn prepare(cfg: &MessagesConfig, sink: &LateSink) -> (Pipeline, Parked) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Queue {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        capacity: cfg.queue_size,
        room: Arc::new(tokio::sync::Notify::new()),
    };
    let metrics = Arc::new(PipelineMetrics::new(queue.queued.clone()));
    let _ = sink.0.set(Bound {
        queue: queue.clone(),
        store_mqtt: cfg.store_mqtt,
        metrics: metrics.clone(),
    });
    let (stored_tx, stored) = tokio::sync::watch::channel(0u64);
    (
        Pipeline {
            stored,
            metrics: metrics.clone(),
        },
        Parked {
            rx,
            stored_tx,
            queue,
            metrics,
        },
    )
}

impl Parked {
    /// Starts the batcher, the writer thread and (when configured) retention.
    pub fn start(self, store: Store, cfg: &MessagesConfig) -> std::io::Result<Writer> {
        let Parked {
            rx,
            stored_tx,
            queue,
            metrics,
        } = self;
        let (stop_tx, stop_rx) = oneshot::channel();
        // One batch being written and one waiting: the batcher keeps collecting meanwhile.
        let (batch_tx, batch_rx) = mpsc::channel(1);
        let (finished_tx, finished) = oneshot::channel();
        let (s, m, nice, limits) = (store.clone(), metrics.clone(), cfg.writer_priority, cfg.senml_limits());
        std::thread::Builder::new()
            .name("fluxgate-writer".into())
            .spawn(move || {
                writer_thread(s, batch_rx, stored_tx, m, nice, limits);
                let _ = finished_tx.send(());
            })?;
        tokio::spawn(batch_loop(
            rx,
            metrics.clone(),
            queue.room.clone(),
            stop_rx,
            batch_tx,
            writer::Cut {
                size: cfg.batch_size,
                flush: Duration::from_millis(cfg.flush_interval_ms),
                linger: Duration::from_millis(cfg.commit_linger_ms),
            },
        ));
        if cfg.retention_max_age > 0 || cfg.retention_max_rows_per_channel > 0 {
            tokio::spawn(retention::retention(store, cfg.clone(), metrics));
        }
        Ok(Writer {
            stop: Some(stop_tx),
            finished,
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/health`'s pipeline check: a batch retried past STUCK_AFTER, or rows that wait that
    /// long with no take, are reported; an idle pipeline and ordinary batches are not.
    #[test]
    fn a_stuck_writer_is_reported() {
        let m = PipelineMetrics::new(Arc::new(AtomicUsize::new(0)));
        let limit = STUCK_AFTER.as_micros() as u64;
        let t0 = m.last_take.load(Ordering::Relaxed);
        assert!(m.check_at(t0 + 10 * limit).is_ok(), "idle and empty is healthy");
        m.writing_since.store(t0, Ordering::Relaxed);
        assert!(m.check_at(t0 + limit / 2).is_ok(), "a batch being written");
        let e = m.check_at(t0 + limit + 1_000_000).expect_err("stuck");
        assert!(e.contains("not committed"), "{e}");
        m.writing_since.store(0, Ordering::Relaxed);
        m.queued.store(5, Ordering::Relaxed);
        assert!(m.check_at(t0 + limit / 2).is_ok());
        let e = m.check_at(t0 + 2 * limit).expect_err("stuck");
        assert!(e.contains("5 rows queued"), "{e}");
    }
}
