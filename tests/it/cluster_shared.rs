//! Cluster mode, part two (#28): shared subscriptions across nodes. Real `fluxgate serve`
//! nodes on one PostgreSQL database and one nats-server, both started by the test.

use crate::cluster_env::{ClusterEnv, Site};
use crate::raw::{framed, Raw};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a member task reports.
enum Event {
    /// (member, payload)
    Got(&'static str, Vec<u8>),
    /// The member's UNSUBACK arrived.
    Left(&'static str),
}

/// A subscriber in its own task: every PUBLISH it gets is acknowledged and reported; told
/// to, it unsubscribes from `filter` and reports when its UNSUBACK came.
fn member(
    name: &'static str,
    mut r: Raw,
    filter: String,
    events: mpsc::UnboundedSender<Event>,
) -> mpsc::UnboundedSender<()> {
    let (leave_tx, mut leave) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        loop {
            if leave.try_recv().is_ok() {
                // UNSUBSCRIBE (packet id 7); the messages before its UNSUBACK are still taken.
                let mut body = vec![0, 7];
                if r.v5 {
                    body.push(0);
                }
                crate::raw::put_str(&mut body, filter.as_bytes());
                r.send(&framed(0xA2, &body)).await;
            }
            match r.packet_within(Duration::from_millis(50)).await {
                Ok(Some((first, body))) if first >> 4 == 11 => {
                    assert_eq!(&body[..2], &[0, 7], "{name}: UNSUBACK");
                    let _ = events.send(Event::Left(name));
                }
                Err(()) => continue,
                // The node stopped (the test's end); the counts tell the rest.
                Ok(None) => return,
                Ok(Some((first, body))) if first >> 4 == 3 => {
                    let p = r.decode_publish(first, &body);
                    if p.qos == 1 {
                        r.send(&framed(0x40, &p.pkid.to_be_bytes())).await;
                    }
                    if events.send(Event::Got(name, p.payload)).is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
            }
        }
    });
    leave_tx
}

/// Publishes `payloads` at QoS 1 on `topic` through node `addr`, a window of 50 in flight.
async fn publish_all(addr: SocketAddr, site_connect: crate::raw::Connect<'_>, topic: &str, payloads: Vec<String>) {
    const WINDOW: usize = 50;
    let mut p = Raw::ok(addr, &site_connect).await;
    let n = payloads.len();
    let mut acked = 0;
    for (i, payload) in payloads.iter().enumerate() {
        let pkid = (i % 60_000 + 1) as u16;
        p.publish_with(topic, payload.as_bytes(), 1, false, pkid, &[]).await;
        while i + 1 - acked >= WINDOW || (i + 1 == n && acked < n) {
            let (first, body) = p.packet().await.expect("PUBACK");
            if first >> 4 == 4 {
                assert!(body.len() < 3 || body[2] == 0, "PUBACK refused: {body:?}");
                acked += 1;
            }
        }
    }
    p.disconnect().await;
}

/// Test 4: a group with two members on node 1 (one of them 3.1.1) and two on node 2, a second
/// group (node 3 and node 1) and a plain subscriber (node 2) on the same filter; publishers on
/// all three nodes, 10,002 QoS 1 messages in two phases. Each message reaches exactly one
/// member of each group and the plain subscriber once, none lost; every member gets a share;
/// a member that unsubscribes in the middle of the second phase (publishers running) gets
/// nothing after its UNSUBACK. CONNACK says Shared Subscription Available = 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_span_the_cluster_once_per_group() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 4).await;
    let (ga, gb) = (format!("$share/ga/{}", site.all()), format!("$share/gb/{}", site.all()));

    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut leave = HashMap::new();
    let members: [(&'static str, SocketAddr, bool, &str); 7] = [
        ("a1", n1.mqtt, true, &ga),
        ("a2", n1.mqtt, false, &ga),
        ("a3", n2.mqtt, true, &ga),
        ("a4", n2.mqtt, true, &ga),
        ("b1", n3.mqtt, true, &gb),
        ("b2", n1.mqtt, true, &gb),
        ("plain", n2.mqtt, true, ""),
    ];
    for (name, addr, v5, filter) in members {
        let filter = if filter.is_empty() {
            site.all()
        } else {
            filter.to_string()
        };
        let (mut r, body) = Raw::connack(addr, &site.connect(v5, name, 0)).await;
        assert_eq!(body[1], 0, "{name}: CONNACK");
        if v5 {
            assert_eq!(
                crate::raw::connack_u8(&body, 0x2A),
                Some(1),
                "Shared Subscription Available = 1 in cluster mode"
            );
        }
        assert_eq!(r.subscribe(1, &[(filter.as_str(), 1)], &[]).await, vec![1], "{name}");
        leave.insert(name, member(name, r, filter, tx.clone()));
    }

    // Who got what, per group; duplicates within a group are counted.
    let group = |m: &str| match m.as_bytes()[0] {
        b'a' => "ga",
        b'b' => "gb",
        _ => "plain",
    };
    let mut seen: HashMap<&str, HashSet<Vec<u8>>> = HashMap::new();
    let mut per_member: HashMap<&'static str, usize> = HashMap::new();
    let mut dups = 0usize;
    let mut after_leaving = Vec::new();
    let mut left: HashSet<&'static str> = HashSet::new();
    let mut leaving = false;
    let topic = site.topic("shared");
    const PER_NODE: usize = 1_667;

    for phase in 1..=2 {
        let publishers: Vec<_> = [(n1.mqtt, 1usize), (n2.mqtt, 2), (n3.mqtt, 3)]
            .into_iter()
            .map(|(addr, dev)| {
                let payloads: Vec<String> = (0..PER_NODE).map(|i| format!("{phase}-{dev}-{i}")).collect();
                let (topic, site_dev) = (topic.clone(), site.devices[dev].clone());
                tokio::spawn(async move {
                    let id = format!("pub-{phase}-{dev}");
                    let c = crate::raw::Connect::new(true, &id, &site_dev.0, &site_dev.1);
                    publish_all(addr, c, &topic, payloads).await;
                })
            })
            .collect();
        let want = phase * 3 * PER_NODE;
        // a4 leaves its group a third into phase 2, while the publishers run.
        let leave_at = 3 * PER_NODE + PER_NODE;
        while ["ga", "gb", "plain"]
            .iter()
            .any(|g| seen.get(g).map_or(0, |s| s.len()) < want)
        {
            let e = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(e) => e.expect("events"),
                Err(_) => {
                    // What a failure needs to be read: counts, and what each node dropped.
                    let mut dropped = Vec::new();
                    for n in [&n1, &n2, &n3] {
                        dropped.push(
                            crate::cluster_env::counter(n, "fluxgate_cluster_messages_received_dropped_total").await,
                        );
                    }
                    panic!(
                        "every message in time: phase {phase}, {:?}, dropped per node {dropped:?}, per member {per_member:?}",
                        seen.iter().map(|(g, s)| (*g, s.len())).collect::<Vec<_>>()
                    )
                }
            };
            match e {
                Event::Got(m, payload) => {
                    if left.contains(m) {
                        after_leaving.push((m, payload.clone()));
                    }
                    *per_member.entry(m).or_default() += 1;
                    if !seen.entry(group(m)).or_default().insert(payload) {
                        dups += 1;
                    }
                    if phase == 2 && !leaving && seen.get("ga").map_or(0, |s| s.len()) >= leave_at {
                        leaving = true;
                        let _ = leave.get("a4").expect("a4").send(());
                    }
                }
                Event::Left(m) => {
                    left.insert(m);
                }
            }
        }
        for p in publishers {
            p.await.expect("publisher");
        }
        if phase == 1 {
            for (name, ..) in members {
                assert!(
                    per_member.get(name).copied().unwrap_or(0) > 0,
                    "{name} got a share: {per_member:?}"
                );
            }
        }
    }
    assert!(left.contains("a4"), "a4 left in the middle of phase 2");
    assert_eq!(dups, 0, "each message once per group: {per_member:?}");
    assert!(after_leaving.is_empty(), "nothing after UNSUBACK: {after_leaving:?}");
    // Nothing more arrives anywhere (no late duplicate).
    match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        Err(_) => {}
        Ok(Some(Event::Got(m, p))) => panic!("{m} got {p:?} after every message"),
        Ok(_) => {}
    }
    for g in ["ga", "gb", "plain"] {
        assert_eq!(seen[g].len(), 6 * PER_NODE, "{g}: none lost: {per_member:?}");
    }
}

/// A group whose members are all on one node behaves as on a single node, also while NATS is
/// down: each message accepted on that node reaches one of its members, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_one_node_gets_that_nodes_messages_through_a_nats_outage() {
    let Some(mut env) = ClusterEnv::new() else { return };
    let (n1, _n2) = tokio::join!(env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let group = format!("$share/solo/{}", site.all());
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut keep = Vec::new();
    for name in ["s1", "s2"] {
        let mut r = Raw::ok(n1.mqtt, &site.connect(true, name, 0)).await;
        assert_eq!(r.subscribe(1, &[(group.as_str(), 1)], &[]).await, vec![1]);
        keep.push(member(name, r, group.clone(), tx.clone()));
    }
    let mut p = Raw::ok(n1.mqtt, &site.connect(true, "pub", 1)).await;
    env.nats.stop();
    let t = std::time::Instant::now();
    while crate::cluster_env::counter(&n1, "fluxgate_nats_connected").await != 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "node 1 saw NATS go");
        tokio::task::yield_now().await;
    }
    const N: usize = 20;
    for i in 0..N {
        let m = format!("o{i}");
        assert_eq!(
            p.publish(&site.topic("solo"), m.as_bytes(), 1, false, i as u16 + 1)
                .await,
            0
        );
    }
    let mut got = HashSet::new();
    let mut by = HashMap::new();
    while got.len() < N {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(Event::Got(m, payload))) => {
                assert!(got.insert(payload), "each message once");
                *by.entry(m).or_insert(0) += 1;
            }
            Ok(_) => {}
            Err(_) => panic!("{} of {N} reached the group during the outage", got.len()),
        }
    }
    assert_eq!(by.len(), 2, "both members took turns: {by:?}");
}
