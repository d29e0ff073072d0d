//! Cluster mode's cost (#27). On one machine three nodes share the cores, so throughput cannot
//! grow with nodes here; this measures what a cluster costs instead, every node, nats-server
//! and PostgreSQL a separate process from this load generator:
//!
//! 1. k = CPU-seconds of all nodes per delivered message with 3 nodes (a subscriber on each,
//!    publishers spread over them: two thirds of deliveries cross nodes) ÷ CPU-seconds per
//!    delivered message of one node (not clustered) on the same PostgreSQL, at the same
//!    offered load (BENCH_RATE, default 2,000 msg/s QoS 1, 64 B, BENCH_SECS windows). Target
//!    k ≤ 1.2. nats-server's and PostgreSQL's CPU per message are printed separately.
//! 2. Publish-to-delivery latency, cross-node ÷ same-node (p50, p99; target p99 ratio ≤ 2).
//! 3. Revocation latency across nodes (BENCH_TRIALS, default 20), on each path: NATS notice,
//!    outbox poll (node 2's NATS link cut), fail closed (both of node 2's links cut: time
//!    until it refuses a connection). Target p99 < 1 s.
//! 4. kill -9 of a publishing node under QoS 1 load: acknowledged messages missing at the
//!    survivors and in the store (target 0), duplicates, time until the survivors caught up.
//!
//! 5. Takeover (#28): a device whose persistent session has BENCH_QUEUED (1,000) QoS 1
//!    messages queued on node 1 connects to node 2: CONNECT to the last one delivered
//!    (target ≤ 1 s), against coming back to node 1.
//! 6. A shared subscription's deliveries/s with its 4 members on 2 nodes ÷ on 1 node
//!    (BENCH_SHARED_RATE, default 4,000 msg/s QoS 1 offered).
//! 7. Node kill (#28): the node holding BENCH_DEVICES (10) persistent sessions, devices
//!    online, is killed under QoS 1 load from the two others; the devices reconnect to
//!    another node: acknowledged messages missing (target 0), time until served again.
//!
//! Needs PostgreSQL (`eval "$(scripts/throwaway-postgres start)"`, which sets
//! FLUXGATE_TEST_DATABASE_URL) and Debian's nats-server; without them it says so and stops.
//! Run: `cargo bench --bench cluster`.

#![allow(clippy::expect_used, clippy::panic)]

mod common;
#[allow(dead_code)]
#[path = "../tests/it/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../tests/it/raw.rs"]
mod raw;

#[path = "cluster_kit/mod.rs"]
mod kit;

use kit::*;
use proxy::{Mode, Proxy};
use raw::{Connect, Raw};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

struct Cost {
    nodes_cpu: f64,
    nats_cpu: f64,
    pg_cpu: f64,
    delivered: usize,
    same: Vec<Duration>,
    cross: Vec<Duration>,
}

/// Offered load on `nodes` (publishers spread over them, one subscriber on each).
async fn run_load(nodes: &[Node], nats_pid: Option<u32>, site: &Site, rate: f64, secs: f64) -> Cost {
    let topic = format!("channels/{}/messages/load", site.channel);
    let seen: Seen = Arc::default();
    // Three subscribers, one per node when there are three (two thirds of deliveries cross).
    for i in 0..3 {
        let n = &nodes[i % nodes.len()];
        let node = (i % nodes.len()) as u8;
        subscriber(n.mqtt, node, &format!("sub{i}"), &site.devices[0], &topic, seen.clone()).await;
    }
    let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
    let before = (
        pids.iter().map(|p| cpu_of(*p)).sum::<f64>(),
        nats_pid.map_or(0.0, cpu_of),
        cpu_named("postgres"),
    );
    let pubs = 4;
    let tasks: Vec<_> = (0..pubs)
        .map(|k| {
            let n = &nodes[k % nodes.len()];
            let (addr, dev, topic) = (n.mqtt, site.devices[1].clone(), topic.clone());
            let node = (k % nodes.len()) as u8;
            tokio::spawn(async move {
                publisher(addr, node, &format!("pub{k}"), &dev, topic, rate / pubs as f64, secs).await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher");
    }
    let after = (
        pids.iter().map(|p| cpu_of(*p)).sum::<f64>(),
        nats_pid.map_or(0.0, cpu_of),
        cpu_named("postgres"),
    );
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let (same, cross): (Vec<&(u8, u8, Duration)>, Vec<_>) = seen.iter().partition(|(p, s, _)| p == s);
    Cost {
        nodes_cpu: after.0 - before.0,
        nats_cpu: after.1 - before.1,
        pg_cpu: after.2 - before.2,
        delivered: seen.len(),
        same: same.iter().map(|x| x.2).collect(),
        cross: cross.iter().map(|x| x.2).collect(),
    }
}

/// Milliseconds until a device connected to `on` is closed after its client is disabled on
/// `admin` (and re-enabled after).
async fn revocation(admin: &Node, on: &Node, site: &Site) -> Duration {
    let (client, secret) = &site.devices[2];
    let mut dev = Raw::ok(on.mqtt, &Connect::new(true, "rev", client, secret)).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/{}/clients/{client}", admin.http, site.domain);
    let t = Instant::now();
    let r = http
        .post(format!("{url}/disable"))
        .bearer_auth(&site.token)
        .send()
        .await
        .expect("disable");
    assert!(r.status().is_success());
    let _ = tokio::time::timeout(Duration::from_secs(10), dev.closed()).await;
    let took = t.elapsed();
    let r = http
        .post(format!("{url}/enable"))
        .bearer_auth(&site.token)
        .send()
        .await
        .expect("enable");
    assert!(r.status().is_success());
    took
}

/// Times `node` failed closed (could not confirm it was current).
async fn not_current_refusals(node: &Node) -> u64 {
    let text = match reqwest::get(format!("http://{}/metrics", node.http)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    text.lines()
        .find_map(|l| l.strip_prefix("fluxgate_cluster_fail_closed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Node 2's links to NATS and PostgreSQL cut, and the device's client disabled on node 1
/// at the same moment: time until node 2 refuses devices because it cannot confirm it is
/// current (it fails closed; its publishes are refused from then on too).
async fn fail_closed(n1: &Node, n2: &Node, site: &Site, nats: &Proxy, pg: &Proxy) -> Option<Duration> {
    let (client, _) = &site.devices[2];
    let before = not_current_refusals(n2).await;
    nats.set(Mode::Cut);
    pg.set(Mode::Cut);
    let http = reqwest::Client::new();
    let url = format!("http://{}/{}/clients/{client}", n1.http, site.domain);
    let t = Instant::now();
    let r = http
        .post(format!("{url}/disable"))
        .bearer_auth(&site.token)
        .send()
        .await
        .ok()?;
    assert!(r.status().is_success());
    let took = loop {
        if not_current_refusals(n2).await > before {
            break Some(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(10) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    nats.set(Mode::Pass);
    pg.set(Mode::Pass);
    let _ = http.post(format!("{url}/enable")).bearer_auth(&site.token).send().await;
    took
}

async fn until_connect_code(addr: SocketAddr, site: &Site, want: u8, limit: Duration) -> Option<Duration> {
    let (client, secret) = &site.devices[2];
    let t = Instant::now();
    while t.elapsed() < limit {
        let (_, code, _) = Raw::connect(addr, &Connect::new(true, "probe", client, secret)).await;
        if code == want {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn main() {
    let Some(admin) = storage::testdb::server_url() else {
        println!("cluster benchmark: needs PostgreSQL: eval \"$(scripts/throwaway-postgres start)\"");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let Some(nats) = nats().await else {
            println!("cluster benchmark: needs nats-server (Debian: apt-get install nats-server)");
            return;
        };
        let rate: f64 = common::env("BENCH_RATE", 2000.0);
        let secs: f64 = common::env("BENCH_SECS", 5.0);
        let trials: usize = common::env("BENCH_TRIALS", 20);
        let runs: usize = common::env("BENCH_RUNS", 3);
        println!("cluster benchmark: {rate} msg/s QoS 1, 64 B, {secs} s windows, {runs} alternating runs");

        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let part = |p: &str| only.is_empty() || only == p;
        if part("cost") {
            cost(&admin, &nats, rate, secs, runs).await;
        }
        if part("revocation") {
            revocations(&admin, &nats, trials).await;
        }
        if part("kill") {
            kill(&admin, &nats, rate, secs).await;
        }
        if part("takeover") {
            kit::mobility::takeover(&admin, &nats, common::env("BENCH_QUEUED", 1000), runs).await;
        }
        if part("node-kill") {
            kit::mobility::node_kill(&admin, &nats, rate, secs, common::env("BENCH_DEVICES", 10)).await;
        }
        if part("shared") {
            let rate = common::env("BENCH_SHARED_RATE", 4000.0);
            kit::mobility::shared(&admin, &nats, rate, secs, runs).await;
        }
    });
}

/// 1 and 2: one node against three, alternating runs; medians.
async fn cost(admin: &str, nats: &Nats, rate: f64, secs: f64, runs: usize) {
    // 1 and 2: one node against three, alternating runs; medians.
    let mut k = Vec::new();
    let (mut one_pm, mut three_pm, mut nats_pm, mut pg_pm, mut pg1_pm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let db1 = fresh_database(admin).await;
        let one = [node(&db1, None).await];
        let s1 = site(one[0].http, 3).await;
        let c1 = run_load(&one, None, &s1, rate, secs).await;
        drop(one);
        let db3 = fresh_database(admin).await;
        let three = [
            node(&db3, Some(nats.addr)).await,
            node(&db3, Some(nats.addr)).await,
            node(&db3, Some(nats.addr)).await,
        ];
        let s3 = site(three[0].http, 3).await;
        let c3 = run_load(&three, Some(nats.child.id()), &s3, rate, secs).await;
        drop(three);
        let per1 = c1.nodes_cpu / c1.delivered.max(1) as f64;
        let per3 = c3.nodes_cpu / c3.delivered.max(1) as f64;
        println!(
                "run {run}: one node {:.1} µs CPU/delivery ({} deliveries, PostgreSQL {:.1} µs); three nodes {:.1} µs ({} deliveries; nats-server {:.1} µs, PostgreSQL {:.1} µs); k = {:.2}",
                per1 * 1e6,
                c1.delivered,
                c1.pg_cpu / c1.delivered.max(1) as f64 * 1e6,
                per3 * 1e6,
                c3.delivered,
                c3.nats_cpu / c3.delivered.max(1) as f64 * 1e6,
                c3.pg_cpu / c3.delivered.max(1) as f64 * 1e6,
                per3 / per1
            );
        k.push(per3 / per1);
        one_pm.push(per1 * 1e6);
        three_pm.push(per3 * 1e6);
        nats_pm.push(c3.nats_cpu / c3.delivered.max(1) as f64 * 1e6);
        pg_pm.push(c3.pg_cpu / c3.delivered.max(1) as f64 * 1e6);
        pg1_pm.push(c1.pg_cpu / c1.delivered.max(1) as f64 * 1e6);
        same.extend(c3.same);
        cross.extend(c3.cross);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
            "k (median of {runs}) = {:.2} (target ≤ 1.2): nodes' CPU per delivery {:.1} µs with three nodes, {:.1} µs with one; nats-server {:.1} µs; PostgreSQL {:.1} µs (one node: {:.1} µs)",
            median(&mut k),
            median(&mut three_pm),
            median(&mut one_pm),
            median(&mut nats_pm),
            median(&mut pg_pm),
            median(&mut pg1_pm)
        );
    let (s50, s99, c50, c99) = (
        pct(&mut same, 0.5),
        pct(&mut same, 0.99),
        pct(&mut cross, 0.5),
        pct(&mut cross, 0.99),
    );
    println!(
            "latency same node p50 {s50:?} p99 {s99:?}; cross node p50 {c50:?} p99 {c99:?}; ratio p50 {:.2}, p99 {:.2} (target p99 ≤ 2.0)",
            c50.as_secs_f64() / s50.as_secs_f64().max(1e-9),
            c99.as_secs_f64() / s99.as_secs_f64().max(1e-9)
        );
}

/// 3: revocation latency on each path.
async fn revocations(admin: &str, nats: &Nats, trials: usize) {
    // 3: revocation latency on each path.
    let db = fresh_database(admin).await;
    let n1 = node(&db, Some(nats.addr)).await;
    let nats_proxy = Proxy::start(nats.addr).await;
    let pg_addr: SocketAddr = db
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|h| h.parse().ok())
        .expect("database host:port");
    let pg_proxy = Proxy::start(pg_addr).await;
    let n2 = node(
        &db.replace(&pg_addr.to_string(), &pg_proxy.addr.to_string()),
        Some(nats_proxy.addr),
    )
    .await;
    let s = site(n1.http, 3).await;
    for (path, cut_nats) in [("NATS notice", false), ("outbox poll (NATS cut)", true)] {
        nats_proxy.set(if cut_nats { Mode::Cut } else { Mode::Pass });
        let mut v: Vec<Duration> = Vec::new();
        for _ in 0..trials {
            v.push(revocation(&n1, &n2, &s).await);
        }
        let (p50, p99) = (pct(&mut v, 0.5), pct(&mut v, 0.99));
        println!("revocation across nodes via {path}: p50 {p50:?}, p99 {p99:?} of {trials} (target p99 < 1 s)");
    }
    // Fail closed: node 2 cut from both NATS and PostgreSQL, its device's client
    // disabled on node 1: how long node 2 goes on accepting the device's publishes.
    let mut fc = Vec::new();
    for _ in 0..trials.min(10) {
        nats_proxy.set(Mode::Pass);
        pg_proxy.set(Mode::Pass);
        until_connect_code(n2.mqtt, &s, 0, Duration::from_secs(30))
            .await
            .expect("served");
        if let Some(t) = fail_closed(&n1, &n2, &s, &nats_proxy, &pg_proxy).await {
            fc.push(t);
        }
    }
    nats_proxy.set(Mode::Pass);
    pg_proxy.set(Mode::Pass);
    let n_fc = fc.len();
    println!(
            "a node cut from NATS and PostgreSQL at a revocation fails closed (refuses publishes and connections) after p50 {:?}, p99 {:?} of {n_fc} (bound cluster.stale_after_ms = 750 ms)",
            pct(&mut fc, 0.5),
            pct(&mut fc, 0.99)
        );
    drop((n1, n2));
}

/// 4: kill -9 of a publishing node under load.
async fn kill(admin: &str, nats: &Nats, rate: f64, secs: f64) {
    // 4: kill -9 of a publishing node.
    let (db, mut nodes) = three_nodes(admin, nats.addr).await;
    let s = site(nodes[1].http, 3).await;
    let topic = format!("channels/{}/messages/kill", s.channel);
    let got: Vec<Arc<Mutex<Vec<u64>>>> = vec![Arc::default(), Arc::default()];
    for (i, g) in got.iter().enumerate() {
        let (c, mut el) = AsyncClient::new(opts(nodes[i + 1].mqtt, &format!("k{i}"), &s.devices[0]), 10_000);
        c.subscribe(topic.clone(), QoS::AtLeastOnce).await.expect("subscribe");
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.expect("sub") {
                break;
            }
        }
        let g = g.clone();
        tokio::spawn(async move {
            let _c = c;
            while let Ok(e) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = e {
                    if let Ok(mut v) = g.lock() {
                        v.push(u64::from_be_bytes(p.payload[..8].try_into().unwrap_or([0; 8])));
                    }
                }
            }
        });
    }
    // The publisher on node 0 counts what was acknowledged.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (c, mut el) = AsyncClient::new(opts(nodes[0].mqtt, "kpub", &s.devices[1]), 10_000);
    let a2 = acked.clone();
    // Publishes leave in the order they were asked for: each outgoing packet id takes the
    // next number queued, and its PUBACK names that number.
    let queued: Arc<Mutex<std::collections::VecDeque<u64>>> = Arc::default();
    let q2 = queued.clone();
    let driver = tokio::spawn(async move {
        let mut by_pkid: std::collections::HashMap<u16, u64> = std::collections::HashMap::new();
        while let Ok(e) = el.poll().await {
            match e {
                Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                    if let Some(n) = q2.lock().ok().and_then(|mut q| q.pop_front()) {
                        by_pkid.insert(pkid, n);
                    }
                }
                Event::Incoming(Packet::PubAck(a)) => {
                    if let (Some(n), Ok(mut acked)) = (by_pkid.remove(&a.pkid), a2.lock()) {
                        acked.push(n);
                    }
                }
                _ => {}
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let started = Instant::now();
    let mut n: u64 = 0;
    while started.elapsed() < Duration::from_secs_f64(secs / 2.0) {
        tick.tick().await;
        if let Ok(mut q) = queued.lock() {
            q.push_back(n);
        }
        let _ = c
            .publish(topic.clone(), QoS::AtLeastOnce, false, n.to_be_bytes().to_vec())
            .await;
        n += 1;
    }
    let killed = Instant::now();
    let mut victim = nodes.remove(0);
    let _ = victim.child.kill();
    let _ = victim.child.wait();
    driver.abort();
    let acked: HashSet<u64> = acked.lock().map(|v| v.iter().copied().collect()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut missing, mut dups) = (vec![0usize; 2], vec![0usize; 2]);
    let mut caught_up = None;
    loop {
        for (i, g) in got.iter().enumerate() {
            let v = g.lock().map(|v| v.clone()).unwrap_or_default();
            let set: HashSet<u64> = v.iter().copied().collect();
            missing[i] = acked.difference(&set).count();
            dups[i] = v.len() - set.len();
        }
        if missing.iter().all(|m| *m == 0) {
            caught_up = Some(killed.elapsed());
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored: HashSet<u64> = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&db, postgres::NoTls).expect("connect");
            c.query("SELECT payload FROM messages WHERE payload IS NOT NULL", &[])
                .expect("payloads")
                .into_iter()
                .filter_map(|r| {
                    r.get::<_, Vec<u8>>(0)
                        .get(..8)
                        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
                })
                .collect()
        })
        .await
        .expect("stored")
    };
    println!(
            "kill -9 under {rate} msg/s QoS 1: {} published, {} acknowledged; missing at the survivors {:?}, in the store {} (target 0); duplicates {:?}; survivors caught up {:?} after the kill",
            n,
            acked.len(),
            missing,
            acked.difference(&stored).count(),
            dups,
            caught_up
        );
    drop(nodes);
}
