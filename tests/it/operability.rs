//! #15: what an operator and a browser app see: the served API contract (`/openapi.json`
//! against the router, schemathesis over it), `/metrics`, `/health` naming a failing
//! component, the access log, CORS, logout and the unknown-query-parameter answer.

use crate::child::ChildServer;
use crate::helpers::{test_config, TestApp};
use crate::mqtt_client::{connect, Opts, RawV5};
use reqwest::Method;
use serde_json::{json, Value};

fn segs_of(path: &str) -> usize {
    path.split('/').filter(|s| !s.is_empty()).count()
}

/// A live server's own document, and every route the router answers, agree: each documented
/// operation reaches a handler (instantiated with real ids, it is answered by something else
/// than "no route" or 405), each documented path refuses the methods it does not list with
/// 405, and a path outside the document is 404. The edge refuses everything outside the
/// route table, so the router cannot serve an undocumented route.
#[tokio::test]
async fn every_documented_route_is_served_and_nothing_else() {
    let app = TestApp::spawn().await;
    let t = app.admin_token().await;
    let (other, _) = app.user("contract").await;
    let d = app.domain(&t, "contract").await;
    let c = app.client(&t, &d, json!({"name": "dev"})).await;
    let c = c["id"].as_str().unwrap_or_default().to_string();
    let h = app.channel(&t, &d, "ch").await;
    let (_, g) = app.post(&format!("/{d}/groups"), Some(&t), json!({"name": "g"})).await;
    let g = g["id"].as_str().unwrap_or_default().to_string();
    let (_, cert) = app
        .post(&format!("/{d}/certs"), Some(&t), json!({"client_id": c}))
        .await;
    let serial = cert["serial"].as_str().unwrap_or_default().to_string();

    let (s, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let ops: usize = paths.values().map(|p| p.as_object().map_or(0, |m| m.len())).sum();
    assert_eq!(ops, mgmt::routes::ROUTES.len(), "one operation per route of the table");
    for want in [
        "/users/tokens/revoke",
        "/clients",
        "/channels",
        "/health",
        "/metrics",
        "/{domainID}/channels/{channelID}/messages",
        "/certs/ca",
    ] {
        assert!(paths.contains_key(want), "{want} documented");
    }
    for scheme in ["bearerAuth", "clientAuth"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object(), "{scheme}");
    }

    let fill = |p: &str| {
        p.replace("{domainID}", &d)
            .replace("{clientID}", &c)
            .replace("{channelID}", &h)
            .replace("{groupID}", &g)
            .replace("{userID}", &other)
            .replace("{serial}", &serial)
            .replace("{subject}", &other)
            .replace("{object}", &g)
            .replace("{subtopic}", "a/b")
    };
    // Deletions last, so every other call finds its entities.
    let mut calls: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|m| m.keys().map(|k| (k.to_uppercase(), p.clone())))
        })
        .collect();
    calls.sort_by_key(|(m, p)| (m == "DELETE", std::cmp::Reverse(segs_of(p))));
    for (m, p) in &calls {
        if p == "/users/tokens/revoke" {
            continue; // would log this test out; covered below
        }
        if p.ends_with("/messages/live") {
            // An endless event stream: its answer starts, the body is never complete.
            let r = app
                .client
                .get(format!("{}{}", app.url, fill(p)))
                .bearer_auth(&t)
                .send()
                .await
                .expect("live");
            assert_eq!(r.status().as_u16(), 200, "{m} {p}");
            continue;
        }
        let method = Method::from_bytes(m.as_bytes()).expect("method");
        let body = (m != "GET" && m != "DELETE").then(|| json!({}));
        let (s, v) = app.call(method, &fill(p), Some(&t), body).await;
        let msg = v["message"].as_str().unwrap_or("");
        assert!(s != 405, "{m} {p}: documented but 405: {v}");
        assert!(
            !(s == 404 && (msg.contains("no route") || msg.contains("no such"))),
            "{m} {p}: documented but not routed: {v}"
        );
    }
    for (p, item) in paths {
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if item.get(m.to_lowercase()).is_some() {
                continue;
            }
            let method = Method::from_bytes(m.as_bytes()).expect("method");
            let (s, v) = app.call(method, &fill(p), Some(&t), None).await;
            // A longer template may take the same path for this method (a parameter matching a
            // literal, e.g. GET /{domainID}/channels/connect is the channel "connect").
            let shadowed = mgmt::routes::ROUTES
                .iter()
                .any(|r| r.method == m && r.path != p && segs_of(r.path) == segs_of(p) && r.path.contains('{'));
            if !shadowed {
                assert_eq!(s, 405, "{m} {p}: not documented, yet answered {s}: {v}");
            }
        }
    }
    let (s, v) = app.call(Method::GET, "/no/such/route", Some(&t), None).await;
    assert_eq!(s, 404, "{v}");
}

/// Unknown query parameters on list endpoints are refused with 400 naming them; the
/// documented ones still work.
#[tokio::test]
async fn unknown_query_parameters_are_refused() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("params").await;
    let d = app.domain(&t, "params").await;
    for path in [
        format!("/{d}/clients?limt=5"),
        format!("/{d}/channels?offset=0&nmae=x"),
        "/domains?stauts=all".to_string(),
        format!("/{d}/groups?tre=true"),
    ] {
        let (s, v) = app.get(&path, &t).await;
        assert_eq!(s, 400, "{path}: {v}");
        let bad = path
            .rsplit(['?', '&'])
            .next()
            .unwrap_or("")
            .split('=')
            .next()
            .unwrap_or("");
        assert!(v["message"].as_str().unwrap_or("").contains(bad), "{path}: {v}");
    }
    let (s, v) = app
        .get(&format!("/{d}/clients?limit=5&offset=0&status=all&name=x"), &t)
        .await;
    assert_eq!(s, 200, "{v}");
}

/// Logout revokes the caller's token family: the access token presented and the refresh
/// token issued with it stop working; another login's tokens are unaffected.
#[tokio::test]
async fn logout_revokes_the_token_family() {
    let app = TestApp::spawn().await;
    app.user("leaver").await;
    let (_, first) = app.login("leaver", "leaver-password").await;
    let (_, second) = app.login("leaver", "leaver-password").await;
    let access = first["access_token"].as_str().expect("access").to_string();
    let refresh = first["refresh_token"].as_str().expect("refresh").to_string();
    // A refreshed pair belongs to the same family.
    let (s, renewed) = app
        .call(Method::POST, "/users/tokens/refresh", Some(&refresh), None)
        .await;
    assert_eq!(s, 201, "{renewed}");
    let renewed_access = renewed["access_token"].as_str().expect("access").to_string();

    let (s, v) = app
        .call(Method::POST, "/users/tokens/revoke", Some(&renewed_access), None)
        .await;
    assert_eq!(s, 204, "{v}");
    for token in [&access, &renewed_access] {
        let (s, v) = app.get("/users/profile", token).await;
        assert_eq!(s, 401, "{v}");
    }
    let (s, v) = app
        .call(Method::POST, "/users/tokens/refresh", Some(&refresh), None)
        .await;
    assert_eq!(s, 401, "the family's refresh token is dead too: {v}");
    let other = second["access_token"].as_str().expect("access");
    let (s, v) = app.get("/users/profile", other).await;
    assert_eq!(s, 200, "another login is unaffected: {v}");
    let (s, _) = app.call(Method::POST, "/users/tokens/revoke", None, None).await;
    assert_eq!(s, 401);
}

async fn scrape(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut r = app.client.get(format!("{}/metrics", app.url));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.expect("metrics");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("text"))
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `/metrics` speaks the Prometheus text format and counts what users did: HTTP requests by
/// route template and status, MQTT connections, packets and refusals by reason; with
/// `metrics.token` set, only a scraper presenting it gets them.
#[tokio::test]
async fn metrics_count_http_and_mqtt_traffic() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    cfg.metrics.token = fluxgate::config::Secret("scrape-secret".into());
    let app = TestApp::spawn_with(dir, cfg).await;
    let (s, _) = scrape(&app, None).await;
    assert_eq!(s, 401);
    let (s, _) = scrape(&app, Some("wrong")).await;
    assert_eq!(s, 401);

    let t = app.admin_token().await;
    let d = app.domain(&t, "metered").await;
    let (client, secret) = app.device(&t, &d).await;
    let h = app.channel(&t, &d, "ch").await;
    app.connect(&t, &d, &client, &h, &["publish", "subscribe"]).await;
    for _ in 0..3 {
        let (s, _) = app.get(&format!("/{d}/clients"), &t).await;
        assert_eq!(s, 200);
    }
    let mut dev = connect(
        app.mqtt_addr,
        Opts {
            id: "metered-1",
            user: Some(&client),
            pass: Some(&secret),
            ..Default::default()
        },
    )
    .connected()
    .await;
    let topic = format!("channels/{h}/messages");
    dev.subscribe(&topic, 1).await;
    dev.publish(&topic, b"[{\"n\":\"t\",\"v\":1}]", 1, false).await;
    let _ = dev.message().await;
    // A refused CONNECT (3.1.1 client code 4 / 5.0 0x86), read until the server closes it.
    let (mut refused, code) = RawV5::connect(app.mqtt_addr, "metered-2", &client, "not-the-secret").await;
    assert_eq!(code, 0x86);
    assert!(refused.packet().await.is_none(), "closed after the refusal");

    let (s, text) = scrape(&app, Some("scrape-secret")).await;
    assert_eq!(s, 200);
    assert!(
        text.contains("# TYPE fluxgate_http_request_duration_seconds histogram"),
        "{text}"
    );
    let list = "fluxgate_http_requests_total{method=\"GET\",route=\"/{domainID}/clients\",status=\"200\"}";
    assert_eq!(metric(&text, list), Some(3.0), "{text}");
    assert_eq!(metric(&text, "fluxgate_mqtt_connections"), Some(1.0), "{text}");
    assert!(metric(&text, "fluxgate_mqtt_connections_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        metric(
            &text,
            "fluxgate_mqtt_connections_refused_total{reason=\"bad_credentials\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // CONNECT, SUBSCRIBE, PUBLISH and the PUBACK of the delivery at least.
    assert!(
        metric(&text, "fluxgate_mqtt_packets_received_total").unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    assert!(metric(&text, "fluxgate_mqtt_received_bytes_total").unwrap_or(0.0) > 20.0);
    assert!(metric(&text, "fluxgate_mqtt_deliveries_total").unwrap_or(0.0) >= 1.0);
    assert!(metric(&text, "fluxgate_process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
    assert!(metric(&text, "fluxgate_process_open_fds").unwrap_or(0.0) > 3.0);
    for name in [
        "fluxgate_pipeline_queue_rows",
        "fluxgate_pipeline_rows_stored_total",
        "fluxgate_store_pool_wait_microseconds_total",
        "fluxgate_mqtt_revocations_applied_total",
        "fluxgate_pipeline_batch_duration_seconds_count",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing: {text}");
    }
    // No secret leaks into a label.
    assert!(!text.contains(&secret) && !text.contains(&t));
}

/// `/health` names the component that is not serving: with the database's write lock held by
/// someone else, the store check fails (503), and passes again once it is released.
#[tokio::test]
async fn health_names_an_unwritable_store() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    cfg.store.busy_timeout_ms = 200;
    let app = TestApp::spawn_with(dir, cfg).await;
    let (s, v) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!((s, &v["status"]), (200, &json!("pass")), "{v}");
    let lock = app.hold_write_lock();
    let (s, v) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["status"], "fail");
    assert_eq!(v["checks"]["store"][0]["status"], "fail", "{v}");
    assert!(v["checks"]["store"][0]["output"]
        .as_str()
        .unwrap_or("")
        .contains("not writable"));
    assert_eq!(v["checks"]["mqtt broker"][0]["status"], "pass", "{v}");
    drop(lock);
    let (s, v) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(s, 200, "{v}");
}

/// CORS: nothing without configuration; a configured origin gets its headers and preflight
/// answer, another origin does not.
#[tokio::test]
async fn cors_only_for_configured_origins() {
    let plain = TestApp::spawn().await;
    let r = plain
        .client
        .get(format!("{}/health", plain.url))
        .header("origin", "https://console.example")
        .send()
        .await
        .expect("get");
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = test_config(dir.path());
    cfg.http.cors_origins = vec!["https://console.example".into()];
    let app = TestApp::spawn_with(dir, cfg).await;
    let pre = app
        .client
        .request(Method::OPTIONS, format!("{}/domains", app.url))
        .header("origin", "https://console.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(pre.status().as_u16(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "https://console.example");
    let methods = h["access-control-allow-methods"].to_str().unwrap_or("");
    assert!(methods.contains("POST") && methods.contains("GET"), "{methods}");
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap_or("")
        .contains("Authorization"));
    let r = app
        .client
        .get(format!("{}/health", app.url))
        .header("origin", "https://console.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["access-control-allow-origin"], "https://console.example");
    let r = app
        .client
        .request(Method::OPTIONS, format!("{}/domains", app.url))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(r.status().as_u16(), 405);
}

/// One JSON access log line per request with the route template, status, latency and caller;
/// never the token, the secret or the query.
#[tokio::test]
async fn access_log_lines_are_json_and_hold_no_secrets() {
    let server = ChildServer::start(&[("FLUXGATE_LOG_FORMAT", "json")]).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.http);
    let token = server.admin_token().await;
    let r = http
        .get(format!("{base}/domains?name=secret-filter"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status().as_u16(), 200);
    let line = server.wait_log("\"route\":\"/domains\"").await;
    let v: Value = serde_json::from_str(line.trim()).expect("a JSON line");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status"], 200);
    assert!(v["latency_ms"].as_f64().is_some(), "{v}");
    assert_eq!(v["target"], "fluxgate::access");
    assert!(
        v["caller"].as_str().is_some_and(|c| c.len() == 36),
        "the admin's id: {v}"
    );
    let log = server.wait_log("\"route\":\"/users/tokens/issue\"").await;
    for secret in [token.as_str(), crate::child::ADMIN_PASSWORD, "secret-filter"] {
        assert_eq!(server.count_log(secret), 0, "{secret} in the log: {log}");
    }
    assert_eq!(server.count_log("\u{1b}["), 0, "no colour codes when not on a terminal");
}

/// The contract run: schemathesis (PyPI) over every operation of the served document, with a
/// provisioned token and domain, must find no server error, no undocumented status, content
/// type or response shape. `.ci/run` installs it; elsewhere skipped with a notice.
#[tokio::test]
async fn schemathesis_finds_no_contract_violation() {
    if !crate::peers::available_from("schemathesis", "pip install schemathesis") {
        return;
    }
    let app = TestApp::spawn().await;
    let t = app.admin_token().await;
    let d = app.domain(&t, "fuzzed").await;
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, format!("[parameters]\n\"path.domainID\" = \"{d}\"\n")).expect("config");
    let out = tokio::process::Command::new("schemathesis")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/openapi.json", app.url)])
        .args(["-H", &format!("Authorization: Bearer {t}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "10", "--workers", "1", "--seed", "1"])
        // One worker: with two, hypothesis sometimes fails inside its own AST cache (a tool
        // error, "AST constructor recursion depth mismatch"), not a finding about the server.
        // Logging out would end the run's own session: covered by logout_revokes_the_token_family.
        .args(["--exclude-operation-id", "revokeToken"])
        // An endless event stream: covered by tests/it/live.rs.
        .args(["--exclude-operation-id", "liveMessages"])
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .output()
        .await
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
}

/// (#29, log warts) Start-up lines name plain addresses (`tls=127.0.0.1:…`, `ws=off`, never
/// `Some(…)`) and the API's scheme, and a device's raw (non-SenML, non-JSON) payload, which
/// is normal, is stored without a warning.
#[tokio::test]
async fn startup_lines_are_plain_and_raw_payloads_do_not_warn() {
    let s = ChildServer::start(&[("FLUXGATE_TLS_MQTTS_ADDR", "127.0.0.1:0")]).await;
    let mqtt = s.wait_log("MQTT listening").await;
    assert!(!mqtt.contains("Some("), "{mqtt}");
    let tls = s.mqtts.expect("TLS listener").to_string();
    assert!(
        mqtt.contains(&format!("tls={tls}")) && mqtt.contains("ws=off"),
        "{mqtt}"
    );
    let http = s.wait_log("HTTP API listening").await;
    assert!(
        http.contains("scheme=\"http\"") || http.contains("scheme=http"),
        "{http}"
    );

    let f = crate::durable::Fleet::provision(&s).await;
    let mut p = f.publisher(&s, true).await;
    // Raw payloads were noted at their 2nd, 3rd, 5th, ... occurrence: three of them.
    for pkid in 1..=3 {
        assert_eq!(p.publish(&f.topic("raw"), b"hi", 1, false, pkid).await, 0);
    }
    // Stored: the reader finds it.
    let path = format!("/channels/{}/messages?limit=10", f.channel);
    let t = std::time::Instant::now();
    loop {
        let r = reqwest::Client::new()
            .get(format!("http://{}{path}", s.http))
            .header("Authorization", format!("Client {}", f.subscriber.1))
            .send()
            .await
            .expect("read");
        let v: Value = r.json().await.unwrap_or_default();
        if v["total"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "stored: {v}");
        tokio::task::yield_now().await;
    }
    // A TLS client that names the server by IP address in SNI (as OpenSSL and mosquitto do
    // when told `-h 127.0.0.1`): no warning for it.
    if crate::peers::available_from("openssl", "Debian: apt-get install openssl") {
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &tls, "-servername", "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("openssl");
        assert!(String::from_utf8_lossy(&out.stdout).contains("CONNECTED"), "{out:?}");
    }
    // A request answered after the message was stored: once its access line is in, every
    // line written before it is too.
    let r = reqwest::get(format!("http://{}/health?after=stored", s.http))
        .await
        .expect("health");
    assert_eq!(r.status().as_u16(), 400);
    s.wait_log("status=400").await;
    assert_eq!(s.count_log("stored raw"), 0, "no log line for a normal raw payload");
    assert_eq!(s.count_log("SNI"), 0, "no notice for an IP address in SNI");
}
