//! The MQTT engine (issue #12): regression tests for the defects of the relay design and the
//! normative statements the front implements, at both protocol levels, with a byte-exact
//! client (`raw`) and rumqttc.

use crate::helpers::TestApp;
use crate::raw::{framed, props, put_str, Connect, Raw};
use reqwest::Method;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A domain with an owner token, a channel and one client with both rights on it.
pub(crate) struct Env {
    pub app: TestApp,
    pub t: String,
    pub d: String,
    pub h: String,
    pub c: String,
    pub s: String,
}

pub(crate) async fn env() -> Env {
    env_on(TestApp::spawn().await).await
}

/// The same, on a server started with a changed configuration.
pub(crate) async fn env_with(change: impl FnOnce(&mut fluxgate::config::Config)) -> Env {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = crate::helpers::test_config(dir.path());
    change(&mut cfg);
    env_on(TestApp::spawn_with(dir, cfg).await).await
}

async fn env_on(app: TestApp) -> Env {
    let (_, t) = app.user("engineowner").await;
    let d = app.domain(&t, "engine").await;
    let h = app.channel(&t, &d, "ch").await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
    Env { app, t, d, h, c, s }
}

impl Env {
    pub fn topic(&self, sub: &str) -> String {
        format!("channels/{}/messages/{sub}", self.h)
    }
    pub fn conn<'a>(&'a self, v5: bool, id: &'a str) -> Connect<'a> {
        Connect::new(v5, id, &self.c, &self.s)
    }
    pub async fn raw(&self, v5: bool, id: &str) -> Raw {
        Raw::ok(self.app.mqtt_addr, &self.conn(v5, id)).await
    }
}

/// Both levels exchange a message (the broker still serves everybody).
pub(crate) async fn exchange(e: &Env, tag: &str) {
    for v5 in [false, true] {
        let id = format!("check-{tag}-{v5}");
        let mut r = e.raw(v5, &id).await;
        let t = e.topic(&id);
        assert_eq!(r.subscribe(1, &[(&t, 1)], &[]).await, vec![1]);
        assert_eq!(r.publish(&t, b"alive", 1, false, 2).await, 0);
        assert_eq!(r.message().await.payload, b"alive".to_vec());
        r.disconnect().await;
    }
}

#[tokio::test]
async fn reconnect_churn_leaves_every_client_able_to_connect() {
    let e = env().await;
    let addr = e.app.mqtt_addr;
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (c, s) = (e.c.clone(), e.s.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..1000 {
                let id = format!("churn-{}", (task + i) % 4);
                let v5 = i % 2 == 0;
                let mut r = Raw::open(addr, v5).await;
                r.send(&Connect::new(v5, &id, &c, &s).encode()).await;
                // CONNACK, maybe a takeover DISCONNECT; then DISCONNECT and close, or just close.
                if let Ok(Some((first, _))) = r.packet_within(Duration::from_secs(20)).await {
                    assert_eq!(first >> 4, 2, "CONNACK");
                }
                if i % 3 != 0 {
                    r.disconnect().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("churn task");
    }
    exchange(&e, "after-churn").await;
    assert!(e.app.broker_metrics.connections_total.load(Ordering::Relaxed) >= 8000);
}

#[tokio::test]
async fn v5_properties_reach_v4_and_v5_subscribers_and_nobody_is_locked_out() {
    let e = env().await;
    let t = e.topic("props");
    let mut s4 = e.raw(false, "sub-v4").await;
    let mut s5 = e.raw(true, "sub-v5").await;
    assert_eq!(s4.subscribe(1, &[(&t, 1)], &[]).await, vec![1]);
    assert_eq!(s5.subscribe(1, &[(&t, 1)], &[]).await, vec![1]);
    let mut p = e.raw(true, "pub-v5").await;
    let mut pr = props::user("k", "v");
    pr.extend(props::content_type("application/json"));
    pr.extend(props::expiry(300));
    pr.extend(props::alias(3));
    p.publish_with(&t, b"{\"x\":1}", 1, false, 1, &pr).await;
    // The alias alone, a second time.
    p.publish_with("", b"{\"x\":2}", 1, false, 2, &props::alias(3)).await;
    for (i, want) in [(0, &b"{\"x\":1}"[..]), (1, &b"{\"x\":2}"[..])] {
        let m4 = s4.message().await;
        assert_eq!((m4.topic.as_str(), &m4.payload[..]), (t.as_str(), want), "3.1.1 #{i}");
        let m5 = s5.message().await;
        assert_eq!((m5.topic.as_str(), &m5.payload[..]), (t.as_str(), want), "5 #{i}");
        if i == 0 {
            let ids = m5.prop_ids();
            assert!(
                ids.contains(&0x26) && ids.contains(&0x03) && ids.contains(&0x02),
                "{ids:?}"
            );
            assert!(!ids.contains(&0x23), "the client's alias is not passed on");
        }
    }
    exchange(&e, "after-props").await;
}

#[tokio::test]
async fn client_ids_with_special_characters_never_collide() {
    let e = env().await;
    let (c2, s2) = e.app.device(&e.t, &e.d).await;
    e.app.connect(&e.t, &e.d, &c2, &e.h, &["publish", "subscribe"]).await;
    let ids = ["a/b", "a+b", "a#b", "$a", "a:b", "c:a:b", "a%3Ab"];
    for v5 in [false, true] {
        let mut conns = Vec::new();
        for id in ids {
            conns.push(e.raw(v5, id).await);
            // The other device with the same MQTT client id is another session.
            conns.push(Raw::ok(e.app.mqtt_addr, &Connect::new(v5, id, &c2, &s2)).await);
        }
        // All are alive: each answers a PINGREQ.
        for c in conns.iter_mut() {
            c.send(&[0xC0, 0]).await;
            let (first, _) = c.packet().await.expect("PINGRESP");
            assert_eq!(first, 0xD0);
        }
        // Taking over "a:b" closes only that session of that device.
        let mut again = e.raw(v5, "a:b").await;
        let old = &mut conns[8];
        let why = old.closed().await;
        if v5 {
            assert_eq!(why, Some(0x8E), "session taken over");
        }
        again.send(&[0xC0, 0]).await;
        assert_eq!(again.packet().await.expect("ping").0, 0xD0);
        for (i, c) in conns.iter_mut().enumerate() {
            if i != 8 {
                c.send(&[0xC0, 0]).await;
                assert_eq!(c.packet().await.expect("still alive").0, 0xD0, "connection {i}");
            }
        }
    }
}

#[tokio::test]
async fn a_topic_alias_cannot_outlive_a_revoked_publish_right() {
    let e = env().await;
    let t = e.topic("alias");
    let mut sub = e.raw(true, "alias-sub").await;
    sub.subscribe(1, &[(&t, 1)], &[]).await;
    let mut p = e.raw(true, "alias-pub").await;
    p.publish_with(&t, b"before", 1, false, 1, &props::alias(1)).await;
    assert_eq!(sub.message().await.payload, b"before".to_vec());
    let (st, _) = e
        .app
        .post(
            &format!("/{}/channels/disconnect", e.d),
            Some(&e.t),
            serde_json::json!({"client_ids": [e.c], "channel_ids": [e.h], "types": ["publish"]}),
        )
        .await;
    assert_eq!(st, 204);
    // The revocation reaches the session asynchronously: publish through the alias until
    // refused (bounded), then never again accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut pkid = 2;
    loop {
        p.publish_with("", b"after", 1, false, pkid, &props::alias(1)).await;
        let code = loop {
            let (first, body) = p.packet().await.expect("PUBACK");
            if first >> 4 == 4 {
                break body.get(2).copied().unwrap_or(0);
            }
        };
        if code == 0x87 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "publish through the alias still accepted"
        );
        pkid += 1;
    }
    for i in 0..5 {
        assert_eq!(
            p.publish_with("", b"again", 1, false, 1000 + i, &props::alias(1)).await,
            ()
        );
        let (first, body) = p.packet().await.expect("PUBACK");
        assert_eq!((first >> 4, body.get(2).copied()), (4, Some(0x87)));
    }
}

#[tokio::test]
async fn wills_follow_the_rights_at_the_moment_they_fire() {
    let e = env().await;
    let wt = e.topic("will");
    let mut watcher = e.raw(false, "will-watcher").await;
    watcher.subscribe(1, &[(&wt, 0)], &[]).await;

    // Control: an abnormal end publishes the will.
    let mut c = e.conn(false, "willer");
    c.will = Some((&wt, b"gone", 0, false, vec![]));
    let w = Raw::ok(e.app.mqtt_addr, &c).await;
    drop(w);
    assert_eq!(watcher.message().await.payload, b"gone".to_vec());

    // A client whose publish connection was removed: no will.
    let (c2, s2) = e.app.device(&e.t, &e.d).await;
    e.app.connect(&e.t, &e.d, &c2, &e.h, &["publish"]).await;
    let mut wc = Connect::new(false, "willer2", &c2, &s2);
    wc.will = Some((&wt, b"should not", 0, false, vec![]));
    let w2 = Raw::ok(e.app.mqtt_addr, &wc).await;
    let (st, _) = e
        .app
        .post(
            &format!("/{}/channels/disconnect", e.d),
            Some(&e.t),
            serde_json::json!({"client_ids": [c2], "channel_ids": [e.h], "types": ["publish"]}),
        )
        .await;
    assert_eq!(st, 204);
    let suppressed = e.app.broker_metrics.wills_suppressed.load(Ordering::Relaxed);
    drop(w2);
    wait_until(|| e.app.broker_metrics.wills_suppressed.load(Ordering::Relaxed) > suppressed).await;

    // A disabled client: its session ends without will.
    let (c3, s3) = e.app.device(&e.t, &e.d).await;
    e.app.connect(&e.t, &e.d, &c3, &e.h, &["publish"]).await;
    let mut wc = Connect::new(true, "willer3", &c3, &s3);
    wc.will = Some((&wt, b"should not either", 0, false, vec![]));
    let mut w3 = Raw::ok(e.app.mqtt_addr, &wc).await;
    e.app
        .call(
            Method::POST,
            &format!("/{}/clients/{c3}/disable", e.d),
            Some(&e.t),
            None,
        )
        .await;
    assert_eq!(w3.closed().await, Some(0x98));
    assert!(
        watcher.no_message_within(Duration::from_millis(300)).await,
        "no will delivered"
    );
}

pub(crate) async fn wait_until(f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_publish_and_subscription() {
    let e = env().await;
    for v5 in [false, true] {
        let t2 = e.topic(&format!("q2-{v5}"));
        let t1 = e.topic(&format!("q1-{v5}"));
        let mut s = e.raw(v5, &format!("qos-sub-{v5}")).await;
        assert_eq!(s.subscribe(1, &[(&t2, 2), (&t1, 1)], &[]).await, vec![2, 1]);
        let mut p = e.raw(v5, &format!("qos-pub-{v5}")).await;
        for q in [0u8, 1, 2] {
            p.publish(&t2, format!("{q}").as_bytes(), q, false, 10 + q as u16).await;
            assert_eq!(
                s.message().await.qos,
                q,
                "QoS {q} to a QoS 2 subscription [MQTT-3.8.4-6]"
            );
        }
        p.publish(&t1, b"2", 2, false, 20).await;
        assert_eq!(s.message().await.qos, 1, "QoS 2 to a QoS 1 subscription");
    }
}

#[tokio::test]
async fn unsubscribe_answers_once_with_a_code_per_filter() {
    let e = env().await;
    for v5 in [false, true] {
        let mut s = e.raw(v5, &format!("unsub-{v5}")).await;
        let (a, b) = (e.topic("a"), e.topic("b"));
        s.subscribe(1, &[(&a, 1), (&b, 1)], &[]).await;
        let codes = s.unsubscribe(2, &[&a, &e.topic("never"), &b]).await;
        // One UNSUBACK [MQTT-3.10.4-5]; in 5, 0x11 for the filter that was not subscribed.
        if v5 {
            assert_eq!(codes, vec![0, 0x11, 0]);
        } else {
            assert!(codes.is_empty());
        }
        // Nothing further: the next packet answers a PINGREQ.
        s.send(&[0xC0, 0]).await;
        assert_eq!(s.packet().await.expect("ping").0, 0xD0);
        let mut p = e.raw(v5, &format!("unsub-pub-{v5}")).await;
        p.publish(&a, b"x", 1, false, 1).await;
        assert!(s.no_message_within(Duration::from_millis(200)).await, "unsubscribed");
    }
}

#[tokio::test]
async fn overlapping_subscriptions_no_local_and_subscription_identifiers() {
    let e = env().await;
    let t = e.topic("ov/x");
    let mut s = e.raw(true, "v5-opts").await;
    // Sub id 7 on `ov/#` with No Local; sub id 8 on `ov/x` without.
    assert_eq!(
        s.subscribe(1, &[(&e.topic("ov/#"), 0b0000_0101)], &props::sub_id(7))
            .await,
        vec![1]
    );
    assert_eq!(s.subscribe(2, &[(&t, 1)], &props::sub_id(8)).await, vec![1]);
    s.publish(&t, b"mine", 1, false, 3).await;
    // Only the subscription without No Local delivers the session's own message.
    let m = s.message().await;
    assert_eq!(m.props, vec![0x0B, 8]);
    assert!(s.no_message_within(Duration::from_millis(200)).await);
    // From another session, both subscriptions match: one copy carrying both identifiers
    // [MQTT-3.3.4-3].
    let mut p = e.raw(true, "v5-opts-pub").await;
    p.publish(&t, b"theirs", 1, false, 1).await;
    let m = s.message().await;
    let mut ids: Vec<Vec<u8>> = m.prop_list().into_iter().map(|(_, v)| v).collect();
    ids.sort();
    assert_eq!((m.prop_ids(), ids), (vec![0x0B, 0x0B], vec![vec![7], vec![8]]));
    assert!(s.no_message_within(Duration::from_millis(200)).await, "one copy");
}

#[tokio::test]
async fn retained_messages_follow_retain_handling_and_survive_a_restart() {
    let e = env().await;
    let t = e.topic("state");
    for v5 in [false, true] {
        let mut p = e.raw(v5, &format!("ret-pub-{v5}")).await;
        p.publish(&t, b"one", 1, true, 1).await;
        p.publish(&t, b"two", 1, true, 2).await;
        let mut s = e.raw(v5, &format!("ret-sub-{v5}")).await;
        s.subscribe(1, &[(&t, 1)], &[]).await;
        let m = s.message().await;
        assert_eq!(
            (m.payload.as_slice(), m.retain),
            (&b"two"[..], true),
            "replaced, flagged retained"
        );
        // A live delivery of a retained publish has retain=0 [MQTT-3.3.1-9].
        p.publish(&t, b"three", 1, true, 3).await;
        assert!(!s.message().await.retain);
    }
    // v5: Retain Handling 2 sends nothing; 1 only for a new subscription; RAP keeps the flag.
    let mut s = e.raw(true, "rh").await;
    assert_eq!(s.subscribe(1, &[(&t, 0b0010_0001)], &[]).await, vec![1]);
    assert!(s.no_message_within(Duration::from_millis(200)).await);
    let mut s1 = e.raw(true, "rh1").await;
    s1.subscribe(1, &[(&t, 0b0001_1001)], &[]).await;
    assert_eq!(s1.message().await.payload, b"three".to_vec());
    s1.subscribe(2, &[(&t, 0b0001_1001)], &[]).await;
    assert!(
        s1.no_message_within(Duration::from_millis(200)).await,
        "not again for an existing one"
    );
    let mut p = e.raw(true, "rap-pub").await;
    p.publish(&t, b"four", 1, true, 1).await;
    assert!(s1.message().await.retain, "Retain As Published");

    // Survives a restart; an empty retained payload deletes it.
    let app = e.app;
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir).await;
    let mut r = Raw::ok(app.mqtt_addr, &Connect::new(false, "after-restart", &e.c, &e.s)).await;
    r.subscribe(1, &[(&t, 1)], &[]).await;
    assert_eq!(r.message().await.payload, b"four".to_vec());
    r.publish(&t, b"", 1, true, 5).await;
    let mut r2 = Raw::ok(app.mqtt_addr, &Connect::new(false, "after-delete", &e.c, &e.s)).await;
    r2.subscribe(1, &[(&t, 1)], &[]).await;
    assert!(r2.no_message_within(Duration::from_millis(300)).await, "deleted");
}

#[tokio::test]
async fn persistent_sessions_queue_redeliver_and_expire() {
    let e = env().await;
    let t = e.topic("offline");
    for v5 in [false, true] {
        let id = format!("persist-{v5}");
        let mut c = e.conn(v5, &id);
        c.clean = false;
        if v5 {
            c.clean = false;
            c.props = props::session_expiry(600);
        }
        let (mut s, code, present) = Raw::connect(e.app.mqtt_addr, &c).await;
        assert_eq!((code, present), (0, false));
        s.subscribe(1, &[(&t, 2)], &[]).await;
        // One delivery left unacknowledged, then the connection drops.
        let mut p = e.raw(v5, &format!("persist-pub-{v5}")).await;
        p.publish(&t, b"unacked", 1, false, 1).await;
        let (first, _) = s.packet().await.expect("delivery");
        assert_eq!(first >> 4, 3);
        drop(s);
        wait_until(|| e.app.broker_metrics.sessions_persistent_offline.load(Ordering::Relaxed) >= 1).await;
        p.publish(&t, b"q1 while away", 1, false, 2).await;
        p.publish(&t, b"q2 while away", 2, false, 3).await;
        let (mut back, code, present) = Raw::connect(e.app.mqtt_addr, &c).await;
        assert_eq!((code, present), (0, true), "session present");
        let m = back.message().await;
        assert_eq!(
            (m.payload.as_slice(), m.dup),
            (&b"unacked"[..], true),
            "redelivered with DUP"
        );
        assert_eq!(back.message().await.payload, b"q1 while away".to_vec());
        let m = back.message().await;
        assert_eq!((m.payload.as_slice(), m.qos), (&b"q2 while away"[..], 2));
        assert!(
            back.no_message_within(Duration::from_millis(200)).await,
            "each exactly once"
        );
        back.disconnect().await;
    }
    // v5 session expiry: gone once the interval has passed.
    let mut c = e.conn(true, "short-lived");
    c.clean = false;
    c.props = props::session_expiry(1);
    let (mut s, _, _) = Raw::connect(e.app.mqtt_addr, &c).await;
    s.subscribe(1, &[(&t, 1)], &[]).await;
    let expired = e.app.broker_metrics.sessions_expired.load(Ordering::Relaxed);
    s.disconnect().await;
    wait_until(|| e.app.broker_metrics.sessions_expired.load(Ordering::Relaxed) > expired).await;
    let (_, code, present) = Raw::connect(e.app.mqtt_addr, &c).await;
    assert_eq!((code, present), (0, false), "expired session is gone");
}

#[tokio::test]
async fn anonymous_wildcards_never_see_dollar_or_channel_topics() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = crate::helpers::test_config(dir.path());
    cfg.mqtt.allow_anonymous = true;
    let app = TestApp::spawn_with(dir, cfg).await;
    let (_, t) = app.user("anonowner").await;
    let d = app.domain(&t, "anon").await;
    let h = app.channel(&t, &d, "ch").await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
    for v5 in [false, true] {
        let anon = Connect {
            user: None,
            pass: None,
            ..Connect::new(v5, "", "", "")
        };
        let mut a = Raw::ok(app.mqtt_addr, &anon).await;
        assert_eq!(a.subscribe(1, &[("#", 1), ("+/x", 1)], &[]).await, vec![1, 1]);
        let mut dev = Raw::ok(app.mqtt_addr, &Connect::new(v5, "dev", &c, &s)).await;
        dev.publish(&format!("channels/{h}/messages"), b"private", 1, false, 1)
            .await;
        // A `$` topic is refused to anonymous publishers (v5: PUBACK 0x87).
        let mut a2 = Raw::ok(app.mqtt_addr, &anon).await;
        if v5 {
            assert_eq!(a2.publish("$SYS/x", b"no", 1, false, 1).await, 0x87);
        }
        a2.publish("sensors/x", b"public", 1, false, 2).await;
        // `#` and `+/x` both match: one copy for both [MQTT-3.3.4-2], and only the public
        // topic (never the channel topic, never a `$` topic [MQTT-4.7.2-1]).
        assert_eq!(a.message().await.topic, "sensors/x");
        assert!(a.no_message_within(Duration::from_millis(200)).await);
    }
}

#[tokio::test]
async fn randomized_packets_never_panic_and_the_server_keeps_serving() {
    let e = env().await;
    let mut rng: u64 = 0x5EED_F00D;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let t = e.topic("fuzz");
    for round in 0..300 {
        let v5 = round % 2 == 0;
        let mut r = e.raw(v5, &format!("fuzz-{round}")).await;
        // A valid packet of every type a client sends, then truncated or mutated.
        let mut body = Vec::new();
        put_str(&mut body, t.as_bytes());
        body.extend_from_slice(&[0, 1]);
        if v5 {
            body.push(0);
        }
        body.extend_from_slice(b"payload");
        let mut sub = vec![0, 2];
        if v5 {
            sub.push(0);
        }
        put_str(&mut sub, t.as_bytes());
        sub.push(1);
        let valid = [
            framed(0x32, &body),
            framed(0x82, &sub),
            framed(0xA2, &sub[..sub.len() - 1]),
            framed(0x40, &[0, 1]),
            framed(0x50, &[0, 1]),
            framed(0x62, &[0, 1]),
            framed(0x70, &[0, 1]),
            vec![0xC0, 0],
            Connect::new(v5, "x", &e.c, &e.s).encode(),
        ];
        let mut pkt = valid[(next() % valid.len() as u64) as usize].clone();
        match next() % 3 {
            0 => {
                let n = (next() as usize) % pkt.len();
                pkt.truncate(n.max(1));
            }
            1 => {
                for _ in 0..=(next() % 4) {
                    let i = (next() as usize) % pkt.len();
                    pkt[i] = next() as u8;
                }
            }
            _ => {}
        }
        r.try_send(&pkt).await;
        r.try_send(&[0xC0, 0]).await;
        let _ = r.packet_within(Duration::from_millis(100)).await;
    }
    exchange(&e, "after-fuzz").await;
}

#[tokio::test]
async fn every_acknowledged_qos1_message_is_delivered_and_stored() {
    for small_queue in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let mut cfg = crate::helpers::test_config(dir.path());
        if small_queue {
            cfg.messages.queue_size = 64;
        }
        let app = TestApp::spawn_with(dir, cfg).await;
        let (_, t) = app.user("loadowner").await;
        let d = app.domain(&t, "load").await;
        let h = app.channel(&t, &d, "ch").await;
        let (c, s) = app.device(&t, &d).await;
        app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
        let per = if small_queue { 2_000 } else { 25_000 };
        let mut subs = Vec::new();
        for i in 0..4 {
            let mut r = Raw::ok(app.mqtt_addr, &Connect::new(false, &format!("ls-{i}"), &c, &s)).await;
            r.subscribe(1, &[(&format!("channels/{h}/messages/p{i}"), 1)], &[])
                .await;
            subs.push(tokio::spawn(async move {
                let mut got = 0u32;
                while got < per {
                    let m = r.message().await;
                    let n = u32::from_be_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                    assert_eq!(n, got, "in order, none missing");
                    got += 1;
                }
                got
            }));
        }
        let mut pubs = Vec::new();
        for i in 0..4 {
            let mut r = Raw::ok(app.mqtt_addr, &Connect::new(false, &format!("lp-{i}"), &c, &s)).await;
            let topic = format!("channels/{h}/messages/p{i}");
            pubs.push(tokio::spawn(async move {
                // Pipelined: up to 50 in flight, as a real client does.
                let mut acked = 0u32;
                let mut sent = 0u32;
                while acked < per {
                    while sent < per && sent - acked < 50 {
                        let mut payload = sent.to_be_bytes().to_vec();
                        payload.extend_from_slice(&[0u8; 60]);
                        r.publish_with(&topic, &payload, 1, false, (sent % 60_000 + 1) as u16, &[])
                            .await;
                        sent += 1;
                    }
                    let (first, _) = r.packet().await.expect("PUBACK");
                    if first >> 4 == 4 {
                        acked += 1;
                    }
                }
                acked
            }));
        }
        let mut total = 0u64;
        for p in pubs {
            total += p.await.expect("publisher") as u64;
        }
        for s in subs {
            assert_eq!(s.await.expect("subscriber"), per);
        }
        // Every acknowledged message is stored.
        let mut stored = app.stored.lock().await;
        tokio::time::timeout(Duration::from_secs(60), stored.wait_for(|n| *n >= total))
            .await
            .expect("stored in time")
            .expect("watch");
        assert_eq!(
            app.broker_metrics.pipeline_full.load(Ordering::Relaxed),
            0,
            "no QoS 1 message unstored"
        );
    }
}
