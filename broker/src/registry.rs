//! Sessions by router client id (one session task per id: a new connection with the same id
//! is handed to it, which is how takeover and resumption happen without two links ever
//! sharing an id) and by registry client (so revocations reach live and offline sessions).

use crate::reason;
use crate::Identity;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::mpsc;

/// A change from the store's change feed, as the broker needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The client was disabled, deleted or given a new secret: end its sessions.
    Client { domain_id: String, client_id: String },
    /// The domain was disabled or frozen: end every session in it.
    Domain { domain_id: String },
    /// Rights may have changed: forget cached rights of the matching sessions (`None`
    /// matches any client or channel); they are looked up again on next use.
    Rights {
        domain_id: String,
        client_id: Option<String>,
        channel_id: Option<String>,
    },
    /// A client certificate was revoked: end the sessions that logged in with it.
    Cert { serial: String },
    /// Some changes may have been missed: every session forgets all cached rights.
    Everything,
    /// The server is stopping: every connection gets DISCONNECT 0x8B (v5) and every session
    /// task ends; persistent sessions stay in the session store for the next start.
    ShutDown,
}

/// A message to one session task.
pub(crate) enum Control {
    /// A new connection for this session (takeover or resumption).
    Attach(Box<crate::connect::Attach>),
    /// End the session (its connection gets DISCONNECT with this v5 reason); no will.
    Close(u8),
    /// The server stops: end the task, keeping a persistent session stored.
    ShutDown,
    /// Forget cached rights (of one channel, or all).
    Invalidate(Option<String>),
    /// A message for a restored session that has no router link yet (its entry is written).
    Deliver(Box<crate::outbound::Delivery>),
    /// Cluster mode: a message of the shared subscription (its whole `$share/…` filter)
    /// this session was picked for; offered to another member here if it left meanwhile.
    Shared(Box<crate::outbound::Delivery>, String),
    /// Live copies of messages may have been missed (a NATS gap, messages the router could
    /// not take): a persistent session reads its stored queue again.
    CatchUp,
    /// The stored queue a catch-up read (see `session::recover`).
    Recovered(Vec<crate::StoredDelivery>),
}

struct Entry {
    gen: u64,
    tx: mpsc::UnboundedSender<Control>,
    identity: Option<Identity>,
    serial: Option<String>,
    persistent: bool,
    offline_since: Option<Instant>,
    /// Cluster mode: this node's newest claim on the key (0: none).
    claim: u64,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<String, Entry>,
    by_identity: HashMap<Identity, HashSet<String>>,
    /// The server stops: no new session is registered (a connection that arrives is closed).
    closing: bool,
    /// Cluster mode: newer claims other nodes made on keys not registered here when they
    /// were heard (a CONNECT of this node may be between its own claim and its attach):
    /// such a connection is ended as taken over as soon as it attaches.
    elsewhere: HashMap<String, (u64, Instant)>,
}

/// Claims heard from other nodes are kept this long for connections still attaching.
const ELSEWHERE_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// At most this many of them (older ones go first).
const ELSEWHERE_MAX: usize = 65_536;

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    next: AtomicU64,
    /// Woken when the last session leaves.
    emptied: tokio::sync::Notify,
}

/// The outcome of handing a connection to its session.
pub(crate) enum Handed {
    /// An existing session task took it.
    Existing,
    /// No session with this id: a new one must be started with this generation and channel.
    New(u64, mpsc::UnboundedReceiver<Control>, Box<crate::connect::Attach>),
}

impl Registry {
    /// Hands a connection to the session of `key`, or registers a new session for it.
    /// `claim` is the connection's cluster claim on the key (0 outside a cluster).
    pub fn attach(&self, key: &str, identity: Option<&Identity>, a: Box<crate::connect::Attach>, claim: u64) -> Handed {
        let Ok(mut m) = self.inner.lock() else {
            return Handed::Existing;
        };
        if m.closing {
            return Handed::Existing;
        }
        // A newer claim elsewhere was heard before this connection attached: it was taken over.
        let superseded = match m.elsewhere.get(key) {
            Some((c, _)) if claim > 0 && *c > claim => true,
            Some(_) => {
                m.elsewhere.remove(key);
                false
            }
            None => false,
        };
        let a = match m.by_key.get_mut(key) {
            Some(e) => match e.tx.send(Control::Attach(a)) {
                Ok(()) => {
                    e.claim = e.claim.max(claim);
                    if superseded {
                        let _ = e.tx.send(Control::Close(reason::ended::TAKEN_OVER));
                    }
                    return Handed::Existing;
                }
                Err(mpsc::error::SendError(Control::Attach(a))) => a,
                Err(_) => return Handed::Existing,
            },
            None => a,
        };
        let (gen, rx) = Self::insert(&self.next, &mut m, key, identity);
        if let Some(e) = m.by_key.get_mut(key) {
            e.claim = claim;
            if superseded {
                let _ = e.tx.send(Control::Close(reason::ended::TAKEN_OVER));
            }
        }
        Handed::New(gen, rx, a)
    }

    /// Cluster mode: another node claimed `key` with claim number `claim`. A session here
    /// with an older claim ends (DISCONNECT 0x8E, no will) and is forgotten: the device is
    /// served there now. True when one ended.
    pub fn claimed_elsewhere(&self, key: &str, claim: u64) -> bool {
        let Ok(mut m) = self.inner.lock() else { return false };
        match m.by_key.get(key) {
            Some(e) if e.claim < claim => e.tx.send(Control::Close(reason::ended::TAKEN_OVER)).is_ok(),
            Some(_) => false,
            None => {
                let now = Instant::now();
                if m.elsewhere.len() >= ELSEWHERE_MAX {
                    m.elsewhere.retain(|_, (_, at)| now.duration_since(*at) < ELSEWHERE_FOR);
                    if m.elsewhere.len() >= ELSEWHERE_MAX {
                        m.elsewhere.clear();
                    }
                }
                let e = m.elsewhere.entry(key.to_string()).or_insert((claim, now));
                if e.0 < claim {
                    *e = (claim, now);
                }
                false
            }
        }
    }

    /// Registers a session restored from the store (no connection yet).
    pub fn register(&self, key: &str, identity: Option<&Identity>) -> Option<(u64, mpsc::UnboundedReceiver<Control>)> {
        let mut m = self.inner.lock().ok()?;
        if m.closing || m.by_key.contains_key(key) {
            return None;
        }
        Some(Self::insert(&self.next, &mut m, key, identity))
    }

    fn insert(
        next: &AtomicU64,
        m: &mut Inner,
        key: &str,
        identity: Option<&Identity>,
    ) -> (u64, mpsc::UnboundedReceiver<Control>) {
        let gen = next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        // Replaces an entry whose task ended without deregistering, if any.
        m.by_key.insert(
            key.to_string(),
            Entry {
                gen,
                tx,
                identity: identity.cloned(),
                serial: None,
                persistent: false,
                offline_since: None,
                claim: 0,
            },
        );
        if let Some(id) = identity {
            m.by_identity.entry(id.clone()).or_default().insert(key.to_string());
        }
        (gen, rx)
    }

    /// Records what revocations and limits need to know about a session's current state.
    pub fn update(&self, key: &str, gen: u64, serial: Option<String>, persistent: bool, offline: bool) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some(e) = m.by_key.get_mut(key).filter(|e| e.gen == gen) {
                e.serial = serial;
                e.persistent = persistent;
                e.offline_since = if offline { Some(Instant::now()) } else { None };
            }
        }
    }

    /// Makes room for one more persistent session of `who` (not counting `except`): ends the
    /// longest-offline one when the client holds `max` already. False when all are live.
    ///
    /// Exact under concurrent connects: in the same critical section `except` is counted as
    /// persistent from now on (its slot is reserved before its CONNACK), and the session told
    /// to end is no longer counted, so two connects never both take the last slot or both
    /// end the same offline session.
    pub fn make_room(&self, who: &Identity, except: &str, max: usize) -> bool {
        let Ok(mut m) = self.inner.lock() else { return false };
        let keys: Vec<String> = match m.by_identity.get(who) {
            Some(keys) => keys.iter().filter(|k| k.as_str() != except).cloned().collect(),
            None => Vec::new(),
        };
        let persistent: Vec<(&String, Option<Instant>)> = keys
            .iter()
            .filter_map(|k| m.by_key.get(k).filter(|e| e.persistent).map(|e| (k, e.offline_since)))
            .collect();
        if persistent.len() >= max {
            let oldest = persistent
                .iter()
                .filter_map(|(k, off)| off.map(|t| (*k, t)))
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { return false };
            if let Some(e) = m.by_key.get_mut(&oldest) {
                tracing::info!(domain = %who.domain_id, client = %who.client_id, "persistent session limit: ending the longest-offline session");
                let _ = e.tx.send(Control::Close(reason::ended::SESSION_LIMIT));
                e.persistent = false;
                e.offline_since = None;
            }
        }
        if let Some(e) = m.by_key.get_mut(except) {
            e.persistent = true;
        }
        true
    }

    /// Removes a session (only the generation that registered it).
    pub fn remove(&self, key: &str, gen: u64) {
        let Ok(mut m) = self.inner.lock() else { return };
        if m.by_key.get(key).is_some_and(|e| e.gen == gen) {
            if let Some(e) = m.by_key.remove(key) {
                if let Some(id) = e.identity {
                    if let Some(set) = m.by_identity.get_mut(&id) {
                        set.remove(key);
                        if set.is_empty() {
                            m.by_identity.remove(&id);
                        }
                    }
                }
            }
            if m.by_key.is_empty() {
                self.emptied.notify_waiters();
            }
        }
    }

    /// Resolves once no session is registered.
    pub async fn empty(&self) {
        loop {
            let woken = self.emptied.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Sends to one session.
    pub fn send(&self, key: &str, c: Control) {
        if let Ok(m) = self.inner.lock() {
            if let Some(e) = m.by_key.get(key) {
                let _ = e.tx.send(c);
            }
        }
    }

    /// Sends to one session if it is still generation `gen` (not a later session with the
    /// same key).
    pub fn send_gen(&self, key: &str, gen: u64, c: Control) {
        if let Ok(m) = self.inner.lock() {
            if let Some(e) = m.by_key.get(key).filter(|e| e.gen == gen) {
                let _ = e.tx.send(c);
            }
        }
    }

    /// Sends to every session.
    pub fn send_all(&self, c: impl Fn() -> Control) {
        if let Ok(m) = self.inner.lock() {
            for e in m.by_key.values() {
                let _ = e.tx.send(c());
            }
        }
    }

    /// Whether a session is registered under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.inner.lock().is_ok_and(|m| m.by_key.contains_key(key))
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.by_key.len()).unwrap_or(0)
    }

    pub fn apply(&self, r: Revocation) {
        let Ok(mut m) = self.inner.lock() else { return };
        if matches!(r, Revocation::ShutDown) {
            m.closing = true;
        }
        let m = m;
        let send = |keys: &HashSet<String>, c: &dyn Fn() -> Control| {
            for k in keys {
                if let Some(e) = m.by_key.get(k) {
                    let _ = e.tx.send(c());
                }
            }
        };
        match r {
            Revocation::Client { domain_id, client_id } => {
                let who = Identity { domain_id, client_id };
                if let Some(keys) = m.by_identity.get(&who) {
                    tracing::info!(domain = %who.domain_id, client = %who.client_id, sessions = keys.len(), "ending sessions of revoked client");
                    send(keys, &|| Control::Close(reason::ended::REVOKED));
                }
            }
            Revocation::Domain { domain_id } => {
                tracing::info!(domain = %domain_id, "ending sessions of disabled domain");
                for (id, keys) in &m.by_identity {
                    if id.domain_id == domain_id {
                        send(keys, &|| Control::Close(reason::ended::REVOKED));
                    }
                }
            }
            Revocation::Cert { serial } => {
                for e in m.by_key.values() {
                    if e.serial.as_deref() == Some(serial.as_str()) {
                        tracing::info!(serial = %serial, "ending a session of a revoked certificate");
                        let _ = e.tx.send(Control::Close(reason::ended::REVOKED));
                    }
                }
            }
            Revocation::ShutDown => {
                tracing::info!(sessions = m.by_key.len(), "closing every session: the server stops");
                for e in m.by_key.values() {
                    let _ = e.tx.send(Control::ShutDown);
                }
            }
            Revocation::Everything => {
                for e in m.by_key.values() {
                    let _ = e.tx.send(Control::Invalidate(None));
                }
            }
            Revocation::Rights {
                domain_id,
                client_id,
                channel_id,
            } => {
                for (id, keys) in &m.by_identity {
                    if id.domain_id == domain_id && client_id.as_ref().is_none_or(|c| *c == id.client_id) {
                        send(keys, &|| Control::Invalidate(channel_id.clone()));
                    }
                }
            }
        }
    }
}

/// The key of a session (registry, session store): an injective encoding of (domain,
/// registry client, MQTT client id). Each part is escaped so that it holds neither `:` nor any character the
/// router refuses (`+ $ # /`), then the parts are joined with `:`; anonymous sessions use a
/// different prefix. Two different triples never give the same id.
pub(crate) fn session_key(domain_and_client: Option<(&str, &str)>, mqtt_client_id: &str) -> String {
    fn esc(out: &mut String, s: &str) {
        for c in s.chars() {
            match c {
                '%' | ':' | '+' | '$' | '#' | '/' => {
                    out.push('%');
                    out.push_str(&format!("{:02X}", c as u32));
                }
                c => out.push(c),
            }
        }
    }
    let mut out = String::with_capacity(mqtt_client_id.len() + 80);
    match domain_and_client {
        Some((d, c)) => {
            out.push_str("c:");
            esc(&mut out, d);
            out.push(':');
            esc(&mut out, c);
        }
        None => out.push('a'),
    }
    out.push(':');
    esc(&mut out, mqtt_client_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(d: &str, c: &str) -> Identity {
        Identity {
            domain_id: d.into(),
            client_id: c.into(),
        }
    }

    /// The controls a session received so far, as (kind, code) pairs.
    fn got(rx: &mut mpsc::UnboundedReceiver<Control>) -> Vec<(&'static str, u8)> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(match c {
                Control::Close(code) => ("close", code),
                Control::ShutDown => ("shutdown", 0),
                Control::Invalidate(None) => ("invalidate-all", 0),
                Control::Invalidate(Some(_)) => ("invalidate", 0),
                Control::Attach(_) => ("attach", 0),
                Control::Deliver(_) => ("deliver", 0),
                Control::Shared(..) => ("shared", 0),
                Control::CatchUp => ("catch-up", 0),
                Control::Recovered(_) => ("recovered", 0),
            });
        }
        out
    }

    #[test]
    fn revocations_reach_exactly_the_sessions_they_name() {
        let r = Registry::default();
        let (a, b, other) = (who("d", "a"), who("d", "b"), who("e", "a"));
        let (ga, mut ra) = r.register("ka", Some(&a)).expect("a");
        let (_, mut rb) = r.register("kb", Some(&b)).expect("b");
        let (_, mut ro) = r.register("ko", Some(&other)).expect("other");
        assert!(r.register("ka", Some(&a)).is_none(), "one task per key");
        r.update("ka", ga, Some("serial-1".into()), false, false);
        r.apply(Revocation::Client {
            domain_id: "d".into(),
            client_id: "a".into(),
        });
        assert_eq!(got(&mut ra), vec![("close", reason::ended::REVOKED)]);
        assert!(got(&mut rb).is_empty() && got(&mut ro).is_empty());
        r.apply(Revocation::Cert {
            serial: "serial-1".into(),
        });
        assert_eq!(got(&mut ra), vec![("close", reason::ended::REVOKED)]);
        r.apply(Revocation::Rights {
            domain_id: "d".into(),
            client_id: None,
            channel_id: Some("h".into()),
        });
        assert_eq!((got(&mut ra).len(), got(&mut rb).len(), got(&mut ro).len()), (1, 1, 0));
        r.apply(Revocation::Domain { domain_id: "e".into() });
        assert_eq!(got(&mut ro), vec![("close", reason::ended::REVOKED)]);
        assert!(got(&mut rb).is_empty());
        r.apply(Revocation::ShutDown);
        assert_eq!(got(&mut rb), vec![("shutdown", 0)]);
        assert!(r.register("new", None).is_none(), "nothing new while closing");
    }

    #[test]
    fn the_session_limit_ends_the_longest_offline_one_or_refuses() {
        let r = Registry::default();
        let a = who("d", "a");
        let (g1, mut r1) = r.register("k1", Some(&a)).expect("1");
        let (g2, mut r2) = r.register("k2", Some(&a)).expect("2");
        r.update("k1", g1, None, true, true);
        // Distinct offline times (Instant may not advance between two calls).
        std::thread::sleep(std::time::Duration::from_millis(2));
        r.update("k2", g2, None, true, true);
        assert!(r.make_room(&a, "k3", 3), "under the limit");
        assert!(r.make_room(&a, "k3", 2), "at the limit: one offline session goes");
        assert_eq!(got(&mut r1), vec![("close", reason::ended::SESSION_LIMIT)], "the older");
        assert!(got(&mut r2).is_empty());
        r.update("k1", g1, None, true, false);
        r.update("k2", g2, None, true, false);
        assert!(!r.make_room(&a, "k3", 2), "all live: refused");
        r.remove("k1", g1 + 100);
        assert_eq!(r.len(), 2, "another generation's removal is ignored");
        r.remove("k1", g1);
        r.remove("k2", g2);
        assert_eq!(r.len(), 0);
    }

    /// Two connects racing for the last slot: the first takes it (reserved at once, before
    /// its session is saved), the second is refused; two connects at the limit end two
    /// different offline sessions, never the same one twice.
    #[test]
    fn the_session_limit_is_exact_for_concurrent_connects() {
        let r = Registry::default();
        let a = who("d", "a");
        let (g1, mut r1) = r.register("k1", Some(&a)).expect("1");
        let (_g3, _r3) = r.register("k3", Some(&a)).expect("3");
        let (_g4, _r4) = r.register("k4", Some(&a)).expect("4");
        r.update("k1", g1, None, true, false);
        assert!(r.make_room(&a, "k3", 2), "the last slot");
        assert!(!r.make_room(&a, "k4", 2), "k3 holds it already: refused");
        r.update("k1", g1, None, true, true);
        let (g2, mut r2) = r.register("k2", Some(&a)).expect("2");
        std::thread::sleep(std::time::Duration::from_millis(2));
        r.update("k2", g2, None, true, true);
        // k1, k2 offline and k3 live: 3 persistent; the limit is 3.
        assert!(r.make_room(&a, "k4", 3), "k1 goes");
        let (_g5, _r5) = r.register("k5", Some(&a)).expect("5");
        assert!(r.make_room(&a, "k5", 3), "k2 goes, not k1 again");
        assert_eq!(got(&mut r1), vec![("close", reason::ended::SESSION_LIMIT)]);
        assert_eq!(got(&mut r2), vec![("close", reason::ended::SESSION_LIMIT)]);
        let (_g6, _r6) = r.register("k6", Some(&a)).expect("6");
        assert!(!r.make_room(&a, "k6", 3), "k3, k4, k5 hold the three slots");
    }

    #[test]
    fn session_keys_are_injective() {
        let cases = [
            (Some(("d", "c")), "a:b"),
            (Some(("d", "c:a")), "b"),
            (Some(("d:c", "a")), "b"),
            (None, "c:d:c:a:b"),
            (Some(("d", "c")), "a%3Ab"),
            (Some(("d", "c")), "x/+#$"),
        ];
        let ids: Vec<String> = cases.iter().map(|(dc, m)| session_key(*dc, m)).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        for id in &ids {
            assert!(!id.contains(['+', '$', '#', '/']), "{id}");
        }
    }
}
