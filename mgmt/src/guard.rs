//! The brake on password guessing: failed logins are counted per identity and per source
//! address; past a few free failures each further attempt waits an exponentially growing
//! time (HTTP 429 with Retry-After), whether or not its password is right. Entries are
//! forgotten a while after the last failure, and the table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per identity before back-off starts.
pub const FREE_PER_IDENTITY: u32 = 5;
/// Failures allowed per source address (many users may share one address).
pub const FREE_PER_ADDRESS: u32 = 20;
/// The first back-off; it doubles with every further failure.
const BASE: Duration = Duration::from_secs(10);
/// The longest back-off, and how long an entry is remembered after its last failure.
const MAX: Duration = Duration::from_secs(15 * 60);
/// Entries held at most (identities and addresses).
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Identity(String),
    Address(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Default)]
pub struct LoginGuard {
    table: Mutex<HashMap<Key, Entry>>,
    /// Attempts answered 429.
    pub refused: AtomicU64,
    /// Wrong passwords.
    pub failed: AtomicU64,
}

impl LoginGuard {
    fn keys(identity: &str, addr: Option<IpAddr>) -> impl Iterator<Item = (Key, u32)> {
        [
            Some((Key::Identity(identity.trim().to_lowercase()), FREE_PER_IDENTITY)),
            addr.map(|a| (Key::Address(a), FREE_PER_ADDRESS)),
        ]
        .into_iter()
        .flatten()
    }

    /// `Err(wait)` when this identity or address must wait before trying again.
    pub fn check(&self, identity: &str, addr: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let wait = Self::keys(identity, addr)
            .filter_map(|(k, _)| table.get(&k)?.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(w) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(w)
            }
            None => Ok(()),
        }
    }

    /// Records a wrong password.
    pub fn failure(&self, identity: &str, addr: Option<IpAddr>, now: Instant) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_ENTRIES {
            table.retain(|_, e| now.duration_since(e.last) < MAX || e.blocked_until.is_some_and(|u| u > now));
        }
        for (k, free) in Self::keys(identity, addr) {
            if table.len() >= MAX_ENTRIES && !table.contains_key(&k) {
                // Full of recent failures: the entries that exist keep braking.
                continue;
            }
            let e = table.entry(k).or_insert(Entry {
                failures: 0,
                last: now,
                blocked_until: None,
            });
            if now.duration_since(e.last) >= MAX {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            if e.failures >= free {
                let doublings = (e.failures - free).min(16);
                let wait = BASE.saturating_mul(1 << doublings).min(MAX);
                e.blocked_until = Some(now + wait);
            }
        }
    }

    /// A correct password clears the identity's record (not the address's).
    pub fn success(&self, identity: &str) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&Key::Identity(identity.trim().to_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_backs_off_after_five_failures_and_doubles() {
        let g = LoginGuard::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        for _ in 0..FREE_PER_IDENTITY - 1 {
            assert!(g.check("Alice", Some(a), t0).is_ok());
            g.failure("Alice", Some(a), t0);
        }
        assert!(g.check("alice", Some(a), t0).is_ok());
        g.failure("alice", Some(a), t0);
        // The sixth attempt waits, for this identity only.
        assert_eq!(g.check("ALICE ", Some(a), t0), Err(BASE));
        assert!(g.check("bob", Some(a), t0).is_ok());
        // After the wait one more failure doubles it.
        let t1 = t0 + BASE;
        assert!(g.check("alice", Some(a), t1).is_ok());
        g.failure("alice", Some(a), t1);
        assert_eq!(g.check("alice", None, t1), Err(BASE * 2));
        // A success clears the identity.
        g.success("alice");
        assert!(g.check("alice", None, t1).is_ok());
        assert_eq!(g.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_address_backs_off_across_identities() {
        let g = LoginGuard::default();
        let a: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        for i in 0..FREE_PER_ADDRESS {
            g.failure(&format!("user{i}"), Some(a), t0);
        }
        assert!(g.check("someone-else", Some(a), t0).is_err());
        assert!(g.check("someone-else", Some([10, 0, 0, 3].into()), t0).is_ok());
        // Forgotten after the longest back-off.
        assert!(g.check("someone-else", Some(a), t0 + MAX + MAX).is_ok());
    }
}
