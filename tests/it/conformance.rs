//! The normative statements behind the Paho interoperability tests Fluxgate used to fail
//! (#30), each at both protocol levels where the level has it, with a byte-exact client.

use crate::engine::{env, Env};
use crate::helpers::TestApp;
use crate::raw::{connack_str, framed, props, Connect, Raw};
use std::time::Duration;

async fn anonymous_app() -> TestApp {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = crate::helpers::test_config(dir.path());
    cfg.mqtt.allow_anonymous = true;
    TestApp::spawn_with(dir, cfg).await
}

fn anon(v5: bool, id: &str) -> Connect<'_> {
    Connect {
        user: None,
        pass: None,
        ..Connect::new(v5, id, "", "")
    }
}

/// [MQTT-4.7.2-1]: a `$` topic other than `$SYS` and `$share` is accepted from anonymous
/// publishers (acknowledged), reaches a subscriber of that very topic and never one whose
/// filter starts with a wildcard; `$SYS` stays refused (5: PUBACK 0x87; 3.1.1: the
/// connection closes, never a silent drop). A registry device has no `$` topics.
#[tokio::test]
async fn dollar_topics_are_open_to_anonymous_sessions_and_never_match_a_leading_wildcard() {
    let app = anonymous_app().await;
    for v5 in [false, true] {
        let mut exact = Raw::ok(app.mqtt_addr, &anon(v5, "exact")).await;
        assert_eq!(exact.subscribe(1, &[("$TopicA/#", 1)], &[]).await, vec![1]);
        let mut wild = Raw::ok(app.mqtt_addr, &anon(v5, "wild")).await;
        assert_eq!(wild.subscribe(1, &[("+/+", 1), ("#", 1)], &[]).await, vec![1, 1]);
        let mut p = Raw::ok(app.mqtt_addr, &anon(v5, "pub")).await;
        assert_eq!(p.publish("$TopicA/B", b"dollar", 1, false, 1).await, 0, "acknowledged");
        assert_eq!(p.publish("TopicA/B", b"plain", 1, false, 2).await, 0);
        let m = exact.message().await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), ("$TopicA/B", &b"dollar"[..]));
        // Both filters match it: one copy ([MQTT-3.3.4-2]).
        assert_eq!(
            wild.message().await.topic,
            "TopicA/B",
            "only the plain topic reaches + and #"
        );
        assert!(wild.no_message_within(Duration::from_millis(300)).await);
        if v5 {
            assert_eq!(p.publish("$SYS/x", b"no", 1, false, 3).await, 0x87);
            assert_eq!(p.publish("$share/g/x", b"no", 1, false, 4).await, 0x87);
        } else {
            p.publish_with("$SYS/x", b"no", 1, false, 3, &[]).await;
            assert_eq!(p.closed().await, None, "3.1.1: refused by closing");
        }
    }
    // A registry device: no `$` topics at all.
    let (_, t) = app.user("dollarowner").await;
    let d = app.domain(&t, "dollar").await;
    let (c, s) = app.device(&t, &d).await;
    let mut dev = Raw::ok(app.mqtt_addr, &Connect::new(true, "dev", &c, &s)).await;
    assert_eq!(dev.publish("$TopicA/B", b"no", 1, false, 1).await, 0x87);
    assert_eq!(dev.subscribe(2, &[("$TopicA/#", 1)], &[]).await, vec![0x87]);
}

/// [MQTT-3.3.4-2] / [MQTT-3.3.4-3] (5), [MQTT-3.3.5-1] (3.1.1): a message matching two
/// subscriptions of one session arrives once, at the higher of their QoS, carrying both
/// subscription identifiers (5).
#[tokio::test]
async fn overlapping_subscriptions_get_one_copy_with_every_identifier() {
    let e: Env = env().await;
    let t = e.topic("overlap");
    for v5 in [false, true] {
        let mut r = e.raw(v5, &format!("overlap-{v5}")).await;
        let (p2, p3) = if v5 {
            (props::sub_id(2), props::sub_id(3))
        } else {
            (vec![], vec![])
        };
        assert_eq!(r.subscribe(1, &[(&t, 0)], &p2).await, vec![0]);
        assert_eq!(r.subscribe(2, &[(&format!("{t}/#"), 1)], &p3).await, vec![1]);
        let mut p = e.raw(v5, &format!("overlap-pub-{v5}")).await;
        assert_eq!(p.publish(&t, b"once", 1, false, 1).await, 0);
        let m = r.message().await;
        assert_eq!((m.payload.as_slice(), m.qos), (&b"once"[..], 1), "one copy at QoS 1");
        if v5 {
            let mut ids: Vec<Vec<u8>> = m
                .prop_list()
                .into_iter()
                .filter(|(id, _)| *id == 0x0B)
                .map(|(_, v)| v)
                .collect();
            ids.sort();
            assert_eq!(ids, vec![vec![2], vec![3]], "both subscription identifiers");
        }
        assert!(r.no_message_within(Duration::from_millis(300)).await, "no second copy");
    }
}

/// 5 (3.1.3.1): a zero-length client id is accepted with Clean Start 0 as well as 1, and the
/// server names the id it assigned (Assigned Client Identifier) [MQTT-3.2.2-16], for
/// anonymous and registry logins alike; 3.1.1 requires Clean Session 1 for it
/// [MQTT-3.1.3-7] and refuses it otherwise with 0x02 [MQTT-3.1.3-8].
#[tokio::test]
async fn a_zero_length_client_id_is_assigned_one_with_either_clean_start() {
    let app = anonymous_app().await;
    let (_, t) = app.user("zeroowner").await;
    let d = app.domain(&t, "zero").await;
    let (c, s) = app.device(&t, &d).await;
    for registry in [false, true] {
        for clean in [true, false] {
            let mut cn = if registry {
                Connect::new(true, "", &c, &s)
            } else {
                anon(true, "")
            };
            cn.clean = clean;
            let (_, body) = Raw::connack(app.mqtt_addr, &cn).await;
            assert_eq!(body[1], 0, "5, clean start {clean}, registry {registry}: accepted");
            assert_eq!(body[0] & 1, 0, "a new session");
            let id = connack_str(&body, 0x12).expect("Assigned Client Identifier");
            assert!(!id.is_empty());
            let mut cn = if registry {
                Connect::new(false, "", &c, &s)
            } else {
                anon(false, "")
            };
            cn.clean = clean;
            let (_, code, _) = Raw::connect(app.mqtt_addr, &cn).await;
            assert_eq!(code, if clean { 0 } else { 2 }, "3.1.1, clean session {clean}");
        }
    }
}

/// 5 (3.3.4, Flow Control): more unacknowledged QoS 2 messages than the server's Receive
/// Maximum end the connection with DISCONNECT 0x93, and the device reads it: the server
/// keeps reading what the device still sends (its PUBRELs for the PUBRECs before the
/// DISCONNECT) instead of resetting the connection, as the Paho suite's client does.
#[tokio::test]
async fn receive_maximum_exceeded_is_told_with_0x93_and_the_device_reads_it() {
    let e = env().await;
    let t = e.topic("flow");
    let (mut r, body) = Raw::connack(e.app.mqtt_addr, &e.conn(true, "flow")).await;
    assert_eq!(body[1], 0);
    let max = crate::raw::connack_u16(&body, 0x21).expect("Receive Maximum");
    let mut burst = Vec::new();
    for i in 1..=max + 1 {
        let mut b = Vec::new();
        crate::raw::put_str(&mut b, t.as_bytes());
        b.extend_from_slice(&i.to_be_bytes());
        b.push(0); // no properties
        b.extend_from_slice(b"x");
        burst.extend_from_slice(&framed(0x34, &b));
    }
    r.send(&burst).await;
    let mut pubrecs = 0;
    let reason = loop {
        match r.packet().await {
            Some((first, body)) if first >> 4 == 5 => {
                pubrecs += 1;
                // PUBREL: the server is still reading, so this write does not fail.
                assert!(
                    r.try_send(&framed(0x62, &body[..2])).await,
                    "PUBREL after PUBREC {pubrecs}"
                );
            }
            Some((first, body)) if first >> 4 == 14 => break body.first().copied(),
            Some(_) => {}
            None => panic!("closed without DISCONNECT after {pubrecs} PUBRECs"),
        }
    };
    assert_eq!(reason, Some(0x93));
    assert_eq!(pubrecs, max as usize, "every message within the maximum was received");
}

/// [MQTT-3.3.2-11] and 3.3.2.3.4: the server gives topic aliases to a 5 client that takes
/// them (Topic Alias Maximum > 0), never more than that many (the first delivery of a topic
/// carries the topic and its alias, the next ones the alias alone), and none to one that
/// takes none, nor to 3.1.1 clients. Order is asserted per topic only ([MQTT-4.6.0-5]):
/// two topics are two router logs, so messages to different topics may interleave.
#[tokio::test]
async fn the_server_uses_topic_aliases_towards_a_client_that_takes_them() {
    let e = env().await;
    let (a, b) = (e.topic("alias-a"), e.topic("alias-b"));
    for (v5, max) in [(true, 1u16), (true, 0), (false, 0)] {
        let mut c = e.conn(v5, "aliased");
        if max > 0 {
            c.props = props::topic_alias_max(max);
        }
        let mut r = Raw::ok(e.app.mqtt_addr, &c).await;
        assert_eq!(r.subscribe(1, &[(&a, 1), (&b, 1)], &[]).await, vec![1, 1]);
        let mut p = e.raw(v5, "alias-pub").await;
        // The first message of `a` is delivered before anything else is sent: `a` takes the
        // one alias.
        assert_eq!(p.publish(&a, b"0", 1, false, 1).await, 0);
        let first = r.message().await;
        for (i, topic) in [&a, &b, &a].into_iter().enumerate() {
            assert_eq!(
                p.publish(topic, format!("{}", i + 1).as_bytes(), 1, false, i as u16 + 2)
                    .await,
                0
            );
        }
        let mut got = vec![(first.topic.clone(), first.prop(0x23), first.payload)];
        for _ in 0..3 {
            let m = r.message().await;
            got.push((m.topic.clone(), m.prop(0x23), m.payload));
        }
        // Per topic, in the order published: (topic as sent, alias, payload).
        // (An alias-only delivery counts as `a`'s: a wrong alias shows in its payloads.)
        let of = |want_b: bool| -> Vec<(String, Option<Vec<u8>>, Vec<u8>)> {
            got.iter().filter(|(t, _, _)| (t == &b) == want_b).cloned().collect()
        };
        let one = Some(vec![0, 1]);
        let (want_a, want_b) = if max > 0 {
            (
                vec![
                    (a.clone(), one.clone(), b"0".to_vec()),
                    (String::new(), one.clone(), b"1".to_vec()),
                    (String::new(), one.clone(), b"3".to_vec()),
                ],
                vec![(b.clone(), None, b"2".to_vec())],
            )
        } else {
            (
                vec![
                    (a.clone(), None, b"0".to_vec()),
                    (a.clone(), None, b"1".to_vec()),
                    (a.clone(), None, b"3".to_vec()),
                ],
                vec![(b.clone(), None, b"2".to_vec())],
            )
        };
        assert_eq!(of(false), want_a, "5: {v5}, Topic Alias Maximum {max}: topic a");
        assert_eq!(of(true), want_b, "5: {v5}, Topic Alias Maximum {max}: topic b");
        r.disconnect().await;
        p.disconnect().await;
    }
}
