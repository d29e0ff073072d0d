//! The outbox: every announced change, written inside the transaction that made it, with a
//! sequence number and a time. One node announces from memory after commit; the outbox is
//! what other nodes of a cluster read. Pruned by age.

use crate::db::{params, Db, Tx};
use crate::{Change, Result, Store, StoreError};

/// One recorded change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub seq: i64,
    /// Microseconds since the Unix epoch.
    pub at: i64,
    pub change: Change,
}

/// Writes `changes` to the outbox inside `tx`.
pub(crate) fn record(tx: &Tx<'_>, changes: &[Change]) -> Result<()> {
    let at = crate::now_micros();
    for c in changes {
        let payload = serde_json::to_string(c).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let kind = payload_kind(c);
        tx.execute(
            "INSERT INTO outbox (kind, payload, at) VALUES (?1, ?2, ?3)",
            &params![kind, payload, at],
        )?;
    }
    Ok(())
}

/// Claims are many (one per MQTT connection in a cluster) and only matter for moments:
/// they are pruned sooner than other changes.
const SESSION_CLAIMED: &str = "session_claimed";

/// Seconds a session claim stays in the outbox.
pub const CLAIM_MAX_AGE_S: i64 = 300;

fn payload_kind(c: &Change) -> &'static str {
    match c {
        Change::ClientEnabled { .. } => "client_enabled",
        Change::ClientDisabled { .. } => "client_disabled",
        Change::ClientDeleted { .. } => "client_deleted",
        Change::ClientSecretChanged { .. } => "client_secret_changed",
        Change::ChannelEnabled { .. } => "channel_enabled",
        Change::ChannelDisabled { .. } => "channel_disabled",
        Change::ChannelDeleted { .. } => "channel_deleted",
        Change::Connected { .. } => "connected",
        Change::Disconnected { .. } => "disconnected",
        Change::CertRevoked { .. } => "cert_revoked",
        Change::DomainEnabled { .. } => "domain_enabled",
        Change::DomainDisabled { .. } => "domain_disabled",
        Change::DomainFrozen { .. } => "domain_frozen",
        Change::SessionClaimed { .. } => SESSION_CLAIMED,
        Change::SessionIndexed { .. } => "session_indexed",
    }
}

impl Store {
    /// The outbox entries after `seq`, oldest first, at most `limit`.
    pub fn outbox_after(&self, seq: i64, limit: u32) -> Result<Vec<OutboxEntry>> {
        self.conn()?.query_map(
            "SELECT seq, at, payload FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            &params![seq, limit],
            |r| {
                let payload: String = r.get(2)?;
                Ok(OutboxEntry {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    change: serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt(format!("outbox: {e}")))?,
                })
            },
        )
    }

    /// Removes outbox entries recorded before `before` (microseconds), and session claims
    /// older than [`CLAIM_MAX_AGE_S`]; returns how many.
    pub fn prune_outbox(&self, before: i64) -> Result<u64> {
        let claims_before = crate::now_micros() - CLAIM_MAX_AGE_S * 1_000_000;
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM outbox WHERE at < ?1 OR (kind = ?2 AND at < ?3)",
                &params![before, SESSION_CLAIMED, claims_before],
            )? as u64)
        })
    }

    /// The newest outbox number (0 when empty): a follower starting now reads after it.
    pub fn outbox_head(&self) -> Result<i64> {
        let v: Option<i64> = self
            .conn()?
            .query_row("SELECT MAX(seq) FROM outbox", &[], |r| r.get(0))?;
        Ok(v.unwrap_or(0))
    }

    /// Cluster mode: records this node's claim on a session key; returns its number (the
    /// newest claim wins). Written under the write lock like every outbox entry, so numbers
    /// are committed in order and a follower reading by number misses none.
    pub fn claim_session(&self, key: &str) -> Result<i64> {
        let c = Change::SessionClaimed {
            key: key.to_string(),
            node: self.node().to_string(),
        };
        let payload = serde_json::to_string(&c).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let node = self.node();
        self.write(|tx| {
            let seq: i64 = tx.query_row(
                "INSERT INTO outbox (kind, payload, at) VALUES (?1, ?2, ?3) RETURNING seq",
                &params![SESSION_CLAIMED, payload, crate::now_micros()],
                |r| r.get(0),
            )?;
            // The session's owner from now on (claims are numbered in commit order, so the
            // newest wins); the node that owned it can no longer write its record.
            tx.execute(
                "INSERT INTO session_owners (key, node_id, fence) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET node_id = excluded.node_id, fence = excluded.fence
                 WHERE session_owners.fence < excluded.fence",
                &params![key, node, seq],
            )?;
            Ok(seq)
        })
    }
}

impl Store {
    /// Cluster mode: forgets the owners of sessions no node holds any more whose claim is
    /// older than `before` (Unix µs; a node that was paused longer than that could write a
    /// record again, a rare and harmless copy that expires with its session). Claims are
    /// recorded for every connection, clean ones included: without this the table would
    /// grow with every client id ever seen. Returns how many went.
    pub fn prune_session_owners(&self, before: i64) -> Result<usize> {
        self.write(|tx| {
            let oldest_recent: Option<i64> =
                tx.query_row("SELECT MIN(seq) FROM outbox WHERE at >= ?1", &params![before], |r| {
                    r.get(0)
                })?;
            let Some(limit) = oldest_recent else {
                return Ok(0);
            };
            tx.execute(
                "DELETE FROM session_owners WHERE fence < ?1
                 AND NOT EXISTS (SELECT 1 FROM session_records r WHERE r.key = session_owners.key)",
                &params![limit],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    #[test]
    fn owners_of_sessions_nobody_holds_are_pruned_once_their_claim_is_old() {
        let (_d, s) = store();
        s.set_node("n1");
        let owners = |s: &Store| -> Vec<String> {
            s.conn()
                .expect("conn")
                .query_map("SELECT key FROM session_owners ORDER BY key", &[], |r| r.get(0))
                .expect("owners")
        };
        s.claim_session("clean").expect("claim");
        s.claim_session("kept").expect("claim");
        s.sessions_apply(&[crate::SessionWrite::Put(crate::SessionRow {
            key: "kept".into(),
            owner: None,
            expiry_s: 60,
            disconnected_at_ms: None,
            state: vec![],
            inbound: vec![],
        })])
        .expect("record");
        let t = crate::now_micros();
        assert_eq!(
            s.prune_session_owners(t).expect("prune"),
            0,
            "no claim since: nothing known old"
        );
        s.claim_session("recent").expect("claim");
        assert_eq!(s.prune_session_owners(t).expect("prune"), 1);
        assert_eq!(owners(&s), vec!["kept".to_string(), "recent".to_string()]);
    }

    #[test]
    fn every_announced_change_is_in_the_outbox_in_order_and_prunable() {
        let (_d, s) = store();
        crate::testutil::user(&s, "u");
        crate::testutil::domain(&s, "d1", "u");
        for status in [crate::Status::Disabled, crate::Status::Enabled] {
            let p = crate::DomainPatch {
                status: Some(status),
                ..Default::default()
            };
            s.update_domain("d1", p, "u").expect("status");
        }
        let all = s.outbox_after(0, 100).expect("read");
        let kinds: Vec<&Change> = all.iter().map(|e| &e.change).collect();
        assert_eq!(
            kinds,
            [
                &Change::DomainDisabled { domain_id: "d1".into() },
                &Change::DomainEnabled { domain_id: "d1".into() }
            ]
        );
        assert!(all[0].seq < all[1].seq);
        assert_eq!(s.outbox_after(all[0].seq, 100).expect("after").len(), 1);
        assert_eq!(s.prune_outbox(crate::now_micros() + 1).expect("prune"), 2);
        assert!(s.outbox_after(0, 100).expect("read").is_empty());
    }
}
