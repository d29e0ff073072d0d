//! The MQTT broker end to end: real rumqttc clients against the real server.

use crate::helpers::TestApp;
use crate::mqtt_client::{connect, Ev, Opts, RawV5};
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::Ordering;

/// A domain with an owner token, a channel and helpers; returns (app, token, domain, channel).
async fn setup() -> (TestApp, String, String, String) {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("mqttowner").await;
    let d = app.domain(&t, "mqtt").await;
    let h = app.channel(&t, &d, "ch").await;
    (app, t, d, h)
}

fn opts<'a>(id: &'a str, user: &'a str, pass: &'a str, v5: bool) -> Opts<'a> {
    Opts {
        id,
        user: Some(user),
        pass: Some(pass),
        v5,
        ..Default::default()
    }
}

#[tokio::test]
async fn authentication_matrix_v4_and_v5() {
    let (app, t, d, _) = setup().await;
    let (c, secret) = app.device(&t, &d).await;
    let (off, off_secret) = app.device(&t, &d).await;
    app.call(Method::POST, &format!("/{d}/clients/{off}/disable"), Some(&t), None)
        .await;
    let d2 = app.domain(&t, "mqtt-off").await;
    let (c2, secret2) = app.device(&t, &d2).await;
    app.call(Method::POST, &format!("/domains/{d2}/disable"), Some(&t), None)
        .await;

    for v5 in [false, true] {
        let (bad, disabled) = if v5 { (0x86, 0x87) } else { (4, 5) };
        let cases: Vec<(Option<(&str, &str)>, u8)> = vec![
            (Some((&c, &secret)), 0),
            (Some((&c, "wrong-secret")), bad),
            (Some(("no-such-client", &secret)), bad),
            (Some((&off, &off_secret)), disabled),
            (Some((&c2, &secret2)), disabled),
            (None, disabled),
        ];
        for (creds, want) in cases {
            let o = Opts {
                id: "auth-test",
                user: creds.map(|c| c.0),
                pass: creds.map(|c| c.1),
                v5,
                ..Default::default()
            };
            let mut conn = connect(app.mqtt_addr, o);
            assert_eq!(conn.connack().await, want, "v5={v5} creds={creds:?}");
            if want == 0 {
                conn.disconnect().await;
            }
        }
    }
    assert!(app.broker_metrics.refused_connect.load(Ordering::Relaxed) >= 10);
}

#[tokio::test]
async fn authorization_matrix_and_exact_delivery() {
    let (app, t, d, h) = setup().await;
    let other = app.channel(&t, &d, "other").await;
    let (pub_only, ps) = app.device(&t, &d).await;
    let (sub_only, ss) = app.device(&t, &d).await;
    let (none, ns) = app.device(&t, &d).await;
    app.connect(&t, &d, &pub_only, &h, &["publish"]).await;
    app.connect(&t, &d, &sub_only, &h, &["subscribe"]).await;
    app.connect(&t, &d, &pub_only, &other, &["publish"]).await;
    // A channel of another domain, with our client connected there is impossible; a client
    // of the other domain connected to its own channel is the control.
    let (_, t2) = app.user("mqttother").await;
    let d2 = app.domain(&t2, "mqtt-2").await;
    let h2 = app.channel(&t2, &d2, "foreign").await;

    for v5 in [false, true] {
        let denied = if v5 { 0x87 } else { 0x80 };
        let topic = format!("channels/{h}/messages");
        // Subscribe: right type, other type only, no connection, wildcard channel, foreign
        // channel, $SYS, non-channel topic, malformed filter. rumqttc's v5 client gives up on
        // any refused code, so v5 SUBACKs are checked with a raw client.
        let filters: Vec<(String, u8)> = vec![
            (topic.clone(), 1),
            (format!("channels/{h}/messages/+"), 0),
            (format!("channels/{other}/messages"), denied),
            ("channels/+/messages".into(), denied),
            ("#".into(), denied),
            (format!("channels/{h2}/messages"), denied),
            ("$SYS/#".into(), denied),
            ("sensors/temp".into(), denied),
            ("a/#/b".into(), 0x80),
        ];
        let mut raw = None;
        let mut sub = None;
        if v5 {
            let (mut r, code) = RawV5::connect(app.mqtt_addr, "sub", &sub_only, &ss).await;
            assert_eq!(code, 0);
            for (i, (f, want)) in filters.iter().enumerate() {
                let q = if *want <= 2 { *want } else { 0 };
                assert_eq!(r.subscribe(i as u16 + 1, &[(f, q)]).await, vec![*want], "v5 {f}");
            }
            raw = Some(r);
        } else {
            let mut c = connect(app.mqtt_addr, opts("sub", &sub_only, &ss, v5))
                .connected()
                .await;
            for (f, want) in &filters {
                let q = if *want <= 2 { *want } else { 0 };
                assert_eq!(c.subscribe(f, q).await, vec![*want], "v4 {f}");
            }
            sub = Some(c);
        }

        let p = connect(app.mqtt_addr, opts("pub", &pub_only, &ps, v5))
            .connected()
            .await;
        if !v5 {
            let mut pubsub_denied = connect(app.mqtt_addr, opts("pubsub", &pub_only, &ps, v5))
                .connected()
                .await;
            assert_eq!(
                pubsub_denied.subscribe(&topic, 0).await,
                vec![denied],
                "publish-only cannot subscribe"
            );
        } else {
            let (mut r, _) = RawV5::connect(app.mqtt_addr, "pubsub", &pub_only, &ps).await;
            assert_eq!(
                r.subscribe(1, &[(&topic, 0)]).await,
                vec![denied],
                "publish-only cannot subscribe"
            );
        }
        p.publish(&format!("channels/{h}/messages/room1"), b"one", 1, false)
            .await;
        p.publish(&topic, b"two", 0, false).await;
        let mut next = async || match (&mut sub, &mut raw) {
            (Some(c), _) => c.message().await,
            (_, Some(r)) => r.message().await,
            _ => unreachable!(),
        };
        assert_eq!(next().await, (format!("channels/{h}/messages/room1"), b"one".to_vec()));
        assert_eq!(next().await, (topic.clone(), b"two".to_vec()));

        // A subscribe-only client may not publish: v5 gets PUBACK 0x87 at QoS 1; 3.1.1 is closed.
        let mut s_pub = connect(app.mqtt_addr, opts("subpub", &sub_only, &ss, v5))
            .connected()
            .await;
        s_pub.publish(&topic, b"forbidden", 1, false).await;
        if v5 {
            assert_eq!(s_pub.next().await, Ev::PubAck(0x87));
            // QoS 0 refusal: DISCONNECT 0x87, then the connection closes.
            let (mut r, _) = RawV5::connect(app.mqtt_addr, "subpub0", &sub_only, &ss).await;
            r.publish(&topic, b"forbidden").await;
            assert_eq!(r.packet().await, Some((0xE0, vec![0x87])));
            assert_eq!(r.packet().await, None);
        } else {
            s_pub.closed().await;
        }
        // No connection at all: refused too.
        let mut n = connect(app.mqtt_addr, opts("none", &none, &ns, v5)).connected().await;
        n.publish(&topic, b"nope", 1, false).await;
        if v5 {
            assert_eq!(n.next().await, Ev::PubAck(0x87));
        } else {
            n.closed().await;
        }
        // Publishing to a foreign channel or a non-channel topic is refused as well.
        let mut p2 = connect(app.mqtt_addr, opts("pub2", &pub_only, &ps, v5))
            .connected()
            .await;
        p2.publish(&format!("channels/{h2}/messages"), b"foreign", 1, false)
            .await;
        if v5 {
            assert_eq!(p2.next().await, Ev::PubAck(0x87));
            p2.publish("sensors/x", b"x", 1, false).await;
            assert_eq!(p2.next().await, Ev::PubAck(0x87));
        } else {
            p2.closed().await;
        }
        // The subscriber got exactly its two messages: a marker published last arrives next.
        p.publish(&topic, b"marker", 1, false).await;
        assert_eq!(next().await, (topic.clone(), b"marker".to_vec()));
        p.disconnect().await;
    }
    assert!(app.broker_metrics.refused_publish.load(Ordering::Relaxed) >= 4);
}

#[tokio::test]
async fn partial_subscribe_keeps_the_allowed_filter() {
    let (app, t, d, h) = setup().await;
    let forbidden = app.channel(&t, &d, "forbidden").await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
    let filters = [
        (format!("channels/{forbidden}/messages"), 1u8),
        (format!("channels/{h}/messages"), 1u8),
    ];
    let mut conn = connect(app.mqtt_addr, opts("p4", &c, &s, false)).connected().await;
    let codes = conn.subscribe_many(&[(&filters[0].0, 1), (&filters[1].0, 1)]).await;
    assert_eq!(codes, vec![0x80, 1]);
    conn.publish(&filters[1].0, b"hello", 1, false).await;
    assert_eq!(conn.message().await.1, b"hello".to_vec());
    conn.disconnect().await;

    let (mut raw, code) = RawV5::connect(app.mqtt_addr, "p5", &c, &s).await;
    assert_eq!(code, 0);
    assert_eq!(
        raw.subscribe(7, &[(&filters[0].0, 1), (&filters[1].0, 1)]).await,
        vec![0x87, 1]
    );
    raw.publish(&filters[1].0, b"hello v5").await;
    assert_eq!(raw.message().await.1, b"hello v5".to_vec());
}

#[tokio::test]
async fn revocation_stops_delivery_and_closes_disabled_publishers() {
    let (app, t, d, h) = setup().await;
    let (sub, ss) = app.device(&t, &d).await;
    let (publ, ps) = app.device(&t, &d).await;
    app.connect(&t, &d, &sub, &h, &["subscribe"]).await;
    app.connect(&t, &d, &publ, &h, &["publish"]).await;
    let topic = format!("channels/{h}/messages");
    let mut s = connect(app.mqtt_addr, opts("s", &sub, &ss, true)).connected().await;
    assert_eq!(s.subscribe(&topic, 0).await, vec![0]);
    let mut p = connect(app.mqtt_addr, opts("p", &publ, &ps, true)).connected().await;
    p.publish(&topic, b"before", 0, false).await;
    assert_eq!(s.message().await.1, b"before".to_vec());

    let (st, _) = app
        .post(
            &format!("/{d}/channels/disconnect"),
            Some(&t),
            json!({"client_ids": [sub], "channel_ids": [h], "types": ["subscribe"]}),
        )
        .await;
    assert_eq!(st, 204);
    let dropped_before = app.broker_metrics.refused_delivery.load(Ordering::Relaxed);
    p.publish(&topic, b"after", 0, false).await;
    // The front drops the delivery (counted) instead of forwarding it. The revocation is queued
    // before the REST call answers and the session applies queued revocations before the next
    // packet, so this holds however slow the machine; the bound only stops a hung test.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.broker_metrics.refused_delivery.load(Ordering::Relaxed) == dropped_before {
        assert!(
            std::time::Instant::now() < deadline,
            "delivery after revocation was not dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(s.rx.try_recv().is_err(), "nothing delivered after revocation");

    // Disabling the publishing client closes its sessions: a v5 one is told why (0x98).
    let mut raw = crate::raw::Raw::ok(app.mqtt_addr, &crate::raw::Connect::new(true, "p-raw", &publ, &ps)).await;
    app.call(Method::POST, &format!("/{d}/clients/{publ}/disable"), Some(&t), None)
        .await;
    assert_eq!(
        raw.packet().await,
        Some((0xE0, vec![0x98])),
        "DISCONNECT: Administrative action"
    );
    assert_eq!(raw.packet().await, None, "then closed");
    p.closed().await;
}

#[tokio::test]
async fn same_mqtt_client_id_in_two_domains_coexists() {
    let app = TestApp::spawn().await;
    let (_, t1) = app.user("tenant1").await;
    let (_, t2) = app.user("tenant2").await;
    let d1 = app.domain(&t1, "t-one").await;
    let d2 = app.domain(&t2, "t-two").await;
    let h1 = app.channel(&t1, &d1, "c").await;
    let (c1, s1) = app.device(&t1, &d1).await;
    let (c2, s2) = app.device(&t2, &d2).await;
    app.connect(&t1, &d1, &c1, &h1, &["publish", "subscribe"]).await;
    let mut a = connect(app.mqtt_addr, opts("sensor-1", &c1, &s1, false))
        .connected()
        .await;
    let mut b = connect(app.mqtt_addr, opts("sensor-1", &c2, &s2, false))
        .connected()
        .await;
    // A is still connected and working after B connected with the same MQTT client id.
    assert_eq!(a.subscribe(&format!("channels/{h1}/messages"), 1).await, vec![1]);
    a.publish(&format!("channels/{h1}/messages"), b"still here", 1, false)
        .await;
    assert_eq!(a.message().await.1, b"still here".to_vec());
    assert_eq!(
        b.subscribe("channels/x/messages", 0).await,
        vec![0x80],
        "B is alive too"
    );
    // The same registry client reconnecting with the same id takes over its session.
    let mut a2 = connect(app.mqtt_addr, opts("sensor-1", &c1, &s1, false))
        .connected()
        .await;
    a.closed().await;
    assert_eq!(a2.subscribe(&format!("channels/{h1}/messages"), 0).await, vec![0]);
}

#[tokio::test]
async fn qos_keep_alive_zero_retained_will_and_persistent_session() {
    let (app, t, d, h) = setup().await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
    let topic = format!("channels/{h}/messages");

    // Keep-alive 0 is accepted, and QoS 0/1/2 round trips work.
    let mut k = connect(
        app.mqtt_addr,
        Opts {
            keep_alive: 0,
            ..opts("ka0", &c, &s, false)
        },
    )
    .connected()
    .await;
    assert_eq!(k.subscribe(&format!("{topic}/#"), 2).await, vec![2]);
    for qos in [0u8, 1, 2] {
        let sub = format!("{topic}/q{qos}");
        k.publish(&sub, format!("qos{qos}").as_bytes(), qos, false).await;
        assert_eq!(k.message().await, (sub, format!("qos{qos}").into_bytes()));
    }

    // Retained message delivered on subscribe.
    k.publish(&format!("{topic}/status"), b"online", 1, true).await;
    let mut r = connect(app.mqtt_addr, opts("retain-reader", &c, &s, true))
        .connected()
        .await;
    r.subscribe(&format!("{topic}/status"), 1).await;
    assert_eq!(r.message().await.1, b"online".to_vec());

    // Will on abnormal disconnect.
    let w = connect(
        app.mqtt_addr,
        Opts {
            will: Some((&format!("{topic}/will"), b"gone")),
            ..opts("willer", &c, &s, false)
        },
    )
    .connected()
    .await;
    r.subscribe(&format!("{topic}/will"), 0).await;
    w.kill();
    assert_eq!(r.message().await, (format!("{topic}/will"), b"gone".to_vec()));

    // Persistent session: QoS 1 messages published while offline arrive on return.
    let mut p = connect(
        app.mqtt_addr,
        Opts {
            clean: false,
            ..opts("persistent", &c, &s, false)
        },
    )
    .connected()
    .await;
    p.subscribe(&format!("{topic}/offline"), 1).await;
    p.disconnect().await;
    p.closed().await;
    k.publish(&format!("{topic}/offline"), b"while away", 1, false).await;
    // The publish is acknowledged by the broker before the subscriber comes back (other
    // events, such as the PUBCOMP of the QoS 2 round trip above, may come first).
    loop {
        match k.next().await {
            Ev::PubAck(code) => {
                assert_eq!(code, 0);
                break;
            }
            Ev::Closed(why) => panic!("closed: {why}"),
            _ => continue,
        }
    }
    let mut back = connect(
        app.mqtt_addr,
        Opts {
            clean: false,
            ..opts("persistent", &c, &s, false)
        },
    )
    .connected()
    .await;
    assert_eq!(back.message().await.1, b"while away".to_vec());
}

#[tokio::test]
async fn mqtt_over_websocket() {
    let (app, t, d, h) = setup().await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
    let ws = app.ws_addr.expect("ws listener");
    let mut conn = connect(
        ws,
        Opts {
            ws: true,
            ..opts("ws-client", &c, &s, false)
        },
    )
    .connected()
    .await;
    let topic = format!("channels/{h}/messages");
    assert_eq!(conn.subscribe(&topic, 1).await, vec![1]);
    conn.publish(&topic, b"over ws", 1, false).await;
    assert_eq!(conn.message().await.1, b"over ws".to_vec());
    let mut bad = connect(
        ws,
        Opts {
            ws: true,
            ..opts("ws-bad", &c, "wrong-secret", false)
        },
    );
    assert_eq!(bad.connack().await, 4);
}

/// A store that cannot answer is told as such, never as a "no": with the registry's table
/// gone (renamed under the running server), CONNECT gets "server unavailable" (5: 0x88,
/// 3.1.1: 0x03), not "bad credentials"; with the retained table gone, a v5 retained QoS 1
/// publish is refused (PUBACK 0x80) and a 3.1.1 one is not acknowledged. Both come back by
/// themselves once the tables are back.
#[tokio::test]
async fn store_failures_are_server_unavailable_and_refusals_not_bad_credentials() {
    use crate::raw::{Connect, Raw};
    let e = crate::engine::env().await;
    let rename = |from: &str, to: &str| e.app.raw_sql(&format!("ALTER TABLE {from} RENAME TO {to}"));
    rename("clients", "clients_away");
    for (v5, want) in [(true, 0x88), (false, 0x03)] {
        let (_, code, _) = Raw::connect(e.app.mqtt_addr, &e.conn(v5, &format!("down-{v5}"))).await;
        assert_eq!(code, want, "v5={v5}");
    }
    let (_, code, _) = Raw::connect(e.app.mqtt_addr, &Connect::new(true, "down-bad", &e.c, "wrong")).await;
    assert_eq!(code, 0x88, "the secret cannot be checked either: unavailable, not 0x86");
    rename("clients_away", "clients");
    let mut p5 = e.raw(true, "retain-5").await;
    let mut p4 = e.raw(false, "retain-4").await;
    rename("retained", "retained_away");
    assert_eq!(p5.publish(&e.topic("r"), b"kept?", 1, true, 1).await, 0x80, "refused");
    p4.publish_with(&e.topic("r"), b"kept?", 1, true, 1, &[]).await;
    assert_eq!(p4.packet().await, None, "3.1.1: no PUBACK, the connection closes");
    rename("retained_away", "retained");
    assert_eq!(
        p5.publish(&e.topic("r"), b"kept", 1, true, 2).await,
        0,
        "back by itself"
    );
    let mut sub = e.raw(true, "retain-sub").await;
    assert_eq!(sub.subscribe(1, &[(&e.topic("r"), 1)], &[]).await, vec![1]);
    let m = sub.message().await;
    assert_eq!(
        (&m.payload[..], m.retain),
        (&b"kept"[..], true),
        "only the stored one is retained"
    );
}
