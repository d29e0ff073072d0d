use super::*;

impl Session {
    /// A notification from the router (or the link's end).
    pub(super) async fn on_link(&mut self, n: Result<Option<Notification>, ()>, live: bool) -> Step {
        let mut n = match n {
            Ok(n) => n,
            Err(()) => {
                tracing::error!(client = %self.client(), "the router dropped a session's link");
                return Err(End::LinkGone);
            }
        };
        let mut unscheduled = false;
        let mut drain = crate::pressure::Drain::default();
        for _ in 0..DRAIN_BATCH {
            match n.take() {
                Some(Notification::Forward(f)) => {
                    if let Some(mark) = router::mark_of(&f.publish.payload) {
                        drain.took(&f.publish.topic, mark);
                    }
                    self.on_forward(f, live).await?
                }
                Some(Notification::Unschedule) => unscheduled = true,
                Some(Notification::Disconnect(..)) => {
                    tracing::error!(client = %self.client(), "the router disconnected a session's link");
                    return Err(End::LinkGone);
                }
                Some(_) | None => {}
            }
            match self.link.as_mut().and_then(|l| l.rx.next().now_or_never()) {
                Some(Ok(next)) => n = next,
                Some(Err(_)) => return Err(End::LinkGone),
                None => break,
            }
        }
        if let Some(r) = self.subs.reader() {
            r.drained(unscheduled, drain);
        }
        if unscheduled {
            if let Some(l) = self.link.as_ref() {
                if l.rx.wake().await.is_err() {
                    return Err(End::LinkGone);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn on_forward(&mut self, f: rumqttd::Forward, live: bool) -> Step {
        let Some(rid) = f
            .properties
            .as_ref()
            .and_then(|p| p.subscription_identifiers.first().copied())
        else {
            return Ok(());
        };
        if let Some((_, offset)) = f.cursor {
            let skipped = self.subs.skipped(rid, offset);
            if skipped > 0 && self.stored {
                // The stored entries of the skipped messages are read again.
                self.catch_up().await?;
            }
            if skipped > 0 {
                let before = self.m().router_skipped.fetch_add(skipped, Ordering::Relaxed);
                if before == 0 {
                    tracing::warn!(client = %self.client(), skipped, "the router's log ran past a subscriber that drains it: messages lost (mqtt.max_segment_size too small for this load?)");
                }
            }
        }
        let (topic, dollar) = router::unescaped(f.publish.topic);
        if dollar && self.subs.wildcard_first(rid) {
            // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match `$` topics.
            return Ok(());
        }
        let Some(sub) = self.subs.by_rid(rid) else {
            return Ok(());
        };
        let Some((tag, payload)) = router::decode(f.publish.payload) else {
            return Ok(());
        };
        let entry = if self.stored { tag.msg } else { 0 };
        if entry != 0 && (self.direct_seen.remove(&entry) || self.recovered.remove(&entry)) {
            // Already received directly (see `direct`) or from the store (see `recover`).
            return Ok(());
        }
        if sub.no_local && tag.origin == self.origin {
            return Ok(());
        }
        let mut d = Delivery {
            topic,
            payload,
            props: tag.props,
            qos: tag.qos.min(sub.qos),
            retain: sub.rap && tag.retain,
            expires_at_ms: tag.expires_at_ms,
            sub_ids: sub.sub_id.into_iter().collect(),
            msg: entry,
        };
        // Other subscriptions of this session match it too: the router brings a copy per
        // filter; the first to come is delivered for all of them (every identifier, the
        // highest QoS [MQTT-3.3.4-2] [MQTT-3.3.4-3]) and the others are dropped.
        let others = self
            .subs
            .others_matching(std::str::from_utf8(&d.topic).unwrap_or(""), rid);
        if !others.is_empty() {
            if !self.copies.first(tag.mark, &d.topic) {
                return Ok(());
            }
            for o in others.iter().filter(|o| !(o.no_local && tag.origin == self.origin)) {
                d.sub_ids.extend(o.sub_id);
                d.qos = d.qos.max(tag.qos.min(o.qos));
                d.retain |= o.rap && tag.retain;
            }
        }
        self.admit(d, live).await
    }

    /// A message handed over directly (restored session without subscriptions on a link).
    pub(super) async fn on_direct(&mut self, d: Delivery, live: bool) -> Step {
        if d.msg != 0 && self.recovered.remove(&d.msg) {
            // Taken from the store already (see `recover`).
            return Ok(());
        }
        if self.link.is_some() && d.msg != 0 {
            self.direct_seen.insert(d.msg);
        }
        self.admit(d, live).await
    }

    /// Cluster mode: a shared subscription's message this session was picked for; another
    /// local member takes it when this one left the group meanwhile.
    pub(super) async fn on_shared(&mut self, d: Delivery, filter: String, live: bool) -> Step {
        if !self.subs.contains(&filter) {
            reoffer(&self.shared, &self.key, d, &filter);
            return Ok(());
        }
        self.on_direct(d, live).await
    }

    /// A delivery for this session, from the router or directly: not when expired or when
    /// the client may not receive it (its stored entry goes then), else queued (and written
    /// as an entry of this session when it is persistent and nobody wrote one).
    pub(super) async fn admit(&mut self, mut d: Delivery, live: bool) -> Step {
        // Persistent sessions queue only QoS 1/2 while offline.
        if !live && d.qos == 0 {
            return Ok(());
        }
        if d.expires_at_ms != 0 && d.expires_at_ms <= router::now_ms() {
            Metrics::inc(&self.m().dropped_expired);
            self.drop_entry(d.msg);
            return Ok(());
        }
        let t = std::str::from_utf8(&d.topic).unwrap_or("");
        let auth = self.shared.auth.clone();
        if !self
            .rights
            .allowed(auth.as_ref(), self.identity.as_ref(), Action::Deliver, t)
            .await
        {
            Metrics::inc(&self.m().refused_delivery);
            self.drop_entry(d.msg);
            return Ok(());
        }
        if d.msg == 0 && d.qos > 0 && self.stored {
            // Not written by its publisher for this session (a shared subscription's
            // message, or one that raced this subscription): written here.
            d.msg = self.own_entry(&d);
        }
        self.enqueue(d, live)
    }

    /// A queue entry that will not be delivered goes from the store.
    pub(super) fn drop_entry(&mut self, msg: u64) {
        if msg != 0 && self.stored {
            self.left_during_catch_up(msg);
            self.shared.durable.write(SessionOp::Ack {
                key: self.key.clone(),
                msg,
            });
        }
    }

    /// Writes a delivery as a queue entry of this session only (not waited for).
    pub(super) fn own_entry(&self, d: &Delivery) -> u64 {
        let size = d.size() as u64;
        if !self.shared.durable.has_room(size) {
            Metrics::inc(&self.m().dropped_store_full);
            return 0;
        }
        self.shared.durable.add_bytes(size);
        let id = self.shared.durable.next_id();
        let body = durable::encode_body(&durable::Body {
            topic: d.topic.clone(),
            props: d.props.clone(),
            retain: d.retain,
            expires_at_ms: d.expires_at_ms,
            payload: d.payload.clone(),
        });
        self.shared.durable.write(SessionOp::Message {
            id,
            body,
            targets: vec![(self.key.clone(), durable::encode_meta(d.qos, &d.sub_ids))],
        });
        id
    }

    pub(super) fn enqueue(&mut self, mut d: Delivery, live: bool) -> Step {
        if let Some(t) = self.subs.shown(&d.topic) {
            d.topic = t;
        }
        let before = (self.out.evicted_qos0, self.out.evicted_full);
        let entry = d.msg;
        let r = self.out.push(d, self.expiry > 0);
        let evicted = self.out.evicted_qos0 - before.0;
        if evicted > 0 {
            self.m().dropped_qos0_full.fetch_add(evicted, Ordering::Relaxed);
        }
        let evicted = self.out.evicted_full - before.1;
        if evicted > 0 {
            self.m().dropped_queue_full.fetch_add(evicted, Ordering::Relaxed);
            if !self.drop_logged {
                self.drop_logged = true;
                tracing::warn!(
                    client = %self.client(),
                    session = %self.key,
                    limit_messages = self.shared.cfg.max_queued_messages,
                    limit_bytes = self.shared.cfg.max_queued_bytes,
                    "persistent session queue full: dropping its oldest QoS 1/2 messages (logged once per session)"
                );
            }
        }
        match r {
            Push::Queued => Ok(()),
            Push::DroppedQos0 => {
                Metrics::inc(&self.m().dropped_qos0_full);
                Ok(())
            }
            Push::Full if live && self.expiry == 0 => {
                // A clean session that cannot keep up is disconnected rather than letting it
                // hold more memory.
                Metrics::inc(&self.m().disconnected_slow);
                tracing::warn!(client = %self.client(), "subscriber too slow: outbound queue full, disconnecting");
                Err(End::Overflow)
            }
            Push::Full => {
                self.drop_entry(entry);
                let n = self.m().dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(client = %self.client(), dropped_total = n + 1, "session queue full: QoS 1/2 message dropped");
                }
                Ok(())
            }
        }
    }

    /// Moves deliveries from the queue to the write buffer, within the device's Receive
    /// Maximum and Maximum Packet Size, checking rights once more.
    pub(super) async fn pump(&mut self, live: &mut Live) -> Step {
        let now = router::now_ms();
        let v5 = live.req.v5;
        let receive_max = live.req.receive_max as usize;
        let auth = self.shared.auth.clone();
        while live.wbuf.len() < WBUF_HIGH {
            let mut expired = 0;
            let next = self.out.next(receive_max, now, &mut expired);
            if expired > 0 {
                self.m().dropped_expired.fetch_add(expired, Ordering::Relaxed);
            }
            let Some((pkid, d)) = next else { break };
            let t = std::str::from_utf8(&d.topic).unwrap_or("");
            // Rights are on the canonical form (a topic may be shown in the `m/` one).
            let canonical = self.canonical(t);
            let t = canonical.as_deref().unwrap_or(t);
            let allowed = self
                .rights
                .allowed(auth.as_ref(), self.identity.as_ref(), Action::Deliver, t)
                .await;
            let fits = live.req.max_packet.is_none_or(|m| d.encoded_len(v5, now) <= m);
            if !allowed || !fits {
                if !allowed {
                    Metrics::inc(&self.m().refused_delivery);
                } else {
                    Metrics::inc(&self.m().dropped_too_large);
                }
                if pkid != 0 {
                    self.out.abandon(pkid);
                }
                continue;
            }
            Metrics::inc(&self.m().messages_out);
            Metrics::inc(&self.m().packets_out);
            let alias = if v5 {
                live.out_aliases.of(&d.topic, live.req.topic_alias_max)
            } else {
                crate::outbound::Alias::No
            };
            d.encode(&mut live.wbuf, pkid, false, v5, now, alias);
        }
        Ok(())
    }
}

impl Session {
    /// Cluster mode: this session left shared subscription `whole` (`$share/<g>/<f>`): the
    /// messages it was picked for and has not sent yet, which no other subscription of its
    /// own matches, go to another member of the group on this node (nothing reaches the
    /// device after its UNSUBACK).
    pub(super) fn hand_back_shared(&mut self, whole: &str) {
        let Some((_, inner)) = crate::rights::shared_filter(whole) else {
            return;
        };
        let domain = self.identity.as_ref().map(|i| i.domain_id.clone());
        let canonical = |t: &[u8]| {
            let t = std::str::from_utf8(t).unwrap_or("");
            domain
                .as_deref()
                .and_then(|d| crate::topic::canonical(t, d))
                .unwrap_or_else(|| t.to_string())
        };
        let subs = &self.subs;
        let taken = self.out.take_queued(|d| {
            let t = canonical(&d.topic);
            crate::codec::matches(inner, &t) && !subs.any_matching(&t)
        });
        for mut d in taken {
            d.topic = Bytes::from(canonical(&d.topic));
            // Its entry here left with it (`gone`); the member taking it writes its own.
            d.msg = 0;
            reoffer(&self.shared, &self.key, d, whole);
        }
    }
}

/// A shared subscription's message whose member (`key`) left the group: the group's next
/// member on this node takes it (with its own options), else it is dropped (counted).
pub(super) fn reoffer(shared: &Shared, key: &str, mut d: Delivery, filter: &str) {
    let next = crate::rights::shared_filter(filter)
        .zip(shared.interest.as_ref())
        .and_then(|((g, f), i)| i.pick(&(g.to_string(), f.to_string())))
        .filter(|(k, _)| k != key);
    match next {
        Some((k, o)) => {
            d.qos = d.qos.min(o.qos);
            d.sub_ids = o.sub_id.into_iter().collect();
            shared
                .registry
                .send(&k, Control::Shared(Box::new(d), filter.to_string()));
        }
        None => Metrics::inc(&shared.metrics.cluster_import_dropped),
    }
}
