//! Live views of channels: what the broker's sink takes (MQTT and HTTP messages alike, from
//! the broker's one ingress) is handed to the viewers of their channel without waiting. Each
//! viewer has a bounded queue; one that falls behind is dropped (its stream ends), so a slow
//! browser never holds memory without bound. Viewers are capped per server, per domain and
//! per user under that, so one user or one tenant cannot take every view.

use mgmt::error::ApiError;
use mgmt::live::{LiveMessage, LivePort};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Messages queued per viewer before it counts as too slow.
pub const VIEWER_QUEUE: usize = 256;

/// One open view: its queue and whose it is.
struct Viewer {
    tx: mpsc::Sender<Arc<LiveMessage>>,
    domain: String,
    user: String,
}

/// Viewers by channel id (channel ids are unique across domains).
type Viewers = HashMap<String, Vec<Viewer>>;

/// How many views may be open at once: in all, in one domain, for one user.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub max: usize,
    pub per_domain: usize,
    pub per_user: usize,
}

#[derive(Default)]
pub struct LiveHub {
    viewers: Mutex<Viewers>,
    /// Viewers now (read without the lock on every message).
    count: AtomicUsize,
    limits: Limits,
    /// Set when the server stops: no new view opens.
    closed: std::sync::atomic::AtomicBool,
    /// Viewers dropped for falling behind.
    pub dropped: AtomicU64,
}

impl LiveHub {
    pub fn new(limits: Limits) -> LiveHub {
        LiveHub {
            limits,
            ..Default::default()
        }
    }

    /// Whether anyone watches (cheap; checked before building messages).
    pub fn watched(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Hands `m` to the viewers of its channel; drops those whose queue is full or gone.
    pub fn publish(&self, m: LiveMessage) {
        let Ok(mut v) = self.viewers.lock() else { return };
        let Some(list) = v.get_mut(&m.channel_id) else { return };
        let m = Arc::new(m);
        let before = list.len();
        list.retain(|v| match v.tx.try_send(m.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::info!(channel = %m.channel_id, "a live viewer fell behind and was dropped");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        let gone = before - list.len();
        if list.is_empty() {
            v.remove(&m.channel_id);
        }
        self.count.fetch_sub(gone, Ordering::Relaxed);
    }

    /// The messages of `batch` whose channel is watched, with their positions (one lock for
    /// the batch; nothing is copied for channels nobody watches).
    fn watched_in(&self, batch: &[broker::Message]) -> Vec<(usize, LiveMessage)> {
        let Ok(v) = self.viewers.lock() else { return Vec::new() };
        batch
            .iter()
            .enumerate()
            .filter(|(_, m)| v.contains_key(&m.channel_id))
            .map(|(i, m)| (i, live_message(m)))
            .collect()
    }
}

impl LiveHub {
    /// Ends every live view (the server stops: their streams end, so the HTTP server can
    /// finish).
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Ok(mut v) = self.viewers.lock() {
            v.clear();
        }
        self.count.store(0, Ordering::Relaxed);
    }
}

impl LivePort for LiveHub {
    /// Viewers are kept by channel id (ids are unique across domains; the caller checked the
    /// channel belongs to `domain`).
    fn watch(&self, domain: &str, user: &str, channel: &str) -> Result<mpsc::Receiver<Arc<LiveMessage>>, ApiError> {
        let mut v = self
            .viewers
            .lock()
            .map_err(|_| ApiError::Internal("live views unavailable".into()))?;
        // Viewers that went away are only noticed on the next message: count them out here.
        let mut closed = 0;
        v.retain(|_, list| {
            let n = list.len();
            list.retain(|v| !v.tx.is_closed());
            closed += n - list.len();
            !list.is_empty()
        });
        self.count.fetch_sub(closed, Ordering::Relaxed);
        if self.closed.load(Ordering::Relaxed) {
            return Err(ApiError::Unavailable("the server is stopping".into()));
        }
        let l = self.limits;
        let (mut in_domain, mut of_user) = (0, 0);
        for w in v.values().flatten() {
            in_domain += usize::from(w.domain == domain);
            of_user += usize::from(w.user == user);
        }
        if of_user >= l.per_user {
            return Err(ApiError::Quota(format!(
                "at most {} live views per user (http.max_live_viewers_per_user); close one first",
                l.per_user
            )));
        }
        if in_domain >= l.per_domain {
            return Err(ApiError::Quota(format!(
                "at most {} live views per domain (http.max_live_viewers_per_domain); close one first",
                l.per_domain
            )));
        }
        if self.count.load(Ordering::Relaxed) >= l.max {
            return Err(ApiError::Unavailable(format!("at most {} live viewers", l.max)));
        }
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE);
        v.entry(channel.to_string()).or_default().push(Viewer {
            tx,
            domain: domain.to_string(),
            user: user.to_string(),
        });
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(rx)
    }
}

fn live_message(m: &broker::Message) -> LiveMessage {
    LiveMessage {
        domain_id: m.domain_id.clone(),
        channel_id: m.channel_id.clone(),
        subtopic: m.subtopic.clone(),
        publisher: m.publisher.clone(),
        protocol: m.transport.protocol(),
        payload: m.payload.clone(),
        received_at: m.received_at,
    }
}

/// The broker's sink with the live views in front: what the pipeline takes from a batch is
/// shown to the viewers of its channel.
pub struct LiveSink {
    pub hub: Arc<LiveHub>,
    pub inner: Arc<dyn broker::MessageSink>,
}

impl broker::MessageSink for LiveSink {
    fn offer(&self, batch: Vec<broker::Message>) -> Vec<broker::Message> {
        if !self.hub.watched() {
            return self.inner.offer(batch);
        }
        let watched = self.hub.watched_in(&batch);
        let n = batch.len();
        let rest = self.inner.offer(batch);
        // What the pipeline took is the batch's front; the rest comes again later.
        let taken = n - rest.len().min(n);
        for (_, m) in watched.into_iter().filter(|(i, _)| *i < taken) {
            self.hub.publish(m);
        }
        rest
    }
    fn room(&self) -> broker::BoxFuture<()> {
        self.inner.room()
    }
    fn take(&self, m: broker::Message, commit: bool) -> Result<broker::BoxFuture<bool>, broker::NotTaken> {
        let live = self.hub.watched().then(|| live_message(&m));
        let stored = self.inner.take(m, commit)?;
        if let Some(l) = live {
            self.hub.publish(l);
        }
        Ok(stored)
    }
    fn committed(&self) -> tokio::sync::oneshot::Receiver<bool> {
        self.inner.committed()
    }
    fn observe(&self, m: broker::Message) {
        if self.hub.watched() {
            self.hub.publish(live_message(&m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u8) -> LiveMessage {
        LiveMessage {
            domain_id: "d".into(),
            channel_id: "h".into(),
            subtopic: String::new(),
            publisher: "c".into(),
            protocol: "mqtt",
            payload: bytes::Bytes::from(vec![i]),
            received_at: 0,
        }
    }

    #[test]
    fn a_slow_viewer_is_dropped_and_others_keep_their_order() {
        let hub = LiveHub::new(limits(10, 10, 10));
        let mut fast = hub.watch("d", "u", "h").expect("fast");
        let slow = hub.watch("d", "u", "h").expect("slow");
        let other = hub.watch("d", "u", "elsewhere").expect("other channel");
        for i in 0..=VIEWER_QUEUE {
            hub.publish(msg(i as u8));
            // The fast viewer keeps up.
            let got = fast.try_recv().expect("delivered");
            assert_eq!(got.payload[0], i as u8);
        }
        assert_eq!(hub.dropped.load(Ordering::Relaxed), 1, "the slow one");
        drop(slow);
        assert!(other.is_empty());
        assert_eq!(hub.count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn viewers_are_capped_and_gone_ones_make_room() {
        let hub = LiveHub::new(limits(1, 1, 1));
        let first = hub.watch("d", "u", "h").expect("first");
        assert!(matches!(hub.watch("e", "v", "h"), Err(ApiError::Unavailable(_))));
        drop(first);
        assert!(hub.watch("d", "u", "h").is_ok(), "a closed viewer frees its place");
        hub.close_all();
        assert!(
            matches!(hub.watch("e", "v", "h"), Err(ApiError::Unavailable(_))),
            "stopping"
        );
    }

    #[test]
    fn a_user_or_a_domain_at_its_share_leaves_room_for_the_others() {
        let hub = LiveHub::new(limits(10, 4, 2));
        let _a = [
            hub.watch("d", "u", "h").expect("1"),
            hub.watch("d", "u", "h").expect("2"),
        ];
        assert!(matches!(hub.watch("d", "u", "h"), Err(ApiError::Quota(_))), "u's share");
        let _b = [
            hub.watch("d", "v", "h").expect("3"),
            hub.watch("d", "v", "h").expect("4"),
        ];
        assert!(matches!(hub.watch("d", "w", "h"), Err(ApiError::Quota(_))), "d's share");
        assert!(hub.watch("e", "x", "i").is_ok(), "another tenant's view opens");
    }

    fn limits(max: usize, per_domain: usize, per_user: usize) -> Limits {
        Limits {
            max,
            per_domain,
            per_user,
        }
    }
}
