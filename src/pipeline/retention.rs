//! Background retention: removes messages past `messages.retention_max_age` or beyond
//! `messages.retention_max_rows_per_channel`, every `retention_interval` seconds.

use super::normalize::now_secs;
use super::PipelineMetrics;
use crate::config::MessagesConfig;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use storage::Store;

pub(super) async fn retention(store: Store, cfg: MessagesConfig, metrics: Arc<PipelineMetrics>) {
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

/// Removes outbox entries older than `max_age` seconds, every ten minutes (the first pass at
/// start-up).
pub(crate) async fn prune_outbox(store: Store, max_age: u64) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
    loop {
        tick.tick().await;
        let before =
            storage::now_micros().saturating_sub((max_age.min(i64::MAX as u64 / 1_000_000) as i64) * 1_000_000);
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.prune_outbox(before)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "outbox pruned"),
            Ok(Err(e)) => tracing::warn!(error = %e, "outbox pruning failed"),
            _ => {}
        }
    }
}
