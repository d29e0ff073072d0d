//! MQTT framing and the packet fields the front works with, for 3.1.1 and 5. Parsing never
//! panics: every length is checked and malformed input is a [`FrameError`]. Publish
//! properties are carried as raw bytes (validated once on ingress), so a message passes from
//! a 5 publisher to 5 subscribers without re-encoding and to 3.1.1 subscribers without them.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const UNSUBSCRIBE: u8 = 10;
pub const PINGREQ: u8 = 12;
pub const DISCONNECT: u8 = 14;

/// Property identifiers used by the front.
pub mod prop {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed remaining length")]
    BadLength,
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed packet")]
    Malformed,
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// One framed packet: the whole packet bytes and where the variable header starts.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Bytes,
    pub header_len: usize,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.bytes[0] >> 4
    }
    pub fn flags(&self) -> u8 {
        self.bytes[0] & 0x0f
    }
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }
}

/// How many packets `buf` holds, counting from its first byte (a run of whole packets the
/// server encoded; a truncated last one counts too).
pub fn count_packets(buf: &[u8]) -> u64 {
    let mut n = 0;
    let mut at = 0;
    while at < buf.len() {
        n += 1;
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        while let Some(&b) = buf.get(i) {
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 || shift > 21 {
                break;
            }
        }
        at = i.saturating_add(len);
    }
    n
}

/// Takes one complete packet off the front of `buf`, if there is one.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len: usize = 0;
    let mut shift = 0;
    let mut i = 1;
    loop {
        if i >= buf.len() {
            return Ok(None);
        }
        if i > 4 {
            return Err(FrameError::BadLength);
        }
        let b = buf[i];
        len |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    let total = i + len;
    if total > max {
        return Err(FrameError::TooLarge(total));
    }
    if buf.len() < total {
        // Nothing is reserved for what has not arrived: a peer announcing a large packet
        // costs only the bytes it really sent.
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: buf.split_to(total).freeze(),
        header_len: i,
    }))
}

pub fn put_len(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if len == 0 {
            break;
        }
    }
}

fn len_of_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn read_u8(b: &mut &[u8]) -> Result<u8, FrameError> {
    if b.is_empty() {
        return Err(FrameError::Malformed);
    }
    Ok(b.get_u8())
}

fn read_u16(b: &mut &[u8]) -> Result<u16, FrameError> {
    if b.len() < 2 {
        return Err(FrameError::Malformed);
    }
    Ok(b.get_u16())
}

fn read_u32(b: &mut &[u8]) -> Result<u32, FrameError> {
    if b.len() < 4 {
        return Err(FrameError::Malformed);
    }
    Ok(b.get_u32())
}

fn read_varint(b: &mut &[u8]) -> Result<usize, FrameError> {
    let mut v = 0usize;
    for i in 0..4 {
        let x = read_u8(b)?;
        v |= ((x & 0x7f) as usize) << (7 * i);
        if x & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FrameError::Malformed)
}

fn read_bin<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
    let n = read_u16(b)? as usize;
    if b.len() < n {
        return Err(FrameError::Malformed);
    }
    let (s, rest) = b.split_at(n);
    *b = rest;
    Ok(s)
}

/// A UTF-8 string; U+0000 is refused [MQTT-1.5.3-2].
fn read_str<'a>(b: &mut &'a [u8]) -> Result<&'a str, FrameError> {
    let s = std::str::from_utf8(read_bin(b)?).map_err(|_| FrameError::Malformed)?;
    if s.contains('\0') {
        return Err(FrameError::Malformed);
    }
    Ok(s)
}

/// Properties of an MQTT 5 packet, as a slice, skipping them in `b`.
fn take_props<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
    let n = read_varint(b)?;
    if b.len() < n {
        return Err(FrameError::Malformed);
    }
    let (p, rest) = b.split_at(n);
    *b = rest;
    Ok(p)
}

/// A property's value, as far as the front needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropValue<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(usize),
    Bin(&'a [u8]),
    Pair,
}

/// Splits a property block into (identifier, value, whole property bytes).
/// One property: identifier, value, and its whole encoded bytes.
pub type Prop<'a> = (u8, PropValue<'a>, &'a [u8]);

pub fn props(mut p: &[u8]) -> Result<Vec<Prop<'_>>, FrameError> {
    let mut out = Vec::new();
    while !p.is_empty() {
        let start = p;
        let id = read_varint(&mut p)?;
        let v = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => PropValue::Byte(read_u8(&mut p)?),
            0x13 | 0x21 | 0x22 | 0x23 => PropValue::U16(read_u16(&mut p)?),
            0x02 | 0x11 | 0x18 | 0x27 => PropValue::U32(read_u32(&mut p)?),
            0x0B => PropValue::Varint(read_varint(&mut p)?),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PropValue::Bin(read_str(&mut p)?.as_bytes()),
            0x09 | 0x16 => PropValue::Bin(read_bin(&mut p)?),
            0x26 => {
                read_str(&mut p)?;
                read_str(&mut p)?;
                PropValue::Pair
            }
            _ => return Err(FrameError::Malformed),
        };
        out.push((id as u8, v, &start[..start.len() - p.len()]));
    }
    Ok(out)
}

/// The fields of a PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishInfo<'a> {
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// Empty when the packet uses a topic alias only.
    pub topic: &'a str,
    pub pkid: u16,
    pub alias: Option<u16>,
    pub expiry: Option<u32>,
    /// The v5 properties to pass on: everything except Topic Alias and Message Expiry (which
    /// is rewritten per delivery). Empty for 3.1.1.
    pub props: Vec<&'a [u8]>,
    pub payload: &'a [u8],
}

pub fn publish(f: &Frame, v5: bool) -> Result<PublishInfo<'_>, FrameError> {
    let qos = (f.flags() >> 1) & 0x03;
    if qos == 3 {
        return Err(FrameError::Malformed);
    }
    let dup = f.flags() & 0x08 != 0;
    if qos == 0 && dup {
        return Err(FrameError::Protocol("DUP set on a QoS 0 PUBLISH"));
    }
    let mut b = f.body();
    let topic = read_str(&mut b)?;
    let pkid = if qos > 0 { read_u16(&mut b)? } else { 0 };
    if qos > 0 && pkid == 0 {
        return Err(FrameError::Protocol("packet identifier 0"));
    }
    let (mut alias, mut expiry, mut keep) = (None, None, Vec::new());
    if v5 {
        for (id, v, raw) in props(take_props(&mut b)?)? {
            match (id, v) {
                (prop::TOPIC_ALIAS, PropValue::U16(a)) => {
                    if alias.replace(a).is_some() {
                        return Err(FrameError::Protocol("Topic Alias given twice"));
                    }
                }
                (prop::MESSAGE_EXPIRY, PropValue::U32(e)) => expiry = Some(e),
                (prop::PAYLOAD_FORMAT, PropValue::Byte(x)) => {
                    if x > 1 {
                        return Err(FrameError::Protocol("payload format indicator"));
                    }
                    keep.push(raw)
                }
                (prop::CONTENT_TYPE | prop::RESPONSE_TOPIC | prop::CORRELATION_DATA | prop::USER_PROPERTY, _) => {
                    keep.push(raw)
                }
                // A Subscription Identifier from a client is a protocol error [MQTT-3.3.4-6].
                _ => return Err(FrameError::Protocol("property not allowed in PUBLISH")),
            }
        }
    }
    Ok(PublishInfo {
        qos,
        retain: f.flags() & 1 == 1,
        dup,
        topic,
        pkid,
        alias,
        expiry,
        props: keep,
        payload: b,
    })
}

/// One delivery to encode.
pub struct OutPublish<'a> {
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub topic: &'a [u8],
    pub pkid: u16,
    /// Raw v5 properties (ignored for 3.1.1).
    pub props: &'a [u8],
    pub expiry: Option<u32>,
    pub sub_ids: &'a [u32],
    pub payload: &'a [u8],
}

/// The encoded size of a delivery, to check it against the client's Maximum Packet Size.
pub fn publish_len(p: &OutPublish<'_>, v5: bool) -> usize {
    let body = publish_body_len(p, v5);
    1 + len_of_len(body) + body
}

fn publish_props_len(p: &OutPublish<'_>) -> usize {
    p.props.len() + p.expiry.map_or(0, |_| 5) + p.sub_ids.iter().map(|i| 1 + len_of_len(*i as usize)).sum::<usize>()
}

fn publish_body_len(p: &OutPublish<'_>, v5: bool) -> usize {
    let mut n = 2 + p.topic.len() + if p.qos > 0 { 2 } else { 0 } + p.payload.len();
    if v5 {
        let pl = publish_props_len(p);
        n += len_of_len(pl) + pl;
    }
    n
}

pub fn encode_publish(out: &mut BytesMut, p: &OutPublish<'_>, v5: bool) {
    let body = publish_body_len(p, v5);
    out.reserve(body + 5);
    out.put_u8(0x30 | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain));
    put_len(out, body);
    out.put_u16(p.topic.len() as u16);
    out.put_slice(p.topic);
    if p.qos > 0 {
        out.put_u16(p.pkid);
    }
    if v5 {
        put_len(out, publish_props_len(p));
        out.put_slice(p.props);
        if let Some(e) = p.expiry {
            out.put_u8(prop::MESSAGE_EXPIRY);
            out.put_u32(e);
        }
        for id in p.sub_ids {
            out.put_u8(prop::SUBSCRIPTION_ID);
            put_len(out, *id as usize);
        }
    }
    out.put_slice(p.payload);
}

/// One filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOpts {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

/// A SUBSCRIBE: packet id, subscription identifier (v5) and each filter with its options.
#[derive(Debug)]
pub struct SubscribeInfo<'a> {
    pub pkid: u16,
    pub sub_id: Option<u32>,
    pub filters: Vec<(&'a str, SubOpts)>,
}

pub fn subscribe(f: &Frame, v5: bool) -> Result<SubscribeInfo<'_>, FrameError> {
    if f.flags() != 0b0010 {
        return Err(FrameError::Malformed);
    }
    let mut b = f.body();
    let pkid = read_u16(&mut b)?;
    let mut sub_id = None;
    if v5 {
        for (id, v, _) in props(take_props(&mut b)?)? {
            match (id, v) {
                (prop::SUBSCRIPTION_ID, PropValue::Varint(0)) => {
                    return Err(FrameError::Protocol("subscription identifier 0"))
                }
                (prop::SUBSCRIPTION_ID, PropValue::Varint(n)) => {
                    if sub_id.replace(n as u32).is_some() {
                        return Err(FrameError::Protocol("subscription identifier given twice"));
                    }
                }
                (prop::USER_PROPERTY, _) => {}
                _ => return Err(FrameError::Protocol("property not allowed in SUBSCRIBE")),
            }
        }
    }
    let mut filters = Vec::new();
    while !b.is_empty() {
        let t = read_str(&mut b)?;
        let o = read_u8(&mut b)?;
        // Reserved bits must be 0 [MQTT-3.8.3-4] (3.1.1: all bits above QoS; 5: bits 6-7).
        let reserved = if v5 { o & 0xC0 } else { o & 0xFC };
        if reserved != 0 || o & 0x03 == 3 || (o >> 4) & 0x03 == 3 {
            return Err(FrameError::Malformed);
        }
        filters.push((
            t,
            SubOpts {
                qos: o & 0x03,
                no_local: v5 && o & 0x04 != 0,
                retain_as_published: v5 && o & 0x08 != 0,
                retain_handling: if v5 { (o >> 4) & 0x03 } else { 0 },
            },
        ));
    }
    if filters.is_empty() {
        return Err(FrameError::Protocol("SUBSCRIBE without filters"));
    }
    Ok(SubscribeInfo { pkid, sub_id, filters })
}

/// An UNSUBSCRIBE: packet id and filters.
pub fn unsubscribe(f: &Frame, v5: bool) -> Result<(u16, Vec<&str>), FrameError> {
    if f.flags() != 0b0010 {
        return Err(FrameError::Malformed);
    }
    let mut b = f.body();
    let pkid = read_u16(&mut b)?;
    if v5 {
        take_props(&mut b)?;
    }
    let mut filters = Vec::new();
    while !b.is_empty() {
        filters.push(read_str(&mut b)?);
    }
    if filters.is_empty() {
        return Err(FrameError::Protocol("UNSUBSCRIBE without filters"));
    }
    Ok((pkid, filters))
}

pub fn encode_suback(pkid: u16, codes: &[u8], v5: bool) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u16(pkid);
    if v5 {
        body.put_u8(0);
    }
    body.put_slice(codes);
    framed(0x90, &body)
}

/// UNSUBACK: one packet for the whole UNSUBSCRIBE; reason codes only exist in 5.
pub fn encode_unsuback(pkid: u16, codes: &[u8], v5: bool) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u16(pkid);
    if v5 {
        body.put_u8(0);
        body.put_slice(codes);
    }
    framed(0xB0, &body)
}

/// The packet id of PUBACK, PUBREC, PUBREL or PUBCOMP and the v5 reason code (0 if absent).
/// Properties after the reason code are accepted and ignored.
pub fn ack(f: &Frame) -> Result<(u16, u8), FrameError> {
    let expected = if f.kind() == PUBREL { 0b0010 } else { 0 };
    if f.flags() != expected {
        return Err(FrameError::Malformed);
    }
    let mut b = f.body();
    let pkid = read_u16(&mut b)?;
    let reason = if b.is_empty() { 0 } else { b[0] };
    Ok((pkid, reason))
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP with an optional v5 reason code.
pub fn encode_ack(kind: u8, pkid: u16, reason: Option<u8>) -> Bytes {
    let mut body = BytesMut::with_capacity(3);
    body.put_u16(pkid);
    if let Some(r) = reason {
        body.put_u8(r);
    }
    let first = (kind << 4) | if kind == PUBREL { 0b0010 } else { 0 };
    framed(first, &body)
}

/// A DISCONNECT from the client: reason code and Session Expiry Interval, if given.
pub fn disconnect(f: &Frame, v5: bool) -> Result<(u8, Option<u32>), FrameError> {
    let mut b = f.body();
    if !v5 || b.is_empty() {
        return Ok((0, None));
    }
    let reason = read_u8(&mut b)?;
    let mut expiry = None;
    if !b.is_empty() {
        for (id, v, _) in props(take_props(&mut b)?)? {
            if let (prop::SESSION_EXPIRY, PropValue::U32(e)) = (id, v) {
                expiry = Some(e);
            }
        }
    }
    Ok((reason, expiry))
}

/// What a CONNACK says besides its code.
#[derive(Debug, Default)]
pub struct ConnAckProps<'a> {
    pub assigned_id: Option<&'a str>,
    pub receive_max: u16,
    pub max_packet: u32,
    pub topic_alias_max: u16,
    pub session_expiry: Option<u32>,
    pub server_keep_alive: Option<u16>,
}

pub fn encode_connack(code: u8, session_present: bool, v5: bool, p: Option<&ConnAckProps<'_>>) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(u8::from(session_present && code == 0));
    body.put_u8(code);
    if v5 {
        let mut props = BytesMut::new();
        if let Some(p) = p {
            if let Some(a) = p.assigned_id {
                props.put_u8(prop::ASSIGNED_CLIENT_ID);
                props.put_u16(a.len() as u16);
                props.put_slice(a.as_bytes());
            }
            props.put_u8(prop::RECEIVE_MAXIMUM);
            props.put_u16(p.receive_max);
            props.put_u8(prop::MAXIMUM_PACKET_SIZE);
            props.put_u32(p.max_packet);
            props.put_u8(prop::TOPIC_ALIAS_MAXIMUM);
            props.put_u16(p.topic_alias_max);
            if let Some(e) = p.session_expiry {
                props.put_u8(prop::SESSION_EXPIRY);
                props.put_u32(e);
            }
            if let Some(k) = p.server_keep_alive {
                props.put_u8(prop::SERVER_KEEP_ALIVE);
                props.put_u16(k);
            }
            props.put_u8(prop::SHARED_SUBSCRIPTION_AVAILABLE);
            props.put_u8(1);
        }
        put_len(&mut body, props.len());
        body.put_slice(&props);
    }
    framed(0x20, &body)
}

pub fn encode_disconnect(reason: u8) -> Bytes {
    framed(0xE0, &[reason])
}

pub fn pingresp() -> Bytes {
    Bytes::from_static(&[0xD0, 0x00])
}

/// v5 publish properties of a will, encoded the way a PUBLISH carries them.
pub fn will_props(
    payload_format: Option<u8>,
    content_type: Option<&str>,
    response_topic: Option<&str>,
    correlation: Option<&[u8]>,
    user: &[(String, String)],
) -> Bytes {
    let mut p = BytesMut::new();
    let bin = |p: &mut BytesMut, id: u8, v: &[u8]| {
        p.put_u8(id);
        p.put_u16(v.len() as u16);
        p.put_slice(v);
    };
    if let Some(f) = payload_format {
        p.put_u8(prop::PAYLOAD_FORMAT);
        p.put_u8(f);
    }
    if let Some(c) = content_type {
        bin(&mut p, prop::CONTENT_TYPE, c.as_bytes());
    }
    if let Some(r) = response_topic {
        bin(&mut p, prop::RESPONSE_TOPIC, r.as_bytes());
    }
    if let Some(c) = correlation {
        bin(&mut p, prop::CORRELATION_DATA, c);
    }
    for (k, v) in user {
        p.put_u8(prop::USER_PROPERTY);
        p.put_u16(k.len() as u16);
        p.put_slice(k.as_bytes());
        p.put_u16(v.len() as u16);
        p.put_slice(v.as_bytes());
    }
    p.freeze()
}

fn framed(first: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(first);
    put_len(&mut out, body.len());
    out.put_slice(body);
    out.freeze()
}

/// The protocol level of a CONNECT (4 = 3.1.1, 5 = 5), read without parsing the rest.
pub fn connect_level(f: &Frame) -> Result<u8, FrameError> {
    let mut b = f.body();
    let name = read_str(&mut b)?;
    if name != "MQTT" && name != "MQIsdp" {
        return Err(FrameError::Malformed);
    }
    b.first().copied().ok_or(FrameError::Malformed)
}

/// A topic name: non-empty, no wildcards, no NUL, at most 65,535 bytes.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= 65_535 && !t.contains(['+', '#', '\0'])
}

/// A topic filter: `+` and `#` only as whole levels, `#` only last.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.contains('\0') {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(l) = levels.next() {
        if l.contains('#') && (l != "#" || levels.peek().is_some()) {
            return false;
        }
        if l.contains('+') && l != "+" {
            return false;
        }
    }
    true
}

/// Does `filter` match `topic`? Wildcards never match a topic starting with `$` at the first
/// level [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            level => {
                if t.next() != Some(level) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_in_a_buffer_are_counted() {
        let mut b = Vec::new();
        b.extend_from_slice(&encode_disconnect(0x8e));
        b.extend_from_slice(&[0x40, 0x02, 0x00, 0x01]);
        b.extend_from_slice(&[0xd0, 0x00]);
        assert_eq!(count_packets(&b), 3);
        assert_eq!(count_packets(&[]), 0);
        let mut big = vec![0x30, 0x80, 0x01];
        big.extend(std::iter::repeat_n(0u8, 128));
        assert_eq!(count_packets(&big), 1);
    }

    fn frame(bytes: &[u8]) -> Frame {
        let mut b = BytesMut::from(bytes);
        next_frame(&mut b, 1 << 20).expect("ok").expect("complete")
    }

    #[test]
    fn frames_split_and_wait_for_more_without_reserving() {
        let mut b = BytesMut::from(&[0xC0, 0x00, 0x30][..]);
        assert_eq!(next_frame(&mut b, 100).expect("ok").expect("ping").kind(), PINGREQ);
        assert!(next_frame(&mut b, 100).expect("ok").is_none());
        let mut big = BytesMut::from(&[0x30, 0xff, 0xff, 0x7f][..]);
        assert!(matches!(
            next_frame(&mut big, 1000),
            Err(FrameError::TooLarge(2_097_155))
        ));
        let mut bad = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(next_frame(&mut bad, usize::MAX), Err(FrameError::BadLength)));
        // A half-sent 60 KB packet: nothing is reserved beyond what arrived.
        let mut half = BytesMut::with_capacity(16);
        half.extend_from_slice(&[0x10, 0xe0, 0xd4, 0x03, 0, 4]);
        assert!(next_frame(&mut half, 1 << 20).expect("ok").is_none());
        assert!(half.capacity() < 1024);
    }

    #[test]
    fn publish_fields_v4_and_v5() {
        let f = frame(&[0x32, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i']);
        let p = publish(&f, false).expect("publish");
        assert_eq!((p.qos, p.topic, p.pkid, p.payload), (1, "a/b", 7, &b"hi"[..]));
        // v5 QoS 0 with a topic alias property (0x23 = 5) and empty topic.
        let f = frame(&[0x30, 7, 0, 0, 3, 0x23, 0, 5, b'x']);
        let p = publish(&f, true).expect("publish");
        assert_eq!((p.topic, p.alias, p.payload), ("", Some(5), &b"x"[..]));
        // Two Topic Alias properties are a protocol error, not "the first one wins".
        let f = frame(&[0x30, 10, 0, 0, 6, 0x23, 0, 5, 0x23, 0, 6, b'x']);
        assert!(publish(&f, true).is_err());
        // A subscription identifier from a client is refused.
        let f = frame(&[0x30, 6, 0, 1, b't', 2, 0x0B, 1]);
        assert!(publish(&f, true).is_err());
        // QoS 1 with packet id 0 is refused.
        let f = frame(&[0x32, 5, 0, 1, b't', 0, 0]);
        assert!(publish(&f, false).is_err());
    }

    #[test]
    fn publish_roundtrip_keeps_properties_for_v5_only() {
        let user = will_props(Some(1), Some("text/plain"), None, None, &[("k".into(), "v".into())]);
        let out = OutPublish {
            qos: 1,
            retain: false,
            dup: true,
            topic: b"a/b",
            pkid: 9,
            props: &user,
            expiry: Some(30),
            sub_ids: &[7, 300],
            payload: b"data",
        };
        for v5 in [false, true] {
            let mut b = BytesMut::new();
            encode_publish(&mut b, &out, v5);
            assert_eq!(b.len(), publish_len(&out, v5));
            let f = next_frame(&mut b, 1 << 20).expect("ok").expect("frame");
            if v5 {
                // Subscription identifiers are server-to-client only: parse the body by hand.
                let mut body = f.body();
                assert_eq!(read_str(&mut body).expect("topic"), "a/b");
                assert_eq!(read_u16(&mut body).expect("pkid"), 9);
                let ps = props(take_props(&mut body).expect("props")).expect("props");
                let ids: Vec<u8> = ps.iter().map(|p| p.0).collect();
                assert_eq!(ids, vec![0x01, 0x03, 0x26, 0x02, 0x0B, 0x0B]);
                assert_eq!(body, b"data");
            } else {
                let p = publish(&f, false).expect("v4");
                assert_eq!((p.dup, p.qos, p.pkid, p.payload), (true, 1, 9, &b"data"[..]));
            }
        }
    }

    #[test]
    fn subscribe_options_and_unsubscribe() {
        // v5: pkid 9, sub id 5, filter "a/#" with QoS 1 + No Local + RAP + retain handling 2.
        let f = frame(&[0x82, 11, 0, 9, 2, 0x0B, 5, 0, 3, b'a', b'/', b'#', 0b0010_1101]);
        let s = subscribe(&f, true).expect("sub");
        assert_eq!((s.pkid, s.sub_id), (9, Some(5)));
        assert_eq!(
            s.filters[0].1,
            SubOpts {
                qos: 1,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2
            }
        );
        // 3.1.1 refuses option bits above the QoS.
        let f = frame(&[0x82, 6, 0, 9, 0, 1, b'a', 0b0000_0101]);
        assert!(subscribe(&f, false).is_err());
        let f = frame(&[0xA2, 9, 0, 3, 0, 0, 1, b'a', 0, 1, b'b']);
        assert_eq!(unsubscribe(&f, true).expect("unsub"), (3, vec!["a", "b"]));
        assert_eq!(&encode_unsuback(3, &[0, 0x11], true)[..], &[0xB0, 5, 0, 3, 0, 0, 0x11]);
        assert_eq!(&encode_unsuback(3, &[0, 0x11], false)[..], &[0xB0, 2, 0, 3]);
    }

    #[test]
    fn topic_and_filter_rules() {
        assert!(valid_topic("channels/x/messages"));
        assert!(!valid_topic("a/+"));
        assert!(!valid_topic(""));
        assert!(valid_filter("a/+/b/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b#"));
        assert!(!valid_filter("a+/b"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a/b/c"));
    }
}
