//! Persistent MQTT sessions and the messages queued for them. The broker encodes a session's
//! state (subscriptions, will, protocol level) as an opaque blob and each queued message as a
//! body plus per-session metadata; this module only keeps them, in order, transactionally.
//! A message body is stored once and referenced by one queue row per session waiting for it;
//! the body goes when its last queue row does.
//!
//! In a cluster each node keeps its own sessions: every row names its node
//! ([`Store::node`]), and a node reads and writes its own rows only.

use crate::db::{params, Db, Tx};
use crate::{Result, Store};

/// A session record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub key: String,
    /// (domain id, client id) of a registry client; `None` for anonymous sessions.
    pub owner: Option<(String, String)>,
    pub expiry_s: u32,
    /// Unix milliseconds of the last disconnect; `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    pub state: Vec<u8>,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub inbound: Vec<u8>,
}

/// A message waiting for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedRow {
    pub session: String,
    pub msg: u64,
    pub meta: Vec<u8>,
    /// Delivery state as the broker defines it (0: not sent).
    pub state: u8,
    pub pkid: u16,
    pub body: Vec<u8>,
}

/// What `sessions_load` found.
#[derive(Debug, Default)]
pub struct SessionSnapshot {
    pub sessions: Vec<SessionRow>,
    /// Ordered by session, then message id.
    pub queued: Vec<QueuedRow>,
    /// The largest message id ever stored (ids are never reused).
    pub max_msg: u64,
    /// Sessions dropped at load because their client is gone or disabled.
    pub dropped: usize,
}

/// One write, applied in order with the others of its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionWrite {
    Put(SessionRow),
    /// Replaces a session's inbound QoS 2 state.
    Inbound {
        key: String,
        inbound: Vec<u8>,
    },
    /// The session and everything queued for it.
    Delete(String),
    /// A message body and the sessions it is queued for (session key, metadata).
    Message {
        id: u64,
        body: Vec<u8>,
        targets: Vec<(String, Vec<u8>)>,
    },
    /// A delivery's state changed (sent with a packet id, released).
    Mark {
        key: String,
        msg: u64,
        state: u8,
        pkid: u16,
    },
    /// Delivered and acknowledged, or dropped: the queue row goes.
    Ack {
        key: String,
        msg: u64,
    },
}

impl Store {
    /// Loads every session and its queue, after removing the sessions of clients that were
    /// deleted or disabled (or whose domain was) and bodies nothing refers to.
    pub fn sessions_load(&self) -> Result<SessionSnapshot> {
        let node = self.node();
        let dropped = self.write(|tx| {
            let gone: Vec<String> = tx.query_map(
                "SELECT s.key FROM session_records s WHERE s.node_id = ?1 AND s.domain_id IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM clients c JOIN domains d ON d.id = c.domain_id
                    WHERE c.domain_id = s.domain_id AND c.id = s.client_id
                      AND c.status = 'enabled' AND d.status = 'enabled')",
                &params![node],
                |r| r.get(0),
            )?;
            for k in &gone {
                delete_session(tx, node, k)?;
            }
            tx.execute(
                "DELETE FROM session_bodies WHERE node_id = ?1 AND NOT EXISTS
                 (SELECT 1 FROM session_queue q WHERE q.node_id = ?1 AND q.msg = session_bodies.id)",
                &params![node],
            )?;
            Ok(gone.len())
        })?;
        let c = self.conn()?;
        let sessions = c.query_map(
            "SELECT key, domain_id, client_id, expiry_s, disconnected_at_ms, state, inbound FROM session_records
             WHERE node_id = ?1 ORDER BY key",
            &params![node],
            |r| {
                let d: Option<String> = r.get(1)?;
                let cl: Option<String> = r.get(2)?;
                Ok(SessionRow {
                    key: r.get(0)?,
                    owner: d.zip(cl),
                    expiry_s: r.get::<i64>(3)?.clamp(0, u32::MAX as i64) as u32,
                    disconnected_at_ms: r.get::<Option<i64>>(4)?.map(|v| v.max(0) as u64),
                    state: r.get(5)?,
                    inbound: r.get(6)?,
                })
            },
        )?;
        let queued = c.query_map(
            "SELECT q.session, q.msg, q.meta, q.state, q.pkid, b.body FROM session_queue q
             JOIN session_bodies b ON b.node_id = q.node_id AND b.id = q.msg
             WHERE q.node_id = ?1 ORDER BY q.session, q.msg",
            &params![node],
            |r| {
                Ok(QueuedRow {
                    session: r.get(0)?,
                    msg: r.get::<i64>(1)?.max(0) as u64,
                    meta: r.get(2)?,
                    state: r.get::<i64>(3)?.clamp(0, 255) as u8,
                    pkid: r.get::<i64>(4)?.clamp(0, 65_535) as u16,
                    body: r.get(5)?,
                })
            },
        )?;
        let max_body: Option<i64> = c.query_row(
            "SELECT MAX(id) FROM session_bodies WHERE node_id = ?1",
            &params![node],
            |r| r.get(0),
        )?;
        let high: Option<i64> = c.query_opt(
            "SELECT CAST(value AS BIGINT) FROM settings WHERE key = ?1",
            &params![high_key(node)],
            |r| r.get(0),
        )?;
        let max_msg = [max_body, high].into_iter().flatten().max().unwrap_or(0).max(0) as u64;
        Ok(SessionSnapshot {
            sessions,
            queued,
            max_msg,
            dropped,
        })
    }

    /// Applies the writes in order, in one transaction.
    pub fn sessions_apply(&self, ops: &[SessionWrite]) -> Result<()> {
        let node = self.node();
        self.write(|tx| {
            let mut high = 0u64;
            for op in ops {
                match op {
                    SessionWrite::Put(s) => {
                        let (d, c) = match &s.owner {
                            Some((d, c)) => (Some(d.as_str()), Some(c.as_str())),
                            None => (None, None),
                        };
                        tx.execute("INSERT INTO session_records(key, domain_id, client_id, expiry_s, disconnected_at_ms, state, inbound, node_id)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                             ON CONFLICT(node_id, key) DO UPDATE SET domain_id = excluded.domain_id,
                               client_id = excluded.client_id, expiry_s = excluded.expiry_s,
                               disconnected_at_ms = excluded.disconnected_at_ms, state = excluded.state,
                               inbound = excluded.inbound", &params![
                            s.key,
                            d,
                            c,
                            s.expiry_s as i64,
                            s.disconnected_at_ms.map(|v| v as i64),
                            s.state,
                            s.inbound,
                            node
                        ])?;
                    }
                    SessionWrite::Inbound { key, inbound } => {
                        tx.execute(
                            "UPDATE session_records SET inbound = ?2 WHERE node_id = ?3 AND key = ?1",
                            &params![key, inbound, node],
                        )?;
                    }
                    SessionWrite::Delete(key) => delete_session(tx, node, key)?,
                    SessionWrite::Message { id, body, targets } => {
                        high = high.max(*id);
                        // Only for sessions that exist (one may have ended meanwhile).
                        let mut n = 0;
                        for (key, meta) in targets {
                            n += tx
                                .execute("INSERT INTO session_queue(session, msg, meta, node_id)
                                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM session_records WHERE node_id = ?4 AND key = ?1)
                                     ON CONFLICT DO NOTHING", &params![key, *id as i64, meta, node])?;
                        }
                        if n > 0 {
                            tx.execute(
                                "INSERT INTO session_bodies(id, body, node_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                                &params![*id as i64, body, node],
                            )?;
                        }
                    }
                    SessionWrite::Mark { key, msg, state, pkid } => {
                        tx.execute("UPDATE session_queue SET state = ?3, pkid = ?4 WHERE node_id = ?5 AND session = ?1 AND msg = ?2", &params![key, *msg as i64, *state as i64, *pkid as i64, node])?;
                    }
                    SessionWrite::Ack { key, msg } => {
                        let n = tx.execute(
                            "DELETE FROM session_queue WHERE node_id = ?3 AND session = ?1 AND msg = ?2",
                            &params![key, *msg as i64, node],
                        )?;
                        if n > 0 {
                            gc_body(tx, node, *msg)?;
                        }
                    }
                }
            }
            if high > 0 {
                // Message ids are never reused, even when every body is gone.
                let greater = tx
                    .dialect()
                    .greatest("CAST(settings.value AS BIGINT)", "CAST(excluded.value AS BIGINT)");
                tx.execute(
                    &format!(
                        "INSERT INTO settings(key, value) VALUES (?2, ?1)
                         ON CONFLICT(key) DO UPDATE SET value = CAST({greater} AS TEXT)"
                    ),
                    &params![high.to_string(), high_key(node)],
                )?;
            }
            Ok(())
        })
    }

    /// Sessions kept and messages queued (for metrics and benchmarks).
    pub fn sessions_counts(&self) -> Result<(u64, u64)> {
        let c = self.conn()?;
        let s: i64 = c.query_row("SELECT COUNT(*) FROM session_records", &[], |r| r.get(0))?;
        let q: i64 = c.query_row("SELECT COUNT(*) FROM session_queue", &[], |r| r.get(0))?;
        Ok((s as u64, q as u64))
    }
}

/// The setting that keeps a node's highest message id (ids are never reused).
fn high_key(node: &str) -> String {
    match node {
        "" => "session_msg_high".to_string(),
        n => format!("session_msg_high:{n}"),
    }
}

fn gc_body(tx: &Tx<'_>, node: &str, msg: u64) -> Result<()> {
    tx.execute(
        "DELETE FROM session_bodies WHERE node_id = ?2 AND id = ?1
           AND NOT EXISTS (SELECT 1 FROM session_queue WHERE node_id = ?2 AND msg = ?1)",
        &params![msg as i64, node],
    )?;
    Ok(())
}

fn delete_session(tx: &Tx<'_>, node: &str, key: &str) -> Result<()> {
    let msgs: Vec<i64> = tx.query_map(
        "SELECT msg FROM session_queue WHERE node_id = ?2 AND session = ?1",
        &params![key, node],
        |r| r.get(0),
    )?;
    tx.execute(
        "DELETE FROM session_queue WHERE node_id = ?2 AND session = ?1",
        &params![key, node],
    )?;
    for m in msgs {
        gc_body(tx, node, m as u64)?;
    }
    tx.execute(
        "DELETE FROM session_records WHERE node_id = ?2 AND key = ?1",
        &params![key, node],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(key: &str, owner: Option<(&str, &str)>) -> SessionRow {
        SessionRow {
            key: key.into(),
            owner: owner.map(|(d, c)| (d.into(), c.into())),
            expiry_s: 3600,
            disconnected_at_ms: Some(5),
            state: vec![1, 2, 3],
            inbound: vec![],
        }
    }

    #[test]
    fn queue_in_order_acks_remove_rows_and_bodies_and_ids_are_not_reused() {
        let (_d, s) = crate::testutil::store();
        s.sessions_apply(&[
            SessionWrite::Put(session("a", None)),
            SessionWrite::Put(session("b", None)),
            SessionWrite::Message {
                id: 7,
                body: b"seven".to_vec(),
                targets: vec![("a".into(), vec![1]), ("b".into(), vec![2]), ("gone".into(), vec![3])],
            },
            SessionWrite::Message {
                id: 9,
                body: b"nine".to_vec(),
                targets: vec![("a".into(), vec![1])],
            },
            SessionWrite::Mark {
                key: "a".into(),
                msg: 7,
                state: 2,
                pkid: 44,
            },
        ])
        .expect("apply");
        let snap = s.sessions_load().expect("load");
        assert_eq!(snap.sessions.len(), 2);
        let got: Vec<(&str, u64, u8, u16, &[u8])> = snap
            .queued
            .iter()
            .map(|q| (q.session.as_str(), q.msg, q.state, q.pkid, q.body.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 7, 2, 44, &b"seven"[..]),
                ("a", 9, 0, 0, &b"nine"[..]),
                ("b", 7, 0, 0, &b"seven"[..])
            ]
        );
        assert_eq!(snap.max_msg, 9);
        s.sessions_apply(&[
            SessionWrite::Ack {
                key: "a".into(),
                msg: 7,
            },
            SessionWrite::Ack {
                key: "a".into(),
                msg: 9,
            },
        ])
        .expect("ack");
        assert_eq!(s.sessions_counts().expect("counts"), (2, 1));
        s.sessions_apply(&[SessionWrite::Delete("b".into())]).expect("delete");
        let snap = s.sessions_load().expect("load");
        assert!(snap.queued.is_empty());
        assert_eq!(snap.sessions.len(), 1);
        assert_eq!(snap.max_msg, 9, "ids stay reserved after every body is gone");
        let c = s.conn().expect("conn");
        let bodies: i64 = c
            .query_row("SELECT COUNT(*) FROM session_bodies", &[], |r| r.get(0))
            .expect("count");
        assert_eq!(bodies, 0);
    }

    #[test]
    fn sessions_of_missing_clients_are_dropped_at_load() {
        let (_d, s) = crate::testutil::store();
        s.sessions_apply(&[
            SessionWrite::Put(session("x", Some(("no-domain", "no-client")))),
            SessionWrite::Put(session("anon", None)),
            SessionWrite::Message {
                id: 1,
                body: b"m".to_vec(),
                targets: vec![("x".into(), vec![])],
            },
        ])
        .expect("apply");
        let snap = s.sessions_load().expect("load");
        assert_eq!(snap.dropped, 1);
        assert_eq!(snap.sessions.len(), 1);
        assert_eq!(snap.sessions[0].key, "anon");
        assert!(snap.queued.is_empty());
    }
}
