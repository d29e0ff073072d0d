//! The PostgreSQL backend of [`super::Db`]: a small r2d2 manager over the synchronous
//! `postgres` client, statements prepared once per connection (placeholders rewritten from
//! `?N` to `$N`), values converted to the type the server inferred, errors mapped to
//! [`StoreError`] (a server that cannot be reached is [`StoreError::Unavailable`]).
//!
//! The client blocks on a private runtime: it must never run on an async worker thread. The
//! store is only called on blocking threads; a connection dropped on a runtime thread is
//! handed to a plain thread to close (a test covers it).

use super::{Row, Value};
use crate::{Result, StoreError};
use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, Statement};
use std::collections::HashMap;
use std::time::Duration;

/// The key of the transaction-scoped advisory lock every registry write holds (PostgreSQL's
/// equivalent of SQLite's `BEGIN IMMEDIATE`: one writer at a time, across processes).
pub(crate) const WRITE_LOCK: i64 = 0x666c_7578_0001;
/// The advisory lock migrations hold, so that nodes starting together migrate once.
pub(crate) const MIGRATE_LOCK: i64 = 0x666c_7578_0002;

/// How r2d2 opens and checks PostgreSQL connections.
pub(crate) struct Manager {
    config: postgres::Config,
    lock_timeout: Duration,
    /// TLS to the server, verified against these roots (`store.tls_ca_file`); without it,
    /// plain TCP.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Manager {
    /// `url` as the `postgres` crate reads it (its `sslmode`: `disable`, `prefer`, `require`);
    /// `ca_file`: the PEM roots that verify the server's certificate when TLS is used.
    pub(crate) fn new(url: &str, lock_timeout: Duration, ca_file: Option<&std::path::Path>) -> Result<Manager> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Invalid(format!("store url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(lock_timeout.max(Duration::from_secs(1)));
        }
        config.application_name("fluxgate");
        let tls = match ca_file {
            Some(path) => Some(tls_connector(path)?),
            None if config.get_ssl_mode() == postgres::config::SslMode::Require => {
                return Err(StoreError::Invalid(
                    "store url asks for TLS (sslmode=require): set store.tls_ca_file to the CA that signed the database server's certificate".into(),
                ))
            }
            None => None,
        };
        Ok(Manager {
            config,
            lock_timeout,
            tls,
        })
    }
}

/// A rustls connector trusting the certificates in the PEM file at `path`.
fn tls_connector(path: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let bad = |why: String| StoreError::Invalid(format!("store.tls_ca_file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// One connection and its prepared statements.
pub(crate) struct PgConn {
    client: Option<Client>,
    cache: HashMap<String, Statement>,
    lock_timeout: Duration,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Closing the client blocks on its runtime, which panics on an async worker thread.
        if let Some(c) = self.client.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(c));
            }
        }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = StoreError;
    fn connect(&self) -> Result<PgConn> {
        let client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
        .map_err(error)?;
        Ok(PgConn {
            client: Some(client),
            cache: HashMap::new(),
            lock_timeout: self.lock_timeout,
        })
    }
    fn is_valid(&self, c: &mut PgConn) -> Result<()> {
        c.client()?.simple_query("").map(|_| ()).map_err(error)
    }
    fn has_broken(&self, c: &mut PgConn) -> bool {
        c.client.as_ref().is_none_or(|c| c.is_closed())
    }
}

impl PgConn {
    fn client(&mut self) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("connection closed".into()))
    }
    pub(crate) fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize> {
        let st = prepare(self.client.as_mut(), &mut self.cache, sql)?;
        let c = self.client()?;
        Ok(c.execute(&st, &refs(params)).map_err(error)? as usize)
    }
    pub(crate) fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let st = prepare(self.client.as_mut(), &mut self.cache, sql)?;
        let c = self.client()?;
        c.query(&st, &refs(params)).map_err(error)?.iter().map(row).collect()
    }
    /// Begins a transaction holding the advisory lock `key` (waiting at most the lock timeout).
    pub(crate) fn begin_locked(&mut self, key: i64) -> Result<Tx<'_>> {
        let timeout = self.lock_timeout.as_millis().max(1);
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("connection closed".into()))?;
        let mut tx = client.transaction().map_err(error)?;
        // One round trip for both (the key is a constant of ours, not input).
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {timeout}; SELECT pg_advisory_xact_lock({key})"
        ))
        .map_err(error)?;
        Ok(Tx {
            tx,
            cache: &mut self.cache,
        })
    }
    /// A write transaction: every registry write holds the store's one write lock.
    pub(crate) fn begin_write(&mut self) -> Result<Tx<'_>> {
        self.begin_locked(WRITE_LOCK)
    }
}

/// A transaction on one connection, with that connection's statement cache.
pub(crate) struct Tx<'c> {
    tx: postgres::Transaction<'c>,
    cache: &'c mut HashMap<String, Statement>,
}

impl Tx<'_> {
    pub(crate) fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize> {
        let st = prepare_in(&mut self.tx, self.cache, sql)?;
        Ok(self.tx.execute(&st, &refs(params)).map_err(error)? as usize)
    }
    pub(crate) fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let st = prepare_in(&mut self.tx, self.cache, sql)?;
        self.tx
            .query(&st, &refs(params))
            .map_err(error)?
            .iter()
            .map(row)
            .collect()
    }
    pub(crate) fn batch(&mut self, sql: &str) -> Result<()> {
        self.tx.batch_execute(sql).map_err(error)
    }
    pub(crate) fn commit(self) -> Result<()> {
        self.tx.commit().map_err(error)
    }
}

/// Prepared statements are cached per connection by their SQL text; the cache is bounded
/// (list queries are built from filters, so their texts vary).
const CACHE_MAX: usize = 512;

fn prepare(client: Option<&mut Client>, cache: &mut HashMap<String, Statement>, sql: &str) -> Result<Statement> {
    if let Some(st) = cache.get(sql) {
        return Ok(st.clone());
    }
    let client = client.ok_or_else(|| StoreError::Unavailable("connection closed".into()))?;
    let st = client.prepare(&placeholders(sql)).map_err(error)?;
    remember(cache, sql, &st);
    Ok(st)
}

fn prepare_in(
    tx: &mut postgres::Transaction<'_>,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement> {
    if let Some(st) = cache.get(sql) {
        return Ok(st.clone());
    }
    let st = tx.prepare(&placeholders(sql)).map_err(error)?;
    remember(cache, sql, &st);
    Ok(st)
}

fn remember(cache: &mut HashMap<String, Statement>, sql: &str, st: &Statement) {
    if cache.len() >= CACHE_MAX {
        cache.clear();
    }
    cache.insert(sql.to_string(), st.clone());
}

/// `?N` → `$N` outside quoted text and identifiers.
pub(crate) fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for ch in sql.chars() {
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None if ch == '\'' || ch == '"' => quote = Some(ch),
            None if ch == '?' => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(ch);
    }
    out
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value {
    /// Sends the value as the type the server inferred for its parameter.
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::TEXT) => i.to_string().to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s), &Type::JSONB) => {
                out.extend_from_slice(&[1]);
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            (Value::Text(s), &Type::JSON) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            // SQLite keeps whatever it was given: text in a BLOB column, bytes in a TEXT one.
            (Value::Text(s), &Type::BYTEA) => s.as_bytes().to_sql(ty, out),
            (Value::Blob(b), &Type::TEXT) => std::str::from_utf8(b)?.to_sql(ty, out),
            (Value::Text(s), _) => s.as_str().to_sql(ty, out),
            (v, ty) => Err(format!("cannot send {v:?} as {ty}").into()),
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    postgres::types::to_sql_checked!();
}

fn row(r: &postgres::Row) -> Result<Row> {
    let mut vals = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let t = col.type_();
        let v = match *t {
            Type::INT8 => r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int)),
            Type::INT4 => r.try_get::<_, Option<i32>>(i).map(|v| v.map(|v| Value::Int(v.into()))),
            Type::INT2 => r.try_get::<_, Option<i16>>(i).map(|v| v.map(|v| Value::Int(v.into()))),
            Type::BOOL => r.try_get::<_, Option<bool>>(i).map(|v| v.map(|v| Value::Int(v.into()))),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i).map(|v| v.map(Value::Real)),
            Type::FLOAT4 => r.try_get::<_, Option<f32>>(i).map(|v| v.map(|v| Value::Real(v.into()))),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map(Value::Blob)),
            _ => r.try_get::<_, Option<String>>(i).map(|v| v.map(Value::Text)),
        }
        .map_err(|e| StoreError::Database(format!("column {i} ({t}): {e}")))?;
        vals.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(vals))
}

/// Maps a `postgres` error: a unique violation is a conflict (the caller names it); a server
/// that cannot be reached, is shutting down or starting, refuses connections, or a lock not
/// granted in time, is unavailable; anything else is a database error.
pub(crate) fn error(e: postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(e.to_string());
    }
    // The server's own words (the error's display is only "db error").
    let said = match e.as_db_error() {
        Some(d) => d.to_string(),
        None => match std::error::Error::source(&e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    };
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            let constraint = e
                .as_db_error()
                .and_then(|d| d.constraint())
                .unwrap_or_default()
                .to_string();
            StoreError::Conflict(format!("unique constraint {constraint}"))
        }
        Some(c)
            if c.code().starts_with("08")
                || c.code().starts_with("57P")
                || c.code().starts_with("53")
                || *c == SqlState::LOCK_NOT_AVAILABLE
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            StoreError::Unavailable(said)
        }
        Some(_) => StoreError::Database(said),
        // No SQL state: the connection or the socket failed.
        None => StoreError::Unavailable(said),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        assert_eq!(
            placeholders("SELECT '?1', \"a?\" FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT '?1', \"a?\" FROM t WHERE a = $1 AND b = $12"
        );
        assert_eq!(
            placeholders("json_extract(c, '$.\"' || k || '\"') = ?2"),
            "json_extract(c, '$.\"' || k || '\"') = $2"
        );
    }
}
