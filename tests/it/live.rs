//! Live views of channels (#16): `GET /{domainID}/channels/{id}/messages/live` as
//! Server-Sent Events, fed by the messages the broker and the HTTP adapter accept.

use crate::engine::{env, env_with, Env};
use serde_json::Value;

/// An open event stream.
struct Live {
    resp: reqwest::Response,
    buf: String,
}

impl Live {
    async fn open(e: &Env, token: &str) -> Result<Live, (u16, String)> {
        let resp = e
            .app
            .client
            .get(format!("{}/{}/channels/{}/messages/live", e.app.url, e.d, e.h))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.text().await.unwrap_or_default()));
        }
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Ok(Live {
            resp,
            buf: String::new(),
        })
    }

    /// The next `message` event's JSON; `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data:")).collect();
                if event.lines().any(|l| l == "event:message") && !data.is_empty() {
                    return Some(serde_json::from_str(&data.join("\n")).expect("event JSON"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an event within 10 s");
            match chunk {
                Ok(Some(c)) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Readers of the domain only: no token 401, a stranger 403, a viewer of the domain allowed;
/// a channel of another domain is not found.
#[tokio::test]
async fn only_readers_of_the_domain_watch() {
    let e = env().await;
    assert_eq!(Live::open(&e, "not-a-token").await.err().map(|x| x.0), Some(401));
    let (_, stranger) = e.app.user("live-stranger").await;
    assert_eq!(Live::open(&e, &stranger).await.err().map(|x| x.0), Some(403));
    let (viewer_id, viewer) = e.app.user("live-viewer").await;
    e.app.assign(&e.t, &e.d, &viewer_id, "viewer").await;
    assert!(Live::open(&e, &viewer).await.is_ok(), "a viewer watches");
    let (s, v) = e
        .app
        .get(&format!("/{}/channels/not-a-channel/messages/live", e.d), &e.t)
        .await;
    assert_eq!(s, 404, "{v}");
}

/// Messages published over MQTT (both levels) and HTTP arrive in order, with publisher,
/// subtopic, protocol and the SenML records.
#[tokio::test]
async fn messages_arrive_in_order_with_their_origin() {
    let e = env().await;
    let mut live = Live::open(&e, &e.t).await.expect("open");
    let mut pubs = Vec::new();
    for v5 in [false, true] {
        pubs.push(e.raw(v5, &format!("live-pub-{v5}")).await);
    }
    let mut want = Vec::new();
    for i in 0..20u16 {
        let p = &mut pubs[(i % 2) as usize];
        let body = format!(r#"[{{"n":"temp","u":"Cel","v":{i}}}]"#);
        assert_eq!(p.publish(&e.topic("room"), body.as_bytes(), 1, false, i + 1).await, 0);
        want.push(i as f64);
    }
    let (st, _) = e
        .app
        .send(
            &format!("/http/channels/{}/messages/hall", e.h),
            &format!("Client {}", e.s),
            "application/senml+json",
            r#"[{"n":"temp","u":"Cel","v":99}]"#,
        )
        .await;
    assert_eq!(st, 202);
    want.push(99.0);
    for (i, v) in want.iter().enumerate() {
        let ev = live.next().await.expect("an event");
        assert_eq!(ev["senml"][0]["v"].as_f64(), Some(*v), "event {i}: {ev}");
        assert_eq!(ev["senml"][0]["n"], "temp");
        assert_eq!(ev["senml"][0]["u"], "Cel");
        assert_eq!(ev["publisher"], e.c.as_str());
        assert_eq!(ev["channel"], e.h.as_str());
        if *v == 99.0 {
            assert_eq!(
                (ev["protocol"].as_str(), ev["subtopic"].as_str()),
                (Some("http"), Some("hall"))
            );
        } else {
            assert_eq!(
                (ev["protocol"].as_str(), ev["subtopic"].as_str()),
                (Some("mqtt"), Some("room"))
            );
        }
    }
}

/// A viewer that does not read is dropped once its queue is full: its stream ends before
/// all messages, and its place is free again.
#[tokio::test]
async fn a_slow_viewer_is_dropped() {
    let e = env_with(|c| {
        c.messages.store_mqtt = false;
        c.http.max_live_viewers = 1;
    })
    .await;
    let mut slow = Live::open(&e, &e.t).await.expect("open");
    let mut p = e.raw(true, "live-flood").await;
    let big = format!(r#"[{{"n":"blob","vs":"{}"}}]"#, "x".repeat(60_000));
    let n = 600u16;
    for i in 0..n {
        assert_eq!(p.publish(&e.topic("flood"), big.as_bytes(), 1, false, i + 1).await, 0);
    }
    let mut got = 0;
    while slow.next().await.is_some() {
        got += 1;
    }
    assert!(got < n, "the stream ended after {got} of {n}");
    assert!(Live::open(&e, &e.t).await.is_ok(), "the dropped viewer's place is free");
}

/// `fluxgate messages watch <channel> <token>` prints each message as one JSON line.
#[tokio::test]
async fn the_cli_watches_a_channel() {
    use tokio::io::AsyncBufReadExt;
    let e = env().await;
    let config = tempfile::tempdir().expect("dir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"))
        .args(["messages", "watch", &e.h, &e.t, "--url", &e.app.url])
        .env("FLUXGATE_CLI_CONFIG", config.path().join("cli.json"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the CLI");
    let mut err = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(10), err.next_line())
        .await
        .expect("the CLI opened the view in time")
        .expect("stderr")
        .expect("a line");
    assert!(ready.starts_with("watching channel"), "{ready}");
    let mut p = e.raw(true, "live-cli").await;
    assert_eq!(
        p.publish(&e.topic("cli"), br#"[{"n":"hum","v":40}]"#, 1, false, 1)
            .await,
        0
    );
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(10), out.next_line())
        .await
        .expect("a line in time")
        .expect("stdout")
        .expect("a line");
    let v: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(
        (v["subtopic"].as_str(), v["senml"][0]["v"].as_f64()),
        (Some("cli"), Some(40.0))
    );
    let _ = child.kill().await;
}

/// Stopping the server ends open live views instead of waiting for them.
#[tokio::test]
async fn stopping_ends_live_views() {
    let e = env().await;
    let mut live = Live::open(&e, &e.t).await.expect("open");
    tokio::time::timeout(std::time::Duration::from_secs(20), e.app.stop())
        .await
        .expect("the server stopped with a live view open");
    assert!(live.next().await.is_none(), "the stream ended");
}

/// One ingress: a message published over MQTT and one over HTTP to the same channel reach
/// every consumer the same way: a persistent session (queued while it is offline), a live
/// MQTT subscriber, a live view and the store, each with its origin.
#[tokio::test]
async fn mqtt_and_http_messages_reach_every_consumer_alike() {
    let e = env().await;
    let filter = format!("channels/{}/messages/#", e.h);
    let mut pc = e.conn(false, "ingress-persistent");
    pc.clean = false;
    let (mut persistent, code, _) = crate::raw::Raw::connect(e.app.mqtt_addr, &pc).await;
    assert_eq!(code, 0);
    assert_eq!(persistent.subscribe(1, &[(&filter, 1)], &[]).await, vec![1]);
    persistent.disconnect().await;
    let mut sub = e.raw(true, "ingress-live").await;
    assert_eq!(sub.subscribe(1, &[(&filter, 1)], &[]).await, vec![1]);
    let mut live = Live::open(&e, &e.t).await.expect("open");

    let over_mqtt = r#"[{"n":"ingress","v":1}]"#;
    let over_http = r#"[{"n":"ingress","v":2}]"#;
    let mut p = e.raw(false, "ingress-pub").await;
    assert_eq!(p.publish(&e.topic("a"), over_mqtt.as_bytes(), 1, false, 1).await, 0);
    let (st, _) = e
        .app
        .send(
            &format!("/http/channels/{}/messages/a?durable=true", e.h),
            &format!("Client {}", e.s),
            "application/senml+json",
            over_http,
        )
        .await;
    assert_eq!(st, 202);
    let want = [(over_mqtt, "mqtt", 1.0), (over_http, "http", 2.0)];

    // The live MQTT subscriber.
    for (body, _, _) in want {
        let m = sub.message().await;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            (e.topic("a").as_str(), body.as_bytes())
        );
    }
    // The live view.
    for (_, protocol, v) in want {
        let ev = live.next().await.expect("an event");
        assert_eq!(
            (&ev["protocol"], &ev["subtopic"], &ev["publisher"], &ev["senml"][0]["v"]),
            (
                &serde_json::json!(protocol),
                &serde_json::json!("a"),
                &serde_json::json!(e.c),
                &serde_json::json!(v)
            ),
            "{ev}"
        );
    }
    // The persistent session, back: both were queued for it.
    let (mut persistent, code, present) = crate::raw::Raw::connect(e.app.mqtt_addr, &pc).await;
    assert_eq!((code, present), (0, true));
    for (body, _, _) in want {
        let m = persistent.message().await;
        assert_eq!(&m.payload[..], body.as_bytes());
    }
    // The store.
    e.app.stored_at_least(2).await;
    let (st, v) = e
        .app
        .read(
            &format!("/channels/{}/messages?name=ingress", e.h),
            &format!("Client {}", e.s),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut stored: Vec<(String, String, f64)> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["protocol"].as_str().unwrap_or_default().to_string(),
                m["subtopic"].as_str().unwrap_or_default().to_string(),
                m["value"].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    stored.sort_by(|a, b| a.2.total_cmp(&b.2));
    assert_eq!(
        stored,
        vec![("mqtt".into(), "a".into(), 1.0), ("http".into(), "a".into(), 2.0)],
        "{v}"
    );
}
