//! The real `fluxgate serve` binary as a child process, for tests about the process itself
//! (its resident memory, what survives `kill -9`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ADMIN_PASSWORD: &str = "child-admin-pass-123";

pub struct ChildServer {
    child: Child,
    /// Kept alive (deleted) with the server.
    dir: Option<TempDir>,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    /// MQTT over TLS, when `FLUXGATE_TLS_MQTTS_ADDR` was given.
    pub mqtts: Option<SocketAddr>,
    /// Every log line so far, and a notification per new line.
    logs: Arc<(Mutex<Vec<String>>, tokio::sync::Notify)>,
}

/// The value of `key=` in a log line (plain, no colours: stderr is not a terminal).
/// An address field of a log line, text (`key=addr`) or JSON (`"key":"addr"`).
fn field(line: &str, key: &str) -> Option<SocketAddr> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return v[key].as_str()?.parse().ok();
    }
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let v = line[at..].split_whitespace().next()?;
    // `tls=Some(127.0.0.1:8883)` for an optional address.
    v.strip_prefix("Some(")
        .and_then(|x| x.strip_suffix(')'))
        .unwrap_or(v)
        .parse()
        .ok()
}

impl ChildServer {
    /// Starts on a fresh data directory; `env` adds FLUXGATE_* settings.
    pub async fn start(env: &[(&str, &str)]) -> ChildServer {
        ChildServer::start_in(tempfile::tempdir().expect("dir"), env).await
    }

    /// Starts on `dir` (e.g. the directory of a server that was killed). No WebSocket or
    /// TLS listener, unless `env` sets `FLUXGATE_TLS_MQTTS_ADDR`.
    pub async fn start_in(dir: TempDir, env: &[(&str, &str)]) -> ChildServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fluxgate"));
        cmd.args(["serve", "--data-dir"])
            .arg(data(dir.path()))
            .args(["--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .args(["--ws-addr", "", "--wss-addr", ""])
            .env("FLUXGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            // Password hashing is not what these tests are about; keep starts and logins cheap
            // on a busy 2-core machine.
            .env("FLUXGATE_AUTH_PBKDF2_ITERATIONS", "1000")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if !env.iter().any(|(k, _)| *k == "FLUXGATE_TLS_MQTTS_ADDR") {
            cmd.args(["--mqtts-addr", ""]);
        }
        if let Some(url) = crate::helpers::pg_database_for(&data(dir.path())) {
            cmd.env("FLUXGATE_STORE_URL", url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn fluxgate serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (mut http, mut mqtt, mut mqtts) = (None, None, None);
        let mut early = Vec::new();
        let wait = tokio::time::timeout(std::time::Duration::from_secs(180), async {
            while http.is_none() || mqtt.is_none() {
                let line = rx.recv().await.expect("the server exited during start-up");
                early.push(line.clone());
                if line.contains("MQTT listening") {
                    mqtt = field(&line, "addr");
                    mqtts = field(&line, "tls");
                }
                if line.contains("HTTP API listening") {
                    http = field(&line, "addr");
                }
            }
        });
        wait.await.expect("server started in time");
        // Later log lines are kept (the pipe never fills) for `wait_log`.
        let logs = Arc::new((Mutex::new(early), tokio::sync::Notify::new()));
        let l2 = logs.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if let Ok(mut v) = l2.0.lock() {
                    v.push(line);
                }
                l2.1.notify_waiters();
            }
        });
        ChildServer {
            child,
            dir: Some(dir),
            http: http.expect("http"),
            mqtt: mqtt.expect("mqtt"),
            mqtts,
            logs,
        }
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and returns its data
    /// directory, for a restart with `start_in`.
    pub async fn kill9(mut self) -> TempDir {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reaped");
        self.dir.take().expect("dir")
    }

    /// Waits (up to 20 s) for a log line containing `needle`; returns it.
    pub async fn wait_log(&self, needle: &str) -> String {
        let find = || {
            self.logs
                .0
                .lock()
                .ok()
                .and_then(|v| v.iter().find(|l| l.contains(needle)).cloned())
        };
        let wait = async {
            loop {
                let notified = self.logs.1.notified();
                if let Some(l) = find() {
                    return l;
                }
                notified.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?} in time"))
    }

    /// How many log lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.logs
            .0
            .lock()
            .map(|v| v.iter().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// The data directory's parent (what `start_in` takes).
    pub fn data_dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("dir")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident set size of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// Logs the super-admin in with `secret`: (status, token pair).
    pub async fn login(&self, secret: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("http://{}/users/tokens/issue", self.http))
            .json(&serde_json::json!({"identity": "admin", "secret": secret}))
            .send()
            .await
            .expect("login");
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or_default())
    }

    /// The super-admin's access token (the password the child was started with).
    pub async fn admin_token(&self) -> String {
        let (s, v) = self.login(ADMIN_PASSWORD).await;
        assert_eq!(s, 201, "{v}");
        v["access_token"].as_str().expect("token").to_string()
    }

    /// `GET /health` answers 200.
    pub async fn healthy(&self) {
        let r = reqwest::get(format!("http://{}/health", self.http))
            .await
            .expect("health");
        assert_eq!(r.status().as_u16(), 200);
    }
}

pub fn data(dir: &Path) -> std::path::PathBuf {
    dir.join("data")
}
