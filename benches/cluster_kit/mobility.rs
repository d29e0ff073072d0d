//! Cluster mode, part two (#28): what moving a session costs, and shared subscriptions across
//! nodes against one node.

use super::*;
use crate::raw::{Connect, Raw};
use std::sync::atomic::{AtomicU64, Ordering};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A persistent (v5, session expiry 1 h) connection of `dev` with client id `id`.
fn persistent<'a>(id: &'a str, dev: &'a (String, String)) -> Connect<'a> {
    let mut c = Connect::new(true, id, &dev.0, &dev.1);
    c.clean = false;
    c.props = crate::raw::props::session_expiry(3600);
    c
}

/// Queues `n` QoS 1 messages for a persistent session subscribed on `home` while its device
/// is away, then connects to `to`: the time from sending CONNECT to the last queued message.
async fn one_takeover(home: &Node, to: &Node, s: &Site, id: &str, n: usize) -> Duration {
    let c = persistent(id, &s.devices[0]);
    let topic = format!("channels/{}/messages/t", s.channel);
    let (mut d, code, _) = Raw::connect(home.mqtt, &c).await;
    assert_eq!(code, 0);
    let all = format!("channels/{}/messages/#", s.channel);
    assert_eq!(d.subscribe(1, &[(all.as_str(), 1)], &[]).await, vec![1]);
    d.disconnect_and_wait().await;
    let mut p = Raw::ok(
        home.mqtt,
        &Connect::new(true, &format!("{id}-pub"), &s.devices[1].0, &s.devices[1].1),
    )
    .await;
    for i in 0..n {
        assert_eq!(
            p.publish(&topic, format!("m{i}").as_bytes(), 1, false, i as u16 + 1)
                .await,
            0
        );
    }
    p.disconnect().await;
    let t = Instant::now();
    let (mut d, code, present) = Raw::connect(to.mqtt, &c).await;
    assert_eq!((code, present), (0, true));
    for i in 0..n {
        let m = d.message().await;
        assert_eq!(m.payload, format!("m{i}").into_bytes(), "in order");
    }
    let took = t.elapsed();
    d.disconnect_and_wait().await;
    took
}

/// 5: a device with `n` queued messages comes back on another node ÷ on its own node.
pub async fn takeover(admin: &str, nats: &Nats, n: usize, runs: usize) {
    let db = fresh_database(admin).await;
    let (a, b) = (node(&db, Some(nats.addr)).await, node(&db, Some(nats.addr)).await);
    let s = site(a.http, 2).await;
    let (mut moved, mut stayed) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let m = one_takeover(&a, &b, &s, &format!("move{run}"), n).await;
        let st = one_takeover(&a, &a, &s, &format!("stay{run}"), n).await;
        println!("takeover run {run}: {n} queued messages, to another node {m:?}, back on the same node {st:?}");
        moved.push(m.as_secs_f64());
        stayed.push(st.as_secs_f64());
    }
    let (m, st) = (median(&mut moved), median(&mut stayed));
    println!(
        "takeover with {n} queued messages (median of {runs}): CONNECT on another node to the last one delivered {:.0} ms (target ≤ 1,000 ms); on the same node {:.0} ms; ratio {:.2}",
        m * 1e3,
        st * 1e3,
        m / st.max(1e-9)
    );
}

/// Members of a shared subscription, each counting what it got.
async fn members(at: &[SocketAddr], s: &Site, group: &str, got: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    let filter = format!("$share/{group}/channels/{}/messages/#", s.channel);
    let mut tasks = Vec::new();
    for (i, addr) in at.iter().enumerate() {
        let (c, mut el) = AsyncClient::new(opts(*addr, &format!("{group}-m{i}"), &s.devices[0]), 10_000);
        c.subscribe(filter.clone(), QoS::AtLeastOnce).await.expect("subscribe");
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.expect("member") {
                break;
            }
        }
        let got = got.clone();
        tasks.push(tokio::spawn(async move {
            let _c = c;
            while let Ok(e) = el.poll().await {
                if let Event::Incoming(Packet::Publish(_)) = e {
                    got.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tasks
}

/// Publishes QoS 1, 64-byte messages at `rate` per second for `secs`, then lets the
/// acknowledgements finish; returns how many were acknowledged.
async fn acked_publisher(
    addr: SocketAddr,
    id: &str,
    dev: &(String, String),
    topic: String,
    rate: f64,
    secs: f64,
) -> u64 {
    let (c, mut el) = AsyncClient::new(opts(addr, id, dev), 100_000);
    let acked = Arc::new(AtomicU64::new(0));
    let a2 = acked.clone();
    let driver = tokio::spawn(async move {
        while let Ok(e) = el.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = e {
                a2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        tick.tick().await;
        c.publish(topic.clone(), QoS::AtLeastOnce, false, vec![0u8; 64])
            .await
            .expect("publish");
    }
    // Until the acknowledgements stop coming (what is still queued in the client goes).
    let mut last = u64::MAX;
    while acked.load(Ordering::Relaxed) != last {
        last = acked.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    driver.abort();
    last
}

/// Deliveries per second to a group of 4 members at `members_at`, publishers at `pubs_at`
/// (offered `rate` msg/s QoS 1 in all); (deliveries/s, delivered ÷ acknowledged).
async fn shared_run(
    members_at: &[SocketAddr],
    pubs_at: &[SocketAddr],
    s: &Site,
    group: &str,
    rate: f64,
    secs: f64,
) -> (f64, f64) {
    let got = Arc::new(AtomicU64::new(0));
    let tasks = members(members_at, s, group, got.clone()).await;
    let topic = format!("channels/{}/messages/shared", s.channel);
    let t = Instant::now();
    let pubs: Vec<_> = pubs_at
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let (addr, dev, topic) = (*addr, s.devices[1].clone(), topic.clone());
            let per = rate / pubs_at.len() as f64;
            let id = format!("{group}-p{i}");
            tokio::spawn(async move { acked_publisher(addr, &id, &dev, topic, per, secs).await })
        })
        .collect();
    let mut acked = 0;
    for p in pubs {
        acked += p.await.expect("publisher");
    }
    let n = got.load(Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    // Deliveries per second until the last acknowledgement (the last 300 ms were quiet);
    // delivered ÷ acknowledged.
    let elapsed = t.elapsed().as_secs_f64() - 0.3;
    (n as f64 / elapsed.max(1e-9), n as f64 / acked.max(1) as f64)
}

/// 6: a shared subscription's throughput with its 4 members on 2 nodes ÷ on 1 node (the
/// same cluster's node, and a node outside any cluster).
pub async fn shared(admin: &str, nats: &Nats, rate: f64, secs: f64, runs: usize) {
    let (mut two, mut one, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let db = fresh_database(admin).await;
        let (a, b) = (node(&db, Some(nats.addr)).await, node(&db, Some(nats.addr)).await);
        let s = site(a.http, 2).await;
        let (t2, d2) = shared_run(
            &[a.mqtt, a.mqtt, b.mqtt, b.mqtt],
            &[a.mqtt, b.mqtt],
            &s,
            &format!("two{run}"),
            rate,
            secs,
        )
        .await;
        let (t1, d1) = shared_run(&[a.mqtt; 4], &[a.mqtt, a.mqtt], &s, &format!("one{run}"), rate, secs).await;
        drop((a, b));
        let db1 = fresh_database(admin).await;
        let solo = node(&db1, None).await;
        let s1 = site(solo.http, 2).await;
        let (t0, d0) = shared_run(
            &[solo.mqtt; 4],
            &[solo.mqtt, solo.mqtt],
            &s1,
            &format!("solo{run}"),
            rate,
            secs,
        )
        .await;
        println!(
            "shared run {run}: 2 nodes {t2:.0}/s (delivered ÷ acknowledged {:.2}%), 1 cluster node {t1:.0}/s ({:.2}%), 1 node outside a cluster {t0:.0}/s ({:.2}%)",
            d2 * 100.0,
            d1 * 100.0,
            d0 * 100.0
        );
        two.push(t2);
        one.push(t1);
        alone.push(t0);
    }
    let (t2, t1, t0) = (median(&mut two), median(&mut one), median(&mut alone));
    println!(
        "shared subscription, 4 members, offered {rate} msg/s QoS 1 (median of {runs}): across 2 nodes {t2:.0} deliveries/s, ÷ the group on 1 cluster node {:.2}, ÷ on 1 node outside a cluster {:.2}",
        t2 / t1.max(1e-9),
        t2 / t0.max(1e-9)
    );
}

/// Publishes QoS 1 messages carrying a counter (8 bytes) at `rate` per second until `stop`
/// is set; returns the counters acknowledged.
async fn counting_publisher(
    addr: SocketAddr,
    id: String,
    dev: (String, String),
    topic: String,
    rate: f64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<u64> {
    let mut p = Raw::ok(addr, &Connect::new(true, &id, &dev.0, &dev.1)).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut in_flight: std::collections::HashMap<u16, u64> = std::collections::HashMap::new();
    let (mut acked, mut n) = (Vec::new(), 0u64);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if !stopping && in_flight.len() < 50 => {
                let pkid = (n % 60_000 + 1) as u16;
                p.publish_with(&topic, &n.to_be_bytes(), 1, false, pkid, &[]).await;
                in_flight.insert(pkid, n);
                n += 1;
            }
            r = p.packet_within(Duration::from_secs(5)) => match r {
                Ok(Some((first, body))) if first >> 4 == 4 => {
                    let pkid = u16::from_be_bytes([body[0], body[1]]);
                    if let (Some(v), 0) = (in_flight.remove(&pkid), body.get(2).copied().unwrap_or(0)) {
                        acked.push(v);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(()) => break,
            },
        }
    }
    acked
}

/// A persistent device reading QoS 1 messages into `got` until its connection ends.
fn reading(mut d: Raw, got: Arc<Mutex<std::collections::HashSet<u64>>>) {
    tokio::spawn(async move {
        while let Ok(Some((first, body))) = d.packet_within(Duration::from_secs(30)).await {
            if first >> 4 != 3 {
                continue;
            }
            let m = d.decode_publish(first, &body);
            if !d.try_send(&crate::raw::framed(0x40, &m.pkid.to_be_bytes())).await {
                return;
            }
            if let (Ok(b), Ok(mut g)) = (m.payload[..].try_into(), got.lock()) {
                g.insert(u64::from_be_bytes(b));
            }
        }
    });
}

/// 7: node 1, holding `devices` persistent sessions with their devices online, is killed
/// with SIGKILL under QoS 1 load from nodes 2 and 3; each device reconnects to node 3:
/// acknowledged messages missing (target 0), and the time from the kill until every device
/// has its session back (they reconnect at once) and until every one has every acknowledged
/// message.
pub async fn node_kill(admin: &str, nats: &Nats, rate: f64, secs: f64, devices: usize) {
    let (_db, mut nodes) = three_nodes(admin, nats.addr).await;
    let s = site(nodes[0].http, 3).await;
    let topic = format!("channels/{}/messages/kill", s.channel);
    let all = format!("channels/{}/messages/#", s.channel);
    let ids: Vec<String> = (0..devices).map(|i| format!("holder{i}")).collect();
    let mut got = Vec::new();
    for id in &ids {
        let (mut d, code, _) = Raw::connect(nodes[0].mqtt, &persistent(id, &s.devices[0])).await;
        assert_eq!(code, 0);
        assert_eq!(d.subscribe(1, &[(all.as_str(), 1)], &[]).await, vec![1]);
        let g: Arc<Mutex<std::collections::HashSet<u64>>> = Arc::default();
        reading(d, g.clone());
        got.push(g);
    }
    // The other nodes know the sessions before the load starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pubs: Vec<_> = [(1usize, 1usize), (2, 2)]
        .into_iter()
        .map(|(n, dev)| {
            let (addr, dev, topic, stop) = (nodes[n].mqtt, s.devices[dev].clone(), topic.clone(), stop.clone());
            tokio::spawn(counting_publisher(addr, format!("kp{n}"), dev, topic, rate / 2.0, stop))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs / 2.0)).await;
    let killed = Instant::now();
    let victim = nodes.remove(0);
    drop(victim);
    // Every device comes back on node 3 (the third node, now nodes[1]), all at once, as
    // devices whose connection broke do.
    let back: Vec<_> = ids
        .iter()
        .zip(&got)
        .map(|(id, g)| {
            let (addr, id, dev, g) = (nodes[1].mqtt, id.clone(), s.devices[0].clone(), g.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let (d, code, present) = Raw::connect(addr, &persistent(&id, &dev)).await;
                assert_eq!((code, present), (0, true), "{id}: its session on node 3");
                reading(d, g);
                t.elapsed()
            })
        })
        .collect();
    let mut each = Vec::new();
    for b in back {
        each.push(b.await.expect("device back"));
    }
    let served = killed.elapsed();
    each.sort();
    println!("node kill: the devices' CONNECT to CONNACK on node 3 (all at once), sorted: {each:?}");
    tokio::time::sleep(Duration::from_secs_f64(secs / 2.0)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in pubs {
        acked.extend(p.await.expect("publisher"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut caught_up = None;
    let missing = loop {
        let missing: usize = got
            .iter()
            .map(|g| {
                g.lock()
                    .map(|g| acked.iter().filter(|v| !g.contains(v)).count())
                    .unwrap_or(acked.len())
            })
            .sum();
        if missing == 0 {
            caught_up = Some(killed.elapsed());
            break missing;
        }
        if Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "node kill with {devices} persistent sessions online under {rate} msg/s QoS 1: {} acknowledged; missing {missing} (target 0); every device had its session back {served:?} after the kill and every acknowledged message {caught_up:?} after",
        acked.len()
    );
}
