//! Cluster mode, part two (#28): persistent sessions follow their device to any node. Real
//! `fluxgate serve` nodes on one PostgreSQL database and one nats-server, both started by
//! the test.

use crate::child::ChildServer;
use crate::cluster_env::{counter, node_id, until_counter, ClusterEnv, Site};
use crate::raw::{props, Connect, Raw};
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A persistent (v5, session expiry 1 h) connection of device 0 with client id `id`.
fn persistent<'a>(site: &'a Site, id: &'a str) -> Connect<'a> {
    let mut c = site.connect(true, id, 0);
    c.clean = false;
    c.props = props::session_expiry(3600);
    c
}

/// A v5 SUBSCRIBE body (packet id 9, no properties) for `filter` at QoS 1.
fn subscribe_body(filter: &str) -> Vec<u8> {
    let mut b = vec![0, 9, 0];
    crate::raw::put_str(&mut b, filter.as_bytes());
    b.push(1);
    b
}

/// Sends a signal (`-STOP`, `-CONT`) to a node's process.
fn signal(n: &ChildServer, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &n.pid().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig}");
}

/// One number from the cluster's database.
async fn scalar(env: &ClusterEnv, sql: &str, arg: &str) -> i64 {
    let (url, sql, arg) = (env.db.url().to_string(), sql.to_string(), arg.to_string());
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        c.query_one(&sql, &[&arg]).expect("query").get::<_, i64>(0)
    })
    .await
    .expect("query")
}

/// Test 1: a persistent session on node 1 with 1,000 messages queued while its device is
/// away (500 at QoS 1, then 500 at QoS 2); the device connects to node 2: session present,
/// all 1,000 in order, each once; node 1 holds nothing for it afterwards. Back on node 1,
/// the session moves back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_and_its_queue_follow_the_device_to_another_node() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2) = tokio::join!(env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let c = persistent(&site, "mover");
    let (mut d, code, present) = Raw::connect(n1.mqtt, &c).await;
    assert_eq!((code, present), (0, false));
    assert_eq!(d.subscribe(1, &[(site.all().as_str(), 2)], &[]).await, vec![2]);
    d.disconnect_and_wait().await;

    let topic = site.topic("queued");
    let mut p = Raw::ok(n1.mqtt, &site.connect(true, "pub", 1)).await;
    const N: usize = 1_000;
    for i in 0..N {
        let qos = if i < N / 2 { 1 } else { 2 };
        let code = p
            .publish(&topic, format!("m{i}").as_bytes(), qos, false, i as u16 + 1)
            .await;
        assert_eq!(code, 0, "message {i} acknowledged");
    }

    let (mut d, code, present) = Raw::connect(n2.mqtt, &c).await;
    assert_eq!((code, present), (0, true), "the session is present on node 2");
    for i in 0..N {
        let m = d.message().await;
        let want = (format!("m{i}").into_bytes(), if i < N / 2 { 1 } else { 2 });
        assert_eq!((m.payload, m.qos), want, "message {i}, in order");
    }
    assert!(
        d.no_message_within(Duration::from_millis(500)).await,
        "each message once"
    );
    assert_eq!(counter(&n2, "fluxgate_cluster_sessions_adopted_total").await, 1);
    // Node 1 learnt of the move and ended its copy; the store has nothing of it for node 1.
    until_counter(&n1, "fluxgate_cluster_sessions_taken_over_total", 1).await;
    let n1_id = node_id(&n1);
    for table in ["session_records", "session_queue"] {
        let sql = format!("SELECT count(*) FROM {table} WHERE node_id = $1");
        assert_eq!(scalar(&env, &sql, &n1_id).await, 0, "{table} of node 1");
    }
    d.disconnect_and_wait().await;

    let (mut d, code, present) = Raw::connect(n1.mqtt, &c).await;
    assert_eq!((code, present), (0, true), "and back to node 1");
    assert_eq!(p.publish(&topic, b"back", 1, false, 1).await, 0);
    assert_eq!(d.message().await.payload, b"back", "its subscription came along");
}

/// Test 3: node 1 is paused (SIGSTOP) with the device connected; the device moves to node 2
/// (session present) and gets messages there; node 1 resumes (SIGCONT): it ends its copy,
/// its late writes are refused, and the session on node 2 is intact (what was queued while
/// the device was away arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_cannot_overwrite_a_session_that_moved_while_it_slept() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let c = persistent(&site, "sleeper");
    let topic = site.topic("sleep");
    let (mut old, code, _) = Raw::connect(n1.mqtt, &c).await;
    assert_eq!(code, 0);
    assert_eq!(old.subscribe(1, &[(site.all().as_str(), 1)], &[]).await, vec![1]);

    signal(&n1, "-STOP");
    let (mut d, code, present) = Raw::connect(n2.mqtt, &c).await;
    assert_eq!((code, present), (0, true), "adopted from a node that sleeps");
    // While node 1 sleeps, the device's old connection asks for one more subscription: node
    // 1 reads it when it wakes and writes it to the session it held, unless it learns of the
    // move first.
    let extra = site.topic("extra");
    old.send(&crate::raw::framed(0x82, &subscribe_body(&extra))).await;
    let mut p = Raw::ok(n3.mqtt, &site.connect(true, "pub3", 1)).await;
    assert_eq!(p.publish(&topic, b"asleep", 1, false, 1).await, 0);
    assert_eq!(d.message().await.payload, b"asleep");

    signal(&n1, "-CONT");
    match old.packet().await {
        // The SUBACK leaves after the session's record was written: that write was refused.
        Some((first, _)) if first >> 4 == 9 => {
            until_counter(&n1, "fluxgate_store_session_writes_fenced_total", 1).await;
            assert_eq!(old.closed().await, Some(0x8E), "then node 1 ends it: taken over");
        }
        // Node 1 learnt of the move first: it ended the session without writing.
        Some((first, body)) if first >> 4 == 14 => assert_eq!(body.first(), Some(&0x8E)),
        other => panic!("node 1 answered {other:?}"),
    }
    until_counter(&n1, "fluxgate_cluster_sessions_taken_over_total", 1).await;
    d.disconnect_and_wait().await;
    for i in 0..5u16 {
        assert_eq!(p.publish(&topic, format!("q{i}").as_bytes(), 1, false, i + 2).await, 0);
    }
    let (mut d, code, present) = Raw::connect(n2.mqtt, &c).await;
    assert_eq!((code, present), (0, true), "node 2's session is intact");
    for i in 0..5 {
        assert_eq!(d.message().await.payload, format!("q{i}").into_bytes());
    }
    let sql = "SELECT count(*) FROM session_records WHERE node_id = $1";
    assert_eq!(scalar(&env, sql, &node_id(&n2)).await, 1, "node 2 holds it");
    assert_eq!(scalar(&env, sql, &node_id(&n1)).await, 0, "node 1 holds nothing");
}

/// Test 5: the device's right to receive from the channel is removed (on node 3) while its
/// session waits offline on node 1 with messages queued: on node 2 it gets none of them.
/// With the right back, it receives again; removed once more while it is offline on node 2,
/// nothing from the channel reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_session_gets_nothing_from_a_channel_it_lost_the_right_to() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let c = persistent(&site, "revoked");
    let topic = site.topic("secret");
    let (mut d, _, _) = Raw::connect(n1.mqtt, &c).await;
    assert_eq!(d.subscribe(1, &[(site.all().as_str(), 1)], &[]).await, vec![1]);
    d.disconnect_and_wait().await;
    let mut p = Raw::ok(n1.mqtt, &site.connect(true, "pub1", 1)).await;
    for i in 0..3u16 {
        assert_eq!(p.publish(&topic, b"queued", 1, false, i + 1).await, 0);
    }
    let dev = site.devices[0].0.clone();
    let body = json!({"client_ids": [dev], "channel_ids": [site.channel], "types": ["subscribe"]});
    let (s, v) = site
        .call(
            &n3,
            Method::POST,
            &format!("/{}/channels/disconnect", site.domain),
            body.clone(),
        )
        .await;
    assert!(s < 300, "disconnect: {s} {v}");
    let (mut d, code, present) = Raw::connect(n2.mqtt, &c).await;
    assert_eq!((code, present), (0, true));
    assert!(
        d.no_message_within(Duration::from_millis(700)).await,
        "nothing queued before the revocation is delivered"
    );

    let (s, v) = site
        .call(
            &n3,
            Method::POST,
            &format!("/{}/channels/connect", site.domain),
            body.clone(),
        )
        .await;
    assert!(s < 300, "connect: {s} {v}");
    // The right is back within a second (revocations reach every node within one).
    let t = Instant::now();
    let mut pkid = 10u16;
    loop {
        pkid += 1;
        assert_eq!(p.publish(&topic, b"allowed", 1, false, pkid).await, 0);
        if !d.no_message_within(Duration::from_millis(200)).await {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the right came back");
    }
    d.disconnect_and_wait().await;
    const APPLIED: &str = "fluxgate_mqtt_revocations_applied_total";
    let (b1, b2) = (counter(&n1, APPLIED).await, counter(&n2, APPLIED).await);
    let (s, v) = site
        .call(
            &n3,
            Method::POST,
            &format!("/{}/channels/disconnect", site.domain),
            body,
        )
        .await;
    assert!(s < 300, "disconnect: {s} {v}");
    // Published once the revocation reached node 1 and node 2.
    until_counter(&n1, APPLIED, b1 + 1).await;
    until_counter(&n2, APPLIED, b2 + 1).await;
    for i in 0..3u16 {
        assert_eq!(p.publish(&topic, b"after", 1, false, 100 + i).await, 0);
    }
    let (mut d, code, present) = Raw::connect(n2.mqtt, &c).await;
    assert_eq!((code, present), (0, true));
    loop {
        match d.packet_within(Duration::from_millis(700)).await {
            Err(()) => break,
            Ok(Some((first, body))) if first >> 4 == 3 => {
                let m = d.decode_publish(first, &body);
                assert_ne!(m.payload, b"after", "nothing after the second revocation");
                // An "allowed" message still in flight from before may come again (QoS 1).
                assert_eq!(m.payload, b"allowed");
                d.send(&crate::raw::framed(0x40, &m.pkid.to_be_bytes())).await;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("closed"),
        }
    }
}

/// Publishes `n` messages (`<tag>-<i>`) at `qos` (1 or 2) on `topic` through `addr`, 20 in
/// flight; returns the payloads acknowledged (PUBACK, or PUBREC at QoS 2).
async fn publish_acked(
    addr: std::net::SocketAddr,
    c: Connect<'_>,
    topic: &str,
    tag: &str,
    n: usize,
    qos: u8,
    (stop, acks): (Arc<AtomicBool>, Arc<AtomicUsize>),
) -> Vec<Vec<u8>> {
    const WINDOW: usize = 20;
    let mut p = Raw::ok(addr, &c).await;
    let mut in_flight = std::collections::HashMap::new();
    let mut acked = Vec::new();
    let mut i = 0;
    while i < n || !in_flight.is_empty() {
        while i < n && in_flight.len() < WINDOW && !stop.load(Ordering::Relaxed) {
            let pkid = (i % 60_000 + 1) as u16;
            let payload = format!("{tag}-{i}").into_bytes();
            p.publish_with(topic, &payload, qos, false, pkid, &[]).await;
            in_flight.insert(pkid, payload);
            i += 1;
        }
        match p.packet().await {
            Some((first, body)) if first >> 4 == 4 || first >> 4 == 5 => {
                let pkid = u16::from_be_bytes([body[0], body[1]]);
                let code = body.get(2).copied().unwrap_or(0);
                let done = first >> 4 == 4 || code >= 0x80;
                let payload = match done {
                    true => in_flight.remove(&pkid),
                    false => in_flight.get(&pkid).cloned(),
                };
                if let (Some(payload), true) = (payload, code < 0x80) {
                    acked.push(payload);
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                if !done {
                    p.send(&crate::raw::framed(0x62, &pkid.to_be_bytes())).await;
                }
            }
            // PUBCOMP: the QoS 2 exchange is over.
            Some((first, body)) if first >> 4 == 7 => {
                in_flight.remove(&u16::from_be_bytes([body[0], body[1]]));
            }
            Some(_) => {}
            None => break,
        }
        if in_flight.is_empty() && stop.load(Ordering::Relaxed) {
            break;
        }
    }
    acked
}

/// A device's side of QoS 1 and 2 deliveries: PUBACK; PUBREC, and a QoS 2 message whose
/// PUBREL has not come yet is not taken again when it comes back (DUP) [MQTT-4.3.3].
#[derive(Default)]
struct Receiver {
    /// QoS 2 packet ids received, not released yet (kept across the reconnect).
    unreleased: std::collections::HashSet<u16>,
}

impl Receiver {
    /// The next message taken (`None`: closed, or nothing within `wait`).
    async fn take(&mut self, d: &mut Raw, wait: Duration) -> Option<crate::raw::Pub> {
        loop {
            let (first, body) = d.packet_within(wait).await.ok()??;
            match first >> 4 {
                3 => {
                    let m = d.decode_publish(first, &body);
                    let pkid = m.pkid.to_be_bytes();
                    let (ack, again) = match m.qos {
                        1 => (Some(0x40), false),
                        2 => (Some(0x50), !self.unreleased.insert(m.pkid)),
                        _ => (None, false),
                    };
                    if let Some(kind) = ack {
                        if !d.try_send(&crate::raw::framed(kind, &pkid)).await {
                            return None;
                        }
                    }
                    if !again {
                        return Some(m);
                    }
                }
                6 => {
                    let pkid = u16::from_be_bytes([body[0], body[1]]);
                    self.unreleased.remove(&pkid);
                    if !d.try_send(&crate::raw::framed(0x70, &body[..2])).await {
                        return None;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Test 2: the device's node (1) is killed with SIGKILL while publishers on nodes 2 and 3
/// send QoS 1 and QoS 2 messages to the device's persistent session: the device reconnects
/// to node 3 while they go on (node 3 hears the channel only from then on) and receives
/// every message acknowledged to the publishers that it had not received; QoS 1 duplicates
/// of what it had are allowed (counted), QoS 2 ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_device_finds_every_acknowledged_message_on_another_node() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 3).await;
    let c = persistent(&site, "survivor");
    let topic = site.topic("load");
    let (mut d, code, _) = Raw::connect(n1.mqtt, &c).await;
    assert_eq!(code, 0);
    assert_eq!(d.subscribe(1, &[(site.all().as_str(), 2)], &[]).await, vec![2]);
    // Nodes 2 and 3 know the session's subscription (their publishers queue for it).
    until_counter(&n2, "fluxgate_cluster_remote_persistent_sessions", 1).await;
    until_counter(&n3, "fluxgate_cluster_remote_persistent_sessions", 1).await;

    // The device reads on node 1, acknowledging each message.
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = tokio::spawn(async move {
        let mut r = Receiver::default();
        while let Some(m) = r.take(&mut d, Duration::from_secs(30)).await {
            let _ = got_tx.send(m.payload);
        }
        r
    });
    const N: usize = 100_000;
    let (stop, acks) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let (d2, d3) = (site.devices[1].clone(), site.devices[2].clone());
    let (t2, t3) = (topic.clone(), topic.clone());
    let (a2, a3) = (n2.mqtt, n3.mqtt);
    let s2 = (stop.clone(), acks.clone());
    let p2 = tokio::spawn(async move {
        let c = Connect::new(true, "pub2", &d2.0, &d2.1);
        publish_acked(a2, c, &t2, "qos1", N, 1, s2).await
    });
    let s3 = (stop.clone(), acks.clone());
    let p3 = tokio::spawn(async move {
        let c = Connect::new(true, "pub3", &d3.0, &d3.1);
        publish_acked(a3, c, &t3, "qos2", N, 2, s3).await
    });
    // Node 1 dies once the device got a few hundred.
    let mut before = Vec::new();
    while before.len() < 300 {
        before.push(got_rx.recv().await.expect("deliveries on node 1"));
    }
    let _dir = n1.kill9().await;
    let mut r = reader.await.expect("reader");
    while let Ok(m) = got_rx.try_recv() {
        before.push(m);
    }

    // Back on node 3 while the publishers go on; they stop once they had 600 more
    // acknowledged and the device got 300 there.
    let (mut d, code, present) = Raw::connect(n3.mqtt, &c).await;
    assert_eq!((code, present), (0, true), "the session is present on node 3");
    let back_at = acks.load(Ordering::Relaxed);
    let mut after = Vec::new();
    while after.len() < 300 || acks.load(Ordering::Relaxed) < back_at + 600 {
        let m = r.take(&mut d, Duration::from_secs(20)).await;
        after.push(m.expect("deliveries on node 3"));
    }
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Vec<u8>> = [p2.await.expect("publisher 2"), p3.await.expect("publisher 3")].concat();
    let had: std::collections::HashSet<Vec<u8>> = before.iter().cloned().collect();
    let mut missing: std::collections::HashSet<Vec<u8>> = acked.iter().filter(|m| !had.contains(*m)).cloned().collect();
    let (mut dups1, mut dups2) = (0, Vec::new());
    let mut after = after.into_iter();
    while !missing.is_empty() {
        let m = match after.next() {
            Some(m) => m,
            None => match r.take(&mut d, Duration::from_secs(20)).await {
                Some(m) => m,
                None => panic!(
                    "{} acknowledged messages never arrived (of {}; {} before the kill)",
                    missing.len(),
                    acked.len(),
                    had.len()
                ),
            },
        };
        if !missing.remove(&m.payload) && had.contains(&m.payload) {
            match m.qos {
                2 => dups2.push(String::from_utf8_lossy(&m.payload).to_string()),
                _ => dups1 += 1,
            }
        }
    }
    eprintln!(
        "kill -9: {} acknowledged, {} received before the kill; again after: {dups1} at QoS 1, {} at QoS 2",
        acked.len(),
        had.len(),
        dups2.len()
    );
    assert!(dups2.is_empty(), "QoS 2 exactly once: {dups2:?}");
}

/// What a NATS gap keeps from a device online on another node comes from the store: node 2
/// acknowledges 50 QoS 1 messages while nats-server is down (their entries for the device's
/// persistent session are stored, their live copies are lost); once NATS is back, node 1's
/// session reads its stored queue again and delivers every one of them, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_online_through_a_nats_gap_gets_every_message_acknowledged_meanwhile() {
    let Some(mut env) = ClusterEnv::new() else { return };
    let (n1, n2) = tokio::join!(env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let (mut d, code, _) = Raw::connect(n1.mqtt, &persistent(&site, "steady")).await;
    assert_eq!(code, 0);
    assert_eq!(d.subscribe(1, &[(site.all().as_str(), 1)], &[]).await, vec![1]);
    until_counter(&n2, "fluxgate_cluster_remote_persistent_sessions", 1).await;
    let topic = site.topic("gap");
    let mut p = Raw::ok(n2.mqtt, &site.connect(true, "pub", 1)).await;
    assert_eq!(p.publish(&topic, b"live", 1, false, 1).await, 0);
    assert_eq!(d.message().await.payload, b"live", "a live copy crosses first");

    env.nats.stop();
    // Node 2 knows NATS is gone: what it acknowledges now has no live copy.
    let t = Instant::now();
    while counter(&n2, "fluxgate_nats_connected").await != 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "node 2 saw NATS go");
        tokio::task::yield_now().await;
    }
    const N: usize = 50;
    let mut expected = std::collections::HashSet::new();
    for i in 0..N {
        let m = format!("gap{i}");
        assert_eq!(p.publish(&topic, m.as_bytes(), 1, false, i as u16 + 2).await, 0);
        expected.insert(m.into_bytes());
    }
    env.nats.resume();

    let t = Instant::now();
    let mut got = std::collections::HashSet::new();
    while got.len() < N {
        let left = Duration::from_secs(60).saturating_sub(t.elapsed());
        let Ok(Some((first, body))) = d.packet_within(left).await else {
            panic!("{} of {N} acknowledged messages arrived after the gap", got.len());
        };
        if first >> 4 != 3 {
            continue;
        }
        let m = d.decode_publish(first, &body);
        d.send(&crate::raw::framed(0x40, &m.pkid.to_be_bytes())).await;
        assert!(expected.contains(&m.payload), "an expected message");
        assert!(got.insert(m.payload), "each message once");
    }
    assert!(d.no_message_within(Duration::from_millis(500)).await, "nothing twice");
    assert_eq!(
        counter(&n1, "fluxgate_mqtt_session_entries_recovered_total").await,
        N as u64,
        "they came from the store"
    );
    // Live copies flow again, and are not taken for missed ones.
    assert_eq!(p.publish(&topic, b"after", 1, false, 100).await, 0);
    assert_eq!(d.message().await.payload, b"after");
}

/// A persistent session's SUBACK leaves once the other nodes index its new subscription: a
/// message published on node 2 just after the SUBACK is queued for the session before node
/// 2's PUBACK. Node 1 is paused at once (it can neither deliver nor store anything), then
/// killed: the device finds the message on node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_elsewhere_just_after_a_suback_is_queued_before_its_puback() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2) = tokio::join!(env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let c = persistent(&site, "fresh");
    let (mut d, code, _) = Raw::connect(n1.mqtt, &c).await;
    assert_eq!(code, 0);
    let mut p = Raw::ok(n2.mqtt, &site.connect(true, "pub", 1)).await;
    assert_eq!(d.subscribe(1, &[(site.all().as_str(), 1)], &[]).await, vec![1]);
    assert_eq!(
        counter(&n2, "fluxgate_cluster_remote_persistent_sessions").await,
        1,
        "node 2 indexes the subscription when the SUBACK arrives"
    );
    signal(&n1, "-STOP");
    assert_eq!(p.publish(&site.topic("x"), b"just after", 1, false, 1).await, 0);
    let _dir = n1.kill9().await;
    let (mut d2, code, present) = Raw::connect(n2.mqtt, &c).await;
    assert_eq!((code, present), (0, true), "the session moved to node 2");
    assert_eq!(d2.message().await.payload, b"just after");
    drop(d);
}
