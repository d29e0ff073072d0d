//! How a message crosses between nodes on NATS: the subject names its scope
//! (`<prefix>.m.<domain>.<channel>` for a channel's messages, `<prefix>.o` for topics
//! outside channels, `<prefix>.r` for retained messages, which every node hears), the payload
//! is the message's payload untouched, and everything else travels in headers (the
//! subtopic, the MQTT 5 properties hex-encoded, QoS, retain, expiry, publisher, ...).

use async_nats::HeaderMap;
use broker::{Carried, Identity, PayloadFormat, Scope, Transport};
use bytes::Bytes;

const NODE: &str = "Fluxgate-Node";
const TOPIC: &str = "Fluxgate-Topic";
const CHANNEL: &str = "Fluxgate-Channel";
const SUBTOPIC: &str = "Fluxgate-Subtopic";
const QOS: &str = "Fluxgate-Qos";
const RETAIN: &str = "Fluxgate-Retain";
const EXPIRES: &str = "Fluxgate-Expires";
const PROPS: &str = "Fluxgate-Props";
const DOMAIN: &str = "Fluxgate-Domain";
const PUBLISHER: &str = "Fluxgate-Publisher";
const TRANSPORT: &str = "Fluxgate-Transport";
const FORMAT: &str = "Fluxgate-Format";
const RECEIVED: &str = "Fluxgate-Received";
const ENTRY: &str = "Fluxgate-Entry";

/// The subjects of one cluster (one prefix).
#[derive(Clone, Debug)]
pub struct Subjects {
    pub prefix: String,
}

/// A domain id as a subject token (`_` for none, or one that is not a plain token).
fn domain_token(c: &Carried) -> &str {
    match &c.publisher {
        Some(p) if crate::config::valid_token(&p.domain_id) => &p.domain_id,
        _ => "_",
    }
}

impl Subjects {
    /// Where a message is published.
    pub fn of(&self, c: &Carried) -> String {
        match Scope::of_topic(&c.topic) {
            Scope::Channel(ch) => format!("{}.m.{}.{ch}", self.prefix, domain_token(c)),
            _ => format!("{}.o", self.prefix),
        }
    }

    /// What a node subscribes to for a scope (any domain: a channel id is unique).
    pub fn listen(&self, s: &Scope) -> String {
        match s {
            Scope::Channel(ch) => format!("{}.m.*.{ch}", self.prefix),
            Scope::AllChannels => format!("{}.m.>", self.prefix),
            Scope::Other => format!("{}.o", self.prefix),
        }
    }

    /// Retained messages (and their deletions), heard by every node.
    pub fn retained(&self) -> String {
        format!("{}.r", self.prefix)
    }

    /// The NATS queue group of shared subscription `group` on `filter`: the same on every
    /// node, and a different one for every (group, filter) pair (a digest: names and
    /// filters may hold anything a queue name cannot, and be long).
    pub fn queue(&self, group: &str, filter: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((group.len() as u64).to_be_bytes());
        h.update(group.as_bytes());
        h.update(filter.as_bytes());
        format!("{}-share-{}", self.prefix, hex(&h.finalize()[..16]))
    }

    /// Gap notices: a node lost messages on their way to the others (its NATS connection
    /// came back, its export queue overflowed); every node's persistent sessions catch up
    /// from the store.
    pub fn gap(&self) -> String {
        format!("{}.gap", self.prefix)
    }

    /// Applied notices: how far a node applied the outbox (see `peers`).
    pub fn applied(&self) -> String {
        format!("{}.applied", self.prefix)
    }

    /// Change notices (the outbox's fast path).
    pub fn changes(&self) -> String {
        format!("{}.changes", self.prefix)
    }
}

/// Percent-escapes what a header value cannot carry (`%`, controls, spaces).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '%' | ' ' | '\u{7f}' | '\u{0}'..='\u{1f}' => out.push_str(&format!("%{:02X}", ch as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unesc(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

fn transport_name(t: Transport) -> &'static str {
    t.as_str()
}

fn transport_of(s: &str) -> Transport {
    match s {
        "mqtts" => Transport::Mqtts,
        "ws" => Transport::Ws,
        "wss" => Transport::Wss,
        "http" => Transport::Http,
        _ => Transport::Mqtt,
    }
}

fn format_name(f: PayloadFormat) -> &'static str {
    match f {
        PayloadFormat::Detect => "detect",
        PayloadFormat::Senml => "senml",
        PayloadFormat::Json => "json",
    }
}

fn format_of(s: &str) -> PayloadFormat {
    match s {
        "senml" => PayloadFormat::Senml,
        "json" => PayloadFormat::Json,
        _ => PayloadFormat::Detect,
    }
}

/// The headers of a message leaving `node`.
pub fn headers(c: &Carried, node: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(NODE, node.to_string());
    match broker::topic::parse(&c.topic, false).filter(|_| matches!(Scope::of_topic(&c.topic), Scope::Channel(_))) {
        Some(t) => {
            h.insert(CHANNEL, t.channel.to_string());
            h.insert(SUBTOPIC, esc(t.subtopic));
        }
        None => h.insert(TOPIC, esc(&c.topic)),
    }
    h.insert(QOS, c.qos.to_string());
    if c.retain {
        h.insert(RETAIN, "1");
    }
    if c.expires_at_ms > 0 {
        h.insert(EXPIRES, c.expires_at_ms.to_string());
    }
    if !c.props.is_empty() {
        h.insert(PROPS, hex(&c.props));
    }
    if let Some(p) = &c.publisher {
        h.insert(DOMAIN, esc(&p.domain_id));
        h.insert(PUBLISHER, esc(&p.client_id));
    }
    h.insert(TRANSPORT, transport_name(c.transport));
    h.insert(FORMAT, format_name(c.format));
    h.insert(RECEIVED, c.received_at.to_string());
    if c.entry != 0 {
        h.insert(ENTRY, c.entry.to_string());
    }
    h
}

/// A message from another node, read back; `None` for one that is not ours or is damaged.
pub fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Option<(String, Carried)> {
    let h = headers?;
    let get = |k: &str| h.get(k).map(|v| v.as_str());
    let node = get(NODE)?.to_string();
    let topic = match (get(CHANNEL), get(SUBTOPIC), get(TOPIC)) {
        (Some(channel), Some(st), _) => {
            let st = unesc(st)?;
            if st.is_empty() {
                format!("channels/{channel}/messages")
            } else {
                format!("channels/{channel}/messages/{st}")
            }
        }
        (None, _, Some(t)) => unesc(t)?,
        _ => return None,
    };
    let publisher = match (get(DOMAIN), get(PUBLISHER)) {
        (Some(d), Some(p)) => Some(Identity {
            domain_id: unesc(d)?,
            client_id: unesc(p)?,
        }),
        _ => None,
    };
    let c = Carried {
        topic,
        payload,
        qos: get(QOS)?.parse::<u8>().ok().filter(|q| *q <= 2)?,
        retain: get(RETAIN) == Some("1"),
        props: Bytes::from(get(PROPS).map(unhex).unwrap_or(Some(Vec::new()))?),
        expires_at_ms: get(EXPIRES).map(str::parse).transpose().ok()?.unwrap_or(0),
        publisher,
        transport: transport_of(get(TRANSPORT).unwrap_or("")),
        format: format_of(get(FORMAT).unwrap_or("")),
        received_at: get(RECEIVED).and_then(|r| r.parse().ok()).unwrap_or(0),
        entry: get(ENTRY).and_then(|r| r.parse().ok()).unwrap_or(0),
    };
    Some((node, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carried(topic: &str) -> Carried {
        Carried {
            topic: topic.into(),
            payload: Bytes::from_static(b"{\"v\":1}"),
            qos: 2,
            retain: true,
            props: Bytes::from_static(&[0x03, 0x00, 0x01, b'x', 0x26, 0, 1, b'k', 0, 2, b'%', b'\n']),
            expires_at_ms: 1_700_000_000_123,
            publisher: Some(Identity {
                domain_id: "d-1".into(),
                client_id: "c 1%".into(),
            }),
            transport: Transport::Wss,
            format: PayloadFormat::Senml,
            received_at: 42,
            entry: (3 << 43) + 17,
        }
    }

    #[test]
    fn a_message_crosses_whole_on_its_scope_subject() {
        let s = Subjects { prefix: "fg".into() };
        for (topic, subject) in [
            ("channels/ch1/messages/a b/%x\n", "fg.m.d-1.ch1"),
            ("channels/ch1/messages", "fg.m.d-1.ch1"),
            ("some/other topic", "fg.o"),
            ("channels/a.b/messages", "fg.o"),
        ] {
            let c = carried(topic);
            assert_eq!(s.of(&c), subject);
            let h = headers(&c, "n1");
            let (node, back) = decode(Some(&h), c.payload.clone()).expect("decodes");
            assert_eq!(node, "n1");
            assert_eq!(back, c, "{topic}");
        }
        let mut anon = carried("channels/ch1/messages");
        anon.publisher = None;
        assert_eq!(s.of(&anon), "fg.m._.ch1");
        assert_eq!(s.listen(&Scope::Channel("ch1".into())), "fg.m.*.ch1");
        assert!(decode(None, Bytes::new()).is_none(), "no headers: not ours");
    }
}
