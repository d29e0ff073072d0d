//! A session's outbound side: the queue of deliveries waiting for the device, and the QoS 1/2
//! deliveries in flight (sent, not yet acknowledged), with packet ids assigned here. Bounded
//! in bytes and messages: when full, QoS 0 messages go first; a QoS 1/2 message that still
//! does not fit is refused and the caller decides (a live clean session is disconnected, an
//! offline persistent one drops it, counted). The queue survives reconnects of persistent
//! sessions, and what is in flight is sent again on reconnect (DUP set, PUBREL for QoS 2
//! deliveries that reached PUBREC).

use crate::codec::{self, OutPublish};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub topic: Bytes,
    pub payload: Bytes,
    pub props: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub expires_at_ms: u64,
    pub sub_ids: Vec<u32>,
    /// The persistent queue entry this delivery is (0: none).
    pub msg: u64,
}

impl Delivery {
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + self.props.len() + 64
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    /// Encodes it; the Message Expiry Interval is what remains of it.
    pub fn encode(&self, out: &mut BytesMut, pkid: u16, dup: bool, v5: bool, now_ms: u64, alias: Alias) {
        codec::encode_publish(out, &self.out(pkid, dup, now_ms, alias), v5);
    }

    /// Its encoded size with the topic spelled out (the most it takes).
    pub fn encoded_len(&self, v5: bool, now_ms: u64) -> usize {
        codec::publish_len(&self.out(1, false, now_ms, Alias::No), v5)
    }

    fn out(&self, pkid: u16, dup: bool, now_ms: u64, alias: Alias) -> OutPublish<'_> {
        OutPublish {
            qos: self.qos,
            retain: self.retain,
            dup,
            topic: if matches!(alias, Alias::Use(_)) {
                &[]
            } else {
                &self.topic
            },
            alias: match alias {
                Alias::No => None,
                Alias::Set(a) | Alias::Use(a) => Some(a),
            },
            pkid,
            props: &self.props,
            expiry: (self.expires_at_ms != 0)
                .then(|| (self.expires_at_ms.saturating_sub(now_ms)).div_ceil(1000).max(1) as u32),
            sub_ids: &self.sub_ids,
            payload: &self.payload,
        }
    }
}

/// A v5 Topic Alias for a delivery: none, set with the topic, or standing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alias {
    No,
    Set(u16),
    Use(u16),
}

/// The topic aliases a connection gave the device (at most its Topic Alias Maximum; the first
/// topics delivered keep theirs for the connection's life).
#[derive(Debug, Default)]
pub(crate) struct Aliases {
    by_topic: std::collections::HashMap<Bytes, u16>,
}

impl Aliases {
    /// The alias to send `topic` with, for a device that takes `max`.
    pub fn of(&mut self, topic: &Bytes, max: u16) -> Alias {
        if max == 0 || topic.is_empty() {
            return Alias::No;
        }
        if let Some(a) = self.by_topic.get(topic) {
            return Alias::Use(*a);
        }
        if self.by_topic.len() >= max as usize {
            return Alias::No;
        }
        let a = self.by_topic.len() as u16 + 1;
        self.by_topic.insert(topic.clone(), a);
        Alias::Set(a)
    }
}

#[derive(Debug)]
enum State {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(Delivery),
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP (with its queue entry, if any).
    Released(u64, usize),
}

/// What happened to a delivery offered to the queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    Queued,
    /// A QoS 0 message that did not fit.
    DroppedQos0,
    /// A QoS 1/2 message that did not fit even after dropping every queued QoS 0 message.
    Full,
}

pub(crate) struct Outbound {
    queue: VecDeque<Delivery>,
    bytes: usize,
    inflight: VecDeque<(u16, State)>,
    next_pkid: u16,
    max_bytes: usize,
    max_messages: usize,
    /// QoS 0 messages evicted to make room (counted by the caller).
    pub evicted_qos0: u64,
    /// Acknowledgements taken (see `acks`).
    acks: u64,
    /// QoS 1/2 messages evicted (oldest first) to make room in a persistent session.
    pub evicted_full: u64,
    /// Persistent queue entries that left (acknowledged or dropped), with their size.
    pub gone: Vec<(u64, usize)>,
    /// Persistent queue entries whose state changed: (entry, state, packet id).
    pub marks: Vec<(u64, u8, u16)>,
}

impl Outbound {
    pub fn new(max_bytes: usize, max_messages: usize) -> Outbound {
        Outbound {
            queue: VecDeque::new(),
            bytes: 0,
            inflight: VecDeque::new(),
            next_pkid: 0,
            max_bytes,
            max_messages,
            evicted_qos0: 0,
            acks: 0,
            evicted_full: 0,
            gone: Vec::new(),
            marks: Vec::new(),
        }
    }

    fn fits(&self, size: usize) -> bool {
        self.queue.len() < self.max_messages && self.bytes + size <= self.max_bytes
    }

    /// Queues a delivery. With `evict_oldest` (persistent sessions), a QoS 1/2 message that
    /// does not fit after the QoS 0 ones went makes room by dropping the oldest queued ones.
    pub fn push(&mut self, d: Delivery, evict_oldest: bool) -> Push {
        let size = d.size();
        if !self.fits(size) {
            if d.qos == 0 {
                return Push::DroppedQos0;
            }
            let before = self.queue.len();
            let mut freed = 0;
            self.queue.retain(|q| {
                if q.qos == 0 {
                    freed += q.size();
                    false
                } else {
                    true
                }
            });
            self.evicted_qos0 += (before - self.queue.len()) as u64;
            self.bytes -= freed;
            while evict_oldest && !self.fits(size) {
                let Some(old) = self.queue.pop_front() else { break };
                self.bytes -= old.size();
                self.evicted_full += 1;
                self.leave(&old);
            }
            if !self.fits(size) {
                return Push::Full;
            }
        }
        self.bytes += size;
        self.queue.push_back(d);
        Push::Queued
    }

    fn leave(&mut self, d: &Delivery) {
        if d.msg != 0 {
            self.gone.push((d.msg, d.size()));
        }
    }

    /// Puts back a stored session's entries, in their order, as `(state, packet id,
    /// delivery)`. Entries leave the queue in order, so every entry up to the last one
    /// recorded in flight (`SENT` or `RELEASED`; only QoS 2 sends are recorded) had been sent:
    /// all of them go back in flight in that order, the recorded ones with their packet ids
    /// (QoS 2 stays exactly once), the QoS 1 ones among them with fresh ids; the rest is
    /// queued. A resumed device thus gets everything in the order it was published
    /// [MQTT-4.6.0-1].
    pub fn restore(&mut self, entries: Vec<(u8, u16, Delivery)>) {
        let recorded = |e: &(u8, u16, Delivery)| e.0 != 0 && e.1 != 0 && e.2.qos == 2;
        let last = entries.iter().rposition(recorded);
        let reserved: Vec<u16> = entries.iter().filter(|e| recorded(e)).map(|e| e.1).collect();
        for (i, e) in entries.into_iter().enumerate() {
            let (state, pkid, d) = e;
            let was_sent = last.is_some_and(|l| i <= l) && d.qos > 0;
            if !was_sent {
                let _ = self.push(d, true);
                continue;
            }
            let own = state != 0 && pkid != 0 && d.qos == 2 && !self.pkid_in_use(pkid);
            let p = if own {
                pkid
            } else {
                let mut p = self.next_pkid;
                loop {
                    p = p.wrapping_add(1).max(1);
                    if !self.pkid_in_use(p) && !reserved.contains(&p) {
                        break p;
                    }
                }
            };
            if !own && d.qos == 2 && d.msg != 0 {
                self.marks.push((d.msg, crate::durable::SENT, p));
            }
            let st = if own && state == crate::durable::RELEASED {
                State::Released(d.msg, d.size())
            } else {
                State::Sent(d)
            };
            self.inflight.push_back((p, st));
            self.next_pkid = self.next_pkid.max(p);
        }
    }

    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Takes the queued (not yet sent) deliveries `which` selects out of the queue, in order;
    /// their store entries leave (`gone`).
    pub fn take_queued(&mut self, mut which: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for d in std::mem::take(&mut self.queue) {
            if which(&d) {
                self.bytes -= d.size();
                self.leave(&d);
                taken.push(d);
            } else {
                kept.push_back(d);
            }
        }
        self.queue = kept;
        taken
    }

    /// The store entries the queue holds, queued or in flight.
    pub fn entries(&self) -> std::collections::HashSet<u64> {
        let queued = self.queue.iter().map(|d| d.msg);
        let inflight = self.inflight.iter().map(|(_, s)| match s {
            State::Sent(d) => d.msg,
            State::Released(msg, _) => *msg,
        });
        queued.chain(inflight).filter(|m| *m != 0).collect()
    }

    /// More than a quarter of the queue's bound (bytes or messages) is taken.
    pub fn over_quarter(&self) -> bool {
        self.bytes > self.max_bytes / 4 || self.queue.len() > self.max_messages / 4
    }

    /// Deliveries wait for the device: sent and not acknowledged yet.
    pub fn unacknowledged(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Acknowledgements taken so far (PUBACK, PUBREC, PUBCOMP): progress of the device.
    pub fn acks(&self) -> u64 {
        self.acks
    }

    fn pkid_in_use(&self, p: u16) -> bool {
        self.inflight.iter().any(|(id, _)| *id == p)
    }

    /// Takes the next delivery that may be sent now (QoS 1/2 only while fewer than
    /// `receive_max` are in flight), assigning its packet id. Expired messages are dropped
    /// (returned in the count).
    pub fn next(&mut self, receive_max: usize, now_ms: u64, expired: &mut u64) -> Option<(u16, Delivery)> {
        loop {
            let front = self.queue.front()?;
            if front.expired(now_ms) {
                if let Some(d) = self.queue.pop_front() {
                    self.bytes -= d.size();
                    self.leave(&d);
                }
                *expired += 1;
                continue;
            }
            if front.qos > 0 && self.inflight.len() >= receive_max.min(65_535) {
                return None;
            }
            let d = self.queue.pop_front()?;
            self.bytes -= d.size();
            if d.qos == 0 {
                return Some((0, d));
            }
            let mut p = self.next_pkid;
            loop {
                p = p.wrapping_add(1).max(1);
                if !self.pkid_in_use(p) {
                    break;
                }
            }
            self.next_pkid = p;
            if d.qos == 2 && d.msg != 0 {
                self.marks.push((d.msg, crate::durable::SENT, p));
            }
            self.inflight.push_back((p, State::Sent(d.clone())));
            return Some((p, d));
        }
    }

    fn position(&self, pkid: u16) -> Option<usize> {
        // Acknowledgements usually come in order: the front is checked first.
        match self.inflight.front() {
            Some((p, _)) if *p == pkid => Some(0),
            _ => self.inflight.iter().position(|(p, _)| *p == pkid),
        }
    }

    /// PUBACK: true when it acknowledged a QoS 1 delivery in flight.
    pub fn puback(&mut self, pkid: u16) -> bool {
        self.acks += 1;
        match self.position(pkid) {
            Some(i) if matches!(&self.inflight[i].1, State::Sent(d) if d.qos == 1) => {
                if let Some((_, State::Sent(d))) = self.inflight.remove(i) {
                    self.leave(&d);
                }
                true
            }
            _ => false,
        }
    }

    /// PUBREC: true when a PUBREL must be sent. A v5 error reason ends the delivery.
    pub fn pubrec(&mut self, pkid: u16, reason: u8) -> bool {
        self.acks += 1;
        match self.position(pkid) {
            Some(i) if matches!(&self.inflight[i].1, State::Sent(d) if d.qos == 2) => {
                if reason >= 0x80 {
                    if let Some((_, State::Sent(d))) = self.inflight.remove(i) {
                        self.leave(&d);
                    }
                    return false;
                }
                let (msg, size) = match &self.inflight[i].1 {
                    State::Sent(d) => (d.msg, d.size()),
                    State::Released(m, n) => (*m, *n),
                };
                if msg != 0 {
                    self.marks.push((msg, crate::durable::RELEASED, pkid));
                }
                self.inflight[i].1 = State::Released(msg, size);
                true
            }
            // A repeated PUBREC for a released id is answered again.
            Some(i) => matches!(self.inflight[i].1, State::Released(..)),
            None => false,
        }
    }

    pub fn pubcomp(&mut self, pkid: u16) -> bool {
        self.acks += 1;
        match self.position(pkid) {
            Some(i) if matches!(self.inflight[i].1, State::Released(..)) => {
                if let Some((_, State::Released(m, n))) = self.inflight.remove(i) {
                    if m != 0 {
                        self.gone.push((m, n));
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Forgets a delivery in flight that will not be sent after all.
    pub fn abandon(&mut self, pkid: u16) {
        if let Some(i) = self.position(pkid) {
            if let Some((_, State::Sent(d))) = self.inflight.remove(i) {
                self.leave(&d);
            }
        }
    }

    /// Everything in flight again, in order, for a resumed session [MQTT-4.4.0-1].
    pub fn resend(&self, out: &mut BytesMut, v5: bool, now_ms: u64) {
        for (p, s) in &self.inflight {
            match s {
                State::Sent(d) => d.encode(out, *p, true, v5, now_ms, Alias::No),
                State::Released(..) => out.extend_from_slice(&codec::encode_ack(codec::PUBREL, *p, None)),
            }
        }
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.inflight.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(qos: u8, n: usize) -> Delivery {
        Delivery {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from(vec![0u8; n]),
            props: Bytes::new(),
            qos,
            retain: false,
            expires_at_ms: 0,
            sub_ids: vec![],
            msg: 0,
        }
    }

    #[test]
    fn full_queue_drops_qos0_first_then_refuses() {
        let mut o = Outbound::new(1000, 100);
        assert_eq!(o.push(d(0, 300), false), Push::Queued);
        assert_eq!(o.push(d(1, 300), false), Push::Queued);
        assert_eq!(o.push(d(0, 300), false), Push::DroppedQos0);
        // Room is made for QoS 1 by evicting the queued QoS 0 message.
        assert_eq!(o.push(d(1, 300), false), Push::Queued);
        assert_eq!(o.evicted_qos0, 1);
        assert_eq!(o.push(d(1, 300), false), Push::Full);
        assert_eq!(o.queued(), 2);
    }

    #[test]
    fn a_persistent_queue_drops_its_oldest_and_reports_entries_that_leave() {
        let mut o = Outbound::new(1 << 20, 3);
        for m in 1..=5u64 {
            let mut x = d(if m == 2 { 2 } else { 1 }, 1);
            x.msg = m;
            assert_eq!(o.push(x, true), Push::Queued);
        }
        assert_eq!(o.evicted_full, 2);
        assert_eq!(o.gone.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 2]);
        o.gone.clear();
        let mut expired = 0;
        let (p3, _) = o.next(10, 0, &mut expired).expect("3");
        assert!(o.puback(p3));
        assert_eq!(o.gone.iter().map(|g| g.0).collect::<Vec<_>>(), vec![3]);
        // A QoS 2 entry: its packet id is recorded when sent, its release when PUBREC comes.
        let mut o = Outbound::new(1 << 20, 10);
        let mut x = d(2, 1);
        x.msg = 9;
        o.push(x, true);
        let (p, _) = o.next(10, 0, &mut expired).expect("9");
        assert!(o.pubrec(p, 0));
        assert_eq!(
            o.marks,
            vec![(9, crate::durable::SENT, p), (9, crate::durable::RELEASED, p)]
        );
        assert!(o.pubcomp(p));
        assert_eq!(o.gone.iter().map(|g| g.0).collect::<Vec<_>>(), vec![9]);
    }

    /// Restored entries keep their order: QoS 1 entries sent before a recorded QoS 2 send go
    /// back in flight with it (fresh ids that avoid the recorded ones), later ones are queued.
    #[test]
    fn restore_keeps_the_published_order_across_qos() {
        let mut o = Outbound::new(1 << 20, 100);
        let entry = |qos: u8, msg: u64| {
            let mut x = d(qos, 1);
            x.msg = msg;
            x
        };
        o.restore(vec![
            (0, 0, entry(1, 1)),
            (crate::durable::SENT, 1, entry(2, 2)),
            (0, 0, entry(1, 3)),
            (crate::durable::RELEASED, 2, entry(2, 4)),
            (0, 0, entry(1, 5)),
            (0, 0, entry(2, 6)),
        ]);
        let flight: Vec<(u16, u64)> = o
            .inflight
            .iter()
            .map(|(p, s)| match s {
                State::Sent(d) => (*p, d.msg),
                State::Released(m, _) => (*p, *m),
            })
            .collect();
        assert_eq!(flight.iter().map(|f| f.1).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!((flight[1].0, flight[3].0), (1, 2), "recorded QoS 2 ids kept");
        assert!(
            ![1, 2].contains(&flight[0].0) && ![1, 2].contains(&flight[2].0),
            "{flight:?}"
        );
        assert!(matches!(o.inflight[3].1, State::Released(..)));
        assert_eq!(o.queued(), 2, "5 and 6 were never sent");
        let mut expired = 0;
        let (p, next) = o.next(100, 0, &mut expired).expect("5");
        assert_eq!(next.msg, 5);
        assert!(!flight.iter().any(|f| f.0 == p), "a fresh id");
    }

    #[test]
    fn receive_maximum_ids_acks_and_resend() {
        let mut o = Outbound::new(1 << 20, 100);
        for q in [1, 2, 1] {
            o.push(d(q, 1), false);
        }
        let mut expired = 0;
        let (p1, _) = o.next(2, 0, &mut expired).expect("first");
        let (p2, _) = o.next(2, 0, &mut expired).expect("second");
        assert!(o.next(2, 0, &mut expired).is_none(), "receive maximum reached");
        assert!(!o.puback(p2), "a QoS 2 delivery is not completed by PUBACK");
        assert!(o.pubrec(p2, 0));
        let mut out = BytesMut::new();
        o.resend(&mut out, false, 0);
        // PUBLISH with DUP for p1, PUBREL for p2.
        assert_eq!(out[0], 0x3A);
        assert_eq!(&out[out.len() - 4..], &[0x62, 2, 0, p2 as u8]);
        assert!(o.puback(p1));
        assert!(o.pubcomp(p2));
        assert!(o.next(2, 0, &mut expired).is_some());
    }

    #[test]
    fn expired_messages_are_not_delivered_and_remaining_interval_is_sent() {
        let mut o = Outbound::new(1 << 20, 100);
        let mut e = d(1, 1);
        e.expires_at_ms = 1000;
        o.push(e.clone(), false);
        let mut expired = 0;
        assert!(o.next(10, 2000, &mut expired).is_none());
        assert_eq!(expired, 1);
        e.expires_at_ms = 10_500;
        let mut out = BytesMut::new();
        e.encode(&mut out, 1, false, true, 1000, Alias::No);
        // Remaining 9.5 s, rounded up to 10: property 0x02 with value 10.
        assert!(out.windows(5).any(|w| w == [0x02, 0, 0, 0, 10]));
    }
}
