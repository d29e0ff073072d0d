use super::*;

/// Recreates the persistent sessions found in the store, each with its subscriptions, queue,
/// in-flight QoS state and pending will, offline and without a router link until a device
/// attaches (meanwhile its messages come directly from their publishers, see `durable`);
/// expired ones are removed with their queues. In cluster mode each reads its stored queue
/// again once this node hears its scopes. Returns once every restored session is
/// registered and indexed.
pub(crate) async fn restore_all(shared: Arc<Shared>, loaded: SessionsLoaded) {
    let started = std::time::Instant::now();
    let now = router::now_ms();
    let mut queued: HashMap<String, Vec<crate::StoredDelivery>> = HashMap::new();
    for q in loaded.queued {
        queued.entry(q.session.clone()).or_default().push(q);
    }
    let (mut restored, mut expired) = (0u64, 0u64);
    for rec in loaded.sessions {
        let since = rec.disconnected_at_ms.unwrap_or(now);
        let ends_at = since.saturating_add(rec.expiry_s as u64 * 1000);
        let state = durable::decode_state(rec.state.clone());
        let Some(state) = state.filter(|_| ends_at > now && rec.expiry_s > 0) else {
            expired += 1;
            shared.durable.write(SessionOp::Delete(rec.key.clone()));
            continue;
        };
        let Some((gen, ctrl)) = shared.registry.register(&rec.key, rec.owner.as_ref()) else {
            continue;
        };
        let mut s = Session::new(shared.clone(), rec.key.clone(), gen, ctrl, rec.owner.clone());
        s.started = true;
        s.stored = true;
        s.v5 = state.v5;
        s.expiry = rec.expiry_s;
        s.offline_until = Some(Instant::now() + Duration::from_millis(ends_at - now));
        s.in_qos2 = durable::decode_inbound(rec.inbound.clone()).into_iter().collect();
        let domain = rec.owner.as_ref().map(|o| o.domain_id.as_str());
        s.subs = Subscriptions::restored(state.subs, shared.interest.clone(), &rec.key, domain)
            .with_reader(crate::pressure::Reader::new(shared.pressure.clone(), s.origin));
        if let Some((w, due)) = state.will {
            // A will whose connection was live when the process stopped is due after its
            // delay from now; one that was waiting keeps its time.
            let at = if due == 0 {
                Instant::now() + Duration::from_secs(w.delay.min(rec.expiry_s) as u64)
            } else {
                Instant::now() + Duration::from_millis(due.saturating_sub(now))
            };
            s.pending_will = Some((w, at));
        }
        let mut entries = Vec::new();
        for q in queued.remove(&rec.key).unwrap_or_default() {
            let Some(mut d) = durable::delivery(&q) else {
                shared.durable.write(SessionOp::Ack {
                    key: rec.key.clone(),
                    msg: q.msg,
                });
                continue;
            };
            if let Some(t) = s.subs.shown(&d.topic) {
                d.topic = t;
            }
            shared.durable.add_bytes(d.size() as u64);
            entries.push((q.state, q.pkid, d));
        }
        s.out.restore(entries);
        s.index_subscriptions();
        // Cluster mode: what other nodes publish reaches this session once this node hears
        // its scopes and it is indexed here; what they queued for it before (entries written
        // while it was being moved here or this node started, whose live copies went
        // nowhere) is read from the store then (see `recover`).
        let hearing = s.subs.take_pending();
        if shared.cluster.is_some() {
            let (sh, key) = (shared.clone(), rec.key.clone());
            shared.rt.spawn(async move {
                for h in hearing {
                    let _ = h.await;
                }
                sh.registry.send_gen(&key, gen, Control::CatchUp);
            });
        }
        // No router link until a device attaches (building 10,000 links is what would make
        // a restart slow): its publishers hand its messages over directly.
        s.direct = true;
        s.shared.durable.set_direct(&s.key, true);
        restored += 1;
        let _ = s.sync_out().await;
        let rt = s.shared.rt.clone();
        rt.spawn(s.run(None));
    }
    shared.metrics.sessions_restored.fetch_add(restored, Ordering::Relaxed);
    shared.metrics.sessions_expired.fetch_add(expired, Ordering::Relaxed);
    if restored + expired > 0 || loaded.dropped > 0 {
        tracing::info!(
            restored,
            expired,
            revoked = loaded.dropped,
            ms = started.elapsed().as_millis() as u64,
            "persistent sessions restored from the store"
        );
    }
}
