//! The cluster port: messages to and from the other nodes of a cluster. The broker decides
//! *what* crosses (every message its one ingress accepted, with everything a subscriber on
//! another node needs) and *which scopes* this node must hear (the scopes of its local
//! subscriptions, reference counted); the root crate's implementation decides *how* (NATS
//! subjects). Messages from other nodes enter through their own entry
//! ([`crate::BrokerHandle::import`]), which never exports again: no loop by construction.

use crate::session::SubOptions;
use crate::*;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// A message accepted on one node, as it crosses to the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carried {
    pub topic: String,
    pub payload: Bytes,
    /// The publisher's QoS.
    pub qos: u8,
    pub retain: bool,
    /// Raw MQTT 5 publish properties (no topic alias, no message expiry).
    pub props: Bytes,
    /// Unix milliseconds after which it is not delivered (0: never).
    pub expires_at_ms: u64,
    /// The registry client that published it (`None`: anonymous).
    pub publisher: Option<Identity>,
    pub transport: Transport,
    pub format: PayloadFormat,
    /// Receive time on the publishing node, microseconds since the Unix epoch.
    pub received_at: i64,
    /// The entry id its node wrote for persistent sessions (0: none); a node holding such a
    /// session uses the same id, so the entry is one, whoever wrote it.
    pub entry: u64,
}

/// Which part of the topic space a message belongs to or a subscription listens to. A
/// message has exactly one scope ([`Scope::of_topic`]); a filter may need several
/// ([`Scope::of_filter`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// One channel's messages (`channels/<id>/…`; the id is a plain token).
    Channel(String),
    /// Every channel's messages (a filter with a wildcard at the channel level).
    AllChannels,
    /// Topics outside the channel scheme (anonymous mode), and channel ids that are not
    /// plain tokens.
    Other,
}

/// A channel id that can name a scope on its own: ASCII letters, digits, `-` and `_`.
fn plain(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Scope {
    /// The scope of a topic name.
    pub fn of_topic(topic: &str) -> Scope {
        match crate::topic::parse(topic, false) {
            Some(t) if plain(t.channel) => Scope::Channel(t.channel.to_string()),
            _ => Scope::Other,
        }
    }

    /// The scopes a filter must hear: every scope one of its matching topics can have.
    pub fn of_filter(filter: &str) -> Vec<Scope> {
        let f = crate::rights::shared_filter(filter).map_or(filter, |(_, f)| f);
        let mut levels = f.split('/');
        let (first, second) = (levels.next().unwrap_or(""), levels.next());
        match (first, second) {
            ("#" | "+", _) | ("channels", None | Some("+" | "#")) => vec![Scope::AllChannels, Scope::Other],
            ("channels", Some(c)) if plain(c) => match crate::topic::parse(f, true) {
                Some(_) => vec![Scope::Channel(c.to_string())],
                // `channels/<c>/#` also matches topics outside the scheme.
                None => vec![Scope::Channel(c.to_string()), Scope::Other],
            },
            _ => vec![Scope::Other],
        }
    }
}

/// Where messages cross to other nodes; the root crate implements it over NATS.
pub trait Cluster: Send + Sync + 'static {
    /// Hands a message accepted on this node to the others. With `wait`, the receiver
    /// resolves once it was handed over (flushed) or given up (counted by the
    /// implementation); the publisher's acknowledgement waits for it.
    /// With `after`, the message crosses once it resolves (later messages wait behind it,
    /// so the order holds).
    fn export(&self, m: Carried, wait: bool, after: Option<oneshot::Receiver<bool>>)
        -> Option<oneshot::Receiver<bool>>;
    /// Starts (`on`) or stops hearing a scope from other nodes; resolves once in effect.
    /// The broker calls it for the first and the last local subscription of a scope, in
    /// order.
    fn listen(&self, scope: Scope, on: bool) -> BoxFuture<()>;
    /// Claims a session key for this node before its CONNACK: the claim's number orders
    /// claims cluster-wide (newest wins). Another node holding the key with an older claim
    /// ends its session once it learns of this one ([`crate::BrokerHandle::claimed`]).
    fn claim(&self, key: &str) -> BoxFuture<Result<u64, PortError>>;
    /// Whether this node knows it is current with the cluster's changes (revocations). A
    /// node that is not refuses new connections and publishes: it fails closed rather than
    /// serve rights that may have been revoked.
    fn current(&self) -> bool;
    /// Starts (`on`) or stops taking this node's share of shared subscription `group` on
    /// `filter` (the filter inside `$share/<group>/`): each message of the filter's scopes,
    /// from any node this one included, goes to one node taking a share, which hands it to
    /// [`crate::BrokerHandle::import_shared`]. Resolves once in effect. Called for the first
    /// and the last local member of a group, in order.
    fn share(&self, group: &str, filter: &str, on: bool) -> BoxFuture<()>;
    /// Resolves once every other node knows of the changes this node committed so far (a
    /// persistent session's new subscriptions, which their publishers must queue for it),
    /// or within the time after which a node that does not is refusing publishes.
    fn settled(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// Whether a shared subscription's `filter` takes `topic` ([MQTT-4.7.2-1]: a filter
/// starting with a wildcard never matches a `$` topic).
pub(crate) fn group_matches(filter: &str, topic: &str) -> bool {
    let dollar_miss = topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#'));
    !dollar_miss && crate::codec::matches(filter, topic)
}

enum Op {
    On(Scope, watch::Sender<bool>),
    Off(Scope),
    Share(Group, watch::Sender<bool>),
    Unshare(Group),
}

/// A shared subscription group as the cluster knows it: the group's name and its filter.
pub(crate) type Group = (String, String);

/// This node's members of one shared subscription group (cluster mode): the sessions that
/// take its messages in turn.
struct Members {
    /// (session key, the member's subscription options)
    list: Vec<(String, SubOptions)>,
    next: usize,
    heard: watch::Receiver<bool>,
}

/// This node's interest in scopes: how many local subscriptions need each one. The first
/// starts listening and the last stops it, in order, through one task; a subscription
/// whose scope is not heard yet gets a wait its SUBACK is held behind.
pub(crate) struct Interest {
    counts: Mutex<HashMap<Scope, (usize, watch::Receiver<bool>)>>,
    /// Shared subscriptions: never on the router in cluster mode; their messages come from
    /// the cluster's share (NATS picks the node, this table the member).
    groups: Mutex<HashMap<Group, Members>>,
    ops: mpsc::UnboundedSender<Op>,
    rt: tokio::runtime::Handle,
}

impl Interest {
    pub fn start(port: Arc<dyn Cluster>, rt: &tokio::runtime::Handle) -> Arc<Interest> {
        let (ops, mut rx) = mpsc::unbounded_channel::<Op>();
        rt.spawn(async move {
            while let Some(op) = rx.recv().await {
                match op {
                    Op::On(s, ready) => {
                        port.listen(s, true).await;
                        let _ = ready.send(true);
                    }
                    Op::Off(s) => port.listen(s, false).await,
                    Op::Share((g, f), ready) => {
                        port.share(&g, &f, true).await;
                        let _ = ready.send(true);
                    }
                    Op::Unshare((g, f)) => port.share(&g, &f, false).await,
                }
            }
        });
        Arc::new(Interest {
            counts: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            ops,
            rt: rt.clone(),
        })
    }

    /// One more local subscription to `filter`; the receiver (if any) resolves once every
    /// scope it needs is heard.
    pub fn add(&self, filter: &str) -> Option<oneshot::Receiver<bool>> {
        let Ok(mut counts) = self.counts.lock() else {
            return None;
        };
        let mut pending = Vec::new();
        for s in Scope::of_filter(filter) {
            let e = counts.entry(s.clone()).or_insert_with(|| {
                let (tx, rx) = watch::channel(false);
                let _ = self.ops.send(Op::On(s, tx));
                (0, rx)
            });
            e.0 += 1;
            if !*e.1.borrow() {
                pending.push(e.1.clone());
            }
        }
        drop(counts);
        if pending.is_empty() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.rt.spawn(async move {
            for mut p in pending {
                // A dropped sender (the scope was let go meanwhile) is as good as heard.
                let _ = p.wait_for(|heard| *heard).await;
            }
            let _ = tx.send(true);
        });
        Some(rx)
    }

    /// One local subscription to `filter` fewer.
    pub fn remove(&self, filter: &str) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        for s in Scope::of_filter(filter) {
            if let Some(e) = counts.get_mut(&s) {
                e.0 = e.0.saturating_sub(1);
                if e.0 == 0 {
                    counts.remove(&s);
                    let _ = self.ops.send(Op::Off(s));
                }
            }
        }
    }

    /// Session `key` is a member of `group` (joined, or its options replaced); the receiver
    /// (if any) resolves once this node takes the group's share.
    pub fn join(&self, group: Group, key: &str, o: SubOptions) -> Option<oneshot::Receiver<bool>> {
        let Ok(mut groups) = self.groups.lock() else {
            return None;
        };
        let m = groups.entry(group.clone()).or_insert_with(|| {
            let (tx, rx) = watch::channel(false);
            let _ = self.ops.send(Op::Share(group, tx));
            Members {
                list: Vec::new(),
                next: 0,
                heard: rx,
            }
        });
        match m.list.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = o,
            None => m.list.push((key.to_string(), o)),
        }
        if *m.heard.borrow() {
            return None;
        }
        let mut heard = m.heard.clone();
        drop(groups);
        let (tx, rx) = oneshot::channel();
        self.rt.spawn(async move {
            let _ = heard.wait_for(|h| *h).await;
            let _ = tx.send(true);
        });
        Some(rx)
    }

    /// Session `key` leaves `group`; the last member stops this node's share.
    pub fn leave(&self, group: &Group, key: &str) {
        let Ok(mut groups) = self.groups.lock() else {
            return;
        };
        if let Some(m) = groups.get_mut(group) {
            m.list.retain(|(k, _)| k != key);
            if m.list.is_empty() {
                groups.remove(group);
                let _ = self.ops.send(Op::Unshare(group.clone()));
            }
        }
    }

    /// The groups with members here whose filter matches `topic` (see [`group_matches`]).
    pub fn groups_matching(&self, topic: &str) -> Vec<Group> {
        let Ok(groups) = self.groups.lock() else {
            return Vec::new();
        };
        groups
            .keys()
            .filter(|(_, f)| group_matches(f, topic))
            .cloned()
            .collect()
    }

    /// The member that takes the group's next message on this node, in turn.
    pub fn pick(&self, group: &Group) -> Option<(String, SubOptions)> {
        let mut groups = self.groups.lock().ok()?;
        let m = groups.get_mut(group)?;
        if m.list.is_empty() {
            return None;
        }
        let i = m.next % m.list.len();
        m.next = i + 1;
        m.list.get(i).cloned()
    }

    /// The scopes heard now and how many subscriptions need each (tests, metrics).
    #[cfg(test)]
    pub fn counts(&self) -> Vec<(Scope, usize)> {
        let mut v: Vec<_> = self
            .counts
            .lock()
            .map(|c| c.iter().map(|(s, (n, _))| (s.clone(), *n)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_has_one_scope_and_a_filter_hears_every_scope_its_topics_can_have() {
        assert_eq!(Scope::of_topic("channels/c1/messages/a"), Scope::Channel("c1".into()));
        assert_eq!(Scope::of_topic("channels/c1"), Scope::Other);
        assert_eq!(
            Scope::of_topic("channels/a.b/messages"),
            Scope::Other,
            "not a plain token"
        );
        assert_eq!(Scope::of_topic("x/y"), Scope::Other);
        assert_eq!(
            Scope::of_filter("channels/c1/messages/#"),
            vec![Scope::Channel("c1".into())]
        );
        assert_eq!(
            Scope::of_filter("channels/c1/#"),
            vec![Scope::Channel("c1".into()), Scope::Other]
        );
        assert_eq!(
            Scope::of_filter("$share/g/channels/c1/messages"),
            vec![Scope::Channel("c1".into())]
        );
        assert_eq!(Scope::of_filter("#"), vec![Scope::AllChannels, Scope::Other]);
        assert_eq!(
            Scope::of_filter("channels/+/messages"),
            vec![Scope::AllChannels, Scope::Other]
        );
        assert_eq!(Scope::of_filter("a/+/b"), vec![Scope::Other]);
        // Every topic a filter matches is in one of its scopes.
        for (filter, topic) in [
            ("channels/c1/#", "channels/c1/messages/x"),
            ("channels/c1/#", "channels/c1"),
            ("#", "channels/c1/messages"),
            ("+/c1/messages", "channels/c1/messages"),
            ("channels/a.b/messages", "channels/a.b/messages"),
        ] {
            assert!(crate::codec::matches(filter, topic));
            let t = Scope::of_topic(topic);
            let heard = Scope::of_filter(filter)
                .iter()
                .any(|s| *s == t || (*s == Scope::AllChannels && matches!(t, Scope::Channel(_))));
            assert!(heard, "{filter} {topic}");
        }
    }

    struct Port(Mutex<Vec<(Scope, bool)>>);
    impl Cluster for Port {
        fn export(&self, _: Carried, _: bool, _: Option<oneshot::Receiver<bool>>) -> Option<oneshot::Receiver<bool>> {
            None
        }
        fn listen(&self, scope: Scope, on: bool) -> BoxFuture<()> {
            if let Ok(mut v) = self.0.lock() {
                v.push((scope, on));
            }
            Box::pin(async {})
        }
        fn claim(&self, _: &str) -> BoxFuture<Result<u64, PortError>> {
            Box::pin(async { Ok(1) })
        }
        fn current(&self) -> bool {
            true
        }
        fn share(&self, group: &str, filter: &str, on: bool) -> BoxFuture<()> {
            if let Ok(mut v) = self.0.lock() {
                v.push((Scope::Channel(format!("share {group} {filter}")), on));
            }
            Box::pin(async {})
        }
    }

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            rap: false,
            sub_id: None,
        }
    }

    #[tokio::test]
    async fn a_group_takes_its_share_with_its_first_member_and_members_take_turns() {
        let port = Arc::new(Port(Mutex::new(Vec::new())));
        let i = Interest::start(port.clone(), &tokio::runtime::Handle::current());
        let g: Group = ("g".into(), "a/#".into());
        let w = i.join(g.clone(), "k1", opts(1)).expect("not taken yet: a wait");
        assert!(w.await.unwrap_or(false));
        assert!(i.join(g.clone(), "k2", opts(0)).is_none(), "taken already: no wait");
        assert!(i.join(g.clone(), "k2", opts(2)).is_none(), "options replaced");
        let picks: Vec<_> = (0..4).filter_map(|_| i.pick(&g)).map(|(k, o)| (k, o.qos)).collect();
        assert_eq!(
            picks,
            vec![("k1".into(), 1), ("k2".into(), 2), ("k1".into(), 1), ("k2".into(), 2)]
        );
        i.leave(&g, "k1");
        assert_eq!(i.pick(&g).map(|(k, _)| k), Some("k2".to_string()));
        i.leave(&g, "k2");
        assert!(i.pick(&g).is_none(), "no member left");
        // The op task has applied both by the time a new wait resolves.
        let w = i.join(("h".into(), "b".into()), "k3", opts(1)).expect("a wait");
        assert!(w.await.unwrap_or(false));
        let seen = port.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            vec![
                (Scope::Channel("share g a/#".into()), true),
                (Scope::Channel("share g a/#".into()), false),
                (Scope::Channel("share h b".into()), true)
            ]
        );
    }

    #[tokio::test]
    async fn the_first_subscription_listens_the_last_stops_and_waits_resolve_once_heard() {
        let port = Arc::new(Port(Mutex::new(Vec::new())));
        let i = Interest::start(port.clone(), &tokio::runtime::Handle::current());
        let w = i.add("channels/c1/messages").expect("not heard yet: a wait");
        assert!(w.await.unwrap_or(false));
        assert!(i.add("channels/c1/messages/#").is_none(), "heard already: no wait");
        assert_eq!(i.counts(), vec![(Scope::Channel("c1".into()), 2)]);
        i.remove("channels/c1/messages");
        assert_eq!(i.counts(), vec![(Scope::Channel("c1".into()), 1)]);
        i.remove("channels/c1/messages/#");
        assert!(i.counts().is_empty());
        // The op task has applied both by the time a new wait resolves.
        let w = i.add("x").expect("a wait");
        assert!(w.await.unwrap_or(false));
        let seen = port.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            vec![
                (Scope::Channel("c1".into()), true),
                (Scope::Channel("c1".into()), false),
                (Scope::Other, true)
            ]
        );
    }
}
