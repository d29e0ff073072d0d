//! The message store: batched inserts, filtered reads, aggregation and retention.
//! A row is one normalized SenML record, one JSON document (`format = 'json'`, body in
//! `payload`) or one undecodable MQTT payload kept raw (`format = 'raw'`).

use crate::db::{params, Db, Row, ToValue, Value};
use crate::{Result, Store, StoreError};

/// A message row: what the pipeline writes and what the readers read back (one record for
/// both; its columns are [`COLUMNS`], in this order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewMessage {
    pub domain_id: String,
    pub channel: String,
    pub subtopic: String,
    pub publisher: String,
    pub protocol: String,
    pub name: String,
    pub unit: String,
    /// Unix seconds.
    pub time: f64,
    pub update_time: Option<f64>,
    pub value: Option<f64>,
    pub string_value: Option<String>,
    pub bool_value: Option<bool>,
    pub data_value: Option<String>,
    pub sum: Option<f64>,
    /// "senml", "json" or "raw".
    pub format: &'static str,
    pub payload: Option<Vec<u8>>,
}

/// A stored message as read back: the record written, read in the same columns.
pub type MessageRow = NewMessage;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    pub fn parse(s: &str) -> Option<Cmp> {
        Some(match s {
            "eq" => Cmp::Eq,
            "lt" => Cmp::Lt,
            "le" => Cmp::Le,
            "gt" => Cmp::Gt,
            "ge" => Cmp::Ge,
            _ => return None,
        })
    }
    fn op(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
}

/// A filter on the value fields.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueFilter {
    Number(f64, Cmp),
    Bool(bool),
    /// Substring of the string value.
    Text(String),
    Data(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    Min,
    Max,
    Avg,
    Sum,
    Count,
}

impl Aggregate {
    pub fn parse(s: &str) -> Option<Aggregate> {
        Some(match s.to_ascii_lowercase().as_str() {
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "avg" => Aggregate::Avg,
            "sum" => Aggregate::Sum,
            "count" => Aggregate::Count,
            _ => return None,
        })
    }
    fn sql(self) -> &'static str {
        match self {
            Aggregate::Min => "MIN(value)",
            Aggregate::Max => "MAX(value)",
            Aggregate::Avg => "AVG(value)",
            Aggregate::Sum => "SUM(value)",
            Aggregate::Count => "COUNT(*)",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct MessageQuery {
    pub offset: u64,
    pub limit: u64,
    pub subtopic: Option<String>,
    pub publisher: Option<String>,
    pub protocol: Option<String>,
    pub name: Option<String>,
    pub value: Option<ValueFilter>,
    /// from ≤ time < to (Unix seconds).
    pub from: Option<f64>,
    pub to: Option<f64>,
    /// Aggregation over buckets of `interval` seconds (needs from and to).
    pub aggregate: Option<(Aggregate, f64)>,
    pub ascending: bool,
}

/// The columns of a message row, in [`NewMessage`]'s field order: what [`row_values`]
/// writes and [`from_row`] reads.
const COLUMNS: &str = "domain_id, channel, subtopic, publisher, protocol, name, unit, time, update_time, value, string_value, bool_value, data_value, sum, format, payload";

/// The stored format text as the record's static name.
fn format_of(s: &str) -> Option<&'static str> {
    ["senml", "json", "raw"].into_iter().find(|f| *f == s)
}

fn from_row(r: &Row) -> Result<NewMessage> {
    Ok(NewMessage {
        domain_id: r.get(0)?,
        channel: r.get(1)?,
        subtopic: r.get(2)?,
        publisher: r.get(3)?,
        protocol: r.get(4)?,
        name: r.get(5)?,
        unit: r.get(6)?,
        time: r.get(7)?,
        update_time: r.get(8)?,
        value: r.get(9)?,
        string_value: r.get(10)?,
        bool_value: r.get(11)?,
        data_value: r.get(12)?,
        sum: r.get(13)?,
        format: r.parsed(14, format_of)?,
        payload: r.get(15)?,
    })
}

fn row_values(m: &NewMessage) -> Vec<Value> {
    params![
        m.domain_id,
        m.channel,
        m.subtopic,
        m.publisher,
        m.protocol,
        m.name,
        m.unit,
        m.time,
        m.update_time,
        m.value,
        m.string_value,
        m.bool_value,
        m.data_value,
        m.sum,
        m.format,
        m.payload
    ]
    .into()
}

/// A finite number as a SQL literal of type double precision on both backends.
fn real(v: f64) -> String {
    format!("CAST({v:?} AS DOUBLE PRECISION)")
}

impl Store {
    /// Inserts every message in one transaction.
    pub fn insert_messages(&self, batch: &[NewMessage]) -> Result<()> {
        self.insert_messages_with(batch, |_| {})
    }

    /// [`Store::insert_messages`], calling `between(i)` before row `i` inside the transaction
    /// (the pipeline's writer yields the CPU there).
    pub fn insert_messages_with(&self, batch: &[NewMessage], mut between: impl FnMut(usize)) -> Result<()> {
        // SQLite: one cached statement per row is its fastest path; PostgreSQL: multi-row
        // statements (one round trip per ~1,000 rows), measured faster than row by row.
        let multi_row = self.dialect() == crate::db::Dialect::Postgres;
        self.write(|tx| {
            if multi_row {
                let rows: Vec<Vec<Value>> = batch
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        between(i);
                        row_values(m)
                    })
                    .collect();
                return crate::migrate::insert_rows(tx, "messages", COLUMNS, &rows);
            }
            let sql = format!(
                "INSERT INTO messages ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            );
            for (i, m) in batch.iter().enumerate() {
                between(i);
                tx.execute(&sql, &row_values(m))?;
            }
            Ok(())
        })
    }

    /// Reads a channel's messages: (total matching, page). With aggregation, rows are
    /// buckets: `time` is the bucket start and `value` the aggregate.
    pub fn read_messages(&self, channel: &str, q: &MessageQuery) -> Result<(u64, Vec<MessageRow>)> {
        let mut f = crate::Filter::new(self.dialect());
        f.push("channel = ?", channel.to_string());
        if let Some(s) = &q.subtopic {
            f.push("subtopic = ?", s.clone());
        }
        if let Some(p) = &q.publisher {
            f.push("publisher = ?", p.clone());
        }
        if let Some(p) = &q.protocol {
            f.push("protocol = ?", p.clone());
        }
        if let Some(n) = &q.name {
            f.push("name = ?", n.clone());
        }
        match &q.value {
            Some(ValueFilter::Number(v, c)) => f.push(format!("value {} ?", c.op()), *v),
            Some(ValueFilter::Bool(b)) => f.push("bool_value = ?", *b as i64),
            Some(ValueFilter::Text(s)) => {
                let clause = f.dialect().contains("string_value", "?");
                f.push(clause, s.clone())
            }
            Some(ValueFilter::Data(s)) => f.push("data_value = ?", s.clone()),
            None => {}
        }
        if let Some(from) = q.from {
            f.push("time >= ?", from);
        }
        if let Some(to) = q.to {
            f.push("time < ?", to);
        }
        let w = f.where_sql();
        let dir = if q.ascending { "ASC" } else { "DESC" };
        let c = self.conn()?;
        if let Some((agg, interval)) = q.aggregate {
            let from = q.from.unwrap_or(0.0);
            if !(interval > 0.0 && interval.is_finite() && from.is_finite()) {
                return Err(StoreError::Invalid("interval must be positive".into()));
            }
            // Finite numbers, written as SQL literals of one floating-point type.
            let (from, interval) = (real(from), real(interval));
            let bucket = f.dialect().whole(&format!("(time - {from}) / {interval}"));
            let value_only = if agg == Aggregate::Count {
                ""
            } else {
                " AND value IS NOT NULL"
            };
            let total: i64 = c.query_row(
                &format!("SELECT COUNT(DISTINCT {bucket}) FROM messages{w}{value_only}"),
                f.values(),
                |r| r.get(0),
            )?;
            let sql = format!(
                "SELECT MAX(domain_id), ?{ch} AS channel, '' , '', '', COALESCE(?{nm}, ''), '', {from} + {bucket} * {interval} AS t, NULL, {}, NULL, NULL, NULL, NULL, 'senml', NULL
                 FROM messages{w}{value_only} GROUP BY {bucket} ORDER BY t {dir} LIMIT {} OFFSET {}",
                agg.sql(),
                q.limit,
                q.offset,
                ch = 1,
                nm = f.next_index(),
            );
            let mut params = f.values().to_vec();
            params.push(q.name.to_value());
            let rows = c.query_map(&sql, &params, from_row)?;
            return Ok((total as u64, rows));
        }
        let total: i64 = c.query_row(&format!("SELECT COUNT(*) FROM messages{w}"), f.values(), |r| r.get(0))?;
        let rows = c.query_map(
            &format!(
                "SELECT {COLUMNS} FROM messages{w} ORDER BY time {dir}, id {dir} LIMIT {} OFFSET {}",
                q.limit, q.offset
            ),
            f.values(),
            from_row,
        )?;
        Ok((total as u64, rows))
    }

    /// Deletes messages older than `before` (Unix seconds) and, per channel, all but the
    /// newest `max_per_channel`. Returns the number of rows removed.
    pub fn prune_messages(&self, before: Option<f64>, max_per_channel: Option<u64>) -> Result<u64> {
        self.write(|tx| {
            let mut n = 0;
            if let Some(b) = before {
                n += tx.execute("DELETE FROM messages WHERE time < ?1", &params![b])? as u64;
            }
            if let Some(max) = max_per_channel {
                n += tx.execute("DELETE FROM messages WHERE id IN (
                        SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY channel ORDER BY time DESC, id DESC) AS rn FROM messages) ranked
                        WHERE rn > ?1)", &params![max as i64])? as u64;
            }
            Ok(n)
        })
    }

    pub fn count_messages(&self) -> Result<u64> {
        let c = self.conn()?;
        Ok(c.query_row("SELECT COUNT(*) FROM messages", &[], |r| r.get::<i64>(0))? as u64)
    }
}
