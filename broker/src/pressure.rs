//! Backpressure from reading subscribers to publishers, over the router's log.
//!
//! rumqttd keeps a bounded log per filter (`mqtt.max_segment_count` segments of
//! `mqtt.max_segment_size` bytes), hands each link at most 200 notifications before it pauses
//! that link until the session drains them, and between two turns of handing out appends
//! whatever its publishers sent. A reader whose log runs on past the last segment it has not
//! read is silently moved to the head (counted here as `router_skipped`): a subscriber that
//! reads as fast as it can would lose messages only because it was scheduled late. So
//! publishers are slowed instead, before that can happen:
//!
//! - Messages are counted per **scope** (a channel, or everything outside channels; a
//!   filter's log only holds topics of the scopes it matches). Every message sent to the
//!   router gets a **mark**: the running total of bytes sent to its scope, in the router's
//!   own measure (4 + topic + payload), including it.
//! - A reading session is registered in each scope it received from, at the mark of the last
//!   message it took from there; at the first message of its drain when the router paused
//!   its link (more waits there, maybe from every scope). While its device reads but its
//!   queue holds more than a quarter of its bound, publishers to its topics wait whatever the
//!   marks (a reader of many scopes can fill its queue with little in each).
//! - A publishing session sends its read's messages to the router only while, in each scope
//!   they go to, they end within `limit` bytes of every registered session's mark.
//!   Meanwhile it does not read its device's socket, and it keeps draining its own link (it
//!   may be a reader there itself).
//! - A registration that did not move for `STALE` does not count: a reader that has all the
//!   router holds for it does not move, and one that is behind does move when publishers
//!   wait (they leave the CPU to it).
//!
//! Sessions whose devices do not read are not waited for: their session task drains the
//! link into its own bounded queue regardless (and a full queue or a stall ends it), so only
//! a session that is scheduled late holds publishers back, and only until it is scheduled.

use crate::codec::matches;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A registration that has not moved for this long while publishers waited is moved on by
/// them (by one `limit`).
pub(crate) const STALE: Duration = Duration::from_millis(20);
const SHARDS: usize = 16;

/// The scope of a (canonical) topic: its channel, or "" outside channels.
pub(crate) fn scope(topic: &str) -> &str {
    crate::topic::bucket(topic).unwrap_or("")
}

/// A reader registered in a scope.
struct Reg {
    mark: u64,
    /// When it last moved.
    at: Instant,
    /// Its filters there: only publishers to topics they match wait for it.
    filters: Vec<String>,
    /// Until when (`now_ms`) its queue is over a quarter of its bound while its device reads:
    /// publishers to its filters wait, whatever the marks (shared by all its scopes).
    held_until: Arc<AtomicU64>,
}

/// Milliseconds on a monotonic clock (for `held_until`; never 0).
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// How long a reader's "queue held" lasts unless it says so again (its loop turns do, while
/// its device reads).
const HELD_FOR_MS: u64 = 100;

#[derive(Default)]
struct Scope {
    head: u64,
    readers: HashMap<u64, Reg>,
}

/// Per scope: the running mark and the registered readers (one per broker).
pub(crate) struct Pressure {
    limit: u64,
    stale: Duration,
    shards: Vec<Mutex<HashMap<String, Scope>>>,
    changed: Notify,
}

/// The messages of one read batch to one scope: their topics and the mark of the last.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    scopes: Vec<(String, u64, Vec<String>)>,
}

impl Batch {
    pub(crate) fn add(&mut self, topic: &str, mark: u64) {
        let sc = scope(topic);
        let i = match self.scopes.iter().position(|(s, ..)| s == sc) {
            Some(i) => i,
            None => {
                self.scopes.push((sc.to_string(), 0, Vec::new()));
                self.scopes.len() - 1
            }
        };
        let (_, m, topics) = &mut self.scopes[i];
        *m = mark;
        if !topics.iter().any(|t| t == topic) {
            topics.push(topic.to_string());
        }
    }

    pub(crate) fn clear(&mut self) {
        self.scopes.clear();
    }
}

impl Pressure {
    /// `limit`: how far past a registered reader publishers to its filters may run. Half of
    /// what a log can hold behind a reader ((count − 1) segments), the other half covering
    /// what is sent while a paused session is not yet scheduled to say so.
    pub(crate) fn new(segment_size: usize, segment_count: usize) -> Arc<Pressure> {
        Pressure::with_stale(segment_size, segment_count, STALE)
    }

    fn with_stale(segment_size: usize, segment_count: usize, stale: Duration) -> Arc<Pressure> {
        let behind_reader = (segment_size as u64).saturating_mul(segment_count.saturating_sub(1).max(1) as u64);
        Arc::new(Pressure {
            limit: (behind_reader / 2).max(1),
            stale,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            changed: Notify::new(),
        })
    }

    fn shard(&self, scope: &str) -> &Mutex<HashMap<String, Scope>> {
        let h = scope
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.shards[h % SHARDS]
    }

    /// Runs `f` on a scope (created when missing).
    fn with<T>(&self, scope: &str, f: impl FnOnce(&mut Scope) -> T) -> Option<T> {
        let mut shard = self.shard(scope).lock().ok()?;
        let s = match shard.get_mut(scope) {
            Some(s) => s,
            None => shard.entry(scope.to_string()).or_default(),
        };
        Some(f(s))
    }

    /// The mark of a message of `bytes` (router measure) to `scope`, about to be sent.
    pub(crate) fn mark(&self, scope: &str, bytes: usize) -> u64 {
        self.with(scope, |s| {
            s.head += bytes as u64;
            s.head
        })
        .unwrap_or(0)
    }

    /// Whether a batch may go to the router now: in each of its scopes, no reader whose
    /// filters match its topics is more than `limit` behind its last message. A reader that
    /// did not move for `stale` is moved on by just enough (it has everything, or, if it is
    /// behind, it gets one `limit` of slack per `stale`).
    pub(crate) fn admits(&self, batch: &Batch) -> bool {
        let (limit, stale) = (self.limit, self.stale);
        let now = now_ms();
        batch.scopes.iter().all(|(scope, mark, topics)| {
            self.with(scope, |s| {
                s.readers.values_mut().all(|r| {
                    let reads_it = || r.filters.iter().any(|f| topics.iter().any(|t| matches(f, t)));
                    if r.held_until.load(Ordering::Relaxed) > now && reads_it() {
                        return false;
                    }
                    if *mark <= r.mark.saturating_add(limit) || !reads_it() {
                        return true;
                    }
                    if r.at.elapsed() >= stale {
                        r.mark = mark - limit;
                        r.at = Instant::now();
                        return true;
                    }
                    false
                })
            })
            .unwrap_or(true)
        })
    }

    /// Resolves when a registration moved on or went (create it before checking `admits`).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn recheck(&self) {
        self.changed.notify_waiters();
    }

    /// Registers `session` in `scope` with `filters`, at the scope's head.
    fn register(&self, scope: &str, session: u64, filters: Vec<String>, held_until: &Arc<AtomicU64>) {
        self.with(scope, |s| {
            let mark = s.head;
            match s.readers.get_mut(&session) {
                Some(r) => r.filters = filters,
                None => {
                    s.readers.insert(
                        session,
                        Reg {
                            mark,
                            at: Instant::now(),
                            filters,
                            held_until: held_until.clone(),
                        },
                    );
                }
            }
        });
    }

    fn unregister(&self, scope: &str, session: u64) {
        self.with(scope, |s| s.readers.remove(&session));
        self.recheck();
    }

    /// Moves a registration to `mark`; `touch`: it counts as moving even where it stays.
    /// Returns whether it moved on.
    fn move_to(&self, scope: &str, session: u64, mark: u64, touch: bool) -> bool {
        self.with(scope, |s| {
            let Some(r) = s.readers.get_mut(&session) else {
                return false;
            };
            let on = mark > r.mark;
            if on || touch {
                r.at = Instant::now();
            }
            r.mark = mark;
            on
        })
        .unwrap_or(false)
    }
}

/// A session's registrations as a reader, kept with its subscriptions; all gone when dropped.
pub(crate) struct Reader {
    pressure: Arc<Pressure>,
    session: u64,
    /// The scopes it is registered in, with its filters there.
    scopes: Vec<(String, Vec<String>)>,
    /// Filters whose channel level is a wildcard (they may match any scope).
    wild: Vec<String>,
    /// Until when its queue counts as held (see `Reg::held_until`; 0: not held).
    held_until: Arc<AtomicU64>,
}

/// What one drain of a link brought, per scope: the marks of its first and last message.
#[derive(Default)]
pub(crate) struct Drain {
    scopes: Vec<(String, u64, u64)>,
}

impl Drain {
    pub(crate) fn took(&mut self, topic: &[u8], mark: u64) {
        let scope = scope(std::str::from_utf8(topic).unwrap_or(""));
        match self.scopes.iter_mut().find(|(s, ..)| s == scope) {
            Some(e) => e.2 = mark,
            None => self.scopes.push((scope.to_string(), mark, mark)),
        }
    }
}

impl Reader {
    pub(crate) fn new(pressure: Arc<Pressure>, session: u64) -> Reader {
        Reader {
            pressure,
            session,
            scopes: Vec::new(),
            wild: Vec::new(),
            held_until: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A filter was subscribed: registered in its scope from now on (before any message
    /// for it can be sent).
    pub(crate) fn subscribed(&mut self, filter: &str) {
        let Some(scope) = crate::topic::bucket(filter) else {
            self.wild.push(filter.to_string());
            for (scope, filters) in &mut self.scopes {
                filters.push(filter.to_string());
                self.pressure
                    .register(scope, self.session, filters.clone(), &self.held_until);
            }
            return;
        };
        let i = match self.scopes.iter().position(|(s, ..)| s == scope) {
            Some(i) => i,
            None => {
                self.scopes.push((scope.to_string(), self.wild.clone()));
                self.scopes.len() - 1
            }
        };
        let (scope, filters) = &mut self.scopes[i];
        if !filters.iter().any(|f| f == filter) {
            filters.push(filter.to_string());
        }
        self.pressure
            .register(scope, self.session, filters.clone(), &self.held_until);
    }

    /// A filter was unsubscribed.
    pub(crate) fn unsubscribed(&mut self, filter: &str) {
        self.wild.retain(|f| f != filter);
        let (pressure, session, held_until) = (&self.pressure, self.session, &self.held_until);
        self.scopes.retain_mut(|(scope, filters)| {
            let before = filters.len();
            filters.retain(|f| f != filter);
            if filters.is_empty() {
                pressure.unregister(scope, session);
                return false;
            }
            if filters.len() != before {
                pressure.register(scope, session, filters.clone(), held_until);
            }
            true
        });
    }

    /// Every filter went.
    pub(crate) fn cleared(&mut self) {
        for (scope, _) in self.scopes.drain(..) {
            self.pressure.unregister(&scope, self.session);
        }
        self.wild.clear();
    }

    /// After a drain of the link; `paused` when the router paused the link (more waits,
    /// maybe in every scope: registered at the first message of the drain).
    pub(crate) fn drained(&mut self, paused: bool, d: Drain) {
        let mut moved = false;
        for (scope, first, last) in d.scopes {
            let at = if paused { first } else { last };
            match self.scopes.iter().find(|(s, _)| *s == scope) {
                Some((scope, _)) => moved |= self.pressure.move_to(scope, self.session, at, false),
                // A scope reached through a wildcard filter (or a message of a filter just
                // removed): registered with the wildcard filters.
                None if !self.wild.is_empty() => {
                    self.pressure
                        .register(&scope, self.session, self.wild.clone(), &self.held_until);
                    self.pressure.move_to(&scope, self.session, at, true);
                    self.scopes.push((scope, self.wild.clone()));
                }
                None => {}
            }
        }
        if moved {
            self.pressure.recheck();
        }
    }

    /// Whether the session's queue holds more than a quarter of its bound while its device
    /// reads (said on every turn of its loop): publishers to its filters wait until it is
    /// not, or until it stops saying so for `HELD_FOR_MS` (its device stopped reading).
    pub(crate) fn queue(&mut self, held: bool) {
        let was = self.held_until.load(Ordering::Relaxed) != 0;
        if held {
            self.held_until.store(now_ms() + HELD_FOR_MS, Ordering::Relaxed);
        } else if was {
            self.held_until.store(0, Ordering::Relaxed);
            self.pressure.recheck();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.cleared();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const A: &str = "channels/a/messages";
    const A2: &str = "channels/a/messages/other";
    const B: &str = "channels/b/messages";

    fn drain(topic: &str, first: u64, last: u64) -> Drain {
        let mut d = Drain::default();
        d.took(topic.as_bytes(), first);
        d.took(topic.as_bytes(), last);
        d
    }

    fn batch(topic: &str, mark: u64) -> Batch {
        let mut b = Batch::default();
        b.add(topic, mark);
        b
    }

    fn reader(p: &Arc<Pressure>, session: u64, filter: &str) -> Reader {
        let mut r = Reader::new(p.clone(), session);
        r.subscribed(filter);
        r
    }

    #[test]
    fn publishers_wait_for_the_readers_of_their_topics_only() {
        let p = Pressure::with_stale(1024, 3, HOUR); // 2 KiB behind a reader: 1 KiB limit
        let m = p.mark(scope(A), 100);
        assert_eq!(p.mark(scope(B), 7), 7, "marks count per scope");
        assert!(p.admits(&batch(A, m + 10_000)), "nobody registered: anything goes");
        let mut r1 = reader(&p, 1, A);
        let mut r2 = reader(&p, 2, "channels/a/messages/#");
        assert!(
            !p.admits(&batch(A, m + 1025)),
            "registered at the head when subscribing"
        );
        r1.drained(true, drain(A, m, m));
        r2.drained(false, drain(A, m + 500, m + 500));
        assert!(p.admits(&batch(A, m + 1024)));
        assert!(!p.admits(&batch(A, m + 1025)), "the lowest reader of the topic counts");
        assert!(p.admits(&batch(A2, m + 1524)), "a topic the lowest one does not read");
        assert!(!p.admits(&batch(A2, m + 1525)));
        assert!(p.admits(&batch(B, m + 10_000)), "another scope's publishers go on");
        r1.drained(false, drain(A, m + 600, m + 700));
        assert!(p.admits(&batch(A, m + 1524)));
        assert!(!p.admits(&batch(A, m + 1525)), "now the other one is lowest");
        drop(r2);
        assert!(p.admits(&batch(A, m + 1724)));
        assert!(!p.admits(&batch(A, m + 1725)), "at its last mark, +700");
        r1.unsubscribed(A);
        assert!(p.admits(&batch(A, u64::MAX - 1)), "readers gone hold nobody back");
    }

    #[test]
    fn a_paused_reader_counts_from_the_first_message_of_its_drain_and_a_held_one_holds_all() {
        let p = Pressure::with_stale(1024, 3, HOUR);
        let mut r = reader(&p, 1, A);
        r.drained(true, drain(A, 100, 300));
        assert!(p.admits(&batch(A, 1124)));
        assert!(!p.admits(&batch(A, 1125)), "paused: from the first of its drain");
        r.drained(false, drain(A, 400, 900));
        assert!(p.admits(&batch(A, 1924)), "then where it got to");
        r.queue(true);
        assert!(!p.admits(&batch(A, 901)), "its queue is held: its topics wait");
        assert!(p.admits(&batch(B, 100_000)), "other topics do not");
        r.queue(false);
        assert!(p.admits(&batch(A, 1924)));
    }

    #[test]
    fn a_wildcard_reader_is_registered_in_each_scope_it_hears_from() {
        let p = Pressure::with_stale(1024, 3, HOUR);
        let mut r = reader(&p, 1, "channels/+/messages");
        assert!(
            p.admits(&batch(B, 5000)),
            "not known in a scope before it hears from it"
        );
        r.drained(false, drain(B, 10, 20));
        assert!(!p.admits(&batch(B, 1045)));
        drop(r);
        assert!(p.admits(&batch(B, 5000)));
    }

    #[test]
    fn a_reader_that_does_not_move_is_moved_on_by_one_limit() {
        let p = Pressure::with_stale(1024, 3, Duration::from_millis(1));
        let _r = reader(&p, 1, A);
        std::thread::sleep(Duration::from_millis(2));
        assert!(p.admits(&batch(A, 3000)), "stale: moved on to let this one through");
        assert!(
            !p.admits(&batch(A, 3000 + 1024 + 1)),
            "but by one limit only, until stale again"
        );
    }

    #[tokio::test]
    async fn a_waiting_publisher_is_woken_when_the_reader_moves_on() {
        let p = Pressure::with_stale(1024, 2, HOUR);
        let mut r = reader(&p, 7, A);
        r.drained(true, drain(A, 1, 1));
        let marks = batch(A, p.mark(scope(A), 5000));
        assert!(!p.admits(&marks));
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move {
                loop {
                    let changed = p.changed();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if p.admits(&marks) {
                        return;
                    }
                    changed.await;
                }
            })
        };
        r.drained(false, drain(A, 4000, 4500));
        waiter.await.expect("the publisher goes on");
    }
}
