//! The brake on password guessing: failed logins are counted per identity and per source
//! address; past a few free failures each further attempt waits an exponentially growing
//! time (HTTP 429 with Retry-After). A braked identity waits whether or not its password is
//! right. A braked address (many users may share one, behind a NAT or a proxy) only slows
//! identities that failed already, or fail now: an identity with no failure on record is
//! still let in with its correct password, so guessing from one address does not lock its
//! other users out. Entries are forgotten a while after the last failure, and the table is
//! bounded.

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

    /// `Err(wait)` when this attempt must wait. `Ok(Some(wait))`: the address is braked but
    /// the identity has no failure on record: check the password, let a correct one in, and
    /// answer a wrong one with this wait. `Ok(None)`: go ahead.
    pub fn check(&self, identity: &str, addr: Option<IpAddr>, now: Instant) -> Result<Option<Duration>, Duration> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = |k: &Key| {
            table
                .get(k)
                .and_then(|e| e.blocked_until)
                .filter(|until| *until > now)
                .map(|until| until - now)
        };
        let id = Key::Identity(identity.trim().to_lowercase());
        let by_identity = waiting(&id);
        let by_address = addr.and_then(|a| waiting(&Key::Address(a)));
        let failed_before = table
            .get(&id)
            .is_some_and(|e| e.failures > 0 && now.duration_since(e.last) < MAX);
        match (by_identity, by_address) {
            (Some(w), _) => Err(self.refuse(w)),
            (None, Some(w)) if failed_before => Err(self.refuse(w)),
            (None, w) => Ok(w),
        }
    }

    fn refuse(&self, wait: Duration) -> Duration {
        self.refused.fetch_add(1, Ordering::Relaxed);
        wait
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
        // Braked, but someone who never failed may still try (a wrong password then waits).
        assert_eq!(g.check("someone-else", Some(a), t0), Ok(Some(BASE)));
        assert_eq!(g.check("user3", Some(a), t0), Err(BASE), "one that failed waits");
        g.failure("someone-else", Some(a), t0);
        assert!(g.check("someone-else", Some(a), t0).is_err(), "and so does it now");
        assert_eq!(
            g.check("someone-else", Some([10, 0, 0, 3].into()), t0),
            Ok(None),
            "elsewhere"
        );
        // Forgotten after the longest back-off.
        assert_eq!(g.check("someone-else", Some(a), t0 + MAX + MAX), Ok(None));
    }
}
