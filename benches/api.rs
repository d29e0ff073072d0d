//! Management API throughput against a running in-process server (release build):
//! token issue per second and GET /users/profile per second, each next to GET /health
//! measured in the same run as the reference (pure HTTP + routing cost).
//!
//! Run: `cargo bench --bench api`. Figures are printed; nothing is asserted.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use fluxgate::{App, Hooks};
use serde_json::json;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 16;
const WINDOW: Duration = Duration::from_secs(3);

async fn rate<F, Fut>(name: &str, make: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < WINDOW {
                if make().await {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    let per_sec = total as f64 / start.elapsed().as_secs_f64();
    println!("{name:<40} {per_sec:>10.0} req/s");
    per_sec
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let iterations: u32 = common::env("BENCH_PBKDF2_ITERATIONS", 600_000);
    let mut cfg = common::config(dir.path().to_path_buf());
    cfg.auth.pbkdf2_iterations = iterations;
    let app = App::build(cfg, Hooks::default()).await.expect("build");
    let url = format!("http://{}", app.http_addr());
    tokio::spawn(app.run(std::future::pending()));
    let client = reqwest::Client::new();
    println!("fluxgate API benchmark: {CONCURRENCY} concurrent clients, {WINDOW:?} per figure, PBKDF2 {iterations} iterations");

    let (c, u) = (client.clone(), url.clone());
    let health = rate("GET /health (reference)", move || {
        let (c, u) = (c.clone(), u.clone());
        async move {
            c.get(format!("{u}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;

    let (c, u) = (client.clone(), url.clone());
    let issue = rate("POST /users/tokens/issue", move || {
        let (c, u) = (c.clone(), u.clone());
        async move {
            c.post(format!("{u}/users/tokens/issue"))
                .json(&json!({"identity": "admin", "secret": common::ADMIN_PASSWORD}))
                .send()
                .await
                .is_ok_and(|r| r.status() == 201)
        }
    })
    .await;

    let token = common::admin_token(&url).await;
    let (c, u) = (client.clone(), url.clone());
    let profile = rate("GET /users/profile", move || {
        let (c, u, t) = (c.clone(), u.clone(), token.clone());
        async move {
            c.get(format!("{u}/users/profile"))
                .bearer_auth(t)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;

    println!("ratio token issue / health:  {:.4}", issue / health);
    println!("ratio profile / health:      {:.3}", profile / health);
}
