//! Just enough MQTT framing for the front: split the byte stream into packets, read the
//! fields authorization needs (packet type, QoS, topic, filters, packet ids), and build the
//! few packets the front answers itself. Forwarded packets are never re-encoded: the front
//! passes the client's original bytes on.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed remaining length")]
    BadLength,
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed packet")]
    Malformed,
}

/// One framed packet: the whole packet bytes, its type and flags, and where the variable
/// header starts.
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
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: buf.split_to(total).freeze(),
        header_len: i,
    }))
}

fn put_len(out: &mut BytesMut, mut len: usize) {
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

fn read_u16(b: &mut &[u8]) -> Result<u16, FrameError> {
    if b.len() < 2 {
        return Err(FrameError::Malformed);
    }
    Ok(b.get_u16())
}

fn read_varint(b: &mut &[u8]) -> Result<usize, FrameError> {
    let mut v = 0usize;
    for i in 0..4 {
        if b.is_empty() {
            return Err(FrameError::Malformed);
        }
        let x = b.get_u8();
        v |= ((x & 0x7f) as usize) << (7 * i);
        if x & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FrameError::Malformed)
}

fn read_str<'a>(b: &mut &'a [u8]) -> Result<&'a str, FrameError> {
    let n = read_u16(b)? as usize;
    if b.len() < n {
        return Err(FrameError::Malformed);
    }
    let (s, rest) = b.split_at(n);
    *b = rest;
    std::str::from_utf8(s).map_err(|_| FrameError::Malformed)
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

/// Splits a property block into (identifier, whole property bytes) pairs.
pub fn props(mut p: &[u8]) -> Result<Vec<(u8, &[u8])>, FrameError> {
    let mut out = Vec::new();
    while !p.is_empty() {
        let start = p;
        let id = start[0];
        find_u16_prop_step(&mut p)?;
        out.push((id, &start[..start.len() - p.len()]));
    }
    Ok(out)
}

/// Skips one property; returns its id and, for two-byte-integer properties, the value.
fn find_u16_prop_step(p: &mut &[u8]) -> Result<(u8, Option<u16>), FrameError> {
    let pid = read_varint(p)? as u8;
    let skip = |p: &mut &[u8], n: usize| -> Result<(), FrameError> {
        if p.len() < n {
            return Err(FrameError::Malformed);
        }
        *p = &p[n..];
        Ok(())
    };
    match pid {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => skip(p, 1)?,
        0x13 | 0x21 | 0x22 | 0x23 => return Ok((pid, Some(read_u16(p)?))),
        0x02 | 0x11 | 0x18 | 0x27 => skip(p, 4)?,
        0x0B => {
            read_varint(p)?;
        }
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
            let n = read_u16(p)? as usize;
            skip(p, n)?
        }
        0x26 => {
            for _ in 0..2 {
                let n = read_u16(p)? as usize;
                skip(p, n)?;
            }
        }
        _ => return Err(FrameError::Malformed),
    }
    Ok((pid, None))
}

/// Finds a two-byte-integer property (such as Topic Alias, 0x23) in a property block.
fn find_u16_prop(mut p: &[u8], id: u8) -> Result<Option<u16>, FrameError> {
    while !p.is_empty() {
        if let (pid, Some(v)) = find_u16_prop_step(&mut p)? {
            if pid == id {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

/// A v5 CONNACK rebuilt with the front's properties (assigned client id, receive maximum,
/// maximum packet size) replacing any upstream ones. Returns the packet and whether it
/// accepted the connection.
pub fn rewrite_connack_v5(
    f: &Frame,
    assigned: Option<&str>,
    receive_max: u16,
    max_packet: u32,
) -> Result<(Bytes, bool), FrameError> {
    let mut b = f.body();
    if b.len() < 2 {
        return Err(FrameError::Malformed);
    }
    let (flags, reason) = (b[0], b[1]);
    b = &b[2..];
    let upstream = if b.is_empty() {
        Vec::new()
    } else {
        props(take_props(&mut b)?)?
    };
    let mut p = BytesMut::new();
    for (id, raw) in upstream {
        if !matches!(id, 0x12 | 0x21 | 0x27) {
            p.put_slice(raw);
        }
    }
    if let Some(a) = assigned {
        p.put_u8(0x12);
        p.put_u16(a.len() as u16);
        p.put_slice(a.as_bytes());
    }
    p.put_u8(0x21);
    p.put_u16(receive_max);
    p.put_u8(0x27);
    p.put_u32(max_packet);
    let mut body = BytesMut::new();
    body.put_u8(flags);
    body.put_u8(reason);
    put_len(&mut body, p.len());
    body.put_slice(&p);
    Ok((framed(0x20, &body), reason == 0))
}

/// The fields of a PUBLISH the front needs.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishInfo<'a> {
    pub qos: u8,
    pub retain: bool,
    /// Empty when the packet uses a topic alias only.
    pub topic: &'a str,
    pub pkid: u16,
    pub alias: Option<u16>,
    pub payload: &'a [u8],
}

pub fn publish(f: &Frame, v5: bool) -> Result<PublishInfo<'_>, FrameError> {
    let qos = (f.flags() >> 1) & 0x03;
    if qos == 3 {
        return Err(FrameError::Malformed);
    }
    let mut b = f.body();
    let topic = read_str(&mut b)?;
    let pkid = if qos > 0 { read_u16(&mut b)? } else { 0 };
    let alias = if v5 {
        find_u16_prop(take_props(&mut b)?, 0x23)?
    } else {
        None
    };
    Ok(PublishInfo {
        qos,
        retain: f.flags() & 1 == 1,
        topic,
        pkid,
        alias,
        payload: b,
    })
}

/// A SUBSCRIBE: packet id, the raw property block (v5) and each filter with its raw options.
#[derive(Debug)]
pub struct SubscribeInfo<'a> {
    pub pkid: u16,
    pub props: &'a [u8],
    pub filters: Vec<(&'a str, u8)>,
}

pub fn subscribe(f: &Frame, v5: bool) -> Result<SubscribeInfo<'_>, FrameError> {
    if f.flags() != 0b0010 {
        return Err(FrameError::Malformed);
    }
    let mut b = f.body();
    let pkid = read_u16(&mut b)?;
    let props = if v5 { take_props(&mut b)? } else { &[][..] };
    let mut filters = Vec::new();
    while !b.is_empty() {
        let t = read_str(&mut b)?;
        if b.is_empty() {
            return Err(FrameError::Malformed);
        }
        filters.push((t, b.get_u8()));
    }
    if filters.is_empty() {
        return Err(FrameError::Malformed);
    }
    Ok(SubscribeInfo { pkid, props, filters })
}

/// Builds a SUBSCRIBE holding only some filters of the original.
pub fn encode_subscribe(pkid: u16, props: &[u8], filters: &[(&str, u8)], v5: bool) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u16(pkid);
    if v5 {
        put_len(&mut body, props.len());
        body.put_slice(props);
    }
    for (t, o) in filters {
        body.put_u16(t.len() as u16);
        body.put_slice(t.as_bytes());
        body.put_u8(*o);
    }
    framed(0x82, &body)
}

/// A SUBACK's packet id and return codes.
pub fn suback(f: &Frame, v5: bool) -> Result<(u16, Vec<u8>), FrameError> {
    let mut b = f.body();
    let pkid = read_u16(&mut b)?;
    if v5 {
        take_props(&mut b)?;
    }
    Ok((pkid, b.to_vec()))
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

/// The packet id of PUBACK, PUBREC, PUBREL or PUBCOMP (and the reason code in v5, 0 if absent).
pub fn ack(f: &Frame) -> Result<(u16, u8), FrameError> {
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

pub fn encode_connack(code: u8, v5: bool) -> Bytes {
    if v5 {
        framed(0x20, &[0, code, 0])
    } else {
        framed(0x20, &[0, code])
    }
}

pub fn encode_disconnect(reason: u8) -> Bytes {
    framed(0xE0, &[reason])
}

pub fn pingreq() -> Bytes {
    Bytes::from_static(&[0xC0, 0x00])
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

/// A topic name: non-empty, no wildcards, no NUL.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0'])
}

/// A topic filter: `+` and `#` only as whole levels, `#` only last.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return false;
        }
        if l.contains('+') && *l != "+" {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Frame {
        let mut b = BytesMut::from(bytes);
        next_frame(&mut b, 1 << 20).expect("ok").expect("complete")
    }

    #[test]
    fn frames_split_and_wait_for_more() {
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
    }

    #[test]
    fn publish_fields_v4_and_v5() {
        // QoS 1, topic "a/b", pkid 7, payload "hi".
        let f = frame(&[0x32, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i']);
        let p = publish(&f, false).expect("publish");
        assert_eq!((p.qos, p.topic, p.pkid, p.payload), (1, "a/b", 7, &b"hi"[..]));
        // v5 QoS 0 with a topic alias property (0x23 = 5) and empty topic.
        let f = frame(&[0x30, 7, 0, 0, 3, 0x23, 0, 5, b'x']);
        let p = publish(&f, true).expect("publish");
        assert_eq!((p.topic, p.alias, p.payload), ("", Some(5), &b"x"[..]));
    }

    #[test]
    fn subscribe_roundtrip_keeps_chosen_filters() {
        let s = encode_subscribe(9, &[], &[("a/#", 1), ("b", 0)], false);
        let f = frame(&s);
        let info = subscribe(&f, false).expect("sub");
        assert_eq!(info.pkid, 9);
        assert_eq!(info.filters, vec![("a/#", 1), ("b", 0)]);
        let sa = encode_suback(9, &[1, 0x80], true);
        assert_eq!(suback(&frame(&sa), true).expect("suback"), (9, vec![1, 0x80]));
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
    }
}
