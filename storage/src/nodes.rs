//! The nodes of a cluster: one row per node id, with the incarnation (one per process start)
//! that holds it and its last heartbeat. A second live process under the same id is refused
//! at start; a node whose heartbeat stopped is taken for dead by the others. The first node
//! of a deployment that grew into a cluster adopts the persistent sessions kept before.

use crate::db::{params, Db};
use crate::{Result, Store, StoreError};

/// A node as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub incarnation: String,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds of the last heartbeat; 0 once it stopped cleanly.
    pub heartbeat_at: i64,
}

impl Store {
    /// Registers a node's start under `incarnation`. Refused (`Conflict`) while another
    /// incarnation of the same id wrote a heartbeat within `timeout_ms` of `now_ms`.
    pub fn node_register(&self, id: &str, incarnation: &str, now_ms: i64, timeout_ms: i64) -> Result<()> {
        self.write(|tx| {
            let live = tx.query_opt(
                "SELECT incarnation, heartbeat_at FROM cluster_nodes WHERE id = ?1",
                &params![id],
                |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
            )?;
            if let Some((other, beat)) = live {
                if other != incarnation && beat > 0 && now_ms - beat < timeout_ms {
                    return Err(StoreError::Conflict(format!(
                        "node id {id} is in use by a live node (last heartbeat {} ms ago)",
                        now_ms - beat
                    )));
                }
            }
            // Persistent sessions kept before the deployment became a cluster (`fluxgate store
            // migrate`) go to the first node that starts.
            if !tx.exists("SELECT 1 FROM session_records WHERE node_id <> ''", &[])? {
                for t in ["session_records", "session_bodies", "session_queue"] {
                    tx.execute(&format!("UPDATE {t} SET node_id = ?1 WHERE node_id = ''"), &params![id])?;
                }
                let high = tx.query_opt("SELECT value FROM settings WHERE key = 'session_msg_high'", &[], |r| {
                    r.get::<String>(0)
                })?;
                if let Some(v) = high {
                    tx.execute(
                        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                        &params![format!("session_msg_high:{id}"), v],
                    )?;
                }
            }
            tx.execute(
                "INSERT INTO cluster_nodes (id, incarnation, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (id) DO UPDATE SET incarnation = excluded.incarnation,
                    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                &params![id, incarnation, now_ms],
            )?;
            Ok(())
        })
    }

    /// Writes a node's heartbeat. `Conflict` when another incarnation holds the id now (this
    /// process must stop serving).
    pub fn node_heartbeat(&self, id: &str, incarnation: &str, now_ms: i64) -> Result<()> {
        let n = self.conn()?.execute(
            "UPDATE cluster_nodes SET heartbeat_at = ?3 WHERE id = ?1 AND incarnation = ?2",
            &params![id, incarnation, now_ms],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "node id {id} was taken by another process"
            )));
        }
        Ok(())
    }

    /// A node stops cleanly: the others need not wait for its heartbeat to run out.
    pub fn node_leave(&self, id: &str, incarnation: &str) -> Result<()> {
        self.conn()?.execute(
            "UPDATE cluster_nodes SET heartbeat_at = 0 WHERE id = ?1 AND incarnation = ?2",
            &params![id, incarnation],
        )?;
        Ok(())
    }

    /// Every node the store knows, by id.
    pub fn nodes(&self) -> Result<Vec<NodeRow>> {
        self.conn()?.query_map(
            "SELECT id, incarnation, started_at, heartbeat_at FROM cluster_nodes ORDER BY id",
            &[],
            |r| {
                Ok(NodeRow {
                    id: r.get(0)?,
                    incarnation: r.get(1)?,
                    started_at: r.get(2)?,
                    heartbeat_at: r.get(3)?,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_live_node_id_is_refused_a_dead_one_is_taken_over_and_heartbeats_name_their_holder() {
        let (_d, s) = crate::testutil::store();
        let s = &s;
        s.node_register("n1", "a", 1_000, 10_000).expect("first start");
        let e = s.node_register("n1", "b", 5_000, 10_000);
        assert!(matches!(e, Err(crate::StoreError::Conflict(_))), "{e:?}");
        s.node_heartbeat("n1", "a", 6_000).expect("its own heartbeat");
        assert!(s.node_heartbeat("n1", "b", 6_000).is_err(), "not the holder");
        // Silent for longer than the timeout: dead, its id can be taken.
        s.node_register("n1", "b", 17_000, 10_000).expect("taken over");
        assert!(
            s.node_heartbeat("n1", "a", 17_500).is_err(),
            "the old process learns it lost the id"
        );
        s.node_leave("n1", "b").expect("leave");
        s.node_register("n1", "c", 17_600, 10_000)
            .expect("left cleanly: free at once");
        let nodes = s.nodes().expect("nodes");
        assert_eq!(nodes.len(), 1);
        assert_eq!((nodes[0].incarnation.as_str(), nodes[0].heartbeat_at), ("c", 17_600));
    }
}
