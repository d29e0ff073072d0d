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
