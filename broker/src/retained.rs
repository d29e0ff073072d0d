//! Retained messages, kept by the front (the router never sees retain=true): an index in
//! memory, bucketed by channel so a subscription scans only its channel, written through to
//! the [`RetainedStore`] port by one background thread (in order, batched), and loaded from
//! it at start.

use crate::topic::bucket;
#[cfg(test)]
use crate::PortError;
use crate::{Metrics, Retained, RetainedOp, RetainedStore};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

type Buckets = HashMap<String, HashMap<String, Arc<Retained>>>;
/// An operation for the writer, with the message it stores (to take it back out of the
/// index if the write fails) and who waits for the commit.
type Write = (RetainedOp, Option<Arc<Retained>>, Option<oneshot::Sender<bool>>);

pub(crate) struct RetainedIndex {
    buckets: Arc<Mutex<Buckets>>,
    count: Arc<AtomicUsize>,
    max: usize,
    writer: Mutex<Option<mpsc::Sender<Write>>>,
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
        let mut buckets: Buckets = HashMap::new();
        let mut count = 0;
        let buckets_ref = Arc::new(Mutex::new(Buckets::new()));
        let count_ref = Arc::new(AtomicUsize::new(0));
        let writer = match store {
            Some(store) => {
                for r in store.load().map_err(crate::BrokerError::Retained)? {
                    if let Some(b) = bucket(&r.topic) {
                        count += 1;
                        buckets
                            .entry(b.to_string())
                            .or_default()
                            .insert(r.topic.clone(), Arc::new(r));
                    }
                }
                let (tx, rx) = mpsc::channel::<Write>();
                let (ix, n) = (buckets_ref.clone(), count_ref.clone());
                std::thread::Builder::new()
                    .name("fluxgate-retained".into())
                    .spawn(move || {
                        while let Ok(first) = rx.recv() {
                            let mut batch = vec![first];
                            while let Ok(more) = rx.try_recv() {
                                batch.push(more);
                                if batch.len() >= 512 {
                                    break;
                                }
                            }
                            let ops: Vec<RetainedOp> = batch.iter().map(|(op, _, _)| op.clone()).collect();
                            let result = store.apply(&ops);
                            if let Err(e) = &result {
                                let before = metrics.retained_not_stored.fetch_add(ops.len() as u64, Ordering::Relaxed);
                                tracing::error!(error = %e, count = ops.len(), not_stored_total = before + ops.len() as u64, "retained messages not stored: refused");
                                for (_, kept, _) in &batch {
                                    if let Some(r) = kept {
                                        take_back(&ix, &n, r);
                                    }
                                }
                            }
                            for (_, _, w) in batch {
                                if let Some(w) = w {
                                    let _ = w.send(result.is_ok());
                                }
                            }
                        }
                    })
                    .map_err(crate::BrokerError::Io)?;
                Some(tx)
            }
            None => None,
        };
        if let Ok(mut b) = buckets_ref.lock() {
            *b = buckets;
        }
        count_ref.store(count, Ordering::Relaxed);
        Ok(RetainedIndex {
            buckets: buckets_ref,
            count: count_ref,
            max,
            writer: Mutex::new(writer),
        })
    }

    /// Hands an operation to the writer; the receiver resolves with its commit (true) or its
    /// failure (false). Without a store it resolves true at once.
    fn write(&self, op: RetainedOp, kept: Option<Arc<Retained>>) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let sent = match self.writer.lock() {
            Ok(w) => match w.as_ref() {
                Some(writer) => writer.send((op, kept, Some(tx))).map_err(|e| e.0 .2),
                None => Err(Some(tx)),
            },
            Err(_) => Err(Some(tx)),
        };
        if let Err(Some(tx)) = sent {
            let _ = tx.send(self.writer.lock().map(|w| w.is_none()).unwrap_or(false));
        }
        rx
    }

    /// Sets, replaces or (empty payload) deletes the retained message of a topic. The
    /// receiver resolves once the store committed it (false: it could not, and a message set
    /// here was taken back out of the index).
    pub fn store(&self, r: Retained) -> (Stored, Option<oneshot::Receiver<bool>>) {
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
            drop(m);
            return (Stored::Deleted, Some(self.write(RetainedOp::Delete(r.topic), None)));
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
        drop(m);
        let w = self.write(RetainedOp::Put((*r).clone()), Some(r));
        (Stored::Set, Some(w))
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
