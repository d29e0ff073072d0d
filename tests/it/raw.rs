//! A byte-exact MQTT client for both protocol levels, for the engine's conformance and
//! regression tests: it sends exactly the packets a test builds and returns every packet the
//! server sends, so reason codes, flags and properties can be checked.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn put_varint(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

pub fn framed(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn get_varint(b: &[u8], i: &mut usize) -> usize {
    let (mut v, mut shift) = (0usize, 0);
    while *i < b.len() {
        let x = b[*i];
        *i += 1;
        v |= ((x & 0x7f) as usize) << shift;
        shift += 7;
        if x & 0x80 == 0 {
            break;
        }
    }
    v
}

/// A will: (topic, payload, qos, retain, raw v5 will properties).
pub type WillSpec<'a> = (&'a str, &'a [u8], u8, bool, Vec<u8>);

/// What a CONNECT carries.
#[derive(Clone)]
pub struct Connect<'a> {
    pub v5: bool,
    pub id: &'a str,
    pub user: Option<&'a str>,
    pub pass: Option<&'a str>,
    pub clean: bool,
    pub keep_alive: u16,
    /// Raw v5 CONNECT properties.
    pub props: Vec<u8>,
    pub will: Option<WillSpec<'a>>,
}

impl<'a> Connect<'a> {
    pub fn new(v5: bool, id: &'a str, user: &'a str, pass: &'a str) -> Connect<'a> {
        Connect {
            v5,
            id,
            user: Some(user),
            pass: Some(pass),
            clean: true,
            keep_alive: 60,
            props: Vec::new(),
            will: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.push(if self.v5 { 5 } else { 4 });
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some((_, _, q, r, _)) = &self.will {
            flags |= 0x04 | (q << 3) | if *r { 0x20 } else { 0 };
        }
        if self.user.is_some() {
            flags |= 0x80;
        }
        if self.pass.is_some() {
            flags |= 0x40;
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.v5 {
            put_varint(&mut body, self.props.len());
            body.extend_from_slice(&self.props);
        }
        put_str(&mut body, self.id.as_bytes());
        if let Some((t, p, _, _, wp)) = &self.will {
            if self.v5 {
                put_varint(&mut body, wp.len());
                body.extend_from_slice(wp);
            }
            put_str(&mut body, t.as_bytes());
            put_str(&mut body, p);
        }
        if let Some(u) = self.user {
            put_str(&mut body, u.as_bytes());
        }
        if let Some(p) = self.pass {
            put_str(&mut body, p.as_bytes());
        }
        framed(0x10, &body)
    }
}

/// A PUBLISH as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pub {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// Raw v5 properties.
    pub props: Vec<u8>,
}

impl Pub {
    /// (id, raw value bytes) of each v5 property.
    pub fn prop_list(&self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let p = &self.props;
        let mut i = 0;
        let str_len = |i: usize| 2 + u16::from_be_bytes([p[i], p[i + 1]]) as usize;
        while i < p.len() {
            let id = p[i];
            i += 1;
            let start = i;
            match id {
                0x01 => i += 1,
                0x02 => i += 4,
                0x23 => i += 2,
                0x0B => {
                    get_varint(p, &mut i);
                }
                0x03 | 0x08 | 0x09 => i += str_len(i),
                0x26 => {
                    i += str_len(i);
                    i += str_len(i);
                }
                _ => break,
            }
            out.push((id, p[start..i].to_vec()));
        }
        out
    }

    /// The ids of the v5 properties, in order.
    pub fn prop_ids(&self) -> Vec<u8> {
        self.prop_list().into_iter().map(|(id, _)| id).collect()
    }

    /// The value bytes of property `id`.
    pub fn prop(&self, id: u8) -> Option<Vec<u8>> {
        self.prop_list().into_iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
}

pub struct Raw {
    pub s: tokio::net::TcpStream,
    buf: Vec<u8>,
    pub v5: bool,
}

impl Raw {
    pub async fn open(addr: std::net::SocketAddr, v5: bool) -> Raw {
        let s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        // As devices do: no Nagle delay on a request-answer exchange.
        let _ = s.set_nodelay(true);
        Raw { s, buf: Vec::new(), v5 }
    }

    /// Opens a connection from the local address `from` (e.g. 127.0.0.2: another source).
    pub async fn open_from(from: std::net::IpAddr, addr: std::net::SocketAddr, v5: bool) -> Raw {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(std::net::SocketAddr::new(from, 0)).expect("bind");
        let s = sock.connect(addr).await.expect("tcp");
        Raw { s, buf: Vec::new(), v5 }
    }

    /// Connects; returns the client, the CONNACK code and session-present flag.
    pub async fn connect(addr: std::net::SocketAddr, c: &Connect<'_>) -> (Raw, u8, bool) {
        let mut r = Raw::open(addr, c.v5).await;
        r.send(&c.encode()).await;
        match r.packet().await {
            Some((first, body)) if first >> 4 == 2 => {
                let (sp, code) = (body[0] & 1 == 1, body[1]);
                (r, code, sp)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects; returns the client and the whole CONNACK body (flags, code, v5 properties).
    pub async fn connack(addr: std::net::SocketAddr, c: &Connect<'_>) -> (Raw, Vec<u8>) {
        let mut r = Raw::open(addr, c.v5).await;
        r.send(&c.encode()).await;
        match r.packet().await {
            Some((first, body)) if first >> 4 == 2 => (r, body),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts success.
    pub async fn ok(addr: std::net::SocketAddr, c: &Connect<'_>) -> Raw {
        let (r, code, _) = Raw::connect(addr, c).await;
        assert_eq!(code, 0, "CONNACK");
        r
    }

    /// This client's own address (the server's `remote_addr` for it).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.s.local_addr().expect("local addr")
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// Sends without failing when the server already closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok()
    }

    /// Reads one packet: (first byte, body); `None` when the server closed.
    pub async fn packet(&mut self) -> Option<(u8, Vec<u8>)> {
        self.packet_within(WAIT).await.expect("a packet in time")
    }

    /// `Err(())` on timeout.
    pub async fn packet_within(&mut self, wait: Duration) -> Result<Option<(u8, Vec<u8>)>, ()> {
        loop {
            if self.buf.len() >= 2 {
                let mut i = 1;
                let len = get_varint(&self.buf, &mut i);
                if self.buf[i - 1] & 0x80 == 0 && self.buf.len() >= i + len {
                    let first = self.buf[0];
                    let body = self.buf[i..i + len].to_vec();
                    self.buf.drain(..i + len);
                    return Ok(Some((first, body)));
                }
            }
            let mut tmp = [0u8; 16384];
            let n = match tokio::time::timeout(wait, self.s.read(&mut tmp)).await {
                Err(_) => return Err(()),
                Ok(Err(_)) | Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Waits until the server closes; returns the v5 DISCONNECT reason if one came first.
    pub async fn closed(&mut self) -> Option<u8> {
        let mut reason = None;
        while let Some((first, body)) = self.packet().await {
            if first >> 4 == 14 {
                reason = body.first().copied();
            }
        }
        reason
    }

    pub fn decode_publish(&self, first: u8, body: &[u8]) -> Pub {
        let qos = (first >> 1) & 3;
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        let topic = String::from_utf8_lossy(&body[2..2 + tl]).to_string();
        let mut i = 2 + tl;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([body[i], body[i + 1]]);
            i += 2;
        }
        let mut props = Vec::new();
        if self.v5 {
            let pl = get_varint(body, &mut i);
            props = body[i..i + pl].to_vec();
            i += pl;
        }
        Pub {
            topic,
            payload: body[i..].to_vec(),
            qos,
            retain: first & 1 == 1,
            dup: first & 8 != 0,
            pkid,
            props,
        }
    }

    /// The next PUBLISH, acknowledging it (PUBACK, or PUBREC then PUBCOMP-awaiting PUBREL).
    pub async fn message(&mut self) -> Pub {
        loop {
            let (first, body) = self.packet().await.expect("a PUBLISH");
            if first >> 4 == 3 {
                let p = self.decode_publish(first, &body);
                match p.qos {
                    1 => self.send(&framed(0x40, &p.pkid.to_be_bytes())).await,
                    2 => self.send(&framed(0x50, &p.pkid.to_be_bytes())).await,
                    _ => {}
                }
                return p;
            }
            if first >> 4 == 6 {
                // PUBREL for a QoS 2 delivery: complete it.
                self.send(&framed(0x70, &body[..2])).await;
            }
        }
    }

    /// No PUBLISH arrives within `wait` (other packets are answered and skipped).
    pub async fn no_message_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.packet_within(left).await {
                Err(()) => return true,
                // A dropped connection is not "no message": it would hide a broken session.
                Ok(None) => panic!("the connection closed while a quiet connection was expected"),
                Ok(Some((first, _))) if first >> 4 == 3 => return false,
                Ok(Some(_)) => continue,
            }
        }
    }

    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)], props: &[u8]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            put_varint(&mut body, props.len());
            body.extend_from_slice(props);
        }
        for (f, o) in filters {
            put_str(&mut body, f.as_bytes());
            body.push(*o);
        }
        self.send(&framed(0x82, &body)).await;
        self.ack_of(9, pkid).await
    }

    pub async fn unsubscribe(&mut self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for f in filters {
            put_str(&mut body, f.as_bytes());
        }
        self.send(&framed(0xA2, &body)).await;
        self.ack_of(11, pkid).await
    }

    /// Waits for a SUBACK/UNSUBACK of `pkid` (skipping other packets) and returns its codes.
    async fn ack_of(&mut self, kind: u8, pkid: u16) -> Vec<u8> {
        loop {
            let (first, body) = self.packet().await.expect("an acknowledgement");
            if first >> 4 == kind {
                assert_eq!(u16::from_be_bytes([body[0], body[1]]), pkid);
                if !self.v5 {
                    return body[2..].to_vec();
                }
                let mut i = 2;
                let pl = get_varint(&body, &mut i);
                return body[i + pl..].to_vec();
            }
        }
    }

    /// Sends a PUBLISH with raw v5 properties.
    pub async fn publish_with(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool, pkid: u16, props: &[u8]) {
        let p = self.encode_publish(topic, payload, qos, retain, pkid, props);
        self.send(&p).await;
    }

    /// Sends a PUBLISH (no properties); false when the connection is gone.
    pub async fn try_publish(&mut self, topic: &str, payload: &[u8], qos: u8, pkid: u16) -> bool {
        let p = self.encode_publish(topic, payload, qos, false, pkid, &[]);
        self.try_send(&p).await
    }

    fn encode_publish(&self, topic: &str, payload: &[u8], qos: u8, retain: bool, pkid: u16, props: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if self.v5 {
            put_varint(&mut body, props.len());
            body.extend_from_slice(props);
        }
        body.extend_from_slice(payload);
        framed(0x30 | (qos << 1) | u8::from(retain), &body)
    }

    /// Publishes and completes the QoS handshake; returns the v5 reason code of the PUBACK or
    /// PUBREC (0 for QoS 0).
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool, pkid: u16) -> u8 {
        self.publish_with(topic, payload, qos, retain, pkid, &[]).await;
        if qos == 0 {
            return 0;
        }
        loop {
            let (first, body) = self.packet().await.expect("an acknowledgement");
            let k = first >> 4;
            let code = body.get(2).copied().unwrap_or(0);
            if k == 4 && qos == 1 {
                return code;
            }
            if k == 5 && qos == 2 {
                if code >= 0x80 {
                    return code;
                }
                self.send(&framed(0x62, &body[..2])).await;
            }
            if k == 7 && qos == 2 {
                return 0;
            }
        }
    }

    pub async fn disconnect(&mut self) {
        let _ = self.s.write_all(&[0xE0, 0]).await;
        let _ = self.s.shutdown().await;
    }

    /// DISCONNECT, then waits until the server closes the connection: it has handled it (a
    /// persistent session's disconnect time is stored by then).
    pub async fn disconnect_and_wait(&mut self) {
        self.disconnect().await;
        while self.packet_within(WAIT).await.expect("closed in time").is_some() {}
    }
}

/// The two-byte integer property `id` of a v5 CONNACK body, if present.
pub fn connack_u16(body: &[u8], id: u8) -> Option<u16> {
    connack_prop(body, id).map(|v| u16::from_be_bytes([v[0], v[1]]))
}

/// The one-byte property `id` of a v5 CONNACK body, if present.
pub fn connack_u8(body: &[u8], id: u8) -> Option<u8> {
    connack_prop(body, id).map(|v| v[0])
}

/// The string property `id` of a v5 CONNACK body (e.g. 0x12, Assigned Client Identifier).
pub fn connack_str(body: &[u8], id: u8) -> Option<String> {
    connack_prop(body, id).map(|v| String::from_utf8_lossy(&v[2..]).into_owned())
}

/// The value bytes of property `id` of a v5 CONNACK body.
fn connack_prop(body: &[u8], id: u8) -> Option<Vec<u8>> {
    let mut i = 2;
    let len = get_varint(body, &mut i);
    let end = i + len;
    while i < end {
        let pid = body[i];
        i += 1;
        let n = match pid {
            0x13 | 0x21 | 0x22 => 2,
            0x11 | 0x27 => 4,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x12 | 0x1F | 0x1A | 0x1C | 0x15 | 0x16 => 2 + u16::from_be_bytes([body[i], body[i + 1]]) as usize,
            0x26 => {
                let k = 2 + u16::from_be_bytes([body[i], body[i + 1]]) as usize;
                k + 2 + u16::from_be_bytes([body[i + k], body[i + k + 1]]) as usize
            }
            other => panic!("unknown CONNACK property {other:#x}"),
        };
        if pid == id {
            return Some(body[i..i + n].to_vec());
        }
        i += n;
    }
    None
}

/// v5 property bytes.
pub mod props {
    use super::put_str;

    pub fn user(k: &str, v: &str) -> Vec<u8> {
        let mut o = vec![0x26];
        put_str(&mut o, k.as_bytes());
        put_str(&mut o, v.as_bytes());
        o
    }
    pub fn content_type(v: &str) -> Vec<u8> {
        let mut o = vec![0x03];
        put_str(&mut o, v.as_bytes());
        o
    }
    pub fn expiry(secs: u32) -> Vec<u8> {
        let mut o = vec![0x02];
        o.extend_from_slice(&secs.to_be_bytes());
        o
    }
    pub fn alias(a: u16) -> Vec<u8> {
        let mut o = vec![0x23];
        o.extend_from_slice(&a.to_be_bytes());
        o
    }
    pub fn session_expiry(secs: u32) -> Vec<u8> {
        let mut o = vec![0x11];
        o.extend_from_slice(&secs.to_be_bytes());
        o
    }
    pub fn sub_id(id: u8) -> Vec<u8> {
        vec![0x0B, id]
    }

    pub fn topic_alias_max(n: u16) -> Vec<u8> {
        let mut v = vec![0x22];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }

    pub fn receive_max(n: u16) -> Vec<u8> {
        let mut v = vec![0x21];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }

    pub fn max_packet(n: u32) -> Vec<u8> {
        let mut v = vec![0x27];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }

    pub fn will_delay(secs: u32) -> Vec<u8> {
        let mut v = vec![0x18];
        v.extend_from_slice(&secs.to_be_bytes());
        v
    }

    pub fn correlation(d: &[u8]) -> Vec<u8> {
        let mut v = vec![0x09];
        put_str(&mut v, d);
        v
    }

    pub fn response_topic(t: &str) -> Vec<u8> {
        let mut v = vec![0x08];
        put_str(&mut v, t.as_bytes());
        v
    }

    pub fn payload_format(utf8: bool) -> Vec<u8> {
        vec![0x01, u8::from(utf8)]
    }
}
