//! Configuration: embedded defaults (`config.toml`), then a file, then `FLUXGATE_…`
//! environment variables, then command-line flags. Unknown keys are refused by name.

use serde::Deserialize;
use std::path::{Path, PathBuf};

mod layers;
pub(crate) use layers::edit_distance;
use layers::{apply_env, check_env_names, merge};

/// The documented default configuration, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../../config.toml");

/// A string that never appears in Debug output or logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub messages: MessagesConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub smtp: SmtpConfig,
    pub store: StoreSection,
    pub cluster: ClusterConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server; set, the node runs in cluster mode.
    pub nats_url: Secret,
    pub node_id: String,
    pub subject_prefix: String,
    pub flush_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub node_timeout_ms: u64,
    pub poll_ms: u64,
    pub stale_after_ms: u64,
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.nats_url.is_empty()
    }
}

/// A node id or subject token: 1–64 ASCII letters, digits, `-` or `_`.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub token: Secret,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    pub max_body_bytes: u64,
    pub tls: bool,
    pub public_url: String,
    pub header_timeout: u64,
    pub idle_timeout: u64,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub backlog: u32,
    pub cors_origins: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub max_live_viewers: usize,
    pub max_live_viewers_per_domain: usize,
    pub max_live_viewers_per_user: usize,
    pub console: bool,
    pub max_console_sessions: usize,
    pub max_console_sessions_per_user: usize,
}

impl HttpConfig {
    /// `trusted_proxies` as address ranges (`Err` names the first that is not one).
    pub fn trusted_proxies(&self) -> Result<Vec<mgmt::proxy::Cidr>, String> {
        self.trusted_proxies.iter().map(|c| c.parse()).collect()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub addr: String,
    pub ws_addr: String,
    pub allow_anonymous: bool,
    pub max_packet_size: usize,
    pub connect_timeout: u64,
    pub stall_timeout_ms: u64,
    pub max_keep_alive: u16,
    pub max_connections: usize,
    pub backlog: u32,
    pub inflight_window: u16,
    pub max_connect_size: usize,
    pub max_pending_connections: usize,
    pub max_pending_per_source: usize,
    pub max_queued_bytes: usize,
    pub max_queued_messages: usize,
    pub socket_send_buffer: usize,
    pub max_session_expiry: u64,
    pub max_sessions_per_client: usize,
    pub persist_sessions: bool,
    pub max_stored_queue_bytes: u64,
    pub max_retained: usize,
    pub threads: usize,
    pub max_segment_size: usize,
    pub max_segment_count: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub mqtts_addr: String,
    pub wss_addr: String,
    pub hosts: Vec<String>,
    pub cert_file: String,
    pub key_file: String,
    pub ca_cert_file: String,
    pub ca_key_file: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesConfig {
    pub queue_size: usize,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
    pub commit_linger_ms: u64,
    pub writer_priority: WriterPriority,
    pub store_mqtt: bool,
    pub max_senml_name: usize,
    pub max_senml_string: usize,
    pub retention_max_age: u64,
    pub retention_max_rows_per_channel: u64,
    pub retention_interval: u64,
}

/// CPU priority of the message writer thread.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WriterPriority {
    /// The process priority.
    Normal,
    /// nice 10: yields to the relaying threads, yet keeps a share of a busy CPU.
    Low,
    /// SCHED_IDLE: runs only on otherwise idle CPU; lowest latency impact, but under sustained
    /// overload storing may stall and the queue fill (messages then delivered, not stored).
    Idle,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_secret: Secret,
    pub access_token_ttl: u64,
    pub refresh_token_ttl: u64,
    pub pbkdf2_iterations: u32,
    pub self_registration: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub password: Secret,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    pub from: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite://<path>` or `postgres://user:pass@host:port/db`; empty: the SQLite file
    /// `fluxgate.db` in the data directory.
    pub url: Secret,
    pub busy_timeout_ms: u64,
    pub pool_size: u32,
    /// PostgreSQL: the CA (PEM) that verifies the database server's certificate; set, the
    /// connections use TLS. Empty: plain TCP.
    pub tls_ca_file: String,
    /// Seconds an announced change stays in the outbox; 0 keeps them all.
    pub outbox_max_age: u64,
}

impl Config {
    /// Where the store lives (`store.url`, or the data directory's SQLite file).
    pub fn store_url(&self) -> Result<storage::StoreUrl, storage::StoreError> {
        if self.store.url.expose().is_empty() {
            Ok(storage::StoreUrl::Sqlite(self.data_dir.join("fluxgate.db")))
        } else {
            storage::StoreUrl::parse(self.store.url.expose())
        }
    }

    /// The store's settings.
    pub fn store_config(&self) -> storage::StoreConfig {
        storage::StoreConfig {
            busy_timeout: std::time::Duration::from_millis(self.store.busy_timeout_ms),
            pool_size: self.store.pool_size,
            tls_ca_file: (!self.store.tls_ca_file.is_empty()).then(|| PathBuf::from(&self.store.tls_ca_file)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("unknown configuration key `{key}` in {source_name}")]
    UnknownKey { key: String, source_name: String },
    #[error("{source_name}: `{key}` must be {expected}, not {found}")]
    Type {
        source_name: String,
        key: String,
        expected: String,
        found: String,
    },
    #[error("environment variable {var}: {msg}")]
    Env { var: String, msg: String },
    #[error("unknown environment variable {var}: no configuration key has that name{hint}")]
    UnknownEnv { var: String, hint: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Values given as command-line flags (highest precedence).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<String>,
    pub mqtt_addr: Option<String>,
    pub ws_addr: Option<String>,
    pub mqtts_addr: Option<String>,
    pub wss_addr: Option<String>,
}

impl MessagesConfig {
    pub fn senml_limits(&self) -> senml::Limits {
        senml::Limits {
            max_name: self.max_senml_name,
            max_string: self.max_senml_string,
        }
    }
}

/// The configuration file to read: the one named with `--config`, else `./config.toml` when
/// there is one (a server started in the repository reads the repository's file).
pub fn locate(named: Option<PathBuf>) -> Option<PathBuf> {
    named.or_else(|| {
        let here = PathBuf::from("config.toml");
        here.is_file().then_some(here)
    })
}

impl Config {
    /// The embedded defaults alone (tests and benches). The embedded file is a compile-time
    /// constant that the unit test `defaults_parse` loads, so it cannot fail at run time.
    #[allow(clippy::panic)]
    pub fn defaults() -> Config {
        Config::load(None, std::iter::empty(), &Overrides::default())
            .unwrap_or_else(|e| panic!("embedded config.toml is invalid: {e}"))
    }

    /// Loads the layered configuration. `env` is the process environment (passed in so
    /// tests control it).
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = DEFAULT_CONFIG
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: "embedded config.toml".into(),
                msg: e.to_string(),
            })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
                path: path.to_path_buf(),
                err,
            })?;
            let over: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.display().to_string(),
                msg: e.message().to_string(),
            })?;
            merge(&mut table, over, "", &path.display().to_string())?;
        }
        let env: std::collections::HashMap<String, String> = env.filter(|(k, _)| k.starts_with("FLUXGATE_")).collect();
        check_env_names(&table, &env)?;
        apply_env(&mut table, "FLUXGATE", &env)?;
        if let Some(d) = &flags.data_dir {
            table.insert("data_dir".into(), toml::Value::String(d.display().to_string()));
        }
        for (section, key, flag) in [
            ("http", "addr", &flags.http_addr),
            ("mqtt", "addr", &flags.mqtt_addr),
            ("mqtt", "ws_addr", &flags.ws_addr),
            ("tls", "mqtts_addr", &flags.mqtts_addr),
            ("tls", "wss_addr", &flags.wss_addr),
        ] {
            if let (Some(v), Some(toml::Value::Table(t))) = (flag, table.get_mut(section)) {
                t.insert(key.into(), toml::Value::String(v.clone()));
            }
        }
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: "configuration".into(),
                msg: e.message().to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.admin.password.is_empty() {
            if let Err(why) = mgmt::auth::password_rule(self.admin.password.expose()) {
                return Err(ConfigError::Invalid(format!(
                    "admin.password (FLUXGATE_ADMIN_PASSWORD): {why}"
                )));
            }
        }
        let c = &self.cluster;
        if c.enabled() {
            if !self.store.url.expose().starts_with("postgres") {
                return Err(ConfigError::Invalid(
                    "cluster.nats_url needs a shared PostgreSQL store: set store.url to postgres://...".into(),
                ));
            }
            if !valid_token(&c.subject_prefix) {
                return Err(ConfigError::Invalid(
                    "cluster.subject_prefix must be 1-64 letters, digits, - or _".into(),
                ));
            }
            if !c.node_id.is_empty() && !valid_token(&c.node_id) {
                return Err(ConfigError::Invalid(
                    "cluster.node_id must be 1-64 letters, digits, - or _".into(),
                ));
            }
            if c.poll_ms == 0 || c.stale_after_ms <= c.poll_ms {
                return Err(ConfigError::Invalid(
                    "cluster: poll_ms must be positive and stale_after_ms above it".into(),
                ));
            }
            if c.heartbeat_ms == 0 || c.node_timeout_ms <= c.heartbeat_ms || c.flush_timeout_ms == 0 {
                return Err(ConfigError::Invalid(
                    "cluster: heartbeat_ms and flush_timeout_ms must be positive, node_timeout_ms above heartbeat_ms"
                        .into(),
                ));
            }
        }
        if self.auth.pbkdf2_iterations == 0 {
            return Err(ConfigError::Invalid("auth.pbkdf2_iterations must be at least 1".into()));
        }
        if self.auth.access_token_ttl == 0 || self.auth.refresh_token_ttl == 0 {
            return Err(ConfigError::Invalid("token lifetimes must be positive".into()));
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.expose().len() < 32 {
            return Err(ConfigError::Invalid(
                "auth.jwt_secret must have at least 32 characters".into(),
            ));
        }
        if self.mqtt.max_packet_size < 64 || self.mqtt.inflight_window == 0 || self.mqtt.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "mqtt.max_packet_size must be at least 64; inflight_window and max_connections positive".into(),
            ));
        }
        let h = &self.http;
        if h.header_timeout == 0
            || h.idle_timeout == 0
            || h.max_connections == 0
            || h.backlog == 0
            || self.mqtt.backlog == 0
        {
            return Err(ConfigError::Invalid(
                "http.header_timeout, http.idle_timeout, http.max_connections and the backlogs must be positive".into(),
            ));
        }
        let u = &h.public_url;
        let url_ok = u.is_empty() || u.starts_with("http://") || u.starts_with("https://");
        if !url_ok {
            return Err(ConfigError::Invalid(
                "http.public_url must start with http:// or https://".into(),
            ));
        }
        let m = &self.mqtt;
        if m.max_connect_size < 64
            || m.max_keep_alive == 0
            || m.max_pending_connections == 0
            || m.max_pending_per_source == 0
            || m.stall_timeout_ms < 100
            || m.max_queued_bytes < 1024
            || m.max_queued_messages == 0
            || m.max_sessions_per_client == 0
            || m.max_segment_size < 1024
            || m.max_segment_count < 2
        {
            return Err(ConfigError::Invalid(
                "mqtt: max_connect_size >= 64, stall_timeout_ms >= 100, max_queued_bytes >= 1024, max_segment_size >= 1024, max_segment_count >= 2; max_keep_alive, pending connections, queued messages and sessions per client positive".into(),
            ));
        }
        if self.messages.queue_size == 0 || self.messages.batch_size == 0 || self.messages.retention_interval == 0 {
            return Err(ConfigError::Invalid(
                "messages.queue_size, batch_size and retention_interval must be positive".into(),
            ));
        }
        if self.http.max_body_bytes == 0 {
            return Err(ConfigError::Invalid("http.max_body_bytes must be positive".into()));
        }
        let h = &self.http;
        if let Err(why) = h.trusted_proxies() {
            return Err(ConfigError::Invalid(format!("http.trusted_proxies: {why}")));
        }
        if h.max_connections_per_source == 0
            || h.max_live_viewers_per_domain == 0
            || h.max_live_viewers_per_user == 0
            || h.max_console_sessions == 0
            || h.max_console_sessions_per_user == 0
        {
            return Err(ConfigError::Invalid(
                "http: max_connections_per_source, max_live_viewers_per_domain, max_live_viewers_per_user, max_console_sessions and max_console_sessions_per_user must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let c = Config::defaults();
        assert_eq!(c.auth.pbkdf2_iterations, 600_000);
        assert_eq!(c.admin.username, "admin");
        assert!(c.http.cors_origins.is_empty());
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.metrics.token.is_empty());
    }

    #[test]
    fn lists_and_log_format_from_the_environment() {
        let env = [
            ("FLUXGATE_HTTP_CORS_ORIGINS", "https://a.example, https://b.example"),
            ("FLUXGATE_LOG_FORMAT", "json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::load(None, env, &Overrides::default()).expect("load");
        assert_eq!(c.http.cors_origins, ["https://a.example", "https://b.example"]);
        assert_eq!(c.log.format, LogFormat::Json);
        let bad = [("FLUXGATE_LOG_FORMAT".to_string(), "xml".to_string())].into_iter();
        assert!(Config::load(None, bad, &Overrides::default()).is_err());
    }

    #[test]
    fn layering_file_env_flags() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[http]\naddr = \"127.0.0.1:1\"\n[auth]\npbkdf2_iterations = 5\n").expect("w");
        let env = vec![
            ("FLUXGATE_AUTH_PBKDF2_ITERATIONS".to_string(), "7".to_string()),
            ("FLUXGATE_ADMIN_PASSWORD".to_string(), "s3cret-pass".to_string()),
            ("FLUXGATE_URL".to_string(), "ignored".to_string()),
        ];
        let flags = Overrides {
            http_addr: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = Config::load(Some(&f), env.into_iter(), &flags).expect("load");
        assert_eq!(c.auth.pbkdf2_iterations, 7);
        assert_eq!(c.http.addr, "127.0.0.1:2");
        assert_eq!(c.admin.password.expose(), "s3cret-pass");
        assert!(!format!("{c:?}").contains("s3cret-pass"));
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[http]\nadress = \"x\"\n").expect("w");
        let e = Config::load(Some(&f), std::iter::empty(), &Overrides::default()).expect_err("refused");
        assert!(e.to_string().contains("http.adress"), "{e}");
    }

    #[test]
    fn bad_env_value_is_named() {
        let env = vec![("FLUXGATE_HTTP_MAX_BODY_BYTES".to_string(), "lots".to_string())];
        let e = Config::load(None, env.into_iter(), &Overrides::default()).expect_err("refused");
        assert!(e.to_string().contains("FLUXGATE_HTTP_MAX_BODY_BYTES"), "{e}");
    }
}
