//! The message pipeline: one bounded in-process queue from the HTTP adapter and the broker
//! to a writer that inserts batches into the store, plus background retention.
//!
//! The queue is the interface: replacing it with NATS means another `MessagePort` and
//! `MessageSink`, with HTTP and MQTT code untouched.

use crate::config::{MessagesConfig, WriterPriority};
use broker::{BrokerHandle, Message, MessageSink};
use mgmt::messages::{BoxFuture, Content, Inbound, MessagePort, SubmitError};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use storage::{NewMessage, Store};
use tokio::sync::{mpsc, oneshot};

enum Envelope {
    /// Normalized rows (HTTP), with a commit notification for durable requests.
    Rows(Vec<NewMessage>, Option<oneshot::Sender<()>>),
    /// Raw MQTT payloads (what one read from a device carried), normalized by the writer.
    Mqtt(Vec<Message>),
}

impl Envelope {
    fn rows(&self) -> usize {
        match self {
            Envelope::Rows(r, _) => r.len().max(1),
            Envelope::Mqtt(m) => m.len(),
        }
    }
}

/// The bounded queue: a channel plus a count of queued rows, so that one envelope can carry
/// many messages (one wake-up per batch, not per message) while the bound still counts rows.
#[derive(Clone)]
struct Queue {
    tx: mpsc::UnboundedSender<Envelope>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    /// Signalled whenever rows leave the queue (MQTT sessions waiting for room).
    room: Arc<tokio::sync::Notify>,
}

impl Queue {
    /// Reserves room for `n` rows, or for as many as fit when `partial`; returns how many.
    /// An empty queue takes any envelope, so an oversized one is never refused forever.
    fn reserve(&self, n: usize, partial: bool) -> usize {
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
    fn send(&self, e: Envelope) -> bool {
        let n = e.rows();
        let sent = self.tx.send(e).is_ok();
        if !sent {
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
        sent
    }
}

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
    queue: Queue,
    /// Total rows committed so far; embedders and tests await it.
    pub stored: tokio::sync::watch::Receiver<u64>,
    broker: Arc<BrokerHandle>,
    pub metrics: Arc<PipelineMetrics>,
}

/// Stops the writer after draining the queue.
pub struct Writer {
    stop: Option<oneshot::Sender<()>>,
    finished: oneshot::Receiver<()>,
}

impl Writer {
    /// Closes the queue, writes everything still in it, and waits for the last commit.
    pub async fn drain(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.finished.await;
    }
}

/// A late-bound sink for the broker: the broker starts before the pipeline exists.
/// Set to `None` when MQTT messages are not stored (`messages.store_mqtt = false`).
#[derive(Default)]
pub struct LateSink(std::sync::OnceLock<Option<Queue>>);

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

pub fn start(
    store: Store,
    cfg: &MessagesConfig,
    broker: Arc<BrokerHandle>,
    sink: &LateSink,
) -> std::io::Result<(Pipeline, Writer)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Queue {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        capacity: cfg.queue_size,
        room: Arc::new(tokio::sync::Notify::new()),
    };
    let _ = sink.0.set(cfg.store_mqtt.then(|| queue.clone()));
    let metrics = Arc::new(PipelineMetrics::new(queue.queued.clone()));
    let (stop_tx, stop_rx) = oneshot::channel();
    let (stored_tx, stored) = tokio::sync::watch::channel(0u64);
    // One batch being written and one waiting: the batcher keeps collecting meanwhile.
    let (batch_tx, batch_rx) = mpsc::channel(1);
    tokio::spawn(batch_loop(
        rx,
        metrics.clone(),
        queue.room.clone(),
        stop_rx,
        batch_tx,
        cfg.batch_size,
        Duration::from_millis(cfg.flush_interval_ms),
    ));
    let (finished_tx, finished) = oneshot::channel();
    let (s, m, nice, limits) = (store.clone(), metrics.clone(), cfg.writer_priority, cfg.senml_limits());
    std::thread::Builder::new()
        .name("fluxgate-writer".into())
        .spawn(move || {
            writer_thread(s, batch_rx, stored_tx, m, nice, limits);
            let _ = finished_tx.send(());
        })?;
    if cfg.retention_max_age > 0 || cfg.retention_max_rows_per_channel > 0 {
        tokio::spawn(retention(store, cfg.clone(), metrics.clone()));
    }
    Ok((
        Pipeline {
            queue,
            stored,
            broker,
            metrics,
        },
        Writer {
            stop: Some(stop_tx),
            finished,
        },
    ))
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn rows_from_records(base: &NewMessage, records: Vec<mgmt::senml::Record>) -> Vec<NewMessage> {
    records
        .into_iter()
        .map(|r| NewMessage {
            name: r.name,
            unit: r.unit,
            time: r.time,
            update_time: r.update_time,
            value: r.value,
            string_value: r.string_value,
            bool_value: r.bool_value,
            data_value: r.data_value,
            sum: r.sum,
            format: "senml",
            ..base.clone()
        })
        .collect()
}

/// Normalizes an MQTT payload: SenML when it is a valid pack, a JSON document when it is
/// other JSON, otherwise kept raw (counted, never dropped).
fn mqtt_rows(m: Message, metrics: &PipelineMetrics, limits: mgmt::senml::Limits) -> Vec<NewMessage> {
    let received = m.received_at as f64 / 1e6;
    let base = NewMessage {
        domain_id: m.domain_id,
        channel: m.channel_id,
        subtopic: m.subtopic,
        publisher: m.publisher,
        protocol: m.protocol.to_string(),
        time: received,
        format: "raw",
        ..Default::default()
    };
    if let Ok(records) = mgmt::senml::normalize(&m.payload, received, limits) {
        return rows_from_records(&base, records);
    }
    if serde_json::from_slice::<serde_json::Value>(&m.payload).is_ok() {
        return vec![NewMessage {
            format: "json",
            payload: Some(m.payload.to_vec()),
            ..base
        }];
    }
    let n = metrics.stored_raw.fetch_add(1, Ordering::Relaxed);
    if n.is_power_of_two() {
        tracing::warn!(channel = %base.channel, publisher = %base.publisher, raw_total = n + 1, "MQTT payload is neither SenML nor JSON: stored raw");
    }
    vec![NewMessage {
        payload: Some(m.payload.to_vec()),
        ..base
    }]
}

/// Collects envelopes into batches (up to `batch_size`, or what arrived within `flush` of the
/// first) and hands them to the writer thread; ends when the queue is closed and empty.
async fn batch_loop(
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    metrics: Arc<PipelineMetrics>,
    room: Arc<tokio::sync::Notify>,
    mut stop: oneshot::Receiver<()>,
    batches: mpsc::Sender<Vec<Envelope>>,
    batch_size: usize,
    flush: Duration,
) {
    let mut stopping = false;
    let mut batch = Vec::new();
    loop {
        // Wait for the first envelope; take whatever else is already there with it.
        let got = if stopping {
            rx.recv_many(&mut batch, batch_size).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, batch_size) => n,
                _ = &mut stop => {
                    // No new messages from here; what is queued is still written.
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        if got == 0 {
            return;
        }
        metrics.last_take.store(storage::now_micros() as u64, Ordering::Relaxed);
        let mut rows: usize = batch.iter().map(Envelope::rows).sum();
        let deadline = tokio::time::sleep(flush);
        tokio::pin!(deadline);
        while rows < batch_size {
            let before = batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, batch_size) => if n == 0 { break },
                _ = &mut deadline, if !stopping => break,
            }
            rows += batch[before..].iter().map(Envelope::rows).sum::<usize>();
        }
        metrics.queued.fetch_sub(rows, Ordering::AcqRel);
        room.notify_waiters();
        if batches.send(std::mem::take(&mut batch)).await.is_err() {
            return;
        }
    }
}

/// The writer thread: normalizes MQTT payloads and commits one transaction per batch. It
/// runs at a lower CPU priority than the threads that relay messages (`messages.
/// writer_priority`), so that storing delays live deliveries as little as possible; under
/// overload the queue fills instead (counted).
fn writer_thread(
    store: Store,
    mut batches: mpsc::Receiver<Vec<Envelope>>,
    stored: tokio::sync::watch::Sender<u64>,
    metrics: Arc<PipelineMetrics>,
    priority: WriterPriority,
    limits: mgmt::senml::Limits,
) {
    set_priority(priority);
    while let Some(batch) = batches.blocking_recv() {
        let mut rows = Vec::with_capacity(batch.len());
        let mut done = Vec::new();
        for e in batch {
            match e {
                Envelope::Rows(r, d) => {
                    rows.extend(r);
                    done.extend(d);
                }
                Envelope::Mqtt(ms) => {
                    for m in ms {
                        rows.extend(mqtt_rows(m, &metrics, limits));
                    }
                }
            }
        }
        let n = rows.len() as u64;
        write_batch(&store, &rows, &metrics);
        stored.send_modify(|t| *t += n);
        for d in done {
            let _ = d.send(());
        }
    }
}

/// Sets the calling thread's CPU scheduling class (Linux: both apply per thread). The one
/// `unsafe` of the workspace: plain system calls with integer arguments.
#[allow(unsafe_code)]
fn set_priority(p: WriterPriority) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: both calls only read their integer and by-reference plain-data arguments;
        // 0 and gettid() name the calling thread.
        let r = unsafe {
            match p {
                WriterPriority::Normal => 0,
                WriterPriority::Low => libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10),
                WriterPriority::Idle => {
                    let param = libc::sched_param { sched_priority: 0 };
                    libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
                }
            }
        };
        if r != 0 {
            tracing::warn!(priority = ?p, error = %std::io::Error::last_os_error(), "cannot set the message writer's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = p;
}

/// Rows the writer inserts between two offers of its CPU to waiting threads.
const YIELD_EVERY_ROWS: usize = 16;

/// Offers the CPU every [`YIELD_EVERY_ROWS`] rows. A batch is milliseconds of CPU; without
/// this, a relaying thread woken on the writer's CPU waits for the scheduler's slice to end
/// (measured: p99 at 8,000 msg/s 2.5 ms without, 0.95 ms with, at `low` priority).
fn yield_between_rows(row: usize) {
    if row % YIELD_EVERY_ROWS == YIELD_EVERY_ROWS - 1 {
        std::thread::yield_now();
    }
}

/// Writes one batch, retrying until it commits: a message accepted is never dropped.
fn write_batch(store: &Store, rows: &[NewMessage], metrics: &PipelineMetrics) {
    let mut backoff = Duration::from_millis(10);
    let started = std::time::Instant::now();
    metrics
        .writing_since
        .store(storage::now_micros() as u64, Ordering::Relaxed);
    loop {
        match store.insert_messages_with(rows, yield_between_rows) {
            Ok(()) => {
                metrics.writing_since.store(0, Ordering::Relaxed);
                if let Some(h) = &metrics.batch_seconds {
                    h.observe(started.elapsed().as_secs_f64());
                }
                metrics.stored.fetch_add(rows.len() as u64, Ordering::Relaxed);
                metrics.batches.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::warn!(error = %e, rows = rows.len(), "message batch not written; retrying"),
        }
        metrics.write_retries.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn retention(store: Store, cfg: MessagesConfig, metrics: Arc<PipelineMetrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.retention_interval));
    loop {
        tick.tick().await;
        let before = (cfg.retention_max_age > 0).then(|| now_secs() - cfg.retention_max_age as f64);
        let max_rows = (cfg.retention_max_rows_per_channel > 0).then_some(cfg.retention_max_rows_per_channel);
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.prune_messages(before, max_rows)).await {
            Ok(Ok(n)) if n > 0 => {
                metrics.pruned.fetch_add(n, Ordering::Relaxed);
                tracing::info!(removed = n, "retention pruned messages");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
            _ => {}
        }
    }
}

impl MessagePort for Pipeline {
    fn submit(&self, msg: Inbound, durable: bool) -> BoxFuture<Result<(), SubmitError>> {
        let base = NewMessage {
            domain_id: msg.domain_id.clone(),
            channel: msg.channel_id.clone(),
            subtopic: msg.subtopic.clone(),
            publisher: msg.publisher.clone(),
            protocol: msg.protocol.to_string(),
            time: msg.received_at,
            format: "json",
            ..Default::default()
        };
        let rows = match msg.content {
            Content::Senml(records) => rows_from_records(&base, records),
            Content::Json(doc) => vec![NewMessage {
                payload: Some(doc.into_bytes()),
                ..base
            }],
        };
        let (done_tx, done_rx) = if durable {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let envelope = Envelope::Rows(rows, done_tx);
        let sent = if self.queue.reserve(envelope.rows(), false) == 0 {
            self.metrics.refused_full.fetch_add(1, Ordering::Relaxed);
            Err(SubmitError::Full)
        } else if self.queue.send(envelope) {
            Ok(())
        } else {
            self.metrics.refused_closed.fetch_add(1, Ordering::Relaxed);
            Err(SubmitError::Closed)
        };
        if sent.is_ok() {
            let topic = if msg.subtopic.is_empty() {
                format!("channels/{}/messages", msg.channel_id)
            } else {
                format!("channels/{}/messages/{}", msg.channel_id, msg.subtopic)
            };
            self.broker.publish(&topic, msg.payload.clone());
        }
        Box::pin(async move {
            sent?;
            if let Some(r) = done_rx {
                r.await.map_err(|_| SubmitError::Closed)?;
            }
            Ok(())
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
            protocol: "mqtt",
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

    /// (nice, scheduling policy) of the calling thread, from /proc.
    #[cfg(target_os = "linux")]
    fn sched_of_this_thread() -> (i64, i64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // Fields after the command name: state is field 3; nice is 19, policy 41.
        let rest: Vec<&str> = stat.rsplit_once(')').expect(")").1.split_whitespace().collect();
        let field = |n: usize| rest[n - 3].parse::<i64>().expect("number");
        (field(19), field(41))
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_priority_applies_to_its_thread_only() {
        let on_thread = |p| {
            std::thread::spawn(move || {
                set_priority(p);
                sched_of_this_thread()
            })
            .join()
            .expect("thread")
        };
        assert_eq!(on_thread(WriterPriority::Low), (10, 0), "nice 10, SCHED_OTHER");
        assert_eq!(on_thread(WriterPriority::Idle).1, 5, "SCHED_IDLE");
        assert_eq!(on_thread(WriterPriority::Normal), sched_of_this_thread(), "unchanged");
        assert_eq!(sched_of_this_thread(), (0, 0), "the caller is untouched");
    }
}
