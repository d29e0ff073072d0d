use super::*;

impl Session {
    /// A connection ended abnormally: its will goes out now, or after its delay (cancelled
    /// by a reconnect) when the session outlives the connection.
    pub(super) async fn will_after_end(&mut self, w: Will) {
        let delay = w.delay.min(self.expiry);
        if delay == 0 {
            self.publish_will(w).await;
        } else {
            self.pending_will = Some((w, Instant::now() + Duration::from_secs(delay as u64)));
        }
    }

    /// Publishes a will if its client may still publish there right now.
    pub(super) async fn publish_will(&mut self, w: Will) {
        if let Some(ct) = topic::parse(&w.topic, false) {
            self.rights.invalidate(Some(ct.channel));
        }
        let auth = self.shared.auth.clone();
        if !self
            .rights
            .allowed(auth.as_ref(), self.identity.as_ref(), Action::Publish, &w.topic)
            .await
        {
            Metrics::inc(&self.m().wills_suppressed);
            tracing::info!(client = %self.client(), topic = %w.topic, "will not published: no publish right");
            return;
        }
        Metrics::inc(&self.m().wills_published);
        let expires = w.expiry.map_or(0, |e| router::now_ms() + e as u64 * 1000);
        if let Err(refused) = self
            .route(&w.topic, &w.payload, w.qos, w.retain, w.props.clone(), expires, false)
            .await
        {
            tracing::warn!(client = %self.client(), topic = %w.topic, reason = ?refused, "will not published");
            return;
        }
        let _ = self.await_durable().await;
        let _ = self.flush_router(false).await;
        if !self.to_sink.is_empty() {
            let refused = self.shared.sink.offer(std::mem::take(&mut self.to_sink));
            self.count_unstored(refused.len());
        }
    }
}
