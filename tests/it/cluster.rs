//! Cluster mode (#27): real `fluxgate serve` nodes on one PostgreSQL database and one
//! nats-server, both started by the test on loopback. Skipped with a notice without
//! PostgreSQL's server or nats-server (`.ci/run` installs both and requires them).

use crate::child::ChildServer;
use crate::cluster_env::{refused_start, set_both, ClusterEnv, Site};
use crate::proxy::Mode;
use crate::raw::{framed, props, Pub, Raw};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Subscribes `r` to the whole channel at QoS 2; asserts it was granted.
async fn subscribe_all(r: &mut Raw, site: &Site) {
    let codes = r.subscribe(1, &[(site.all().as_str(), 2)], &[]).await;
    assert_eq!(codes, vec![2], "granted QoS 2");
}

/// Receives `n` PUBLISH packets (acknowledging each).
async fn receive(r: &mut Raw, n: usize) -> Vec<Pub> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(r.message().await);
    }
    out
}

/// Reads messages until one with `payload` arrives (skipping others); returns it.
async fn until(r: &mut Raw, payload: &[u8]) -> Pub {
    loop {
        let p = r.message().await;
        if p.payload == payload {
            return p;
        }
    }
}

/// The user property (key, value) of a v5 PUBLISH, if any.
fn user_property(p: &Pub) -> Option<(String, String)> {
    let v = p.prop(0x26)?;
    let kl = u16::from_be_bytes([v[0], v[1]]) as usize;
    let key = String::from_utf8_lossy(&v[2..2 + kl]).to_string();
    let vl = u16::from_be_bytes([v[2 + kl], v[3 + kl]]) as usize;
    let val = String::from_utf8_lossy(&v[4 + kl..4 + kl + vl]).to_string();
    Some((key, val))
}

/// Publishes, then reads a live view's events: the SSE stream of `GET …/messages/live`.
struct LiveView {
    resp: reqwest::Response,
    buf: String,
}

impl LiveView {
    async fn open(s: &ChildServer, site: &Site) -> LiveView {
        let resp = reqwest::Client::new()
            .get(format!(
                "http://{}/{}/channels/{}/messages/live",
                s.http, site.domain, site.channel
            ))
            .bearer_auth(&site.token)
            .send()
            .await
            .expect("live view");
        assert_eq!(resp.status().as_u16(), 200);
        LiveView {
            resp,
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data:")).collect();
                if event.lines().any(|l| l == "event:message") && !data.is_empty() {
                    return serde_json::from_str(&data.join("\n")).expect("event JSON");
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.resp.chunk())
                .await
                .expect("an event in time")
                .expect("stream");
            self.buf
                .push_str(&String::from_utf8_lossy(&chunk.expect("the stream ended")));
        }
    }
}

/// Test 1: three nodes; a publisher on node 1, subscribers on nodes 1, 2 and 3 at both
/// protocol levels. Each subscriber gets each message exactly once, in publish order, at the
/// publisher's QoS (0, 1, 2), v5 properties intact (message expiry counting down). An HTTP
/// message published on node 2 reaches MQTT on node 3 and a live view on node 1. A retained
/// message set on node 1 is what a new subscriber on node 3 gets; one set on node 2 replaces
/// it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_message_once_in_order_with_its_properties() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let nodes = [&n1, &n2, &n3];
    let site = Site::provision(&n2, 2).await;

    // Two subscribers per node: MQTT 5 and 3.1.1.
    let mut subs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for v5 in [true, false] {
            let id = format!("sub-{i}-{v5}");
            let mut r = Raw::ok(n.mqtt, &site.connect(v5, &id, 0)).await;
            subscribe_all(&mut r, &site).await;
            subs.push(r);
        }
    }
    let mut live = LiveView::open(&n1, &site).await;

    // The publisher on node 1: 10 messages at each QoS, with v5 properties.
    let mut publisher = Raw::ok(n1.mqtt, &site.connect(true, "pub-1", 1)).await;
    let mut props = props::user("origin", "node-1");
    props.extend(props::content_type("text/plain"));
    props.extend(props::expiry(300));
    let topic = site.topic("t");
    let mut sent = Vec::new();
    let mut pkid = 1;
    for qos in 0..=2u8 {
        for i in 0..10 {
            let payload = format!("q{qos}-{i}");
            publisher
                .publish_with(&topic, payload.as_bytes(), qos, false, pkid, &props)
                .await;
            if qos > 0 {
                // The acknowledgement (and, for QoS 2, the release).
                loop {
                    let (first, body) = publisher.packet().await.expect("acknowledgement");
                    match first >> 4 {
                        4 => break,
                        5 => publisher.send(&framed(0x62, &body[..2])).await,
                        7 => break,
                        _ => {}
                    }
                }
                pkid += 1;
            }
            sent.push((qos, payload));
        }
    }
    for (k, r) in subs.iter_mut().enumerate() {
        let got = receive(r, sent.len()).await;
        let seen: Vec<(u8, String)> = got
            .iter()
            .map(|p| (p.qos, String::from_utf8_lossy(&p.payload).to_string()))
            .collect();
        assert_eq!(seen, sent, "subscriber {k}: every message once, in order, at its QoS");
        assert!(r.no_message_within(Duration::from_millis(300)).await, "no duplicate");
        if r.v5 {
            for p in &got {
                assert_eq!(user_property(p), Some(("origin".into(), "node-1".into())));
                assert_eq!(p.prop(0x03).map(|v| v[2..].to_vec()), Some(b"text/plain".to_vec()));
                let left = p.prop(0x02).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                assert!(
                    matches!(left, Some(s) if s <= 300 && s > 250),
                    "expiry counts down: {left:?}"
                );
            }
        }
    }
    // The live view on node 1 saw the MQTT messages too (node 1 accepted them).
    assert_eq!(live.next().await["payload"], json!("q0-0"));

    // HTTP on node 2 → MQTT on node 3 and the live view on node 1.
    let (_, secret) = &site.devices[1];
    let r = reqwest::Client::new()
        .post(format!("http://{}/http/channels/{}/messages/h", n2.http, site.channel))
        .header("Authorization", format!("Client {secret}"))
        .header("Content-Type", "application/json")
        .body(r#"{"via":"http"}"#)
        .send()
        .await
        .expect("http publish");
    assert_eq!(r.status().as_u16(), 202);
    let on3 = subs[4].message().await;
    assert_eq!(
        (on3.topic.as_str(), on3.payload.as_slice()),
        (site.topic("h").as_str(), &br#"{"via":"http"}"#[..])
    );
    loop {
        let e = live.next().await;
        if e["subtopic"] == json!("h") {
            assert_eq!(e["protocol"], json!("http"));
            break;
        }
    }

    // Retained: set on node 1; a subscriber on node 3 sees it live first (so node 3 has it),
    // then a new subscriber there gets it from the retained set.
    let ret = site.topic("ret");
    assert_eq!(publisher.publish(&ret, b"r1", 1, true, 900).await, 0);
    until(&mut subs[4], b"r1").await;
    let mut fresh3 = Raw::ok(n3.mqtt, &site.connect(true, "fresh-3", 0)).await;
    fresh3.subscribe(1, &[(ret.as_str(), 1)], &[]).await;
    let p = fresh3.message().await;
    assert_eq!((p.payload.as_slice(), p.retain), (&b"r1"[..], true));
    // Replaced from node 2: node 1 and node 3 hold the new one.
    let mut p2 = Raw::ok(n2.mqtt, &site.connect(false, "pub-2", 1)).await;
    assert_eq!(p2.publish(&ret, b"r2", 1, true, 901).await, 0);
    until(&mut subs[0], b"r2").await;
    until(&mut subs[4], b"r2").await;
    for n in [&n1, &n3] {
        let mut fresh = Raw::ok(n.mqtt, &site.connect(false, "fresh-x", 0)).await;
        fresh.subscribe(1, &[(ret.as_str(), 1)], &[]).await;
        let p = fresh.message().await;
        assert_eq!((p.payload.as_slice(), p.retain), (&b"r2"[..], true));
        fresh.disconnect().await;
    }
}

/// Test 2: 10,000 QoS 1 messages from node 1 with a subscriber on every node: exactly
/// 10,000 per subscriber and 10,000 stored rows (no loop between nodes, no duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_reach_each_node_once_and_are_stored_once() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let mut subs = Vec::new();
    for (i, n) in [&n1, &n2, &n3].iter().enumerate() {
        let mut r = Raw::ok(n.mqtt, &site.connect(true, &format!("sub-{i}"), 0)).await;
        subscribe_all(&mut r, &site).await;
        subs.push(r);
    }
    const N: usize = 10_000;
    const WINDOW: usize = 50;
    let topic = site.topic("bulk");
    let mut publisher = Raw::ok(n1.mqtt, &site.connect(true, "bulk-pub", 1)).await;
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                let mut seen = HashSet::new();
                let mut dup = 0;
                while seen.len() < N {
                    let p = r.message().await;
                    if !seen.insert(p.payload) {
                        dup += 1;
                    }
                }
                let quiet = r.no_message_within(Duration::from_millis(500)).await;
                (seen.len(), dup, quiet)
            })
        })
        .collect();
    // A window of QoS 1 messages in flight at a time.
    let mut acked = 0;
    for i in 0..N {
        let pkid = (i % 60_000 + 1) as u16;
        publisher
            .publish_with(&topic, format!("m{i}").as_bytes(), 1, false, pkid, &[])
            .await;
        while i + 1 - acked >= WINDOW || (i + 1 == N && acked < N) {
            let (first, _) = publisher.packet().await.expect("PUBACK");
            if first >> 4 == 4 {
                acked += 1;
            }
        }
    }
    for r in receivers {
        let (n, dup, quiet) = r.await.expect("receiver");
        assert_eq!((n, dup), (N, 0), "every message once");
        assert!(quiet, "nothing more");
    }
    let rows = count_rows(&env, "messages").await;
    assert_eq!(rows, N as i64, "stored once, by the node that accepted it");
}

/// Rows of `table` in the cluster's database.
async fn count_rows(env: &ClusterEnv, table: &str) -> i64 {
    let (url, sql) = (env.db.url().to_string(), format!("SELECT count(*) FROM {table}"));
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
        c.query_one(&sql, &[]).expect("count").get::<_, i64>(0)
    })
    .await
    .expect("count")
}

/// Test 8: three nodes started at once on an empty database: the schema is made once, there
/// is one super-admin, one token key (a token from node 1 works on node 3) and one CA (every
/// node serves the same CA certificate); a second live node with a taken node id is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_together_share_one_admin_one_key_one_ca_and_refuse_a_duplicate_id() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let token = n1.admin_token().await;
    for n in [&n2, &n3] {
        let (s, v) = crate::durable::call(n.http, Method::GET, "/users/profile", Some(&token), Value::Null).await;
        assert_eq!(s, 200, "a token from node 1 works here: {v}");
    }
    let (s, v) = crate::durable::call(n3.http, Method::GET, "/users?limit=100", Some(&token), Value::Null).await;
    assert_eq!(s, 200, "{v}");
    let admins = v["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter(|u| u["role"] == "admin")
        .count();
    assert_eq!(admins, 1, "one super-admin: {v}");
    let mut cas = HashSet::new();
    for n in [&n1, &n2, &n3] {
        let r = reqwest::get(format!("http://{}/certs/ca", n.http)).await.expect("ca");
        assert_eq!(r.status().as_u16(), 200);
        cas.insert(r.text().await.expect("pem"));
    }
    assert_eq!(cas.len(), 1, "one CA for the cluster");
    let versions = count_rows(&env, "schema_version").await;
    assert_eq!(versions, 1, "one schema version row");

    // Node 2's id, taken by another process while node 2 lives: refused with a clear message.
    let id = crate::cluster_env::node_id(&n2);
    let dir = tempfile::tempdir().expect("dir");
    let nats = format!("nats://{}", env.nats.addr());
    let err = refused_start(
        &[
            ("FLUXGATE_STORE_URL", env.db.url()),
            ("FLUXGATE_CLUSTER_NATS_URL", nats.as_str()),
            ("FLUXGATE_CLUSTER_NODE_ID", id.trim()),
        ],
        dir.path(),
    )
    .await;
    assert!(err.contains("in use by a live node"), "{err}");
    assert!(err.contains(id.trim()), "names the id: {err}");
}

/// Test 4 (part): revocations made on node 1 reach a device on node 2 within a second,
/// through NATS and, with node 2's NATS connection cut, through the outbox alone; with both
/// of node 2's links cut it fails closed (CONNECT refused with "server unavailable"), and
/// serves again once they are back. A re-enable after a disable stays enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_other_nodes_within_a_second_and_a_cut_off_node_fails_closed() {
    let Some(env) = ClusterEnv::new() else { return };
    let n1 = env.node(&[]).await;
    let (n2, nats2, pg2) = env.proxied_node().await;
    let site = Site::provision(&n1, 1).await;
    let (client, _) = site.devices[0].clone();
    let disable = format!("/{}/clients/{client}/disable", site.domain);
    let enable = format!("/{}/clients/{client}/enable", site.domain);
    let mut latencies = Vec::new();
    for path in ["nats", "outbox"] {
        if path == "outbox" {
            nats2.set(Mode::Cut);
        }
        let trials = if path == "nats" { 50 } else { 20 };
        for _ in 0..trials {
            let mut dev = Raw::ok(n2.mqtt, &site.connect(true, "dev", 0)).await;
            let t = Instant::now();
            let (s, v) = site.call(&n1, Method::POST, &disable, Value::Null).await;
            assert_eq!(s, 200, "{v}");
            let code = tokio::time::timeout(Duration::from_secs(5), dev.closed())
                .await
                .expect("closed in time");
            latencies.push(t.elapsed());
            assert_eq!(code, Some(0x98), "administrative action");
            let (s, _) = site.call(&n1, Method::POST, &enable, Value::Null).await;
            assert_eq!(s, 200);
        }
        latencies.sort();
        let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        println!("revocation across nodes via {path}: p99 of {trials}: {p99:?}");
        assert!(p99 < Duration::from_secs(1), "{path}: {latencies:?}");
        latencies.clear();
    }
    // Re-enabled: the device is served on node 2 (through the outbox; NATS still cut).
    let mut dev = Raw::ok(n2.mqtt, &site.connect(true, "dev", 0)).await;
    assert_eq!(dev.publish(&site.topic("x"), b"ok", 1, false, 1).await, 0);
    dev.disconnect().await;
    // Both links cut: node 2 cannot confirm it is current and refuses new connections.
    set_both(&nats2, &pg2, Mode::Cut);
    let t = Instant::now();
    loop {
        let (_, code, _) = Raw::connect(n2.mqtt, &site.connect(true, "dev", 0)).await;
        if code == 0x88 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "failed closed within the bound");
        tokio::task::yield_now().await;
    }
    println!("fail closed after {:?}", t.elapsed());
    set_both(&nats2, &pg2, Mode::Pass);
    let t = Instant::now();
    loop {
        let (_, code, _) = Raw::connect(n2.mqtt, &site.connect(true, "dev", 0)).await;
        if code == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "served again once its links are back"
        );
        tokio::task::yield_now().await;
    }
}

/// Test 5: a device connecting to node 2 with the id it holds on node 1 takes the session
/// over (node 1's connection gets DISCONNECT 0x8E); of two simultaneous connects, exactly
/// one survives; presence on node 3 shows one connection, on the surviving node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_id_is_live_on_one_node_only() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2, n3) = tokio::join!(env.node(&[]), env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 1).await;
    let mut on1 = Raw::ok(n1.mqtt, &site.connect(true, "dev", 0)).await;
    let mut on2 = Raw::ok(n2.mqtt, &site.connect(true, "dev", 0)).await;
    assert_eq!(on1.closed().await, Some(0x8E), "taken over by node 2");
    assert!(on2.no_message_within(Duration::from_millis(300)).await);
    on2.disconnect_and_wait().await;

    let node_of = crate::cluster_env::node_id;
    for round in 0..5 {
        let id = format!("race-{round}");
        let (ca, cb) = (site.connect(true, &id, 0), site.connect(true, &id, 0));
        let (a, b) = tokio::join!(Raw::ok(n1.mqtt, &ca), Raw::ok(n2.mqtt, &cb));
        // One of them is told it was taken over; the other stays.
        let mut conns = [(a, node_of(&n1)), (b, node_of(&n2))];
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            let [(a, _), (b, _)] = &mut conns;
            tokio::select! {
                c = a.closed() => (0, c),
                c = b.closed() => (1, c),
            }
        })
        .await
        .expect("one connection ends");
        assert_eq!(ended.1, Some(0x8E));
        let survivor = 1 - ended.0;
        assert!(
            conns[survivor].0.no_message_within(Duration::from_millis(500)).await,
            "the other survives"
        );
        // Presence, read on node 3: one connection, on the survivor's node.
        let want = conns[survivor].1.clone();
        let path = format!("/{}/clients/{}", site.domain, site.devices[0].0);
        let t = Instant::now();
        loop {
            let (s, v) = site.call(&n3, Method::GET, &path, Value::Null).await;
            assert_eq!(s, 200);
            let live: Vec<&Value> = v["sessions"]
                .as_array()
                .map(|a| a.iter().filter(|s| s["client_id"] == json!(id)).collect())
                .unwrap_or_default();
            if live.len() == 1 && live[0]["node"] == json!(want) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "presence: {v}");
            tokio::task::yield_now().await;
        }
        conns[survivor].0.disconnect_and_wait().await;
    }
}

/// Test 4 (every kind): each revocation made on node 1 reaches a device on node 2 within a
/// second: a client disabled, deleted or re-keyed and a domain disabled end its connection
/// (0x98); a connection removed or a channel disabled refuse its next publish (0x87).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_revocation_reaches_a_device_on_another_node() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2) = tokio::join!(env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 6).await;
    let d = site.domain.clone();
    let closing: [(usize, Method, String, Value); 3] = [
        (
            0,
            Method::POST,
            format!("/{d}/clients/{}/disable", site.devices[0].0),
            Value::Null,
        ),
        (
            1,
            Method::DELETE,
            format!("/{d}/clients/{}", site.devices[1].0),
            Value::Null,
        ),
        (
            2,
            Method::PATCH,
            format!("/{d}/clients/{}/secret", site.devices[2].0),
            json!({"secret": "a-brand-new-secret-123"}),
        ),
    ];
    for (dev, method, path, body) in closing {
        let mut r = Raw::ok(n2.mqtt, &site.connect(true, &format!("k{dev}"), dev)).await;
        let t = Instant::now();
        let (s, v) = site.call(&n1, method, &path, body).await;
        assert!(s == 200 || s == 204, "{path}: {s} {v}");
        let code = tokio::time::timeout(Duration::from_secs(5), r.closed())
            .await
            .expect("closed");
        assert_eq!(code, Some(0x98), "{path}");
        assert!(t.elapsed() < Duration::from_secs(1), "{path}: {:?}", t.elapsed());
    }
    // A connection removed, then a channel disabled: the next publish is refused.
    let (dev3, dev4) = (&site.devices[3].0, &site.devices[4].0);
    let refusing = [
        (
            3,
            format!("/{d}/channels/disconnect"),
            json!({"client_ids": [dev3], "channel_ids": [site.channel], "types": ["publish"]}),
        ),
        (4, format!("/{d}/channels/{}/disable", site.channel), Value::Null),
    ];
    let _ = dev4;
    for (dev, path, body) in refusing {
        let mut r = Raw::ok(n2.mqtt, &site.connect(true, &format!("k{dev}"), dev)).await;
        assert_eq!(r.publish(&site.topic("x"), b"before", 1, false, 1).await, 0);
        let t = Instant::now();
        let (s, v) = site.call(&n1, Method::POST, &path, body).await;
        assert!(s == 200 || s == 204, "{path}: {s} {v}");
        let mut pkid = 2;
        loop {
            let code = r.publish(&site.topic("x"), b"after", 1, false, pkid).await;
            if code == 0x87 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{path}: still accepted after {:?}",
                t.elapsed()
            );
            pkid += 1;
            tokio::task::yield_now().await;
        }
    }
    // The domain disabled: the last device's connection ends.
    let mut r = Raw::ok(n2.mqtt, &site.connect(true, "k5", 5)).await;
    let t = Instant::now();
    let (s, v) = site
        .call(&n1, Method::POST, &format!("/domains/{d}/disable"), Value::Null)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), r.closed())
            .await
            .expect("closed"),
        Some(0x98)
    );
    assert!(t.elapsed() < Duration::from_secs(1), "domain: {:?}", t.elapsed());
}

/// A node that dies (kill -9) is shown offline by the others within the node timeout, and
/// its devices are served on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_devices_are_shown_offline_and_served_elsewhere() {
    let Some(env) = ClusterEnv::new() else { return };
    let timeout = [("FLUXGATE_CLUSTER_NODE_TIMEOUT_MS", "3000")];
    let (n1, n2) = tokio::join!(env.node(&timeout), env.node(&timeout));
    let site = Site::provision(&n1, 1).await;
    let path = format!("/{}/clients/{}", site.domain, site.devices[0].0);
    let _on2 = Raw::ok(n2.mqtt, &site.connect(true, "dies-with-n2", 0)).await;
    let connected = |v: &Value| v["connected"] == json!(true);
    let t = Instant::now();
    loop {
        let (_, v) = site.call(&n1, Method::GET, &path, Value::Null).await;
        if connected(&v) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "shown online: {v}");
        tokio::task::yield_now().await;
    }
    let _dir = n2.kill9().await;
    let t = Instant::now();
    loop {
        let (_, v) = site.call(&n1, Method::GET, &path, Value::Null).await;
        if !connected(&v) && v["sessions"].as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "shown offline in time: {v}");
        tokio::task::yield_now().await;
    }
    println!("a dead node's devices shown offline after {:?}", t.elapsed());
    let mut back = Raw::ok(n1.mqtt, &site.connect(true, "dies-with-n2", 0)).await;
    assert_eq!(back.publish(&site.topic("x"), b"here", 1, false, 1).await, 0);
}
