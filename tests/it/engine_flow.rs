//! The MQTT engine (issue #12), continued: flow control, keep alive, wills with delay, shared
//! subscriptions, message expiry, revocation under load and connection-time memory, at both
//! protocol levels where the statement exists at both.

use crate::engine::{env, env_with, exchange, wait_until};
use crate::raw::{connack_u16, framed, props, put_str, Connect, Raw};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// [MQTT-3.2.2-21]/[MQTT-3.1.2-24]: the server's keep alive is announced (v5) and enforced
/// (1.5×); a 3.1.1 client asking for more than the server grants is refused.
#[tokio::test]
async fn server_keep_alive_is_announced_and_enforced() {
    let e = env_with(|c| c.mqtt.max_keep_alive = 1).await;
    // v5 asking for 60 s (or for none) is told 1 s.
    for asked in [60, 0] {
        let mut c = e.conn(true, "ka-v5");
        c.keep_alive = asked;
        let (mut r, body) = Raw::connack(e.app.mqtt_addr, &c).await;
        assert_eq!(body[1], 0, "accepted");
        assert_eq!(connack_u16(&body, 0x13), Some(1), "Server Keep Alive");
        // No PINGREQ: closed after 1.5 × 1 s with DISCONNECT 0x8D.
        assert_eq!(r.closed().await, Some(0x8D));
    }
    // Asking for what the server grants: no Server Keep Alive, PINGREQ keeps it open.
    let mut c = e.conn(true, "ka-v5-ok");
    c.keep_alive = 1;
    let (mut r, body) = Raw::connack(e.app.mqtt_addr, &c).await;
    assert_eq!(connack_u16(&body, 0x13), None);
    r.send(&[0xC0, 0]).await;
    assert_eq!(r.packet().await.map(|p| p.0), Some(0xD0), "PINGRESP");
    // 3.1.1: more than the maximum is refused (identifier rejected), within it accepted.
    let mut c = e.conn(false, "ka-v4");
    c.keep_alive = 60;
    let (_, code, _) = Raw::connect(e.app.mqtt_addr, &c).await;
    assert_eq!(code, 0x02);
    c.keep_alive = 1;
    let mut r = Raw::ok(e.app.mqtt_addr, &c).await;
    assert_eq!(r.closed().await, None, "closed after 1.5 s without traffic");
}

/// [MQTT-3.3.4-7]/[MQTT-3.3.4-9]: the server never has more unacknowledged QoS 1/2
/// deliveries towards a client than its Receive Maximum; a client sending more than the
/// server's is disconnected with 0x93 (3.1.1: closed).
#[tokio::test]
async fn receive_maximum_both_ways() {
    let e = env_with(|c| c.mqtt.inflight_window = 2).await;
    let t = e.topic("rm");
    // Outbound: a v5 client with Receive Maximum 2.
    let mut c = e.conn(true, "rm-sub");
    c.props = props::receive_max(2);
    let mut sub = Raw::ok(e.app.mqtt_addr, &c).await;
    sub.subscribe(1, &[(&t, 1)], &[]).await;
    let mut p = e.raw(true, "rm-pub").await;
    for i in 1..=5u16 {
        p.publish(&t, format!("m{i}").as_bytes(), 1, false, i).await;
    }
    let mut held = Vec::new();
    while held.len() < 2 {
        let (first, body) = sub.packet().await.expect("delivery");
        if first >> 4 == 3 {
            held.push(sub.decode_publish(first, &body));
        }
    }
    assert!(
        sub.no_message_within(Duration::from_millis(300)).await,
        "no third in flight"
    );
    // One PUBACK frees one slot: exactly one more arrives.
    sub.send(&framed(0x40, &held[0].pkid.to_be_bytes())).await;
    let (first, body) = sub.packet().await.expect("delivery");
    assert_eq!(sub.decode_publish(first, &body).payload, b"m3".to_vec());
    assert!(sub.no_message_within(Duration::from_millis(300)).await);

    // Inbound: QoS 2 publishes whose PUBREL never comes count against the server's 2.
    for v5 in [false, true] {
        let mut q = e.raw(v5, &format!("rm-flood-{v5}")).await;
        for pkid in 1..=3u16 {
            q.publish_with(&t, b"x", 2, false, pkid, &[]).await;
        }
        let (mut recs, mut reason) = (0, None);
        while let Some((first, body)) = q.packet().await {
            match first >> 4 {
                5 => recs += 1,
                14 => reason = body.first().copied(),
                _ => {}
            }
        }
        assert_eq!(recs, 2, "two PUBRECs, then the connection ends");
        assert_eq!(reason, v5.then_some(0x93));
    }
}

/// [MQTT-3.1.2-24]/[MQTT-3.2.2-15]: nothing larger than the client's Maximum Packet Size is
/// sent to it (the message is dropped for that client only); a packet larger than the
/// server's is a protocol error (v5 DISCONNECT 0x95).
#[tokio::test]
async fn maximum_packet_size_both_ways() {
    let e = env_with(|c| c.mqtt.max_packet_size = 2048).await;
    let t = e.topic("mps");
    let mut c = e.conn(true, "mps-small");
    c.props = props::max_packet(200);
    let (mut small, body) = Raw::connack(e.app.mqtt_addr, &c).await;
    assert_eq!(body[1], 0);
    small.subscribe(1, &[(&t, 1)], &[]).await;
    let mut big = e.raw(false, "mps-big").await;
    big.subscribe(1, &[(&t, 1)], &[]).await;
    let mut p = e.raw(true, "mps-pub").await;
    p.publish(&t, &[b'x'; 500], 1, false, 1).await;
    p.publish(&t, b"small", 1, false, 2).await;
    assert_eq!(big.message().await.payload.len(), 500, "others still get it");
    assert_eq!(big.message().await.payload, b"small".to_vec());
    assert_eq!(
        small.message().await.payload,
        b"small".to_vec(),
        "the large one was skipped"
    );
    assert!(e.app.broker_metrics.dropped_too_large.load(Ordering::Relaxed) >= 1);
    for v5 in [false, true] {
        let mut q = e.raw(v5, &format!("mps-over-{v5}")).await;
        q.publish_with(&t, &[b'y'; 4000], 1, false, 1, &[]).await;
        assert_eq!(q.closed().await, v5.then_some(0x95));
    }
    exchange(&e, "after-mps").await;
}

/// [MQTT-3.1.3-9]: a will is delayed by its Will Delay Interval or until the session ends,
/// whichever comes first; a reconnect within the delay cancels it.
#[tokio::test]
async fn will_delay_fires_late_and_a_reconnect_cancels_it() {
    let e = env().await;
    let wt = e.topic("will-delay");
    let mut watcher = e.raw(false, "wd-watcher").await;
    watcher.subscribe(1, &[(&wt, 1)], &[]).await;

    // Delay 1 s inside a 60 s session: published, not before the delay.
    let mut c = e.conn(true, "wd-1");
    c.props = props::session_expiry(60);
    c.will = Some((&wt, b"late", 1, false, props::will_delay(1)));
    let w = Raw::ok(e.app.mqtt_addr, &c).await;
    let dropped = Instant::now();
    drop(w);
    assert_eq!(watcher.message().await.payload, b"late".to_vec());
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "{:?}",
        dropped.elapsed()
    );

    // Delay 60 s, but the session ends with the connection (expiry 0): published at once.
    let mut c = e.conn(true, "wd-2");
    c.will = Some((&wt, b"session ended", 1, false, props::will_delay(60)));
    drop(Raw::ok(e.app.mqtt_addr, &c).await);
    assert_eq!(watcher.message().await.payload, b"session ended".to_vec());

    // Delay 60 s in a 120 s session, and the client comes back: never published.
    let mut c = e.conn(true, "wd-3");
    c.clean = false;
    c.props = props::session_expiry(120);
    c.will = Some((&wt, b"cancelled", 1, false, props::will_delay(60)));
    drop(Raw::ok(e.app.mqtt_addr, &c).await);
    wait_until(|| e.app.broker_metrics.sessions_persistent_offline.load(Ordering::Relaxed) >= 1).await;
    c.will = None;
    let (mut back, code, present) = Raw::connect(e.app.mqtt_addr, &c).await;
    assert_eq!((code, present), (0, true));
    back.disconnect().await;
    let mut p = e.raw(false, "wd-marker").await;
    p.publish(&wt, b"marker", 1, false, 1).await;
    assert_eq!(
        watcher.message().await.payload,
        b"marker".to_vec(),
        "no will before the marker"
    );
}

/// [MQTT-4.8.2-2]: each message of a shared subscription goes to one member of the group;
/// every group (and every ordinary subscription) gets its own copy. Both levels may join.
#[tokio::test]
async fn shared_subscriptions_deliver_each_message_once_per_group() {
    let e = env().await;
    let t = e.topic("shared");
    let g = format!("$share/workers/{t}");
    let mut a = e.raw(true, "share-a").await;
    let mut b = e.raw(false, "share-b").await;
    assert_eq!(a.subscribe(1, &[(&g, 1)], &[]).await, vec![1]);
    assert_eq!(b.subscribe(1, &[(&g, 1)], &[]).await, vec![1]);
    let mut solo = e.raw(true, "share-solo").await;
    assert_eq!(
        solo.subscribe(1, &[(&format!("$share/audit/{t}"), 1)], &[]).await,
        vec![1]
    );
    let mut plain = e.raw(false, "share-plain").await;
    plain.subscribe(1, &[(&t, 1)], &[]).await;
    let mut p = e.raw(true, "share-pub").await;
    let n = 20u16;
    for i in 1..=n {
        p.publish(&t, format!("{i}").as_bytes(), 1, false, i).await;
    }
    let (mut got, mut per) = (Vec::new(), [0usize; 2]);
    while got.len() < n as usize {
        tokio::select! {
            m = a.message() => { got.push(m.payload); per[0] += 1; }
            m = b.message() => { got.push(m.payload); per[1] += 1; }
        }
    }
    let distinct: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(distinct.len(), n as usize, "each message once within the group");
    assert!(per[0] > 0 && per[1] > 0, "both members served: {per:?}");
    for _ in 0..n {
        solo.message().await;
        plain.message().await;
    }
    assert!(a.no_message_within(Duration::from_millis(200)).await);
    assert!(b.no_message_within(Duration::from_millis(200)).await);
}

/// [MQTT-3.3.2-5]/[MQTT-3.3.2-6]: a queued message whose expiry passed is not delivered; a
/// delivered one carries the remaining interval. Other v5 properties pass through unchanged.
#[tokio::test]
async fn message_expiry_and_v5_properties_pass_through() {
    let e = env().await;
    let t = e.topic("expiry");
    let mut c = e.conn(true, "exp-sub");
    c.clean = false;
    c.props = props::session_expiry(600);
    let mut s = Raw::ok(e.app.mqtt_addr, &c).await;
    s.subscribe(1, &[(&t, 1)], &[]).await;
    s.disconnect().await;
    wait_until(|| e.app.broker_metrics.sessions_persistent_offline.load(Ordering::Relaxed) >= 1).await;
    let mut p = e.raw(true, "exp-pub").await;
    p.publish_with(&t, b"short", 1, false, 1, &props::expiry(1)).await;
    let mut pr = props::expiry(300);
    pr.extend(props::correlation(b"corr-1"));
    pr.extend(props::response_topic(&e.topic("reply")));
    pr.extend(props::payload_format(true));
    pr.extend(props::user("k", "v"));
    p.publish_with(&t, b"long", 1, false, 2, &pr).await;
    // Both acknowledged before time passes.
    let mut acks = 0;
    while acks < 2 {
        let (first, _) = p.packet().await.expect("PUBACK");
        acks += usize::from(first >> 4 == 4);
    }
    let expired = e.app.broker_metrics.dropped_expired.load(Ordering::Relaxed);
    // The passing of time is what is under test here.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.clean = false;
    let (mut back, code, present) = Raw::connect(e.app.mqtt_addr, &c).await;
    assert_eq!((code, present), (0, true));
    let m = back.message().await;
    assert_eq!(m.payload, b"long".to_vec(), "the expired one was not delivered");
    let left = u32::from_be_bytes(m.prop(0x02).expect("expiry").try_into().expect("u32"));
    assert!(
        (1..=298).contains(&left),
        "remaining interval, not the original: {left}"
    );
    let mut corr = Vec::new();
    put_str(&mut corr, b"corr-1");
    assert_eq!(m.prop(0x09), Some(corr));
    assert!(m.prop(0x08).is_some() && m.prop(0x01) == Some(vec![1]) && m.prop(0x26).is_some());
    assert!(e.app.broker_metrics.dropped_expired.load(Ordering::Relaxed) > expired);
    assert!(back.no_message_within(Duration::from_millis(200)).await);
}

/// Revocation under QoS 1 load: once the REST call that removes a subscriber's right has
/// answered, deliveries to it stop within a second; its connection stays open (the router
/// never closes a session on its own) and the publisher is not slowed.
#[tokio::test]
async fn revocation_under_qos1_load_stops_delivery_within_a_second() {
    let e = env().await;
    let t = e.topic("load");
    let (c2, s2) = e.app.device(&e.t, &e.d).await;
    e.app.connect(&e.t, &e.d, &c2, &e.h, &["subscribe"]).await;
    for v5 in [false, true] {
        let mut sub = Raw::ok(e.app.mqtt_addr, &Connect::new(v5, "load-sub", &c2, &s2)).await;
        sub.subscribe(1, &[(&t, 1)], &[]).await;
        let mut p = e.raw(v5, "load-pub").await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, sent2, t2) = (stop.clone(), sent.clone(), t.clone());
        let publisher = tokio::spawn(async move {
            let mut i = 0u16;
            while !stop2.load(Ordering::Relaxed) {
                i = i % 60_000 + 1;
                assert_eq!(p.publish(&t2, b"load", 1, false, i).await, 0);
                sent2.fetch_add(1, Ordering::Relaxed);
            }
        });
        for _ in 0..500 {
            sub.message().await;
        }
        let (st, _) = e
            .app
            .post(
                &format!("/{}/channels/disconnect", e.d),
                Some(&e.t),
                serde_json::json!({"client_ids": [c2], "channel_ids": [e.h], "types": ["subscribe"]}),
            )
            .await;
        assert_eq!(st, 204);
        let revoked = Instant::now();
        let sent_at_revoke = sent.load(Ordering::Relaxed);
        // Read until deliveries have been quiet for 2 s; the last one came within 1 s.
        let mut last = None;
        while !sub.no_message_within(Duration::from_secs(2)).await {
            last = Some(revoked.elapsed());
        }
        if let Some(l) = last {
            assert!(l < Duration::from_secs(1), "delivered {l:?} after revocation");
        }
        assert!(
            sent.load(Ordering::Relaxed) > sent_at_revoke + 100,
            "publisher kept going"
        );
        // Still connected: PINGREQ answered.
        sub.send(&[0xC0, 0]).await;
        assert_eq!(sub.packet().await.map(|p| p.0), Some(0xD0), "v5={v5}");
        stop.store(true, Ordering::Relaxed);
        publisher.await.expect("publisher");
        e.app.connect(&e.t, &e.d, &c2, &e.h, &["subscribe"]).await;
    }
}

/// Resident memory of the server (its own process) stays near its level after 2,000
/// connections each sent a CONNECT header announcing 60 KB and a little of it, then left.
#[tokio::test]
async fn half_sent_connects_leave_resident_memory_near_where_it_was() {
    let server = crate::child::ChildServer::start(&[("FLUXGATE_MQTT_MAX_PENDING_CONNECTIONS", "4096")]).await;
    let before = server.rss_kib();
    let mut held = Vec::new();
    for _ in 0..2000 {
        let mut r = Raw::open(server.mqtt, false).await;
        let mut start = vec![0x10];
        crate::raw::put_varint(&mut start, 60_000);
        start.extend_from_slice(&[0u8; 1000]);
        r.send(&start).await;
        held.push(r);
    }
    // Every connection's 1,000 bytes reached the server (it answers the next connection).
    let during = server.rss_kib();
    drop(held);
    server.healthy().await;
    let after = server.rss_kib();
    eprintln!("RSS KiB: before {before}, with 2,000 half-sent CONNECTs {during}, after {after}");
    assert!(during < before + 200 * 1024, "held {} KiB", during - before);
    assert!(after < before + 64 * 1024, "kept {} KiB", after.saturating_sub(before));
}

/// Connects and disconnects `n` clean sessions with fresh client ids (16 at a time, both
/// protocol levels), each answered CONNACK 0.
async fn fresh_ids(s: &crate::child::ChildServer, f: &crate::durable::Fleet, prefix: &str, n: usize) {
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (addr, user, pass, prefix) = (s.mqtt, f.publisher.0.clone(), f.publisher.1.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(16) {
                let id = format!("{prefix}-{i}");
                let (mut r, code, _) = Raw::connect(addr, &Connect::new(i % 2 == 0, &id, &user, &pass)).await;
                assert_eq!(code, 0, "CONNACK for {id}");
                r.disconnect().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("connect task");
    }
}

/// Memory is bounded by the sessions that exist, not by the client ids ever seen: 100,000
/// clean sessions with fresh client ids come and go, and the server's resident memory ends
/// within 10 MB of where it was (the router used to keep an entry per id ever seen).
#[tokio::test]
async fn fresh_client_ids_leave_resident_memory_where_it_was() {
    let s = crate::child::ChildServer::start(&[]).await;
    let f = crate::durable::Fleet::provision(&s).await;
    // Warm-up: the allocator's and the runtime's steady state for 16 connections at a time,
    // and the store's connection pool grown to its size (on PostgreSQL each pooled connection
    // holds a client with its own buffers: a fixed cost, not one per id). On PostgreSQL under
    // the whole suite's load, 20,000 ids left the steady state unreached (+9 to +11 MB after,
    // against +5.5 to +6.7 MB alone); a leak per id would still show in what follows.
    fresh_ids(&s, &f, "warm", 60_000).await;
    s.healthy().await;
    let before = s.rss_kib();
    fresh_ids(&s, &f, "fresh", 100_000).await;
    s.healthy().await;
    // Every connection's end is written (the presence writer has caught up).
    let client = format!("/{}/clients/{}", f.domain, f.publisher.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (st, v) = crate::durable::call(
            s.http,
            reqwest::Method::GET,
            &client,
            Some(&f.token),
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        if v["connected"] == false {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "presence caught up: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = s.rss_kib();
    eprintln!("RSS KiB: before {before}, after 100,000 fresh client ids {after}");
    assert!(
        after < before + 10 * 1024,
        "resident memory grew {} KiB",
        after.saturating_sub(before)
    );
}
