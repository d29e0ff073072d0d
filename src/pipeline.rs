//! The message pipeline: one bounded in-process queue from the HTTP adapter and the broker
//! to a writer that inserts batches into the store, plus background retention.
//!
//! The queue is the interface: replacing it with NATS means another `MessagePort` and
//! `MessageSink`, with HTTP and MQTT code untouched.

use crate::config::MessagesConfig;
use broker::{BrokerHandle, Message, MessageSink};
use mgmt::messages::{BoxFuture, Content, Inbound, MessagePort, SubmitError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use storage::{NewMessage, Store};
use tokio::sync::{mpsc, oneshot};

enum Envelope {
    /// Normalized rows (HTTP), with a commit notification for durable requests.
    Rows(Vec<NewMessage>, Option<oneshot::Sender<()>>),
    /// A raw MQTT payload, normalized by the writer.
    Mqtt(Message),
}

/// Counters of the pipeline.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    pub stored: AtomicU64,
    pub stored_raw: AtomicU64,
    pub batches: AtomicU64,
    pub write_retries: AtomicU64,
    pub pruned: AtomicU64,
}

#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Envelope>,
    /// Total rows committed so far; embedders and tests await it.
    pub stored: tokio::sync::watch::Receiver<u64>,
    broker: Arc<BrokerHandle>,
    pub metrics: Arc<PipelineMetrics>,
}

/// Stops the writer after draining the queue.
pub struct Writer {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Closes the queue, writes everything still in it, and waits for the last commit.
    pub async fn drain(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// A late-bound sink for the broker: the broker starts before the pipeline exists.
#[derive(Default)]
pub struct LateSink(std::sync::OnceLock<mpsc::Sender<Envelope>>);

impl MessageSink for LateSink {
    fn offer(&self, msg: Message) -> bool {
        match self.0.get() {
            Some(tx) => tx.try_send(Envelope::Mqtt(msg)).is_ok(),
            None => false,
        }
    }
}

pub fn start(store: Store, cfg: &MessagesConfig, broker: Arc<BrokerHandle>, sink: &LateSink) -> (Pipeline, Writer) {
    let (tx, rx) = mpsc::channel(cfg.queue_size);
    let _ = sink.0.set(tx.clone());
    let metrics = Arc::new(PipelineMetrics::default());
    let (stop_tx, stop_rx) = oneshot::channel();
    let (stored_tx, stored) = tokio::sync::watch::channel(0u64);
    let task = tokio::spawn(write_loop(
        store.clone(),
        rx,
        stop_rx,
        stored_tx,
        cfg.batch_size,
        Duration::from_millis(cfg.flush_interval_ms),
        metrics.clone(),
    ));
    if cfg.retention_max_age > 0 || cfg.retention_max_rows_per_channel > 0 {
        tokio::spawn(retention(store, cfg.clone(), metrics.clone()));
    }
    (
        Pipeline {
            tx,
            stored,
            broker,
            metrics,
        },
        Writer {
            stop: Some(stop_tx),
            task,
        },
    )
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
fn mqtt_rows(m: Message, metrics: &PipelineMetrics) -> Vec<NewMessage> {
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
    if let Ok(records) = mgmt::senml::normalize(&m.payload, received) {
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

async fn write_loop(
    store: Store,
    mut rx: mpsc::Receiver<Envelope>,
    mut stop: oneshot::Receiver<()>,
    stored: tokio::sync::watch::Sender<u64>,
    batch_size: usize,
    flush: Duration,
    metrics: Arc<PipelineMetrics>,
) {
    let mut stopping = false;
    loop {
        let first = if stopping {
            match rx.recv().await {
                Some(e) => e,
                None => return,
            }
        } else {
            tokio::select! {
                e = rx.recv() => match e { Some(e) => e, None => return },
                _ = &mut stop => {
                    // No new messages from here; what is queued is still written.
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        let mut rows = Vec::new();
        let mut done = Vec::new();
        let mut take = |e: Envelope, rows: &mut Vec<NewMessage>| match e {
            Envelope::Rows(r, d) => {
                rows.extend(r);
                done.extend(d);
            }
            Envelope::Mqtt(m) => rows.extend(mqtt_rows(m, &metrics)),
        };
        take(first, &mut rows);
        let deadline = tokio::time::Instant::now() + flush;
        while rows.len() < batch_size {
            tokio::select! {
                e = rx.recv() => match e { Some(e) => take(e, &mut rows), None => break },
                _ = tokio::time::sleep_until(deadline), if !stopping => break,
            }
        }
        let n = rows.len() as u64;
        write_batch(&store, rows, &metrics).await;
        stored.send_modify(|t| *t += n);
        for d in done {
            let _ = d.send(());
        }
    }
}

/// Writes one batch, retrying until it commits: a message accepted is never dropped.
async fn write_batch(store: &Store, rows: Vec<NewMessage>, metrics: &PipelineMetrics) {
    let rows = Arc::new(rows);
    let mut backoff = Duration::from_millis(10);
    loop {
        let (s, r) = (store.clone(), rows.clone());
        match tokio::task::spawn_blocking(move || s.insert_messages(&r)).await {
            Ok(Ok(())) => {
                metrics.stored.fetch_add(rows.len() as u64, Ordering::Relaxed);
                metrics.batches.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, rows = rows.len(), "message batch not written; retrying"),
            Err(e) => tracing::error!(error = %e, "message writer task failed; retrying"),
        }
        metrics.write_retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
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
        let sent = match self.tx.try_send(Envelope::Rows(rows, done_tx)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SubmitError::Closed),
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
