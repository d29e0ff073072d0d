//! PUBLISH: parsing what a device sends, encoding deliveries, and a will's properties.

use super::*;

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
    /// v5 Topic Alias (with an empty `topic`: the alias stands for it).
    pub alias: Option<u16>,
    pub payload: &'a [u8],
}

/// The encoded size of a delivery, to check it against the client's Maximum Packet Size.
pub fn publish_len(p: &OutPublish<'_>, v5: bool) -> usize {
    let body = publish_body_len(p, v5);
    1 + len_of_len(body) + body
}

fn publish_props_len(p: &OutPublish<'_>) -> usize {
    p.props.len()
        + p.expiry.map_or(0, |_| 5)
        + p.alias.map_or(0, |_| 3)
        + p.sub_ids.iter().map(|i| 1 + len_of_len(*i as usize)).sum::<usize>()
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
        if let Some(a) = p.alias {
            out.put_u8(prop::TOPIC_ALIAS);
            out.put_u16(a);
        }
        for id in p.sub_ids {
            out.put_u8(prop::SUBSCRIPTION_ID);
            put_len(out, *id as usize);
        }
    }
    out.put_slice(p.payload);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_frame as frame;

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
            alias: None,
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
}
