//! Test-side MQTT clients (rumqttc, 3.1.1 and 5) whose events arrive on a channel, so tests
//! await events instead of sleeping.

use crate::raw::{framed, put_str};
use std::time::Duration;
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(10);

/// What a test sees from a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    ConnAck(u8),
    SubAck(Vec<u8>),
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    },
    PubAck(u8),
    PubComp,
    /// The connection ended (refused, closed by the server, or network error).
    Closed(String),
}

pub struct Conn {
    pub v4: Option<rumqttc::AsyncClient>,
    pub v5: Option<rumqttc::v5::AsyncClient>,
    pub rx: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
}

/// A client certificate and its key, PEM.
pub type CertAndKey = (Vec<u8>, Vec<u8>);

pub struct Opts<'a> {
    pub id: &'a str,
    pub user: Option<&'a str>,
    pub pass: Option<&'a str>,
    pub clean: bool,
    pub keep_alive: u64,
    pub will: Option<(&'a str, &'a [u8])>,
    pub v5: bool,
    pub ws: bool,
    /// TLS with this CA (PEM) and, for mTLS, a client certificate and key (PEM).
    pub tls: Option<(Vec<u8>, Option<CertAndKey>)>,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            id: "test-client",
            user: None,
            pass: None,
            clean: true,
            keep_alive: 30,
            will: None,
            v5: false,
            ws: false,
            tls: None,
        }
    }
}

fn v4_code(c: rumqttc::ConnectReturnCode) -> u8 {
    use rumqttc::ConnectReturnCode::*;
    match c {
        Success => 0,
        RefusedProtocolVersion => 1,
        BadClientId => 2,
        ServiceUnavailable => 3,
        BadUserNamePassword => 4,
        NotAuthorized => 5,
    }
}

fn v5_code(c: rumqttc::v5::mqttbytes::v5::ConnectReturnCode) -> u8 {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode::*;
    match c {
        Success => 0,
        BadUserNamePassword => 0x86,
        NotAuthorized => 0x87,
        ClientIdentifierNotValid => 0x85,
        other => panic!("unexpected v5 code {other:?}"),
    }
}

fn v4_qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn v5_qos(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub fn connect(addr: std::net::SocketAddr, o: Opts<'_>) -> Conn {
    let (tx, rx) = mpsc::unbounded_channel();
    let host = if o.ws {
        format!("ws://{addr}/mqtt")
    } else {
        addr.ip().to_string()
    };
    if o.v5 {
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::{ConnectionError, Event, MqttOptions};
        let mut opts = MqttOptions::new(o.id, host, addr.port());
        opts.set_keep_alive(Duration::from_secs(o.keep_alive));
        opts.set_clean_start(o.clean);
        if let Some(u) = o.user {
            opts.set_credentials(u, o.pass.unwrap_or(""));
        }
        if let Some((t, p)) = o.will {
            opts.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                t,
                p.to_vec(),
                v5_qos(0),
                false,
                None,
            ));
        }
        if o.ws {
            opts.set_transport(rumqttc::Transport::Ws);
        }
        let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 64);
        let task = tokio::spawn(async move {
            // rumqttc's v5 client treats a refused PUBACK as a fatal state error and reconnects;
            // the test sees the refusal as PubAck(0x87) and not the reconnection's CONNACK.
            let mut skip_connack = false;
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if skip_connack => {
                        skip_connack = false;
                        continue;
                    }
                    Err(ConnectionError::MqttState(rumqttc::v5::StateError::PubAckFail { reason })) => {
                        skip_connack = true;
                        Ev::PubAck(if format!("{reason:?}") == "NotAuthorized" {
                            0x87
                        } else {
                            0x80
                        })
                    }
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Ev::ConnAck(v5_code(a.code)),
                    Ok(Event::Incoming(Packet::SubAck(a))) => Ev::SubAck(
                        a.return_codes
                            .iter()
                            .map(|c| {
                                use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as R;
                                match c {
                                    R::Success(q) => *q as u8,
                                    R::NotAuthorized => 0x87,
                                    R::Unspecified => 0x80,
                                    R::TopicFilterInvalid => 0x8F,
                                    other => panic!("unexpected suback {other:?}"),
                                }
                            })
                            .collect(),
                    ),
                    Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                    },
                    Ok(Event::Incoming(Packet::PubAck(a))) => Ev::PubAck(a.reason as u8),
                    Ok(Event::Incoming(Packet::PubComp(_))) => Ev::PubComp,
                    Ok(Event::Incoming(Packet::Disconnect(d))) => Ev::Closed(format!("disconnect {:?}", d.reason_code)),
                    Ok(_) => continue,
                    Err(ConnectionError::ConnectionRefused(c)) => Ev::ConnAck(v5_code(c)),
                    Err(e) => Ev::Closed(e.to_string()),
                };
                let end = matches!(ev, Ev::Closed(_)) || matches!(ev, Ev::ConnAck(c) if c != 0);
                if tx.send(ev).is_err() || end {
                    return;
                }
            }
        });
        Conn {
            v4: None,
            v5: Some(client),
            rx,
            task,
        }
    } else {
        use rumqttc::{ConnectionError, Event, MqttOptions, Packet};
        let mut opts = MqttOptions::new(o.id, host, addr.port());
        opts.set_keep_alive(Duration::from_secs(o.keep_alive));
        opts.set_clean_session(o.clean);
        if let Some(u) = o.user {
            opts.set_credentials(u, o.pass.unwrap_or(""));
        }
        if let Some((t, p)) = o.will {
            opts.set_last_will(rumqttc::LastWill::new(t, p.to_vec(), v4_qos(0), false));
        }
        if o.ws {
            opts.set_transport(rumqttc::Transport::Ws);
        }
        if let Some((ca, client_auth)) = o.tls.clone() {
            opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        }
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
        let task = tokio::spawn(async move {
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Ev::ConnAck(v4_code(a.code)),
                    Ok(Event::Incoming(Packet::SubAck(a))) => Ev::SubAck(
                        a.return_codes
                            .iter()
                            .map(|c| match c {
                                rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                                rumqttc::SubscribeReasonCode::Failure => 0x80,
                            })
                            .collect(),
                    ),
                    Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                    },
                    Ok(Event::Incoming(Packet::PubAck(_))) => Ev::PubAck(0),
                    Ok(Event::Incoming(Packet::PubComp(_))) => Ev::PubComp,
                    Ok(_) => continue,
                    Err(ConnectionError::ConnectionRefused(c)) => Ev::ConnAck(v4_code(c)),
                    Err(e) => Ev::Closed(e.to_string()),
                };
                let end = matches!(ev, Ev::Closed(_)) || matches!(ev, Ev::ConnAck(c) if c != 0);
                if tx.send(ev).is_err() || end {
                    return;
                }
            }
        });
        Conn {
            v4: Some(client),
            v5: None,
            rx,
            task,
        }
    }
}

impl Conn {
    pub async fn next(&mut self) -> Ev {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("an MQTT event in time")
            .unwrap_or(Ev::Closed("event loop ended".into()))
    }

    /// The next event that is not a PUBACK/PUBCOMP.
    pub async fn next_non_ack(&mut self) -> Ev {
        loop {
            match self.next().await {
                Ev::PubAck(_) | Ev::PubComp => continue,
                e => return e,
            }
        }
    }

    pub async fn connack(&mut self) -> u8 {
        match self.next().await {
            Ev::ConnAck(c) => c,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn connected(mut self) -> Conn {
        assert_eq!(self.connack().await, 0, "connection accepted");
        self
    }

    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Vec<u8> {
        self.subscribe_many(&[(filter, qos)]).await
    }

    pub async fn subscribe_many(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
        if let Some(c) = &self.v4 {
            let f: Vec<rumqttc::SubscribeFilter> = filters
                .iter()
                .map(|(t, q)| rumqttc::SubscribeFilter::new(t.to_string(), v4_qos(*q)))
                .collect();
            c.subscribe_many(f).await.expect("queue subscribe");
        } else if let Some(c) = &self.v5 {
            let f: Vec<rumqttc::v5::mqttbytes::v5::Filter> = filters
                .iter()
                .map(|(t, q)| rumqttc::v5::mqttbytes::v5::Filter::new(t.to_string(), v5_qos(*q)))
                .collect();
            c.subscribe_many(f).await.expect("queue subscribe");
        }
        loop {
            match self.next().await {
                Ev::SubAck(codes) => return codes,
                Ev::Publish { .. } | Ev::PubAck(_) | Ev::PubComp => continue,
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        if let Some(c) = &self.v4 {
            c.publish(topic, v4_qos(qos), retain, payload.to_vec())
                .await
                .expect("queue publish");
        } else if let Some(c) = &self.v5 {
            c.publish(topic, v5_qos(qos), retain, payload.to_vec())
                .await
                .expect("queue publish");
        }
    }

    /// The next PUBLISH delivered (acks skipped).
    pub async fn message(&mut self) -> (String, Vec<u8>) {
        match self.next_non_ack().await {
            Ev::Publish { topic, payload, .. } => (topic, payload),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub async fn disconnect(&self) {
        if let Some(c) = &self.v4 {
            let _ = c.disconnect().await;
        } else if let Some(c) = &self.v5 {
            let _ = c.disconnect().await;
        }
    }

    /// Drops the network connection without DISCONNECT (an abnormal end: the will fires).
    pub fn kill(self) {
        self.task.abort();
    }

    /// Waits until the connection is closed; returns the reason text.
    pub async fn closed(&mut self) -> String {
        loop {
            if let Ev::Closed(why) = self.next().await {
                return why;
            }
        }
    }
}

/// A minimal hand-written MQTT 5 client for checks rumqttc cannot make (its v5 client drops
/// the connection on any refused SUBACK code).
pub struct RawV5 {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawV5 {
    /// Connects and returns the CONNACK reason code with the client.
    pub async fn connect(addr: std::net::SocketAddr, id: &str, user: &str, pass: &str) -> (RawV5, u8) {
        use tokio::io::AsyncWriteExt;
        let s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.extend_from_slice(&[5, 0x02 | 0x80 | 0x40, 0, 30, 0]);
        put_str(&mut body, id.as_bytes());
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, pass.as_bytes());
        let mut c = RawV5 { s, buf: Vec::new() };
        c.s.write_all(&framed(0x10, &body)).await.expect("write");
        let (first, body) = c.packet().await.expect("connack");
        assert_eq!(first >> 4, 2);
        (c, body[1])
    }

    /// Reads one packet: (first byte, body); `None` when the server closed.
    pub async fn packet(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 2 {
                let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
                while i < self.buf.len() {
                    let b = self.buf[i];
                    len += (b & 0x7f) as usize * mult;
                    mult *= 128;
                    i += 1;
                    if b & 0x80 == 0 {
                        if self.buf.len() >= i + len {
                            let first = self.buf[0];
                            let body = self.buf[i..i + len].to_vec();
                            self.buf.drain(..i + len);
                            return Some((first, body));
                        }
                        break;
                    }
                }
            }
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.s.read(&mut tmp))
                .await
                .expect("packet in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        let mut body = pkid.to_be_bytes().to_vec();
        body.push(0);
        for (f, q) in filters {
            put_str(&mut body, f.as_bytes());
            body.push(*q);
        }
        self.s.write_all(&framed(0x82, &body)).await.expect("write");
        loop {
            let (first, body) = self.packet().await.expect("suback");
            if first >> 4 == 9 {
                assert_eq!(u16::from_be_bytes([body[0], body[1]]), pkid);
                let plen = body[2] as usize;
                return body[3 + plen..].to_vec();
            }
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut body = Vec::new();
        put_str(&mut body, topic.as_bytes());
        body.push(0);
        body.extend_from_slice(payload);
        self.s.write_all(&framed(0x30, &body)).await.expect("write");
    }

    /// The next PUBLISH: (topic, payload).
    pub async fn message(&mut self) -> (String, Vec<u8>) {
        loop {
            let (first, body) = self.packet().await.expect("message");
            if first >> 4 == 3 {
                let qos = (first >> 1) & 3;
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let topic = String::from_utf8_lossy(&body[2..2 + tl]).to_string();
                let mut i = 2 + tl + if qos > 0 { 2 } else { 0 };
                let plen = body[i] as usize;
                i += 1 + plen;
                return (topic, body[i..].to_vec());
            }
        }
    }
}
