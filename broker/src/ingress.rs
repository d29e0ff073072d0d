//! The one ingress: every message that enters this node's router (a device's PUBLISH, a
//! will, an HTTP publish) passes [`Shared::ingress`], which does, in this order:
//!
//! 1. **retained store**: a retained message is kept (or deleted) in the retained index and
//!    written through; a publisher that must be told (QoS 1/2) waits for that commit, and a
//!    message that cannot be kept is refused before anything else happens;
//! 2. **message sink** (storage; the root crate's live views sit behind the sink): a
//!    session's messages join the batch of its read, which the sink takes before the batch
//!    reaches the router (waiting for room at QoS 1/2); an HTTP message is taken whole or
//!    refused (503), so nothing of a refused message happens;
//! 3. **persistent-session matching**: a QoS 1/2 message is written for the persistent
//!    sessions subscribed to it (`durable`), its entry id goes into the router tag, and the
//!    commit its acknowledgement must wait for is returned;
//! 4. **cluster export** (cluster mode): the message goes to the other nodes; a publisher
//!    that must be told waits for the hand-over;
//! 5. **router publish**: the tagged packet for the router (a session sends the packets of
//!    one read as one router event).
//!
//! Messages from other nodes enter by [`Shared::import`]: live views and persistent
//! sessions here, then the router; never the retained store, the sink or the export.

use crate::reason;
use crate::retained::Stored;
use crate::*;
use bytes::Bytes;
use rumqttd::protocol::Packet;
use std::sync::atomic::Ordering;
use tokio::sync::oneshot;

/// A message entering the router.
pub(crate) struct Publish<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    /// Raw MQTT 5 publish properties.
    pub props: Bytes,
    /// Unix ms after which it is not delivered (0: never).
    pub expires_at_ms: u64,
    /// The publishing session (0: none, e.g. HTTP), for No Local.
    pub origin: u64,
    /// The registry client that published it (`None`: anonymous; not stored).
    pub publisher: Option<&'a Identity>,
    pub transport: Transport,
    pub format: PayloadFormat,
    /// Wait for the persistent sessions' commit (the publisher's acknowledgement waits).
    pub wait_durable: bool,
    /// The publisher can be told a retained message was not kept (v5 at QoS 1/2): refuse
    /// it rather than deliver it unretained.
    pub refusable: bool,
}

/// How the message reaches the sink.
pub(crate) enum ToSink<'a> {
    /// Into the batch of a device's read (offered once the read is parsed).
    Batch(&'a mut Vec<Message>),
    /// Taken whole now, or refused; with `commit`, `Routed::stored` resolves at its commit.
    Whole { commit: bool },
}

/// What the ingress made of an accepted message.
pub(crate) struct Routed {
    pub packet: Packet,
    /// Its mark (`pressure`).
    pub mark: u64,
    /// The persistent sessions' commit, when waited for.
    pub durable: Option<oneshot::Receiver<bool>>,
    /// `ToSink::Whole`: resolves once stored (with `commit`) or at once.
    pub stored: Option<BoxFuture<bool>>,
    /// Cluster mode, QoS 1/2: resolves once the message was handed to the other nodes.
    pub exported: Option<oneshot::Receiver<bool>>,
}

/// A message written for persistent sessions.
struct Written {
    /// Its entry id (in the router tag, and across nodes).
    id: u64,
    /// When waited for: resolves once committed.
    wait: Option<oneshot::Receiver<bool>>,
    /// Cluster mode: entries were written for sessions other nodes hold; resolves once
    /// committed. The message crosses to the other nodes after it, so a node that delivers
    /// it and removes its entry can never see the entry written again afterwards.
    after: Option<oneshot::Receiver<bool>>,
}

/// Why the ingress refused a message (nothing of it happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `mqtt.max_retained` topics are held already.
    RetainedFull,
    /// The retained store could not commit it.
    RetainedNotStored,
    /// The sink could not take it whole.
    Sink(NotTaken),
}

impl Refused {
    /// The v5 reason code of the PUBACK/PUBREC that refuses it.
    pub fn code(self) -> u8 {
        match self {
            Refused::RetainedFull => reason::publish::RETAINED_FULL,
            Refused::RetainedNotStored | Refused::Sink(_) => reason::publish::NOT_STORED,
        }
    }
}

impl Shared {
    /// The one ingress (see the module documentation for its order).
    pub(crate) async fn ingress(&self, p: Publish<'_>, sink: ToSink<'_>) -> Result<Routed, Refused> {
        if p.retain {
            self.keep_retained(&p).await?;
        }
        let mut stored = None;
        let received_at = (router::now_ms() * 1000) as i64;
        if let Some(m) = message_of(&p, received_at) {
            match sink {
                ToSink::Batch(batch) => batch.push(m),
                ToSink::Whole { commit } => stored = Some(self.sink.take(m, commit).map_err(Refused::Sink)?),
            }
        }
        let mut tag = router::Tag {
            qos: p.qos,
            retain: p.retain,
            origin: p.origin,
            expires_at_ms: p.expires_at_ms,
            msg: 0,
            mark: 0,
            props: p.props.clone(),
        };
        let mut durable = None;
        let mut after = None;
        if let Some(w) = self.durable_message(p.topic, p.payload, &tag, p.wait_durable, None) {
            tag.msg = w.id;
            durable = w.wait;
            after = w.after;
        }
        let exported = match &self.cluster {
            Some(c) if !p.topic.starts_with('$') => {
                let mut m = carried(&p, received_at);
                m.entry = tag.msg;
                c.export(m, p.qos > 0, after)
            }
            _ => None,
        };
        let (packet, mark) = router::routed(p.topic, tag, p.payload, &self.pressure);
        Ok(Routed {
            packet,
            mark,
            durable,
            stored,
            exported,
        })
    }

    /// The entry of a message another node accepted (see the module documentation): shown
    /// to live views, queued for persistent sessions here, and returned as the router
    /// packet. Never exported again, never stored here (its node stores it).
    pub(crate) fn import(&self, c: &Carried) -> Packet {
        Metrics::inc(&self.metrics.cluster_imported);
        let p = Publish {
            topic: &c.topic,
            payload: &c.payload,
            qos: c.qos,
            retain: c.retain,
            props: c.props.clone(),
            expires_at_ms: c.expires_at_ms,
            origin: 0,
            publisher: c.publisher.as_ref(),
            transport: c.transport,
            format: c.format,
            wait_durable: false,
            refusable: false,
        };
        if let Some(m) = message_of(&p, c.received_at) {
            self.sink.observe(m);
        }
        let mut tag = router::Tag {
            qos: p.qos,
            retain: p.retain,
            origin: 0,
            expires_at_ms: p.expires_at_ms,
            msg: 0,
            mark: 0,
            props: p.props.clone(),
        };
        let entry = (c.entry != 0).then_some(c.entry);
        if let Some(w) = self.durable_message(p.topic, p.payload, &tag, false, entry) {
            tag.msg = w.id;
        }
        router::routed(p.topic, tag, p.payload, &self.pressure).0
    }

    /// Step 1: the retained index (and its store). A QoS 1/2 publisher's message waits for
    /// the commit; one that cannot be kept is refused when the publisher can be told, else
    /// delivered unretained and counted.
    async fn keep_retained(&self, p: &Publish<'_>) -> Result<(), Refused> {
        let r = Retained {
            topic: p.topic.to_string(),
            payload: Bytes::copy_from_slice(p.payload),
            qos: p.qos,
            props: p.props.clone(),
            expires_at_ms: p.expires_at_ms,
        };
        let (stored, commit) = self.retained.store(r);
        if stored == Stored::Full {
            Metrics::inc(&self.metrics.retained_full);
            tracing::warn!(topic = p.topic, "retained message not kept: mqtt.max_retained reached");
            if p.refusable {
                return Err(Refused::RetainedFull);
            }
        }
        if let (Some(commit), true) = (commit, p.qos > 0) {
            if !commit.await.unwrap_or(false) {
                return Err(Refused::RetainedNotStored);
            }
        }
        Ok(())
    }

    /// Writes a QoS 1/2 message for the persistent sessions subscribed to it, if any (with
    /// `entry`, an imported message's id: for the sessions held here only); returns what
    /// was written (see [`Written`]).
    fn durable_message(
        &self,
        topic: &str,
        payload: &[u8],
        tag: &router::Tag,
        wait: bool,
        entry: Option<u64>,
    ) -> Option<Written> {
        if tag.qos == 0 || !self.durable.enabled() {
            return None;
        }
        let mut targets = self.durable.targets(topic, tag.qos, tag.origin);
        if entry.is_some() {
            // The publisher's node wrote the others' entries.
            targets.retain(|t| !t.remote);
        }
        if targets.is_empty() {
            return None;
        }
        let remote = targets.iter().any(|t| t.remote);
        // What this node's sessions will hold (the others count their own).
        let here = targets.iter().filter(|t| !t.remote).count() as u64;
        let size = (topic.len() + payload.len() + tag.props.len() + 64) as u64 * here;
        if !self.durable.has_room(size) {
            let n = self.metrics.dropped_store_full.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                tracing::warn!(
                    total = n + 1,
                    "session store full (mqtt.max_stored_queue_bytes): message queued in memory only"
                );
            }
            return None;
        }
        self.durable.add_bytes(size);
        let id = entry.unwrap_or_else(|| self.durable.next_id());
        let body = durable::encode_body(&durable::Body {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            props: tag.props.clone(),
            retain: tag.retain,
            expires_at_ms: tag.expires_at_ms,
            // Copied only here: most messages are for no persistent session.
            payload: Bytes::copy_from_slice(payload),
        });
        let direct: Vec<(String, u8, Vec<u32>)> = targets
            .iter()
            .filter(|t| t.direct)
            .map(|t| (t.key.clone(), t.qos, t.sub_ids.clone()))
            .collect();
        let targets = targets
            .into_iter()
            .map(|t| (t.key, durable::encode_meta(t.qos, &t.sub_ids)))
            .collect();
        let op = SessionOp::Message {
            id,
            body: body.clone(),
            targets,
        };
        let (wait, after) = match (wait, remote) {
            (false, false) => {
                self.durable.write(op);
                (None, None)
            }
            (true, false) => (Some(self.durable.write_wait(op)), None),
            (false, true) => (None, Some(self.durable.write_wait(op))),
            (true, true) => {
                let (a, b) = self.split(self.durable.write_wait(op));
                (Some(a), Some(b))
            }
        };
        // Restored sessions without a router link get it from here (after its entry was
        // queued for writing, so their acknowledgement comes after it).
        if !direct.is_empty() {
            if let Some(b) = durable::decode_body(body) {
                for (key, qos, sub_ids) in direct {
                    let d = outbound::Delivery {
                        topic: b.topic.clone(),
                        payload: b.payload.clone(),
                        props: b.props.clone(),
                        qos,
                        retain: false,
                        expires_at_ms: b.expires_at_ms,
                        sub_ids,
                        msg: id,
                    };
                    self.registry.send(&key, registry::Control::Deliver(Box::new(d)));
                }
            }
        }
        Some(Written { id, wait, after })
    }

    /// One commit, waited for twice.
    fn split(&self, rx: oneshot::Receiver<bool>) -> (oneshot::Receiver<bool>, oneshot::Receiver<bool>) {
        let ((ta, a), (tb, b)) = (oneshot::channel(), oneshot::channel());
        self.rt.spawn(async move {
            let ok = rx.await.unwrap_or(false);
            let _ = ta.send(ok);
            let _ = tb.send(ok);
        });
        (a, b)
    }
}

/// The message for the sink: a registry client's message on a channel topic (anonymous
/// sessions and topics outside `channels/` are relayed, not stored).
fn message_of(p: &Publish<'_>, received_at: i64) -> Option<Message> {
    let (id, ct) = (p.publisher?, topic::parse(p.topic, false)?);
    Some(Message {
        domain_id: id.domain_id.clone(),
        channel_id: ct.channel.to_string(),
        subtopic: ct.subtopic.to_string(),
        publisher: id.client_id.clone(),
        transport: p.transport,
        payload: Bytes::copy_from_slice(p.payload),
        format: p.format,
        received_at,
        qos: p.qos,
    })
}

/// The message as it crosses to other nodes.
fn carried(p: &Publish<'_>, received_at: i64) -> Carried {
    Carried {
        topic: p.topic.to_string(),
        payload: Bytes::copy_from_slice(p.payload),
        qos: p.qos,
        retain: p.retain,
        props: p.props.clone(),
        expires_at_ms: p.expires_at_ms,
        publisher: p.publisher.cloned(),
        transport: p.transport,
        format: p.format,
        received_at,
        entry: 0,
    }
}
