use super::live::next_notification;
use super::*;

impl Session {
    pub(super) async fn run(mut self, first: Option<Box<Attach>>) {
        let mut next = match first {
            Some(a) => Some(a),
            None => self.detached(false).await,
        };
        while let Some(a) = next.take() {
            let Some(mut live) = self.accept(a).await else { break };
            self.report_presence(&live, true);
            let end = self.serve(&mut live).await;
            let by_device = matches!(end, End::Normal { .. });
            let (will, ends) = match end {
                End::Normal { will } => (will, false),
                End::Abnormal(why) => {
                    tracing::debug!(client = %self.client(), why, "connection ended");
                    (true, false)
                }
                End::Takeover(a) => {
                    if live.req.v5 {
                        let _ = live
                            .wr
                            .write_all(&codec::encode_disconnect(reason::ended::TAKEN_OVER))
                            .await;
                    }
                    next = Some(a);
                    (true, false)
                }
                End::Revoked(code) => {
                    if live.req.v5 {
                        let _ = live.wr.write_all(&codec::encode_disconnect(code)).await;
                    }
                    if live.req.will.is_some() {
                        Metrics::inc(&self.m().wills_suppressed);
                    }
                    (false, true)
                }
                End::ShutDown => {
                    if live.req.v5 {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            live.wr
                                .write_all(&codec::encode_disconnect(reason::ended::SHUTTING_DOWN)),
                        )
                        .await;
                    }
                    self.shutting_down = true;
                    (false, true)
                }
                End::LinkGone => (false, true),
                End::Overflow => {
                    if live.req.v5 {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            live.wr.write_all(&codec::encode_disconnect(reason::ended::TOO_SLOW)),
                        )
                        .await;
                    }
                    (true, false)
                }
            };
            // Acknowledgements of the connection's last read reach the store.
            let _ = self.sync_out().await;
            if let (true, Some(w)) = (will, live.req.will.take()) {
                self.will_after_end(w).await;
            }
            let detaching = !ends && next.is_none() && self.expiry > 0;
            if detaching {
                // A persistent session's disconnect time (what its expiry counts from, also
                // across a crash) is committed before its connection is closed.
                self.record_detach(router::now_ms()).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), live.wr.shutdown()).await;
            self.report_presence(&live, false);
            if by_device {
                drop(live);
            } else {
                tokio::spawn(linger(live));
            }
            if ends || (self.expiry == 0 && next.is_none()) {
                break;
            }
            if next.is_none() {
                next = self.detached(detaching).await;
            }
        }
        self.finish().await;
    }

    /// Records that the session has no connection since `since` (Unix ms) and waits for
    /// the commit.
    async fn record_detach(&mut self, since: u64) {
        self.live_will = None;
        self.save_with(Some(since), true);
        let _ = self.await_durable().await;
    }

    /// A persistent session without connection: keeps its queue filling until a connection
    /// attaches (returned), it expires or it is revoked. `recorded`: its disconnect time is
    /// stored already.
    pub(super) async fn detached(&mut self, recorded: bool) -> Option<Box<Attach>> {
        Metrics::inc(&self.m().sessions_persistent_offline);
        self.shared.registry.update(&self.key, self.gen, None, true, true);
        let expires = self
            .offline_until
            .take()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(self.expiry as u64));
        if !recorded {
            // The disconnect time is what a restart measures the session's expiry from.
            let left = expires.saturating_duration_since(Instant::now()).as_millis() as u64;
            let since = (router::now_ms() + left).saturating_sub(self.expiry as u64 * 1000);
            self.live_will = None;
            self.save(Some(since));
        }
        let out = loop {
            let will_at = self.pending_will.as_ref().map(|w| w.1);
            let step = tokio::select! {
                biased;
                c = self.ctrl.recv() => match c {
                    Some(Control::Attach(a)) => break Some(a),
                    Some(Control::ShutDown) => {
                        self.shutting_down = true;
                        break None;
                    }
                    Some(Control::Close(_)) | None => {
                        if self.pending_will.take().is_some() {
                            Metrics::inc(&self.m().wills_suppressed);
                        }
                        break None;
                    }
                    Some(Control::Invalidate(ch)) => {
                        self.rights.invalidate(ch.as_deref());
                        Ok(())
                    }
                    Some(Control::Deliver(d)) => self.on_direct(*d, false).await,
                    Some(Control::Shared(d, filter)) => self.on_shared(*d, filter, false).await,
                    Some(Control::CatchUp) => self.catch_up().await,
                    Some(Control::Recovered(rows)) => self.on_recovered(rows, false).await,
                },
                n = next_notification(&mut self.link) => self.on_link(n, false).await,
                _ = tokio::time::sleep_until(will_at.unwrap_or(expires)), if will_at.is_some() => {
                    if let Some((w, _)) = self.pending_will.take() {
                        self.publish_will(w).await;
                        let left = expires.saturating_duration_since(Instant::now()).as_millis() as u64;
                        self.save(Some((router::now_ms() + left).saturating_sub(self.expiry as u64 * 1000)));
                    }
                    Ok(())
                }
                _ = tokio::time::sleep_until(expires) => {
                    Metrics::inc(&self.m().sessions_expired);
                    break None;
                }
            };
            let step = match step {
                Ok(()) => self.sync_out().await,
                e => e,
            };
            if step.is_err() {
                break None;
            }
        };
        self.shared
            .metrics
            .sessions_persistent_offline
            .fetch_sub(1, Ordering::Relaxed);
        out
    }

    /// Ends the session: its pending will, its link, its registration; connections that were
    /// handed to it meanwhile start a new session.
    pub(super) async fn finish(mut self) {
        if let Some((w, _)) = self.pending_will.take() {
            if !self.shutting_down {
                self.publish_will(w).await;
            }
        }
        // A stopping server keeps persistent sessions for its next start.
        if !self.shutting_down {
            self.forget_stored();
        }
        // The link's slot goes back to the pool (when `link` drops) only after its
        // DISCONNECT is queued for the router.
        if let Some(mut link) = self.link.take() {
            let _ = link.tx.send(router::disconnect()).await;
        }
        self.shared.registry.remove(&self.key, self.gen);
        while let Ok(c) = self.ctrl.try_recv() {
            match c {
                Control::Attach(a) => {
                    let claim = a.req.claim;
                    if let Handed::New(gen, rx, a) =
                        self.shared.registry.attach(&self.key, self.identity.as_ref(), a, claim)
                    {
                        spawn(self.shared.clone(), self.key.clone(), gen, rx, self.identity.clone(), a);
                    }
                }
                Control::Shared(d, filter) => super::delivery::reoffer(&self.shared, &self.key, *d, &filter),
                _ => {}
            }
        }
    }
}

/// Once the server ended a connection (its last packets written, its side shut down), what
/// the device still sends is read and dropped for a moment (at most 2 s and 64 KiB): closing
/// a socket with bytes unread resets it, and the reset can destroy the DISCONNECT and the
/// acknowledgements before the device reads them (a device answering PUBRECs with PUBRELs
/// would see a broken pipe instead of the reason, e.g. 0x93).
async fn linger(mut live: Live) {
    let mut buf = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = live.rd.read(&mut buf).await {
            if n == 0 || n >= left {
                break;
            }
            left -= n;
        }
    })
    .await;
}
