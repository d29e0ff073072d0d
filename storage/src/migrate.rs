//! `store migrate`: copies everything one store holds into another, empty, one (in practice a
//! stopped embedded deployment's SQLite file into a PostgreSQL database): the registry with
//! every secret, certificates, settings (the token-signing key), retained messages, persistent
//! sessions with their queues, the outbox, and the message history, streamed in pages.
//!
//! A target that holds data is refused, unless it is the remains of a copy that did not finish
//! (marked by the `store_migration` setting, written first and cleared last): then it is
//! emptied and the copy starts over. Row counts are compared table by table at the end.

use crate::db::{Db, Row, Value};
use crate::{Result, Store, StoreError};

/// A table to copy: its columns (in an order both schemas share), how its rows are paged on
/// the source, and whether PostgreSQL's identity sequence must follow the copied ids.
struct Table {
    name: &'static str,
    columns: &'static str,
    /// Paged by this integer column (`rowid`, or an integer key); `None`: by offset in
    /// primary-key order.
    key: Option<&'static str>,
    order: &'static str,
    identity: Option<&'static str>,
}

/// Every table, parents before children.
const TABLES: &[Table] = &[
    Table {
        name: "settings",
        columns: "key, value",
        key: None,
        order: "key",
        identity: None,
    },
    Table {
        name: "users",
        columns: "id, first_name, last_name, email, username, secret, secret_epoch, tags, metadata, profile_picture, role, status, created_at, updated_at, updated_by",
        key: Some("rowid"),
        order: "rowid",
        identity: None,
    },
    Table {
        name: "domains",
        columns: "id, name, route, tags, metadata, status, created_by, created_at, updated_at, updated_by",
        key: Some("rowid"),
        order: "rowid",
        identity: None,
    },
    Table {
        name: "domain_members",
        columns: "domain_id, user_id, relation, created_at",
        key: None,
        order: "domain_id, user_id",
        identity: None,
    },
    // Groups refer to their parents: copied without them, then linked (below).
    Table {
        name: "groups",
        columns: "id, domain_id, NULL, name, description, tags, metadata, status, created_at, updated_at, updated_by",
        key: Some("rowid"),
        order: "rowid",
        identity: None,
    },
    Table {
        name: "group_members",
        columns: "group_id, user_id, actions, created_at",
        key: None,
        order: "group_id, user_id",
        identity: None,
    },
    Table {
        name: "clients",
        columns: "id, domain_id, name, identity, secret, tags, metadata, status, created_at, updated_at, updated_by, connected_at, disconnected_at, remote_addr, protocol",
        key: Some("rowid"),
        order: "rowid",
        identity: None,
    },
    Table {
        name: "channels",
        columns: "id, domain_id, name, parent_group_id, tags, metadata, status, created_at, updated_at, updated_by, description",
        key: Some("rowid"),
        order: "rowid",
        identity: None,
    },
    Table {
        name: "connections",
        columns: "domain_id, client_id, channel_id, type, created_at",
        key: None,
        order: "domain_id, client_id, channel_id, type",
        identity: None,
    },
    Table {
        name: "certs",
        columns: "serial, domain_id, client_id, expire, revoked_at, created_at, client_created_at",
        key: None,
        order: "serial",
        identity: None,
    },
    Table {
        name: "retained",
        columns: "topic, payload, qos, props, expires_at_ms",
        key: None,
        order: "topic",
        identity: None,
    },
    Table {
        name: "session_records",
        columns: "key, domain_id, client_id, expiry_s, disconnected_at_ms, state, inbound, node_id",
        key: None,
        order: "key",
        identity: None,
    },
    Table {
        name: "session_bodies",
        columns: "id, body, node_id",
        key: Some("id"),
        order: "id",
        identity: None,
    },
    Table {
        name: "session_queue",
        columns: "session, msg, meta, state, pkid, node_id",
        key: None,
        order: "session, msg",
        identity: None,
    },
    Table {
        name: "revoked_token_families",
        columns: "family, user_id, expires_at",
        key: None,
        order: "family",
        identity: None,
    },
    Table {
        name: "client_sessions",
        columns: "domain_id, client_id, mqtt_client_id, remote_addr, protocol, connected_at, node_id, claim",
        key: None,
        order: "domain_id, client_id, mqtt_client_id",
        identity: None,
    },
    Table {
        name: "outbox",
        columns: "seq, kind, payload, at",
        key: Some("seq"),
        order: "seq",
        identity: Some("seq"),
    },
    Table {
        name: "messages",
        columns: "id, domain_id, channel, subtopic, publisher, protocol, name, unit, time, update_time, value, string_value, bool_value, data_value, sum, format, payload",
        key: Some("id"),
        order: "id",
        identity: Some("id"),
    },
];

/// The setting that marks a copy in progress on the target.
const MARKER: &str = "store_migration";

/// Rows read from the source per page.
const PAGE: i64 = 5_000;

/// How far a copy is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub table: &'static str,
    pub copied: u64,
    pub total: u64,
}

/// What a finished copy moved: rows per table (the same on both sides).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
}

impl Copied {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// Rows of `table` in `s`.
fn count(s: &Store, table: &str) -> Result<u64> {
    let n: i64 = s
        .conn()?
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), &[], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// `INSERT INTO table (columns) VALUES (…), (…)` for `rows` rows of `width` values.
fn insert_sql(table: &str, columns: &str, width: usize, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", r * width + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// The target's column names for `t` (the source may select an expression, such as `NULL`
/// for a group's parent, in a column's place).
fn target_columns(t: &Table) -> String {
    if t.name == "groups" {
        "id, domain_id, parent_id, name, description, tags, metadata, status, created_at, updated_at, updated_by".into()
    } else {
        t.columns.into()
    }
}

/// Inserts `rows` into `table`, in statements of at most ~30,000 parameters (under both
/// databases' limits) and 1,000 rows.
pub(crate) fn insert_rows(tx: &impl Db, table: &str, columns: &str, rows: &[Vec<Value>]) -> Result<()> {
    let Some(width) = rows.first().map(Vec::len) else {
        return Ok(());
    };
    let per = (30_000 / width.max(1)).clamp(1, 1_000);
    for chunk in rows.chunks(per) {
        let sql = insert_sql(table, columns, width, chunk.len());
        let params: Vec<Value> = chunk.iter().flatten().cloned().collect();
        tx.execute(&sql, &params)?;
    }
    Ok(())
}

impl Store {
    /// Whether any table holds a row (other than the schema's own bookkeeping).
    fn holds_data(&self) -> Result<bool> {
        for t in TABLES {
            let probe = if t.name == "settings" {
                // The health probe writes a setting on any store that served.
                format!("SELECT 1 FROM settings WHERE key <> 'health_probe' AND key <> '{MARKER}' LIMIT 1")
            } else {
                format!("SELECT 1 FROM {} LIMIT 1", t.name)
            };
            if self.conn()?.exists(&probe, &[])? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Empties every table (the remains of a copy that did not finish).
    fn empty_all(&self) -> Result<()> {
        self.write(|tx| {
            for t in TABLES.iter().rev() {
                tx.execute(&format!("DELETE FROM {}", t.name), &[])?;
            }
            Ok(())
        })
    }

    /// Copies everything `self` holds into `target` (see the module's documentation), calling
    /// `progress` as pages land. `self` must not be served meanwhile.
    pub fn copy_into(&self, target: &Store, mut progress: impl FnMut(&Progress)) -> Result<Copied> {
        let marker: Option<String> = target.setting(MARKER)?;
        let unfinished = marker.as_deref().is_some_and(|m| m.starts_with("in progress"));
        if target.holds_data()? {
            if !unfinished {
                return Err(StoreError::Conflict(
                    "the target store is not empty; give an empty database (a failed copy is resumed by starting over)"
                        .into(),
                ));
            }
            target.empty_all()?;
        }
        target.set_setting(MARKER, &format!("in progress since {}", crate::now_micros()))?;
        let mut copied = Copied::default();
        let mut expected = Vec::new();
        for t in TABLES {
            let mut total = count(self, t.name)?;
            if t.name == "settings" && self.setting(MARKER)?.is_some() {
                // A store that was itself a copy's target: its marker is not copied.
                total -= 1;
            }
            let n = self.copy_table(target, t, total, &mut progress)?;
            copied.tables.push((t.name, n));
            expected.push(total);
        }
        // Groups' parents, now that every group exists.
        let parents: Vec<(String, String)> = self.conn()?.query_map(
            "SELECT id, parent_id FROM groups WHERE parent_id IS NOT NULL",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        target.write(|tx| {
            for (id, parent) in &parents {
                tx.execute(
                    "UPDATE groups SET parent_id = ?2 WHERE id = ?1",
                    &crate::db::params![id, parent],
                )?;
            }
            Ok(())
        })?;
        // PostgreSQL's identity sequences continue after the copied ids.
        if target.backend() == "postgres" {
            target.write(|tx| {
                for t in TABLES {
                    if let Some(col) = t.identity {
                        tx.rows(
                            &format!(
                                "SELECT setval(pg_get_serial_sequence('{0}', '{col}'), GREATEST((SELECT MAX({col}) FROM {0}), 1))",
                                t.name
                            ),
                            &[],
                        )?;
                    }
                }
                Ok(())
            })?;
        }
        for ((table, n), source) in copied.tables.iter().zip(expected) {
            let mut there = count(target, table)?;
            if *table == "settings" {
                // The marker is the target's own.
                there -= 1;
            }
            if there != source || *n != source {
                return Err(StoreError::Corrupt(format!(
                    "table {table}: {source} rows in the source, {n} copied, {there} in the target"
                )));
            }
        }
        target.set_setting(MARKER, &format!("done at {}", crate::now_micros()))?;
        Ok(copied)
    }

    /// Copies one table page by page (each page in its own transaction); returns the rows
    /// copied.
    fn copy_table(&self, target: &Store, t: &Table, total: u64, progress: &mut impl FnMut(&Progress)) -> Result<u64> {
        let columns = target_columns(t);
        let (mut done, mut read) = (0u64, 0u64);
        let mut after = i64::MIN;
        loop {
            let rows: Vec<Row> = match t.key {
                Some(key) => self.conn()?.rows(
                    &format!(
                        "SELECT {key}, {} FROM {} WHERE {key} > ?1 ORDER BY {key} LIMIT {PAGE}",
                        t.columns, t.name
                    ),
                    &[Value::Int(after)],
                )?,
                None => self.conn()?.rows(
                    &format!(
                        "SELECT 0, {} FROM {} ORDER BY {} LIMIT {PAGE} OFFSET {read}",
                        t.columns, t.name, t.order
                    ),
                    &[],
                )?,
            };
            let Some(last) = rows.last() else { break };
            after = last.get::<i64>(0)?;
            let page = rows.len() as u64;
            read += page;
            let mut values: Vec<Vec<Value>> = rows.into_iter().map(|r| r.0.into_iter().skip(1).collect()).collect();
            if t.name == "settings" {
                values.retain(|v| !matches!(v.first(), Some(Value::Text(k)) if k == MARKER));
            }
            let n = values.len() as u64;
            target.write(|tx| insert_rows(tx, t.name, &columns, &values))?;
            done += n;
            progress(&Progress {
                table: t.name,
                copied: done,
                total,
            });
            if page < PAGE as u64 && t.key.is_none() {
                break;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JsonText, NewChannel, NewClient, NewGroup, Status};

    /// A source with a row in every table: a user, a domain, a group under a group, a client,
    /// a channel, their connection, a certificate, a retained message, a session with a queued
    /// message, a revoked token family, an outbox entry and messages.
    fn filled() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("dir");
        let s = Store::open(&dir.path().join("src.db"), &Default::default()).expect("open");
        crate::testutil::user(&s, "u");
        s.set_setting("jwt_secret", "k").expect("setting");
        crate::testutil::domain(&s, "d", "u");
        let group = |id: &str, parent: Option<&str>| NewGroup {
            id: id.into(),
            parent_id: parent.map(String::from),
            name: id.into(),
            description: String::new(),
            tags: JsonText::empty_array(),
            metadata: JsonText::empty_object(),
            status: Status::Enabled,
        };
        s.create_group("d", group("g1", None)).expect("g1");
        s.create_group("d", group("g2", Some("g1"))).expect("g2");
        s.add_group_member("d", "g2", "u", &JsonText::empty_array())
            .expect("member");
        s.create_clients(
            "d",
            &[NewClient {
                id: "c".into(),
                name: "c".into(),
                identity: String::new(),
                secret: "sec".into(),
                tags: JsonText::empty_array(),
                metadata: JsonText::empty_object(),
                status: Status::Enabled,
            }],
        )
        .expect("client");
        s.create_channels(
            "d",
            &[NewChannel {
                id: "h".into(),
                name: "h".into(),
                description: String::new(),
                parent_group_id: Some("g2".into()),
                tags: JsonText::empty_array(),
                metadata: JsonText::empty_object(),
                status: Status::Enabled,
            }],
        )
        .expect("channel");
        s.connect("d", &["c".into()], &["h".into()], &crate::ConnType::BOTH)
            .expect("connect");
        s.insert_cert(&crate::CertRecord {
            serial: "01".into(),
            domain_id: "d".into(),
            client_id: "c".into(),
            expire: 9,
            revoked_at: None,
        })
        .expect("cert");
        s.retained_apply(&[(
            "t".into(),
            Some(crate::RetainedRow {
                topic: "t".into(),
                payload: b"p".to_vec(),
                qos: 1,
                props: vec![],
                expires_at_ms: 0,
            }),
        )])
        .expect("retained");
        s.sessions_apply(&[
            crate::SessionWrite::Put(crate::SessionRow {
                key: "k".into(),
                owner: Some(("d".into(), "c".into())),
                expiry_s: 60,
                disconnected_at_ms: Some(5),
                state: vec![1, 2],
                inbound: vec![],
            }),
            crate::SessionWrite::Message {
                id: 7,
                body: b"body".to_vec(),
                targets: vec![("k".into(), vec![9])],
            },
        ])
        .expect("session");
        s.revoke_token_family("u", "fam", 100, 1).expect("family");
        s.apply_presence(&[crate::PresenceEvent {
            domain_id: "d".into(),
            client_id: "c".into(),
            mqtt_client_id: "m".into(),
            remote_addr: "127.0.0.1:1".into(),
            protocol: "mqtt".into(),
            at: 3,
            connected: true,
            claim: 0,
        }])
        .expect("presence");
        let msgs: Vec<crate::NewMessage> = (0..12_345)
            .map(|i| crate::NewMessage {
                domain_id: "d".into(),
                channel: "h".into(),
                publisher: "c".into(),
                protocol: "mqtt".into(),
                name: format!("n{}", i % 3),
                time: 1000.0 + i as f64,
                value: Some(i as f64 * 0.5),
                payload: Some(vec![i as u8]),
                format: "senml",
                ..Default::default()
            })
            .collect();
        s.insert_messages(&msgs).expect("messages");
        (dir, s)
    }

    #[test]
    fn everything_is_copied_counted_and_a_full_target_refused() {
        let (_src_dir, src) = filled();
        let (_held, dst) = crate::testutil::store();
        let mut seen = Vec::new();
        let copied = src.copy_into(&dst, |p| seen.push(p.clone())).expect("copy");
        let rows: std::collections::HashMap<&str, u64> = copied.tables.iter().cloned().collect();
        for t in TABLES {
            assert!(rows[t.name] > 0, "{} copied", t.name);
        }
        assert_eq!(rows["messages"], 12_345);
        assert!(seen
            .iter()
            .any(|p| p.table == "messages" && p.copied == 12_345 && p.total == 12_345));
        // What the target answers is what the source answers.
        assert_eq!(dst.setting("jwt_secret").expect("s").as_deref(), Some("k"));
        assert_eq!(dst.group("d", "g2").expect("g2").parent_id.as_deref(), Some("g1"));
        let auth = dst.client_by_secret("d", "sec").expect("q").expect("client");
        assert_eq!(auth.client_id, "c");
        let q = crate::MessageQuery {
            limit: 5,
            ..Default::default()
        };
        assert_eq!(
            dst.read_messages("h", &q).expect("dst"),
            src.read_messages("h", &q).expect("src")
        );
        let snap = dst.sessions_load().expect("sessions");
        assert_eq!((snap.sessions.len(), snap.queued.len(), snap.max_msg), (1, 1, 7));
        assert!(dst.token_family_revoked("fam").expect("family"));
        // New rows get fresh ids after the copied ones.
        dst.insert_messages(&[crate::NewMessage {
            domain_id: "d".into(),
            channel: "h".into(),
            time: 1.0,
            ..Default::default()
        }])
        .expect("a new message");
        // A target with data is refused.
        match src.copy_into(&dst, |_| {}) {
            Err(StoreError::Conflict(m)) => assert!(m.contains("not empty"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_copy_that_did_not_finish_starts_over() {
        let (_src_dir, src) = filled();
        let (_held, dst) = crate::testutil::store();
        // The remains of an interrupted copy: the marker and part of the data.
        dst.set_setting(MARKER, "in progress since 1").expect("marker");
        crate::testutil::user(&dst, "u");
        let copied = src.copy_into(&dst, |_| {}).expect("copy");
        assert_eq!(copied.tables.iter().find(|t| t.0 == "users").map(|t| t.1), Some(1));
        assert!(dst.setting(MARKER).expect("m").is_some_and(|m| m.starts_with("done")));
    }
}
