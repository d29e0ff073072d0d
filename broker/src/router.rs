//! rumqttd's router, used only through its public API: spawned once, reached through one
//! in-process link per session. Everything sent to the router is QoS 0 and never retained,
//! and every subscription is made at QoS 0 with a per-session subscription identifier: the
//! router only matches topics to filters; QoS, retained messages, wills, sessions and flow
//! control live in the front. So the router never waits for an acknowledgement, never
//! disconnects a link on its own (no duplicate ids, no acks, no `$` filters reach it) and its
//! per-filter log only has to cover the time between a message's arrival and the session
//! task draining its link.
//!
//! The router's identity of a link is a **slot**, not the device's client id: rumqttd keeps a
//! record per client id it ever saw (its "graveyard", never emptied), so ids are drawn from a
//! pool of recycled slots (`s0`, `s1`, …) and memory is bounded by the links that exist at
//! once, not by the client ids ever seen. Fluxgate's registry maps a session to its link;
//! a slot goes back to the pool only after the link's DISCONNECT was queued for the router,
//! and the router handles its events in order, so a reused slot never meets its old link.
//!
//! A message carries what the router would lose in a small header ahead of its payload
//! ([`Tag`]): the publisher's QoS and retain flag, the publishing session (for No Local), the
//! expiry deadline and the raw v5 properties.

use crate::pressure::Pressure;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{Filter, Packet, Publish, QoS, RetainForwardRule, Subscribe, SubscribeProperties, Unsubscribe};
use std::sync::Arc;

/// Builds links to the spawned router and tells whether it still runs.
type BuildLink = dyn Fn(&str) -> Result<(LinkTx, LinkRx), String> + Send + Sync;

#[derive(Clone)]
pub(crate) struct RouterPort {
    build: Arc<BuildLink>,
    alive: Arc<dyn Fn() -> bool + Send + Sync>,
    slots: Arc<Slots>,
}

/// The pool of router client ids: slot numbers are reused, most recently freed first.
#[derive(Default)]
pub(crate) struct Slots {
    free: std::sync::Mutex<Vec<u32>>,
    next: std::sync::atomic::AtomicU32,
}

impl Slots {
    fn take(self: &Arc<Self>) -> Slot {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        let n = reused.unwrap_or_else(|| self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        Slot { n, pool: self.clone() }
    }

    /// Slots ever made (the most links that existed at once).
    #[cfg(test)]
    pub fn made(&self) -> u32 {
        self.next.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A router client id held by one link; back to the pool when dropped.
pub(crate) struct Slot {
    n: u32,
    pool: Arc<Slots>,
}

impl Slot {
    pub fn id(&self) -> String {
        format!("s{}", self.n)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut f) = self.pool.free.lock() {
            f.push(self.n);
        }
    }
}

/// A session's link to the router, under its slot.
pub(crate) struct Link {
    pub tx: LinkTx,
    pub rx: LinkRx,
    /// Dropped last: the slot is free once the link is gone.
    _slot: Slot,
}

impl RouterPort {
    /// Spawns rumqttd's router thread. The sender's type is private to rumqttd, so it lives
    /// only inside the two closures.
    pub fn spawn(max_connections: usize, segment_size: usize, segment_count: usize) -> RouterPort {
        let cfg = rumqttd::RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: segment_size,
            max_segment_count: segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let tx = rumqttd::Router::new(0, cfg).spawn();
        let tx2 = tx.clone();
        RouterPort {
            build: Arc::new(move |id: &str| {
                LinkBuilder::new(id, tx.clone())
                    .clean_session(true)
                    .dynamic_filters(true)
                    .topic_alias_max(0)
                    .build()
                    .map(|(t, r, _ack)| (t, r))
                    .map_err(|e| e.to_string())
            }),
            alive: Arc::new(move || !tx2.is_disconnected()),
            slots: Arc::default(),
        }
    }

    /// Builds a session's link under a free slot (a blocking router round trip: call it on
    /// the blocking pool).
    pub fn link(&self) -> Result<Link, String> {
        let slot = self.slots.take();
        let (tx, rx) = (self.build)(&slot.id())?;
        Ok(Link { tx, rx, _slot: slot })
    }

    /// Builds a link under a fixed name (the process's own publisher, once).
    pub fn named_link(&self, id: &str) -> Result<(LinkTx, LinkRx), String> {
        (self.build)(id)
    }

    pub fn alive(&self) -> bool {
        (self.alive)()
    }
}

/// What travels with a message through the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tag {
    pub qos: u8,
    pub retain: bool,
    /// The publishing session (0: none, e.g. HTTP).
    pub origin: u64,
    /// Unix milliseconds after which the message must not be delivered (0: never expires).
    pub expires_at_ms: u64,
    /// The persistent queue entry id written for it (0: none).
    pub msg: u64,
    /// Its place in what was sent to the router (`pressure`; 0: not counted).
    pub mark: u64,
    pub props: Bytes,
}

const MAGIC: u8 = 0xF7;
const HEADER: usize = 1 + 1 + 8 + 8 + 8 + 8 + 4;

pub(crate) fn encode(tag: &Tag, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + tag.props.len() + payload.len());
    b.put_u8(MAGIC);
    b.put_u8(tag.qos | (u8::from(tag.retain) << 2));
    b.put_u64(tag.origin);
    b.put_u64(tag.expires_at_ms);
    b.put_u64(tag.msg);
    b.put_u64(tag.mark);
    b.put_u32(tag.props.len() as u32);
    b.put_slice(&tag.props);
    b.put_slice(payload);
    b.freeze()
}

/// Splits a routed payload into its tag and the original payload (a view, no copy).
pub(crate) fn decode(mut b: Bytes) -> Option<(Tag, Bytes)> {
    if b.len() < HEADER || b[0] != MAGIC {
        return None;
    }
    b.advance(1);
    let f = b.get_u8();
    let origin = b.get_u64();
    let expires_at_ms = b.get_u64();
    let msg = b.get_u64();
    let mark = b.get_u64();
    let n = b.get_u32() as usize;
    if b.len() < n {
        return None;
    }
    let props = b.split_to(n);
    Some((
        Tag {
            qos: (f & 0x03).min(2),
            retain: f & 0x04 != 0,
            origin,
            expires_at_ms,
            msg,
            mark,
            props,
        },
        b,
    ))
}

/// The router packet of a message, its tag given the message's mark (`pressure`).
pub(crate) fn routed(topic: &str, mut tag: Tag, payload: &[u8], pressure: &Pressure) -> (Packet, u64) {
    // The router's measure of a message: 4 + topic + payload.
    let scope = crate::pressure::scope(topic);
    tag.mark = pressure.mark(scope, 4 + topic.len() + HEADER + tag.props.len() + payload.len());
    let packet = publish(Bytes::from(escaped(topic).into_owned()), encode(&tag, payload));
    (packet, tag.mark)
}

/// The router's name for a topic or filter. rumqttd never matches a topic that starts with
/// `$`, not even with the same filter, so such topics (and filters, except its own
/// `$share/…`) travel behind a NUL, which no MQTT topic contains [MQTT-1.5.4-2]; wildcard
/// filters then match them too, and sessions drop those deliveries ([MQTT-4.7.2-1]:
/// `unescaped`, `Subscriptions::wildcard_first`).
fn escaped(t: &str) -> std::borrow::Cow<'_, str> {
    if t.starts_with('$') && !t.starts_with("$share/") {
        std::borrow::Cow::Owned(format!("\0{t}"))
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

/// A delivered topic as the client named it (see `escaped`); whether it starts with `$`.
pub(crate) fn unescaped(mut topic: Bytes) -> (Bytes, bool) {
    if topic.first() == Some(&0) {
        topic.advance(1);
        (topic, true)
    } else {
        (topic, false)
    }
}

/// The mark of a routed payload, without decoding the rest (`None`: not routed by us).
pub(crate) fn mark_of(b: &[u8]) -> Option<u64> {
    if b.len() < HEADER || b[0] != MAGIC {
        return None;
    }
    // After the magic byte, the flags, origin, expiry and entry id (see `encode`).
    const AT: usize = 1 + 1 + 8 + 8 + 8;
    b.get(AT..AT + 8)
        .and_then(|m| m.try_into().ok())
        .map(u64::from_be_bytes)
}

/// A QoS 0, non-retained publish for the router.
pub(crate) fn publish(topic: Bytes, tagged: Bytes) -> Packet {
    Packet::Publish(Publish::new(topic, tagged, false), None)
}

/// A router subscription for one filter, at QoS 0, carrying the session's own identifier for
/// it (which comes back on every delivery and names the subscription it matched).
pub(crate) fn subscribe(filter: &str, rid: usize) -> Packet {
    Packet::Subscribe(
        Subscribe {
            pkid: 0,
            filters: vec![Filter {
                path: escaped(filter).into_owned(),
                qos: QoS::AtMostOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            }],
        },
        Some(SubscribeProperties {
            id: Some(rid),
            user_properties: Vec::new(),
        }),
    )
}

pub(crate) fn unsubscribe(filter: &str) -> Packet {
    Packet::Unsubscribe(
        Unsubscribe {
            pkid: 0,
            filters: vec![escaped(filter).into_owned()],
        },
        None,
    )
}

pub(crate) fn disconnect() -> Packet {
    Packet::Disconnect(
        rumqttd::protocol::Disconnect {
            reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_so_router_ids_stay_bounded() {
        let pool = Arc::new(Slots::default());
        let a = pool.take();
        let b = pool.take();
        assert_ne!(a.id(), b.id());
        drop(a);
        let c = pool.take();
        assert_eq!(c.id(), "s0", "a freed slot is taken again");
        for _ in 0..1000 {
            drop(pool.take());
        }
        assert_eq!(pool.made(), 3, "1,000 more links one after another reuse one slot");
        drop((b, c));
    }

    #[test]
    fn tag_roundtrip() {
        let tag = Tag {
            qos: 2,
            retain: true,
            origin: 42,
            expires_at_ms: 7,
            msg: 11,
            mark: 13,
            props: Bytes::from_static(b"\x01\x01"),
        };
        let b = encode(&tag, b"payload");
        let (t, p) = decode(b).expect("tag");
        assert_eq!(mark_of(&encode(&tag, b"payload")), Some(13));
        assert_eq!((t, &p[..]), (tag, &b"payload"[..]));
        assert!(decode(Bytes::from_static(b"short")).is_none());
    }
}
