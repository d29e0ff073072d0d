//! Hardening (#14): one regression test per finding of the attack run, over real sockets.

use crate::helpers::{test_config, TestApp};
use reqwest::Method;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn http_addr(app: &TestApp) -> std::net::SocketAddr {
    app.url.trim_start_matches("http://").parse().expect("addr")
}

/// Reads until the server closes; `true` if it closed without sending anything.
async fn closed_silently(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let mut got = 0;
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Err(_) => panic!("not closed within {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got == 0,
            Ok(Ok(n)) => got += n,
        }
    }
}

/// 1. Slowloris: incomplete request heads are closed after the head timeout, idle connections
/// after the idle timeout; `/health` answers while they are held; beyond the connection cap
/// new connections are closed at once and room comes back when the held ones are closed.
#[tokio::test]
async fn slow_and_idle_http_connections_are_closed_and_capped() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    cfg.http.header_timeout = 1;
    cfg.http.idle_timeout = 2;
    cfg.http.max_connections = 40;
    cfg.http.max_connections_per_source = 40;
    let app = TestApp::spawn_with(dir, cfg).await;
    let addr = http_addr(&app);
    let mut held = Vec::new();
    for i in 0..30 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        if i % 2 == 0 {
            // Half a request head, never finished.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .expect("w");
        }
        held.push(s);
    }
    let (st, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(st, 200, "health answers while 30 slow connections are held");
    for s in held.iter_mut() {
        closed_silently(s, Duration::from_secs(10)).await;
    }
    // The cap: 40 held (silent) connections from one address, within its share of 40; then
    // the 41st, from another address that holds none, is closed at once.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("tcp"));
    }
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr")).expect("bind");
    let mut extra = sock.connect(addr).await.expect("tcp");
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        closed_silently(&mut extra, Duration::from_secs(1)).await,
        "refused over the cap"
    );
    drop(held);
    // Room again once they are gone (the server notices the closes).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.client.get(format!("{}/health", app.url)).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "room came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 2. The data directory is 0700 and every file in it 0600, WAL and keys included; a data
/// directory others can write to is refused with a message saying what to do.
#[tokio::test]
async fn data_files_are_owner_only() {
    let app = TestApp::spawn().await;
    // Something written, so the WAL exists.
    app.user("modes").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&app.data_dir), 0o700);
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&app.data_dir).expect("ls") {
        let p = e.expect("entry").path();
        if p.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            seen.push(p.file_name().expect("name").to_string_lossy().to_string());
        }
    }
    // On PostgreSQL the data directory keeps the lock and the CA; the database is elsewhere.
    let expected: &[&str] = if crate::helpers::on_postgres() {
        &["fluxgate.lock", "ca.key"]
    } else {
        &["fluxgate.db", "fluxgate.db-wal", "ca.key"]
    };
    for f in expected {
        assert!(seen.iter().any(|s| s == f), "{f} in {seen:?}");
    }
    // World-writable: refused.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let cfg = test_config(dir.path());
    let err = fluxgate::App::build(cfg, fluxgate::Hooks::default())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("writable by other users"), "{err}");
}

/// Two servers on one data directory: the second is refused, naming the holder.
#[tokio::test]
async fn a_data_directory_serves_one_process() {
    let app = TestApp::spawn().await;
    let cfg = test_config(&app.data_dir);
    let err = fluxgate::App::build(cfg, fluxgate::Hooks::default())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains(&format!(
            "in use by another fluxgate process (pid {})",
            std::process::id()
        )),
        "{err}"
    );
}

/// 3. A reset link is built from `http.public_url`, never from the request's headers.
#[tokio::test]
async fn reset_links_ignore_request_headers() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    cfg.http.public_url = "https://iot.example.com/".into();
    let app = TestApp::spawn_with(dir, cfg).await;
    app.user("victim").await;
    let r = app
        .client
        .post(format!("{}/password/reset-request", app.url))
        .header("referer", "https://attacker.example.net/")
        .header("host", "attacker.example.net")
        .header("x-forwarded-host", "attacker.example.net")
        .json(&json!({"email": "victim@example.com"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let mail = app.mailbox.0.lock().expect("mailbox").last().cloned().expect("a mail");
    assert!(
        mail.1.contains("https://iot.example.com/password/reset?token="),
        "{}",
        mail.1
    );
    assert!(!mail.1.contains("attacker"));
}

/// 4. Deleting a client revokes its certificates: re-created under the same id, the new
/// client is not reachable with the old certificate.
#[tokio::test]
async fn an_old_certificate_does_not_log_in_as_a_recreated_client() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("certowner").await;
    let d = app.domain(&t, "certs").await;
    let body = json!({"id": "meter-1", "name": "meter"});
    let v = app.client(&t, &d, body.clone()).await;
    let c = v["id"].as_str().expect("id").to_string();
    let (st, cert) = app
        .post(&format!("/{d}/certs"), Some(&t), json!({"client_id": c, "ttl": "24h"}))
        .await;
    assert_eq!(st, 201, "{cert}");
    let serial = cert["serial"].as_str().expect("serial").to_string();
    let (st, _) = app
        .call(Method::DELETE, &format!("/{d}/clients/{c}"), Some(&t), None)
        .await;
    assert_eq!(st, 204);
    app.client(&t, &d, body).await;
    let (st, v) = app.get(&format!("/{d}/certs/{serial}"), &t).await;
    assert_eq!((st, &v["revoked"]), (200, &json!(true)), "{v}");
    // The TLS login path refuses it.
    let ca = app
        .client
        .get(format!("{}/certs/ca", app.url))
        .send()
        .await
        .expect("ca");
    let ca = ca.text().await.expect("pem");
    let opts = crate::mqtt_client::Opts {
        id: "old-cert",
        tls: Some((
            ca.into_bytes(),
            Some((
                cert["client_cert"].as_str().expect("c").as_bytes().to_vec(),
                cert["client_key"].as_str().expect("k").as_bytes().to_vec(),
            )),
        )),
        ..Default::default()
    };
    let mut conn = crate::mqtt_client::connect(app.mqtts_addr.expect("mqtts"), opts);
    assert_eq!(conn.connack().await, 5, "not authorized");
}

/// 5. User search: ordinary users see no e-mail, cannot search by it, and need 3 characters.
#[tokio::test]
async fn user_search_does_not_list_emails() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("searcher").await;
    app.user("carol").await;
    let (st, _) = app.get("/users/search?email=%40", &t).await;
    assert_eq!(st, 403);
    let (st, _) = app.get("/users/search?username=ca", &t).await;
    assert_eq!(st, 400);
    let (st, v) = app.get("/users/search?username=car", &t).await;
    assert_eq!(st, 200);
    assert_eq!(v["users"][0]["username"], "carol");
    assert!(!v.to_string().contains("@example.com"), "{v}");
    // The super-admin may.
    let admin = app.admin_token().await;
    let (st, v) = app.get("/users/search?email=carol%40", &admin).await;
    assert_eq!((st, &v["users"][0]["email"]), (200, &json!("carol@example.com")));
}

/// 6. Offsets beyond a signed 64-bit integer and metadata keys with NUL answer 400.
#[tokio::test]
async fn boundary_query_values_answer_400() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("bounds").await;
    let d = app.domain(&t, "bounds").await;
    let h = app.channel(&t, &d, "ch").await;
    let max = i64::MAX as u64;
    for path in [
        format!("/{d}/channels/{h}/messages"),
        format!("/domains/{d}/users"),
        format!("/{d}/clients"),
    ] {
        let (st, v) = app.get(&format!("{path}?offset={}", max + 1), &t).await;
        assert_eq!(st, 400, "{path}: {v}");
        assert!(v["message"].as_str().expect("msg").contains("offset"), "{v}");
        let (st, v) = app.get(&format!("{path}?offset={max}"), &t).await;
        assert_eq!(st, 200, "{path}: {v}");
    }
    let (st, v) = app
        .get(&format!("/{d}/clients?metadata=%7B%22a%5Cu0000b%22%3A1%7D"), &t)
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = app.get(&format!("/{d}/channels?metadata=%7B%22a%22%3A1%7D"), &t).await;
    assert_eq!(st, 200);
}

/// 7. SenML whose resolved time, value or sum overflows is refused naming the record; names
/// longer than configured are refused.
#[tokio::test]
async fn senml_overflow_and_long_names_answer_400() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("senml").await;
    let d = app.domain(&t, "senml").await;
    let h = app.channel(&t, &d, "ch").await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish"]).await;
    let path = format!("/m/{d}/c/{h}");
    let auth = format!("Client {s}");
    for (body, want) in [
        (r#"[{"n":"a","v":1},{"n":"b","bv":1e308,"v":1e308}]"#, "record 1"),
        (r#"[{"n":"a","bt":1e308,"t":1e308,"v":1}]"#, "record 0"),
        (r#"[{"n":"a","bs":-1e308,"s":-1e308}]"#, "record 0"),
    ] {
        let (st, v) = app.send(&path, &auth, "application/senml+json", body).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(v.contains(want) && v.contains("not a finite number"), "{v}");
    }
    let long = format!(r#"[{{"n":"{}","v":1}}]"#, "x".repeat(300));
    let (st, v) = app.send(&path, &auth, "application/senml+json", &long).await;
    assert_eq!(st, 400, "{v}");
    assert!(v.contains("name longer than 256"), "{v}");
}

/// 8. The 6th rapid wrong password for one identity answers 429 with Retry-After, while
/// another user (from the same address) logs in normally.
#[tokio::test]
async fn password_guessing_is_braked_per_identity() {
    let app = TestApp::spawn().await;
    app.user("target").await;
    app.user("bystander").await;
    for _ in 0..5 {
        let (st, _) = app.login("target", "wrong-password").await;
        assert_eq!(st, 401);
    }
    let r = app
        .client
        .post(format!("{}/users/tokens/issue", app.url))
        .json(&json!({"identity": "target", "secret": "target-password"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 429, "even the right password waits");
    let wait: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("Retry-After");
    assert!((1..=900).contains(&wait), "{wait}");
    let (st, _) = app.login("bystander", "bystander-password").await;
    assert_eq!(st, 201);
}

/// 9. Existence oracles: wrong credentials get the same answer for an existing and an unknown
/// channel (publish and read); another tenant's channel id is answered like an invalid one.
#[tokio::test]
async fn answers_do_not_confirm_ids_across_tenants() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("tenant-a").await;
    let d = app.domain(&t, "tenant-a").await;
    let h = app.channel(&t, &d, "ch").await;
    let unknown = "6f1c1d2e-0000-4000-8000-000000000001";
    let pairs = [
        format!("/channels/{h}/messages"),
        format!("/channels/{unknown}/messages"),
    ];
    let mut publish = Vec::new();
    let mut read = Vec::new();
    for p in &pairs {
        publish.push(app.send(p, "Client not-a-secret", "application/json", "{}").await);
        let r = app
            .client
            .get(format!("{}{p}", app.url))
            .header("authorization", "Client not-a-secret")
            .send()
            .await
            .expect("read");
        read.push((r.status().as_u16(), r.text().await.expect("body")));
    }
    assert_eq!(publish[0], publish[1]);
    assert_eq!(publish[0].0, 401);
    assert_eq!(read[0], read[1]);
    assert_eq!(read[0].0, 401);
    // Channel creation with another tenant's id vs a malformed id.
    let (_, t2) = app.user("tenant-b").await;
    let d2 = app.domain(&t2, "tenant-b").await;
    let taken = app
        .post(&format!("/{d2}/channels"), Some(&t2), json!({"id": h, "name": "x"}))
        .await;
    let invalid = app
        .post(
            &format!("/{d2}/channels"),
            Some(&t2),
            json!({"id": "not-a-uuid", "name": "x"}),
        )
        .await;
    assert_eq!(taken, invalid);
    assert_eq!(taken.0, 400);
}

/// 10. An access token issued before a password change is refused after it.
#[tokio::test]
async fn access_tokens_die_with_a_password_change() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("rotator").await;
    let (st, _) = app.get("/users/profile", &t).await;
    assert_eq!(st, 200);
    let (st, _) = app
        .patch(
            "/users/secret",
            &t,
            json!({"old_secret": "rotator-password", "new_secret": "rotated-password"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = app.get("/users/profile", &t).await;
    assert_eq!(st, 401);
    let (st, v) = app.login("rotator", "rotated-password").await;
    assert_eq!(st, 201);
    let fresh = v["access_token"].as_str().expect("token");
    assert_eq!(app.get("/users/profile", fresh).await.0, 200);
}
