//! Catch-up: a persistent session reads its stored queue again when live copies of its
//! messages may have been missed (cluster mode: a NATS gap, another node's lost exports; any
//! mode: messages the router could not take or skipped). The entries were written before
//! their publishers were acknowledged, so the store has every one; what the session does not
//! hold already is delivered from there.
//!
//! - The read follows a barrier in the session store's writer: every acknowledgement this
//!   session wrote before it is committed, so acknowledged entries are not read again; those
//!   that leave while the read runs are remembered (`catching_up`) and skipped.
//! - A catch-up asked for while one runs is not dropped: one more read follows (the running
//!   read may predate the entries of the newer gap).
//! - Entries taken from the store are remembered (`recovered`) until the next catch-up: their
//!   live copy, if it comes after all, is dropped (each message once; QoS 2 exactly once).
//! - Recovered entries are queued after what the session holds already: a message whose
//!   live copy was lost arrives late, rather than never.

use super::*;

impl Session {
    /// `Control::CatchUp`: starts reading the stored queue again (one read at a time).
    pub(super) async fn catch_up(&mut self) -> Step {
        if !self.stored {
            return Ok(());
        }
        if self.catching_up.is_some() {
            self.catch_up_again = true;
            return Ok(());
        }
        // The acknowledgements taken so far go to the writer before the barrier.
        self.sync_out().await?;
        self.catching_up = Some(HashSet::new());
        let (shared, key) = (self.shared.clone(), self.key.clone());
        let gen = self.gen;
        shared.rt.clone().spawn(async move {
            let rows = shared.durable.queued(&key).await.unwrap_or_default();
            shared.registry.send_gen(&key, gen, Control::Recovered(rows));
        });
        Ok(())
    }

    /// `Control::Recovered`: queues the stored entries this session does not hold.
    pub(super) async fn on_recovered(&mut self, rows: Vec<crate::StoredDelivery>, live: bool) -> Step {
        // None: a clean start dropped the session's queue since the read began.
        let Some(left) = self.catching_up.take() else {
            return Ok(());
        };
        let mut held = self.out.entries();
        held.extend(left);
        self.recovered.clear();
        let mut n = 0u64;
        for q in rows {
            if q.session != self.key || held.contains(&q.msg) {
                continue;
            }
            let Some(d) = durable::delivery(&q) else {
                self.drop_entry(q.msg);
                continue;
            };
            self.shared.durable.add_bytes(d.size() as u64);
            self.recovered.insert(q.msg);
            held.insert(q.msg);
            n += 1;
            self.admit(d, live).await?;
        }
        if n > 0 {
            self.m().entries_recovered.fetch_add(n, Ordering::Relaxed);
            tracing::info!(client = %self.client(), session = %self.key, entries = n, "persistent session: missed messages delivered from the store");
        }
        if std::mem::take(&mut self.catch_up_again) {
            self.catch_up().await?;
        }
        Ok(())
    }

    /// Entry `msg` leaves the session (acknowledged or dropped) while a catch-up read runs.
    pub(super) fn left_during_catch_up(&mut self, msg: u64) {
        if let Some(c) = self.catching_up.as_mut() {
            c.insert(msg);
        }
    }
}
