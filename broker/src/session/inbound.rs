use super::*;

impl Session {
    /// Everything the device sent that is complete in the read buffer.
    pub(super) async fn on_bytes(&mut self, live: &mut Live) -> Step {
        let mut replies = BytesMut::new();
        let mut result = Ok(());
        // QoS 1 PUBLISH packets of this read (see `on_publish`).
        let mut qos_in_read = 0usize;
        loop {
            let f = match codec::next_frame(&mut live.rbuf, self.shared.cfg.max_packet_size) {
                Ok(Some(f)) => {
                    Metrics::inc(&self.m().packets_in);
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    let code = if matches!(e, FrameError::TooLarge(_)) {
                        code::PACKET_TOO_LARGE
                    } else {
                        code::MALFORMED
                    };
                    Metrics::inc(&self.m().malformed);
                    result = close_with(&mut replies, live.req.v5, code, e.to_string());
                    break;
                }
            };
            let r = self.on_packet(live, &f, &mut replies, &mut qos_in_read).await;
            if let Err(e) = r {
                if matches!(e, End::Abnormal(_)) {
                    Metrics::inc(&self.m().malformed);
                }
                result = Err(e);
                break;
            }
        }
        // Acknowledgements leave only once the sink took what they acknowledge, and the
        // session store committed what persistent sessions must not lose. The commit is not
        // waited for here: the replies are held, in order, and the device's next packets are
        // read meanwhile, so one commit covers many of its messages.
        self.flush_sink().await;
        if !self.waits.is_empty() || !self.held.is_empty() {
            let waits = std::mem::take(&mut self.waits);
            match self.held.back_mut() {
                Some(last) if waits.is_empty() => last.1.extend_from_slice(&replies),
                _ => self.held.push_back((waits, replies)),
            }
        } else {
            self.m().sent(&replies);
            live.wbuf.extend_from_slice(&replies);
        }
        self.flush_router(true).await?;
        result
    }

    pub(super) async fn on_packet(
        &mut self,
        live: &mut Live,
        f: &Frame,
        replies: &mut BytesMut,
        qos_in_read: &mut usize,
    ) -> Step {
        let v5 = live.req.v5;
        let protocol = |replies: &mut BytesMut, code: u8, e: String| close_with(replies, v5, code, e);
        match f.kind() {
            codec::PUBLISH => self.on_publish(live, f, replies, qos_in_read).await,
            codec::SUBSCRIBE => match codec::subscribe(f, v5) {
                Ok(s) => self.on_subscribe(live, s, replies).await,
                Err(e) => protocol(replies, code::MALFORMED, e.to_string()),
            },
            codec::UNSUBSCRIBE => match codec::unsubscribe(f, v5) {
                Ok((pkid, filters)) => {
                    let mut codes = Vec::with_capacity(filters.len());
                    let mut shared_left = Vec::new();
                    for fl in filters {
                        let canonical = self.canonical(fl);
                        let fl = canonical.as_deref().unwrap_or(fl);
                        match self.subs.remove(fl) {
                            Some(undo) => {
                                self.to_router.extend(undo);
                                codes.push(code::SUCCESS);
                                if self.shared.interest.is_some() && crate::rights::shared_filter(fl).is_some() {
                                    shared_left.push(fl.to_string());
                                }
                            }
                            None => codes.push(code::NO_SUBSCRIPTION_EXISTED),
                        }
                    }
                    for whole in shared_left {
                        self.hand_back_shared(&whole);
                    }
                    replies.extend_from_slice(&codec::encode_unsuback(pkid, &codes, v5));
                    if self.stored {
                        // The UNSUBACK leaves once the subscriptions are committed.
                        self.save_with(None, true);
                    }
                    Ok(())
                }
                Err(e) => protocol(replies, code::MALFORMED, e.to_string()),
            },
            codec::PUBACK | codec::PUBREC | codec::PUBCOMP | codec::PUBREL => {
                let (pkid, code) = match codec::ack(f) {
                    Ok(x) => x,
                    Err(e) => return protocol(replies, code::MALFORMED, e.to_string()),
                };
                match f.kind() {
                    codec::PUBACK => {
                        self.out.puback(pkid);
                    }
                    codec::PUBREC => {
                        if self.out.pubrec(pkid, code) {
                            // Exactly once across a crash: the device forgets the packet id
                            // once it completes, so its release is committed before the
                            // PUBREL leaves (held with the other replies of this read), or a
                            // restart would send the message again as if never received.
                            self.release_now();
                            replies.extend_from_slice(&codec::encode_ack(codec::PUBREL, pkid, None));
                        }
                    }
                    codec::PUBCOMP => {
                        self.out.pubcomp(pkid);
                    }
                    _ => {
                        let known = self.in_qos2.remove(&pkid);
                        if known && self.stored {
                            self.shared.durable.write(SessionOp::Inbound {
                                key: self.key.clone(),
                                inbound: durable::encode_inbound(self.in_qos2.iter()),
                            });
                        }
                        let r = (v5 && !known).then_some(code::PACKET_ID_NOT_FOUND);
                        replies.extend_from_slice(&codec::encode_ack(codec::PUBCOMP, pkid, r));
                    }
                }
                Ok(())
            }
            codec::PINGREQ => {
                replies.extend_from_slice(&codec::pingresp());
                Ok(())
            }
            codec::DISCONNECT => match codec::disconnect(f, v5) {
                Ok((code, expiry)) => {
                    if let Some(e) = expiry {
                        if self.expiry == 0 && e > 0 {
                            return protocol(replies, code::PROTOCOL_ERROR, "session expiry set at DISCONNECT".into());
                        }
                        self.expiry = e.min(self.shared.cfg.max_session_expiry.as_secs().min(u32::MAX as u64) as u32);
                        self.shared.registry.update(
                            &self.key,
                            self.gen,
                            live.req.cert_serial.clone(),
                            self.expiry > 0,
                            false,
                        );
                    }
                    Err(End::Normal {
                        will: code == code::DISCONNECT_WITH_WILL,
                    })
                }
                Err(e) => protocol(replies, code::MALFORMED, e.to_string()),
            },
            k => protocol(
                replies,
                code::PROTOCOL_ERROR,
                format!("unexpected packet type {k} from client"),
            ),
        }
    }

    pub(super) async fn on_publish(
        &mut self,
        live: &mut Live,
        f: &Frame,
        replies: &mut BytesMut,
        qos_in_read: &mut usize,
    ) -> Step {
        let v5 = live.req.v5;
        let fail = |replies: &mut BytesMut, code: u8, why: &str| close_with(replies, v5, code, why);
        let p = match codec::publish(f, v5) {
            Ok(p) => p,
            Err(FrameError::Protocol(why)) => return fail(replies, code::PROTOCOL_ERROR, why),
            Err(e) => return fail(replies, code::MALFORMED, &e.to_string()),
        };
        // Client-to-server topic aliases are resolved here, exactly once.
        let topic: String = match p.alias {
            Some(a) if a == 0 || a > TOPIC_ALIAS_MAX => {
                return fail(replies, code::TOPIC_ALIAS_INVALID, "topic alias out of range")
            }
            Some(a) if p.topic.is_empty() => match live.aliases.get(&a) {
                Some(t) => t.clone(),
                None => return fail(replies, code::PROTOCOL_ERROR, "unknown topic alias"),
            },
            Some(a) => {
                live.aliases.insert(a, p.topic.to_string());
                p.topic.to_string()
            }
            None => p.topic.to_string(),
        };
        if !codec::valid_topic(&topic) {
            return fail(replies, code::TOPIC_NAME_INVALID, "invalid topic name in PUBLISH");
        }
        // Magistrala's `m/<domain>/c/<channel>` form is the same channel.
        let topic = self.canonical(&topic).unwrap_or(topic);
        if p.qos == 2 && self.in_qos2.contains(&p.pkid) {
            // A resent QoS 2 PUBLISH whose PUBREC was lost: acknowledged again, not routed again.
            replies.extend_from_slice(&codec::encode_ack(codec::PUBREC, p.pkid, None));
            return Ok(());
        }
        if p.qos > 0 {
            // In flight: this read's QoS 1 messages (their PUBACKs leave with the read) and
            // every unreleased QoS 2 one (this read's are in `in_qos2` already: counted once).
            if *qos_in_read + self.in_qos2.len() >= self.shared.cfg.inflight_window as usize {
                return fail(replies, code::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded");
            }
            if p.qos == 1 {
                *qos_in_read += 1;
            }
        }
        if !self.shared.current() {
            // Cluster mode, failing closed: rights here may be stale.
            Metrics::inc(&self.m().cluster_refused_not_current);
            if !v5 {
                return Err(End::Abnormal(
                    "this node cannot confirm it is current with the cluster".into(),
                ));
            }
            let code = Some(reason::publish::NOT_CURRENT);
            match p.qos {
                0 => {}
                1 => replies.extend_from_slice(&codec::encode_ack(codec::PUBACK, p.pkid, code)),
                _ => replies.extend_from_slice(&codec::encode_ack(codec::PUBREC, p.pkid, code)),
            }
            return Ok(());
        }
        let auth = self.shared.auth.clone();
        if !self
            .rights
            .allowed(auth.as_ref(), self.identity.as_ref(), Action::Publish, &topic)
            .await
        {
            Metrics::inc(&self.m().refused_publish);
            tracing::info!(client = %self.client(), mqtt_client_id = %live.req.mqtt_client_id, topic = %topic, reason = "no publish right on this topic", "PUBLISH refused");
            if !v5 {
                return Err(End::Abnormal("publish not allowed".into()));
            }
            match p.qos {
                0 => return fail(replies, reason::publish::NOT_AUTHORIZED, "publish not allowed"),
                1 => replies.extend_from_slice(&codec::encode_ack(
                    codec::PUBACK,
                    p.pkid,
                    Some(reason::publish::NOT_AUTHORIZED),
                )),
                _ => replies.extend_from_slice(&codec::encode_ack(
                    codec::PUBREC,
                    p.pkid,
                    Some(reason::publish::NOT_AUTHORIZED),
                )),
            }
            return Ok(());
        }
        Metrics::inc(&self.m().messages_in);
        let props: Bytes = if p.props.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(p.props.concat())
        };
        let expires = p.expiry.map_or(0, |e| router::now_ms() + e as u64 * 1000);
        let (qos, retain, pkid) = (p.qos, p.retain, p.pkid);
        if let Err(refused) = self
            .route(&topic, p.payload, qos, retain, props, expires, v5 && qos > 0)
            .await
        {
            tracing::warn!(client = %self.client(), topic = %topic, reason = ?refused, "retained PUBLISH refused");
            return match (v5, qos) {
                (true, 1) => {
                    replies.extend_from_slice(&codec::encode_ack(codec::PUBACK, pkid, Some(refused.code())));
                    Ok(())
                }
                (true, 2) => {
                    replies.extend_from_slice(&codec::encode_ack(codec::PUBREC, pkid, Some(refused.code())));
                    Ok(())
                }
                // 3.1.1 cannot be told: no acknowledgement, the connection closes and the
                // device sends it again.
                _ => Err(End::Abnormal("retained message not stored".into())),
            };
        }
        match qos {
            1 => replies.extend_from_slice(&codec::encode_ack(codec::PUBACK, pkid, None)),
            2 => {
                self.in_qos2.insert(pkid);
                if self.stored {
                    // Exactly once across a restart: the PUBREC leaves after this commits.
                    let w = self.shared.durable.write_wait(SessionOp::Inbound {
                        key: self.key.clone(),
                        inbound: durable::encode_inbound(self.in_qos2.iter()),
                    });
                    self.waits.push(w);
                }
                replies.extend_from_slice(&codec::encode_ack(codec::PUBREC, pkid, None));
            }
            _ => {}
        }
        Ok(())
    }

    /// Passes a message through the ingress and batches what it made for the sink and the
    /// router (flushed once per read); the commits its acknowledgement waits for are kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn route(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        props: Bytes,
        expires_at_ms: u64,
        refusable: bool,
    ) -> Result<(), Refused> {
        let p = Publish {
            topic,
            payload,
            qos,
            retain,
            props,
            expires_at_ms,
            origin: self.origin,
            publisher: self.identity.as_ref(),
            transport: self.transport,
            format: PayloadFormat::Detect,
            wait_durable: true,
            refusable,
        };
        let routed = self.shared.ingress(p, ToSink::Batch(&mut self.to_sink)).await?;
        self.waits.extend(routed.durable);
        self.waits.extend(routed.exported);
        self.to_router.push(routed.packet);
        self.to_router_marks.add(topic, routed.mark);
        Ok(())
    }

    /// Hands accepted messages to the sink. QoS 1/2 messages that do not fit are waited for
    /// (the device's socket is not read meanwhile); QoS 0 ones are counted and not stored.
    pub(super) async fn flush_sink(&mut self) {
        // Cluster mode acknowledges QoS 1/2 messages once they are committed.
        let commit = self.shared.cluster.is_some() && self.to_sink.iter().any(|m| m.qos > 0);
        self.offer_sink().await;
        if commit {
            self.waits.push(self.shared.sink.committed());
        }
    }

    async fn offer_sink(&mut self) {
        let mut batch = std::mem::take(&mut self.to_sink);
        loop {
            if batch.is_empty() {
                return;
            }
            let room = self.shared.sink.room();
            let refused = self.shared.sink.offer(batch);
            let (must, lost): (Vec<Message>, Vec<Message>) = refused.into_iter().partition(|m| m.qos > 0);
            self.count_unstored(lost.len());
            if must.is_empty() {
                return;
            }
            Metrics::inc(&self.m().pipeline_waits);
            room.await;
            batch = must;
        }
    }

    pub(super) fn count_unstored(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.m().pipeline_full.fetch_add(n as u64, Ordering::Relaxed);
        if (before + n as u64).ilog2() != before.checked_ilog2().unwrap_or(u32::MAX) {
            tracing::warn!(
                dropped_total = before + n as u64,
                "message pipeline full: QoS 0 MQTT messages not stored"
            );
        }
    }

    /// Sends what is queued for the router: one router event for the whole batch, once the
    /// subscribers that fell behind leave room for it in the router's log (`pressure`; the
    /// session keeps draining its own link meanwhile, `live` as its connection is).
    pub(super) async fn flush_router(&mut self, live: bool) -> Step {
        if self.to_router.is_empty() {
            return Ok(());
        }
        if self.link.is_none() {
            self.to_router.clear();
            self.to_router_marks.clear();
            return Ok(());
        }
        let pressure = self.shared.pressure.clone();
        let mut waited = false;
        loop {
            let changed = pressure.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if pressure.admits(&self.to_router_marks) {
                break;
            }
            if !waited {
                waited = true;
                Metrics::inc(&self.m().publishers_slowed);
            }
            tokio::select! {
                _ = changed => {}
                n = live::next_notification(&mut self.link) => self.on_link(n, live).await?,
                // A registration may go stale meanwhile (`admits` then leaves it out).
                _ = tokio::time::sleep(crate::pressure::STALE) => {}
            }
        }
        self.to_router_marks.clear();
        let Some(router::Link { tx, .. }) = self.link.as_mut() else {
            self.to_router.clear();
            return Ok(());
        };
        while tx.buffer().len() > MAX_LINK_BACKLOG {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut packets = std::mem::take(&mut self.to_router);
        let last = packets.pop();
        if !packets.is_empty() {
            tx.buffer().extend(packets);
        }
        if let Some(last) = last {
            if tx.send(last).await.is_err() {
                return Err(End::LinkGone);
            }
        }
        Ok(())
    }
}

/// Ends the connection for a protocol violation: a v5 client is told why (DISCONNECT with
/// `code`), a 3.1.1 one is closed.
fn close_with(replies: &mut BytesMut, v5: bool, code: u8, why: impl Into<String>) -> Step {
    if v5 {
        replies.extend_from_slice(&codec::encode_disconnect(code));
    }
    Err(End::Abnormal(why.into()))
}
