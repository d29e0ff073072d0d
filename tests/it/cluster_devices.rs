//! Cluster mode (#27), a device's view across nodes: a certificate issued on one node logs
//! in on another and its revocation reaches it; a will published on one node reaches a
//! subscriber on another; a persistent session stays with its node (a device that comes back
//! elsewhere starts a new one); `/health` names NATS.

use crate::cluster_env::{ClusterEnv, Site};
use crate::mqtt_client::{connect, Opts};
use crate::raw::{props, Raw};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TLS: [(&str, &str); 1] = [("FLUXGATE_TLS_MQTTS_ADDR", "127.0.0.1:0")];

/// One CA for the cluster, shown by its use: a certificate issued on node 1 logs in (mTLS)
/// on node 2, and revoking it on node 1 closes that session on node 2 within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_one_node_logs_in_on_another_and_its_revocation_reaches_it() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2) = tokio::join!(env.node(&TLS), env.node(&TLS));
    let site = Site::provision(&n1, 1).await;
    let (client, _) = &site.devices[0];
    let (s, cert) = site
        .call(
            &n1,
            Method::POST,
            &format!("/{}/certs", site.domain),
            json!({"client_id": client, "ttl": "24h"}),
        )
        .await;
    assert_eq!(s, 201, "{cert}");
    let ca = reqwest::get(format!("http://{}/certs/ca", n2.http))
        .await
        .expect("ca")
        .text()
        .await
        .expect("pem");
    let (pem, key, serial) = (
        cert["client_cert"].as_str().expect("cert"),
        cert["client_key"].as_str().expect("key"),
        cert["serial"].as_str().expect("serial"),
    );
    let opts = Opts {
        id: "mtls-on-2",
        tls: Some((
            ca.into_bytes(),
            Some((pem.as_bytes().to_vec(), key.as_bytes().to_vec())),
        )),
        ..Default::default()
    };
    let mut conn = connect(n2.mqtts.expect("TLS listener"), opts).connected().await;
    assert_eq!(conn.subscribe(&site.topic(""), 0).await, vec![0]);
    let t = Instant::now();
    let (s, v) = site
        .call(
            &n1,
            Method::DELETE,
            &format!("/{}/certs/{serial}", site.domain),
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed in time");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "revoked on node 2 after {:?}",
        t.elapsed()
    );
}

/// A will published when a device's connection on node 1 breaks reaches a subscriber on
/// node 2, with its properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_one_node_reaches_a_subscriber_on_another() {
    let Some(env) = ClusterEnv::new() else { return };
    let (n1, n2) = tokio::join!(env.node(&[]), env.node(&[]));
    let site = Site::provision(&n1, 2).await;
    let mut sub = Raw::ok(n2.mqtt, &site.connect(true, "watcher", 0)).await;
    assert_eq!(sub.subscribe(1, &[(site.all().as_str(), 1)], &[]).await, vec![1]);
    let topic = site.topic("will");
    let mut c = site.connect(true, "mortal", 1);
    c.will = Some((topic.as_str(), b"gone", 1, false, props::content_type("text/plain")));
    let mortal = Raw::ok(n1.mqtt, &c).await;
    // The connection breaks without DISCONNECT.
    drop(mortal);
    let p = sub.message().await;
    assert_eq!((p.topic.as_str(), p.payload.as_slice()), (topic.as_str(), &b"gone"[..]));
    assert_eq!(p.prop(0x03).map(|v| v[2..].to_vec()), Some(b"text/plain".to_vec()));
}

/// `/health` checks NATS on a cluster node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_nats() {
    let Some(env) = ClusterEnv::new() else { return };
    let n1 = env.node(&[]).await;
    let v: Value = reqwest::get(format!("http://{}/health", n1.http))
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(v["checks"]["nats"][0]["status"], json!("pass"), "{v}");
}
