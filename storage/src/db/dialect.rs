//! The SQL fragments SQLite and PostgreSQL spell differently, and the one rule each follows so
//! that both backends give the same answers:
//!
//! - Case-insensitive matching (usernames, e-mails, name filters) folds ASCII letters only:
//!   SQLite's `NOCASE` and `lower()`; on PostgreSQL `translate` over A–Z, whatever the
//!   server's locale.
//! - Text order (lists by name) is by code point: SQLite's `BINARY`; `COLLATE "C"` on
//!   PostgreSQL.
//! - A metadata filter matches rows whose JSON object has every top-level key of the filter
//!   with an equal value: scalars by JSON value (`1` equals `1.0`, the string `"1"` never
//!   equals the number `1`, `true` is not `1`); nested objects and arrays by their compact JSON
//!   text (as the API stores and sends it).
//! - A tag filter matches rows whose JSON array holds the tag as a string element.
//! - List ties break on insertion order: SQLite's `rowid`, PostgreSQL's `seq` identity column.
//! - Aggregation buckets count whole intervals from the start of the window (truncation).

/// Which SQL a statement is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

const UPPER: &str = "'ABCDEFGHIJKLMNOPQRSTUVWXYZ'";
const LOWER: &str = "'abcdefghijklmnopqrstuvwxyz'";

impl Dialect {
    /// `expr` with ASCII letters lower-cased.
    pub(crate) fn fold(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("lower({expr})"),
            Dialect::Postgres => format!("translate({expr}, {UPPER}, {LOWER})"),
        }
    }
    /// `a` equals `b` but for the case of ASCII letters (SQLite: uses a `NOCASE` index).
    pub(crate) fn eq_nocase(self, a: &str, b: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{a} = {b} COLLATE NOCASE"),
            Dialect::Postgres => format!("{} = {}", self.fold(a), self.fold(b)),
        }
    }
    /// `needle` occurs in `hay` (case-sensitive).
    pub(crate) fn contains(self, hay: &str, needle: &str) -> String {
        match self {
            Dialect::Sqlite => format!("instr({hay}, {needle}) > 0"),
            Dialect::Postgres => format!("strpos({hay}, {needle}) > 0"),
        }
    }
    /// `needle` occurs in `hay`, ASCII case folded.
    pub(crate) fn contains_nocase(self, hay: &str, needle: &str) -> String {
        self.contains(&self.fold(hay), &self.fold(needle))
    }
    /// The JSON object in `column` has every top-level key of the JSON object `param` with an
    /// equal value.
    pub(crate) fn json_has_all(self, column: &str, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!(
                "NOT EXISTS (SELECT 1 FROM json_each({param}) w
                 WHERE replace(json_type({column}, '$.\"' || w.key || '\"'), 'integer', 'real') IS NOT replace(w.type, 'integer', 'real')
                 OR json_extract({column}, '$.\"' || w.key || '\"') IS NOT w.value)"
            ),
            Dialect::Postgres => format!(
                "NOT EXISTS (SELECT 1 FROM jsonb_each(CAST(CAST({param} AS text) AS jsonb)) w
                 WHERE CASE WHEN jsonb_typeof(w.value) IN ('object', 'array')
                   THEN CAST(CAST({column} AS json) -> w.key AS text)
                     IS DISTINCT FROM CAST(CAST(CAST({param} AS text) AS json) -> w.key AS text)
                   ELSE (CAST({column} AS jsonb) -> w.key) IS DISTINCT FROM w.value END)"
            ),
        }
    }
    /// The JSON array in `column` holds `param` as a string element.
    pub(crate) fn json_array_has(self, column: &str, param: &str) -> String {
        match self {
            Dialect::Sqlite => {
                format!("EXISTS (SELECT 1 FROM json_each({column}) WHERE type = 'text' AND value = {param})")
            }
            Dialect::Postgres => {
                format!("CAST({column} AS jsonb) @> jsonb_build_array(CAST({param} AS text))")
            }
        }
    }
    /// A JSON array (as text, `[]` when empty) of one object per row of `from_where`, each
    /// with the keys and expressions of `fields`.
    pub(crate) fn json_objects(self, fields: &[(&str, &str)], from_where: &str) -> String {
        match self {
            Dialect::Sqlite => {
                let pairs: Vec<String> = fields.iter().map(|(k, e)| format!("'{k}', {e}")).collect();
                format!(
                    "(SELECT json_group_array(json_object({})) {from_where})",
                    pairs.join(", ")
                )
            }
            Dialect::Postgres => {
                let pairs: Vec<String> = fields.iter().map(|(k, e)| format!("'{k}', {e}")).collect();
                format!(
                    "COALESCE((SELECT CAST(json_agg(json_build_object({})) AS text) {from_where}), '[]')",
                    pairs.join(", ")
                )
            }
        }
    }
    /// The values of `expr` over a group, comma-separated.
    pub(crate) fn group_concat(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("group_concat({expr})"),
            Dialect::Postgres => format!("string_agg({expr}, ',')"),
        }
    }
    /// The greater of two non-NULL values.
    pub(crate) fn greatest(self, a: &str, b: &str) -> String {
        match self {
            Dialect::Sqlite => format!("MAX({a}, {b})"),
            Dialect::Postgres => format!("GREATEST({a}, {b})"),
        }
    }
    /// The whole number of `interval`s `expr` (a non-negative number) holds.
    pub(crate) fn whole(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("CAST({expr} AS INTEGER)"),
            Dialect::Postgres => format!("CAST(trunc({expr}) AS BIGINT)"),
        }
    }
    /// The insertion-order column of the table aliased `alias` (`"c."`, or `""`).
    pub(crate) fn rowid(self, alias: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{alias}rowid"),
            Dialect::Postgres => format!("{alias}seq"),
        }
    }
    /// The order a persistent session's queue is read in (the order it was written): on
    /// SQLite (one node, ids in write order) the message id; on PostgreSQL the `seq`
    /// identity column (ids of several nodes do not sort in time).
    pub(crate) fn queue_order(self, alias: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{alias}msg"),
            Dialect::Postgres => format!("{alias}seq"),
        }
    }
    /// `column` as an ORDER BY key with code-point text order.
    pub(crate) fn text_order(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => column.to_string(),
            Dialect::Postgres => format!("{column} COLLATE \"C\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_differ_only_where_the_databases_do() {
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            assert!(d.contains("a", "?1").contains("?1"));
            assert!(d.json_objects(&[("k", "s.k")], "FROM s").contains("'k', s.k"));
        }
        assert_eq!(
            Dialect::Sqlite.eq_nocase("u.email", "?1"),
            "u.email = ?1 COLLATE NOCASE"
        );
        assert!(Dialect::Postgres
            .eq_nocase("u.email", "?1")
            .starts_with("translate(u.email"));
        assert_eq!(Dialect::Postgres.rowid("c."), "c.seq");
        assert_eq!(Dialect::Sqlite.rowid(""), "rowid");
    }
}
