//! `fluxgate store migrate` (#25): an embedded deployment with every kind of record moved
//! into PostgreSQL, then served from there by the real binary. Runs when the suite has a
//! PostgreSQL server (`FLUXGATE_TEST_DATABASE_URL`; CI's second run), skipped otherwise.

use crate::child::{data, ChildServer, ADMIN_PASSWORD};
use crate::durable::{call, Fleet};
use crate::raw::Raw;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// Messages written straight into the embedded store before the move.
const HISTORY: usize = 100_000;

async fn migrate(from: &str, to: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"))
        .args(["store", "migrate", "--from", from, "--to", to])
        .output()
        .await
        .expect("run fluxgate store migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The channel's whole history as the reader pages it (newest first), and its total.
async fn history(s: &ChildServer, f: &Fleet) -> (u64, Vec<Value>) {
    let mut pages = Vec::new();
    let mut total = 0;
    for q in [
        "limit=100",
        "limit=100&offset=50000",
        "limit=5&dir=asc",
        "limit=10&name=hist-7",
    ] {
        let (st, v) = call(
            s.http,
            Method::GET,
            &format!("/channels/{}/messages?{q}", f.channel),
            Some(&f.token),
            Value::Null,
        )
        .await;
        assert_eq!(st, 200, "{q}: {v}");
        if q == "limit=100" {
            total = v["total"].as_u64().expect("total");
        }
        pages.push(v["messages"].clone());
    }
    (total, pages)
}

#[tokio::test]
async fn an_embedded_deployment_moves_to_postgres_whole() {
    let Some(server) = storage::testdb::server_url() else {
        eprintln!("skipped: no PostgreSQL server (set FLUXGATE_TEST_DATABASE_URL; CI's second run does)");
        return;
    };
    let sqlite = [("FLUXGATE_STORE_URL", "")];
    let s = ChildServer::start(&sqlite).await;
    let f = Fleet::provision(&s).await;
    let old_token = f.token.clone();
    // A certificate for the publisher; a retained message.
    let (st, cert) = call(
        s.http,
        Method::POST,
        &format!("/{}/certs", f.domain),
        Some(&f.token),
        json!({"client_id": f.publisher.0, "ttl": "24h"}),
    )
    .await;
    assert_eq!(st, 201, "{cert}");
    let serial = cert["serial"].as_str().expect("serial").to_string();
    // Persistent sessions at both levels, offline, with QoS 1 and 2 messages queued.
    for v5 in [false, true] {
        let id = if v5 { "moved-5" } else { "moved-4" };
        let mut sub = Raw::ok(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        assert_eq!(sub.subscribe(1, &[(&f.topic("q"), 2)], &[]).await, vec![2]);
        sub.disconnect_and_wait().await;
    }
    let mut p = f.publisher(&s, true).await;
    assert_eq!(p.publish(&f.topic("q"), b"queued-1", 1, false, 1).await, 0);
    assert_eq!(p.publish(&f.topic("q"), b"queued-2", 2, false, 2).await, 0);
    assert_eq!(p.publish(&f.topic("r"), b"retained", 1, true, 3).await, 0);
    p.disconnect_and_wait().await;
    let dir = s.kill9().await;

    // A long history, written into the embedded store while the server is down.
    let file = data(dir.path()).join("fluxgate.db");
    let (path, domain, channel) = (file.clone(), f.domain.clone(), f.channel.clone());
    tokio::task::spawn_blocking(move || {
        let store = storage::Store::open(&path, &Default::default()).expect("open");
        let batch: Vec<storage::NewMessage> = (0..HISTORY)
            .map(|i| storage::NewMessage {
                domain_id: domain.clone(),
                channel: channel.clone(),
                subtopic: "hist".into(),
                publisher: "history".into(),
                protocol: "http".into(),
                name: format!("hist-{}", i % 10),
                unit: "C".into(),
                time: 1_600_000_000.0 + i as f64 / 4.0,
                value: Some(i as f64),
                format: "senml",
                ..Default::default()
            })
            .collect();
        for chunk in batch.chunks(10_000) {
            store.insert_messages(chunk).expect("history");
        }
    })
    .await
    .expect("history written");
    let s = ChildServer::start_in(dir, &sqlite).await;
    let before = history(&s, &f).await;
    assert!(before.0 >= HISTORY as u64, "the whole history: {}", before.0);
    let dir = s.kill9().await;

    // The move.
    let target = storage::testdb::TestDatabase::create(&server).expect("target database");
    let from = format!("sqlite://{}", file.display());
    let (ok, out, err) = migrate(&from, target.url()).await;
    assert!(ok, "migrate failed: {err}");
    assert!(out.contains("row counts verified"), "{out}");
    assert!(err.contains("messages"), "progress names the tables: {err}");
    // Again into the now non-empty target: refused, nothing touched.
    let (ok, _, err) = migrate(&from, target.url()).await;
    assert!(!ok && err.contains("not empty"), "{err}");

    // Served from PostgreSQL.
    let pg = [("FLUXGATE_STORE_URL", target.url())];
    let s = ChildServer::start_in(dir, &pg).await;
    let (st, _) = s.login(ADMIN_PASSWORD).await;
    assert_eq!(st, 201, "the old password");
    let (st, v) = call(s.http, Method::GET, "/users/profile", Some(&old_token), Value::Null).await;
    assert_eq!(st, 200, "a token issued before the move: {v}");
    let (st, v) = call(
        s.http,
        Method::GET,
        &format!("/{}/certs/{serial}", f.domain),
        Some(&old_token),
        Value::Null,
    )
    .await;
    assert_eq!((st, &v["serial"]), (200, &json!(serial)), "{v}");
    for v5 in [false, true] {
        let id = if v5 { "moved-5" } else { "moved-4" };
        let (mut sub, code, present) = Raw::connect(s.mqtt, &f.sub_conn(v5, id, 3600)).await;
        assert_eq!((code, present), (0, true), "v5={v5}: the session moved");
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = sub.message().await;
            got.push((m.qos, m.payload.clone()));
        }
        assert_eq!(
            got,
            vec![(1, b"queued-1".to_vec()), (2, b"queued-2".to_vec())],
            "v5={v5}: the queued messages, in order"
        );
        assert!(sub.no_message_within(Duration::from_millis(300)).await);
    }
    let mut fresh = Raw::ok(s.mqtt, &f.sub_conn(true, "after-move", 0)).await;
    assert_eq!(fresh.subscribe(1, &[(&f.topic("r"), 1)], &[]).await, vec![1]);
    let m = fresh.message().await;
    assert_eq!((&m.payload[..], m.retain), (&b"retained"[..], true));
    assert_eq!(history(&s, &f).await, before, "the readers answer the same history");
}
