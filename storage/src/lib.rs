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
mod domains;
mod events;
mod groups;
mod list;
mod messages;
mod migrations;
mod presence;
mod retained;
mod sessions;
mod settings;
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
pub use presence::{PresenceChange, PresenceEvent};
pub use retained::RetainedRow;
pub use sessions::{QueuedRow, SessionRow, SessionSnapshot, SessionWrite};
pub use users::{NewUser, Role, User, UserPatch, UserQuery};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// Errors of the storage layer. The HTTP and MQTT edges map these once.
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
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// `NotFound` naming what (an entity, or an entity and its id).
    pub fn not_found(what: impl Into<String>) -> StoreError {
        StoreError::NotFound(what.into())
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

/// Settings of the SQLite store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub busy_timeout: Duration,
    pub pool_size: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            busy_timeout: Duration::from_secs(5),
            pool_size: 8,
        }
    }
}

/// The store handle: a pool of SQLite connections to one database file. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<SqliteConnectionManager>,
    stats: std::sync::Arc<PoolStats>,
    sink: std::sync::Arc<std::sync::OnceLock<ChangeSink>>,
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
    /// Opens (creating if needed) the database file, applies pending migrations, and refuses
    /// a database written by a newer binary without touching it.
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
            let mut c = Connection::open(path)?;
            c.busy_timeout(busy)?;
            c.execute_batch("PRAGMA foreign_keys = ON;")?;
            let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            tracing::debug!(journal_mode = %mode, "opened database");
            migrations::apply(&mut c)?;
        }
        let pool = r2d2::Pool::builder().max_size(cfg.pool_size.max(1)).build(manager)?;
        Ok(Store {
            pool,
            stats: Default::default(),
            sink: Default::default(),
        })
    }

    pub(crate) fn conn(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = std::time::Instant::now();
        let c = self.pool.get()?;
        self.stats.checkouts.fetch_add(1, Relaxed);
        self.stats
            .wait_micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        Ok(c)
    }

    /// Pool wait counters.
    pub fn pool_stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Connections open and idle in the pool.
    pub fn pool_state(&self) -> PoolState {
        let s = self.pool.state();
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
                [now_micros().to_string()],
            )?;
            Ok(())
        })
    }

    /// Sets where this store (and every clone of it) announces the rights-affecting changes
    /// its writes make, after they commit. Only the first sink set counts; false after that.
    pub fn set_change_sink(&self, sink: impl Fn(&Change) + Send + Sync + 'static) -> bool {
        self.sink.set(Box::new(sink)).is_ok()
    }

    /// [`Store::write`] for a write that changes rights: `f` records the changes it makes, and
    /// they are handed to the change sink once the transaction has committed (never for a
    /// write that failed or rolled back).
    pub(crate) fn write_announcing<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &mut Vec<Change>) -> Result<T>,
    ) -> Result<T> {
        let mut changes = Vec::new();
        let out = self.write(|tx| f(tx, &mut changes))?;
        if let Some(sink) = self.sink.get() {
            changes.iter().for_each(sink);
        }
        Ok(out)
    }

    /// Runs `f` in an immediate (write-locking) transaction, committing on `Ok`.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut c = self.conn()?;
        let tx = rusqlite::Transaction::new(&mut c, rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Maps a UNIQUE violation to [`StoreError::Conflict`] with `what` as the message.
pub(crate) fn conflict(e: rusqlite::Error, what: &str) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation
                && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) =>
        {
            StoreError::Conflict(what.to_string())
        }
        _ => StoreError::Sqlite(e),
    }
}

/// Column `i` as text read by `parse`; a value it does not know is an error of the row, not
/// something to skip.
pub(crate) fn parsed<T>(r: &rusqlite::Row<'_>, i: usize, parse: impl Fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("unknown value {s:?}").into())
    })
}

pub(crate) fn status_from_sql(s: &str) -> Status {
    Status::parse(s).unwrap_or(Status::Disabled)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    pub fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("t.db"), &StoreConfig::default()).expect("open");
        (dir, s)
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
            let c = Connection::open(&path).expect("raw");
            c.execute_batch(&format!("PRAGMA user_version = {future}"))
                .expect("set");
        }
        match Store::open(&path, &StoreConfig::default()) {
            Err(StoreError::TooNew { found, .. }) => assert_eq!(found, future),
            other => panic!("expected TooNew, got {other:?}"),
        }
        let c = Connection::open(&path).expect("raw");
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("v");
        assert_eq!(v, future);
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
