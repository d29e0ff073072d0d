//! The metrics of every component in one Prometheus registry (served by `mgmt` at
//! `GET /metrics`). Components keep plain atomic counters (the broker and the pipeline know
//! nothing of Prometheus); right before each scrape they are copied into the registry here.

use crate::http_server::HttpCounters;
use crate::pipeline::PipelineMetrics;
use mgmt::edge::Telemetry;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use storage::Store;

/// What the scrape reads from.
pub struct Sources {
    pub broker: Arc<broker::Metrics>,
    pub pipeline: Arc<PipelineMetrics>,
    pub store: Store,
    /// HTTP listeners by name: the API ("api") and secure WebSocket ("wss").
    pub http: Vec<(&'static str, Arc<HttpCounters>)>,
    /// HTTP messages stored but not fanned out to MQTT.
    pub http_fanout_refused: Arc<AtomicU64>,
    /// Cluster mode's counters.
    pub cluster: Option<Arc<crate::cluster::ClusterMetrics>>,
}

/// A counter that mirrors a monotonic source value.
struct Mirror {
    counter: IntCounter,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Mirror {
    fn sync(&self) {
        let (now, seen) = ((self.read)(), self.counter.get());
        if now > seen {
            self.counter.inc_by(now - seen);
        }
    }
}

fn counter(t: &Telemetry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    t.registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(t: &Telemetry, name: &str, help: &str, label: &str) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
    t.registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(t: &Telemetry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    t.registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Builds the registry with every component's metrics.
pub fn build(src: Sources) -> Result<Arc<Telemetry>, prometheus::Error> {
    let t = Arc::new(Telemetry::new()?);
    let mut mirrors: Vec<Mirror> = Vec::new();
    let b = src.broker.clone();
    macro_rules! mirror {
        ($counter:expr, $src:ident, $read:expr) => {{
            let s = $src.clone();
            mirrors.push(Mirror {
                counter: $counter,
                read: Box::new(move || $read(&*s)),
            });
        }};
    }
    // MQTT
    let conn_now = gauge(
        &t,
        "mqtt_connections",
        "MQTT connections open now (TCP, TLS, WebSocket), those still in CONNECT included",
    )?;
    let offline = gauge(
        &t,
        "mqtt_sessions_offline",
        "Persistent MQTT sessions without a connection",
    )?;
    let remote_sessions = gauge(
        &t,
        "cluster_remote_persistent_sessions",
        "Cluster mode: persistent sessions other nodes hold, indexed here so that this node's publishers queue their messages",
    )?;
    mirror!(
        counter(
            &t,
            "mqtt_connections_total",
            "MQTT connections accepted by the listeners (before CONNECT)"
        )?,
        b,
        |m: &broker::Metrics| load(&m.connections_total)
    );
    let refused = counter_vec(
        &t,
        "mqtt_connections_refused_total",
        "CONNECT refusals by reason",
        "reason",
    )?;
    mirror!(refused.with_label_values(&["pending_cap"]), b, |m: &broker::Metrics| {
        load(&m.refused_pending)
    });
    mirror!(
        refused.with_label_values(&["pending_shed"]),
        b,
        |m: &broker::Metrics| { load(&m.shed_pending) }
    );
    mirror!(
        counter(&t, "mqtt_packets_received_total", "MQTT packets received")?,
        b,
        |m: &broker::Metrics| load(&m.packets_in)
    );
    mirror!(
        counter(&t, "mqtt_packets_sent_total", "MQTT packets sent")?,
        b,
        |m: &broker::Metrics| load(&m.packets_out)
    );
    mirror!(
        counter(&t, "mqtt_received_bytes_total", "Bytes read from MQTT connections")?,
        b,
        |m: &broker::Metrics| load(&m.bytes_in)
    );
    mirror!(
        counter(&t, "mqtt_sent_bytes_total", "Bytes written to MQTT connections")?,
        b,
        |m: &broker::Metrics| load(&m.bytes_out)
    );
    mirror!(
        counter(
            &t,
            "mqtt_messages_received_total",
            "PUBLISH packets accepted from clients"
        )?,
        b,
        |m: &broker::Metrics| load(&m.messages_in)
    );
    mirror!(
        counter(&t, "mqtt_deliveries_total", "PUBLISH packets delivered to subscribers")?,
        b,
        |m: &broker::Metrics| load(&m.messages_out)
    );
    let dropped = counter_vec(
        &t,
        "mqtt_deliveries_dropped_total",
        "Deliveries dropped, by reason",
        "reason",
    )?;
    mirror!(
        dropped.with_label_values(&["qos0_queue_full"]),
        b,
        |m: &broker::Metrics| load(&m.dropped_qos0_full)
    );
    mirror!(dropped.with_label_values(&["queue_full"]), b, |m: &broker::Metrics| {
        load(&m.dropped_queue_full)
    });
    mirror!(
        counter(
            &t,
            "mqtt_not_durable_store_full_total",
            "QoS 1/2 messages for persistent sessions queued in memory only (mqtt.max_stored_queue_bytes reached)"
        )?,
        b,
        |m: &broker::Metrics| load(&m.dropped_store_full)
    );
    mirror!(dropped.with_label_values(&["expired"]), b, |m: &broker::Metrics| load(
        &m.dropped_expired
    ));
    mirror!(
        dropped.with_label_values(&["too_large"]),
        b,
        |m: &broker::Metrics| load(&m.dropped_too_large)
    );
    mirror!(
        dropped.with_label_values(&["not_authorized"]),
        b,
        |m: &broker::Metrics| load(&m.refused_delivery)
    );
    mirror!(
        counter(
            &t,
            "mqtt_slow_consumers_disconnected_total",
            "Clean sessions disconnected (0x97) because they could not keep up"
        )?,
        b,
        |m: &broker::Metrics| load(&m.disconnected_slow)
    );
    mirror!(
        counter(
            &t,
            "mqtt_stalled_consumers_disconnected_total",
            "Sessions disconnected (0x97) because their device took nothing for mqtt.stall_timeout_ms"
        )?,
        b,
        |m: &broker::Metrics| load(&m.disconnected_stalled)
    );
    mirror!(
        counter(
            &t,
            "mqtt_publishers_slowed_total",
            "Publisher reads held back until a subscriber that fell behind in the router's log caught up"
        )?,
        b,
        |m: &broker::Metrics| load(&m.publishers_slowed)
    );
    mirror!(
        counter(
            &t,
            "mqtt_router_skipped_total",
            "Messages the router's per-filter log dropped before a session drained them (lost; mqtt.max_segment_size)"
        )?,
        b,
        |m: &broker::Metrics| load(&m.router_skipped)
    );
    mirror!(
        counter(
            &t,
            "mqtt_session_catch_ups_total",
            "Times persistent sessions read their stored queues again because live copies of their messages may have been missed (NATS gap, router drops)"
        )?,
        b,
        |m: &broker::Metrics| load(&m.catch_ups)
    );
    mirror!(
        counter(
            &t,
            "mqtt_session_entries_recovered_total",
            "Stored queue entries delivered to persistent sessions because their live copy did not arrive"
        )?,
        b,
        |m: &broker::Metrics| load(&m.entries_recovered)
    );
    let authz = counter_vec(
        &t,
        "mqtt_authorization_refusals_total",
        "Publish, subscribe and delivery refusals by the connection rights",
        "action",
    )?;
    mirror!(authz.with_label_values(&["publish"]), b, |m: &broker::Metrics| load(
        &m.refused_publish
    ));
    mirror!(authz.with_label_values(&["subscribe"]), b, |m: &broker::Metrics| load(
        &m.refused_subscribe
    ));
    mirror!(authz.with_label_values(&["delivery"]), b, |m: &broker::Metrics| load(
        &m.refused_delivery
    ));
    mirror!(
        counter(
            &t,
            "mqtt_revocations_applied_total",
            "Rights changes from the store applied to sessions"
        )?,
        b,
        |m: &broker::Metrics| load(&m.revocations_applied)
    );
    mirror!(
        counter(
            &t,
            "mqtt_malformed_packets_total",
            "Malformed packets (connection closed)"
        )?,
        b,
        |m: &broker::Metrics| load(&m.malformed)
    );
    mirror!(
        counter(&t, "mqtt_wills_published_total", "Wills published")?,
        b,
        |m: &broker::Metrics| load(&m.wills_published)
    );
    mirror!(
        counter(
            &t,
            "mqtt_sessions_expired_total",
            "Persistent sessions ended by their expiry"
        )?,
        b,
        |m: &broker::Metrics| load(&m.sessions_expired)
    );
    mirror!(
        counter(
            &t,
            "mqtt_sessions_restored_total",
            "Persistent sessions restored at start"
        )?,
        b,
        |m: &broker::Metrics| load(&m.sessions_restored)
    );
    mirror!(
        counter(
            &t,
            "mqtt_retained_refused_total",
            "Retained messages refused (mqtt.max_retained reached)"
        )?,
        b,
        |m: &broker::Metrics| load(&m.retained_full)
    );
    mirror!(
        counter(
            &t,
            "mqtt_retained_not_stored_total",
            "Retained messages the store could not commit (QoS 1/2: refused to the publisher)"
        )?,
        b,
        |m: &broker::Metrics| load(&m.retained_not_stored)
    );
    let tls = counter_vec(
        &t,
        "tls_handshakes_total",
        "TLS handshakes completed, by listener",
        "listener",
    )?;
    let tls_failed = counter_vec(
        &t,
        "tls_handshake_failures_total",
        "TLS handshakes failed or timed out, by listener",
        "listener",
    )?;
    mirror!(tls.with_label_values(&["mqtts"]), b, |m: &broker::Metrics| load(
        &m.tls_handshakes
    ));
    mirror!(tls_failed.with_label_values(&["mqtts"]), b, |m: &broker::Metrics| load(
        &m.tls_failures
    ));
    // HTTP listeners.
    let http_refused = counter_vec(
        &t,
        "http_connections_refused_total",
        "HTTP connections closed at once (connection cap), by listener",
        "listener",
    )?;
    let http_shed = counter_vec(
        &t,
        "http_connections_shed_total",
        "HTTP connections closed to make room for another source's (the busiest source's oldest), by listener",
        "listener",
    )?;
    for (name, h) in &src.http {
        mirror!(http_shed.with_label_values(&[name]), h, |c: &HttpCounters| load(
            &c.shed_busiest
        ));
        mirror!(tls.with_label_values(&[name]), h, |c: &HttpCounters| load(
            &c.tls_handshakes
        ));
        mirror!(tls_failed.with_label_values(&[name]), h, |c: &HttpCounters| load(
            &c.tls_failures
        ));
        mirror!(http_refused.with_label_values(&[name]), h, |c: &HttpCounters| load(
            &c.refused_over_cap
        ));
    }
    // Message pipeline
    let p = src.pipeline.clone();
    let depth = gauge(&t, "pipeline_queue_rows", "Message rows waiting for the writer")?;
    mirror!(
        counter(&t, "pipeline_rows_stored_total", "Message rows committed")?,
        p,
        |m: &PipelineMetrics| load(&m.stored)
    );
    mirror!(
        counter(&t, "pipeline_batches_total", "Batches committed")?,
        p,
        |m: &PipelineMetrics| load(&m.batches)
    );
    mirror!(
        counter(
            &t,
            "pipeline_write_retries_total",
            "Batch writes retried after a store error"
        )?,
        p,
        |m: &PipelineMetrics| load(&m.write_retries)
    );
    mirror!(
        counter(&t, "pipeline_rows_pruned_total", "Rows removed by retention")?,
        p,
        |m: &PipelineMetrics| load(&m.pruned)
    );
    let not_stored = counter_vec(
        &t,
        "pipeline_messages_not_stored_total",
        "Messages not stored, by reason",
        "reason",
    )?;
    mirror!(
        not_stored.with_label_values(&["http_queue_full"]),
        p,
        |m: &PipelineMetrics| load(&m.refused_full)
    );
    mirror!(
        not_stored.with_label_values(&["closed"]),
        p,
        |m: &PipelineMetrics| load(&m.refused_closed)
    );
    mirror!(
        not_stored.with_label_values(&["mqtt_queue_full"]),
        b,
        |m: &broker::Metrics| load(&m.pipeline_full)
    );
    let fanout = src.http_fanout_refused.clone();
    mirror!(
        counter(
            &t,
            "http_messages_not_fanned_out_total",
            "HTTP messages stored but not relayed to MQTT (broker busy)"
        )?,
        fanout,
        |c: &AtomicU64| load(c)
    );
    if let Some(hist) = &src.pipeline.batch_seconds {
        t.registry.register(Box::new(hist.clone()))?;
    }
    // Store
    let st = Arc::new(src.store.clone());
    mirror!(
        counter(
            &t,
            "store_pool_checkouts_total",
            "Database connections taken from the pool"
        )?,
        st,
        |s: &Store| load(&s.pool_stats().checkouts)
    );
    mirror!(
        counter(
            &t,
            "store_pool_wait_microseconds_total",
            "Time spent waiting for a pooled database connection"
        )?,
        st,
        |s: &Store| load(&s.pool_stats().wait_micros)
    );
    mirror!(
        counter(
            &t,
            "store_session_writes_fenced_total",
            "Session record writes refused because another node owns the session"
        )?,
        st,
        |s: &Store| s.session_writes_fenced()
    );
    let pool = IntGaugeVec::new(
        Opts::new("store_pool_connections", "Pooled database connections by state"),
        &["state"],
    )?;
    t.registry.register(Box::new(pool.clone()))?;
    // Cluster
    let nats_up = match &src.cluster {
        Some(c) => {
            use crate::cluster::ClusterMetrics as C;
            for (name, help, read) in [
                (
                    "cluster_messages_sent_total",
                    "Messages accepted here and handed to NATS for the other nodes",
                    (|m: &C| load(&m.sent)) as fn(&C) -> u64,
                ),
                (
                    "cluster_messages_not_sent_total",
                    "Messages accepted here (and stored) whose live copies for other nodes were not handed to NATS (NATS down or slow)",
                    |m: &C| load(&m.lost),
                ),
                (
                    "cluster_messages_received_total",
                    "Messages received from other nodes",
                    |m: &C| load(&m.received),
                ),
                (
                    "cluster_messages_unreadable_total",
                    "Messages on the cluster's subjects that could not be read",
                    |m: &C| load(&m.malformed),
                ),
                (
                    "nats_reconnects_total",
                    "Connections to NATS made again after one was lost",
                    |m: &C| load(&m.reconnects).saturating_sub(1),
                ),
                (
                    "cluster_fail_closed_total",
                    "Times this node could not confirm it was current with the cluster's changes and refused publishes and connections",
                    |m: &C| load(&m.fail_closed),
                ),
                (
                    "nats_slow_consumer_events_total",
                    "Times NATS reported this node as a slow consumer (messages dropped)",
                    |m: &C| load(&m.slow_consumer),
                ),
                (
                    "cluster_settle_waits_total",
                    "SUBACKs of persistent sessions that waited the whole staleness bound for another node to index their subscriptions (a node silent: dead, slow, or NATS down)",
                    |m: &C| load(&m.settle_waits),
                ),
            ] {
                mirror!(counter(&t, name, help)?, c, read);
            }
            mirror!(
                counter(
                    &t,
                    "cluster_messages_received_dropped_total",
                    "Messages from other nodes this node could not pass on (starting, or router full)"
                )?,
                b,
                |m: &broker::Metrics| load(&m.cluster_import_dropped)
            );
            let c2 = c.clone();
            mirror!(
                counter(
                    &t,
                    "cluster_messages_received_early_total",
                    "Messages from other nodes that arrived before the broker started"
                )?,
                c2,
                |m: &C| load(&m.lost_received)
            );
            mirror!(
                counter(
                    &t,
                    "cluster_sessions_taken_over_total",
                    "Sessions ended here because their device connected to another node"
                )?,
                b,
                |m: &broker::Metrics| load(&m.cluster_taken_over)
            );
            mirror!(
                counter(
                    &t,
                    "cluster_sessions_adopted_total",
                    "Persistent sessions moved to this node from another node by their device"
                )?,
                b,
                |m: &broker::Metrics| load(&m.cluster_sessions_adopted)
            );
            mirror!(
                counter(
                    &t,
                    "cluster_publishes_refused_not_current_total",
                    "PUBLISH packets refused while this node could not confirm it was current"
                )?,
                b,
                |m: &broker::Metrics| load(&m.cluster_refused_not_current)
            );
            Some((
                gauge(&t, "nats_connected", "1 while connected to NATS")?,
                gauge(
                    &t,
                    "cluster_outbox_lag_milliseconds",
                    "Time between the commit of the last change applied from the outbox and its application",
                )?,
                c.clone(),
            ))
        }
        None => None,
    };
    // Process
    let rss = gauge(&t, "process_resident_memory_bytes", "Resident memory")?;
    let fds = gauge(&t, "process_open_fds", "Open file descriptors")?;

    let (b, p, st) = (src.broker, src.pipeline, src.store);
    t.on_scrape(move || {
        mirrors.iter().for_each(Mirror::sync);
        for (reason, n) in b.refusals() {
            let c = refused.with_label_values(&[reason]);
            if n > c.get() {
                c.inc_by(n - c.get());
            }
        }
        conn_now.set(load(&b.connections_current) as i64);
        offline.set(load(&b.sessions_persistent_offline) as i64);
        remote_sessions.set(load(&b.cluster_remote_sessions) as i64);
        depth.set(p.queued.load(Ordering::Relaxed) as i64);
        let ps = st.pool_state();
        pool.with_label_values(&["idle"]).set(i64::from(ps.idle));
        pool.with_label_values(&["in_use"])
            .set(i64::from(ps.connections.saturating_sub(ps.idle)));
        if let Some((g, lag, c)) = &nats_up {
            g.set(load(&c.connected) as i64);
            lag.set(load(&c.outbox_lag_ms) as i64);
        }
        let (r, f) = process_stats();
        rss.set(r);
        fds.set(f);
    });
    Ok(t)
}

/// Resident memory in bytes and open descriptors, from /proc (0 where it is not there).
fn process_stats() -> (i64, i64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    (rss, fds)
}
