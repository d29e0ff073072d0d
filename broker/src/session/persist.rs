use super::*;

impl Session {
    /// Waits for every held reply (moving them to the write buffer in order) and for the
    /// writes of this read.
    pub(super) async fn drain_held(&mut self, live: &mut Live) -> Step {
        while !self.held.is_empty() {
            let ok = committed(&mut self.held).await;
            match self.held.pop_front() {
                Some((_, replies)) if ok => {
                    self.m().sent(&replies);
                    live.wbuf.extend_from_slice(&replies)
                }
                _ => return Err(End::Abnormal("session store write failed".into())),
            }
        }
        self.await_durable().await
    }

    /// Waits for the session store writes this read depends on.
    pub(super) async fn await_durable(&mut self) -> Step {
        let mut ok = true;
        for w in std::mem::take(&mut self.waits) {
            ok &= w.await.unwrap_or(false);
        }
        if ok {
            Ok(())
        } else {
            Err(End::Abnormal("session store write failed".into()))
        }
    }

    /// Writes what the outbound side did to stored entries: acknowledged or dropped ones go,
    /// QoS 2 packet ids and releases are recorded (a QoS 2 PUBLISH leaves only once its packet
    /// id is stored).
    /// Writes the released states (PUBREC received) of QoS 2 deliveries now; the replies of
    /// the read wait for their commit.
    pub(super) fn release_now(&mut self) {
        if !self.stored {
            return;
        }
        let (released, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.out.marks)
            .into_iter()
            .partition(|(_, state, _)| *state == durable::RELEASED);
        self.out.marks = rest;
        for (msg, state, pkid) in released {
            let w = self.shared.durable.write_wait(SessionOp::Mark {
                key: self.key.clone(),
                msg,
                state,
                pkid,
            });
            self.waits.push(w);
        }
    }

    pub(super) async fn sync_out(&mut self) -> Step {
        if self.out.gone.is_empty() && self.out.marks.is_empty() {
            return Ok(());
        }
        let gone = std::mem::take(&mut self.out.gone);
        let marks = std::mem::take(&mut self.out.marks);
        for (msg, n) in &gone {
            self.shared.durable.sub_bytes(*n as u64);
            self.left_during_catch_up(*msg);
        }
        if !self.stored {
            return Ok(());
        }
        let mut wait = None;
        for (msg, state, pkid) in marks {
            let op = SessionOp::Mark {
                key: self.key.clone(),
                msg,
                state,
                pkid,
            };
            if state == durable::SENT {
                wait = Some(self.shared.durable.write_wait(op));
            } else {
                self.shared.durable.write(op);
            }
        }
        for (msg, _) in gone {
            self.shared.durable.write(SessionOp::Ack {
                key: self.key.clone(),
                msg,
            });
        }
        if let Some(w) = wait {
            if !w.await.unwrap_or(false) {
                return Err(End::Abnormal("session store write failed".into()));
            }
        }
        Ok(())
    }

    /// Writes the session record (or removes it when the session is not persistent) and
    /// indexes its subscriptions for the publisher side.
    pub(super) fn save(&mut self, disconnected_at_ms: Option<u64>) {
        self.save_with(disconnected_at_ms, false)
    }

    /// `save`; with `wait`, the replies of the current read leave only after the commit.
    pub(super) fn save_with(&mut self, disconnected_at_ms: Option<u64>, wait: bool) {
        if !self.shared.durable.enabled() {
            return;
        }
        if self.expiry == 0 {
            self.forget_stored();
            return;
        }
        let now = router::now_ms();
        let will = match (&self.pending_will, &self.live_will) {
            (Some((w, at)), _) => {
                let left = at.saturating_duration_since(Instant::now()).as_millis() as u64;
                Some((w.clone(), now + left))
            }
            (None, Some(w)) => Some((w.clone(), 0)),
            (None, None) => None,
        };
        let state = durable::State {
            v5: self.v5,
            subs: self.subs.stored(),
            will,
        };
        let rec = durable::record(
            &self.key,
            self.identity.as_ref(),
            self.expiry,
            disconnected_at_ms,
            &state,
            durable::encode_inbound(self.in_qos2.iter()),
        );
        if wait {
            let w = self.shared.durable.write_wait(SessionOp::Put(rec));
            self.waits.push(w);
        } else {
            self.shared.durable.write(SessionOp::Put(rec));
        }
        self.index_subscriptions();
        self.stored = true;
    }

    /// Cluster mode: the replies of this read (a SUBACK) wait, after the commit of the
    /// session's record, until every other node indexed its subscriptions
    /// ([`crate::Cluster::settled`]): a message published anywhere after the SUBACK is
    /// queued for the session before its publisher is acknowledged.
    pub(super) fn await_settled(&mut self) {
        let Some(cluster) = self.shared.cluster.clone() else {
            return;
        };
        let Some(commit) = self.waits.pop() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        self.shared.rt.spawn(async move {
            let ok = commit.await.unwrap_or(false);
            if ok {
                cluster.settled().await;
            }
            let _ = tx.send(ok);
        });
        self.waits.push(rx);
    }

    /// Puts the session's subscriptions in the index of persistent subscriptions.
    pub(super) fn index_subscriptions(&self) {
        self.shared.durable.index(&self.key, self.origin, self.subs.canonical());
    }

    /// Removes the session's record, queue and indexed subscriptions from the store (it is
    /// not persistent any more, or it ended).
    pub(super) fn forget_stored(&mut self) {
        if self.stored {
            self.shared.durable.write(SessionOp::Delete(self.key.clone()));
            self.shared.durable.index(&self.key, self.origin, Vec::new());
            self.stored = false;
        }
    }
}

/// Resolves when every commit the first held reply waits for is done (true if all
/// succeeded, false at the first failure); pending forever when nothing is held.
/// Cancel-safe: receivers are removed as they complete.
pub(super) async fn committed(held: &mut Held) -> bool {
    let Some((waits, _)) = held.front_mut() else {
        return std::future::pending().await;
    };
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < waits.len() {
            match std::future::Future::poll(std::pin::Pin::new(&mut waits[i]), cx) {
                std::task::Poll::Ready(Ok(true)) => {
                    waits.swap_remove(i);
                }
                std::task::Poll::Ready(_) => return std::task::Poll::Ready(false),
                std::task::Poll::Pending => i += 1,
            }
        }
        if waits.is_empty() {
            std::task::Poll::Ready(true)
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}
