//! The real `fluxgate serve` binary as a child process, for tests about the process itself
//! (its resident memory).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ADMIN_PASSWORD: &str = "child-admin-pass-123";

pub struct ChildServer {
    child: Child,
    /// Kept alive (deleted) with the server.
    _dir: TempDir,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
}

/// The value of `key=` in a log line (plain, no colours: stderr is not a terminal).
fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split_whitespace().next()?.parse().ok()
}

impl ChildServer {
    /// Starts on a fresh data directory; `env` adds FLUXGATE_* settings.
    pub async fn start(env: &[(&str, &str)]) -> ChildServer {
        ChildServer::start_in(tempfile::tempdir().expect("dir"), env).await
    }

    /// Starts on `dir` (e.g. the directory of a server that was killed).
    pub async fn start_in(dir: TempDir, env: &[(&str, &str)]) -> ChildServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fluxgate"));
        cmd.args(["serve", "--data-dir"])
            .arg(data(dir.path()))
            .args(["--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"])
            .args(["--ws-addr", "", "--mqtts-addr", "", "--wss-addr", ""])
            .env("FLUXGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
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
        let (mut http, mut mqtt) = (None, None);
        let wait = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while http.is_none() || mqtt.is_none() {
                let line = rx.recv().await.expect("the server exited during start-up");
                if line.contains("MQTT listening") {
                    mqtt = field(&line, "addr");
                }
                if line.contains("HTTP API listening") {
                    http = field(&line, "addr");
                }
            }
        });
        wait.await.expect("server started in time");
        // Later log lines are read and dropped, so the pipe never fills.
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        ChildServer {
            child,
            _dir: dir,
            http: http.expect("http"),
            mqtt: mqtt.expect("mqtt"),
        }
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

    /// `GET /health` answers 200.
    pub async fn healthy(&self) {
        let r = reqwest::get(format!("http://{}/health", self.http))
            .await
            .expect("health");
        assert_eq!(r.status().as_u16(), 200);
    }
}

fn data(dir: &Path) -> std::path::PathBuf {
    dir.join("data")
}
