//! Magistrala's newer topic form over MQTT (#29, first contact 9): `m/<domain_id>/c/<channel_id>
//! [/<subtopic>]` is the same channel as `channels/<channel_id>/messages[/<subtopic>]`, with the
//! same rights, over TCP and WebSocket, stored once as that channel; a subscriber sees the
//! form it subscribed with.

use crate::raw::{Connect, Raw};

#[tokio::test]
async fn both_topic_forms_are_one_channel_with_the_same_rights() {
    let e = crate::engine::env().await;
    let (d, h) = (e.d.clone(), e.h.clone());
    let m = |sub: &str| format!("m/{d}/c/{h}/{sub}");
    for v5 in [false, true] {
        let mut by_m = e.raw(v5, &format!("by-m-{v5}")).await;
        let mut by_channels = e.raw(v5, &format!("by-channels-{v5}")).await;
        assert_eq!(by_m.subscribe(1, &[(&format!("m/{d}/c/{h}/#"), 1)], &[]).await, vec![1]);
        assert_eq!(by_channels.subscribe(1, &[(&e.topic("#"), 1)], &[]).await, vec![1]);
        let mut p = e.raw(v5, &format!("pub-{v5}")).await;
        let sub = format!("temp-{v5}");
        assert_eq!(p.publish(&m(&sub), b"21.5", 1, false, 1).await, 0, "m form accepted");
        let got = by_m.message().await;
        assert_eq!(
            (got.topic.as_str(), got.payload.as_slice()),
            (m(&sub).as_str(), &b"21.5"[..])
        );
        let got = by_channels.message().await;
        assert_eq!(
            got.topic,
            e.topic(&sub),
            "the same channel, in the form subscribed with"
        );
        assert_eq!(p.publish(&e.topic("x"), b"1", 1, false, 2).await, 0);
        assert_eq!(by_m.message().await.topic, m("x"));
        assert_eq!(by_channels.message().await.topic, e.topic("x"));
        // Unsubscribing in the other form ends the subscription.
        by_m.unsubscribe(3, &[&e.topic("#")]).await;
        assert_eq!(p.publish(&m("y"), b"2", 1, false, 3).await, 0);
        assert_eq!(by_channels.message().await.topic, e.topic("y"));
        assert!(by_m.no_message_within(std::time::Duration::from_millis(300)).await);
    }
    // Stored once each, as the channel with its subtopic.
    e.app.stored_at_least(6).await;
    let (status, v) = e
        .app
        .read(
            &format!("/channels/{h}/messages?limit=100&subtopic=temp-true"),
            &format!("Client {}", e.s),
        )
        .await;
    assert_eq!((status, v["total"].as_u64()), (200, Some(1)), "{v}");

    // The same rights: another domain's id, or a channel without a connection, is refused.
    let mut v5 = e.raw(true, "wrong-domain").await;
    let other = format!("m/00000000-0000-4000-8000-000000000000/c/{h}/t");
    assert_eq!(
        v5.publish(&other, b"no", 1, false, 1).await,
        0x87,
        "another domain's form"
    );
    let (c2, s2) = e.app.device(&e.t, &d).await;
    let mut stranger = Raw::ok(e.app.mqtt_addr, &Connect::new(true, "stranger", &c2, &s2)).await;
    assert_eq!(
        stranger.publish(&m("t"), b"no", 1, false, 1).await,
        0x87,
        "no connection"
    );
    assert_eq!(stranger.subscribe(2, &[(&m("#"), 1)], &[]).await, vec![0x87]);

    // Over WebSocket.
    let ws = e.app.ws_addr.expect("ws");
    let mut w = crate::fairness::ws_from("127.0.0.1".parse().expect("ip"), ws).await;
    w.send(e.conn(false, "ws-m").encode()).await;
    assert_eq!(w.recv().await[..4], [0x20, 2, 0, 0]);
    w.send(crate::raw::framed(
        0x32,
        &crate::fairness::publish_body(&m("ws"), 1, b"over ws"),
    ))
    .await;
    assert_eq!(w.recv().await, vec![0x40, 2, 0, 1], "PUBACK over WebSocket");
    e.app.stored_at_least(7).await;
    let (status, v) = e
        .app
        .read(
            &format!("/channels/{h}/messages?subtopic=ws"),
            &format!("Client {}", e.s),
        )
        .await;
    assert_eq!((status, v["total"].as_u64()), (200, Some(1)), "{v}");
}
