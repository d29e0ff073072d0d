//! The broker's counters. Their names and help texts are given once, where the root crate's
//! `/metrics` exports them (`telemetry`).

use crate::codec;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub sessions_persistent_offline: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub refused_connect: AtomicU64,
    pub refused_pending: AtomicU64,
    /// Pending connections closed to make room for another source's.
    pub shed_pending: AtomicU64,
    pub refused_publish: AtomicU64,
    pub refused_subscribe: AtomicU64,
    pub refused_delivery: AtomicU64,
    pub pipeline_full: AtomicU64,
    pub pipeline_waits: AtomicU64,
    pub malformed: AtomicU64,
    pub dropped_qos0_full: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub disconnected_slow: AtomicU64,
    /// Sessions disconnected because their device took nothing for the stall timeout.
    pub disconnected_stalled: AtomicU64,
    /// Reads of publishers held back so that a subscriber behind could catch up (`pressure`).
    pub publishers_slowed: AtomicU64,
    /// Messages the router's log dropped before a session drained them (should stay 0).
    pub router_skipped: AtomicU64,
    /// Times the persistent sessions were told to read their stored queues again (live
    /// copies may have been missed).
    pub catch_ups: AtomicU64,
    /// Queue entries a persistent session took from the store because their live copy did
    /// not arrive (see `session::recover`).
    pub entries_recovered: AtomicU64,
    pub wills_published: AtomicU64,
    pub wills_suppressed: AtomicU64,
    pub retained_full: AtomicU64,
    /// Retained messages the retained store could not commit (refused or counted).
    pub retained_not_stored: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub sessions_restored: AtomicU64,
    pub dropped_store_full: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
    pub revocations_applied: AtomicU64,
    /// Cluster mode: messages from other nodes that entered this node's router.
    pub cluster_imported: AtomicU64,
    /// Cluster mode: messages from other nodes the router could not take (full).
    pub cluster_import_dropped: AtomicU64,
    /// Cluster mode: sessions ended because their device connected to another node.
    pub cluster_taken_over: AtomicU64,
    /// Cluster mode: persistent sessions moved here from another node by their device.
    pub cluster_sessions_adopted: AtomicU64,
    /// Cluster mode: persistent sessions other nodes hold, indexed here (with subscriptions
    /// at QoS 1/2) so that this node's publishers write their entries.
    pub cluster_remote_sessions: AtomicU64,
    /// Cluster mode: publishes refused while the node could not confirm it is current.
    pub cluster_refused_not_current: AtomicU64,
    /// CONNECT refusals by reason label.
    refused_by: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts the packets the server appended to a connection's output (`bytes`).
    pub(crate) fn sent(&self, bytes: &[u8]) {
        Metrics::add(&self.packets_out, codec::count_packets(bytes));
    }
    pub(crate) fn refused(&self, reason: &'static str) {
        Metrics::inc(&self.refused_connect);
        if let Ok(mut m) = self.refused_by.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }
    /// CONNECT refusals by reason.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        self.refused_by
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}
