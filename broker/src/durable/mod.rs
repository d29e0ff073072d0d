//! Persistent sessions written through to the [`SessionStore`] port: session records, and the
//! QoS 1/2 messages queued for persistent sessions, removed when the device acknowledges them.
//!
//! - **Publisher side.** A QoS 1/2 message is matched here against the subscriptions of
//!   persistent sessions (an index bucketed by channel, like the retained index); when it is
//!   for any of them, its body and one queue entry per such session are written before the
//!   publisher gets its PUBACK/PUBREC. The message id travels through the router in the tag,
//!   so the subscriber's session knows which entry a delivery is.
//! - **Subscriber side.** A session removes an entry when the device acknowledges the
//!   delivery (PUBACK; PUBCOMP for QoS 2) or when it drops it (expired, no right, queue full),
//!   and records the packet id of a QoS 2 delivery before sending it and its release
//!   (PUBREC received), so QoS 2 stays exactly once across a restart.
//! - **One writer thread** applies the operations in order, batched per transaction, and
//!   resolves the waiters of a batch after its commit.

mod records;

pub(crate) use records::*;

use crate::connect::Will;
use crate::session::SubOptions;
use crate::topic::bucket;
use crate::{Identity, SessionOp, SessionStore, StoredSession};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// Queue entry states (as stored).
pub(crate) const SENT: u8 = 1;
pub(crate) const RELEASED: u8 = 2;

/// Operations applied per transaction, at most.
const BATCH: usize = 2048;

type Waiter = oneshot::Sender<bool>;
/// An operation (none: a barrier, resolved once what was queued before it committed).
type Writer = mpsc::Sender<(Option<SessionOp>, Option<Waiter>)>;

/// A persistent session's subscription, as the publisher side needs it.
struct DSub {
    key: Arc<str>,
    filter: String,
    qos: u8,
    no_local: bool,
    origin: u64,
    sub_id: Option<u32>,
}

pub(crate) struct Durable {
    tx: Mutex<Option<Writer>>,
    store: Option<Arc<dyn SessionStore>>,
    next_msg: AtomicU64,
    /// Bucket (channel id, or "" outside channels) → subscriptions of persistent sessions.
    index: Mutex<Index>,
    /// Bytes of queued message bodies in the store (approximate), and the cap.
    pub stored_bytes: AtomicU64,
    max_stored_bytes: u64,
}

/// Subscriptions of persistent sessions by bucket, and each session's buckets.
#[derive(Default)]
struct Buckets {
    buckets: HashMap<String, Vec<DSub>>,
    by_key: HashMap<Arc<str>, Vec<String>>,
}

impl Buckets {
    /// Replaces the indexed subscriptions of session `key` (none: removes it).
    fn put(&mut self, key: &str, origin: u64, subs: Vec<(String, SubOptions)>) {
        if let Some(old) = self.by_key.remove(key) {
            for b in old {
                if let Some(v) = self.buckets.get_mut(&b) {
                    v.retain(|s| &*s.key != key);
                    if v.is_empty() {
                        self.buckets.remove(&b);
                    }
                }
            }
        }
        if subs.is_empty() {
            return;
        }
        let k: Arc<str> = Arc::from(key);
        let mut used = Vec::new();
        for (
            filter,
            SubOptions {
                qos, no_local, sub_id, ..
            },
        ) in subs
        {
            // Shared subscriptions: the router picks one member per message, which the
            // publisher side cannot know; their messages are queued in memory only.
            if qos == 0 || filter.starts_with('$') {
                continue;
            }
            let Some(b) = bucket(&filter) else { continue };
            let b = b.to_string();
            self.buckets.entry(b.clone()).or_default().push(DSub {
                key: k.clone(),
                filter,
                qos,
                no_local,
                origin,
                sub_id,
            });
            if !used.contains(&b) {
                used.push(b);
            }
        }
        if !used.is_empty() {
            self.by_key.insert(k, used);
        }
    }
}

#[derive(Default)]
struct Index {
    /// This node's persistent sessions.
    local: Buckets,
    /// Cluster mode: the persistent sessions other nodes hold (a key held here too counts
    /// as local: its copy elsewhere is about to go).
    remote: Buckets,
    /// Restored sessions without a router link: their messages are handed to them directly.
    direct: std::collections::HashSet<Arc<str>>,
}

/// A target of a message: session key, delivered QoS, subscription identifiers, whether
/// the session takes it directly (restored, no router link yet), and whether another node
/// holds it (cluster mode: its entry is written here, it is delivered there).
pub(crate) struct Target {
    pub key: String,
    pub qos: u8,
    pub sub_ids: Vec<u32>,
    pub direct: bool,
    pub remote: bool,
}

impl Durable {
    /// Without a store: nothing is written, nothing waits.
    pub fn off() -> Durable {
        Durable {
            tx: Mutex::new(None),
            store: None,
            next_msg: AtomicU64::new(1),
            index: Mutex::new(Index::default()),
            stored_bytes: AtomicU64::new(0),
            max_stored_bytes: u64::MAX,
        }
    }

    /// Starts the writer thread over `store`; message ids continue after `max_msg`.
    pub fn start(store: Arc<dyn SessionStore>, max_msg: u64, max_stored_bytes: u64) -> std::io::Result<Durable> {
        // Ids this process gives; another node's (an imported message's) are outside.
        let own_from = max_msg + 1;
        let (tx, rx) = mpsc::channel::<(Option<SessionOp>, Option<Waiter>)>();
        let reader = store.clone();
        std::thread::Builder::new()
            .name("fluxgate-sessions".into())
            .spawn(move || {
                let mut failed_logged = false;
                while let Ok(first) = rx.recv() {
                    let mut ops = Vec::with_capacity(64);
                    let mut waiters = Vec::new();
                    let mut next = Some(first);
                    while let Some((op, w)) = next.take() {
                        ops.extend(op);
                        waiters.extend(w);
                        if ops.len() < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    coalesce(&mut ops, own_from..);
                    // A batch of barriers only has nothing to write.
                    let ok = if ops.is_empty() { Ok(()) } else { store.apply(&ops) };
                    let ok = match ok {
                        Ok(()) => {
                            failed_logged = false;
                            true
                        }
                        Err(e) => {
                            if !failed_logged {
                                tracing::error!(error = %e, ops = ops.len(), "persistent sessions: store write failed");
                                failed_logged = true;
                            }
                            false
                        }
                    };
                    for w in waiters {
                        let _ = w.send(ok);
                    }
                }
            })?;
        Ok(Durable {
            tx: Mutex::new(Some(tx)),
            store: Some(reader),
            next_msg: AtomicU64::new(max_msg + 1),
            index: Mutex::new(Index::default()),
            stored_bytes: AtomicU64::new(0),
            max_stored_bytes,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.lock().map(|t| t.is_some()).unwrap_or(false)
    }

    /// Queues a write.
    pub fn write(&self, op: SessionOp) {
        if let Ok(t) = self.tx.lock() {
            if let Some(tx) = t.as_ref() {
                let _ = tx.send((Some(op), None));
            }
        }
    }

    /// Queues a write; the receiver resolves (true) once it committed, false if it failed.
    /// Resolves at once (true) without a store.
    pub fn write_wait(&self, op: SessionOp) -> oneshot::Receiver<bool> {
        self.queue_wait(Some(op))
    }

    /// Resolves (true) once every write queued before it committed.
    fn barrier(&self) -> oneshot::Receiver<bool> {
        self.queue_wait(None)
    }

    /// Session `key`'s queue as stored, read after every write queued before this call
    /// committed (`None` without a store or when it cannot be read).
    pub async fn queued(&self, key: &str) -> Option<Vec<crate::StoredDelivery>> {
        let store = self.store.clone()?;
        if !self.barrier().await.unwrap_or(false) {
            return None;
        }
        let key = key.to_string();
        match tokio::task::spawn_blocking(move || store.queued(&key)).await {
            Ok(Ok(rows)) => Some(rows),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "persistent sessions: cannot read a queue again");
                None
            }
            Err(_) => None,
        }
    }

    fn queue_wait(&self, op: Option<SessionOp>) -> oneshot::Receiver<bool> {
        let (w, r) = oneshot::channel();
        match self.tx.lock() {
            Ok(t) => match t.as_ref() {
                Some(tx) => {
                    if let Err(mpsc::SendError((_, Some(w)))) = tx.send((op, Some(w))) {
                        let _ = w.send(false);
                    }
                }
                None => {
                    let _ = w.send(true);
                }
            },
            Err(_) => {
                let _ = w.send(false);
            }
        }
        r
    }

    pub fn next_id(&self) -> u64 {
        self.next_msg.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the store-wide cap on queued bytes leaves room for `n` more.
    pub fn has_room(&self, n: u64) -> bool {
        self.stored_bytes.load(Ordering::Relaxed).saturating_add(n) <= self.max_stored_bytes
    }

    pub fn add_bytes(&self, n: u64) {
        self.stored_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub_bytes(&self, n: u64) {
        let _ = self
            .stored_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }

    /// Marks a restored session as taking its messages directly (true) or through its own
    /// router link (false).
    pub fn set_direct(&self, key: &str, direct: bool) {
        if let Ok(mut ix) = self.index.lock() {
            if direct {
                ix.direct.insert(Arc::from(key));
            } else {
                ix.direct.remove(key);
            }
        }
    }

    /// Replaces the indexed subscriptions of a session (none: it is not persistent).
    pub fn index(&self, key: &str, origin: u64, subs: Vec<(String, SubOptions)>) {
        let Ok(mut ix) = self.index.lock() else { return };
        if subs.is_empty() {
            ix.direct.remove(key);
        }
        ix.local.put(key, origin, subs);
    }

    /// Cluster mode: replaces the indexed subscriptions of a session another node holds
    /// (none: no other node holds it).
    /// Returns how many sessions other nodes hold are indexed now.
    pub fn index_remote(&self, key: &str, subs: Vec<(String, SubOptions)>) -> usize {
        match self.index.lock() {
            Ok(mut ix) => {
                ix.remote.put(key, 0, subs);
                ix.remote.by_key.len()
            }
            Err(_) => 0,
        }
    }

    /// The persistent sessions a message at `qos` published by `origin` is for, each with the
    /// entry's metadata (delivered QoS, subscription identifiers).
    pub fn targets(&self, topic: &str, qos: u8, origin: u64) -> Vec<Target> {
        if qos == 0 {
            return Vec::new();
        }
        let Some(b) = bucket(topic) else { return Vec::new() };
        let Ok(ix) = self.index.lock() else { return Vec::new() };
        let local = ix.local.buckets.get(b).into_iter().flatten().map(|s| (s, false));
        let remote = ix
            .remote
            .buckets
            .get(b)
            .into_iter()
            .flatten()
            .filter(|s| !ix.local.by_key.contains_key(&s.key))
            .map(|s| (s, true));
        let mut found: Vec<(Arc<str>, u8, Vec<u32>, bool)> = Vec::new();
        for (s, remote) in local.chain(remote) {
            if (s.no_local && s.origin == origin) || !crate::codec::matches(&s.filter, topic) {
                continue;
            }
            let q = qos.min(s.qos);
            match found.iter_mut().find(|(k, ..)| *k == s.key) {
                Some(f) => {
                    f.1 = f.1.max(q);
                    f.2.extend(s.sub_id);
                }
                None => found.push((s.key.clone(), q, s.sub_id.into_iter().collect(), remote)),
            }
        }
        found
            .into_iter()
            .map(|(k, qos, sub_ids, remote)| Target {
                direct: !remote && ix.direct.contains(&k),
                key: k.to_string(),
                qos,
                sub_ids,
                remote,
            })
            .collect()
    }
}

/// Removes the entries that a batch both creates and acknowledges (a device online and
/// keeping up acknowledges most deliveries before their entry was even written): the
/// message was delivered, so there is nothing left to keep. Its publisher's waiter still
/// resolves after the batch commits. An entry whose id is not one of `own` (cluster mode:
/// another node wrote it for this session) keeps its acknowledgement, which removes that
/// node's row.
fn coalesce(ops: &mut Vec<SessionOp>, own: std::ops::RangeFrom<u64>) {
    use std::collections::HashSet;
    let mut created: HashSet<(&str, u64)> = HashSet::new();
    let mut done: HashSet<(String, u64)> = HashSet::new();
    for op in ops.iter() {
        match op {
            SessionOp::Message { id, targets, .. } => {
                for (k, _) in targets {
                    created.insert((k.as_str(), *id));
                }
            }
            SessionOp::Ack { key, msg } if created.contains(&(key.as_str(), *msg)) => {
                done.insert((key.clone(), *msg));
            }
            _ => {}
        }
    }
    if done.is_empty() {
        return;
    }
    for op in ops.iter_mut() {
        if let SessionOp::Message { id, targets, .. } = op {
            targets.retain(|(k, _)| !done.contains(&(k.clone(), *id)));
        }
    }
    ops.retain(|op| match op {
        SessionOp::Message { targets, .. } => !targets.is_empty(),
        SessionOp::Ack { key, msg } => !own.contains(msg) || !done.contains(&(key.clone(), *msg)),
        SessionOp::Mark { key, msg, .. } => !done.contains(&(key.clone(), *msg)),
        _ => true,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn so(qos: u8, no_local: bool, rap: bool, sub_id: Option<u32>) -> SubOptions {
        SubOptions {
            qos,
            no_local,
            rap,
            sub_id,
        }
    }

    #[test]
    fn a_batch_that_creates_and_acknowledges_an_entry_writes_neither() {
        let msg = |id, keys: &[&str]| SessionOp::Message {
            id,
            body: Bytes::from_static(b"b"),
            targets: keys.iter().map(|k| (k.to_string(), Bytes::new())).collect(),
        };
        let ack = |k: &str, m| SessionOp::Ack { key: k.into(), msg: m };
        let mut ops = vec![
            ack("a", 1),
            msg(1, &["a", "b"]),
            msg(2, &["a"]),
            SessionOp::Mark {
                key: "b".into(),
                msg: 1,
                state: SENT,
                pkid: 3,
            },
            ack("b", 1),
            ack("a", 2),
            ack("a", 7),
        ];
        coalesce(&mut ops, 0..);
        // The Ack before the Message (an older entry with the same id cannot exist) and the
        // unrelated one stay; entry (a, 1) is written because its ack came first.
        assert_eq!(ops, vec![ack("a", 1), msg(1, &["a"]), ack("a", 7)]);
    }

    #[test]
    fn an_entry_another_node_wrote_keeps_its_acknowledgement() {
        let msg = |id| SessionOp::Message {
            id,
            body: Bytes::from_static(b"b"),
            targets: vec![("a".to_string(), Bytes::new())],
        };
        let ack = |m| SessionOp::Ack {
            key: "a".into(),
            msg: m,
        };
        // Ids from 100 on are this node's; 7 came with an imported message.
        let mut ops = vec![msg(7), ack(7), msg(100), ack(100)];
        coalesce(&mut ops, 100..);
        assert_eq!(ops, vec![ack(7)], "the other node's row goes; neither is written here");
    }

    #[test]
    fn sessions_held_elsewhere_are_targets_unless_held_here_too() {
        let d = Durable::off();
        let f = |q| vec![("channels/c/messages/#".to_string(), so(q, false, false, None))];
        d.index_remote("far", f(1));
        d.index_remote("moving", f(2));
        d.index("moving", 5, f(1));
        let mut t: Vec<(String, u8, bool)> = d
            .targets("channels/c/messages/x", 2, 9)
            .into_iter()
            .map(|t| (t.key, t.qos, t.remote))
            .collect();
        t.sort();
        assert_eq!(
            t,
            vec![("far".into(), 1, true), ("moving".into(), 1, false)],
            "a session held here is local, whatever another node last said"
        );
        d.index("moving", 5, Vec::new());
        assert_eq!(
            d.targets("channels/c/messages/x", 2, 9).len(),
            2,
            "gone from here: remote again"
        );
        assert_eq!(d.index_remote("far", Vec::new()), 1, "one left indexed");
    }

    #[test]
    fn targets_match_persistent_subscriptions_once_per_session() {
        let d = Durable::off();
        d.index(
            "s1",
            1,
            vec![
                ("channels/c/messages/#".into(), so(1, false, false, Some(3))),
                ("channels/c/messages/a".into(), so(2, false, false, Some(4))),
            ],
        );
        d.index(
            "s2",
            2,
            vec![("channels/c/messages/a".into(), so(2, true, false, None))],
        );
        d.index(
            "s3",
            3,
            vec![("channels/other/messages".into(), so(2, false, false, None))],
        );
        let t = d.targets("channels/c/messages/a", 2, 2);
        assert_eq!(t.len(), 1, "s2 is the publisher and asked for No Local");
        assert_eq!((t[0].key.as_str(), t[0].qos, &t[0].sub_ids[..]), ("s1", 2, &[3, 4][..]));
        assert!(
            d.targets("channels/c/messages/a", 0, 9).is_empty(),
            "QoS 0 is not queued"
        );
        d.index("s1", 1, vec![]);
        assert_eq!(d.targets("channels/c/messages/a", 1, 9).len(), 1);
    }
}
