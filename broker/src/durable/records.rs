//! How persistent sessions are encoded for the session store: a session's state (level,
//! subscriptions, will), a queued message's body and metadata, inbound QoS 2 packet ids.

use super::*;

/// An entry's metadata: the delivered QoS and the subscription identifiers.
pub(crate) fn encode_meta(qos: u8, sub_ids: &[u32]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + 4 * sub_ids.len());
    b.put_u8(qos);
    for i in sub_ids {
        b.put_u32(*i);
    }
    b.freeze()
}

pub(crate) fn decode_meta(mut b: Bytes) -> Option<(u8, Vec<u32>)> {
    if b.is_empty() {
        return None;
    }
    let qos = b.get_u8().min(2);
    let mut ids = Vec::new();
    while b.len() >= 4 {
        ids.push(b.get_u32());
    }
    Some((qos, ids))
}

/// A message body as stored: topic, properties, retain flag, expiry deadline, payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Body {
    pub topic: Bytes,
    pub props: Bytes,
    pub retain: bool,
    pub expires_at_ms: u64,
    pub payload: Bytes,
}

pub(crate) fn encode_body(b: &Body) -> Bytes {
    let mut o = BytesMut::with_capacity(16 + b.topic.len() + b.props.len() + b.payload.len());
    o.put_u8(1);
    o.put_u16(b.topic.len().min(u16::MAX as usize) as u16);
    o.put_slice(&b.topic[..b.topic.len().min(u16::MAX as usize)]);
    o.put_u32(b.props.len() as u32);
    o.put_slice(&b.props);
    o.put_u8(u8::from(b.retain));
    o.put_u64(b.expires_at_ms);
    o.put_slice(&b.payload);
    o.freeze()
}

/// A stored queue entry as the delivery it is (`None`: its body or metadata cannot be read).
pub(crate) fn delivery(q: &crate::StoredDelivery) -> Option<crate::outbound::Delivery> {
    let (body, (qos, sub_ids)) = (decode_body(q.body.clone())?, decode_meta(q.meta.clone())?);
    Some(crate::outbound::Delivery {
        topic: body.topic,
        payload: body.payload,
        props: body.props,
        qos,
        retain: body.retain,
        expires_at_ms: body.expires_at_ms,
        sub_ids,
        msg: q.msg,
    })
}

pub(crate) fn decode_body(mut b: Bytes) -> Option<Body> {
    if b.len() < 3 || b.get_u8() != 1 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.len() < n {
        return None;
    }
    let topic = b.split_to(n);
    if b.len() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    if b.len() < n + 9 {
        return None;
    }
    let props = b.split_to(n);
    let retain = b.get_u8() != 0;
    let expires_at_ms = b.get_u64();
    Some(Body {
        topic,
        props,
        retain,
        expires_at_ms,
        payload: b,
    })
}

/// A persistent session's state as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub v5: bool,
    /// Filter and options (granted QoS, No Local, Retain As Published, subscription id).
    pub subs: Vec<(String, SubOptions)>,
    /// The will, and when it is due (Unix ms; 0: when the connection ends).
    pub will: Option<(Will, u64)>,
}

fn put_bytes(o: &mut BytesMut, b: &[u8]) {
    o.put_u32(b.len() as u32);
    o.put_slice(b);
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.len() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.len() >= n).then(|| b.split_to(n))
}

fn get_string(b: &mut Bytes) -> Option<String> {
    String::from_utf8(get_bytes(b)?.to_vec()).ok()
}

pub(crate) fn encode_state(s: &State) -> Bytes {
    let mut o = BytesMut::new();
    o.put_u8(1);
    o.put_u8(u8::from(s.v5));
    o.put_u32(s.subs.len() as u32);
    for (f, o_) in &s.subs {
        put_bytes(&mut o, f.as_bytes());
        o.put_u8(
            o_.qos | (u8::from(o_.no_local) << 2) | (u8::from(o_.rap) << 3) | (u8::from(o_.sub_id.is_some()) << 4),
        );
        o.put_u32(o_.sub_id.unwrap_or(0));
    }
    match &s.will {
        None => o.put_u8(0),
        Some((w, due)) => {
            o.put_u8(1);
            put_bytes(&mut o, w.topic.as_bytes());
            put_bytes(&mut o, &w.payload);
            o.put_u8(w.qos | (u8::from(w.retain) << 2) | (u8::from(w.expiry.is_some()) << 3));
            put_bytes(&mut o, &w.props);
            o.put_u32(w.delay);
            o.put_u32(w.expiry.unwrap_or(0));
            o.put_u64(*due);
        }
    }
    o.freeze()
}

pub(crate) fn decode_state(mut b: Bytes) -> Option<State> {
    if b.len() < 6 || b.get_u8() != 1 {
        return None;
    }
    let v5 = b.get_u8() != 0;
    let n = b.get_u32() as usize;
    let mut subs = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let f = get_string(&mut b)?;
        if b.len() < 5 {
            return None;
        }
        let fl = b.get_u8();
        let id = b.get_u32();
        subs.push((
            f,
            SubOptions {
                qos: (fl & 3).min(2),
                no_local: fl & 4 != 0,
                rap: fl & 8 != 0,
                sub_id: (fl & 16 != 0).then_some(id),
            },
        ));
    }
    if b.is_empty() {
        return None;
    }
    let will = match b.get_u8() {
        0 => None,
        _ => {
            let topic = get_string(&mut b)?;
            let payload = get_bytes(&mut b)?;
            if b.is_empty() {
                return None;
            }
            let fl = b.get_u8();
            let props = get_bytes(&mut b)?;
            if b.len() < 16 {
                return None;
            }
            let delay = b.get_u32();
            let expiry = b.get_u32();
            let due = b.get_u64();
            Some((
                Will {
                    topic,
                    payload,
                    qos: (fl & 3).min(2),
                    retain: fl & 4 != 0,
                    props,
                    delay,
                    expiry: (fl & 8 != 0).then_some(expiry),
                },
                due,
            ))
        }
    };
    Some(State { v5, subs, will })
}

/// Inbound QoS 2 packet ids as stored.
pub(crate) fn encode_inbound<'a>(ids: impl Iterator<Item = &'a u16>) -> Bytes {
    let mut o = BytesMut::new();
    for i in ids {
        o.put_u16(*i);
    }
    o.freeze()
}

pub(crate) fn decode_inbound(mut b: Bytes) -> Vec<u16> {
    let mut v = Vec::new();
    while b.len() >= 2 {
        v.push(b.get_u16());
    }
    v
}

/// A session record for the store.
pub(crate) fn record(
    key: &str,
    owner: Option<&Identity>,
    expiry_s: u32,
    disconnected_at_ms: Option<u64>,
    state: &State,
    inbound: Bytes,
) -> StoredSession {
    StoredSession {
        key: key.to_string(),
        owner: owner.cloned(),
        expiry_s,
        disconnected_at_ms,
        state: encode_state(state),
        inbound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::tests::so;

    #[test]
    fn state_body_and_meta_round_trip_and_garbage_is_refused() {
        let s = State {
            v5: true,
            subs: vec![
                ("channels/a/messages/#".into(), so(2, true, false, Some(7))),
                ("x/y".into(), so(1, false, true, None)),
            ],
            will: Some((
                Will {
                    topic: "channels/a/messages".into(),
                    payload: Bytes::from_static(b"bye"),
                    qos: 1,
                    retain: true,
                    props: Bytes::from_static(&[1, 1]),
                    delay: 5,
                    expiry: Some(60),
                },
                1234,
            )),
        };
        assert_eq!(decode_state(encode_state(&s)), Some(s));
        let b = Body {
            topic: Bytes::from_static(b"channels/a/messages"),
            props: Bytes::from_static(&[3, 0, 1, b'x']),
            retain: false,
            expires_at_ms: 99,
            payload: Bytes::from_static(b"payload"),
        };
        assert_eq!(decode_body(encode_body(&b)), Some(b));
        assert_eq!(decode_meta(encode_meta(2, &[1, 9])), Some((2, vec![1, 9])));
        for junk in [&b""[..], &[1][..], &[1, 0, 0, 0, 0, 9][..], &[2, 0, 0][..]] {
            assert_eq!(decode_state(Bytes::copy_from_slice(junk)), None);
            assert_eq!(decode_body(Bytes::copy_from_slice(junk)), None);
        }
    }
}
