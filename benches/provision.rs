//! Provisioning throughput (issue #6): clients created per second from a CSV file of
//! BENCH_ROWS rows (default 100,000) through `fluxgate clients <file.csv> <domain> <token>`,
//! the real CLI binary against an in-process server, next to direct bulk inserts into the
//! store in the same run (the ratio is the figure).
//!
//! Run: `cargo bench --bench provision`.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

use fluxgate::config::{Config, Secret};
use fluxgate::{App, Hooks};
use serde_json::json;
use std::time::Instant;
use storage::{JsonText, NewClient, Status};

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = Config::defaults();
    cfg.data_dir = dir.path().join("data");
    cfg.http.addr = "127.0.0.1:0".into();
    cfg.mqtt.addr = "127.0.0.1:0".into();
    cfg.mqtt.ws_addr = String::new();
    cfg.auth.pbkdf2_iterations = 1000;
    cfg.admin.password = Secret("bench-password".into());
    cfg.log.level = "warn".into();
    let app = App::build(cfg, Hooks::default()).await.expect("build");
    let url = format!("http://{}", app.http_addr());
    let store = app.store();
    tokio::spawn(app.run(std::future::pending()));
    let http = reqwest::Client::new();
    let tok: serde_json::Value = http
        .post(format!("{url}/users/tokens/issue"))
        .json(&json!({"identity": "admin", "secret": "bench-password"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = tok["access_token"].as_str().expect("token").to_string();
    let mk = |route: &str| {
        let (http, url, token, route) = (http.clone(), url.clone(), token.clone(), route.to_string());
        async move {
            let d: serde_json::Value = http
                .post(format!("{url}/domains"))
                .bearer_auth(&token)
                .json(&json!({"name": route, "route": route}))
                .send()
                .await
                .expect("domain")
                .json()
                .await
                .expect("json");
            d["id"].as_str().expect("id").to_string()
        }
    };
    let (d_cli, d_ref) = (mk("cli").await, mk("reference").await);

    // Reference: the same number of clients straight into the store, 1,000 per transaction.
    let start = Instant::now();
    let s2 = store.clone();
    tokio::task::spawn_blocking(move || {
        for chunk in 0..n.div_ceil(1000) {
            let new: Vec<NewClient> = (chunk * 1000..((chunk + 1) * 1000).min(n))
                .map(|i| NewClient {
                    id: uuid::Uuid::new_v4().to_string(),
                    name: format!("client{i}"),
                    identity: String::new(),
                    secret: uuid::Uuid::new_v4().simple().to_string(),
                    tags: JsonText::empty_array(),
                    metadata: JsonText::empty_object(),
                    status: Status::Enabled,
                })
                .collect();
            s2.create_clients(&d_ref, &new).expect("insert");
        }
    })
    .await
    .expect("reference");
    let reference = n as f64 / start.elapsed().as_secs_f64();

    let csv = dir.path().join("clients.csv");
    std::fs::write(&csv, (0..n).map(|i| format!("client{i},\n")).collect::<String>()).expect("csv");
    let start = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"))
        .args(["clients", csv.to_str().expect("path"), &d_cli, &token, "--url", &url])
        .env("FLUXGATE_CLI_CONFIG", dir.path().join("cli.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("cli");
    let elapsed = start.elapsed();
    assert!(out.success(), "provisioning failed");
    let rate = n as f64 / elapsed.as_secs_f64();
    println!("provisioning {n} clients from CSV");
    println!(
        "{:<44} {reference:>10.0} clients/s",
        "reference: bulk insert into the store"
    );
    println!(
        "{:<44} {rate:>10.0} clients/s   ({:.2}x reference, {elapsed:.1?})",
        "fluxgate clients <file.csv> (CLI + API)",
        rate / reference
    );
}
