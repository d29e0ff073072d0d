//! Fakes of the broker's ports and a device over an in-memory stream, for the unit tests of
//! the session layer: a fake authorizer (channel "ok": publish and subscribe; anything else:
//! nothing), a sink that records what it took, a session store in memory with a gate that
//! holds its commits, and `Dev`, which speaks MQTT bytes at either level.
use super::*;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Password "secret": the client logs in; "down": the registry cannot answer.
pub(crate) struct FakeAuth;
impl Authorizer for FakeAuth {
    fn login(&self, u: &str, p: &str) -> BoxFuture<Result<Login, PortError>> {
        let id = Identity {
            domain_id: "d".into(),
            client_id: u.into(),
        };
        let r = match p {
            "secret" => Ok(Login::Ok(id)),
            "down" => Err(PortError::Unavailable("store", "down".into())),
            _ => Ok(Login::BadCredentials),
        };
        Box::pin(async move { r })
    }
    fn login_cert(&self, _: &[u8]) -> BoxFuture<(Result<Login, PortError>, Option<String>)> {
        Box::pin(async { (Ok(Login::BadCredentials), None) })
    }
    fn rights(&self, _: &Identity, channel: &str) -> BoxFuture<Result<Rights, PortError>> {
        let ok = channel == "ok";
        Box::pin(async move {
            Ok(Rights {
                publish: ok,
                subscribe: ok,
            })
        })
    }
}

#[derive(Default)]
pub(crate) struct FakeSink(pub(crate) std::sync::Mutex<Vec<Message>>);
impl MessageSink for FakeSink {
    fn offer(&self, batch: Vec<Message>) -> Vec<Message> {
        if let Ok(mut m) = self.0.lock() {
            m.extend(batch);
        }
        Vec::new()
    }
    fn room(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }
    fn take(&self, m: Message, _: bool) -> Result<BoxFuture<bool>, NotTaken> {
        let _ = self.offer(vec![m]);
        Ok(Box::pin(async { true }))
    }
}

pub(crate) fn shared(cfg: BrokerConfig) -> (Arc<Shared>, Arc<FakeSink>) {
    shared_with(cfg, None, None)
}

/// With a retained store behind the retained index and a session store for persistent
/// sessions.
pub(crate) fn shared_with(
    cfg: BrokerConfig,
    retained: Option<Arc<dyn RetainedStore>>,
    sessions: Option<Arc<dyn SessionStore>>,
) -> (Arc<Shared>, Arc<FakeSink>) {
    let sink = Arc::new(FakeSink::default());
    let metrics = Arc::new(Metrics::default());
    let s = Arc::new(Shared {
        stop: tokio::sync::watch::channel(false).0,
        presence: None,
        pending: crate::fair::FairSlots::new(16, 16),
        router: router::RouterPort::spawn(64, 64 * 1024, 4),
        pressure: crate::pressure::Pressure::new(64 * 1024, 4),
        retained: retained::RetainedIndex::start(retained, 100, metrics.clone()).expect("index"),
        cfg,
        auth: Arc::new(FakeAuth),
        sink: sink.clone(),
        metrics,
        registry: registry::Registry::default(),
        durable: match sessions.clone() {
            Some(store) => durable::Durable::start(store, 0, u64::MAX).expect("session writer"),
            None => durable::Durable::off(),
        },
        sessions,
        rt: tokio::runtime::Handle::current(),
        next_origin: AtomicU64::new(1),
        cluster: None,
        interest: None,
    });
    (s, sink)
}

/// A cluster port that hears and sends nothing (the node is alone): the broker runs in
/// cluster mode (shared subscriptions in the node's group table).
struct Alone;

impl Cluster for Alone {
    fn export(
        &self,
        _: Carried,
        _: bool,
        _: Option<tokio::sync::oneshot::Receiver<bool>>,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        None
    }
    fn listen(&self, _: Scope, _: bool) -> BoxFuture<()> {
        Box::pin(async {})
    }
    fn claim(&self, _: &str) -> BoxFuture<Result<u64, PortError>> {
        Box::pin(async { Ok(1) })
    }
    fn current(&self) -> bool {
        true
    }
    fn share(&self, _: &str, _: &str, _: bool) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// A broker in cluster mode on its own (see `Alone`).
pub(crate) fn shared_in_cluster(cfg: BrokerConfig) -> Arc<Shared> {
    let (s, _) = shared(cfg);
    let port: Arc<dyn Cluster> = Arc::new(Alone);
    let mut s = Arc::try_unwrap(s).unwrap_or_else(|_| panic!("one owner"));
    s.interest = Some(crate::cluster::Interest::start(
        port.clone(),
        &tokio::runtime::Handle::current(),
    ));
    s.cluster = Some(port);
    Arc::new(s)
}

pub(crate) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&[first]);
    codec::put_len(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

pub(crate) fn s(out: &mut Vec<u8>, v: &str) {
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v.as_bytes());
}

pub(crate) struct Dev {
    pub(crate) io: DuplexStream,
    buf: Vec<u8>,
    v5: bool,
    /// CONNACK's session present flag.
    present: bool,
}

impl Dev {
    pub(crate) async fn connect(sh: &Arc<Shared>, v5: bool, id: &str) -> Dev {
        let (d, code) = Dev::try_connect(sh, v5, id, "secret", true).await;
        assert_eq!(code, 0, "CONNACK code");
        d
    }

    /// A persistent session (3.1.1 clean session 0; 5: session expiry 1 hour), accepted;
    /// returns it and whether the session was present.
    pub(crate) async fn resume(sh: &Arc<Shared>, v5: bool, id: &str) -> (Dev, bool) {
        let (d, code) = Dev::try_connect(sh, v5, id, "secret", false).await;
        assert_eq!(code, 0, "CONNACK code");
        let present = d.present;
        (d, present)
    }

    /// Sends CONNECT (clean start or not) with the password; returns the CONNACK code.
    pub(crate) async fn try_connect(sh: &Arc<Shared>, v5: bool, id: &str, password: &str, clean: bool) -> (Dev, u8) {
        Dev::try_connect_with(sh, v5, id, password, clean, None).await
    }

    /// MQTT 5, clean start, with a Receive Maximum: the broker keeps at most `receive_max`
    /// QoS 1/2 deliveries unacknowledged.
    pub(crate) async fn connect_v5_window(sh: &Arc<Shared>, id: &str, receive_max: u16) -> Dev {
        let (d, code) = Dev::try_connect_with(sh, true, id, "secret", true, Some(receive_max)).await;
        assert_eq!(code, 0, "CONNACK code");
        d
    }

    async fn try_connect_with(
        sh: &Arc<Shared>,
        v5: bool,
        id: &str,
        password: &str,
        clean: bool,
        receive_max: Option<u16>,
    ) -> (Dev, u8) {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(connect::run(
            Box::new(a),
            "127.0.0.1:1".parse().expect("addr"),
            Transport::Mqtt,
            None,
            sh.clone(),
            None,
        ));
        let mut body = Vec::new();
        s(&mut body, "MQTT");
        body.extend_from_slice(&[if v5 { 5 } else { 4 }, if clean { 0xC2 } else { 0xC0 }, 0, 0]);
        if v5 {
            if let Some(rm) = receive_max {
                let [hi, lo] = rm.to_be_bytes();
                body.extend_from_slice(&[3, 0x21, hi, lo]);
            } else if clean {
                body.push(0);
            } else {
                // Session Expiry Interval: 1 hour.
                body.extend_from_slice(&[5, 0x11, 0, 0, 0x0E, 0x10]);
            }
        }
        s(&mut body, id);
        s(&mut body, "dev");
        s(&mut body, password);
        let mut d = Dev {
            io: b,
            buf: Vec::new(),
            v5,
            present: false,
        };
        d.io.write_all(&frame(0x10, &body)).await.expect("write");
        let (first, body) = d.packet().await.expect("CONNACK");
        assert_eq!(first, 0x20);
        d.present = body[0] & 1 == 1;
        (d, body[1])
    }
    pub(crate) async fn packet(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let mut b = bytes::BytesMut::from(&self.buf[..]);
            if let Ok(Some(f)) = codec::next_frame(&mut b, 1 << 20) {
                self.buf = b.to_vec();
                return Some((f.bytes[0], f.body().to_vec()));
            }
            let mut tmp = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => panic!("no packet in time"),
            }
        }
    }
    pub(crate) async fn publish(&mut self, topic: &str, qos: u8, pkid: u16) {
        self.publish_flags(topic, qos, false, pkid).await
    }
    pub(crate) async fn publish_flags(&mut self, topic: &str, qos: u8, retain: bool, pkid: u16) {
        self.publish_payload(topic, qos, retain, pkid, b"hi").await
    }
    pub(crate) async fn publish_payload(&mut self, topic: &str, qos: u8, retain: bool, pkid: u16, payload: &[u8]) {
        let mut body = Vec::new();
        s(&mut body, topic);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if self.v5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        self.io
            .write_all(&frame(0x30 | (qos << 1) | u8::from(retain), &body))
            .await
            .expect("write");
    }
    /// PINGREQ, answered: everything sent before it (and the controls queued before it) was
    /// handled.
    pub(crate) async fn ping(&mut self) {
        self.io.write_all(&[0xC0, 0]).await.expect("PINGREQ");
        assert_eq!(self.packet().await.map(|p| p.0), Some(0xD0), "PINGRESP");
    }
    /// DISCONNECT (normal), then the stream closes.
    pub(crate) async fn disconnect(mut self) {
        self.io.write_all(&[0xE0, 0]).await.expect("write");
        assert!(self.packet().await.is_none(), "closed after DISCONNECT");
    }

    /// The next PUBLISH (3.1.1 layout): (QoS, DUP, packet id, payload); a PUBREL on the way
    /// is answered with PUBCOMP, other packets are skipped.
    pub(crate) async fn message(&mut self) -> (u8, bool, u16, Vec<u8>) {
        assert!(!self.v5, "3.1.1 layout only");
        loop {
            let (first, body) = self.packet().await.expect("a PUBLISH");
            if first == 0x62 {
                let mut pubcomp = vec![0x70, 2];
                pubcomp.extend_from_slice(&body[..2]);
                self.io.write_all(&pubcomp).await.expect("write");
            }
            if first >> 4 != 3 {
                continue;
            }
            let qos = (first >> 1) & 3;
            let t = u16::from_be_bytes([body[0], body[1]]) as usize;
            let (pkid, at) = if qos > 0 {
                (u16::from_be_bytes([body[2 + t], body[3 + t]]), 4 + t)
            } else {
                (0, 2 + t)
            };
            return (qos, first & 0x08 != 0, pkid, body[at..].to_vec());
        }
    }

    /// Acknowledges a delivery: PUBACK for QoS 1, PUBREC for QoS 2 (its PUBREL is answered
    /// by `message`).
    pub(crate) async fn ack(&mut self, qos: u8, pkid: u16) {
        let [hi, lo] = pkid.to_be_bytes();
        let first = match qos {
            1 => 0x40,
            2 => 0x50,
            _ => return,
        };
        self.io.write_all(&[first, 2, hi, lo]).await.expect("write");
    }

    pub(crate) async fn subscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        let mut body = vec![0, 1];
        if self.v5 {
            body.push(0);
        }
        for f in filters {
            s(&mut body, f);
            body.push(1);
        }
        self.io.write_all(&frame(0x82, &body)).await.expect("write");
        let (first, body) = self.packet().await.expect("SUBACK");
        assert_eq!(first, 0x90);
        body[if self.v5 { 3 } else { 2 }..].to_vec()
    }
}

/// A session store in memory: what was applied, in order. While `hold` is set, `apply` waits
/// (the commit the acknowledgements are held for has not happened).
#[derive(Default)]
pub(crate) struct MemSessions {
    pub(crate) applied: std::sync::Mutex<Vec<SessionOp>>,
    /// Entries a catch-up reads (less those acknowledged in `applied`).
    pub(crate) queue: std::sync::Mutex<Vec<StoredDelivery>>,
    hold: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    /// Catch-up reads so far.
    pub(crate) reads: std::sync::atomic::AtomicUsize,
}

impl MemSessions {
    pub(crate) fn hold(&self, on: bool) {
        if let Ok(mut h) = self.hold.lock() {
            *h = on;
        }
        self.released.notify_all();
    }
}

impl SessionStore for MemSessions {
    fn load(&self) -> Result<SessionsLoaded, PortError> {
        Ok(SessionsLoaded::default())
    }
    fn queued(&self, key: &str) -> Result<Vec<StoredDelivery>, PortError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let acked = |m: u64| {
            self.applied.lock().is_ok_and(|a| {
                a.iter()
                    .any(|op| matches!(op, SessionOp::Ack { key: k, msg } if k == key && *msg == m))
            })
        };
        let q = self.queue.lock().map(|q| q.clone()).unwrap_or_default();
        Ok(q.into_iter().filter(|d| d.session == key && !acked(d.msg)).collect())
    }
    fn apply(&self, ops: &[SessionOp]) -> Result<(), PortError> {
        let mut h = self
            .hold
            .lock()
            .map_err(|_| PortError::Unavailable("mem", "poisoned".into()))?;
        while *h {
            h = self
                .released
                .wait(h)
                .map_err(|_| PortError::Unavailable("mem", "poisoned".into()))?;
        }
        drop(h);
        if let Ok(mut a) = self.applied.lock() {
            a.extend_from_slice(ops);
        }
        Ok(())
    }
}
