//! A PostgreSQL server a test owns (to stop and start it): Debian's binaries, initdb in a
//! temporary directory, a free loopback port, fsync off. As root, the server runs as the
//! `postgres` user.

use std::path::PathBuf;
use std::process::Command;

pub struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgServer {
    /// Starts a new server; `None` without PostgreSQL's binaries (a notice, or a failure when
    /// the peers are required).
    pub fn start() -> Option<PgServer> {
        let s = PgServer::prepare()?;
        s.resume();
        Some(s)
    }

    /// [`PgServer::start`] with files written into its directory first (owned by the server's
    /// user, 0600) and extra `-c` settings, in which `{dir}` stands for that directory.
    pub fn start_with_files(files: &[(&str, &str)], settings: &[(&str, &str)]) -> Option<PgServer> {
        let s = PgServer::prepare()?;
        for (name, body) in files {
            let path = s.dir.path().join(name);
            std::fs::write(&path, body).expect("write");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            if is_root() {
                let out = Command::new("chown")
                    .arg("postgres")
                    .arg(&path)
                    .output()
                    .expect("chown");
                assert!(out.status.success());
            }
        }
        let dir = s.dir.path().display().to_string();
        let extra: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.replace("{dir}", &dir)))
            .collect();
        s.resume_with(&extra);
        Some(s)
    }

    /// initdb in a new directory; not started.
    fn prepare() -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var("FLUXGATE_REQUIRE_PEERS").is_err(),
                "PostgreSQL's server is required (FLUXGATE_REQUIRE_PEERS is set) but not installed"
            );
            eprintln!("skipping: PostgreSQL's server not installed (Debian: apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().expect("dir");
        if is_root() {
            // initdb runs as `postgres`, which must be able to create the data directory.
            std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let s = PgServer { bin, dir, port };
        s.run(
            "initdb",
            &[
                "-D",
                &s.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        Some(s)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (again) on the same data and port; returns once it accepts connections.
    pub fn resume(&self) {
        self.resume_with(&[]);
    }

    fn resume_with(&self, extra: &[(String, String)]) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        for (k, v) in extra {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "-o", &opts, "start"],
        );
    }

    /// Stops the server (fast shutdown: connections are cut); returns once it is down.
    pub fn halt(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
