//! Connection slots shared fairly between sources: the broker's handshake slots
//! (`mqtt.max_pending_connections`) and the HTTP listeners' connections
//! (`http.max_connections`).
//!
//! The slots are one bounded pool, but no single source can keep everyone else out of it:
//! when the pool is full, the oldest connection of the busiest source is shed (closed) to make
//! room for the newcomer, provided that source holds more than its share; when every source
//! is within its share, the newcomer's own source gives up its oldest, and a newcomer from a
//! source with nothing held is refused. A source is an IPv4 address or an IPv6 /64 (one host
//! or one site's prefix).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Where a connection comes from, for fairness: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    pub fn of(peer: SocketAddr) -> Source {
        match peer.ip().to_canonical() {
            IpAddr::V4(a) => Source::V4(u32::from(a)),
            IpAddr::V6(a) => Source::V6((u128::from(a) >> 64) as u64),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Pending connections per source, oldest first: (slot number, how to shed it).
    by_source: HashMap<Source, VecDeque<(u64, oneshot::Sender<()>)>>,
    total: usize,
    next: u64,
}

/// A pool of connection slots, fair between sources.
pub struct FairSlots {
    inner: Mutex<Inner>,
    max: usize,
    per_source: usize,
}

/// What `acquire` decided.
pub enum Admitted {
    /// In, without shedding anyone.
    Free(Slot),
    /// In, after shedding the oldest pending connection of the busiest source.
    Shed(Slot),
    /// Refused: the pool is full and every source is within its share.
    Refused,
}

/// One connection's slot: freed when dropped; `shed()` resolves when the pool takes it back
/// for a newcomer (the connection must then close).
pub struct Slot {
    pool: Arc<FairSlots>,
    source: Source,
    id: u64,
    shed: oneshot::Receiver<()>,
    over_share: bool,
}

impl Slot {
    /// Whether its source held more than its share when this slot was taken (a source that
    /// may deserve less patience).
    pub fn over_share(&self) -> bool {
        self.over_share
    }

    /// Resolves when this connection is shed (never otherwise).
    pub async fn shed(&mut self) {
        let _ = (&mut self.shed).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Ok(mut m) = self.pool.inner.lock() else { return };
        let Some(q) = m.by_source.get_mut(&self.source) else {
            return;
        };
        let Some(at) = q.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        q.remove(at);
        if q.is_empty() {
            m.by_source.remove(&self.source);
        }
        m.total -= 1;
    }
}

impl FairSlots {
    pub fn new(max: usize, per_source: usize) -> Arc<FairSlots> {
        Arc::new(FairSlots {
            inner: Mutex::new(Inner::default()),
            max: max.max(1),
            per_source: per_source.max(1),
        })
    }

    /// A slot for a connection from `peer`, shedding another source's oldest when full.
    pub fn acquire(self: &Arc<Self>, peer: SocketAddr) -> Admitted {
        let source = Source::of(peer);
        let Ok(mut m) = self.inner.lock() else {
            return Admitted::Refused;
        };
        let mut shed = false;
        if m.total >= self.max {
            let own = m.by_source.get(&source).map_or(0, VecDeque::len);
            let busiest = m
                .by_source
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(s, q)| (*s, q.len()));
            let victim = match busiest {
                Some((s, n)) if n > self.per_source => Some(s),
                _ if own > 0 => Some(source),
                _ => None,
            };
            let Some(victim) = victim else { return Admitted::Refused };
            if let Some(q) = m.by_source.get_mut(&victim) {
                if let Some((_, tx)) = q.pop_front() {
                    let _ = tx.send(());
                    shed = true;
                }
                if q.is_empty() {
                    m.by_source.remove(&victim);
                }
            }
            if !shed {
                return Admitted::Refused;
            }
            m.total -= 1;
        }
        let id = m.next;
        m.next += 1;
        let (tx, rx) = oneshot::channel();
        let q = m.by_source.entry(source).or_default();
        q.push_back((id, tx));
        let over_share = q.len() > self.per_source;
        m.total += 1;
        let slot = Slot {
            pool: self.clone(),
            source,
            id,
            shed: rx,
            over_share,
        };
        if shed {
            Admitted::Shed(slot)
        } else {
            Admitted::Free(slot)
        }
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.inner.lock().map(|m| m.total).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 1000)
    }

    fn slot(a: Admitted) -> Option<Slot> {
        match a {
            Admitted::Free(s) | Admitted::Shed(s) => Some(s),
            Admitted::Refused => None,
        }
    }

    #[tokio::test]
    async fn a_flooding_source_gives_way_to_another_and_to_its_own_newcomers() {
        let pool = FairSlots::new(4, 2);
        let mut flood: Vec<Slot> = (0..4).filter_map(|_| slot(pool.acquire(at("10.0.0.1")))).collect();
        assert_eq!(flood.len(), 4, "under the cap anyone gets in");
        let other = slot(pool.acquire(at("10.0.0.2"))).expect("another source gets in");
        assert_eq!(pool.held(), 4);
        // The flood's oldest was shed for it.
        tokio::time::timeout(std::time::Duration::from_secs(1), flood[0].shed())
            .await
            .expect("the oldest is shed");
        // The flood sheds its own oldest remaining one to come in again.
        let again = slot(pool.acquire(at("10.0.0.1"))).expect("own newcomer");
        tokio::time::timeout(std::time::Duration::from_secs(1), flood[1].shed())
            .await
            .expect("its own oldest goes");
        drop(flood);
        assert_eq!(pool.held(), 2, "shed slots are not counted twice when dropped");
        drop((other, again));
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn within_their_shares_a_newcomer_is_refused_and_ipv6_counts_by_64() {
        let pool = FairSlots::new(4, 2);
        let _held: Vec<Slot> = ["10.0.0.1", "10.0.0.1", "2001:db8::1", "2001:db8::2"]
            .iter()
            .filter_map(|ip| slot(pool.acquire(at(ip))))
            .collect();
        assert!(matches!(pool.acquire(at("10.0.0.9")), Admitted::Refused));
        // 2001:db8::3 is in the same /64 as two held ones: its own source, shed for it.
        assert!(matches!(pool.acquire(at("2001:db8::3")), Admitted::Shed(_)));
        let pool = FairSlots::new(10, 2);
        let held: Vec<Slot> = (0..3).filter_map(|_| slot(pool.acquire(at("10.0.0.1")))).collect();
        let over: Vec<bool> = held.iter().map(Slot::over_share).collect();
        assert_eq!(over, [false, false, true], "the third is over a share of 2");
        assert_eq!(Source::of(at("::ffff:10.0.0.1")), Source::of(at("10.0.0.1")));
    }
}
