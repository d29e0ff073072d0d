//! Cluster mode (#27) under faults: a node killed with SIGKILL under load, PostgreSQL gone
//! from every node, nats-server restarted. What is acknowledged is never lost.

use crate::cluster_env::{ClusterEnv, Site};
use crate::proxy::{Mode, Proxy};
use crate::raw::{Connect, Raw};
use reqwest::Method;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// QoS 1 messages in flight at once.
const WINDOW: usize = 20;

/// What a load publisher saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Payloads acknowledged with success.
    acked: Vec<String>,
    /// Acknowledged with a refusal (v5 reason code ≥ 0x80).
    refused: usize,
}

/// A device publishing QoS 1 messages (`<prefix><n>`) with a window in flight, until
/// `stop` or until its connection ends; `progress` counts successful acknowledgements.
struct Load {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Load {
    async fn start(addr: SocketAddr, site: &Site, device: usize, id: &str, prefix: &str) -> Load {
        let (user, pass) = site.devices[device].clone();
        let (id, topic, prefix) = (id.to_string(), site.topic("load"), prefix.to_string());
        let mut r = Raw::ok(addr, &Connect::new(true, &id, &user, &pass)).await;
        let (stop, stopped) = watch::channel(false);
        let (count, progress) = watch::channel(0usize);
        let task = tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut inflight: HashMap<u16, String> = HashMap::new();
            let (mut n, mut pkid) = (0usize, 0u16);
            loop {
                let stopping = *stopped.borrow();
                while !stopping && inflight.len() < WINDOW {
                    pkid = pkid % 60_000 + 1;
                    let payload = format!("{prefix}{n}");
                    n += 1;
                    if !r.try_publish(&topic, payload.as_bytes(), 1, pkid).await {
                        return out;
                    }
                    inflight.insert(pkid, payload);
                }
                if stopping && inflight.is_empty() {
                    return out;
                }
                match r.packet_within(Duration::from_secs(30)).await {
                    Ok(Some((first, body))) if first >> 4 == 4 => {
                        let id = u16::from_be_bytes([body[0], body[1]]);
                        let code = body.get(2).copied().unwrap_or(0);
                        if let Some(p) = inflight.remove(&id) {
                            if code == 0 {
                                out.acked.push(p);
                                count.send_modify(|c| *c += 1);
                            } else {
                                out.refused += 1;
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    // Closed by the server, or no acknowledgement in 30 s.
                    Ok(None) | Err(()) => return out,
                }
            }
        });
        Load { stop, progress, task }
    }

    /// Waits until `n` more messages were acknowledged than now.
    async fn acked_more(&mut self, n: usize) {
        let now = *self.progress.borrow();
        tokio::time::timeout(Duration::from_secs(60), self.progress.wait_for(|c| *c >= now + n))
            .await
            .expect("acknowledgements in time")
            .expect("load running");
    }

    async fn finish(self) -> Outcome {
        let _ = self.stop.send(true);
        self.task.await.expect("load")
    }
}

/// A subscriber that collects every message until it has seen all of the expected set it
/// is given at the end; returns (missing, duplicates).
struct Collector {
    expect: oneshot::Sender<HashSet<String>>,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl Collector {
    async fn start(addr: SocketAddr, site: &Site, id: &str) -> Collector {
        let mut r = Raw::ok(addr, &site.connect(true, id, 0)).await;
        assert_eq!(r.subscribe(1, &[(site.all().as_str(), 1)], &[]).await, vec![1]);
        let (expect, mut want) = oneshot::channel::<HashSet<String>>();
        let task = tokio::spawn(async move {
            let mut seen: HashSet<String> = HashSet::new();
            let mut dup = 0;
            let mut target: Option<HashSet<String>> = None;
            loop {
                if let Some(t) = &target {
                    if t.is_subset(&seen) {
                        return (0, dup);
                    }
                }
                let next = tokio::select! {
                    t = &mut want, if target.is_none() => {
                        target = Some(t.expect("expected set"));
                        continue;
                    }
                    p = r.packet_within(Duration::from_secs(20)) => p,
                };
                match next {
                    Ok(Some((first, body))) if first >> 4 == 3 => {
                        let p = r.decode_publish(first, &body);
                        if p.qos == 1 {
                            r.send(&crate::raw::framed(0x40, &p.pkid.to_be_bytes())).await;
                        }
                        if !seen.insert(String::from_utf8_lossy(&p.payload).to_string()) {
                            dup += 1;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(()) => {
                        let missing = target.map_or(usize::MAX, |t| t.difference(&seen).count());
                        return (missing, dup);
                    }
                }
            }
        });
        Collector { expect, task }
    }

    async fn verdict(self, expected: HashSet<String>) -> (usize, usize) {
        let _ = self.expect.send(expected);
        self.task.await.expect("collector")
    }
}

/// Payloads stored in the cluster's database.
async fn stored(env: &ClusterEnv) -> HashSet<String> {
    let url = env.db.url().to_string();
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        c.query("SELECT payload FROM messages WHERE payload IS NOT NULL", &[])
            .expect("payloads")
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.get::<_, Vec<u8>>(0)).to_string())
            .collect()
    })
    .await
    .expect("read")
}

/// Test 3: kill -9 the publishing node under QoS 1 load, subscribers on the two others:
/// every acknowledged message is stored and reached both survivors; the device then
/// connects to another node and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_publishing_node_loses_nothing_acknowledged() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let site = Site::provision(&n2, 2).await;
    let (c2, c3) = (
        Collector::start(n2.mqtt, &site, "c2").await,
        Collector::start(n3.mqtt, &site, "c3").await,
    );
    let mut load = Load::start(n1.mqtt, &site, 1, "loader", "k").await;
    load.acked_more(500).await;
    let _dir = n1.kill9().await;
    let out = load.finish().await;
    // The device comes back on node 2 and is served.
    let mut back = Raw::ok(n2.mqtt, &site.connect(true, "loader", 1)).await;
    assert_eq!(back.publish(&site.topic("load"), b"after", 1, false, 1).await, 0);
    let mut expected: HashSet<String> = out.acked.iter().cloned().collect();
    expected.insert("after".into());
    let (m2, d2) = c2.verdict(expected.clone()).await;
    let (m3, d3) = c3.verdict(expected.clone()).await;
    let missing_stored = expected.difference(&stored(&env).await).count();
    println!(
        "kill -9 under load: {} acknowledged; missing at node 2: {m2}, node 3: {m3}, in the store: {missing_stored}; duplicates {d2}/{d3}",
        out.acked.len()
    );
    assert_eq!((m2, m3, missing_stored), (0, 0, 0));
}

/// Test 6: PostgreSQL gone from every node under load: REST answers 503, CONNECT is refused
/// with "server unavailable", and nothing unstored is acknowledged; once it is back, every
/// node serves again without a restart and no acknowledged message is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_acknowledges_nothing_unstored_and_every_node_recovers() {
    let Some(env) = ClusterEnv::new() else { return };
    let pg = Proxy::start(env.pg_addr()).await;
    let db = env.db_url_via(pg.addr);
    let extra = [("FLUXGATE_STORE_URL", db.as_str())];
    let (n1, n2, n3) = tokio::join!(env.node(&extra), env.node(&extra), env.node(&extra));
    let site = Site::provision(&n1, 2).await;
    let mut load = Load::start(n1.mqtt, &site, 1, "loader", "p").await;
    load.acked_more(200).await;
    pg.set(Mode::Cut);
    for n in [&n1, &n2, &n3] {
        let (s, v) = site
            .call(n, Method::GET, &format!("/domains/{}", site.domain), Value::Null)
            .await;
        assert_eq!(s, 503, "{v}");
        let (_, code, _) = Raw::connect(n.mqtt, &site.connect(false, "during", 0)).await;
        assert_eq!(code, 0x03, "3.1.1: server unavailable");
        let (_, code, _) = Raw::connect(n.mqtt, &site.connect(true, "during", 0)).await;
        assert_eq!(code, 0x88, "5: server unavailable");
    }
    pg.set(Mode::Pass);
    for n in [&n1, &n2, &n3] {
        let t = std::time::Instant::now();
        loop {
            let (s, _) = site
                .call(n, Method::GET, &format!("/domains/{}", site.domain), Value::Null)
                .await;
            let (_, code, _) = Raw::connect(n.mqtt, &site.connect(true, "after", 0)).await;
            if s == 200 && code == 0 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "served again without a restart");
            tokio::task::yield_now().await;
        }
    }
    let out = load.finish().await;
    let mut back = Raw::ok(n2.mqtt, &site.connect(true, "loader2", 1)).await;
    assert_eq!(back.publish(&site.topic("load"), b"after", 1, false, 1).await, 0);
    // The writer commits what it held; every acknowledged message is there.
    let expected: HashSet<String> = out.acked.iter().cloned().collect();
    let t = std::time::Instant::now();
    let missing = loop {
        let missing = expected.difference(&stored(&env).await).count();
        if missing == 0 || t.elapsed() > Duration::from_secs(30) {
            break missing;
        }
        tokio::task::yield_now().await;
    };
    println!(
        "database outage: {} acknowledged, {} refused; missing from the store: {missing}",
        out.acked.len(),
        out.refused
    );
    assert_eq!(missing, 0);
}

/// Test 7: nats-server restarted under load: the nodes reconnect and resubscribe by
/// themselves, the cross-node copies lost in the gap are counted in `/metrics`, and every
/// acknowledged message is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_is_survived_and_its_losses_are_counted() {
    let Some(mut env) = ClusterEnv::new() else { return };
    let (n1, n2) = tokio::join!(env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let mut sub = Raw::ok(n2.mqtt, &site.connect(true, "sub", 0)).await;
    assert_eq!(sub.subscribe(1, &[(site.all().as_str(), 1)], &[]).await, vec![1]);
    let mut load = Load::start(n1.mqtt, &site, 1, "loader", "n").await;
    load.acked_more(200).await;
    env.nats.stop();
    load.acked_more(200).await;
    // A retained message set during the gap: stored, but no other node heard of it.
    let mut setter = Raw::ok(n1.mqtt, &site.connect(true, "setter", 1)).await;
    assert_eq!(
        setter.publish(&site.topic("gap"), b"set in the gap", 1, true, 1).await,
        0
    );
    env.nats.resume();
    // Until a message published now crosses again (the nodes reconnected and resubscribed).
    let mut probe = Raw::ok(n1.mqtt, &site.connect(true, "probe", 1)).await;
    let t = std::time::Instant::now();
    let mut i = 0u16;
    'crossed: loop {
        i += 1;
        let marker = format!("probe{i}");
        assert_eq!(
            probe
                .publish(&site.topic("probe"), marker.as_bytes(), 1, false, i)
                .await,
            0
        );
        // The load's messages keep coming: each probe is looked for during half a second.
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let Ok(Some((first, body))) = sub.packet_within(left).await else {
                break;
            };
            if first >> 4 == 3 {
                let p = sub.decode_publish(first, &body);
                if p.qos == 1 {
                    sub.send(&crate::raw::framed(0x40, &p.pkid.to_be_bytes())).await;
                }
                if p.payload == marker.as_bytes() {
                    break 'crossed;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "messages cross again after the restart"
        );
    }
    // Node 2 read its retained set again from the store after the gap.
    let t = std::time::Instant::now();
    loop {
        let mut fresh = Raw::ok(n2.mqtt, &site.connect(true, "late", 0)).await;
        fresh.subscribe(1, &[(site.topic("gap").as_str(), 1)], &[]).await;
        if let Ok(Some((first, body))) = fresh.packet_within(Duration::from_millis(300)).await {
            if first >> 4 == 3 && fresh.decode_publish(first, &body).payload == b"set in the gap" {
                break;
            }
        }
        fresh.disconnect().await;
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the retained set caught up after the gap"
        );
    }
    let out = load.finish().await;
    let counter = |name| crate::cluster_env::counter(&n1, name);
    let (lost, reconnects) = (
        counter("fluxgate_cluster_messages_not_sent_total").await,
        counter("fluxgate_nats_reconnects_total").await,
    );
    println!(
        "nats restart: {} acknowledged; not sent to other nodes: {lost}; reconnects {reconnects}",
        out.acked.len()
    );
    assert!(lost > 0, "the gap's copies are counted");
    assert!(reconnects >= 1, "the node reconnected");
    let expected: HashSet<String> = out.acked.iter().cloned().collect();
    let t = std::time::Instant::now();
    loop {
        let missing = expected.difference(&stored(&env).await).count();
        if missing == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "missing from the store: {missing}"
        );
        tokio::task::yield_now().await;
    }
}
