//! `TestApp`: starts the real platform in-process and offers typed request helpers.

use fluxgate::config::Config;
use fluxgate::{App, Hooks};
use mgmt::Outbox;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

pub const ADMIN_PASSWORD: &str = "admin-pass-123";

/// Captures password-reset notices instead of logging them.
#[derive(Default)]
pub struct Mailbox(pub Mutex<Vec<(String, String)>>);

impl Outbox for Mailbox {
    fn send(&self, to: &str, _subject: &str, body: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.push((to.to_string(), body.to_string()));
        }
    }
}

impl Mailbox {
    /// The last reset token sent to `to`.
    pub fn token_for(&self, to: &str) -> Option<String> {
        let m = self.0.lock().ok()?;
        let (_, body) = m.iter().rev().find(|(t, _)| t == to)?;
        let start = body.find("token within 15 minutes: ")? + "token within 15 minutes: ".len();
        body[start..].split_whitespace().next().map(String::from)
    }
}

pub struct TestApp {
    pub url: String,
    pub client: reqwest::Client,
    pub mailbox: Arc<Mailbox>,
    pub store: storage::Store,
    pub mqtt_addr: std::net::SocketAddr,
    pub ws_addr: Option<std::net::SocketAddr>,
    pub mqtts_addr: Option<std::net::SocketAddr>,
    pub broker_metrics: Arc<broker::Metrics>,
    pub stored: tokio::sync::Mutex<tokio::sync::watch::Receiver<u64>>,
    pub data_dir: std::path::PathBuf,
    pub changes: tokio::sync::Mutex<tokio::sync::broadcast::Receiver<storage::Change>>,
    pub presence: tokio::sync::Mutex<tokio::sync::broadcast::Receiver<storage::PresenceChange>>,
    dir: Option<TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// When the suite runs on PostgreSQL (`FLUXGATE_TEST_DATABASE_URL`), the URL of the database
/// that belongs to the data directory `dir`: created on first use, the same one when a test
/// restarts a server on the same directory. The databases live as long as the throwaway
/// server the suite runs against.
pub fn pg_database_for(dir: &std::path::Path) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    type Dbs = Mutex<HashMap<std::path::PathBuf, storage::testdb::TestDatabase>>;
    static DBS: OnceLock<Dbs> = OnceLock::new();
    let server = storage::testdb::server_url()?;
    let mut dbs = DBS.get_or_init(Default::default).lock().expect("databases");
    let db = dbs
        .entry(dir.to_path_buf())
        .or_insert_with(|| storage::testdb::TestDatabase::create(&server).expect("test database"));
    Some(db.url().to_string())
}

/// Whether the suite runs on PostgreSQL.
pub fn on_postgres() -> bool {
    storage::testdb::server_url().is_some()
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::defaults();
    if let Some(url) = pg_database_for(dir) {
        cfg.store.url = fluxgate::config::Secret(url);
    }
    cfg.data_dir = dir.to_path_buf();
    cfg.http.addr = "127.0.0.1:0".into();
    cfg.mqtt.addr = "127.0.0.1:0".into();
    cfg.mqtt.ws_addr = "127.0.0.1:0".into();
    cfg.tls.mqtts_addr = "127.0.0.1:0".into();
    cfg.auth.pbkdf2_iterations = 1000;
    cfg.admin.password = fluxgate::config::Secret(ADMIN_PASSWORD.into());
    cfg
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        TestApp::spawn_in(dir).await
    }

    pub async fn spawn_in(dir: TempDir) -> TestApp {
        let cfg = test_config(dir.path());
        TestApp::spawn_with(dir, cfg).await
    }

    pub async fn spawn_with(dir: TempDir, cfg: Config) -> TestApp {
        let mailbox = Arc::new(Mailbox::default());
        let hooks = Hooks {
            outbox: Some(mailbox.clone()),
        };
        TestApp::spawn_full(dir, cfg, hooks, mailbox).await
    }

    /// Starts with explicit hooks (e.g. none, to use the configured SMTP relay).
    pub async fn spawn_with_hooks(dir: TempDir, cfg: Config, hooks: Hooks) -> TestApp {
        TestApp::spawn_full(dir, cfg, hooks, Arc::new(Mailbox::default())).await
    }

    async fn spawn_full(dir: TempDir, cfg: Config, hooks: Hooks, mailbox: Arc<Mailbox>) -> TestApp {
        let app = App::build(cfg, hooks).await.expect("app builds");
        let url = format!("http://{}", app.http_addr());
        let store = app.store();
        let stored = tokio::sync::Mutex::new(app.stored_messages());
        let data_dir = dir.path().to_path_buf();
        let (mqtt_addr, ws_addr, broker_metrics) = (app.mqtt_addr(), app.ws_addr(), app.broker_metrics());
        let mqtts_addr = app.mqtts_addr();
        let changes = tokio::sync::Mutex::new(app.subscribe_changes());
        let presence = tokio::sync::Mutex::new(app.subscribe_presence());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async {
                let _ = rx.await;
            })
            .await
            .expect("app runs");
        });
        TestApp {
            url,
            client: reqwest::Client::new(),
            mailbox,
            store,
            mqtt_addr,
            ws_addr,
            mqtts_addr,
            broker_metrics,
            stored,
            data_dir,
            changes,
            presence,
            dir: Some(dir),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Where this server's store lives (its data directory's SQLite file, or its PostgreSQL
    /// database when the suite runs on PostgreSQL).
    pub fn store_url(&self) -> storage::StoreUrl {
        match pg_database_for(&self.data_dir) {
            Some(u) => storage::StoreUrl::Postgres(u),
            None => storage::StoreUrl::Sqlite(self.data_dir.join("fluxgate.db")),
        }
    }

    /// Holds the store's write lock from another connection until the guard is dropped.
    pub fn hold_write_lock(&self) -> storage::testdb::ForeignWriteLock {
        storage::testdb::ForeignWriteLock::take(&self.store_url()).expect("take the write lock")
    }

    /// Runs SQL on the store from another connection (an operator's database shell).
    pub fn raw_sql(&self, sql: &str) {
        storage::testdb::execute_sql(&self.store_url(), sql).expect("raw sql");
    }

    /// Stops the server gracefully and hands back its data directory.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
        self.dir.take().expect("dir")
    }

    /// Sends a request; `body` is sent as JSON. Returns the status and the JSON body (Null
    /// when empty).
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut r = self.client.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body)).await
    }

    /// Logs in; returns the token pair response.
    pub async fn login(&self, identity: &str, secret: &str) -> (u16, Value) {
        self.post(
            "/users/tokens/issue",
            None,
            json!({"identity": identity, "secret": secret}),
        )
        .await
    }

    pub async fn admin_token(&self) -> String {
        let (s, v) = self.login("admin", ADMIN_PASSWORD).await;
        assert_eq!(s, 201, "{v}");
        v["access_token"].as_str().expect("token").to_string()
    }

    /// Registers `name` (password `name-password`) and logs in: (user id, access token).
    pub async fn user(&self, name: &str) -> (String, String) {
        let (s, v) = self
            .post(
                "/users",
                None,
                json!({"first_name": name, "last_name": "Test", "email": format!("{name}@example.com"),
                       "credentials": {"username": name, "secret": format!("{name}-password")}}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().expect("id").to_string();
        let (s, t) = self.login(name, &format!("{name}-password")).await;
        assert_eq!(s, 201, "{t}");
        (id, t["access_token"].as_str().expect("token").to_string())
    }

    /// The next change announced on the feed (waits for it; bounded so a missing event fails).
    pub async fn next_change(&self) -> storage::Change {
        let mut rx = self.changes.lock().await;
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a change event within 10 s")
            .expect("feed open")
    }

    /// Waits until `client` of `domain` is recorded online (or offline).
    pub async fn presence_becomes(&self, domain: &str, client: &str, online: bool) {
        let mut rx = self.presence.lock().await;
        let want = storage::PresenceChange {
            domain_id: domain.to_string(),
            client_id: client.to_string(),
            online,
        };
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match rx.recv().await {
                    Ok(c) if c == want => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => panic!("presence feed closed"),
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "{client} online={online} recorded within 10 s");
    }

    /// Waits until the pipeline has committed at least `n` message rows in total.
    pub async fn stored_at_least(&self, n: u64) {
        let mut rx = self.stored.lock().await;
        tokio::time::timeout(std::time::Duration::from_secs(20), rx.wait_for(|v| *v >= n))
            .await
            .expect("messages stored in time")
            .expect("pipeline alive");
    }

    /// Sends a message over HTTP as a device: (status, body).
    pub async fn send(&self, path: &str, auth: &str, content_type: &str, body: &str) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{}", self.url, path))
            .header("authorization", auth)
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// Reads messages with an Authorization header value.
    pub async fn read(&self, path: &str, auth: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{}", self.url, path))
            .header("authorization", auth)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Drops changes announced so far.
    pub async fn drain_changes(&self) {
        let mut rx = self.changes.lock().await;
        while rx.try_recv().is_ok() {}
    }

    /// Creates a client in `domain`; returns its JSON.
    pub async fn client(&self, token: &str, domain: &str, body: Value) -> Value {
        let (s, v) = self.post(&format!("/{domain}/clients"), Some(token), body).await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// Creates a client in `domain`; returns (id, secret).
    pub async fn device(&self, token: &str, domain: &str) -> (String, String) {
        let v = self.client(token, domain, json!({"name": "device"})).await;
        (
            v["id"].as_str().expect("id").to_string(),
            v["credentials"]["secret"].as_str().expect("secret").to_string(),
        )
    }

    /// Connects client to channel with the given types (e.g. ["publish"]).
    pub async fn connect(&self, token: &str, domain: &str, client: &str, channel: &str, types: &[&str]) {
        let (s, v) = self
            .post(
                &format!("/{domain}/channels/connect"),
                Some(token),
                json!({"client_ids": [client], "channel_ids": [channel], "types": types}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }

    /// Creates a channel in `domain`; returns its id.
    pub async fn channel(&self, token: &str, domain: &str, name: &str) -> String {
        let (s, v) = self
            .post(&format!("/{domain}/channels"), Some(token), json!({"name": name}))
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Gives `user` the relation `rel` in `domain` (asserts 201).
    pub async fn assign(&self, token: &str, domain: &str, user: &str, rel: &str) {
        let (s, v) = self
            .post(
                &format!("/domains/{domain}/users/assign"),
                Some(token),
                json!({"user_ids": [user], "relation": rel}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }

    /// Creates a domain owned by the token's user; returns its id.
    pub async fn domain(&self, token: &str, route: &str) -> String {
        let (s, v) = self
            .post("/domains", Some(token), json!({"name": route, "route": route}))
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().expect("id").to_string()
    }
}
