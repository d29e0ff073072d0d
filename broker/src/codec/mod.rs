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

mod control;
mod filters;
mod publish;

pub use control::*;
pub use filters::*;
pub use publish::*;

/// A framed packet from raw bytes (tests).
#[cfg(test)]
pub(crate) fn test_frame(bytes: &[u8]) -> Frame {
    let mut b = BytesMut::from(bytes);
    next_frame(&mut b, 1 << 20).expect("ok").expect("complete")
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
}
