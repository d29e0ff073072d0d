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
mod messages;
mod migrations;
mod retained;
mod sessions;
mod settings;
mod users;

pub use certs::CertRecord;
pub use channels::{Channel, ChannelPatch, ChannelQuery, NewChannel, INVALID_CHANNEL_ID};
pub use clients::{Client, ClientAuth, ClientPatch, ClientQuery, NewClient};
pub use domains::{Domain, DomainMember, DomainPatch, DomainQuery, NewDomain, Relation};
pub use events::{Change, ConnType};
pub use groups::{max_depth as groups_max_depth, Group, GroupNode, GroupPatch, GroupQuery, NewGroup};
pub use messages::{Aggregate, Cmp, MessageQuery, MessageRow, NewMessage, ValueFilter};
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

/// Status filter for list queries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatusFilter {
    #[default]
    Enabled,
    Disabled,
    All,
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<StatusFilter> {
        match s {
            "enabled" => Some(StatusFilter::Enabled),
            "disabled" => Some(StatusFilter::Disabled),
            "all" => Some(StatusFilter::All),
            _ => None,
        }
    }
    fn sql(self, column: &str) -> Option<String> {
        match self {
            StatusFilter::Enabled => Some(format!("{column} = 'enabled'")),
            StatusFilter::Disabled => Some(format!("{column} = 'disabled'")),
            StatusFilter::All => None,
        }
    }
}

/// Sort order of list queries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    Name,
    #[default]
    CreatedAt,
    UpdatedAt,
}

impl Order {
    pub fn parse(s: &str) -> Option<Order> {
        match s {
            "name" => Some(Order::Name),
            "created_at" => Some(Order::CreatedAt),
            "updated_at" => Some(Order::UpdatedAt),
            _ => None,
        }
    }
    fn column(self, name_column: &str) -> String {
        match self {
            Order::Name => name_column.to_string(),
            Order::CreatedAt => "created_at".into(),
            Order::UpdatedAt => "COALESCE(updated_at, created_at)".into(),
        }
    }
}

/// Offset/limit, order and direction of a list query.
#[derive(Clone, Copy, Debug)]
pub struct PageReq {
    pub offset: u64,
    pub limit: u64,
    pub order: Order,
    pub descending: bool,
}

impl Default for PageReq {
    fn default() -> Self {
        PageReq {
            offset: 0,
            limit: 10,
            order: Order::CreatedAt,
            descending: false,
        }
    }
}

impl PageReq {
    fn sql(&self, name_column: &str) -> String {
        let dir = if self.descending { "DESC" } else { "ASC" };
        format!(
            " ORDER BY {} {dir}, rowid {dir} LIMIT {} OFFSET {}",
            self.order.column(name_column),
            self.limit.min(i64::MAX as u64),
            self.offset.min(i64::MAX as u64)
        )
    }
}

/// One page of a list query and the total number of matches.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub items: Vec<T>,
}

/// Which domains a list covers: one domain, or every enabled domain a user is a member of.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    Domain(&'a str),
    MemberOf(&'a str),
}

impl<'a> From<&'a str> for Scope<'a> {
    fn from(d: &'a str) -> Scope<'a> {
        Scope::Domain(d)
    }
}

impl<'a> From<&'a String> for Scope<'a> {
    fn from(d: &'a String) -> Scope<'a> {
        Scope::Domain(d)
    }
}

impl Scope<'_> {
    /// Restricts `column` (a domain id) to the scope.
    pub(crate) fn filter(self, f: &mut Filter, column: &str) {
        match self {
            Scope::Domain(d) => f.push(format!("{column} = ?"), d.to_string()),
            Scope::MemberOf(u) => f.push(
                format!(
                    "{column} IN (SELECT m.domain_id FROM domain_members m JOIN domains dm ON dm.id = m.domain_id
                     WHERE m.user_id = ? AND dm.status = 'enabled')"
                ),
                u.to_string(),
            ),
        }
    }
}

/// Builds `WHERE` clauses with positional parameters without string-pasting values.
#[derive(Default)]
pub(crate) struct Filter {
    clauses: Vec<String>,
    params: Vec<rusqlite::types::Value>,
}

impl Filter {
    pub(crate) fn push(&mut self, clause: impl Into<String>, value: impl Into<rusqlite::types::Value>) {
        self.clauses
            .push(clause.into().replace('?', &format!("?{}", self.params.len() + 1)));
        self.params.push(value.into());
    }
    /// The number the next pushed parameter will have (`?N`), to reuse it elsewhere in a query.
    pub(crate) fn next_index(&self) -> usize {
        self.params.len() + 1
    }
    pub(crate) fn raw(&mut self, clause: impl Into<String>) {
        self.clauses.push(clause.into());
    }
    pub(crate) fn status(&mut self, s: StatusFilter, column: &str) {
        if let Some(c) = s.sql(column) {
            self.raw(c);
        }
    }
    /// Rows whose `column` holds a JSON object containing every key/value of `want`.
    pub(crate) fn metadata(&mut self, column: &str, want: &Option<JsonText>) {
        if let Some(m) = want {
            self.push(
                format!(
                    "NOT EXISTS (SELECT 1 FROM json_each(?) w WHERE json_extract({column}, '$.\"' || w.key || '\"') IS NOT w.value)"
                ),
                m.0.clone(),
            );
        }
    }
    /// Rows whose JSON array `column` contains `tag`.
    pub(crate) fn tag(&mut self, column: &str, tag: &Option<String>) {
        if let Some(t) = tag {
            self.push(
                format!("EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"),
                t.clone(),
            );
        }
    }
    pub(crate) fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
    pub(crate) fn values(&self) -> Vec<rusqlite::types::Value> {
        self.params.clone()
    }
    pub(crate) fn params(&self) -> rusqlite::ParamsFromIter<std::slice::Iter<'_, rusqlite::types::Value>> {
        rusqlite::params_from_iter(self.params.iter())
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
