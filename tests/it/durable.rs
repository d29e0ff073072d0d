//! Persistent sessions survive `kill -9` (issue #13): the real binary as a child process,
//! killed with SIGKILL and restarted on the same data directory. Each test runs at both
//! protocol levels: 3.1.1 clean session 0 and MQTT 5 session expiry 3600.

use crate::child::ChildServer;
use crate::raw::{framed, props, Connect, Raw};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A provisioned domain: a publisher and a subscriber client, one channel.
/// A domain with a channel, a publisher and a subscriber on a child server.
pub(crate) struct Fleet {
    pub(crate) token: String,
    pub(crate) domain: String,
    pub(crate) channel: String,
    /// (client id, secret)
    pub(crate) publisher: (String, String),
    pub(crate) subscriber: (String, String),
}

pub(crate) async fn call(
    http: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, format!("http://{http}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.json(&body).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post(http: std::net::SocketAddr, path: &str, token: Option<&str>, body: Value) -> Value {
    let (s, v) = call(http, reqwest::Method::POST, path, token, body).await;
    assert!(s == 201 || s == 200, "{path}: {s} {v}");
    v
}

impl Fleet {
    pub(crate) async fn provision(s: &ChildServer) -> Fleet {
        let token = s.admin_token().await;
        let d = post(
            s.http,
            "/domains",
            Some(&token),
            json!({"name": "durable", "route": "durable"}),
        )
        .await;
        let domain = d["id"].as_str().expect("domain").to_string();
        let mut dev = Vec::new();
        for name in ["publisher", "subscriber"] {
            let c = post(
                s.http,
                &format!("/{domain}/clients"),
                Some(&token),
                json!({"name": name}),
            )
            .await;
            dev.push((
                c["id"].as_str().expect("id").to_string(),
                c["credentials"]["secret"].as_str().expect("secret").to_string(),
            ));
        }
        let h = post(
            s.http,
            &format!("/{domain}/channels"),
            Some(&token),
            json!({"name": "c"}),
        )
        .await;
        let channel = h["id"].as_str().expect("channel").to_string();
        let subscriber = dev.pop().expect("subscriber");
        let publisher = dev.pop().expect("publisher");
        let f = Fleet {
            token,
            domain,
            channel,
            publisher,
            subscriber,
        };
        f.connect(s, &f.publisher.0, "publish").await;
        f.connect(s, &f.subscriber.0, "subscribe").await;
        f
    }

    async fn connect(&self, s: &ChildServer, client: &str, kind: &str) {
        post(
            s.http,
            &format!("/{}/channels/connect", self.domain),
            Some(&self.token),
            json!({"client_ids": [client], "channel_ids": [self.channel], "types": [kind]}),
        )
        .await;
    }

    pub(crate) fn topic(&self, sub: &str) -> String {
        format!("channels/{}/messages/{sub}", self.channel)
    }

    /// The subscriber's persistent CONNECT (3.1.1 clean session 0; 5: session expiry).
    pub(crate) fn sub_conn<'a>(&'a self, v5: bool, id: &'a str, expiry: u32) -> Connect<'a> {
        let mut c = Connect::new(v5, id, &self.subscriber.0, &self.subscriber.1);
        c.clean = false;
        if v5 {
            c.props = props::session_expiry(expiry);
        }
        c
    }

    pub(crate) async fn publisher(&self, s: &ChildServer, v5: bool) -> Raw {
        Raw::ok(s.mqtt, &Connect::new(v5, "pub", &self.publisher.0, &self.publisher.1)).await
    }
}

/// A device's side of QoS 2 receipt (method B of the specification): a QoS 2 PUBLISH is
/// handed to the application once per packet id until that id is released by PUBREL, so a
/// resent PUBLISH (DUP) is answered but not delivered again. Kept across connections.
#[derive(Default)]
struct Receiver {
    unreleased: HashSet<u16>,
    delivered: Vec<(u8, Vec<u8>)>,
}

impl Receiver {
    /// Handles the next packet; returns true for a PUBLISH handed to the application.
    /// With `ack`, acknowledges (PUBACK / PUBREC / PUBCOMP); without, leaves it unanswered.
    async fn step(&mut self, r: &mut Raw, ack: bool, wait: Duration) -> Option<bool> {
        let (first, body) = r.packet_within(wait).await.ok()??;
        match first >> 4 {
            3 => {
                let p = r.decode_publish(first, &body);
                let fresh = p.qos < 2 || self.unreleased.insert(p.pkid);
                if fresh {
                    self.delivered.push((p.qos, p.payload.clone()));
                }
                if ack {
                    match p.qos {
                        1 => r.send(&framed(0x40, &p.pkid.to_be_bytes())).await,
                        2 => r.send(&framed(0x50, &p.pkid.to_be_bytes())).await,
                        _ => {}
                    }
                }
                Some(fresh)
            }
            6 => {
                let pkid = u16::from_be_bytes([body[0], body[1]]);
                self.unreleased.remove(&pkid);
                r.send(&framed(0x70, &body[..2])).await;
                Some(false)
            }
            _ => Some(false),
        }
    }

    /// Receives until nothing comes for `quiet`.
    async fn drain(&mut self, r: &mut Raw, quiet: Duration) {
        while self.step(r, true, quiet).await.is_some() {}
    }

    /// Receives until `n` messages were handed over in total.
    async fn until(&mut self, r: &mut Raw, n: usize) {
        while self.delivered.len() < n {
            self.step(r, true, Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("only {} of {n} messages arrived", self.delivered.len()));
        }
    }
}

fn numbered(n: usize) -> Vec<u8> {
    format!("{n:05}").into_bytes()
}

/// Subscribes at QoS 1 (`q1`) and QoS 2 (`q2`), goes away; 1,000 messages are published and
/// acknowledged; the server is killed and restarted; the device finds its session, all 1,000
/// in order (QoS 2 exactly once), then live messages.
async fn queued_messages_survive(v5: bool) {
    let s = ChildServer::start(&[]).await;
    let f = Fleet::provision(&s).await;
    let id = if v5 { "durable-5" } else { "durable-4" };
    let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
    assert_eq!((code, present), (0, false));
    let granted = sub.subscribe(1, &[(&f.topic("q1"), 1), (&f.topic("q2"), 2)], &[]).await;
    assert_eq!(granted, vec![1, 2]);
    sub.disconnect().await;
    let mut p = f.publisher(&s, v5).await;
    for i in 0..1000usize {
        let qos = if i % 2 == 0 { 1 } else { 2 };
        let t = f.topic(if qos == 1 { "q1" } else { "q2" });
        let pkid = (i % 60_000 + 1) as u16;
        assert_eq!(p.publish(&t, &numbered(i), qos, false, pkid).await, 0);
    }
    let dir = s.kill9().await;
    let s = ChildServer::start_in(dir, &[]).await;
    s.wait_log("persistent sessions restored").await;
    // Published after the restart, before the device is back: queued behind the others.
    let mut p = f.publisher(&s, v5).await;
    for i in 1000..1010usize {
        let qos = if i % 2 == 0 { 1 } else { 2 };
        let t = f.topic(if qos == 1 { "q1" } else { "q2" });
        assert_eq!(p.publish(&t, &numbered(i), qos, false, i as u16).await, 0);
    }
    let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
    assert_eq!((code, present), (0, true), "session present after kill -9");
    let mut rx = Receiver::default();
    rx.until(&mut sub, 1010).await;
    let got: Vec<Vec<u8>> = rx.delivered.iter().map(|(_, p)| p.clone()).collect();
    let want: Vec<Vec<u8>> = (0..1010).map(numbered).collect();
    assert_eq!(got, want, "all 1,000 and the 10 published since the restart, in order");
    let qos_ok = rx
        .delivered
        .iter()
        .enumerate()
        .all(|(i, (q, _))| *q == if i % 2 == 0 { 1 } else { 2 });
    assert!(qos_ok);
    rx.drain(&mut sub, Duration::from_millis(300)).await;
    assert_eq!(rx.delivered.len(), 1010, "nothing twice");
    // Live messages continue, on both subscriptions.
    assert_eq!(p.publish(&f.topic("q2"), b"live", 2, false, 2000).await, 0);
    rx.until(&mut sub, 1011).await;
    assert_eq!(rx.delivered[1010], (2, b"live".to_vec()));
    // The queue was emptied by the acknowledgements: another restart delivers nothing again.
    sub.disconnect().await;
    let dir = s.kill9().await;
    let s = ChildServer::start_in(dir, &[]).await;
    let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
    assert_eq!((code, present), (0, true));
    rx.drain(&mut sub, Duration::from_millis(500)).await;
    assert_eq!(rx.delivered.len(), 1011, "nothing delivered twice");
}

#[tokio::test]
async fn queued_messages_survive_sigkill_311() {
    queued_messages_survive(false).await;
}

#[tokio::test]
async fn queued_messages_survive_sigkill_5() {
    queued_messages_survive(true).await;
}

/// The subscriber is connected and acknowledges only some deliveries when the server dies:
/// after restart and reconnect it gets every message not acknowledged yet (QoS 1 duplicates
/// allowed), and every QoS 2 message reaches the application exactly once.
async fn unacknowledged_deliveries_come_back(v5: bool) {
    let s = ChildServer::start(&[]).await;
    let f = Fleet::provision(&s).await;
    let id = if v5 { "slow-5" } else { "slow-4" };
    let mut sub = Raw::ok(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
    sub.subscribe(1, &[(&f.topic("q1"), 1), (&f.topic("q2"), 2)], &[]).await;
    let mut p = f.publisher(&s, v5).await;
    const N: usize = 200;
    for i in 0..N {
        let qos = if i % 2 == 0 { 1 } else { 2 };
        let t = f.topic(if qos == 1 { "q1" } else { "q2" });
        assert_eq!(p.publish(&t, &numbered(i), qos, false, (i + 1) as u16).await, 0);
    }
    // Every one of the 200 was acknowledged to the publisher. The subscriber acknowledges the
    // first 60 deliveries and only reads the rest.
    let mut rx = Receiver::default();
    let mut seen = 0;
    while seen < N {
        let ack = seen < 60;
        if rx.step(&mut sub, ack, Duration::from_secs(20)).await == Some(true) {
            seen += 1;
        }
    }
    // The QoS 2 handshakes of the acknowledged ones complete (PUBREL → PUBCOMP).
    while rx.step(&mut sub, false, Duration::from_millis(300)).await.is_some() {}
    let dir = s.kill9().await;
    let s = ChildServer::start_in(dir, &[]).await;
    let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
    assert_eq!((code, present), (0, true));
    rx.drain(&mut sub, Duration::from_secs(1)).await;
    let mut per: HashMap<Vec<u8>, usize> = HashMap::new();
    for (_, payload) in &rx.delivered {
        *per.entry(payload.clone()).or_default() += 1;
    }
    for i in 0..N {
        let n = per.get(&numbered(i)).copied().unwrap_or(0);
        if i % 2 == 1 {
            assert_eq!(n, 1, "QoS 2 message {i} delivered exactly once");
        } else {
            assert!(n >= 1, "QoS 1 message {i} delivered");
        }
    }
    assert!(rx.delivered.len() > N, "the unacknowledged QoS 1 deliveries came again");
}

#[tokio::test]
async fn unacknowledged_deliveries_come_back_after_sigkill_311() {
    unacknowledged_deliveries_come_back(false).await;
}

#[tokio::test]
async fn unacknowledged_deliveries_come_back_after_sigkill_5() {
    unacknowledged_deliveries_come_back(true).await;
}

/// A v5 session with expiry 2 s is gone after 3 s, live and across a restart; Clean Start
/// discards a stored session and its queue (both levels).
#[tokio::test]
async fn expiry_and_clean_start_apply_to_stored_sessions() {
    let s = ChildServer::start(&[]).await;
    let f = Fleet::provision(&s).await;
    for id in ["exp-live", "exp-restart"] {
        let mut sub = Raw::ok(s.mqtt, &f.sub_conn(true, id, 2)).await;
        sub.subscribe(1, &[(&f.topic("x"), 1)], &[]).await;
        // Closed by the server once the disconnect time is stored: the kill below cannot
        // come first.
        sub.disconnect_and_wait().await;
    }
    let mut p = f.publisher(&s, true).await;
    assert_eq!(p.publish(&f.topic("x"), b"m", 1, false, 1).await, 0);
    let dir = s.kill9().await;
    // The expiry is measured from the disconnect, also across the restart (the test is about
    // the clock: a 2 s session must be gone 3 s later).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = ChildServer::start_in(dir, &[]).await;
    let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(true, "exp-restart", 2)).await;
    assert_eq!((code, present), (0, false), "expired while the server was down");
    assert!(sub.no_message_within(Duration::from_millis(300)).await);
    sub.disconnect().await;
    let mut sub = Raw::ok(s.mqtt, &f.sub_conn(true, "exp-live", 2)).await;
    sub.subscribe(1, &[(&f.topic("x"), 1)], &[]).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(true, "exp-live", 2)).await;
    assert_eq!((code, present), (0, false), "expired while the server ran");

    // Clean Start (5) / clean session 1 (3.1.1) on a stored session with queued messages.
    for v5 in [false, true] {
        let id = if v5 { "clean-5" } else { "clean-4" };
        let mut sub = Raw::ok(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        sub.subscribe(1, &[(&f.topic("c"), 1)], &[]).await;
        sub.disconnect().await;
        let mut p = f.publisher(&s, v5).await;
        assert_eq!(p.publish(&f.topic("c"), b"queued", 1, false, 1).await, 0);
    }
    let dir = s.kill9().await;
    let s = ChildServer::start_in(dir, &[]).await;
    for v5 in [false, true] {
        let id = if v5 { "clean-5" } else { "clean-4" };
        let mut c = f.sub_conn(v5, id, 3600);
        c.clean = true;
        let (mut sub, code, present) = Raw::connect(s.mqtt, &c).await;
        assert_eq!((code, present), (0, false), "Clean Start discards the stored session");
        assert!(sub.no_message_within(Duration::from_millis(300)).await);
        sub.disconnect().await;
    }
    // And it is gone from the store, not only from memory.
    let dir = s.kill9().await;
    let s = ChildServer::start_in(dir, &[]).await;
    for v5 in [false, true] {
        let id = if v5 { "clean-5" } else { "clean-4" };
        let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        assert_eq!(
            (code, present),
            (0, v5),
            "{id}: only the new 5 session (expiry 3600) is stored"
        );
        assert!(sub.no_message_within(Duration::from_millis(300)).await, "{id}");
    }
}

/// A subscribe connection removed while the device was offline, and one removed while the
/// server was down: nothing from that channel is delivered after reconnect.
#[tokio::test]
async fn revocations_apply_to_restored_sessions() {
    let s = ChildServer::start(&[]).await;
    let f = Fleet::provision(&s).await;
    for v5 in [false, true] {
        let id = if v5 { "rev-5" } else { "rev-4" };
        let mut sub = Raw::ok(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        sub.subscribe(1, &[(&f.topic("r"), 1)], &[]).await;
        sub.disconnect().await;
    }
    let mut p = f.publisher(&s, true).await;
    for i in 0..10u16 {
        assert_eq!(
            p.publish(&f.topic("r"), &numbered(i as usize), 1, false, i + 1).await,
            0
        );
    }
    // Revoked while offline (the server runs): the subscriber loses its subscribe connection.
    let (st, v) = call(
        s.http,
        reqwest::Method::POST,
        &format!("/{}/channels/disconnect", f.domain),
        Some(&f.token),
        json!({"client_ids": [f.subscriber.0], "channel_ids": [f.channel], "types": ["subscribe"]}),
    )
    .await;
    assert!(st == 204 || st == 200, "{st} {v}");
    let dir = s.kill9().await;
    let s = ChildServer::start_in(dir, &[]).await;
    for v5 in [false, true] {
        let id = if v5 { "rev-5" } else { "rev-4" };
        let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        assert_eq!((code, present), (0, true));
        assert!(
            sub.no_message_within(Duration::from_millis(500)).await,
            "nothing from a channel the device lost while offline"
        );
        sub.disconnect().await;
    }

    // Revoked while the server was down: the connection is removed in the database directly
    // (the server is not running), then the server restarts.
    f.connect(&s, &f.subscriber.0, "subscribe").await;
    for v5 in [false, true] {
        let id = if v5 { "down-5" } else { "down-4" };
        let mut sub = Raw::ok(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        sub.subscribe(1, &[(&f.topic("d"), 1)], &[]).await;
        sub.disconnect().await;
    }
    let mut p = f.publisher(&s, true).await;
    for i in 0..10u16 {
        assert_eq!(
            p.publish(&f.topic("d"), &numbered(i as usize), 1, false, i + 1).await,
            0
        );
    }
    let dir = s.kill9().await;
    // Edited offline, as an operator would, on a blocking thread (as the server uses its store).
    let data = dir.path().join("data");
    let url = match crate::helpers::pg_database_for(&data) {
        Some(u) => storage::StoreUrl::Postgres(u),
        None => storage::StoreUrl::Sqlite(data.join("fluxgate.db")),
    };
    let (domain, subscriber, channel) = (f.domain.clone(), f.subscriber.0.clone(), f.channel.clone());
    let removed = tokio::task::spawn_blocking(move || {
        let store = storage::Store::open_url(&url, &Default::default()).expect("open the stopped server's database");
        store
            .disconnect(&domain, &[subscriber], &[channel], &[storage::ConnType::Subscribe])
            .expect("disconnect")
    })
    .await
    .expect("offline edit");
    assert_eq!(removed.len(), 1);
    let s = ChildServer::start_in(dir, &[]).await;
    for v5 in [false, true] {
        let id = if v5 { "down-5" } else { "down-4" };
        let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        assert_eq!((code, present), (0, true));
        assert!(
            sub.no_message_within(Duration::from_millis(500)).await,
            "nothing from a channel revoked while the server was down"
        );
    }
}

/// A persistent session's queue at its limit drops its oldest messages, says so once in the
/// log, keeps the newest (also in the store, across a restart); another session's queue is
/// unaffected.
#[tokio::test]
async fn a_full_queue_drops_its_oldest_and_others_are_unaffected() {
    let env = [("FLUXGATE_MQTT_MAX_QUEUED_MESSAGES", "20")];
    let s = ChildServer::start(&env).await;
    let f = Fleet::provision(&s).await;
    for (v5, id, t) in [(false, "full-4", "a"), (true, "other-5", "b")] {
        let mut sub = Raw::ok(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        sub.subscribe(1, &[(&f.topic(t), 1)], &[]).await;
        sub.disconnect().await;
    }
    let mut p = f.publisher(&s, true).await;
    for i in 0..50u16 {
        assert_eq!(
            p.publish(&f.topic("a"), &numbered(i as usize), 1, false, i + 1).await,
            0
        );
    }
    for i in 0..5u16 {
        assert_eq!(
            p.publish(&f.topic("b"), &numbered(i as usize), 1, false, i + 1).await,
            0
        );
    }
    let line = s.wait_log("persistent session queue full").await;
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(
        s.count_log("persistent session queue full"),
        1,
        "logged once per session"
    );
    let dir = s.kill9().await;
    let s = ChildServer::start_in(dir, &env).await;
    let (mut a, _, present) = Raw::connect(s.mqtt, &f.sub_conn(false, "full-4", 3600)).await;
    assert!(present);
    let mut rx = Receiver::default();
    rx.drain(&mut a, Duration::from_millis(500)).await;
    let got: Vec<Vec<u8>> = rx.delivered.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        got,
        (30..50).map(numbered).collect::<Vec<_>>(),
        "the newest 20, in order"
    );
    let (mut b, _, present) = Raw::connect(s.mqtt, &f.sub_conn(true, "other-5", 3600)).await;
    assert!(present);
    let mut rx = Receiver::default();
    rx.drain(&mut b, Duration::from_millis(500)).await;
    assert_eq!(rx.delivered.len(), 5, "the other session kept all of its own");
}

/// A SUBACK means the subscription is stored: killed right after it (the device still
/// connected, nothing published yet), the server restarts with the subscription in place; a
/// retained message is delivered after the SUBACK, not before it.
#[tokio::test]
async fn an_acknowledged_subscription_survives_an_immediate_sigkill() {
    let s = ChildServer::start(&[]).await;
    let f = Fleet::provision(&s).await;
    let mut p = f.publisher(&s, true).await;
    assert_eq!(p.publish(&f.topic("kept"), b"retained", 1, true, 1).await, 0);
    let mut subs = Vec::new();
    for v5 in [false, true] {
        let id = if v5 { "acked-5" } else { "acked-4" };
        let mut sub = Raw::ok(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        // `subscribe` asserts that the SUBACK is the next packet (before the retained one).
        assert_eq!(sub.subscribe(1, &[(&f.topic("kept"), 1)], &[]).await, vec![1]);
        let m = sub.message().await;
        assert_eq!((m.payload.as_slice(), m.retain), (&b"retained"[..], true));
        subs.push(sub);
    }
    let dir = s.kill9().await;
    drop(subs);
    let s = ChildServer::start_in(dir, &[]).await;
    let mut p = f.publisher(&s, true).await;
    assert_eq!(p.publish(&f.topic("kept"), b"after", 1, false, 1).await, 0);
    for v5 in [false, true] {
        let id = if v5 { "acked-5" } else { "acked-4" };
        let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        assert_eq!((code, present), (0, true), "{id}");
        // (The retained copy may come once more first if the PUBACK sent just before the kill
        // was not processed: QoS 1 allows that.)
        let mut rx = Receiver::default();
        while !rx.delivered.iter().any(|(_, p)| p == b"after") {
            rx.until(&mut sub, rx.delivered.len() + 1).await;
        }
        assert!(rx.delivered.len() <= 2, "{id}: {:?}", rx.delivered);
    }
}
