//! What the cluster tests run on: a throwaway PostgreSQL database and a nats-server the test
//! starts on a free loopback port, each reachable through a [`Proxy`] per node, and real
//! `fluxgate serve` nodes as child processes.

use crate::child::ChildServer;
use crate::durable::call;
use crate::pg_server::PgServer;
use crate::proxy::{Mode, Proxy};
use reqwest::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use storage::testdb::TestDatabase;

/// A nats-server of the test's own (stopped when dropped).
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Nats {
    /// `None` (a notice) when nats-server is not installed, unless the peers are required.
    pub fn start() -> Option<Nats> {
        if !crate::peers::available_from("nats-server", "Debian: apt-get install nats-server") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut n = Nats { child: None, port };
        n.resume();
        Some(n)
    }

    /// Starts (again) on the same port; returns once it accepts connections.
    pub fn resume(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("nats-server did not start listening");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// PostgreSQL and NATS for one test.
pub struct ClusterEnv {
    pub db: TestDatabase,
    pub nats: Nats,
    pub _pg: Option<PgServer>,
}

impl ClusterEnv {
    /// `None` (skipped with a notice) without PostgreSQL or nats-server.
    pub fn new() -> Option<ClusterEnv> {
        let nats = Nats::start()?;
        let (pg, db) = match storage::testdb::server_url() {
            Some(url) => (None, TestDatabase::create(&url).expect("database")),
            None => {
                let server = PgServer::start()?;
                let db = TestDatabase::create(&server.url()).expect("database");
                (Some(server), db)
            }
        };
        Some(ClusterEnv { db, nats, _pg: pg })
    }

    /// The database's address.
    pub fn pg_addr(&self) -> SocketAddr {
        let rest = self.db.url().split('@').nth(1).expect("host");
        let hostport = rest.split('/').next().expect("host:port");
        hostport.parse().expect("host:port")
    }

    /// The database's URL with another host:port (a proxy's).
    pub fn db_url_via(&self, addr: SocketAddr) -> String {
        self.db.url().replace(&self.pg_addr().to_string(), &addr.to_string())
    }

    /// A node with direct connections; `extra` adds FLUXGATE_* settings.
    pub async fn node(&self, extra: &[(&str, &str)]) -> ChildServer {
        let nats = format!("nats://{}", self.nats.addr());
        let mut env = vec![
            ("FLUXGATE_STORE_URL", self.db.url()),
            ("FLUXGATE_CLUSTER_NATS_URL", nats.as_str()),
        ];
        env.extend_from_slice(extra);
        ChildServer::start(&env).await
    }

    /// A node whose NATS and PostgreSQL traffic goes through proxies the test controls.
    pub async fn proxied_node(&self) -> (ChildServer, Proxy, Proxy) {
        let nats_proxy = Proxy::start(self.nats.addr()).await;
        let pg_proxy = Proxy::start(self.pg_addr()).await;
        let nats = format!("nats://{}", nats_proxy.addr);
        let db = self.db_url_via(pg_proxy.addr);
        let env = [
            ("FLUXGATE_STORE_URL", db.as_str()),
            ("FLUXGATE_CLUSTER_NATS_URL", nats.as_str()),
        ];
        (ChildServer::start(&env).await, nats_proxy, pg_proxy)
    }
}

/// Cuts or restores both of a proxied node's links.
pub fn set_both(a: &Proxy, b: &Proxy, m: Mode) {
    a.set(m);
    b.set(m);
}

async fn post(http: SocketAddr, path: &str, token: &str, body: Value) -> Value {
    let (s, v) = call(http, Method::POST, path, Some(token), body).await;
    assert!(s == 201 || s == 200, "{path}: {s} {v}");
    v
}

/// A domain with one channel and devices that may publish and subscribe on it.
pub struct Site {
    pub token: String,
    pub domain: String,
    pub channel: String,
    /// (client id, secret)
    pub devices: Vec<(String, String)>,
}

impl Site {
    pub async fn provision(s: &ChildServer, devices: usize) -> Site {
        let token = s.admin_token().await;
        let d = post(s.http, "/domains", &token, json!({"name": "site", "route": "site"})).await;
        let domain = d["id"].as_str().expect("domain").to_string();
        let h = post(s.http, &format!("/{domain}/channels"), &token, json!({"name": "c"})).await;
        let channel = h["id"].as_str().expect("channel").to_string();
        let mut list = Vec::new();
        for i in 0..devices {
            let c = post(
                s.http,
                &format!("/{domain}/clients"),
                &token,
                json!({"name": format!("dev{i}")}),
            )
            .await;
            list.push((
                c["id"].as_str().expect("id").to_string(),
                c["credentials"]["secret"].as_str().expect("secret").to_string(),
            ));
        }
        let ids: Vec<&str> = list.iter().map(|(i, _)| i.as_str()).collect();
        post(
            s.http,
            &format!("/{domain}/channels/connect"),
            &token,
            json!({"client_ids": ids, "channel_ids": [channel], "types": ["publish", "subscribe"]}),
        )
        .await;
        Site {
            token,
            domain,
            channel,
            devices: list,
        }
    }

    pub fn topic(&self, sub: &str) -> String {
        if sub.is_empty() {
            format!("channels/{}/messages", self.channel)
        } else {
            format!("channels/{}/messages/{sub}", self.channel)
        }
    }

    /// The filter for every message of the channel.
    pub fn all(&self) -> String {
        format!("channels/{}/messages/#", self.channel)
    }

    pub fn connect<'a>(&'a self, v5: bool, id: &'a str, device: usize) -> crate::raw::Connect<'a> {
        let (c, s) = &self.devices[device];
        crate::raw::Connect::new(v5, id, c, s)
    }

    /// A REST call with the admin's token.
    pub async fn call(&self, s: &ChildServer, method: Method, path: &str, body: Value) -> (u16, Value) {
        call(s.http, method, path, Some(&self.token), body).await
    }
}

/// Runs `fluxgate serve` expecting it to refuse to start; returns its stderr.
pub async fn refused_start(env: &[(&str, &str)], data_dir: &std::path::Path) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"));
    cmd.args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
        .args(["--ws-addr", "", "--mqtts-addr", "", "--wss-addr", ""])
        .env("FLUXGATE_ADMIN_PASSWORD", crate::child::ADMIN_PASSWORD)
        .env("FLUXGATE_AUTH_PBKDF2_ITERATIONS", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("exited in time")
        .expect("ran");
    assert!(!out.status.success(), "the server should have refused to start");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A counter of a node's `/metrics`.
pub(crate) async fn counter(n: &ChildServer, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", n.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (up to 10 s) until a node's counter reaches `at_least`.
pub(crate) async fn until_counter(n: &ChildServer, name: &str, at_least: u64) {
    let t = Instant::now();
    while counter(n, name).await < at_least {
        assert!(t.elapsed() < Duration::from_secs(10), "{name} reached {at_least}");
        tokio::task::yield_now().await;
    }
}

/// The node id a node runs with.
pub(crate) fn node_id(n: &ChildServer) -> String {
    std::fs::read_to_string(crate::child::data(n.data_dir()).join("node_id"))
        .expect("node id")
        .trim()
        .to_string()
}
