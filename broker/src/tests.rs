//! Unit tests of the session layer: devices over in-memory streams against fakes of the
//! ports (`testkit`), at both protocol levels.

use crate::testkit::*;
use crate::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
    let (sh, sink) = shared_with(BrokerConfig::default(), Some(Arc::new(BrokenRetained)), None);
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
