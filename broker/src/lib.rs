//! `broker`: Fluxgate's MQTT broker. rumqttd runs in-process on an internal loopback
//! listener that only this process can log in to; Fluxgate's own front listener accepts
//! devices, authenticates CONNECT against the registry, checks every PUBLISH and SUBSCRIBE
//! (and every delivery) against the client's rights, and forwards allowed packets unchanged.
//! rumqttd keeps doing routing, QoS, retained messages, wills and sessions.
//!
//! Invariants:
//! - This crate depends on no other Fluxgate crate. The registry is reached through the
//!   [`Authorizer`] port; accepted messages leave through the [`MessageSink`] port.
//! - Rights are looked up once per (session, channel) and cached; [`Revocation`]s invalidate
//!   the caches or close sessions. No store query per packet.
//! - Nothing a client sends can panic the process: malformed input closes that connection.

mod codec;
mod registry;
mod session;
pub mod topic;
mod ws;

use bytes::Bytes;
use rand::RngCore;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use registry::Revocation;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A registry client, as authenticated at CONNECT.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub domain_id: String,
    pub client_id: String,
}

/// The answer to a CONNECT's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    Ok(Identity),
    /// Unknown client or wrong secret.
    BadCredentials,
    /// The client or its domain is disabled.
    Disabled,
}

/// What a client may do on one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    pub publish: bool,
    pub subscribe: bool,
}

/// The authorization port; the root crate implements it over the store.
pub trait Authorizer: Send + Sync + 'static {
    fn login(&self, username: &str, password: &str) -> BoxFuture<Login>;
    /// Login with a TLS client certificate (DER) that already passed chain and expiry checks;
    /// returns the outcome and the certificate's serial.
    fn login_cert(&self, der: &[u8]) -> BoxFuture<(Login, Option<String>)>;
    fn rights(&self, who: &Identity, channel_id: &str) -> BoxFuture<Rights>;
}

/// A message accepted from a device, on its way to the message pipeline.
#[derive(Clone, Debug)]
pub struct Message {
    pub domain_id: String,
    pub channel_id: String,
    pub subtopic: String,
    pub publisher: String,
    pub protocol: &'static str,
    pub payload: Bytes,
    /// Receive time, microseconds since the Unix epoch.
    pub received_at: i64,
}

/// The message pipeline port. `offer` takes the messages one read from a device carried
/// (one hand-over per batch, not per message) and must not block; it returns how many it
/// refused (pipeline full), which the broker counts and logs.
pub trait MessageSink: Send + Sync + 'static {
    fn offer(&self, batch: Vec<Message>) -> usize;
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Front listener for MQTT over TCP.
    pub mqtt_addr: String,
    /// Front listener for MQTT over WebSocket (path `/mqtt`); `None` disables it.
    pub ws_addr: Option<String>,
    pub allow_anonymous: bool,
    /// Largest packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    /// Receive Maximum: QoS 1/2 publishes a client may have unacknowledged.
    pub inflight_window: u16,
    /// rumqttd's in-memory log per topic: segment size in bytes and segment count.
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    /// MQTT over TLS: listener address and server configuration.
    pub tls: Option<TlsSettings>,
}

#[derive(Clone)]
pub struct TlsSettings {
    pub addr: String,
    pub config: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mqtt_addr: "127.0.0.1:0".into(),
            ws_addr: None,
            allow_anonymous: false,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            inflight_window: 100,
            max_segment_size: 16 * 1024,
            max_segment_count: 2,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot bind {addr}: {err}")]
    Bind { addr: String, err: std::io::Error },
    #[error("embedded broker: {0}")]
    Embedded(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub refused_connect: AtomicU64,
    pub refused_publish: AtomicU64,
    pub refused_subscribe: AtomicU64,
    pub refused_delivery: AtomicU64,
    pub pipeline_full: AtomicU64,
    pub malformed: AtomicU64,
}

impl Metrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// A snapshot as (name, value) pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("mqtt_connections", g(&self.connections_current)),
            ("mqtt_connections_total", g(&self.connections_total)),
            ("mqtt_messages_in_total", g(&self.messages_in)),
            ("mqtt_messages_out_total", g(&self.messages_out)),
            ("mqtt_refused_connect_total", g(&self.refused_connect)),
            ("mqtt_refused_publish_total", g(&self.refused_publish)),
            ("mqtt_refused_subscribe_total", g(&self.refused_subscribe)),
            ("mqtt_refused_delivery_total", g(&self.refused_delivery)),
            ("mqtt_pipeline_full_total", g(&self.pipeline_full)),
            ("mqtt_malformed_total", g(&self.malformed)),
        ]
    }
}

/// State shared by every session.
pub(crate) struct Shared {
    pub cfg: BrokerConfig,
    pub auth: Arc<dyn Authorizer>,
    pub sink: Arc<dyn MessageSink>,
    pub metrics: Arc<Metrics>,
    pub registry: registry::Registry,
    pub upstream_v4: SocketAddr,
    pub upstream_v5: SocketAddr,
    pub internal_user: String,
    pub internal_pass: String,
}

/// A running broker.
pub struct BrokerHandle {
    pub mqtt_addr: SocketAddr,
    pub mqtts_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    local: std::sync::Mutex<rumqttd::local::LinkTx>,
}

impl BrokerHandle {
    /// Applies a revocation from the change feed to live sessions.
    pub fn revoke(&self, r: Revocation) {
        self.shared.registry.apply(r);
    }

    /// Publishes into the broker from inside the process (the HTTP adapter), QoS 0.
    pub fn publish(&self, topic: &str, payload: Bytes) -> bool {
        match self.local.lock() {
            Ok(mut l) => l.try_publish(topic.to_string(), payload).is_ok(),
            Err(_) => false,
        }
    }

    /// The MQTT-over-WebSocket endpoint (`/mqtt`) as a warp filter, for serving it over TLS.
    pub fn ws_routes(&self) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        ws::routes(self.shared.clone())
    }

    /// Number of live sessions.
    pub fn sessions(&self) -> usize {
        self.shared.registry.len()
    }
}

fn free_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Starts rumqttd on internal loopback ports, waits until it accepts, binds the front
/// listeners and spawns their accept loops on the current Tokio runtime.
pub async fn start(
    cfg: BrokerConfig,
    auth: Arc<dyn Authorizer>,
    sink: Arc<dyn MessageSink>,
) -> Result<BrokerHandle, BrokerError> {
    let internal_user = format!("fluxgate-{}", random_hex(8));
    let internal_pass = random_hex(24);
    let v4 = free_port()?;
    let v5 = free_port()?;
    let rcfg = embedded_config(&cfg, v4, v5, &internal_user, &internal_pass);
    let mut broker = rumqttd::Broker::new(rcfg);
    let (local, mut local_rx) = broker
        .link("fluxgate-local")
        .map_err(|e| BrokerError::Embedded(e.to_string()))?;
    std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded broker stopped");
        }
    })?;
    // Drain the local link's notifications so its buffer never fills.
    tokio::spawn(async move { while let Ok(Some(_)) = local_rx.next().await {} });
    for addr in [v4, v5] {
        wait_until_listening(addr).await?;
    }

    let mqtt = tokio::net::TcpListener::bind(&cfg.mqtt_addr)
        .await
        .map_err(|err| BrokerError::Bind {
            addr: cfg.mqtt_addr.clone(),
            err,
        })?;
    let mqtt_addr = mqtt.local_addr()?;
    let ws = match &cfg.ws_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|err| BrokerError::Bind { addr: a.clone(), err })?,
        ),
        None => None,
    };
    let ws_addr = match &ws {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let tls = match &cfg.tls {
        Some(t) => Some((
            tokio::net::TcpListener::bind(&t.addr)
                .await
                .map_err(|err| BrokerError::Bind {
                    addr: t.addr.clone(),
                    err,
                })?,
            tokio_rustls::TlsAcceptor::from(t.config.clone()),
        )),
        None => None,
    };
    let mqtts_addr = match &tls {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        cfg,
        auth,
        sink,
        metrics: metrics.clone(),
        registry: registry::Registry::default(),
        upstream_v4: v4,
        upstream_v5: v5,
        internal_user,
        internal_pass,
    });
    tracing::info!(addr = %mqtt_addr, "MQTT listening");
    tokio::spawn(accept_tcp(mqtt, shared.clone()));
    if let Some((l, acceptor)) = tls {
        tracing::info!(addr = ?mqtts_addr, "MQTT over TLS listening");
        tokio::spawn(accept_tls(l, acceptor, shared.clone()));
    }
    if let Some(l) = ws {
        tracing::info!(addr = ?ws_addr, "MQTT over WebSocket listening on /mqtt");
        tokio::spawn(ws::serve(l, shared.clone()));
    }
    Ok(BrokerHandle {
        mqtt_addr,
        mqtts_addr,
        ws_addr,
        metrics,
        shared,
        local: std::sync::Mutex::new(local),
    })
}

/// Starts a bare embedded rumqttd (MQTT 3.1.1, no authentication, no front) with the same
/// router settings, on a free loopback port. For benchmarks that compare the front against
/// rumqttd alone in the same process layout.
pub async fn start_bare_rumqttd(cfg: &BrokerConfig) -> Result<SocketAddr, BrokerError> {
    let v4 = free_port()?;
    let v5 = free_port()?;
    let mut rcfg = embedded_config(cfg, v4, v5, "unused", "unused");
    for servers in [rcfg.v4.as_mut(), rcfg.v5.as_mut()].into_iter().flatten() {
        for s in servers.values_mut() {
            s.connections.auth = None;
        }
    }
    let mut broker = rumqttd::Broker::new(rcfg);
    std::thread::Builder::new().name("rumqttd-bare".into()).spawn(move || {
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "bare broker stopped");
        }
    })?;
    wait_until_listening(v4).await?;
    Ok(v4)
}

async fn wait_until_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BrokerError::Embedded(format!(
        "internal listener {addr} did not come up"
    )))
}

async fn accept_tcp(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move { session::run(s, peer, "mqtt", None, shared).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// TLS: the handshake (bounded by the CONNECT timeout) runs in the connection's own task, so
/// a client that stalls or speaks plain TCP or an old TLS version affects only itself.
async fn accept_tls(l: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                let (shared, acceptor) = (shared.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(shared.cfg.connect_timeout, acceptor.accept(s)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.to_vec());
                            session::run(tls, peer, "mqtt", cert, shared).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn embedded_config(cfg: &BrokerConfig, v4: SocketAddr, v5: SocketAddr, user: &str, pass: &str) -> rumqttd::Config {
    use std::collections::HashMap;
    let conn = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: cfg.max_packet_size,
        max_inflight_count: cfg.inflight_window as usize,
        auth: Some(HashMap::from([(user.to_string(), pass.to_string())])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: conn.clone(),
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: cfg.max_connections + 16,
            max_outgoing_packet_count: 200,
            max_segment_size: cfg.max_segment_size,
            max_segment_count: cfg.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("internal-v4".to_string(), server("internal-v4", v4))])),
        v5: Some(HashMap::from([("internal-v5".to_string(), server("internal-v5", v5))])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}
