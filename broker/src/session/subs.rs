//! A session's subscriptions: filter → options, and the per-session router subscription id
//! of each (which comes back on every delivery and names the subscription it matched). The
//! one place subscriptions are added, removed, reset, restored, saved and indexed.

use crate::cluster::{Group, Interest};
use crate::pressure::Reader;
use crate::router;
use rumqttd::protocol::Packet;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Subscriptions one session may hold.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sub {
    /// The router subscription id.
    pub rid: usize,
    pub qos: u8,
    pub no_local: bool,
    /// Retain As Published.
    pub rap: bool,
    pub sub_id: Option<u32>,
}

/// The options of a subscription, as a client asks for it and as a session record stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    pub qos: u8,
    pub no_local: bool,
    pub rap: bool,
    pub sub_id: Option<u32>,
}

pub(crate) struct Subscriptions {
    by_filter: HashMap<String, Sub>,
    by_rid: HashMap<usize, String>,
    next_rid: usize,
    /// Per router subscription: the log offset its next delivery must have (`skipped`).
    next_offset: HashMap<usize, u64>,
    /// The filters with a wildcard, shared ones left out: the only ones that can match a
    /// topic another filter of the session matches too (`others_matching`).
    wild: Vec<String>,
    /// Cluster mode: this node's interest, told of every filter added and removed (also
    /// when the subscriptions are dropped with their session); shared subscriptions join
    /// its groups instead of the router.
    interest: Option<Arc<Interest>>,
    /// The session's key (its name as a member of shared subscription groups).
    key: String,
    /// Waits for scopes a new filter needs that other nodes are not heard on yet.
    pending: Vec<oneshot::Receiver<bool>>,
    /// The session's registrations as a reader (`pressure`), kept with the filters.
    reader: Option<Reader>,
    /// Channels last subscribed in the `m/<domain>/c/<channel>` form, with that domain: their
    /// deliveries are shown in that form (filters are kept in the canonical one).
    m_form: HashMap<String, String>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::new(None, "")
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        let _ = self.clear(false);
    }
}

impl Subscriptions {
    pub fn new(interest: Option<Arc<Interest>>, key: &str) -> Subscriptions {
        Subscriptions {
            by_filter: HashMap::new(),
            by_rid: HashMap::new(),
            next_rid: 1,
            next_offset: HashMap::new(),
            wild: Vec::new(),
            interest,
            key: key.to_string(),
            pending: Vec::new(),
            reader: None,
            m_form: HashMap::new(),
        }
    }

    /// Cluster mode: the shared subscription group a filter joins (never the router).
    fn group(&self, filter: &str) -> Option<Group> {
        self.interest.as_ref()?;
        crate::rights::shared_filter(filter).map(|(g, f)| (g.to_string(), f.to_string()))
    }

    /// Whether a filter is on the router (in cluster mode, shared ones are not).
    fn routed(&self, filter: &str) -> bool {
        self.group(filter).is_none()
    }

    /// Keeps the session's reader registrations (`pressure`) with its filters from now on.
    pub fn with_reader(mut self, mut reader: Reader) -> Subscriptions {
        for f in self.by_filter.keys().filter(|f| self.routed(f)) {
            reader.subscribed(f);
        }
        self.reader = Some(reader);
        self
    }

    /// The reader registrations, for what the link brought (`pressure`).
    pub fn reader(&mut self) -> Option<&mut Reader> {
        self.reader.as_mut()
    }

    /// Records the form a filter of a channel was subscribed in (`Some(domain)`: the `m/`
    /// form); the last subscription to a channel decides how its deliveries are shown.
    pub fn set_form(&mut self, canonical: &str, m_domain: Option<&str>) {
        let Some(ct) = crate::topic::parse(canonical, true) else {
            return;
        };
        match m_domain {
            Some(d) => {
                self.m_form.insert(ct.channel.to_string(), d.to_string());
            }
            None => {
                self.m_form.remove(ct.channel);
            }
        }
    }

    /// A delivery's topic in the form its channel was subscribed in (`None`: as it is).
    pub fn shown(&self, topic: &[u8]) -> Option<bytes::Bytes> {
        if self.m_form.is_empty() {
            return None;
        }
        let t = std::str::from_utf8(topic).ok()?;
        let ct = crate::topic::parse(t, false)?;
        let d = self.m_form.get(ct.channel)?;
        crate::topic::m_form(t, d).map(bytes::Bytes::from)
    }

    /// The waits new filters need before their SUBACK (cluster mode), taken.
    pub fn take_pending(&mut self) -> Vec<oneshot::Receiver<bool>> {
        std::mem::take(&mut self.pending)
    }

    pub fn len(&self) -> usize {
        self.by_filter.len()
    }

    pub fn contains(&self, filter: &str) -> bool {
        self.by_filter.contains_key(filter)
    }

    /// Whether one more filter is refused for the session's limit.
    pub fn full_for(&self, filter: &str) -> bool {
        !self.contains(filter) && self.len() >= MAX_SUBSCRIPTIONS
    }

    /// How many messages the router skipped on subscription `rid` before the one at `offset`
    /// in its filter's log (rumqttd's offsets are absolute and consecutive per filter: a gap
    /// is messages the log dropped before this session drained them).
    pub fn skipped(&mut self, rid: usize, offset: u64) -> u64 {
        let expected = self.next_offset.insert(rid, offset + 1);
        expected.map_or(0, |e| offset.saturating_sub(e))
    }

    /// Whether subscription `rid`'s filter starts with a wildcard (it never matches a `$`
    /// topic [MQTT-4.7.2-1]).
    pub fn wildcard_first(&self, rid: usize) -> bool {
        self.by_rid
            .get(&rid)
            .is_some_and(|f| f.starts_with('+') || f.starts_with('#'))
    }

    /// The session's other (not shared) subscriptions that match `topic` besides `rid`'s:
    /// with them, one copy of a message serves every matching subscription.
    pub fn others_matching(&self, topic: &str, rid: usize) -> Vec<Sub> {
        if self.wild.is_empty() {
            return Vec::new();
        }
        let exact = self.by_filter.get(topic).filter(|s| s.rid != rid).copied();
        let wild = self
            .wild
            .iter()
            .filter(|f| crate::codec::matches(f, topic))
            .filter_map(|f| self.by_filter.get(f.as_str()))
            .filter(|s| s.rid != rid)
            .copied();
        exact.into_iter().chain(wild).collect()
    }

    /// Whether any subscription of the session matches `topic` (a shared one by its filter).
    pub fn any_matching(&self, topic: &str) -> bool {
        self.by_filter.keys().any(|f| {
            let f = crate::rights::shared_filter(f).map_or(f.as_str(), |(_, inner)| inner);
            crate::codec::matches(f, topic)
        })
    }

    /// The subscription a router delivery names.
    pub fn by_rid(&self, rid: usize) -> Option<&Sub> {
        self.by_rid.get(&rid).and_then(|f| self.by_filter.get(f))
    }

    /// Adds or replaces a subscription (a replaced one keeps its router id). Returns whether
    /// it is new, and the router packet to send for a new filter (`None` when it replaced
    /// one, or joined a cluster's shared subscription group).
    pub fn insert(&mut self, filter: &str, o: SubOptions) -> (bool, Option<Packet>) {
        let existed = self.by_filter.get(filter).map(|s| s.rid);
        let rid = existed.unwrap_or_else(|| {
            let rid = self.next_rid;
            self.next_rid += 1;
            rid
        });
        self.by_filter.insert(
            filter.to_string(),
            Sub {
                rid,
                qos: o.qos,
                no_local: o.no_local,
                rap: o.rap,
                sub_id: o.sub_id,
            },
        );
        self.by_rid.insert(rid, filter.to_string());
        if let (Some(g), Some(i)) = (self.group(filter), self.interest.as_ref()) {
            // Joined (or its options replaced): the SUBACK waits for this node's share.
            if let Some(w) = i.join(g, &self.key, o) {
                self.pending.push(w);
            }
            return (existed.is_none(), None);
        }
        if let (None, Some(r)) = (existed, self.reader.as_mut()) {
            r.subscribed(filter);
        }
        if existed.is_none() && filter.contains(['+', '#']) && crate::rights::shared_filter(filter).is_none() {
            self.wild.push(filter.to_string());
        }
        if existed.is_none() {
            if let Some(w) = self.interest.as_ref().and_then(|i| i.add(filter)) {
                self.pending.push(w);
            }
        }
        (
            existed.is_none(),
            existed.is_none().then(|| router::subscribe(filter, rid)),
        )
    }

    /// Removes a subscription; returns the router packets to send, `None` when there was
    /// no such subscription.
    pub fn remove(&mut self, filter: &str) -> Option<Vec<Packet>> {
        let s = self.by_filter.remove(filter)?;
        if let (Some(g), Some(i)) = (self.group(filter), self.interest.as_ref()) {
            self.by_rid.remove(&s.rid);
            i.leave(&g, &self.key);
            return Some(Vec::new());
        }
        self.by_rid.remove(&s.rid);
        self.next_offset.remove(&s.rid);
        self.wild.retain(|f| f != filter);
        if let Some(ct) = crate::topic::parse(filter, true) {
            let channel = ct.channel;
            let left = self
                .by_filter
                .keys()
                .any(|f| crate::topic::parse(f, true).is_some_and(|c| c.channel == channel));
            if !left {
                self.m_form.remove(channel);
            }
        }
        if let Some(i) = &self.interest {
            i.remove(filter);
        }
        if let Some(r) = self.reader.as_mut() {
            r.unsubscribed(filter);
        }
        Some(vec![router::unsubscribe(filter)])
    }

    /// Removes every subscription; returns the router packets that undo them (none when
    /// `on_router` is false: nothing was subscribed on a link).
    pub fn clear(&mut self, on_router: bool) -> Vec<Packet> {
        let out = if on_router {
            self.by_filter
                .keys()
                .filter(|f| self.routed(f))
                .map(|f| router::unsubscribe(f))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(i) = &self.interest {
            for f in self.by_filter.keys() {
                match self.group(f) {
                    Some(g) => i.leave(&g, &self.key),
                    None => i.remove(f),
                }
            }
        }
        self.by_filter.clear();
        self.by_rid.clear();
        self.next_offset.clear();
        self.wild.clear();
        if let Some(r) = self.reader.as_mut() {
            r.cleared();
        }
        self.m_form.clear();
        out
    }

    /// The router subscriptions of every filter (a restored session's new link).
    pub fn router_subscribes(&self) -> Vec<Packet> {
        self.by_filter
            .iter()
            .filter(|(f, _)| self.routed(f))
            .map(|(f, s)| router::subscribe(f, s.rid))
            .collect()
    }

    /// The subscriptions as a session record stores them: in the form they were subscribed
    /// in (`restored` reads both).
    pub fn stored(&self) -> Vec<(String, SubOptions)> {
        self.canonical()
            .into_iter()
            .map(|(f, o)| {
                let shown = crate::topic::parse(&f, true)
                    .and_then(|ct| self.m_form.get(ct.channel))
                    .and_then(|d| crate::topic::m_form(&f, d));
                (shown.unwrap_or(f), o)
            })
            .collect()
    }

    /// The subscriptions with their canonical filters (what the persistent index matches).
    pub fn canonical(&self) -> Vec<(String, SubOptions)> {
        self.by_filter
            .iter()
            .map(|(f, s)| {
                (
                    f.clone(),
                    SubOptions {
                        qos: s.qos,
                        no_local: s.no_local,
                        rap: s.rap,
                        sub_id: s.sub_id,
                    },
                )
            })
            .collect()
    }

    /// Subscriptions from a session record (restore) of a client of `domain`; filters no
    /// session may hold (`$SYS`) are left out (deliveries are checked against rights anyway).
    pub fn restored(
        stored: Vec<(String, SubOptions)>,
        interest: Option<Arc<Interest>>,
        key: &str,
        domain: Option<&str>,
    ) -> Subscriptions {
        let mut s = Subscriptions::new(interest, key);
        for (filter, o) in stored {
            if filter == "$SYS" || filter.starts_with("$SYS/") {
                continue;
            }
            match domain.and_then(|d| crate::topic::canonical(&filter, d).map(|c| (c, d))) {
                Some((canonical, d)) => {
                    let _ = s.insert(&canonical, o);
                    s.set_form(&canonical, Some(d));
                }
                None => {
                    let _ = s.insert(&filter, o);
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            rap: false,
            sub_id: Some(7),
        }
    }

    #[test]
    fn a_replaced_subscription_keeps_its_router_id_and_is_not_subscribed_again() {
        let mut s = Subscriptions::default();
        assert!(s.insert("a/#", o(1)).1.is_some(), "new: subscribed on the router");
        let rid = s.by_filter["a/#"].rid;
        assert_eq!(s.insert("a/#", o(2)), (false, None), "replaced: nothing to send");
        assert_eq!(s.by_rid(rid).map(|x| x.qos), Some(2));
        assert!(s.insert("b", o(0)).1.is_some());
        assert_ne!(s.by_filter["b"].rid, rid);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn remove_clear_and_router_ids_stay_consistent() {
        let mut s = Subscriptions::default();
        let _ = s.insert("a", o(1));
        let _ = s.insert("b", o(1));
        let rid_a = s.by_filter["a"].rid;
        assert!(s.remove("a").is_some());
        assert!(s.remove("a").is_none(), "no subscription existed");
        assert!(s.by_rid(rid_a).is_none(), "its router id names nothing now");
        assert_eq!(s.clear(true).len(), 1);
        assert_eq!(s.len(), 0);
        let _ = s.insert("c", o(1));
        assert!(s.clear(false).is_empty(), "nothing on a link: nothing to undo");
    }

    #[test]
    fn stored_and_restored_round_trip_without_dollar_filters() {
        let mut s = Subscriptions::default();
        let _ = s.insert("a/+", o(1));
        let _ = s.insert("$share/g/x", o(2));
        let mut stored = s.stored();
        stored.push(("$SYS/x".into(), o(0)));
        let r = Subscriptions::restored(stored, None, "k", None);
        assert_eq!(r.len(), 2, "the $SYS filter is not restored");
        assert!(r.contains("a/+") && r.contains("$share/g/x"));
        assert_eq!(r.router_subscribes().len(), 2);
    }

    #[test]
    fn a_channel_subscribed_in_the_m_form_is_shown_and_stored_in_it() {
        let mut s = Subscriptions::default();
        let _ = s.insert("channels/h/messages/#", o(1));
        s.set_form("channels/h/messages/#", Some("d"));
        let _ = s.insert("channels/k/messages", o(1));
        s.set_form("channels/k/messages", None);
        assert_eq!(s.shown(b"channels/h/messages/t").as_deref(), Some(&b"m/d/c/h/t"[..]));
        assert_eq!(
            s.shown(b"channels/k/messages"),
            None,
            "subscribed in the canonical form"
        );
        let stored = s.stored();
        assert!(stored.iter().any(|(f, _)| f == "m/d/c/h/#"), "{stored:?}");
        assert!(s.canonical().iter().any(|(f, _)| f == "channels/h/messages/#"));
        let r = Subscriptions::restored(stored, None, "k", Some("d"));
        assert!(r.contains("channels/h/messages/#"), "canonical again");
        assert_eq!(r.shown(b"channels/h/messages/t").as_deref(), Some(&b"m/d/c/h/t"[..]));
        let mut r = r;
        let _ = r.remove("channels/h/messages/#");
        assert_eq!(r.shown(b"channels/h/messages/t"), None, "no subscription to h left");
    }

    #[test]
    fn the_limit_refuses_new_filters_only() {
        let mut s = Subscriptions::default();
        for i in 0..MAX_SUBSCRIPTIONS {
            assert!(!s.full_for(&format!("f/{i}")));
            let _ = s.insert(&format!("f/{i}"), o(1));
        }
        assert!(s.full_for("new"), "one more filter is refused");
        assert!(!s.full_for("f/0"), "replacing a held one is not");
    }
}
