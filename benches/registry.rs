//! Registry benchmark (issue #3): authorization-query lookups per second on a store with
//! 100,000 clients, 10,000 channels and 1,000,000 connections, and list-page latency at
//! offset 50,000. The reference in the same run is a primary-key read of one client.
//!
//! Run: `cargo bench --bench registry` (set BENCH_SCALE=0.1 for a quick run). Printed only.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use rand::Rng;
use std::time::{Duration, Instant};
use storage::{ClientQuery, ConnType, JsonText, NewUser, PageReq, Role, Status, Store, StoreConfig};

fn timed<T>(n: usize, mut f: impl FnMut(usize) -> T) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(f(i));
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let scale: f64 = common::env("BENCH_SCALE", 1.0);
    let n_clients = (100_000.0 * scale) as usize;
    let n_channels = (10_000.0 * scale) as usize;
    let per_client = 10;
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(&dir.path().join("bench.db"), &StoreConfig::default()).expect("open");
    store
        .create_user(NewUser {
            id: "u".into(),
            first_name: String::new(),
            last_name: String::new(),
            email: "u@example.com".into(),
            username: "u".into(),
            secret: "x".into(),
            tags: JsonText::empty_array(),
            metadata: JsonText::empty_object(),
            profile_picture: String::new(),
            role: Role::User,
            status: Status::Enabled,
        })
        .expect("user");
    let d = common::domain(&store, "d", Some("u")).id;

    let t0 = Instant::now();
    let client_ids: Vec<String> = (0..n_clients).map(|i| format!("client-{i:06}")).collect();
    let channel_ids: Vec<String> = (0..n_channels).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let creds: Vec<(String, String)> = client_ids
        .iter()
        .map(|id| (id.clone(), format!("secret-{id}")))
        .collect();
    common::clients(&store, &d, &creds);
    common::channels(&store, &d, &channel_ids);
    // Client i is connected (publish) to channels i*10 .. i*10+9 (mod channel count).
    let channels_of = |i: usize| (0..per_client).map(move |k| (i * per_client + k) % n_channels);
    for (i, c) in client_ids.iter().enumerate() {
        let hs: Vec<String> = channels_of(i).map(|j| channel_ids[j].clone()).collect();
        store
            .connect(&d, std::slice::from_ref(c), &hs, &[ConnType::Publish])
            .expect("connect");
    }
    println!(
        "registry: {n_clients} clients, {n_channels} channels, {} connections, built in {:.1?}",
        n_clients * per_client,
        t0.elapsed()
    );

    let mut rng = rand::thread_rng();
    let n = 100_000;
    let picks: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n_clients)).collect();
    let reference = timed(n, |i| store.client(&d, &client_ids[picks[i]]).expect("get"));
    println!("{:<52} {reference:>10.0} /s", "reference: client by primary key");
    let can = timed(n, |i| {
        let c = picks[i];
        let h = channels_of(c).next().unwrap_or(0);
        assert!(store
            .can(&d, &client_ids[c], &channel_ids[h], ConnType::Publish)
            .expect("can"));
    });
    println!(
        "{:<52} {can:>10.0} /s   ({:.2}x reference)",
        "may client publish on channel (allowed)",
        can / reference
    );
    let deny = timed(n, |i| {
        store
            .can(&d, &client_ids[picks[i]], &channel_ids[0], ConnType::Subscribe)
            .expect("can")
    });
    println!(
        "{:<52} {deny:>10.0} /s   ({:.2}x reference)",
        "may client subscribe on channel (denied)",
        deny / reference
    );
    let by_id = timed(n, |i| store.clients_by_id(&client_ids[picks[i]]).expect("by id"));
    println!(
        "{:<52} {by_id:>10.0} /s   ({:.2}x reference)",
        "client by id (MQTT login)",
        by_id / reference
    );
    let by_secret = timed(n, |i| {
        store
            .client_by_secret(&d, &format!("secret-{}", client_ids[picks[i]]))
            .expect("by secret")
    });
    println!(
        "{:<52} {by_secret:>10.0} /s   ({:.2}x reference)",
        "client by secret in domain (HTTP login)",
        by_secret / reference
    );

    for offset in [0u64, 50_000] {
        let offset = offset.min(n_clients as u64 - 10);
        let mut lat = Vec::new();
        for _ in 0..50 {
            let q = ClientQuery {
                page: PageReq {
                    offset,
                    limit: 10,
                    ..Default::default()
                },
                ..Default::default()
            };
            let t = Instant::now();
            std::hint::black_box(store.list_clients(d.as_str(), &q).expect("list"));
            lat.push(t.elapsed());
        }
        println!(
            "list page (limit 10) at offset {offset:<6}  p50 {:>9.2?}  p99 {:>9.2?}",
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99)
        );
    }
}
