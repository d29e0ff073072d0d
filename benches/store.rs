//! Store benchmark (issue #25): every figure on PostgreSQL beside SQLite's in the same run.
//!
//! - Registry (100,000 clients × BENCH_SCALE): authorization query rate, login lookup rates,
//!   list page latency (p50/p99).
//! - Ingest through a `fluxgate serve` child process over HTTP and MQTT (the load generators
//!   in this process), against a raw bulk insert into the same database (SQLite: batch
//!   transactions; PostgreSQL: COPY) measured in the same run.
//! - Readers on 1,000,000 messages × BENCH_SCALE: p50/p99 per query kind.
//! - `store migrate` rate: the readers' SQLite store copied into an empty PostgreSQL database.
//!
//! PostgreSQL figures need a server: `eval "$(scripts/throwaway-postgres start)"` (sets
//! FLUXGATE_TEST_DATABASE_URL), then `cargo bench --bench store`. Without one, only SQLite's
//! figures are printed.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};
use storage::testdb::TestDatabase;
use storage::{ClientQuery, ConnType, EntityFilter, JsonText, MessageQuery, PageReq, Store, StoreConfig, StoreUrl};

/// One backend under test: its store, and what keeps its database alive.
struct Backend {
    name: &'static str,
    url: StoreUrl,
    _held: Held,
}

enum Held {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Pg(#[allow(dead_code)] TestDatabase),
}

fn backends(server: Option<&str>, tag: &str) -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("dir");
    let mut out = vec![Backend {
        name: "sqlite",
        url: StoreUrl::Sqlite(dir.path().join(format!("{tag}.db"))),
        _held: Held::Dir(dir),
    }];
    if let Some(s) = server {
        let db = TestDatabase::create(s).expect("a PostgreSQL database");
        out.push(Backend {
            name: "postgres",
            url: db.store_url(),
            _held: Held::Pg(db),
        });
    }
    out
}

fn open(b: &Backend) -> Store {
    Store::open_url(&b.url, &StoreConfig::default()).expect("open")
}

/// Vacuums and analyzes PostgreSQL after a bulk load (planner statistics, the visibility map
/// for index-only counts), as autovacuum does shortly after one in a deployment (SQLite
/// needs none).
fn analyze(b: &Backend) {
    if let StoreUrl::Postgres(url) = &b.url {
        storage::testdb::execute_sql(&StoreUrl::Postgres(url.clone()), "VACUUM ANALYZE").expect("vacuum");
    }
}

/// A user to own the benchmark's domain.
fn owner(s: &Store) -> String {
    s.create_user(storage::NewUser {
        id: "owner".into(),
        first_name: String::new(),
        last_name: String::new(),
        email: "owner@example.com".into(),
        username: "owner".into(),
        secret: "x".into(),
        tags: JsonText::empty_array(),
        metadata: JsonText::empty_object(),
        profile_picture: String::new(),
        role: storage::Role::User,
        status: storage::Status::Enabled,
    })
    .expect("owner")
    .id
}

fn rate(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn latencies(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99))
}

/// Prints one figure per backend and PostgreSQL ÷ SQLite.
fn row(what: &str, unit: &str, figures: &[f64]) {
    let mut line = format!("{what:<44}");
    for f in figures {
        line.push_str(&format!(" {f:>12.1}"));
    }
    line.push_str(&format!(" {unit:<8}"));
    if let [lite, pg] = figures {
        line.push_str(&format!(" {:>8.2}", pg / lite));
    }
    println!("{line}");
}

fn header(title: &str, names: &[&str]) {
    println!("\n{title}");
    let mut line = format!("{:<44}", "");
    for n in names {
        line.push_str(&format!(" {n:>12}"));
    }
    if names.len() == 2 {
        line.push_str(&format!(" {:<8} {:>8}", "", "pg÷lite"));
    }
    println!("{line}");
}

fn registry(backends: &[Backend], scale: f64) {
    let n = ((100_000.0 * scale) as usize).max(1000);
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); 12];
    for b in backends {
        let s = open(b);
        let d = common::domain(&s, "d", Some(&owner(&s))).id;
        let creds: Vec<(String, String)> = (0..n)
            .map(|i| (format!("client-{i:06}"), format!("secret-{i:06}")))
            .collect();
        for chunk in creds.chunks(1000) {
            common::clients(&s, &d, chunk);
        }
        let h = uuid::Uuid::new_v4().to_string();
        common::channels(&s, &d, std::slice::from_ref(&h));
        let connected: Vec<String> = creds.iter().step_by(10).map(|c| c.0.clone()).collect();
        s.connect(&d, &connected, std::slice::from_ref(&h), &ConnType::BOTH)
            .expect("connect");
        analyze(b);
        let k = 20_000;
        figures[0].push(rate(k, |i| {
            std::hint::black_box(
                s.can(&d, &connected[i % connected.len()], &h, ConnType::Publish)
                    .expect("can"),
            );
        }));
        figures[1].push(rate(k, |i| {
            std::hint::black_box(s.clients_by_id(&creds[(i * 7919) % n].0).expect("by id"));
        }));
        figures[2].push(rate(k, |i| {
            std::hint::black_box(s.client_by_secret(&d, &creds[(i * 7919) % n].1).expect("by secret"));
        }));
        figures[3].push(rate(k / 4, |_| {
            std::hint::black_box(s.user_by_identity("nobody@example.com").expect("user"));
        }));
        let page = |offset: u64, filter: EntityFilter| ClientQuery {
            page: PageReq {
                offset,
                limit: 10,
                ..Default::default()
            },
            filter,
            ..Default::default()
        };
        let lists = [
            page(0, EntityFilter::default()),
            page(n as u64 / 2, EntityFilter::default()),
            page(
                0,
                EntityFilter {
                    name: Some("client-0999".into()),
                    ..Default::default()
                },
            ),
            page(
                0,
                EntityFilter {
                    metadata: Some(JsonText(r#"{"k":"v"}"#.into())),
                    ..Default::default()
                },
            ),
        ];
        for (i, q) in lists.iter().enumerate() {
            let (p50, p99) = latencies(30, || {
                std::hint::black_box(s.list_clients(&d, q).expect("list"));
            });
            figures[4 + 2 * i].push(p50.as_secs_f64() * 1e3);
            figures[5 + 2 * i].push(p99.as_secs_f64() * 1e3);
        }
    }
    let names: Vec<&str> = backends.iter().map(|b| b.name).collect();
    header(&format!("Registry: {n} clients"), &names);
    row("authorization query (can publish)", "/s", &figures[0]);
    row("MQTT login lookup (clients by id)", "/s", &figures[1]);
    row("HTTP client lookup (by secret)", "/s", &figures[2]);
    row("REST login lookup (user by identity)", "/s", &figures[3]);
    for (i, what) in ["first page", "page at offset n/2", "name filter", "metadata filter"]
        .iter()
        .enumerate()
    {
        row(&format!("list clients, {what}, p50"), "ms", &figures[4 + 2 * i]);
        row(&format!("list clients, {what}, p99"), "ms", &figures[5 + 2 * i]);
    }
}

/// The raw bulk insert of `total` rows: SQLite through batch transactions of 500 (the
/// reference the message-store bench uses); PostgreSQL through COPY, bypassing every layer.
fn raw_rate(b: &Backend, s: &Store, total: usize) -> f64 {
    let batch = common::message_rows(500, "raw", 1_600_000_000.0);
    let start = Instant::now();
    match &b.url {
        StoreUrl::Sqlite(_) => {
            for _ in 0..total / 500 {
                s.insert_messages(&batch).expect("insert");
            }
        }
        StoreUrl::Postgres(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
            let mut w = c
                .copy_in("COPY messages (domain_id, channel, subtopic, publisher, protocol, name, unit, time, value, format) FROM STDIN")
                .expect("copy");
            for _ in 0..total / 500 {
                for m in &batch {
                    writeln!(
                        w,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        m.domain_id,
                        m.channel,
                        m.subtopic,
                        m.publisher,
                        m.protocol,
                        m.name,
                        m.unit,
                        m.time,
                        m.value.unwrap_or(0.0),
                        m.format
                    )
                    .expect("row");
                }
            }
            w.finish().expect("copy done");
        }
    }
    total as f64 / start.elapsed().as_secs_f64()
}

use common::RECORDS_PER_MESSAGE;

/// Rows stored per second through a `fluxgate serve` child process on `b` (the load runs in
/// this process) over HTTP (16 senders) and MQTT (4 publishers, QoS 0), for `secs` each.
fn ingest(b: &Backend, secs: u64) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let (mqtt, http) = (common::free_addr(), common::free_addr());
        let url = match &b.url {
            StoreUrl::Postgres(u) => u.clone(),
            StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
        };
        let mut child = common::serve_child_on(
            dir.path(),
            mqtt,
            Some(http),
            &[
                ("FLUXGATE_STORE_URL", url.clone()),
                ("FLUXGATE_LOG_LEVEL", "warn".into()),
            ],
        )
        .await;
        let target = StoreUrl::parse(&url).expect("url");
        let (store, channel) = tokio::task::spawn_blocking(move || {
            let store = Store::open_url(&target, &StoreConfig::default()).expect("the server's store");
            let started = Instant::now();
            while store.user_by_identity("admin").ok().flatten().is_none() {
                assert!(started.elapsed() < Duration::from_secs(30), "no admin");
                std::thread::sleep(Duration::from_millis(10));
            }
            let d = common::domain(&store, "ingest", None);
            let h = uuid::Uuid::new_v4().to_string();
            common::channels(&store, &d.id, std::slice::from_ref(&h));
            let creds: Vec<(String, String)> = (0..4)
                .map(|i| (format!("dev-{i}"), format!("secret-dev-{i}")))
                .collect();
            common::clients(&store, &d.id, &creds);
            let ids: Vec<String> = creds.into_iter().map(|c| c.0).collect();
            store
                .connect(&d.id, &ids, std::slice::from_ref(&h), &ConnType::BOTH)
                .expect("connect");
            (store, h)
        })
        .await
        .expect("setup");
        let api = format!("http://{http}");
        let before = stored(&store).await;
        let start = Instant::now();
        common::http_senders(&api, &channel, secs).await;
        let http_rate = settle(&store, before, start).await;
        let before = stored(&store).await;
        let start = Instant::now();
        common::mqtt_publishers(mqtt, &channel, secs).await;
        let mqtt_rate = settle(&store, before, start).await;
        let _ = child.kill();
        let _ = child.wait();
        tokio::task::spawn_blocking(move || drop(store)).await.expect("close");
        (http_rate, mqtt_rate)
    })
}

/// Rows in the server's message table.
async fn stored(store: &Store) -> u64 {
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.count_messages().expect("count"))
        .await
        .expect("count")
}

/// Rows stored since `before` per second since `start`, once the writer has gone quiet.
async fn settle(store: &Store, before: u64, start: Instant) -> f64 {
    let mut last = stored(store).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = stored(store).await;
        if now == last {
            break;
        }
        last = now;
    }
    (last - before) as f64 / start.elapsed().as_secs_f64()
}

fn readers(backends: &[Backend], scale: f64, server: Option<&str>) {
    let n = ((1_000_000.0 * scale) as usize).max(10_000);
    let mut queries = common::reader_queries();
    queries.push((
        "avg per 10 min over 1 day",
        MessageQuery {
            limit: 200,
            from: Some(1_600_000_000.0),
            to: Some(1_600_086_400.0),
            aggregate: Some((storage::Aggregate::Avg, 600.0)),
            ..Default::default()
        },
    ));
    let mut figures = vec![Vec::new(); queries.len() * 2];
    let mut sqlite_source = None;
    let mut fills = Vec::new();
    for b in backends {
        let s = open(b);
        let t = Instant::now();
        for k in 0..n / 5000 {
            let mut r = common::message_rows(5000, "big", 1_600_000_000.0 + k as f64 * 5.0);
            for m in &mut r {
                m.publisher = format!("dev-{}", k % 10);
            }
            s.insert_messages(&r).expect("fill");
        }
        fills.push(n as f64 / t.elapsed().as_secs_f64());
        analyze(b);
        for (i, (_, q)) in queries.iter().enumerate() {
            let (p50, p99) = latencies(40, || {
                std::hint::black_box(s.read_messages("big", q).expect("read"));
            });
            figures[2 * i].push(p50.as_secs_f64() * 1e3);
            figures[2 * i + 1].push(p99.as_secs_f64() * 1e3);
        }
        if b.name == "sqlite" {
            sqlite_source = Some(s);
        }
    }
    let names: Vec<&str> = backends.iter().map(|b| b.name).collect();
    header(&format!("Readers: {n} messages in one channel"), &names);
    row("fill through Store::insert_messages", "rows/s", &fills);
    for (i, (what, _)) in queries.iter().enumerate() {
        row(&format!("{what}, p50"), "ms", &figures[2 * i]);
        row(&format!("{what}, p99"), "ms", &figures[2 * i + 1]);
    }
    if let (Some(src), Some(server)) = (sqlite_source, server) {
        let db = TestDatabase::create(server).expect("target");
        let target = Store::open_url(&db.store_url(), &StoreConfig::default()).expect("target");
        let t = Instant::now();
        let copied = src.copy_into(&target, |_| {}).expect("copy");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "\nstore migrate (SQLite → PostgreSQL): {} rows in {secs:.1} s = {:.0} rows/s",
            copied.rows(),
            copied.rows() as f64 / secs
        );
    }
}

fn main() {
    let scale: f64 = common::env("BENCH_SCALE", 1.0);
    let secs: u64 = common::env("BENCH_SECS", 5);
    let server = storage::testdb::server_url();
    match &server {
        Some(_) => println!("store benchmark: SQLite and PostgreSQL (FLUXGATE_TEST_DATABASE_URL), scale {scale}"),
        None => println!(
            "store benchmark: SQLite only (for PostgreSQL: eval \"$(scripts/throwaway-postgres start)\"), scale {scale}"
        ),
    }
    registry(&backends(server.as_deref(), "registry"), scale);

    let ingest_backends = backends(server.as_deref(), "ingest");
    let names: Vec<&str> = ingest_backends.iter().map(|b| b.name).collect();
    let mut raw = Vec::new();
    let mut http = Vec::new();
    let mut mqtt = Vec::new();
    for b in &ingest_backends {
        let s = open(b);
        raw.push(raw_rate(b, &s, (200_000.0 * scale.max(0.1)) as usize));
        drop(s);
        let (h, m) = ingest(b, secs);
        http.push(h);
        mqtt.push(m);
    }
    header(
        &format!("Ingest: {RECORDS_PER_MESSAGE} SenML records per message, {secs} s per figure"),
        &names,
    );
    row("raw bulk insert (SQLite 500/tx; PostgreSQL COPY)", "rows/s", &raw);
    row("HTTP ingest (16 senders)", "rows/s", &http);
    row("MQTT ingest (4 publishers, QoS 0)", "rows/s", &mqtt);
    let ratio = |v: &[f64]| -> Vec<f64> { v.iter().zip(&raw).map(|(x, r)| x / r).collect() };
    row("HTTP ÷ raw of the same database", "x", &ratio(&http));
    row("MQTT ÷ raw of the same database", "x", &ratio(&mqtt));

    readers(&backends(server.as_deref(), "readers"), scale, server.as_deref());
}
