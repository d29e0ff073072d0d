//! The benches' shared kit: environment knobs, a server configuration on free loopback ports,
//! the admin's token, and registry entities written straight into the store. Each bench uses
//! part of it.
#![allow(dead_code)]

use fluxgate::config::{Config, Secret};
use std::path::PathBuf;
use std::str::FromStr;
use storage::{Domain, JsonText, NewChannel, NewClient, NewDomain, Status, Store};

/// The bootstrap super-admin's password in every bench server.
pub const ADMIN_PASSWORD: &str = "bench-password";

/// `name` from the environment, parsed, or `default`.
pub fn env<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A server configuration for benches: data in `data_dir`, the API and MQTT on free loopback
/// ports, no WebSocket or TLS listener, cheap password hashing, quiet logs.
pub fn config(data_dir: PathBuf) -> Config {
    let mut cfg = Config::defaults();
    cfg.data_dir = data_dir;
    cfg.http.addr = "127.0.0.1:0".into();
    cfg.mqtt.addr = "127.0.0.1:0".into();
    cfg.mqtt.ws_addr = String::new();
    cfg.tls.mqtts_addr = String::new();
    cfg.tls.wss_addr = String::new();
    cfg.auth.pbkdf2_iterations = 1000;
    cfg.admin.password = Secret(ADMIN_PASSWORD.into());
    cfg.log.level = "warn".into();
    cfg
}

/// The super-admin's access token from the API at `url`.
pub async fn admin_token(url: &str) -> String {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/users/tokens/issue"))
        .json(&serde_json::json!({"identity": "admin", "secret": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    v["access_token"].as_str().expect("token").to_string()
}

/// A domain owned by `owner` (a user id; the bootstrap admin when `None`).
pub fn domain(store: &Store, route: &str, owner: Option<&str>) -> Domain {
    let owner = match owner {
        Some(o) => o.to_string(),
        None => store.user_by_identity("admin").expect("query").expect("admin").id,
    };
    store
        .create_domain(
            NewDomain {
                id: uuid::Uuid::new_v4().to_string(),
                name: route.into(),
                route: route.into(),
                tags: JsonText::empty_array(),
                metadata: JsonText::empty_object(),
            },
            &owner,
        )
        .expect("domain")
}

pub fn new_channel(id: &str) -> NewChannel {
    NewChannel {
        id: id.into(),
        name: id.into(),
        description: String::new(),
        parent_group_id: None,
        tags: JsonText::empty_array(),
        metadata: JsonText::empty_object(),
        status: Status::Enabled,
    }
}

pub fn new_client(id: &str, secret: &str) -> NewClient {
    NewClient {
        id: id.into(),
        name: id.into(),
        identity: String::new(),
        secret: secret.into(),
        tags: JsonText::empty_array(),
        metadata: JsonText::empty_object(),
        status: Status::Enabled,
    }
}

/// Channels with these ids, in transactions of 1,000.
pub fn channels(store: &Store, domain: &str, ids: &[String]) {
    for chunk in ids.chunks(1000) {
        let new: Vec<NewChannel> = chunk.iter().map(|id| new_channel(id)).collect();
        store.create_channels(domain, &new).expect("channels");
    }
}

/// Clients with these (id, secret) pairs, in transactions of 1,000.
pub fn clients(store: &Store, domain: &str, creds: &[(String, String)]) {
    for chunk in creds.chunks(1000) {
        let new: Vec<NewClient> = chunk.iter().map(|(id, s)| new_client(id, s)).collect();
        store.create_clients(domain, &new).expect("clients");
    }
}

/// `fluxgate serve` as a child process on `data_dir`, MQTT on `mqtt` (API on `http`, else a
/// free port; no WebSocket or TLS listener), with `env` added; returns once MQTT accepts
/// connections.
pub async fn serve_child(
    data_dir: &std::path::Path,
    mqtt: std::net::SocketAddr,
    env: &[(&str, String)],
) -> std::process::Child {
    serve_child_on(data_dir, mqtt, None, env).await
}

pub async fn serve_child_on(
    data_dir: &std::path::Path,
    mqtt: std::net::SocketAddr,
    http: Option<std::net::SocketAddr>,
    env: &[(&str, String)],
) -> std::process::Child {
    let http = http.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"))
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--http-addr", &http, "--mqtt-addr", &mqtt.to_string()])
        .args(["--ws-addr", "", "--mqtts-addr", "", "--wss-addr", ""])
        .env("FLUXGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("FLUXGATE_AUTH_PBKDF2_ITERATIONS", "1000")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn fluxgate serve");
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(mqtt).await.is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "fluxgate serve did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child
}

/// Resident memory of a process, in KiB (0 when unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A loopback address with a port that was free a moment ago (for a child server).
pub fn free_addr() -> std::net::SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    ([127, 0, 0, 1], port).into()
}

/// The database of a child server in `data_dir`, once the server has created its super-admin.
pub async fn server_store(data_dir: &std::path::Path) -> Store {
    let db = data_dir.join("fluxgate.db");
    let store = Store::open(&db, &storage::StoreConfig::default()).expect("open the server's database");
    let started = std::time::Instant::now();
    while store.user_by_identity("admin").ok().flatten().is_none() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "no admin");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    store
}

/// SenML records in each message the ingest load sends.
pub const RECORDS_PER_MESSAGE: usize = 10;

/// Message `i` of the ingest load: [`RECORDS_PER_MESSAGE`] SenML records.
pub fn pack(i: usize) -> String {
    let recs: Vec<String> = (0..RECORDS_PER_MESSAGE)
        .map(|k| format!(r#"{{"n":"sensor{k}","u":"C","v":{}}}"#, (i + k) % 100))
        .collect();
    format!("[{}]", recs.join(","))
}

/// 16 HTTP senders posting to `channel` as devices `dev-0..3` (secrets `secret-dev-N`) for
/// `secs`; returns how many were answered 503.
pub async fn http_senders(url: &str, channel: &str, secs: u64) -> u64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    let client = reqwest::Client::new();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (c, u, h, stop) = (client.clone(), url.to_string(), channel.to_string(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w * 1_000_000;
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .post(format!("{u}/channels/{h}/messages"))
                    .header("authorization", format!("Client secret-dev-{}", w % 4))
                    .header("content-type", "application/senml+json")
                    .body(pack(i))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 503) {
                    refused += 1;
                }
                i += 1;
            }
            refused
        }));
    }
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap_or(0);
    }
    refused
}

/// 4 MQTT publishers (devices `dev-0..3`) at QoS 0 on `channel` for `secs`.
pub async fn mqtt_publishers(mqtt: std::net::SocketAddr, channel: &str, secs: u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut o = rumqttc::MqttOptions::new(format!("bench-{w}"), mqtt.ip().to_string(), mqtt.port());
        o.set_credentials(format!("dev-{w}"), format!("secret-dev-{w}"));
        o.set_keep_alive(Duration::from_secs(30));
        let (c, mut el) = rumqttc::AsyncClient::new(o, 1000);
        let stop2 = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                if tokio::time::timeout(Duration::from_millis(100), el.poll())
                    .await
                    .is_ok_and(|r| r.is_err())
                {
                    break;
                }
            }
        }));
        let (stop3, topic) = (stop.clone(), format!("channels/{channel}/messages"));
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop3.load(Ordering::Relaxed) {
                if c.publish(topic.clone(), rumqttc::QoS::AtMostOnce, false, pack(i))
                    .await
                    .is_err()
                {
                    break;
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
}

/// `n` stored-message rows for `channel` from `t0` (Unix seconds), 1 ms apart: ten publishers,
/// ten names, values 0–99.
pub fn message_rows(n: usize, channel: &str, t0: f64) -> Vec<storage::NewMessage> {
    (0..n)
        .map(|i| storage::NewMessage {
            domain_id: "d".into(),
            channel: channel.into(),
            subtopic: String::new(),
            publisher: format!("dev-{}", i % 10),
            protocol: "http".into(),
            name: format!("sensor{}", i % 10),
            unit: "C".into(),
            time: t0 + i as f64 * 0.001,
            value: Some((i % 100) as f64),
            format: "senml",
            ..Default::default()
        })
        .collect()
}

/// The reader queries the message benches time, by name, on a channel filled from
/// 1,600,000,000 by [`message_rows`].
pub fn reader_queries() -> Vec<(&'static str, storage::MessageQuery)> {
    use storage::MessageQuery;
    vec![
        (
            "latest 10",
            MessageQuery {
                limit: 10,
                ..Default::default()
            },
        ),
        (
            "name=sensor3, 10",
            MessageQuery {
                limit: 10,
                name: Some("sensor3".into()),
                ..Default::default()
            },
        ),
        (
            "publisher=dev-7, 10",
            MessageQuery {
                limit: 10,
                publisher: Some("dev-7".into()),
                ..Default::default()
            },
        ),
        (
            "name + v>90, 100",
            MessageQuery {
                limit: 100,
                name: Some("sensor3".into()),
                value: Some(storage::ValueFilter::Number(90.0, storage::Cmp::Gt)),
                ..Default::default()
            },
        ),
        (
            "time range 1 h, 100",
            MessageQuery {
                limit: 100,
                from: Some(1_600_000_000.0),
                to: Some(1_600_003_600.0),
                ..Default::default()
            },
        ),
        (
            "offset 100000, 10",
            MessageQuery {
                limit: 10,
                offset: 100_000,
                ..Default::default()
            },
        ),
        (
            "avg per 1 min over 1 h, name",
            MessageQuery {
                limit: 100,
                name: Some("sensor3".into()),
                from: Some(1_600_000_000.0),
                to: Some(1_600_003_600.0),
                aggregate: Some((storage::Aggregate::Avg, 60.0)),
                ..Default::default()
            },
        ),
    ]
}
