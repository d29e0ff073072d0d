//! How far the other nodes have applied the outbox, so that a node can wait until they all
//! know of a change it committed (a persistent session's new subscriptions: until every
//! node indexes them, a message published on another node would not be queued for the
//! session before its publisher's acknowledgement).
//!
//! Each node's follower tells `<prefix>.applied` the number of the last entry it applied
//! after each read that went further. `Peers::until_applied` waits until every other live
//! node (the node table, read after the commit) told a number at least the given one, or
//! until the deadline: after `stale_after` from a commit, any node still accepting publishes read
//! the outbox after that commit (see `Freshness`), so the wait is bounded and still right
//! when a node is silent (dead, or NATS is down).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Nodes remembered at most (names come from NATS: a flood of made-up ones is ignored).
const MAX_NODES: usize = 1024;

#[derive(Default)]
pub struct Peers {
    /// Node → last outbox number it applied.
    applied: Mutex<HashMap<String, i64>>,
    changed: Notify,
}

impl Peers {
    /// `node` applied the outbox up to `seq`.
    pub fn heard(&self, node: &str, seq: i64) {
        if let Ok(mut a) = self.applied.lock() {
            let full = a.len() >= MAX_NODES;
            match a.get_mut(node) {
                Some(e) => *e = (*e).max(seq),
                None if !full => {
                    a.insert(node.to_string(), seq);
                }
                None => return,
            }
        }
        self.changed.notify_waiters();
    }

    fn all_applied(&self, nodes: &HashSet<String>, seq: i64) -> bool {
        let Ok(applied) = self.applied.lock() else {
            return false;
        };
        nodes.iter().all(|n| applied.get(n).is_some_and(|a| *a >= seq))
    }

    /// Resolves once each of `nodes` applied the outbox up to `seq`, or at `deadline`
    /// (returns whether they all did).
    pub async fn until_applied(&self, nodes: &HashSet<String>, seq: i64, deadline: Instant) -> bool {
        loop {
            let woken = self.changed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.all_applied(nodes, seq) {
                return true;
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline) => return self.all_applied(nodes, seq),
            }
        }
    }
}

/// The payload of an `applied` notice: `<node> <seq>`.
pub fn notice(node: &str, seq: i64) -> bytes::Bytes {
    bytes::Bytes::from(format!("{node} {seq}"))
}

/// Reads an `applied` notice.
pub fn read_notice(b: &[u8]) -> Option<(&str, i64)> {
    let (node, seq) = std::str::from_utf8(b).ok()?.split_once(' ')?;
    Some((node, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wait_ends_when_every_node_named_applied_or_at_its_deadline() {
        let p = std::sync::Arc::new(Peers::default());
        let both: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        p.heard("a", 7);
        let far = Instant::now() + Duration::from_secs(30);
        let waiting = tokio::spawn({
            let (p, both) = (p.clone(), both.clone());
            async move { p.until_applied(&both, 5, far).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "b has not applied 5");
        p.heard("b", 5);
        assert!(waiting.await.expect("wait"), "both applied");
        // A node that stays silent: the deadline ends the wait.
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!p.until_applied(&both, 9, soon).await);
        // Only the nodes named are waited for.
        assert!(p.until_applied(&["a".to_string()].into(), 7, far).await);
        assert_eq!(read_notice(&notice("n-1", 42)), Some(("n-1", 42)));
        assert_eq!(read_notice(b"garbage"), None);
    }
}
