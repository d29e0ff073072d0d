//! The session's jobs, one test each, over in-memory streams against fakes of the ports:
//! takeover, revocation while detached, the offline queue limit, acknowledgements held for
//! the session store's commit, the order of a restored queue, and catch-up from the store.

use crate::durable::{self, Body, State};
use crate::session::SubOptions;
use crate::testkit::*;
use crate::*;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "channels/ok/messages";

/// Waits (bounded, so a hung test fails) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_id_takes_the_session_over() {
    for v5 in [false, true] {
        let (sh, _) = shared(BrokerConfig::default());
        let mut old = Dev::connect(&sh, v5, "same").await;
        let mut new = Dev::connect(&sh, v5, "same").await;
        if v5 {
            assert_eq!(old.packet().await, Some((0xE0, vec![0x8E])), "Session taken over");
        }
        assert!(old.packet().await.is_none(), "the old connection is closed");
        assert_eq!(sh.registry.len(), 1, "one session, v5={v5}");
        assert_eq!(new.subscribe(&[TOPIC]).await, vec![1], "the new one is served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_ends_a_detached_persistent_session() {
    for v5 in [false, true] {
        let (sh, _) = shared(BrokerConfig::default());
        let (mut d, present) = Dev::resume(&sh, v5, "p").await;
        assert!(!present);
        assert_eq!(d.subscribe(&[TOPIC]).await, vec![1]);
        d.disconnect().await;
        until("detached", || {
            sh.metrics.sessions_persistent_offline.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(sh.registry.len(), 1, "the session outlives its connection");
        sh.registry.apply(Revocation::Client {
            domain_id: "d".into(),
            client_id: "dev".into(),
        });
        tokio::time::timeout(Duration::from_secs(20), sh.registry.empty())
            .await
            .expect("the revoked session ends");
        let (_, present) = Dev::resume(&sh, v5, "p").await;
        assert!(!present, "nothing of it is left, v5={v5}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_queue_over_its_limit_keeps_the_newest_messages() {
    let cfg = BrokerConfig {
        max_queued_messages: 3,
        ..Default::default()
    };
    let (sh, _) = shared(cfg);
    let (mut d, _) = Dev::resume(&sh, false, "q").await;
    assert_eq!(d.subscribe(&[TOPIC]).await, vec![1]);
    d.disconnect().await;
    until("detached", || {
        sh.metrics.sessions_persistent_offline.load(Ordering::Relaxed) == 1
    })
    .await;
    let mut p = Dev::connect(&sh, false, "pub").await;
    for i in 1..=5u8 {
        p.publish_payload(TOPIC, 1, false, i as u16, &[i]).await;
        assert_eq!(p.packet().await, Some((0x40, vec![0, i])), "PUBACK {i}");
    }
    until("the fifth queued", || {
        sh.metrics.dropped_queue_full.load(Ordering::Relaxed) == 2
    })
    .await;
    let (mut d, present) = Dev::resume(&sh, false, "q").await;
    assert!(present);
    let mut got = Vec::new();
    for _ in 0..3 {
        let (qos, _, pkid, payload) = d.message().await;
        d.ack(qos, pkid).await;
        got.extend(payload);
    }
    assert_eq!(got, vec![3, 4, 5], "the two oldest were dropped, counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_is_acknowledged_only_after_the_persistent_entry_commits() {
    let (store, sh, mut sub) = stored_subscriber("held-sub").await;
    let mut p = Dev::connect(&sh, true, "held-pub").await;
    store.hold(true);
    p.publish_payload(TOPIC, 1, false, 1, b"a").await;
    p.publish_payload(TOPIC, 1, false, 2, b"b").await;
    // The live subscriber gets them at once; the publisher waits for the commit.
    assert_eq!(sub.message().await.3, b"a");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), p.packet())
            .await
            .is_err(),
        "no PUBACK before the commit"
    );
    store.hold(false);
    assert_eq!(p.packet().await, Some((0x40, vec![0, 1])));
    assert_eq!(p.packet().await, Some((0x40, vec![0, 2])), "in order");
    let written = store.applied.lock().expect("applied").clone();
    let entries = written
        .iter()
        .filter(|op| matches!(op, SessionOp::Message { targets, .. } if targets.len() == 1))
        .count();
    assert!(entries >= 1, "the entries were written: {written:?}");
}

/// A session ending on the device's protocol error still sends the acknowledgements it held
/// for a commit (the messages were accepted), in order, before its DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_acknowledgements_are_sent_before_a_protocol_error_closes() {
    let (store, sh, _sub) = stored_subscriber("pe-sub").await;
    let mut p = Dev::connect(&sh, true, "pe-pub").await;
    store.hold(true);
    p.publish_payload(TOPIC, 1, false, 1, b"a").await;
    use tokio::io::AsyncWriteExt;
    // A packet of the reserved type 0: a protocol error.
    p.io.write_all(&[0x00, 0x00]).await.expect("malformed");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), p.packet())
            .await
            .is_err(),
        "nothing before the commit"
    );
    store.hold(false);
    assert_eq!(p.packet().await, Some((0x40, vec![0, 1])), "the held PUBACK first");
    let (kind, body) = p.packet().await.expect("DISCONNECT");
    assert_eq!(
        (kind, body.first().copied()),
        (0xE0, Some(0x82)),
        "then DISCONNECT 0x82"
    );
    assert!(p.packet().await.is_none(), "then closed");
}

/// One stored delivery of the restored session `key`.
fn entry(key: &str, msg: u64, qos: u8, state: u8, pkid: u16) -> StoredDelivery {
    StoredDelivery {
        session: key.to_string(),
        msg,
        meta: durable::encode_meta(qos, &[]),
        state,
        pkid,
        body: durable::encode_body(&Body {
            topic: Bytes::from_static(TOPIC.as_bytes()),
            props: Bytes::new(),
            retain: false,
            expires_at_ms: 0,
            payload: Bytes::from(vec![msg as u8]),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_queue_is_delivered_in_published_order_with_its_qos2_ids() {
    let (sh, _) = shared(BrokerConfig::default());
    let id = Identity {
        domain_id: "d".into(),
        client_id: "dev".into(),
    };
    let key = registry::session_key(Some(("d", "dev")), "rs");
    let state = State {
        v5: false,
        subs: vec![(
            TOPIC.to_string(),
            SubOptions {
                qos: 2,
                no_local: false,
                rap: false,
                sub_id: None,
            },
        )],
        will: None,
    };
    let rec = durable::record(
        &key,
        Some(&id),
        3600,
        Some(router::now_ms()),
        &state,
        durable::encode_inbound([].iter()),
    );
    // 1 (QoS 1) and 2 (QoS 2, sent as packet id 7) were in flight; 3 and 4 were queued.
    let loaded = SessionsLoaded {
        sessions: vec![rec],
        queued: vec![
            entry(&key, 1, 1, 0, 0),
            entry(&key, 2, 2, durable::SENT, 7),
            entry(&key, 3, 1, 0, 0),
            entry(&key, 4, 2, 0, 0),
        ],
        max_msg: 4,
        dropped: 0,
    };
    session::restore_all(sh.clone(), loaded).await;
    assert_eq!(sh.registry.len(), 1, "restored offline");
    let (mut d, present) = Dev::resume(&sh, false, "rs").await;
    assert!(present, "session present after the restore");
    let mut got = Vec::new();
    for _ in 0..4 {
        let (qos, dup, pkid, payload) = d.message().await;
        got.push((payload[0], qos, dup));
        if payload[0] == 2 {
            assert_eq!(pkid, 7, "a recorded QoS 2 send keeps its packet id");
        }
        d.ack(qos, pkid).await;
    }
    assert_eq!(
        got,
        vec![(1, 1, true), (2, 2, true), (3, 1, false), (4, 2, false)],
        "in flight first (DUP), then the queue, in published order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_is_closed_only_once_its_disconnect_time_is_stored() {
    let (store, _sh, mut d) = stored_subscriber("dt").await;
    store.hold(true);
    use tokio::io::AsyncWriteExt;
    d.io.write_all(&[0xE0, 0]).await.expect("DISCONNECT");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), d.packet())
            .await
            .is_err(),
        "not closed before the commit"
    );
    store.hold(false);
    assert!(d.packet().await.is_none(), "closed after it");
    let applied = store.applied.lock().expect("applied").clone();
    assert!(
        applied
            .iter()
            .any(|op| matches!(op, SessionOp::Put(s) if s.disconnected_at_ms.is_some())),
        "{applied:?}"
    );
}

/// [MQTT-3.3.4-9] Receive Maximum: QoS 2 publishes arriving together in one read count once
/// each, so with a window of 2 the first two are received (two PUBRECs) and the third
/// exceeds it (v5: DISCONNECT 0x93; 3.1.1: closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_counts_qos2_publishes_of_one_read_once() {
    for v5 in [false, true] {
        let cfg = BrokerConfig {
            inflight_window: 2,
            ..BrokerConfig::default()
        };
        let (sh, _) = shared(cfg);
        let mut p = Dev::connect(&sh, v5, "rm").await;
        let mut burst = Vec::new();
        for pkid in 1..=3u16 {
            let mut body = Vec::new();
            s(&mut body, TOPIC);
            body.extend_from_slice(&pkid.to_be_bytes());
            if v5 {
                body.push(0);
            }
            body.push(b'x');
            burst.extend(frame(0x34, &body));
        }
        use tokio::io::AsyncWriteExt;
        p.io.write_all(&burst).await.expect("one write");
        let (mut recs, mut reason) = (0, None);
        while let Some((kind, body)) = p.packet().await {
            match kind >> 4 {
                5 => recs += 1,
                14 => reason = body.first().copied(),
                _ => {}
            }
        }
        assert_eq!(recs, 2, "two PUBRECs, v5={v5}");
        assert_eq!(reason, v5.then_some(0x93));
    }
}

/// A subscriber whose stream accepts nothing more (its 64 KiB pipe is full: the device stopped
/// reading) is disconnected after the stall timeout, counted; the publisher is not held up
/// and another subscriber that reads gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_disconnected_after_the_stall_timeout() {
    let cfg = BrokerConfig {
        stall_timeout: Duration::from_millis(300),
        ..BrokerConfig::default()
    };
    let (sh, _) = shared(cfg);
    let mut deaf = Dev::connect(&sh, false, "deaf").await;
    let mut reads = Dev::connect(&sh, false, "reads").await;
    assert_eq!(deaf.subscribe(&[TOPIC]).await, vec![1]);
    assert_eq!(reads.subscribe(&[TOPIC]).await, vec![1]);
    let mut p = Dev::connect(&sh, false, "pub").await;
    let payload = vec![b'x'; 4096];
    for _ in 0..40 {
        // QoS 0: no acknowledgement is expected; only the deaf one's pipe fills.
        p.publish_payload(TOPIC, 0, false, 0, &payload).await;
        let (qos, _, _, body) = reads.message().await;
        assert_eq!((qos, body.len()), (0, 4096));
    }
    until("the deaf subscriber is disconnected", || {
        sh.metrics.disconnected_stalled.load(Ordering::Relaxed) == 1
    })
    .await;
    p.publish_payload(TOPIC, 0, false, 0, b"after").await;
    assert_eq!(reads.message().await.3, b"after".to_vec(), "the others go on");
}

/// A persistent session subscribed to `TOPIC` at QoS 1 (SUBACK after its commit), over an
/// in-memory session store.
async fn stored_subscriber(id: &str) -> (Arc<MemSessions>, Arc<Shared>, Dev) {
    let store = Arc::new(MemSessions::default());
    let (sh, _) = shared_with(BrokerConfig::default(), None, Some(store.clone()));
    let (mut d, _) = Dev::resume(&sh, false, id).await;
    assert_eq!(d.subscribe(&[TOPIC]).await, vec![1], "SUBACK after its commit");
    (store, sh, d)
}

/// A QoS 1 delivery on `TOPIC` naming store entry `msg`.
fn delivery(msg: u64, payload: Vec<u8>) -> Box<crate::outbound::Delivery> {
    Box::new(crate::outbound::Delivery {
        topic: Bytes::from_static(TOPIC.as_bytes()),
        payload: Bytes::from(payload),
        props: Bytes::new(),
        qos: 1,
        retain: false,
        expires_at_ms: 0,
        sub_ids: Vec::new(),
        msg,
    })
}

/// Cluster mode, [MQTT-3.10.4-2]: a shared subscription's member that unsubscribes while
/// messages it was picked for wait in its queue (its device acknowledges nothing, so its
/// Receive Maximum of 4 holds the rest back) hands them to another member: nothing reaches
/// it after its UNSUBACK but the deliveries already in flight, and the group loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_a_shared_group_hands_what_it_has_not_sent_to_another() {
    let sh = shared_in_cluster(BrokerConfig::default());
    let group = format!("$share/g/{TOPIC}");
    let mut m1 = Dev::connect_v5_window(&sh, "m1", 4).await;
    let mut m2 = Dev::connect(&sh, false, "m2").await;
    assert_eq!(m1.subscribe(&[&group]).await, vec![1]);
    assert_eq!(m2.subscribe(&[&group]).await, vec![1]);
    let key1 = registry::session_key(Some(("d", "dev")), "m1");
    const N: usize = 64;
    for i in 0..N {
        sh.registry.send(
            &key1,
            registry::Control::Shared(delivery(0, vec![i as u8]), group.clone()),
        );
    }
    let mut unsub = vec![0, 7, 0];
    s(&mut unsub, &group);
    use tokio::io::AsyncWriteExt;
    m1.io.write_all(&frame(0xA2, &unsub)).await.expect("UNSUBSCRIBE");
    // Until the UNSUBACK: only what the window let out, none acknowledged yet.
    let mut got = std::collections::HashSet::new();
    let mut in_flight = Vec::new();
    loop {
        let (first, body) = m1.packet().await.expect("a packet");
        if first >> 4 == 11 {
            break;
        }
        assert_eq!(first >> 4, 3, "only PUBLISH before the UNSUBACK");
        let t = u16::from_be_bytes([body[0], body[1]]) as usize;
        in_flight.push(u16::from_be_bytes([body[2 + t], body[3 + t]]));
        // 5.0 layout: an empty property block (one byte) before the payload.
        assert_eq!(body[4 + t], 0, "no properties");
        got.insert(body[5 + t]);
    }
    assert!(
        in_flight.len() <= 4,
        "the window held the rest back ({})",
        in_flight.len()
    );
    for pkid in in_flight {
        m1.ack(1, pkid).await;
    }
    while got.len() < N {
        let (qos, _, pkid, payload) = m2.message().await;
        assert!(got.insert(payload[0]), "each message once");
        m2.ack(qos, pkid).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), m1.packet())
            .await
            .is_err(),
        "nothing for m1 after its UNSUBACK"
    );
}

/// Catch-up (`recover`): a persistent session reads its stored queue again and delivers what
/// it does not hold; a late live copy of a recovered entry is dropped; acknowledged entries
/// are not read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_delivers_missed_entries_once() {
    let (store, sh, mut d) = stored_subscriber("cu").await;
    let key = registry::session_key(Some(("d", "dev")), "cu");
    store
        .queue
        .lock()
        .expect("queue")
        .extend([entry(&key, 1, 1, 0, 0), entry(&key, 2, 1, 0, 0)]);
    sh.registry.send_all(|| registry::Control::CatchUp);
    for want in [1u8, 2] {
        let (qos, _, pkid, payload) = d.message().await;
        assert_eq!((qos, payload), (1, vec![want]), "entry {want} from the store");
        d.ack(qos, pkid).await;
    }
    // The live copy of entry 1 comes after all: dropped. Entry 3's is delivered.
    let live = |msg: u64| delivery(msg, vec![msg as u8]);
    sh.registry.send(&key, registry::Control::Deliver(live(1)));
    sh.registry.send(&key, registry::Control::Deliver(live(3)));
    let (qos, _, pkid, payload) = d.message().await;
    assert_eq!(payload, vec![3], "the late copy of 1 was dropped");
    d.ack(qos, pkid).await;
    // Another catch-up: 1 and 2 were acknowledged (gone from the store), 4 is new.
    store.queue.lock().expect("queue").push(entry(&key, 4, 1, 0, 0));
    sh.registry.send_all(|| registry::Control::CatchUp);
    let (_, _, _, payload) = d.message().await;
    assert_eq!(payload, vec![4], "only what the session did not have");
    assert_eq!(sh.metrics.entries_recovered.load(Ordering::Relaxed), 3);
}

/// Catch-up (`recover`): one asked for while a read runs is not lost. The running read may
/// predate the entries of the newer gap, so another read follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_asked_for_during_a_read_gets_a_read_of_its_own() {
    let (store, sh, mut d) = stored_subscriber("cu2").await;
    let key = registry::session_key(Some(("d", "dev")), "cu2");
    // The session store's writer is held inside a write (the acknowledgement below): the
    // first read waits behind it, at its barrier.
    store.hold(true);
    sh.registry.send(&key, registry::Control::Deliver(delivery(1, vec![1])));
    let (qos, _, pkid, _) = d.message().await;
    d.ack(qos, pkid).await;
    d.ping().await; // the PUBACK was taken
    sh.registry.send(&key, registry::Control::CatchUp);
    sh.registry.send(&key, registry::Control::CatchUp);
    d.ping().await; // both were taken
    store.hold(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.reads.load(Ordering::Relaxed) < 2 {
        assert!(std::time::Instant::now() < deadline, "a second read followed the first");
        tokio::task::yield_now().await;
    }
}
