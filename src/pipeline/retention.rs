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
