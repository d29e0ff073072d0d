//! The session layer over in-memory streams, with a fake authorizer (channel "ok": publish
//! and subscribe; anything else: nothing) and a fake sink that records what it took.
use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Password "secret": the client logs in; "down": the registry cannot answer.
struct FakeAuth;
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
struct FakeSink(std::sync::Mutex<Vec<Message>>);
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
}

fn shared(cfg: BrokerConfig) -> (Arc<Shared>, Arc<FakeSink>) {
    shared_with(cfg, None)
}

/// With a retained store behind the retained index.
fn shared_with(cfg: BrokerConfig, retained: Option<Arc<dyn RetainedStore>>) -> (Arc<Shared>, Arc<FakeSink>) {
    let sink = Arc::new(FakeSink::default());
    let metrics = Arc::new(Metrics::default());
    let s = Arc::new(Shared {
        stop: tokio::sync::watch::channel(false).0,
        presence: None,
        pending: Arc::new(tokio::sync::Semaphore::new(16)),
        router: router::RouterPort::spawn(64, 64 * 1024, 4),
        retained: retained::RetainedIndex::start(retained, 100, metrics.clone()).expect("index"),
        cfg,
        auth: Arc::new(FakeAuth),
        sink: sink.clone(),
        metrics,
        registry: registry::Registry::default(),
        durable: durable::Durable::off(),
        rt: tokio::runtime::Handle::current(),
        next_origin: AtomicU64::new(1),
    });
    (s, sink)
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&[first]);
    codec::put_len(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

fn s(out: &mut Vec<u8>, v: &str) {
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v.as_bytes());
}

struct Dev {
    io: DuplexStream,
    buf: Vec<u8>,
    v5: bool,
}

impl Dev {
    async fn connect(sh: &Arc<Shared>, v5: bool, id: &str) -> Dev {
        let (d, code) = Dev::try_connect(sh, v5, id, "secret", true).await;
        assert_eq!(code, 0, "CONNACK code");
        d
    }

    /// Sends CONNECT (clean start or not) with the password; returns the CONNACK code.
    async fn try_connect(sh: &Arc<Shared>, v5: bool, id: &str, password: &str, clean: bool) -> (Dev, u8) {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(connect::run(
            Box::new(a),
            "127.0.0.1:1".parse().expect("addr"),
            Transport::Mqtt,
            None,
            sh.clone(),
        ));
        let mut body = Vec::new();
        s(&mut body, "MQTT");
        body.extend_from_slice(&[if v5 { 5 } else { 4 }, if clean { 0xC2 } else { 0xC0 }, 0, 0]);
        if v5 {
            if clean {
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
        };
        d.io.write_all(&frame(0x10, &body)).await.expect("write");
        let (first, body) = d.packet().await.expect("CONNACK");
        assert_eq!(first, 0x20);
        (d, body[1])
    }
    async fn packet(&mut self) -> Option<(u8, Vec<u8>)> {
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
    async fn publish(&mut self, topic: &str, qos: u8, pkid: u16) {
        self.publish_flags(topic, qos, false, pkid).await
    }
    async fn publish_flags(&mut self, topic: &str, qos: u8, retain: bool, pkid: u16) {
        let mut body = Vec::new();
        s(&mut body, topic);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if self.v5 {
            body.push(0);
        }
        body.extend_from_slice(b"hi");
        self.io
            .write_all(&frame(0x30 | (qos << 1) | u8::from(retain), &body))
            .await
            .expect("write");
    }
    async fn subscribe(&mut self, filters: &[&str]) -> Vec<u8> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_allowed_and_refused_per_level_and_qos() {
    let (sh, sink) = shared(BrokerConfig::default());
    // 5: QoS 1 refused with PUBACK 0x87, QoS 2 with PUBREC 0x87, the connection stays.
    let mut d = Dev::connect(&sh, true, "p5").await;
    d.publish("channels/no/messages", 1, 1).await;
    assert_eq!(d.packet().await.expect("PUBACK"), (0x40, vec![0, 1, 0x87]));
    d.publish("channels/no/messages", 2, 2).await;
    assert_eq!(d.packet().await.expect("PUBREC"), (0x50, vec![0, 2, 0x87]));
    d.publish("channels/ok/messages", 1, 3).await;
    assert_eq!(d.packet().await.expect("PUBACK"), (0x40, vec![0, 3]));
    assert_eq!(
        sink.0.lock().expect("sink").len(),
        1,
        "only the allowed one reached the sink"
    );
    // 5: a refused QoS 0 publish gets DISCONNECT 0x87.
    d.publish("channels/no/messages", 0, 0).await;
    assert_eq!(d.packet().await.expect("DISCONNECT"), (0xE0, vec![0x87]));
    // 3.1.1: a refused publish closes the connection.
    let mut d = Dev::connect(&sh, false, "p4").await;
    d.publish("channels/no/messages", 1, 1).await;
    assert!(d.packet().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_subscribe_and_a_revoked_client() {
    let (sh, _) = shared(BrokerConfig::default());
    let mut sub = Dev::connect(&sh, false, "sub").await;
    assert_eq!(
        sub.subscribe(&["channels/no/messages", "channels/ok/messages"]).await,
        vec![0x80, 1]
    );
    let mut p = Dev::connect(&sh, false, "pub").await;
    p.publish("channels/ok/messages", 1, 1).await;
    let (first, _) = sub.packet().await.expect("delivery");
    assert_eq!(first >> 4, 3);
    // A revocation of the client ends its session.
    sh.registry.apply(Revocation::Client {
        domain_id: "d".into(),
        client_id: "dev".into(),
    });
    assert!(sub.packet().await.is_none(), "revoked client's session ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_disconnects_a_clean_session_that_does_not_read() {
    let cfg = BrokerConfig {
        max_queued_bytes: 4096,
        max_queued_messages: 10,
        ..Default::default()
    };
    let (sh, _) = shared(cfg);
    let mut sub = Dev::connect(&sh, true, "slow").await;
    sub.subscribe(&["channels/ok/messages"]).await;
    let mut p = Dev::connect(&sh, true, "fast").await;
    // The subscriber does not read; its write buffer and then its queue fill up.
    for i in 0..5000u16 {
        p.publish("channels/ok/messages", 1, i % 1000 + 1).await;
        if p.packet().await.is_none() {
            panic!("the publisher must not be affected");
        }
        if sh.metrics.disconnected_slow.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    assert_eq!(sh.metrics.disconnected_slow.load(Ordering::Relaxed), 1);
    // Reading now: deliveries, then DISCONNECT 0x97 (quota exceeded), then the end.
    let mut last = None;
    while let Some((first, body)) = sub.packet().await {
        if first == 0xE0 {
            last = body.first().copied();
        }
    }
    assert_eq!(last, Some(0x97));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_cannot_answer_is_server_unavailable_not_bad_credentials() {
    let (sh, _) = shared(BrokerConfig::default());
    let (mut d, code) = Dev::try_connect(&sh, true, "x5", "down", true).await;
    assert_eq!(code, 0x88, "5: Server unavailable");
    assert!(d.packet().await.is_none(), "then closed");
    let (_, code) = Dev::try_connect(&sh, false, "x4", "down", true).await;
    assert_eq!(code, 0x03, "3.1.1: Server unavailable");
    let (_, code) = Dev::try_connect(&sh, true, "y5", "wrong", true).await;
    assert_eq!(code, 0x86, "a wrong secret is still bad credentials");
    let (_, code) = Dev::try_connect(&sh, false, "y4", "wrong", true).await;
    assert_eq!(code, 0x04);
    assert_eq!(
        sh.metrics
            .refusals()
            .iter()
            .find(|r| r.0 == "store_unavailable")
            .map(|r| r.1),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_v5_session_is_told_administrative_action() {
    let (sh, _) = shared(BrokerConfig::default());
    let mut d = Dev::connect(&sh, true, "r5").await;
    sh.registry.apply(Revocation::Client {
        domain_id: "d".into(),
        client_id: "dev".into(),
    });
    assert_eq!(d.packet().await, Some((0xE0, vec![0x98])), "DISCONNECT 0x98");
    assert!(d.packet().await.is_none(), "then closed");
}

/// A retained store whose writes all fail.
struct BrokenRetained;
impl RetainedStore for BrokenRetained {
    fn load(&self) -> Result<Vec<Retained>, PortError> {
        Ok(Vec::new())
    }
    fn apply(&self, _: &[RetainedOp]) -> Result<(), PortError> {
        Err(PortError::Unavailable("store", "down".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_the_store_cannot_keep_is_refused_not_acknowledged() {
    let (sh, sink) = shared_with(BrokerConfig::default(), Some(Arc::new(BrokenRetained)));
    // 5, QoS 1 and 2: refused with 0x80, nothing routed or stored; the connection stays.
    let mut d = Dev::connect(&sh, true, "r5").await;
    d.publish_flags("channels/ok/messages", 1, true, 1).await;
    assert_eq!(d.packet().await, Some((0x40, vec![0, 1, 0x80])));
    d.publish_flags("channels/ok/messages", 2, true, 2).await;
    assert_eq!(d.packet().await, Some((0x50, vec![0, 2, 0x80])));
    d.publish("channels/ok/messages", 1, 3).await;
    assert_eq!(
        d.packet().await,
        Some((0x40, vec![0, 3])),
        "a plain publish is acknowledged"
    );
    assert_eq!(sink.0.lock().expect("sink").len(), 1, "only the plain one was stored");
    assert!(
        sh.retained.matching("channels/ok/messages").is_empty(),
        "nothing retained"
    );
    // 3.1.1 cannot be told: no PUBACK, the connection closes (the device sends it again).
    let mut d = Dev::connect(&sh, false, "r4").await;
    d.publish_flags("channels/ok/messages", 1, true, 1).await;
    assert_eq!(d.packet().await, None);
    // QoS 0: delivered, not retained, counted.
    let mut d = Dev::connect(&sh, true, "r0").await;
    d.publish_flags("channels/ok/messages", 0, true, 0).await;
    d.publish("channels/ok/messages", 1, 9).await;
    assert_eq!(d.packet().await, Some((0x40, vec![0, 9])));
    assert!(sh.metrics.retained_not_stored.load(Ordering::Relaxed) >= 3);
}
