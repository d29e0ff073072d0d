//! Fluxgate on PostgreSQL (#25), where only a database server can show it: two server
//! processes sharing one database keep every check-then-act rule, and an outage of the
//! database is told as such (503, "server unavailable") and recovered from without a restart
//! or a lost acknowledged message.

use crate::child::ChildServer;
use crate::durable::call;
use crate::helpers::{test_config, TestApp};
use crate::pg_server::PgServer;
use crate::raw::{Connect, Raw};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use storage::testdb::TestDatabase;

/// A fresh database: on the suite's server when it has one, else on a server started here
/// (kept alive by the first value). `None` without PostgreSQL.
fn database() -> Option<(Option<PgServer>, TestDatabase)> {
    if let Some(url) = storage::testdb::server_url() {
        return Some((None, TestDatabase::create(&url).expect("database")));
    }
    let server = PgServer::start()?;
    let db = TestDatabase::create(&server.url()).expect("database");
    Some((Some(server), db))
}

async fn register(s: &ChildServer, name: &str) -> String {
    let (st, v) = call(
        s.http,
        Method::POST,
        "/users",
        None,
        json!({"first_name": name, "last_name": "T", "email": format!("{name}@example.com"),
               "credentials": {"username": name, "secret": format!("{name}-password")}}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().expect("id").to_string()
}

async fn relate(s: &ChildServer, token: &str, domain: &str, user: &str, rel: &str) -> u16 {
    call(
        s.http,
        Method::POST,
        &format!("/domains/{domain}/users/assign"),
        Some(token),
        json!({"user_ids": [user], "relation": rel}),
    )
    .await
    .0
}

async fn admins(s: &ChildServer, token: &str, domain: &str) -> usize {
    let (st, v) = call(
        s.http,
        Method::GET,
        &format!("/domains/{domain}/users?limit=100"),
        Some(token),
        Value::Null,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter(|u| u["relation"] == "admin")
        .count()
}

/// Two processes on one database, each demoting one of a domain's last two admins at the
/// same moment, round after round: one demotion wins, the other is refused (409), and the
/// domain always keeps one admin. Then 8 creates of the same client id spread over both:
/// exactly one 201.
#[tokio::test]
async fn two_processes_keep_the_rules_of_one() {
    let Some((_server, db)) = database() else { return };
    let env = [("FLUXGATE_STORE_URL", db.url())];
    let a = ChildServer::start(&env).await;
    let b = ChildServer::start(&env).await;
    let t = a.admin_token().await;
    let (st, v) = call(
        a.http,
        Method::POST,
        "/domains",
        Some(&t),
        json!({"name": "twin", "route": "twin"}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let d = v["id"].as_str().expect("domain").to_string();
    let (u1, u2) = (register(&a, "twin-one").await, register(&b, "twin-two").await);
    for u in [&u1, &u2] {
        assert_eq!(relate(&a, &t, &d, u, "admin").await, 201);
    }
    // The creator leaves: u1 and u2 are the last two admins.
    let admin_id = call(a.http, Method::GET, "/users/profile", Some(&t), Value::Null)
        .await
        .1["id"]
        .clone();
    let (st, v) = call(
        b.http,
        Method::POST,
        &format!("/domains/{d}/users/unassign"),
        Some(&t),
        json!({"user_id": admin_id}),
    )
    .await;
    assert_eq!(st, 204, "{v}");
    for round in 0..12 {
        let (r1, r2) = tokio::join!(relate(&a, &t, &d, &u1, "viewer"), relate(&b, &t, &d, &u2, "viewer"));
        let mut got = [r1, r2];
        got.sort();
        assert_eq!(got, [201, 409], "round {round}: one demotion, one refusal");
        assert_eq!(admins(&a, &t, &d).await, 1, "round {round}");
        // Both admins again for the next round.
        for u in [&u1, &u2] {
            assert_eq!(relate(&b, &t, &d, u, "admin").await, 201);
        }
    }
    let creates = (0..8).map(|i| {
        let (s, t, d) = (if i % 2 == 0 { &a } else { &b }, t.clone(), d.clone());
        async move {
            call(
                s.http,
                Method::POST,
                &format!("/{d}/clients"),
                Some(&t),
                json!({"id": "same-id", "name": format!("copy {i}")}),
            )
            .await
            .0
        }
    });
    let mut statuses = futures_join_all(creates).await;
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
}

/// Runs the futures concurrently; their outputs in order.
async fn futures_join_all<F: std::future::Future<Output = u16>>(fs: impl Iterator<Item = F>) -> Vec<u16> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out = vec![0; set.len()];
    let mut pending: Vec<usize> = (0..set.len()).collect();
    std::future::poll_fn(|cx| {
        pending.retain(|&i| match set[i].as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                out[i] = v;
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out
}

/// The database goes away while a device publishes at QoS 1 and REST calls run: REST answers
/// 503 with Retry-After naming the store (never 500), CONNECT is refused as "server
/// unavailable" (5: 0x88, 3.1.1: 0x03), `/health` names the store. The database comes back:
/// Fluxgate serves again within 5 s, by itself, and every acknowledged message is stored.
#[tokio::test]
async fn a_database_outage_is_unavailable_and_recovered_from() {
    let Some(server) = PgServer::start() else { return };
    let db = TestDatabase::create(&server.url()).expect("database");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    cfg.store.url = fluxgate::config::Secret(db.url().to_string());
    cfg.store.busy_timeout_ms = 1000;
    let app = TestApp::spawn_with(dir, cfg).await;
    let (_, t) = app.user("outage").await;
    let d = app.domain(&t, "outage").await;
    let h = app.channel(&t, &d, "ch").await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish"]).await;
    let topic = format!("channels/{h}/messages");

    // A device publishes numbered QoS 1 messages, reconnecting when it must; it records what
    // was acknowledged.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (addr, cl, sec) = (app.mqtt_addr, c.clone(), s.clone());
    let publisher = tokio::spawn(async move {
        let mut acked = HashSet::new();
        let mut i: u16 = 0;
        while !*stop_rx.borrow() {
            let (mut raw, code, _) = Raw::connect(addr, &Connect::new(true, "outage-pub", &cl, &sec)).await;
            if code != 0 {
                let _ = tokio::time::timeout(Duration::from_millis(100), stop_rx.changed()).await;
                continue;
            }
            while !*stop_rx.borrow() {
                i = i.wrapping_add(1).max(1);
                let body = format!(r#"[{{"n":"seq","v":{i}}}]"#);
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    raw.publish(&topic, body.as_bytes(), 1, false, i),
                )
                .await
                {
                    Ok(0) => {
                        acked.insert(i);
                    }
                    // Refused, closed or held back: this one is not acknowledged.
                    _ => break,
                }
            }
        }
        acked
    });
    app.stored_at_least(5).await;

    server.halt();
    let (st, v) = app.get(&format!("/{d}/clients"), &t).await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"], "unavailable", "{v}");
    assert!(v["message"].as_str().unwrap_or("").contains("store"), "{v}");
    let r = app
        .client
        .get(format!("{}/{d}/channels", app.url))
        .bearer_auth(&t)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let (st, v) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!((st, &v["checks"]["store"][0]["status"]), (503, &json!("fail")), "{v}");
    for (v5, want) in [(true, 0x88), (false, 0x03)] {
        let (_, code, _) = Raw::connect(app.mqtt_addr, &Connect::new(v5, &format!("late-{v5}"), &c, &s)).await;
        assert_eq!(code, want, "v5={v5}: server unavailable, not bad credentials");
    }
    // Logins are not "wrong password" either.
    let (st, v) = app.login("outage", "outage-password").await;
    assert_eq!(st, 503, "{v}");

    server.resume();
    let back = Instant::now();
    loop {
        let (st, _) = app.get(&format!("/{d}/clients"), &t).await;
        if st == 200 {
            break;
        }
        assert_ne!(st, 500);
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "serving again within 5 s ({st})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, code, _) = Raw::connect(app.mqtt_addr, &Connect::new(true, "after", &c, &s)).await;
    assert_eq!(code, 0, "CONNECT accepted again");
    let _ = stop_tx.send(true);
    let acked = publisher.await.expect("publisher");
    assert!(!acked.is_empty());
    // Every acknowledged message is stored (the pipeline retried through the outage).
    let auth = format!("Bearer {t}");
    let mut stored = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !acked.is_subset(&stored) {
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages missing",
            acked.difference(&stored).count()
        );
        app.stored_at_least(acked.len() as u64).await;
        stored.clear();
        let mut offset = 0;
        loop {
            let (st, v) = app
                .read(
                    &format!("/channels/{h}/messages?name=seq&limit=1000&offset={offset}"),
                    &auth,
                )
                .await;
            assert_eq!(st, 200, "{v}");
            let page = v["messages"].as_array().expect("messages");
            stored.extend(page.iter().filter_map(|m| m["value"].as_f64().map(|v| v as u16)));
            offset += 1000;
            if page.len() < 1000 {
                break;
            }
        }
    }
    drop(app);
}

/// TLS to the database: with `store.tls_ca_file` and `sslmode=require` the store opens over
/// TLS, verified against that CA; another CA is refused (so the certificate is really checked);
/// `sslmode=require` without a CA is refused with a message saying what to set.
#[tokio::test]
async fn tls_to_the_database_is_verified() {
    let ca_dir = tempfile::tempdir().expect("dir");
    let ca = certs::Ca::load_or_create(ca_dir.path(), None).expect("ca");
    let (cert, key) = ca
        .issue_server(&["127.0.0.1".into(), "localhost".into()])
        .expect("server certificate");
    let Some(server) = PgServer::start_with_files(
        &[("server.crt", &cert), ("server.key", &key)],
        &[
            ("ssl", "on"),
            ("ssl_cert_file", "{dir}/server.crt"),
            ("ssl_key_file", "{dir}/server.key"),
        ],
    ) else {
        return;
    };
    let db = TestDatabase::create(&server.url()).expect("database");
    let required = storage::StoreUrl::Postgres(format!("{}?sslmode=require", db.url()));
    let other_dir = tempfile::tempdir().expect("dir");
    let other = certs::Ca::load_or_create(other_dir.path(), None).expect("another ca");
    std::fs::write(other_dir.path().join("other.pem"), other.pem()).expect("pem");
    let open = move |ca_file: Option<std::path::PathBuf>| {
        let (url, cfg) = (
            required.clone(),
            storage::StoreConfig {
                tls_ca_file: ca_file,
                busy_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        );
        std::thread::spawn(move || storage::Store::open_url(&url, &cfg).map(|s| s.count_users()))
            .join()
            .expect("open")
    };
    let ok = open(Some(ca_dir.path().join("ca.crt")));
    assert!(matches!(ok, Ok(Ok(0))), "over TLS with the right CA: {ok:?}");
    let refused = open(Some(other_dir.path().join("other.pem")));
    assert!(refused.is_err(), "a server certificate from another CA is refused");
    match open(None) {
        Err(storage::StoreError::Invalid(m)) => assert!(m.contains("tls_ca_file"), "{m}"),
        other => panic!("sslmode=require without a CA: {other:?}"),
    }
}
