//! Messages: HTTP publishing, SenML, the store, the readers, the pipeline's guarantees.

use crate::helpers::{test_config, TestApp};
use crate::mqtt_client::{connect, Opts};
use serde_json::{json, Value};

const SEED: &str = r#"[{"bn":"some-base-name:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
  {"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3}]"#;
const SENML: &str = "application/senml+json";

/// A domain with a channel and a client connected to it for both types:
/// (app, token, domain, channel, client id, secret).
async fn setup_in(app: TestApp) -> (TestApp, String, String, String, String, String) {
    let (_, t) = app.user("msgowner").await;
    let d = app.domain(&t, "msgs").await;
    let h = app.channel(&t, &d, "ch").await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
    (app, t, d, h, c, s)
}

async fn setup() -> (TestApp, String, String, String, String, String) {
    setup_in(TestApp::spawn().await).await
}

/// An MQTT session of the device, subscribed at QoS 1 to all of the channel's topics.
async fn subscribed_device(app: &TestApp, id: &str, c: &str, s: &str, h: &str) -> crate::mqtt_client::Conn {
    let mut m = connect(
        app.mqtt_addr,
        Opts {
            id,
            user: Some(c),
            pass: Some(s),
            ..Default::default()
        },
    )
    .connected()
    .await;
    m.subscribe(&format!("channels/{h}/messages/#"), 1).await;
    m
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|x| (x - b).abs() < 1e-6)
}

#[tokio::test]
async fn the_documents_example_round_trips() {
    let (app, _, _, h, c, s) = setup().await;
    let (st, body) = app
        .send(
            &format!("/http/channels/{h}/messages?durable=true"),
            &format!("Client {s}"),
            SENML,
            SEED,
        )
        .await;
    assert_eq!((st, body.as_str()), (202, ""));
    let (st, v) = app
        .read(&format!("/channels/{h}/messages"), &format!("Client {s}"))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (&v["offset"], &v["limit"], &v["format"], &v["total"]),
        (&json!(0), &json!(10), &json!("messages"), &json!(3))
    );
    let m = v["messages"].as_array().expect("messages");
    let want = [
        ("some-base-name:voltage", "V", 1276020076.001, 120.1),
        ("some-base-name:current", "A", 1276020072.001, 1.3),
        ("some-base-name:current", "A", 1276020071.001, 1.2),
    ];
    for (got, (name, unit, time, value)) in m.iter().zip(want) {
        assert_eq!(
            (&got["channel"], &got["publisher"], &got["protocol"]),
            (&json!(h), &json!(c), &json!("http"))
        );
        assert_eq!((&got["name"], &got["unit"]), (&json!(name), &json!(unit)));
        assert!(close(&got["time"], time) && close(&got["value"], value), "{got}");
    }
}

#[tokio::test]
async fn senml_edge_cases_over_http() {
    let (app, _, _, h, _, s) = setup().await;
    let auth = format!("Client {s}");
    let path = format!("/channels/{h}/messages/room/1?durable=true");
    let ok = r#"[{"bn":"dev:","bu":"C","bv":20,"bs":100,"n":"temp","v":1.5,"t":-30},{"n":"energy","s":7},
                {"n":"state","vs":"on"},{"n":"door","vb":false},{"n":"blob","vd":"AAEC"}]"#;
    let (st, body) = app.send(&path, &auth, SENML, ok).await;
    assert_eq!(st, 202, "{body}");
    let (_, v) = app
        .read(
            &format!("/channels/{h}/messages?limit=10&dir=asc&subtopic=room/1"),
            &auth,
        )
        .await;
    assert_eq!(v["total"], 5, "{v}");
    let by_name = |n: &str| {
        v["messages"]
            .as_array()
            .expect("m")
            .iter()
            .find(|m| m["name"] == n)
            .cloned()
            .expect("record")
    };
    assert!(close(&by_name("dev:temp")["value"], 21.5));
    assert_eq!(by_name("dev:temp")["unit"], "C");
    assert!(close(&by_name("dev:energy")["sum"], 107.0));
    assert!(by_name("dev:energy").get("value").is_none());
    assert_eq!(by_name("dev:state")["string_value"], "on");
    assert_eq!(by_name("dev:door")["bool_value"], false);
    assert_eq!(by_name("dev:blob")["data_value"], "AAEC");
    // Relative time: 30 s before now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    let t = by_name("dev:temp")["time"].as_f64().expect("t");
    assert!((now - 30.0 - t).abs() < 60.0, "{t} vs {now}");

    for (bad, why) in [
        (r#"[{"n":"a","v":1,"vb":true}]"#, "record 0"),
        (r#"[{"n":"x","v":1},{"n":"bad name","v":1}]"#, "record 1"),
        ("[]", "empty"),
        (r#"[{"n":"a"}]"#, "record 0"),
        ("not json", "JSON"),
    ] {
        let (st, body) = app.send(&path, &auth, SENML, bad).await;
        assert_eq!(st, 400, "{bad}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    // Plain JSON is stored as a document.
    let (st, _) = app
        .send(
            &format!("/channels/{h}/messages?durable=true"),
            &auth,
            "application/json",
            r#"{"temp": 21}"#,
        )
        .await;
    assert_eq!(st, 202);
    let (_, v) = app.read(&format!("/channels/{h}/messages?limit=1"), &auth).await;
    assert_eq!(v["messages"][0]["payload"], json!({"temp": 21}));
    // Other content types, empty bodies, bad subtopics, oversized bodies.
    assert_eq!(app.send(&path, &auth, "text/plain", "21").await.0, 415);
    assert_eq!(
        app.send(&format!("/channels/{h}/messages"), &auth, "application/json", "")
            .await
            .0,
        400
    );
    assert_eq!(
        app.send(&format!("/channels/{h}/messages/a/+"), &auth, SENML, ok)
            .await
            .0,
        400
    );
    let big = format!("[{}]", vec![r#"{"n":"a","v":1}"#; 100_000].join(","));
    assert_eq!(app.send(&path, &auth, SENML, &big).await.0, 413);
}

#[tokio::test]
async fn device_and_user_authorization() {
    let (app, t, d, h, c, s) = setup().await;
    let (sub_only, ss) = app.device(&t, &d).await;
    let (pub_only, ps) = app.device(&t, &d).await;
    app.connect(&t, &d, &sub_only, &h, &["subscribe"]).await;
    app.connect(&t, &d, &pub_only, &h, &["publish"]).await;
    let path = format!("/channels/{h}/messages");
    assert_eq!(app.send(&path, "Client wrong-secret", SENML, SEED).await.0, 401);
    assert_eq!(app.send(&path, "", SENML, SEED).await.0, 401);
    assert_eq!(app.send(&path, &format!("Client {ss}"), SENML, SEED).await.0, 403);
    assert_eq!(app.send(&path, &format!("Client {ps}"), SENML, SEED).await.0, 202);
    // HTTP Basic with client id and secret, and today's Magistrala path.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{c}:{s}"))
    );
    assert_eq!(app.send(&path, &basic, SENML, SEED).await.0, 202);
    assert_eq!(
        app.send(&format!("/m/{d}/c/{h}/sub"), &format!("Client {s}"), SENML, SEED)
            .await
            .0,
        202
    );
    // An unknown channel is answered like wrong credentials (no existence oracle, #14).
    assert_eq!(
        app.send(
            "/channels/00000000-0000-4000-8000-000000000000/messages",
            &format!("Client {s}"),
            SENML,
            SEED
        )
        .await
        .0,
        401
    );

    // Readers: publish-only clients may not read; users need read access to the domain.
    assert_eq!(app.read(&path, &format!("Client {ps}")).await.0, 403);
    assert_eq!(app.read(&path, &format!("Client {ss}")).await.0, 200);
    assert_eq!(app.read(&path, &format!("Bearer {t}")).await.0, 200);
    assert_eq!(
        app.read(&format!("/{d}/channels/{h}/messages"), &format!("Bearer {t}"))
            .await
            .0,
        200
    );
    let (_, other) = app.user("outsider").await;
    assert_eq!(app.read(&path, &format!("Bearer {other}")).await.0, 403);
    assert_eq!(
        app.read(&format!("/{d}/channels/{h}/messages"), &format!("Bearer {other}"))
            .await
            .0,
        403
    );
    assert_eq!(app.read(&path, "Client nope").await.0, 401);
}

#[tokio::test]
async fn mqtt_messages_are_stored_and_http_messages_reach_mqtt() {
    let (app, _, _, h, c, s) = setup().await;
    let mut m = subscribed_device(&app, "dev", &c, &s, &h).await;
    // HTTP -> MQTT subscriber.
    let (st, _) = app
        .send(
            &format!("/channels/{h}/messages/kitchen"),
            &format!("Client {s}"),
            SENML,
            SEED,
        )
        .await;
    assert_eq!(st, 202);
    let (topic, payload) = m.message().await;
    assert_eq!(topic, format!("channels/{h}/messages/kitchen"));
    assert_eq!(payload, SEED.as_bytes());
    app.stored_at_least(3).await;
    // MQTT -> store, SenML and not.
    m.publish(
        &format!("channels/{h}/messages/garage"),
        br#"[{"n":"temp","v":7}]"#,
        1,
        false,
    )
    .await;
    m.publish(&format!("channels/{h}/messages/garage"), b"\x01\x02 binary", 1, false)
        .await;
    app.stored_at_least(5).await;
    let (_, v) = app
        .read(
            &format!("/channels/{h}/messages?protocol=mqtt&dir=asc"),
            &format!("Client {s}"),
        )
        .await;
    assert_eq!(v["total"], 2, "{v}");
    let first = &v["messages"][0];
    assert_eq!(
        (&first["publisher"], &first["name"], &first["subtopic"]),
        (&json!(c), &json!("temp"), &json!("garage"))
    );
    assert!(close(&first["value"], 7.0));
    assert_eq!(v["messages"][1]["format"], "raw");
}

#[tokio::test]
async fn with_store_mqtt_off_mqtt_is_relayed_but_only_http_is_stored() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = test_config(dir.path());
    cfg.messages.store_mqtt = false;
    let (app, _, _, h, c, s) = setup_in(TestApp::spawn_with(dir, cfg).await).await;
    let mut m = subscribed_device(&app, "relay-dev", &c, &s, &h).await;
    m.publish(
        &format!("channels/{h}/messages/garage"),
        br#"[{"n":"t","v":1}]"#,
        1,
        false,
    )
    .await;
    let (topic, _) = m.message().await;
    assert_eq!(topic, format!("channels/{h}/messages/garage"), "still delivered");
    // The queue is FIFO: once the later HTTP message is stored, a stored MQTT one would be too.
    let (st, _) = app
        .send(&format!("/channels/{h}/messages"), &format!("Client {s}"), SENML, SEED)
        .await;
    assert_eq!(st, 202);
    app.stored_at_least(3).await;
    let (_, v) = app
        .read(&format!("/channels/{h}/messages"), &format!("Client {s}"))
        .await;
    assert_eq!(v["total"], 3, "only the HTTP message's records: {v}");
    let (_, v) = app
        .read(&format!("/channels/{h}/messages?protocol=mqtt"), &format!("Client {s}"))
        .await;
    assert_eq!(v["total"], 0);
}

#[tokio::test]
async fn reader_filters_pagination_and_aggregation() {
    let (app, t, d, h, c, s) = setup().await;
    let (c2, s2) = app.device(&t, &d).await;
    app.connect(&t, &d, &c2, &h, &["publish"]).await;
    let auth = format!("Client {s}");
    // Ten temperatures at t = 1000..1009 (values 0..9), from two publishers, two subtopics.
    let records: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"n":"temp","u":"C","v":{i},"t":{}}}"#, 1_700_000_000 + i))
        .collect();
    let (st, _) = app
        .send(
            &format!("/channels/{h}/messages/a?durable=true"),
            &auth,
            SENML,
            &format!("[{}]", records[..5].join(",")),
        )
        .await;
    assert_eq!(st, 202);
    let (st, _) = app
        .send(
            &format!("/channels/{h}/messages/b?durable=true"),
            &format!("Client {s2}"),
            SENML,
            &format!("[{}]", records[5..].join(",")),
        )
        .await;
    assert_eq!(st, 202);
    let extra = r#"[{"n":"hum","v":50,"t":1700000005},{"n":"state","vs":"running","t":1700000006},{"n":"door","vb":true,"t":1700000007}]"#;
    app.send(&format!("/channels/{h}/messages?durable=true"), &auth, SENML, extra)
        .await;

    let total = |q: &str| {
        let (app, auth, h) = (&app, &auth, &h);
        let q = q.to_string();
        async move {
            let (st, v) = app.read(&format!("/channels/{h}/messages?{q}"), auth).await;
            assert_eq!(st, 200, "{q}: {v}");
            v
        }
    };
    assert_eq!(total("").await["total"], 13);
    assert_eq!(total("name=temp").await["total"], 10);
    assert_eq!(total("subtopic=a").await["total"], 5);
    assert_eq!(total(&format!("publisher={c2}")).await["total"], 5);
    assert_eq!(total(&format!("publisher={c}&name=temp")).await["total"], 5);
    assert_eq!(total("protocol=http").await["total"], 13);
    assert_eq!(total("protocol=mqtt").await["total"], 0);
    assert_eq!(total("name=temp&v=3").await["total"], 1);
    assert_eq!(total("name=temp&v=3&comparator=lt").await["total"], 3);
    assert_eq!(total("name=temp&v=3&comparator=le").await["total"], 4);
    assert_eq!(total("name=temp&v=7&comparator=gt").await["total"], 2);
    assert_eq!(total("name=temp&v=7&comparator=ge").await["total"], 3);
    assert_eq!(total("vs=run").await["total"], 1);
    assert_eq!(total("vb=true").await["total"], 1);
    assert_eq!(total("from=1700000002&to=1700000004").await["total"], 2);
    // Milliseconds are accepted for from/to.
    assert_eq!(total("from=1700000002000&to=1700000004000").await["total"], 2);
    // Pagination: totals stay, pages move; newest first by default.
    let v = total("name=temp&limit=3&offset=2").await;
    assert_eq!(
        (&v["total"], &v["limit"], &v["offset"]),
        (&json!(10), &json!(3), &json!(2))
    );
    let vals: Vec<f64> = v["messages"]
        .as_array()
        .expect("m")
        .iter()
        .map(|m| m["value"].as_f64().expect("v"))
        .collect();
    assert_eq!(vals, vec![7.0, 6.0, 5.0]);
    let v = total("name=temp&limit=2&dir=asc").await;
    assert_eq!(v["messages"][0]["value"], 0.0);

    // Aggregations over [1700000000, 1700000010) in 5 s buckets: values 0..4 and 5..9.
    let agg = |a: &str| format!("name=temp&from=1700000000&to=1700000010&aggregation={a}&interval=5s&dir=asc");
    let bucket_values = |v: &Value| {
        v["messages"]
            .as_array()
            .expect("m")
            .iter()
            .map(|m| m["value"].as_f64().expect("v"))
            .collect::<Vec<_>>()
    };
    assert_eq!(bucket_values(&total(&agg("max")).await), vec![4.0, 9.0]);
    assert_eq!(bucket_values(&total(&agg("min")).await), vec![0.0, 5.0]);
    assert_eq!(bucket_values(&total(&agg("sum")).await), vec![10.0, 35.0]);
    assert_eq!(bucket_values(&total(&agg("avg")).await), vec![2.0, 7.0]);
    assert_eq!(bucket_values(&total(&agg("count")).await), vec![5.0, 5.0]);
    let v = total(&agg("max")).await;
    assert_eq!(v["total"], 2);
    assert!(close(&v["messages"][1]["time"], 1700000005.0));

    // Invalid values name the parameter.
    for (q, name) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("offset=-1", "offset"),
        ("v=abc", "`v`"),
        ("v=1&comparator=near", "comparator"),
        ("vb=maybe", "vb"),
        ("from=yesterday", "from"),
        ("aggregation=max", "aggregation"),
        ("aggregation=median&from=1&to=2", "aggregation"),
        ("aggregation=max&from=1&to=2&interval=soon", "interval"),
        ("dir=sideways", "dir"),
    ] {
        let (st, v) = app.read(&format!("/channels/{h}/messages?{q}"), &auth).await;
        assert_eq!(st, 400, "{q}");
        assert!(v["message"].as_str().is_some_and(|m| m.contains(name)), "{q}: {v}");
    }
}

#[tokio::test]
async fn graceful_shutdown_drains_the_queue() {
    let (app, t, _, h, _, s) = setup().await;
    let n = 200;
    for i in 0..n {
        let body = format!(r#"[{{"n":"seq","v":{i}}}]"#);
        let (st, _) = app
            .send(&format!("/channels/{h}/messages"), &format!("Client {s}"), SENML, &body)
            .await;
        assert_eq!(st, 202);
    }
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir).await;
    let (st, v) = app
        .read(&format!("/channels/{h}/messages?name=seq"), &format!("Bearer {t}"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["total"], n, "every accepted message survived the restart");
}

#[tokio::test]
async fn a_full_queue_answers_503_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = test_config(dir.path());
    cfg.messages.queue_size = 2;
    cfg.messages.batch_size = 1;
    cfg.store.busy_timeout_ms = 20;
    let (app, _, _, h, _, s) = setup_in(TestApp::spawn_with(dir, cfg).await).await;
    // Block the writer: another process holds SQLite's write lock.
    let blocker = app.hold_write_lock();
    let mut accepted = 0u64;
    let mut refused = 0;
    for i in 0..20 {
        let body = format!(r#"[{{"n":"q","v":{i}}}]"#);
        let r = app
            .client
            .post(format!("{}/channels/{h}/messages", app.url))
            .header("authorization", format!("Client {s}"))
            .header("content-type", SENML)
            .body(body)
            .send()
            .await
            .expect("send");
        match r.status().as_u16() {
            202 => accepted += 1,
            503 => {
                assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the queue filled up");
    assert!(accepted >= 2, "some were accepted");
    drop(blocker);
    app.stored_at_least(accepted).await;
    let (_, v) = app
        .read(&format!("/channels/{h}/messages?name=q"), &format!("Client {s}"))
        .await;
    assert_eq!(v["total"], accepted);
}
