//! The SQLite backend of [`super::Db`]: cached statements on a rusqlite connection, values
//! converted both ways, errors mapped to [`StoreError`].

use super::{Row, Value};
use crate::{Result, StoreError};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode};

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

pub(crate) fn execute(c: &Connection, sql: &str, params: &[Value]) -> Result<usize> {
    let mut st = c.prepare_cached(sql).map_err(error)?;
    st.execute(rusqlite::params_from_iter(params.iter())).map_err(error)
}

pub(crate) fn rows(c: &Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let mut st = c.prepare_cached(sql).map_err(error)?;
    let n = st.column_count();
    let mut rows = st.query(rusqlite::params_from_iter(params.iter())).map_err(error)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(error)? {
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            vals.push(value(r.get_ref(i).map_err(error)?));
        }
        out.push(Row(vals));
    }
    Ok(out)
}

/// Maps a rusqlite error: a unique violation is a conflict (the caller names it), a database
/// that cannot be reached or written now (locked past the busy timeout, unreadable, full) is
/// unavailable, anything else is a database error.
pub(crate) fn error(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == ErrorCode::ConstraintViolation
            && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
        {
            return StoreError::Conflict(e.to_string());
        }
        if matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::ReadOnly
        ) {
            return StoreError::Unavailable(e.to_string());
        }
    }
    StoreError::Database(e.to_string())
}
