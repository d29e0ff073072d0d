//! Persistent MQTT sessions and the messages queued for them. The broker encodes a session's
//! state (subscriptions, will, protocol level) as an opaque blob and each queued message as a
//! body plus per-session metadata; this module only keeps them, in order, transactionally.
//! A message body is stored once and referenced by one queue row per session waiting for it;
//! the body goes when its last queue row does.
//!
//! In a cluster every row names the node that holds the session ([`Store::node`]), and a
//! node reads and writes the rows it holds only. A session moves when its device connects to
//! another node: that node claims it (`session_owners`, the newest claim wins, see
//! `Store::claim_session`) and adopts its rows (`session_adopt`); from then on the writes of
//! the node that held it are refused, so a node that was paused cannot overwrite it.
//! Message ids carry their node's number in the top bits (`ID_BITS`): unique in the
//! cluster, so a queue can move without renumbering.

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

/// A session another node holds: (key, domain id of its client if any, state).
pub type HeldElsewhere = (String, Option<String>, Vec<u8>);

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

/// The low bits of a queued message id: the node's own counter; the bits above are the
/// node's number (`node_numbers`, 0 outside a cluster).
pub const ID_BITS: u32 = 43;

/// Tells the other nodes (once per batch) that session `key` is to be indexed again.
fn indexed(changes: &mut Vec<crate::Change>, key: &str) {
    let c = crate::Change::SessionIndexed { key: key.to_string() };
    if !changes.contains(&c) {
        changes.push(c);
    }
}

/// Whether `node` may write or delete session `key`'s record: no other node owns it. (The
/// other writes touch rows `node` holds only, and a node holds none of a session it lost.)
fn owned(tx: &Tx<'_>, key: &str, node: &str) -> Result<bool> {
    let other = tx.exists(
        "SELECT 1 FROM session_owners WHERE key = ?1 AND node_id <> ?2",
        &params![key, node],
    )?;
    Ok(!other)
}

/// This node's number, given at its first use of the table (under the write lock).
fn node_number(tx: &Tx<'_>, node: &str) -> Result<i64> {
    tx.execute(
        "INSERT INTO node_numbers (node_id, n)
         SELECT ?1, next FROM (SELECT COALESCE(MAX(n), 0) + 1 AS next FROM node_numbers) x
         WHERE NOT EXISTS (SELECT 1 FROM node_numbers WHERE node_id = ?1)",
        &params![node],
    )?;
    tx.query_row("SELECT n FROM node_numbers WHERE node_id = ?1", &params![node], |r| {
        r.get(0)
    })
}

impl Store {
    /// Loads every session and its queue, after removing the sessions of clients that were
    /// deleted or disabled (or whose domain was) and bodies nothing refers to.
    pub fn sessions_load(&self) -> Result<SessionSnapshot> {
        let node = self.node();
        let (dropped, number) = self.write(|tx| {
            let number = node_number(tx, node)?;
            let _ = self.number.set(number);
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
                 (SELECT 1 FROM session_queue q WHERE q.msg = session_bodies.id)",
                &params![node],
            )?;
            Ok((gone.len(), number))
        })?;
        let c = self.conn()?;
        let (sessions, queued) = read(&c, node, None)?;
        // This node's ids are in its number's range (moved-in entries keep theirs).
        let (lo, hi) = (number << ID_BITS, (number + 1) << ID_BITS);
        let max_body: Option<i64> = c.query_row(
            "SELECT MAX(id) FROM session_bodies WHERE node_id = ?1 AND id >= ?2 AND id < ?3",
            &params![node, lo, hi],
            |r| r.get(0),
        )?;
        let high: Option<i64> = c.query_opt(
            "SELECT CAST(value AS BIGINT) FROM settings WHERE key = ?1",
            &params![high_key(node)],
            |r| r.get(0),
        )?;
        let high = high.filter(|h| (lo..hi).contains(h));
        let max_msg = [max_body, high, Some(lo)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
            .max(0) as u64;
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
        let cluster = !node.is_empty();
        // This node's own ids (an imported message keeps the id its node gave it).
        let own = self
            .number
            .get()
            .map(|n| (n << ID_BITS) as u64..((n + 1) << ID_BITS) as u64);
        let mut fenced = 0u64;
        let r = self.write_announcing(|tx, changes| {
            let mut high = 0u64;
            for op in ops {
                match op {
                    SessionWrite::Put(s) => {
                        let (d, c) = match &s.owner {
                            Some((d, c)) => (Some(d.as_str()), Some(c.as_str())),
                            None => (None, None),
                        };
                        if !owned(tx, &s.key, node)? {
                            fenced += 1;
                            continue;
                        }
                        if cluster {
                            // The other nodes index its subscriptions: told when they may
                            // have changed.
                            let before: Option<Vec<u8>> = tx.query_opt(
                                "SELECT state FROM session_records WHERE node_id = ?1 AND key = ?2",
                                &params![node, s.key],
                                |r| r.get(0),
                            )?;
                            if before.as_ref() != Some(&s.state) {
                                indexed(changes, &s.key);
                            }
                        }
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
                    SessionWrite::Delete(key) => {
                        // A copy another node owns now is about to move there, not to go.
                        if !owned(tx, key, node)? {
                            fenced += 1;
                            continue;
                        }
                        delete_session(tx, node, key)?;
                        if cluster {
                            indexed(changes, key);
                        }
                        // Nothing left to fence (a new claim makes a new owner).
                        tx.execute(
                            "DELETE FROM session_owners WHERE key = ?1 AND node_id = ?2",
                            &params![key, node],
                        )?;
                    }
                    SessionWrite::Message { id, body, targets } => {
                        if own.as_ref().is_none_or(|r| r.contains(id)) {
                            high = high.max(*id);
                        }
                        // For the sessions that exist, on whichever node holds each (one may
                        // have ended meanwhile); written again for the same id: nothing.
                        let mut n = 0;
                        for (key, meta) in targets {
                            n += tx.execute(
                                "INSERT INTO session_queue(session, msg, meta, node_id)
                                 SELECT ?1, ?2, ?3, r.node_id FROM session_records r WHERE r.key = ?1
                                 ON CONFLICT DO NOTHING",
                                &params![key, *id as i64, meta],
                            )?;
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
                            gc_body(tx, *msg)?;
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
        });
        if r.is_ok() && fenced > 0 {
            self.fenced.fetch_add(fenced, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                writes = fenced,
                "session writes refused: another node owns these sessions now"
            );
        }
        r
    }

    /// Cluster mode: moves session `key` to this node when another node holds it and this
    /// node's claim on it is the newest (`claim_session`): its record, its queue (in order,
    /// in-flight states kept) and the bodies the queue needs; a stale copy here and copies
    /// elsewhere go. Returns the session as `sessions_load` would; `None` when no other node
    /// holds it or another node claimed it since.
    pub fn session_adopt(&self, key: &str) -> Result<Option<SessionSnapshot>> {
        let node = self.node();
        // Most connections have nothing to move: no write (and no write lock) for them.
        let elsewhere = self.conn()?.exists(
            "SELECT 1 FROM session_records WHERE key = ?1 AND node_id <> ?2",
            &params![key, node],
        )?;
        if !elsewhere {
            return Ok(None);
        }
        let moved = self.write_announcing(|tx, changes| {
            let mine = tx.exists(
                "SELECT 1 FROM session_owners WHERE key = ?1 AND node_id = ?2",
                &params![key, node],
            )?;
            if !mine {
                return Ok(false);
            }
            // The copy to move: the most recently used (older duplicates go).
            let holders: Vec<String> = tx.query_map(
                "SELECT node_id FROM session_records WHERE key = ?1 AND node_id <> ?2
                 ORDER BY COALESCE(disconnected_at_ms, 9223372036854775807) DESC, node_id",
                &params![key, node],
                |r| r.get(0),
            )?;
            let Some(from) = holders.first() else {
                return Ok(false);
            };
            delete_session(tx, node, key)?;
            // The bodies stay where they are: ids are unique in the cluster.
            tx.execute(
                "UPDATE session_queue SET node_id = ?3 WHERE node_id = ?2 AND session = ?1",
                &params![key, from, node],
            )?;
            tx.execute(
                "UPDATE session_records SET node_id = ?3 WHERE node_id = ?2 AND key = ?1",
                &params![key, from, node],
            )?;
            for other in &holders[1..] {
                delete_session(tx, other, key)?;
            }
            indexed(changes, key);
            Ok(true)
        })?;
        if !moved {
            return Ok(None);
        }
        let (sessions, queued) = read(&self.conn()?, node, Some(key))?;
        Ok(Some(SessionSnapshot {
            sessions,
            queued,
            max_msg: 0,
            dropped: 0,
        }))
    }

    /// The queue of session `key` as this node holds it, in order (what a session reads
    /// again after live copies of its messages may have been missed).
    pub fn session_queued(&self, key: &str) -> Result<Vec<QueuedRow>> {
        Ok(read(&self.conn()?, self.node(), Some(key))?.1)
    }

    /// Cluster mode: the sessions other nodes hold, as (key, domain, state), for this
    /// node's index of the cluster's persistent subscriptions.
    pub fn sessions_elsewhere(&self) -> Result<Vec<HeldElsewhere>> {
        self.conn()?.query_map(
            "SELECT key, domain_id, state FROM session_records WHERE node_id <> ?1 ORDER BY key",
            &params![self.node()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Cluster mode: session `key`'s (domain, state) when another node holds it (`None`:
    /// none does).
    pub fn session_elsewhere(&self, key: &str) -> Result<Option<(Option<String>, Vec<u8>)>> {
        self.conn()?.query_opt(
            "SELECT domain_id, state FROM session_records WHERE key = ?1 AND node_id <> ?2
             ORDER BY COALESCE(disconnected_at_ms, 9223372036854775807) DESC LIMIT 1",
            &params![key, self.node()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Sessions kept and messages queued (for metrics and benchmarks).
    pub fn sessions_counts(&self) -> Result<(u64, u64)> {
        let c = self.conn()?;
        let s: i64 = c.query_row("SELECT COUNT(*) FROM session_records", &[], |r| r.get(0))?;
        let q: i64 = c.query_row("SELECT COUNT(*) FROM session_queue", &[], |r| r.get(0))?;
        Ok((s as u64, q as u64))
    }
}

const SESSION_COLUMNS: &str = "key, domain_id, client_id, expiry_s, disconnected_at_ms, state, inbound";

fn session_row(r: &crate::db::Row) -> Result<SessionRow> {
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
}

fn queued_row(r: &crate::db::Row) -> Result<QueuedRow> {
    Ok(QueuedRow {
        session: r.get(0)?,
        msg: r.get::<i64>(1)?.max(0) as u64,
        meta: r.get(2)?,
        state: r.get::<i64>(3)?.clamp(0, 255) as u8,
        pkid: r.get::<i64>(4)?.clamp(0, 65_535) as u16,
        body: r.get(5)?,
    })
}

/// The sessions `node` holds (all, or the one of `key`) and their queues, each queue in the
/// order it was written.
fn read(c: &impl Db, node: &str, key: Option<&str>) -> Result<(Vec<SessionRow>, Vec<QueuedRow>)> {
    let (one, one_q, p) = match key {
        Some(k) => (" AND key = ?2", " AND q.session = ?2", params![node, k].to_vec()),
        None => ("", "", params![node].to_vec()),
    };
    let sessions = c.query_map(
        &format!("SELECT {SESSION_COLUMNS} FROM session_records WHERE node_id = ?1{one} ORDER BY key"),
        &p,
        session_row,
    )?;
    let queued = c.query_map(
        &format!(
            "SELECT q.session, q.msg, q.meta, q.state, q.pkid, b.body FROM session_queue q
             JOIN session_bodies b ON b.id = q.msg
             WHERE q.node_id = ?1{one_q} ORDER BY q.session, {}",
            c.dialect().queue_order("q.")
        ),
        &p,
        queued_row,
    )?;
    Ok((sessions, queued))
}

/// The setting that keeps a node's highest message id (ids are never reused).
fn high_key(node: &str) -> String {
    match node {
        "" => "session_msg_high".to_string(),
        n => format!("session_msg_high:{n}"),
    }
}

/// A body goes with the last queue row that needs it, on whichever node (ids are unique in
/// the cluster: a queue that moved still refers to the body its writer stored).
fn gc_body(tx: &Tx<'_>, msg: u64) -> Result<()> {
    tx.execute(
        "DELETE FROM session_bodies WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM session_queue WHERE msg = ?1)",
        &params![msg as i64],
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
        gc_body(tx, m as u64)?;
    }
    tx.execute(
        "DELETE FROM session_records WHERE node_id = ?2 AND key = ?1",
        &params![key, node],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
