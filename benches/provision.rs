//! Provisioning throughput (issue #6): clients created per second from a CSV file of
//! BENCH_ROWS rows (default 100,000) through `fluxgate clients <file.csv> <domain> <token>`,
//! the real CLI binary against an in-process server, next to direct bulk inserts into the
//! store in the same run (the ratio is the figure).
//!
//! Run: `cargo bench --bench provision`.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use fluxgate::{App, Hooks};
use serde_json::json;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let n: usize = common::env("BENCH_ROWS", 100_000);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = common::config(dir.path().join("data"));
    let app = App::build(cfg, Hooks::default()).await.expect("build");
    let url = format!("http://{}", app.http_addr());
    let store = app.store();
    tokio::spawn(app.run(std::future::pending()));
    let http = reqwest::Client::new();
    let token = common::admin_token(&url).await;
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
        let creds: Vec<(String, String)> = (0..n)
            .map(|_| {
                (
                    uuid::Uuid::new_v4().to_string(),
                    uuid::Uuid::new_v4().simple().to_string(),
                )
            })
            .collect();
        common::clients(&s2, &d_ref, &creds);
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
