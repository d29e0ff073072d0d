//! `storage` owns the SQLite database: pool setup, pragmas, migrations and every SQL string.
//!
//! Invariants:
//! - No other crate issues SQL; callers see typed records and [`StoreError`].
//! - The crate knows nothing of HTTP, MQTT or request formats. Columns holding JSON documents
//!   (tags, metadata) are carried as [`JsonText`]: text the caller has already validated.
//! - Every query on tenant data takes the domain id and filters on it.
//! - Writes run in `BEGIN IMMEDIATE` transactions so concurrent writers queue on SQLite's
//!   lock (bounded by `busy_timeout`) instead of failing half-way.

mod certs;
mod channels;
mod clients;
mod connections;
mod db;
mod domains;
mod entity;
#[cfg(test)]
mod equivalence;
mod events;
mod groups;
mod list;
mod messages;
mod migrate;
mod migrations;
mod nodes;
mod outbox;
mod presence;
mod retained;
mod sessions;
mod settings;
#[doc(hidden)]
pub mod testdb;
mod users;

pub use certs::CertRecord;
pub use channels::{Channel, ChannelPatch, ChannelQuery, NewChannel, INVALID_CHANNEL_ID};
pub use clients::{Client, ClientAuth, ClientPatch, ClientQuery, NewClient, Presence};
pub use domains::{Domain, DomainMember, DomainPatch, DomainQuery, NewDomain, Relation};
pub use events::{Change, ConnType};
pub use groups::{max_depth as groups_max_depth, Group, GroupNode, GroupPatch, NewGroup};
pub(crate) use list::Filter;
pub use list::{EntityFilter, ListQuery, Order, Page, PageReq, Scope, StatusFilter};
pub use messages::{Aggregate, Cmp, MessageQuery, MessageRow, NewMessage, ValueFilter};
pub use migrate::{Copied, Progress};
pub use nodes::NodeRow;
pub use outbox::OutboxEntry;
pub use presence::{PresenceChange, PresenceEvent};
pub use retained::RetainedRow;
pub use sessions::{HeldElsewhere, QueuedRow, SessionRow, SessionSnapshot, SessionWrite};
pub use users::{NewUser, Role, User, UserPatch, UserQuery};

use db::{Conn, Db, Tx};
use r2d2_sqlite::SqliteConnectionManager;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of the storage layer. The HTTP and MQTT edges map these once. No variant names a
/// backend: what the database said is carried as text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// What was not found, e.g. "channel" or "client dev-1".
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("database schema version {found} is newer than this binary supports ({supported})")]
    TooNew { found: i64, supported: i64 },
    /// The database cannot answer now (unreachable, restarting, locked past the timeout, full):
    /// a retry later may succeed. The edges answer 503 / "server unavailable".
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement for another reason (a bug, or a damaged schema).
    #[error("database: {0}")]
    Database(String),
    /// A stored value this binary cannot read.
    #[error("stored data: {0}")]
    Corrupt(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// `NotFound` naming what (an entity, or an entity and its id).
    pub fn not_found(what: impl Into<String>) -> StoreError {
        StoreError::NotFound(what.into())
    }
    /// Whether the store could not answer now (as opposed to refusing the request).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<r2d2::Error> for StoreError {
    /// No pooled connection within the timeout: every connection is busy or the server is
    /// unreachable.
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(format!("no database connection: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A JSON document kept as text. Callers validate it; storage only stores and queries it
/// with SQLite's JSON functions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonText(pub String);

impl JsonText {
    pub fn empty_object() -> Self {
        JsonText("{}".into())
    }
    pub fn empty_array() -> Self {
        JsonText("[]".into())
    }
}

/// Entity status shared by users, domains, clients, channels and groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Enabled,
    Disabled,
    /// Domains only: read-only for everyone but the super-admin.
    Frozen,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
            Status::Frozen => "freezed",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "enabled" => Some(Status::Enabled),
            "disabled" => Some(Status::Disabled),
            "freezed" | "frozen" => Some(Status::Frozen),
            _ => None,
        }
    }
}

/// Current time in microseconds since the Unix epoch, the unit of every stored timestamp.
pub fn now_micros() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}

/// Settings of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// How long a write waits for the write lock (SQLite's busy timeout; PostgreSQL's
    /// `lock_timeout` on the write lock), and a PostgreSQL connection for the server.
    pub busy_timeout: Duration,
    pub pool_size: u32,
    /// PostgreSQL: the PEM file of the CA(s) that verify the server's certificate; with it,
    /// connections use TLS (as the URL's `sslmode` asks: `prefer` by default, `require`).
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            busy_timeout: Duration::from_secs(5),
            pool_size: 8,
            tls_ca_file: None,
        }
    }
}

/// Where the store lives: `sqlite://<path>` or `postgres://…` (also `postgresql://`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    /// Never prints a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for StoreUrl {
    /// The URL with any password replaced by `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            StoreUrl::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

/// `u` with the password of its user-info part (`user:password@`) replaced.
fn redact(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return "postgres://***".into();
    };
    let (auth, host) = match rest.rfind('@') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => return u.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{host}"),
        None => u.to_string(),
    }
}

impl StoreUrl {
    pub fn parse(s: &str) -> Result<StoreUrl> {
        if let Some(p) = s.strip_prefix("sqlite://") {
            if p.is_empty() {
                return Err(StoreError::Invalid("sqlite:// needs a file path".into()));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(p)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<postgres::Config>()
                .map_err(|e| StoreError::Invalid(format!("store url {}: {e}", redact(s))))?;
            return Ok(StoreUrl::Postgres(s.to_string()));
        }
        Err(StoreError::Invalid(format!(
            "store url {}: expected sqlite://<path> or postgres://user:pass@host:port/db",
            redact(s)
        )))
    }
    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreUrl::Postgres(_))
    }
}

/// The connection pool of one backend.
#[derive(Clone)]
enum Pool {
    Sqlite(r2d2::Pool<SqliteConnectionManager>),
    Pg(r2d2::Pool<db::pg::Manager>),
}

/// The store handle: a pool of connections to one database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    stats: std::sync::Arc<PoolStats>,
    sink: std::sync::Arc<std::sync::OnceLock<ChangeSink>>,
    /// Cluster mode: the node this store serves; what the store keeps per node (persistent
    /// sessions, presence) is scoped by it. Empty outside a cluster.
    node: std::sync::Arc<std::sync::OnceLock<String>>,
    /// Session record writes refused because another node owns the session.
    fenced: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// This node's number (top bits of its message ids), known once sessions were loaded.
    number: std::sync::Arc<std::sync::OnceLock<i64>>,
}

/// Where the store announces rights-affecting changes, after their transaction committed
/// (a plain callback: the store knows nothing of async channels).
pub type ChangeSink = Box<dyn Fn(&Change) + Send + Sync>;

/// How long callers waited for a pooled connection (for the metrics).
#[derive(Default, Debug)]
pub struct PoolStats {
    /// Connections handed out.
    pub checkouts: std::sync::atomic::AtomicU64,
    /// Total time callers waited for them, in microseconds.
    pub wait_micros: std::sync::atomic::AtomicU64,
}

/// What the pool holds now.
#[derive(Clone, Copy, Debug)]
pub struct PoolState {
    pub connections: u32,
    pub idle: u32,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database file, applies pending migrations, and
    /// refuses a database written by a newer binary without touching it.
    pub fn open(path: &Path, cfg: &StoreConfig) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let busy = cfg.busy_timeout;
        let manager = SqliteConnectionManager::file(path).with_init(move |c| {
            c.busy_timeout(busy)?;
            c.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
        });
        // Check the version and enable WAL on one connection before the pool opens others.
        {
            let mut c = rusqlite::Connection::open(path).map_err(db::sqlite::error)?;
            c.busy_timeout(busy).map_err(db::sqlite::error)?;
            c.execute_batch("PRAGMA foreign_keys = ON;")
                .map_err(db::sqlite::error)?;
            let mode: String = c
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(db::sqlite::error)?;
            tracing::debug!(journal_mode = %mode, "opened database");
            migrations::apply_sqlite(&mut c)?;
        }
        let pool = r2d2::Pool::builder()
            .max_size(cfg.pool_size.max(1))
            .connection_timeout(cfg.busy_timeout.max(Duration::from_secs(1)))
            .build(manager)?;
        Ok(Store::with_pool(Pool::Sqlite(pool)))
    }

    /// Opens the store at `url`: the SQLite file, or the PostgreSQL database (which must
    /// exist; its schema is created or migrated, once, whichever node gets there first).
    pub fn open_url(url: &StoreUrl, cfg: &StoreConfig) -> Result<Store> {
        let pg = match url {
            StoreUrl::Sqlite(p) => return Store::open(p, cfg),
            StoreUrl::Postgres(u) => u,
        };
        let manager = db::pg::Manager::new(pg, cfg.busy_timeout, cfg.tls_ca_file.as_deref())?;
        let pool = r2d2::Pool::builder()
            .max_size(cfg.pool_size.max(1))
            .min_idle(Some(1))
            .test_on_check_out(false)
            .connection_timeout(cfg.busy_timeout.max(Duration::from_secs(1)))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)?;
        {
            let mut c = pool.get()?;
            migrations::apply_pg(&mut c)?;
        }
        Ok(Store::with_pool(Pool::Pg(pool)))
    }

    fn with_pool(pool: Pool) -> Store {
        Store {
            pool,
            stats: Default::default(),
            sink: Default::default(),
            node: Default::default(),
            fenced: Default::default(),
            number: Default::default(),
        }
    }

    /// The SQL dialect of this store's backend.
    pub(crate) fn dialect(&self) -> db::Dialect {
        match self.pool {
            Pool::Sqlite(_) => db::Dialect::Sqlite,
            Pool::Pg(_) => db::Dialect::Postgres,
        }
    }

    /// Which database this store runs on: `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Pg(_) => "postgres",
        }
    }

    pub(crate) fn conn(&self) -> Result<Conn> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = std::time::Instant::now();
        let c = match &self.pool {
            Pool::Sqlite(p) => Conn::Sqlite(p.get()?),
            Pool::Pg(p) => Conn::Pg(Box::new(std::cell::RefCell::new(p.get()?))),
        };
        self.stats.checkouts.fetch_add(1, Relaxed);
        self.stats
            .wait_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        Ok(c)
    }

    /// Session record writes refused so far because another node owns the session (a node
    /// that lost a session it held, e.g. after a pause, cannot overwrite it).
    pub fn session_writes_fenced(&self) -> u64 {
        self.fenced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pool wait counters.
    pub fn pool_stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Connections open and idle in the pool.
    pub fn pool_state(&self) -> PoolState {
        let s = match &self.pool {
            Pool::Sqlite(p) => p.state(),
            Pool::Pg(p) => p.state(),
        };
        PoolState {
            connections: s.connections,
            idle: s.idle_connections,
        }
    }

    /// Proves the database accepts writes (for `GET /health`): takes the write lock (waiting
    /// at most the busy timeout) and writes one settings row.
    pub fn probe_write(&self) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('health_probe', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &db::params![now_micros().to_string()],
            )?;
            Ok(())
        })
    }

    /// Cluster mode: sets the node this store (and every clone of it) serves. Only the first
    /// call counts; false after that.
    pub fn set_node(&self, id: &str) -> bool {
        self.node.set(id.to_string()).is_ok()
    }

    /// The node this store serves ("" outside a cluster).
    pub fn node(&self) -> &str {
        self.node.get().map_or("", String::as_str)
    }

    /// Sets where this store (and every clone of it) announces the rights-affecting changes
    /// its writes make, after they commit. Only the first sink set counts; false after that.
    pub fn set_change_sink(&self, sink: impl Fn(&Change) + Send + Sync + 'static) -> bool {
        self.sink.set(Box::new(sink)).is_ok()
    }

    /// [`Store::write`] for a write that changes rights: `f` records the changes it makes;
    /// they are written to the outbox inside the transaction and handed to the change sink
    /// once it has committed (never for a write that failed or rolled back).
    pub(crate) fn write_announcing<T>(&self, f: impl FnOnce(&Tx<'_>, &mut Vec<Change>) -> Result<T>) -> Result<T> {
        let mut changes = Vec::new();
        let out = self.write(|tx| {
            let out = f(tx, &mut changes)?;
            outbox::record(tx, &changes)?;
            Ok(out)
        })?;
        if let Some(sink) = self.sink.get() {
            changes.iter().for_each(sink);
        }
        Ok(out)
    }

    /// Runs `f` in a transaction holding the store's one write lock, committing on `Ok`
    /// (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock).
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        match &self.pool {
            Pool::Sqlite(p) => {
                let mut c = p.get()?;
                let tx = rusqlite::Transaction::new(&mut c, rusqlite::TransactionBehavior::Immediate)
                    .map_err(db::sqlite::error)?;
                let tx = Tx::Sqlite(tx);
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            }
            Pool::Pg(p) => {
                let mut c = p.get()?;
                let tx = Tx::Pg(std::cell::RefCell::new(c.begin_write()?));
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            }
        }
    }
}

/// A unique violation (any [`StoreError::Conflict`] from the database) named `what`; other
/// errors unchanged.
pub(crate) fn conflict(e: StoreError, what: &str) -> StoreError {
    match e {
        StoreError::Conflict(_) => StoreError::Conflict(what.to_string()),
        e => e,
    }
}

pub(crate) fn status_from_sql(s: &str) -> Status {
    Status::parse(s).unwrap_or(Status::Disabled)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    /// What keeps a test's database alive: its directory, or its PostgreSQL database.
    #[allow(dead_code)]
    pub enum Held {
        Dir(tempfile::TempDir),
        Pg(crate::testdb::TestDatabase),
    }

    /// A fresh store: on PostgreSQL when `FLUXGATE_TEST_DATABASE_URL` is set, else SQLite.
    pub fn store() -> (Held, Store) {
        if let Some(server) = crate::testdb::server_url() {
            let db = crate::testdb::TestDatabase::create(&server).expect("test database");
            let s = Store::open_url(&db.store_url(), &StoreConfig::default()).expect("open");
            return (Held::Pg(db), s);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("t.db"), &StoreConfig::default()).expect("open");
        (Held::Dir(dir), s)
    }
    /// Creates domain `id` (name and route `id`) with `creator` as its admin.
    pub fn domain(s: &Store, id: &str, creator: &str) {
        s.create_domain(
            NewDomain {
                id: id.into(),
                name: id.into(),
                route: id.into(),
                tags: JsonText::empty_array(),
                metadata: JsonText::empty_object(),
            },
            creator,
        )
        .expect("domain");
    }

    /// Creates an enabled ordinary user `id` (username `id`, e-mail `id@x.io`); returns its id.
    pub fn user(s: &Store, id: &str) -> String {
        s.create_user(NewUser {
            id: id.into(),
            first_name: id.into(),
            last_name: String::new(),
            email: format!("{id}@x.io"),
            username: id.into(),
            secret: "h".into(),
            tags: JsonText::empty_array(),
            metadata: JsonText::empty_object(),
            profile_picture: String::new(),
            role: Role::User,
            status: Status::Enabled,
        })
        .expect("user")
        .id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_database_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        Store::open(&path, &StoreConfig::default()).expect("open");
        let future = migrations::LATEST + 5;
        {
            let c = rusqlite::Connection::open(&path).expect("raw");
            c.execute_batch(&format!("PRAGMA user_version = {future}"))
                .expect("set");
        }
        match Store::open(&path, &StoreConfig::default()) {
            Err(StoreError::TooNew { found, .. }) => assert_eq!(found, future),
            other => panic!("expected TooNew, got {other:?}"),
        }
        let c = rusqlite::Connection::open(&path).expect("raw");
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("v");
        assert_eq!(v, future);
    }

    /// A store dropped on an async worker thread (its last clone going with a task) closes
    /// its connections without panicking: PostgreSQL's client blocks on its own runtime, so
    /// its connections are handed to a plain thread to close.
    #[test]
    fn a_store_dropped_on_a_runtime_thread_closes_quietly() {
        let (_held, s) = testutil::store();
        s.set_setting("k", "v").expect("a pooled connection in use");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async move {
            let clone = s.clone();
            drop(s);
            drop(clone);
        });
    }

    #[test]
    fn store_urls_parse_and_never_print_a_password() {
        let u = StoreUrl::parse("postgres://fluxgate:s3cret@db:5432/fg?sslmode=require").expect("pg");
        assert!(u.is_postgres());
        assert_eq!(u.to_string(), "postgres://fluxgate:***@db:5432/fg?sslmode=require");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(StoreUrl::parse("postgresql://u@h/d").expect("postgresql").is_postgres());
        assert_eq!(
            StoreUrl::parse("sqlite:///var/lib/f.db").expect("sqlite"),
            StoreUrl::Sqlite(PathBuf::from("/var/lib/f.db"))
        );
        for bad in ["sqlite://", "mysql://u:pw@h/d", "postgres://u:pw@h:notaport/d"] {
            match StoreUrl::parse(bad) {
                Err(StoreError::Invalid(m)) => assert!(!m.contains("pw@"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn reopening_keeps_data_and_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        let s = Store::open(&path, &StoreConfig::default()).expect("open");
        s.set_setting("k", "v").expect("set");
        drop(s);
        let s = Store::open(&path, &StoreConfig::default()).expect("reopen");
        assert_eq!(s.setting("k").expect("get").as_deref(), Some("v"));
    }
}
