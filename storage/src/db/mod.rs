//! The neutral layer between the store's SQL and its two backends. Every operation of the
//! store is one SQL text with `?N` placeholders, run through [`Db`] on SQLite (rusqlite) or on
//! PostgreSQL (the synchronous `postgres` crate, placeholders rewritten to `$N` once, at
//! prepare time). Parameters are [`Value`]s and rows are read as owned [`Row`]s, so the
//! store's code never names a backend. What the two SQL dialects spell differently is in
//! [`Dialect`].

mod dialect;
pub(crate) mod pg;
pub(crate) mod sqlite;

pub(crate) use dialect::Dialect;

use crate::{JsonText, Result, StoreError};

/// One SQL parameter or column value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A Rust value usable as a parameter.
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for u8 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for u16 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for JsonText {
    fn to_value(&self) -> Value {
        Value::Text(self.0.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// `params![a, b, …]`: the parameters of one statement, as `[Value; N]`.
macro_rules! params {
    () => { [] as [$crate::db::Value; 0] };
    ($($x:expr),+ $(,)?) => { [$($crate::db::ToValue::to_value(&$x)),+] };
}
pub(crate) use params;

/// A column value read back as a Rust value; `None` when the stored value has another type.
pub(crate) trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for u8 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u8::try_from(i).ok())
    }
}
impl FromValue for u16 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u16::try_from(i).ok())
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(*f),
            // An integral value stored in a REAL column of SQLite reads back as an integer.
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for JsonText {
    fn from_value(v: &Value) -> Option<Self> {
        String::from_value(v).map(JsonText)
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            Value::Text(s) => Some(s.clone().into_bytes()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result, owned (read whole from either backend).
#[derive(Debug, Default)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i` as `T`; a missing column or a value of another type is an error of the row.
    pub(crate) fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("no column {i}")))?;
        T::from_value(v)
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} holds {v:?}, not a {}", std::any::type_name::<T>())))
    }
    /// Column `i` as text read by `parse`; a value it does not know is an error of the row,
    /// not something to skip.
    pub(crate) fn parsed<T>(&self, i: usize, parse: impl Fn(&str) -> Option<T>) -> Result<T> {
        let s: String = self.get(i)?;
        parse(&s).ok_or_else(|| StoreError::Corrupt(format!("column {i}: unknown value {s:?}")))
    }
}

/// What both a pooled connection and a write transaction answer: statements by SQL text.
pub(crate) trait Db {
    fn dialect(&self) -> Dialect;
    /// Runs one statement; the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize>;
    /// Every row of a query.
    fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;

    /// Every row of a query, mapped.
    fn query_map<T>(&self, sql: &str, params: &[Value], f: impl FnMut(&Row) -> Result<T>) -> Result<Vec<T>> {
        self.rows(sql, params)?.iter().map(f).collect()
    }
    /// The first row of a query, mapped, if there is one.
    fn query_opt<T>(&self, sql: &str, params: &[Value], f: impl FnOnce(&Row) -> Result<T>) -> Result<Option<T>> {
        self.rows(sql, params)?.first().map(f).transpose()
    }
    /// The first row of a query that always answers one (an aggregate, say).
    fn query_row<T>(&self, sql: &str, params: &[Value], f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| StoreError::Corrupt("a query that answers one row answered none".into()))
    }
    /// Whether a query answers a row.
    fn exists(&self, sql: &str, params: &[Value]) -> Result<bool> {
        Ok(!self.rows(sql, params)?.is_empty())
    }
}

/// A pooled connection of either backend, for reads outside a write transaction.
pub(crate) enum Conn {
    Sqlite(r2d2::PooledConnection<r2d2_sqlite::SqliteConnectionManager>),
    Pg(Box<std::cell::RefCell<r2d2::PooledConnection<pg::Manager>>>),
}

impl Db for Conn {
    fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Pg(_) => Dialect::Postgres,
        }
    }
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        match self {
            Conn::Sqlite(c) => sqlite::execute(c, sql, params),
            Conn::Pg(c) => c.borrow_mut().execute(sql, params),
        }
    }
    fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            Conn::Sqlite(c) => sqlite::rows(c, sql, params),
            Conn::Pg(c) => c.borrow_mut().rows(sql, params),
        }
    }
}

/// A write transaction of either backend, holding the store's one write lock.
pub(crate) enum Tx<'c> {
    Sqlite(rusqlite::Transaction<'c>),
    Pg(std::cell::RefCell<pg::Tx<'c>>),
}

impl Db for Tx<'_> {
    fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Pg(_) => Dialect::Postgres,
        }
    }
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        match self {
            Tx::Sqlite(t) => sqlite::execute(t, sql, params),
            Tx::Pg(t) => t.borrow_mut().execute(sql, params),
        }
    }
    fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            Tx::Sqlite(t) => sqlite::rows(t, sql, params),
            Tx::Pg(t) => t.borrow_mut().rows(sql, params),
        }
    }
}

impl Tx<'_> {
    pub(crate) fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().map_err(sqlite::error),
            Tx::Pg(t) => t.into_inner().commit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_convert_each_kind() {
        let name = String::from("n");
        let none: Option<i64> = None;
        let p = params![name, 3i64, 1.5f64, true, none, JsonText("{}".into()), b"ab".to_vec()];
        assert_eq!(
            p.to_vec(),
            vec![
                Value::Text("n".into()),
                Value::Int(3),
                Value::Real(1.5),
                Value::Int(1),
                Value::Null,
                Value::Text("{}".into()),
                Value::Blob(b"ab".to_vec()),
            ]
        );
    }

    #[test]
    fn rows_read_back_by_type_and_refuse_other_types() {
        let r = Row(vec![
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
            Value::Int(300),
        ]);
        assert_eq!(r.get::<i64>(0).ok(), Some(7));
        assert_eq!(r.get::<f64>(0).ok(), Some(7.0));
        assert_eq!(r.get::<Option<String>>(1).ok(), Some(None));
        assert!(r.get::<String>(1).is_err(), "NULL is not a string");
        assert!(r.get::<i64>(2).is_err(), "text is not a number");
        assert!(r.get::<u8>(3).is_err(), "300 does not fit a u8");
        assert!(r.get::<i64>(9).is_err(), "no such column");
        assert!(r.parsed(2, |s| (s == "y").then_some(())).is_err());
    }
}
