//! What clients, channels and groups share: the columns every registry record has, in one
//! order, to write a new record ([`insert`]) and to read one back ([`record!`]). Each record
//! adds its own columns after them.

use crate::db::{params, Db, Tx, Value};
use crate::{JsonText, Result, Status};

/// The shared columns of the table aliased `$a` (`"c."`, `"h."`, `"g."`), in the order
/// [`record!`] reads them; a record's own columns follow, from index [`OWN`].
macro_rules! shared_columns {
    ($a:literal) => {
        concat!(
            $a,
            "id, ",
            $a,
            "domain_id, ",
            $a,
            "name, ",
            $a,
            "tags, ",
            $a,
            "metadata, ",
            $a,
            "status, ",
            $a,
            "created_at, ",
            $a,
            "updated_at, ",
            $a,
            "updated_by"
        )
    };
}
pub(crate) use shared_columns;

/// The index of a record's first own column.
pub(crate) const OWN: usize = 9;

/// `$T { shared fields from row $r, $own fields }`: a record read from a row whose first
/// columns are [`shared_columns!`].
macro_rules! record {
    ($r:expr, $T:ident { $($field:ident: $value:expr),* $(,)? }) => {
        $T {
            id: $r.get(0)?,
            domain_id: $r.get(1)?,
            name: $r.get(2)?,
            tags: $r.get(3)?,
            metadata: $r.get(4)?,
            status: crate::status_from_sql(&$r.get::<String>(5)?),
            created_at: $r.get(6)?,
            updated_at: $r.get(7)?,
            updated_by: $r.get(8)?,
            $($field: $value),*
        }
    };
}
pub(crate) use record;

/// The shared fields of a new record.
pub(crate) struct Shared<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub tags: &'a JsonText,
    pub metadata: &'a JsonText,
    pub status: Status,
}

impl<'a> Shared<'a> {
    pub(crate) fn new(id: &'a str, name: &'a str, tags: &'a JsonText, metadata: &'a JsonText, status: Status) -> Self {
        Shared {
            id,
            name,
            tags,
            metadata,
            status,
        }
    }
}

/// Inserts a new record of `domain` into `table`, created at `now`: the shared columns, then
/// the record's own (column, value) pairs.
pub(crate) fn insert(
    tx: &Tx<'_>,
    table: &str,
    domain: &str,
    s: Shared<'_>,
    own: &[(&str, Value)],
    now: i64,
) -> Result<()> {
    let mut columns = String::from("id, domain_id, name, tags, metadata, status, created_at");
    let mut values = params![s.id, domain, s.name, s.tags, s.metadata, s.status.as_str(), now].to_vec();
    for (column, value) in own {
        columns.push_str(", ");
        columns.push_str(column);
        values.push(value.clone());
    }
    let marks: Vec<String> = (1..=values.len()).map(|i| format!("?{i}")).collect();
    tx.execute(
        &format!("INSERT INTO {table} ({columns}) VALUES ({})", marks.join(", ")),
        &values,
    )?;
    Ok(())
}
