//! SUBSCRIBE, UNSUBSCRIBE, the acknowledgements, CONNACK, DISCONNECT and PINGRESP.

use super::*;

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
    /// Shared Subscription Available.
    pub shared_subs: bool,
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
            props.put_u8(u8::from(p.shared_subs));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_frame as frame;

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
}
