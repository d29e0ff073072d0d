//! Console page render time (#16) for a domain with `BENCH_CONSOLE_CLIENTS` (100,000) clients:
//! the clients list page (first page and one at offset 50,000) and one client's page, each
//! against the REST call that answers the same question (the reference: the JSON the page
//! is rendered from, on the same server in the same run). `BENCH_REQUESTS` (200) sequential
//! requests per target and run; `BENCH_RUNS` (3) alternating runs; prints p50 and p99 per
//! target and the medians, and console ÷ REST ratios. `fluxgate serve` runs as a child
//! process; the requests come from here.
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::time::Instant;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p) as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// Logs in through the console's form; returns the session cookie (`fg_session=…`).
async fn console_login(http: &reqwest::Client, url: &str) -> String {
    let form = http
        .get(format!("{url}/console/login"))
        .send()
        .await
        .expect("login page");
    let login_cookie = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("login cookie")
        .to_string();
    let token = login_cookie.split('=').nth(1).expect("token").to_string();
    let r = http
        .post(format!("{url}/console/login"))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={token}&identity=admin&password={}",
            common::ADMIN_PASSWORD
        ))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303, "console login");
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("fg_session="))
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_string()
}

/// `n` sequential GETs: latencies in ms (each answer read to its end; a non-200 fails the bench).
async fn timed(http: &reqwest::Client, url: &str, auth: (&str, &str), n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(url).header(auth.0, auth.1).send().await.expect("request");
        let status = r.status();
        let body = r.bytes().await.expect("body");
        assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

#[tokio::main]
async fn main() {
    let n_clients: usize = common::env("BENCH_CONSOLE_CLIENTS", 100_000);
    let requests: usize = common::env("BENCH_REQUESTS", 200);
    let runs: usize = common::env("BENCH_RUNS", 3);
    let dir = tempfile::tempdir().expect("tmp");
    let (mqtt, http_addr) = (common::free_addr(), common::free_addr());
    let env = [("RUST_LOG", "warn".to_string())];
    let child = Server(common::serve_child_on(dir.path(), mqtt, Some(http_addr), &env).await);
    let url = format!("http://{http_addr}");
    let store = common::server_store(dir.path()).await;
    let d = common::domain(&store, "console", None).id;
    let t0 = Instant::now();
    let creds: Vec<(String, String)> = (0..n_clients)
        .map(|i| (uuid::Uuid::new_v4().to_string(), format!("secret-{i:06}")))
        .collect();
    common::clients(&store, &d, &creds);
    let channels: Vec<String> = (0..10).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    common::channels(&store, &d, &channels);
    let one = creds[n_clients / 2].0.clone();
    store
        .connect(&d, std::slice::from_ref(&one), &channels, &storage::ConnType::BOTH)
        .expect("connect");
    println!(
        "console render: {n_clients} clients in one domain (written in {:.1} s), {requests} sequential requests per target, {runs} alternating runs",
        t0.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let token = common::admin_token(&url).await;
    let bearer = format!("Bearer {token}");
    let cookie = console_login(&http, &url).await;
    let deep = n_clients / 2;
    let targets: Vec<(String, String, String)> = vec![
        (
            "list, first page".into(),
            format!("/console/d/{d}/clients"),
            format!("/{d}/clients?limit=20"),
        ),
        (
            format!("list, offset {deep}"),
            format!("/console/d/{d}/clients?offset={deep}"),
            format!("/{d}/clients?limit=20&offset={deep}"),
        ),
        (
            "client page".into(),
            format!("/console/d/{d}/clients/{one}"),
            format!("/{d}/clients/{one}"),
        ),
    ];
    println!(
        "{:<22} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "page", "run", "console p50", "console p99", "REST p50", "REST p99"
    );
    let mut summary = Vec::new();
    for (name, page, rest) in &targets {
        let (mut c50, mut c99, mut r50, mut r99) = (vec![], vec![], vec![], vec![]);
        for r in 0..runs {
            let mut c = timed(&http, &format!("{url}{page}"), ("cookie", &cookie), requests).await;
            let mut j = timed(&http, &format!("{url}{rest}"), ("authorization", &bearer), requests).await;
            let (a, b, x, y) = (
                percentile(&mut c, 0.5),
                percentile(&mut c, 0.99),
                percentile(&mut j, 0.5),
                percentile(&mut j, 0.99),
            );
            println!(
                "{name:<22} {:>6} {a:>10.2}ms {b:>10.2}ms {x:>10.2}ms {y:>10.2}ms",
                r + 1
            );
            c50.push(a);
            c99.push(b);
            r50.push(x);
            r99.push(y);
        }
        summary.push((name, median(c50), median(c99), median(r50), median(r99)));
    }
    println!("medians:");
    for (name, c50, c99, r50, r99) in summary {
        println!(
            "{name:<22} console p50 {c50:.2} ms, p99 {c99:.2} ms; REST p50 {r50:.2} ms, p99 {r99:.2} ms; console ÷ REST (p50) {:.2}",
            c50 / r50
        );
    }
    println!("server RSS: {} KiB", common::rss_kib(child.0.id()));
}

/// The server child, stopped however the bench ends (a failed assertion included).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
