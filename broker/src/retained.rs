//! Retained messages, kept by the front (the router never sees retain=true): an index in
//! memory, bucketed by channel so a subscription scans only its channel, written through to
//! the [`RetainedStore`] port by one background thread (in order, batched), and loaded from
//! it at start.

use crate::topic::bucket;
use crate::{Metrics, PortError, Retained, RetainedOp, RetainedStore};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

type Buckets = HashMap<String, HashMap<String, Arc<Retained>>>;
/// An operation for the writer, with the message it stores (to take it back out of the
/// index if the write fails) and who waits for the commit.
type Write = (RetainedOp, Option<Arc<Retained>>, oneshot::Sender<bool>);

pub(crate) struct RetainedIndex {
    buckets: Arc<Mutex<Buckets>>,
    count: Arc<AtomicUsize>,
    max: usize,
    /// `None` without a store.
    writer: Option<mpsc::Sender<Write>>,
    store: Option<Arc<dyn RetainedStore>>,
}

/// What storing a retained message did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    Set,
    Deleted,
    /// The index holds `max` topics already.
    Full,
}

impl RetainedIndex {
    /// Loads the index from `store` and starts its writer; retained messages the store
    /// refuses are counted in `metrics.retained_not_stored`.
    pub fn start(
        store: Option<Arc<dyn RetainedStore>>,
        max: usize,
        metrics: Arc<Metrics>,
    ) -> Result<RetainedIndex, crate::BrokerError> {
        let Some(store) = store else {
            return Ok(RetainedIndex {
                buckets: Arc::default(),
                count: Arc::default(),
                max,
                writer: None,
                store: None,
            });
        };
        let (loaded, count) = load(store.as_ref()).map_err(crate::BrokerError::Retained)?;
        let (buckets, count) = (Arc::new(Mutex::new(loaded)), Arc::new(AtomicUsize::new(count)));
        let (tx, rx) = mpsc::channel::<Write>();
        let (ix, n, s) = (buckets.clone(), count.clone(), store.clone());
        std::thread::Builder::new()
            .name("fluxgate-retained".into())
            .spawn(move || write_loop(rx, s.as_ref(), &ix, &n, &metrics))
            .map_err(crate::BrokerError::Io)?;
        Ok(RetainedIndex {
            buckets,
            count,
            max,
            writer: Some(tx),
            store: Some(store),
        })
    }

    /// Replaces the index with what the store holds now (cluster mode: after a gap in what
    /// other nodes told this one). Blocks. Returns the topics held.
    pub fn reload(&self) -> Result<usize, PortError> {
        let Some(store) = &self.store else {
            return Ok(self.len());
        };
        let (loaded, n) = load(store.as_ref())?;
        if let Ok(mut m) = self.buckets.lock() {
            *m = loaded;
            self.count.store(n, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// Hands an operation to the writer; the receiver resolves with its commit (true) or its
    /// failure (false). Without a store it resolves true at once.
    fn write(&self, op: RetainedOp, kept: Option<Arc<Retained>>) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        match &self.writer {
            // Nothing to commit.
            None => {
                let _ = tx.send(true);
            }
            Some(w) => {
                if let Err(mpsc::SendError((_, _, tx))) = w.send((op, kept, tx)) {
                    // The writer is gone: nothing is stored any more.
                    let _ = tx.send(false);
                }
            }
        }
        rx
    }

    /// Sets, replaces or (empty payload) deletes the retained message of a topic. The
    /// receiver resolves once the store committed it (false: it could not, and a message set
    /// here was taken back out of the index).
    pub fn store(&self, r: Retained) -> (Stored, Option<oneshot::Receiver<bool>>) {
        let topic = r.topic.clone();
        match self.index(r) {
            (Stored::Full, _) => (Stored::Full, None),
            (Stored::Deleted, _) => (Stored::Deleted, Some(self.write(RetainedOp::Delete(topic), None))),
            (Stored::Set, kept) => {
                let op = kept.as_ref().map(|r| RetainedOp::Put((**r).clone()));
                match op {
                    Some(op) => (Stored::Set, Some(self.write(op, kept))),
                    None => (Stored::Full, None),
                }
            }
        }
    }

    /// Keeps a retained message (or, empty, its deletion) in the index only: another node
    /// stored it already (cluster mode).
    pub fn remember(&self, r: Retained) -> Stored {
        self.index(r).0
    }

    /// Sets, replaces or deletes a topic's message in the index; returns what it did and
    /// the message it holds now.
    fn index(&self, r: Retained) -> (Stored, Option<Arc<Retained>>) {
        let Some(b) = bucket(&r.topic) else {
            return (Stored::Full, None);
        };
        let Ok(mut m) = self.buckets.lock() else {
            return (Stored::Full, None);
        };
        if r.payload.is_empty() {
            if let Some(bm) = m.get_mut(b) {
                if bm.remove(&r.topic).is_some() {
                    self.count.fetch_sub(1, Ordering::Relaxed);
                }
                if bm.is_empty() {
                    m.remove(b);
                }
            }
            return (Stored::Deleted, None);
        }
        let bm = m.entry(b.to_string()).or_default();
        if !bm.contains_key(&r.topic) {
            if self.count.load(Ordering::Relaxed) >= self.max {
                return (Stored::Full, None);
            }
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        let r = Arc::new(r);
        bm.insert(r.topic.clone(), r.clone());
        (Stored::Set, Some(r))
    }

    /// The retained messages matching a filter (expired ones are left out).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Retained>> {
        let now = crate::router::now_ms();
        let Some(b) = bucket(filter) else {
            return Vec::new();
        };
        let Ok(m) = self.buckets.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Arc<Retained>> = m
            .get(b)
            .map(|bm| {
                bm.values()
                    .filter(|r| crate::codec::matches(filter, &r.topic))
                    .filter(|r| r.expires_at_ms == 0 || r.expires_at_ms > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// The store's retained messages as buckets, and how many.
fn load(store: &dyn RetainedStore) -> Result<(Buckets, usize), PortError> {
    let mut buckets: Buckets = HashMap::new();
    let mut count = 0;
    for r in store.load()? {
        if let Some(b) = bucket(&r.topic) {
            count += 1;
            buckets
                .entry(b.to_string())
                .or_default()
                .insert(r.topic.clone(), Arc::new(r));
        }
    }
    Ok((buckets, count))
}

/// The writer thread: applies operations in order, batched; a batch the store refuses is
/// counted, its messages are taken back out of the index, and its waiters are told.
fn write_loop(
    rx: mpsc::Receiver<Write>,
    store: &dyn RetainedStore,
    ix: &Mutex<Buckets>,
    count: &AtomicUsize,
    metrics: &Metrics,
) {
    while let Ok(first) = rx.recv() {
        let (mut ops, mut kept, mut waiters) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some((op, k, w)) = next.take() {
            ops.push(op);
            kept.extend(k);
            waiters.push(w);
            if ops.len() < 512 {
                next = rx.try_recv().ok();
            }
        }
        let result = store.apply(&ops);
        if let Err(e) = &result {
            let n = ops.len() as u64;
            let before = metrics.retained_not_stored.fetch_add(n, Ordering::Relaxed);
            tracing::error!(error = %e, count = n, not_stored_total = before + n, "retained messages not stored: refused");
            for r in &kept {
                take_back(ix, count, r);
            }
        }
        for w in waiters {
            let _ = w.send(result.is_ok());
        }
    }
}

/// Takes a message the store refused back out of the index, unless a newer one replaced it.
fn take_back(ix: &Mutex<Buckets>, count: &AtomicUsize, r: &Arc<Retained>) {
    let Some(b) = bucket(&r.topic) else { return };
    let Ok(mut m) = ix.lock() else { return };
    let Some(bm) = m.get_mut(b) else { return };
    if bm.get(&r.topic).is_some_and(|now| Arc::ptr_eq(now, r)) {
        bm.remove(&r.topic);
        count.fetch_sub(1, Ordering::Relaxed);
        if bm.is_empty() {
            m.remove(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: &str, p: &'static [u8]) -> Retained {
        Retained {
            topic: t.into(),
            payload: bytes::Bytes::from_static(p),
            qos: 1,
            props: bytes::Bytes::new(),
            expires_at_ms: 0,
        }
    }

    #[test]
    fn set_replace_delete_and_match() {
        let idx = RetainedIndex::start(None, 2, Arc::default()).expect("index");
        let put = |t, p| idx.store(msg(t, p)).0;
        assert_eq!(put("channels/a/messages/x", b"1"), Stored::Set);
        assert_eq!(put("channels/a/messages/x", b"2"), Stored::Set);
        assert_eq!(put("other/t", b"3"), Stored::Set);
        assert_eq!(put("channels/b/messages", b"4"), Stored::Full);
        let got = idx.matching("channels/a/messages/#");
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"2");
        assert_eq!(
            idx.matching("#").len(),
            1,
            "# sees only its bucket, never channel topics"
        );
        assert_eq!(put("channels/a/messages/x", b""), Stored::Deleted);
        assert!(idx.matching("channels/a/messages/#").is_empty());
        assert_eq!(idx.len(), 1);
    }

    /// A store that fails every write.
    struct Broken;
    impl RetainedStore for Broken {
        fn load(&self) -> Result<Vec<Retained>, PortError> {
            Ok(vec![msg("channels/a/messages/old", b"0")])
        }
        fn apply(&self, _: &[RetainedOp]) -> Result<(), PortError> {
            Err(PortError::Unavailable("store", "down".into()))
        }
    }

    #[tokio::test]
    async fn a_write_the_store_refuses_is_reported_and_taken_back_out() {
        let m = Arc::new(Metrics::default());
        let idx = RetainedIndex::start(Some(Arc::new(Broken)), 10, m.clone()).expect("index");
        assert_eq!(idx.len(), 1, "loaded");
        let (s, w) = idx.store(msg("channels/a/messages/x", b"1"));
        assert_eq!(s, Stored::Set);
        assert_eq!(w.expect("a write").await, Ok(false), "the failure is reported");
        assert!(
            idx.matching("channels/a/messages/x").is_empty(),
            "not kept in memory either"
        );
        assert_eq!(idx.len(), 1);
        assert_eq!(m.retained_not_stored.load(Ordering::Relaxed), 1);
        // Without a store, a write is done at once.
        let mem = RetainedIndex::start(None, 10, Arc::default()).expect("index");
        assert_eq!(mem.store(msg("t", b"1")).1.expect("w").await, Ok(true));
    }

    struct Unreadable;
    impl RetainedStore for Unreadable {
        fn load(&self) -> Result<Vec<Retained>, PortError> {
            Err(PortError::Unavailable("store", "down".into()))
        }
        fn apply(&self, _: &[RetainedOp]) -> Result<(), PortError> {
            Ok(())
        }
    }

    #[test]
    fn a_store_that_cannot_load_stops_the_start() {
        assert!(matches!(
            RetainedIndex::start(Some(Arc::new(Unreadable)), 10, Arc::default()),
            Err(crate::BrokerError::Retained(_))
        ));
    }
}
