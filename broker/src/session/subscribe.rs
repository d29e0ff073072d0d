use super::*;

impl Session {
    pub(super) async fn on_subscribe(
        &mut self,
        live: &mut Live,
        s: codec::SubscribeInfo<'_>,
        replies: &mut BytesMut,
    ) -> Step {
        let v5 = live.req.v5;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let auth = self.shared.auth.clone();
        // A subscription the cluster's index of persistent subscriptions holds was granted.
        let mut indexed = false;
        for (given, o) in &s.filters {
            // Magistrala's `m/<domain>/c/<channel>` form is the same channel: kept canonical,
            // shown to this session in its form.
            let canonical = self.canonical(given);
            let m_domain = canonical
                .as_ref()
                .and(self.identity.as_ref())
                .map(|i| i.domain_id.clone());
            let filter: &str = canonical.as_deref().unwrap_or(given);
            let shared_sub = crate::rights::shared_filter(filter);
            let inner = shared_sub.map(|(_, f)| f).unwrap_or(filter);
            // `$` filters are the rights' call (only anonymous sessions, never `$SYS`).
            let (code, why) = if !codec::valid_filter(inner) || (shared_sub.is_some() && o.no_local) {
                (reason::subscribe::INVALID, "invalid or unsupported filter")
            } else if !self
                .rights
                .allowed(auth.as_ref(), self.identity.as_ref(), Action::Subscribe, filter)
                .await
            {
                (reason::subscribe::denied(v5), "no subscribe right on this filter")
            } else if self.subs.full_for(filter) {
                (reason::subscribe::quota(v5), "too many subscriptions")
            } else {
                (o.qos, "")
            };
            if code >= code::UNSPECIFIED {
                Metrics::inc(&self.m().refused_subscribe);
                tracing::info!(client = %self.client(), mqtt_client_id = %live.req.mqtt_client_id, filter = %given, reason = why, "SUBSCRIBE refused");
                codes.push(code);
                continue;
            }
            let added = self.subs.insert(
                filter,
                SubOptions {
                    qos: o.qos,
                    no_local: o.no_local,
                    rap: o.retain_as_published,
                    sub_id: s.sub_id,
                },
            );
            let (new, packet) = added;
            let existed = !new;
            indexed |= shared_sub.is_none() && o.qos > 0;
            self.to_router.extend(packet);
            self.subs.set_form(filter, m_domain.as_deref());
            codes.push(o.qos);
            // Retained messages: not for shared subscriptions; Retain Handling 1 only for a
            // new subscription, 2 never.
            if shared_sub.is_none() && (o.retain_handling == 0 || (o.retain_handling == 1 && !existed)) {
                for r in self.shared.retained.matching(filter) {
                    retained.push((r, o.qos, s.sub_id));
                }
            }
        }
        // The router learns of the new filters at once, not at the end of this read (after
        // the retained messages were looked up): a message published on another connection
        // just after this SUBSCRIBE finds them. What this read published before goes first,
        // through the sink first, as at the end of a read.
        self.flush_sink().await;
        self.flush_router(true).await?;
        replies.extend_from_slice(&codec::encode_suback(s.pkid, &codes, v5));
        // Cluster mode: the SUBACK leaves once other nodes' messages are heard on every new
        // filter, so none published after it slips past.
        let hearing = self.subs.take_pending();
        let wait = !hearing.is_empty();
        self.waits.extend(hearing);
        if self.stored || wait {
            // The SUBACK leaves once the subscriptions are committed, and before the retained
            // messages it brings: everything held is waited for here.
            if self.stored {
                self.save_with(None, true);
                if indexed {
                    self.await_settled();
                }
            }
            self.drain_held(live).await?;
        }
        for (r, granted, sub_id) in retained {
            if !self
                .rights
                .allowed(auth.as_ref(), self.identity.as_ref(), Action::Deliver, &r.topic)
                .await
            {
                continue;
            }
            let mut d = Delivery {
                topic: Bytes::copy_from_slice(r.topic.as_bytes()),
                payload: r.payload.clone(),
                props: r.props.clone(),
                qos: r.qos.min(granted),
                retain: true,
                expires_at_ms: r.expires_at_ms,
                sub_ids: sub_id.into_iter().collect(),
                msg: 0,
            };
            if self.stored && d.qos > 0 {
                d.msg = self.own_entry(&d);
            }
            self.enqueue(d, true)?;
        }
        Ok(())
    }
}
