//! Retained messages, kept by the front (the router never sees retain=true): an index in
//! memory, bucketed by channel so a subscription scans only its channel, written through to
//! the [`RetainedStore`] port by one background thread (in order, batched), and loaded from
//! it at start.

use crate::topic::bucket;
use crate::{Retained, RetainedOp, RetainedStore};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};

pub(crate) struct RetainedIndex {
    buckets: Mutex<HashMap<String, HashMap<String, Arc<Retained>>>>,
    count: std::sync::atomic::AtomicUsize,
    max: usize,
    writer: Mutex<Option<mpsc::Sender<RetainedOp>>>,
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
    pub fn start(store: Option<Arc<dyn RetainedStore>>, max: usize) -> std::io::Result<RetainedIndex> {
        let mut buckets: HashMap<String, HashMap<String, Arc<Retained>>> = HashMap::new();
        let mut count = 0;
        let writer = match store {
            Some(store) => {
                for r in store.load() {
                    if let Some(b) = bucket(&r.topic) {
                        count += 1;
                        buckets
                            .entry(b.to_string())
                            .or_default()
                            .insert(r.topic.clone(), Arc::new(r));
                    }
                }
                let (tx, rx) = mpsc::channel::<RetainedOp>();
                std::thread::Builder::new()
                    .name("fluxgate-retained".into())
                    .spawn(move || {
                        while let Ok(op) = rx.recv() {
                            let mut ops = vec![op];
                            while let Ok(more) = rx.try_recv() {
                                ops.push(more);
                                if ops.len() >= 512 {
                                    break;
                                }
                            }
                            store.apply(ops);
                        }
                    })?;
                Some(tx)
            }
            None => None,
        };
        Ok(RetainedIndex {
            buckets: Mutex::new(buckets),
            count: count.into(),
            max,
            writer: Mutex::new(writer),
        })
    }

    fn write(&self, op: RetainedOp) {
        if let Ok(w) = self.writer.lock() {
            if let Some(tx) = w.as_ref() {
                let _ = tx.send(op);
            }
        }
    }

    /// Sets, replaces or (empty payload) deletes the retained message of a topic.
    pub fn store(&self, r: Retained) -> Stored {
        use std::sync::atomic::Ordering;
        let Some(b) = bucket(&r.topic) else {
            return Stored::Full;
        };
        let Ok(mut m) = self.buckets.lock() else {
            return Stored::Full;
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
            self.write(RetainedOp::Delete(r.topic));
            return Stored::Deleted;
        }
        let bm = m.entry(b.to_string()).or_default();
        if !bm.contains_key(&r.topic) {
            if self.count.load(Ordering::Relaxed) >= self.max {
                return Stored::Full;
            }
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        let r = Arc::new(r);
        bm.insert(r.topic.clone(), r.clone());
        drop(m);
        self.write(RetainedOp::Put((*r).clone()));
        Stored::Set
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
        self.count.load(std::sync::atomic::Ordering::Relaxed)
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
        let idx = RetainedIndex::start(None, 2).expect("index");
        assert_eq!(idx.store(msg("channels/a/messages/x", b"1")), Stored::Set);
        assert_eq!(idx.store(msg("channels/a/messages/x", b"2")), Stored::Set);
        assert_eq!(idx.store(msg("other/t", b"3")), Stored::Set);
        assert_eq!(idx.store(msg("channels/b/messages", b"4")), Stored::Full);
        let got = idx.matching("channels/a/messages/#");
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"2");
        assert_eq!(
            idx.matching("#").len(),
            1,
            "# sees only its bucket, never channel topics"
        );
        assert_eq!(idx.store(msg("channels/a/messages/x", b"")), Stored::Deleted);
        assert!(idx.matching("channels/a/messages/#").is_empty());
        assert_eq!(idx.len(), 1);
    }
}
