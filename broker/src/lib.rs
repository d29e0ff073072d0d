//! `broker`: Fluxgate's MQTT engine. rumqttd's router does the topic routing; this crate is
//! the whole network and session layer in front of it: it frames and parses the device's
//! bytes, authenticates CONNECT against the registry, authorizes every PUBLISH, SUBSCRIBE,
//! will, retained and live delivery, and owns QoS, delivery queues, retained messages, wills,
//! keep-alive and persistent sessions. Each session reaches the router through its own
//! in-process link (see `router`).
//!
//! Invariants:
//! - This crate depends on no other Fluxgate crate: the registry is reached through the
//!   [`Authorizer`] port, accepted messages leave through [`MessageSink`], retained messages
//!   persist through [`RetainedStore`].
//! - Nothing a client sends can panic a thread: every packet is parsed by `codec`, which
//!   checks every length, before anything acts on it.
//! - A QoS 1/2 PUBLISH is acknowledged only after the message sink took it (when it stores
//!   MQTT messages) and after the session store committed its entries for the persistent
//!   sessions it is for (`durable`); the router never holds a backlog: sessions drain their
//!   link promptly.
//! - Sessions run on the broker's own runtime, so a router that is slow to take packets can
//!   stall MQTT sessions but never the REST API.

mod codec;
mod connect;
mod durable;
mod outbound;
mod registry;
mod retained;
mod rights;
mod router;
mod session;
pub mod topic;
mod ws;

use bytes::Bytes;
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

/// One live connection of a registered client, as presence reports it.
#[derive(Clone, Debug)]
pub struct Connection {
    pub identity: Identity,
    /// The MQTT client identifier of the session.
    pub mqtt_client_id: String,
    pub remote: std::net::SocketAddr,
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub transport: &'static str,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Where the broker reports device presence: a connection joined its session (CONNACK sent)
/// or left it. Called on the broker's threads: implementations must not block.
pub trait Presence: Send + Sync + 'static {
    fn connected(&self, c: Connection);
    fn disconnected(&self, c: Connection);
}

/// The protocol a message arrived over, as stored: TLS is not told apart.
pub(crate) fn message_protocol(transport: &'static str) -> &'static str {
    match transport {
        "mqtts" => "mqtt",
        "wss" => "ws",
        t => t,
    }
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
    /// The publisher's QoS: QoS 1/2 messages are acknowledged only once the sink took them.
    pub qos: u8,
}

/// The message pipeline port. `offer` takes messages from the front of the batch (what one
/// read from a device carried) as far as there is room and never blocks; it returns the ones
/// it did not take. `room` resolves when there may be room again. A sink that does not store
/// MQTT messages takes everything.
pub trait MessageSink: Send + Sync + 'static {
    fn offer(&self, batch: Vec<Message>) -> Vec<Message>;
    fn room(&self) -> BoxFuture<()>;
}

/// A retained message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// Raw MQTT 5 publish properties (without topic alias and message expiry).
    pub props: Bytes,
    /// Unix milliseconds after which it is no longer delivered; 0: never.
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetainedOp {
    Put(Retained),
    Delete(String),
}

/// Where retained messages persist. Both calls block; the broker makes them from its own
/// thread, in order.
pub trait RetainedStore: Send + Sync + 'static {
    fn load(&self) -> Vec<Retained>;
    fn apply(&self, ops: Vec<RetainedOp>);
}

/// A persistent session as stored: the broker encodes its state; the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    pub key: String,
    pub owner: Option<Identity>,
    pub expiry_s: u32,
    /// Unix milliseconds of the last disconnect; `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    pub state: Bytes,
    pub inbound: Bytes,
}

/// A message queued for a persistent session, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDelivery {
    pub session: String,
    pub msg: u64,
    pub meta: Bytes,
    pub state: u8,
    pub pkid: u16,
    pub body: Bytes,
}

/// Everything the store holds for persistent sessions.
#[derive(Clone, Debug, Default)]
pub struct SessionsLoaded {
    pub sessions: Vec<StoredSession>,
    /// Ordered by session, then message id.
    pub queued: Vec<StoredDelivery>,
    pub max_msg: u64,
    /// Sessions the store dropped because their client is gone or disabled.
    pub dropped: usize,
}

/// A write to the session store; a batch is applied in order, in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOp {
    Put(StoredSession),
    Inbound {
        key: String,
        inbound: Bytes,
    },
    Delete(String),
    Message {
        id: u64,
        body: Bytes,
        targets: Vec<(String, Bytes)>,
    },
    Mark {
        key: String,
        msg: u64,
        state: u8,
        pkid: u16,
    },
    Ack {
        key: String,
        msg: u64,
    },
}

/// Where persistent sessions and their queues persist. Both calls block; `apply` is called
/// from one thread, in order.
pub trait SessionStore: Send + Sync + 'static {
    fn load(&self) -> Result<SessionsLoaded, String>;
    fn apply(&self, ops: &[SessionOp]) -> Result<(), String>;
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub allow_anonymous: bool,
    /// Largest packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    /// Largest CONNECT accepted before authentication, in bytes.
    pub max_connect_size: usize,
    /// Connections that have not finished CONNECT, at most.
    pub max_pending_connections: usize,
    pub connect_timeout: Duration,
    /// Longest keep alive granted, in seconds (v5: Server Keep Alive; 3.1.1: refused beyond).
    pub max_keep_alive: u16,
    pub max_connections: usize,
    /// Accept backlog of the MQTT listeners.
    pub backlog: u32,
    /// Receive Maximum: QoS 1/2 publishes a client may have unacknowledged.
    pub inflight_window: u16,
    /// Per-session outbound queue bounds.
    pub max_queued_bytes: usize,
    pub max_queued_messages: usize,
    /// Longest session expiry granted (also what a 3.1.1 persistent session gets).
    pub max_session_expiry: Duration,
    /// Persistent sessions one registry client may hold.
    pub max_sessions_per_client: usize,
    /// Bytes of messages queued for persistent sessions in the session store, at most.
    pub max_stored_queue_bytes: u64,
    /// Retained topics held, at most.
    pub max_retained: usize,
    /// The router's log per filter: segment size in bytes and segment count.
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    /// Worker threads of the broker's runtime.
    pub threads: usize,
}

/// The broker's bound listeners (the caller binds them, so every address is known, and a
/// port that is taken fails, before anything starts).
pub struct Listeners {
    /// MQTT over TCP.
    pub mqtt: std::net::TcpListener,
    /// MQTT over WebSocket (path `/mqtt`).
    pub ws: Option<std::net::TcpListener>,
    /// MQTT over TLS, with its server configuration.
    pub mqtts: Option<(std::net::TcpListener, Arc<tokio_rustls::rustls::ServerConfig>)>,
}

impl Listeners {
    /// Binds the MQTT listener, and the WebSocket and TLS ones when given.
    pub fn bind(
        mqtt: &str,
        ws: Option<&str>,
        mqtts: Option<(&str, Arc<tokio_rustls::rustls::ServerConfig>)>,
        backlog: u32,
    ) -> Result<Listeners, BrokerError> {
        Ok(Listeners {
            mqtt: bind(mqtt, backlog)?,
            ws: ws.map(|a| bind(a, backlog)).transpose()?,
            mqtts: mqtts.map(|(a, c)| bind(a, backlog).map(|l| (l, c))).transpose()?,
        })
    }
}

/// What the broker is plugged into.
pub struct Ports {
    pub auth: Arc<dyn Authorizer>,
    pub sink: Arc<dyn MessageSink>,
    pub retained: Option<Arc<dyn RetainedStore>>,
    pub sessions: Option<Arc<dyn SessionStore>>,
    pub presence: Option<Arc<dyn Presence>>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            allow_anonymous: false,
            max_packet_size: 1024 * 1024,
            max_connect_size: 64 * 1024,
            max_pending_connections: 1024,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: 65_535,
            max_connections: 100_000,
            backlog: 4096,
            inflight_window: 100,
            max_queued_bytes: 1024 * 1024,
            max_queued_messages: 10_000,
            max_session_expiry: Duration::from_secs(86_400),
            max_sessions_per_client: 16,
            max_stored_queue_bytes: 1 << 30,
            max_retained: 100_000,
            max_segment_size: 64 * 1024,
            max_segment_count: 4,
            threads: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot bind {addr}: {err}")]
    Bind { addr: String, err: std::io::Error },
    #[error("router: {0}")]
    Router(String),
    #[error("persistent sessions: {0}")]
    Sessions(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub sessions_persistent_offline: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub refused_connect: AtomicU64,
    pub refused_pending: AtomicU64,
    pub refused_publish: AtomicU64,
    pub refused_subscribe: AtomicU64,
    pub refused_delivery: AtomicU64,
    pub pipeline_full: AtomicU64,
    pub pipeline_waits: AtomicU64,
    pub malformed: AtomicU64,
    pub dropped_qos0_full: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub disconnected_slow: AtomicU64,
    pub wills_published: AtomicU64,
    pub wills_suppressed: AtomicU64,
    pub retained_full: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub sessions_restored: AtomicU64,
    pub dropped_store_full: AtomicU64,
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
    pub revocations_applied: AtomicU64,
    /// CONNECT refusals by reason label.
    refused_by: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts the packets the server appended to a connection's output (`bytes`).
    pub(crate) fn sent(&self, bytes: &[u8]) {
        Metrics::add(&self.packets_out, codec::count_packets(bytes));
    }
    pub(crate) fn refused(&self, reason: &'static str) {
        Metrics::inc(&self.refused_connect);
        if let Ok(mut m) = self.refused_by.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }
    /// CONNECT refusals by reason.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        self.refused_by
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
    /// A snapshot as (name, value) pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("mqtt_connections", g(&self.connections_current)),
            ("mqtt_connections_total", g(&self.connections_total)),
            ("mqtt_sessions_offline", g(&self.sessions_persistent_offline)),
            ("mqtt_messages_in_total", g(&self.messages_in)),
            ("mqtt_messages_out_total", g(&self.messages_out)),
            ("mqtt_refused_connect_total", g(&self.refused_connect)),
            ("mqtt_refused_pending_total", g(&self.refused_pending)),
            ("mqtt_refused_publish_total", g(&self.refused_publish)),
            ("mqtt_refused_subscribe_total", g(&self.refused_subscribe)),
            ("mqtt_refused_delivery_total", g(&self.refused_delivery)),
            ("mqtt_pipeline_full_total", g(&self.pipeline_full)),
            ("mqtt_pipeline_waits_total", g(&self.pipeline_waits)),
            ("mqtt_malformed_total", g(&self.malformed)),
            ("mqtt_dropped_qos0_queue_full_total", g(&self.dropped_qos0_full)),
            ("mqtt_dropped_queue_full_total", g(&self.dropped_queue_full)),
            ("mqtt_dropped_expired_total", g(&self.dropped_expired)),
            ("mqtt_dropped_too_large_total", g(&self.dropped_too_large)),
            ("mqtt_disconnected_slow_total", g(&self.disconnected_slow)),
            ("mqtt_wills_published_total", g(&self.wills_published)),
            ("mqtt_wills_suppressed_total", g(&self.wills_suppressed)),
            ("mqtt_retained_full_total", g(&self.retained_full)),
            ("mqtt_sessions_expired_total", g(&self.sessions_expired)),
            ("mqtt_sessions_restored_total", g(&self.sessions_restored)),
            ("mqtt_not_durable_store_full_total", g(&self.dropped_store_full)),
            ("mqtt_packets_in_total", g(&self.packets_in)),
            ("mqtt_packets_out_total", g(&self.packets_out)),
            ("mqtt_bytes_in_total", g(&self.bytes_in)),
            ("mqtt_bytes_out_total", g(&self.bytes_out)),
            ("mqtt_tls_handshakes_total", g(&self.tls_handshakes)),
            ("mqtt_tls_failures_total", g(&self.tls_failures)),
            ("mqtt_revocations_applied_total", g(&self.revocations_applied)),
        ]
    }
}

/// State shared by every session.
pub(crate) struct Shared {
    /// True once the broker stops accepting connections.
    pub stop: tokio::sync::watch::Sender<bool>,
    pub presence: Option<Arc<dyn Presence>>,
    pub cfg: BrokerConfig,
    pub auth: Arc<dyn Authorizer>,
    pub sink: Arc<dyn MessageSink>,
    pub metrics: Arc<Metrics>,
    pub registry: registry::Registry,
    pub router: router::RouterPort,
    pub retained: retained::RetainedIndex,
    pub durable: durable::Durable,
    pub pending: Arc<tokio::sync::Semaphore>,
    pub rt: tokio::runtime::Handle,
    pub next_origin: AtomicU64,
}

impl Shared {
    /// Resolves once the broker stops accepting connections.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Writes a QoS 1/2 message for the persistent sessions subscribed to it, if any; returns
    /// its entry id and, with `wait`, a receiver that resolves once it is committed.
    pub(crate) fn durable_message(
        &self,
        topic: &[u8],
        payload: &[u8],
        tag: &router::Tag,
        origin: u64,
        wait: bool,
    ) -> Option<(u64, Option<tokio::sync::oneshot::Receiver<bool>>)> {
        if tag.qos == 0 || !self.durable.enabled() {
            return None;
        }
        let t = std::str::from_utf8(topic).ok()?;
        let targets = self.durable.targets(t, tag.qos, origin);
        if targets.is_empty() {
            return None;
        }
        let size = (topic.len() + payload.len() + tag.props.len() + 64) as u64 * targets.len() as u64;
        if !self.durable.has_room(size) {
            let n = self.metrics.dropped_store_full.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                tracing::warn!(
                    total = n + 1,
                    "session store full (mqtt.max_stored_queue_bytes): message queued in memory only"
                );
            }
            return None;
        }
        self.durable.add_bytes(size);
        let id = self.durable.next_id();
        let body = durable::encode_body(&durable::Body {
            topic: Bytes::copy_from_slice(topic),
            props: tag.props.clone(),
            retain: tag.retain,
            expires_at_ms: tag.expires_at_ms,
            // Copied only here: most messages are for no persistent session.
            payload: Bytes::copy_from_slice(payload),
        });
        let direct: Vec<(String, u8, Vec<u32>)> = targets
            .iter()
            .filter(|t| t.direct)
            .map(|t| (t.key.clone(), t.qos, t.sub_ids.clone()))
            .collect();
        let targets = targets
            .into_iter()
            .map(|t| (t.key, durable::encode_meta(t.qos, &t.sub_ids)))
            .collect();
        let op = SessionOp::Message {
            id,
            body: body.clone(),
            targets,
        };
        let wait = if wait {
            Some(self.durable.write_wait(op))
        } else {
            self.durable.write(op);
            None
        };
        // Restored sessions without a router link get it from here (after its entry was
        // queued for writing, so their acknowledgement comes after it).
        if !direct.is_empty() {
            if let Some(b) = durable::decode_body(body) {
                for (key, qos, sub_ids) in direct {
                    let d = outbound::Delivery {
                        topic: b.topic.clone(),
                        payload: b.payload.clone(),
                        props: b.props.clone(),
                        qos,
                        retain: false,
                        expires_at_ms: b.expires_at_ms,
                        sub_ids,
                        msg: id,
                    };
                    self.registry.send(&key, registry::Control::Deliver(Box::new(d)));
                }
            }
        }
        Some((id, wait))
    }
}

/// The broker's runtime; shut down without waiting when the broker is dropped (allowed from
/// inside another runtime).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A running broker.
pub struct BrokerHandle {
    pub mqtt_addr: SocketAddr,
    pub mqtts_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    local: std::sync::Mutex<(rumqttd::local::LinkTx, rumqttd::local::LinkRx)>,
    /// The accept loops (they end, closing their listeners, when the broker stops).
    accepting: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    _rt: Runtime,
}

impl BrokerHandle {
    /// Applies a revocation from the change feed to live and offline sessions.
    pub fn revoke(&self, r: Revocation) {
        Metrics::inc(&self.shared.metrics.revocations_applied);
        self.shared.registry.apply(r);
    }

    /// Publishes into the broker from inside the process (the HTTP adapter), as an
    /// acknowledged (QoS 1) message. False when the router's queue is full or gone.
    pub fn publish(&self, topic: &str, payload: Bytes) -> bool {
        let mut tag = router::Tag {
            qos: 1,
            retain: false,
            origin: 0,
            expires_at_ms: 0,
            msg: 0,
            props: Bytes::new(),
        };
        // Queued for persistent sessions without waiting: an HTTP 202 promises the in-process
        // queue, as for the message store.
        tag.msg = self
            .shared
            .durable_message(topic.as_bytes(), &payload, &tag, 0, false)
            .map_or(0, |(id, _)| id);
        let tagged = router::encode(&tag, &payload);
        match self.local.lock() {
            Ok(mut l) => l.0.try_publish(topic.to_string(), tagged).is_ok(),
            Err(_) => false,
        }
    }

    /// The MQTT-over-WebSocket endpoint (`/mqtt`) as a warp filter, for serving it over TLS.
    pub fn ws_routes(&self) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        ws::routes(self.shared.clone(), "wss")
    }

    /// Sessions held (live and persistent offline ones).
    pub fn sessions(&self) -> usize {
        self.shared.registry.len()
    }

    /// Retained topics held.
    pub fn retained(&self) -> usize {
        self.shared.retained.len()
    }

    /// Stops the broker: its listeners stop accepting (MQTT, TLS, WebSocket), every session
    /// is closed (DISCONNECT 0x8B to v5 clients, no wills; persistent sessions stay stored),
    /// and this resolves once every session task has ended, or after `within`.
    pub async fn shut_down(&self, within: Duration) {
        let _ = self.shared.stop.send(true);
        self.shared.registry.apply(Revocation::ShutDown);
        let accepting = self
            .accepting
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let ended = async {
            self.shared.registry.empty().await;
            // The accept loops (and the WebSocket server, once its connections closed).
            for t in accepting {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(within, ended).await.is_err() {
            tracing::warn!(
                left = self.shared.registry.len(),
                "sessions still ending after the shutdown wait"
            );
        }
    }

    /// False once the router thread has stopped (it panicked): the broker cannot serve.
    pub fn healthy(&self) -> bool {
        self.shared.router.alive()
    }

    /// Resolves when the router has stopped, after logging it.
    pub fn failed(&self) -> BoxFuture<()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            while shared.router.alive() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            tracing::error!("the MQTT router stopped (it panicked); the broker cannot serve devices");
        })
    }
}

fn bind(addr: &str, backlog: u32) -> Result<std::net::TcpListener, BrokerError> {
    bind_listener(addr, backlog).map_err(|err| BrokerError::Bind {
        addr: addr.to_string(),
        err,
    })
}

/// Binds a non-blocking TCP listener with an explicit accept backlog (std's is 128; the kernel
/// caps the value at `net.core.somaxconn`). Shared with the HTTP listeners.
pub fn bind_listener(addr: &str, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sa = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "address resolves to nothing"))?;
    let s = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&sa.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Spawns the router and the broker's runtime, restores persistent sessions, then accepts on
/// the bound listeners. `metrics` is the broker's counters (made by the caller, so they can be
/// read before the broker starts).
pub async fn start(
    cfg: BrokerConfig,
    listeners: Listeners,
    ports: Ports,
    metrics: Arc<Metrics>,
) -> Result<BrokerHandle, BrokerError> {
    let Ports {
        auth,
        sink,
        retained: retained_store,
        sessions: session_store,
        presence,
    } = ports;
    let Listeners { mqtt, ws, mqtts } = listeners;
    let mqtt_addr = mqtt.local_addr()?;
    let ws_addr = ws.as_ref().map(|l| l.local_addr()).transpose()?;
    let tls = mqtts.map(|(l, c)| (l, tokio_rustls::TlsAcceptor::from(c)));
    let mqtts_addr = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .thread_name("fluxgate-mqtt")
        .enable_all()
        .build()?;
    let router = router::RouterPort::spawn(
        cfg.max_connections + cfg.max_connections.min(100_000) + 16,
        cfg.max_segment_size,
        cfg.max_segment_count,
    );
    let r2 = router.clone();
    let local = tokio::task::spawn_blocking(move || r2.link("l:fluxgate-http"))
        .await
        .map_err(|e| BrokerError::Router(e.to_string()))?
        .map_err(BrokerError::Router)?;
    let max_retained = cfg.max_retained;
    let retained = tokio::task::spawn_blocking(move || retained::RetainedIndex::start(retained_store, max_retained))
        .await
        .map_err(|e| BrokerError::Router(e.to_string()))??;
    let (durable, loaded) = match session_store {
        Some(store) => {
            let max = cfg.max_stored_queue_bytes;
            tokio::task::spawn_blocking(move || -> Result<_, BrokerError> {
                let t = std::time::Instant::now();
                let loaded = store.load().map_err(BrokerError::Sessions)?;
                tracing::info!(
                    sessions = loaded.sessions.len(),
                    queued = loaded.queued.len(),
                    ms = t.elapsed().as_millis() as u64,
                    "persistent sessions loaded from the store"
                );
                Ok((durable::Durable::start(store, loaded.max_msg, max)?, Some(loaded)))
            })
            .await
            .map_err(|e| BrokerError::Sessions(e.to_string()))??
        }
        None => (durable::Durable::off(), None),
    };
    let (stop, _) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        stop,
        presence,
        durable,
        pending: Arc::new(tokio::sync::Semaphore::new(cfg.max_pending_connections.max(1))),
        cfg,
        auth,
        sink,
        metrics: metrics.clone(),
        registry: registry::Registry::default(),
        router,
        retained,
        rt: rt.handle().clone(),
        next_origin: AtomicU64::new(1),
    });
    // Persistent sessions come back (links and subscriptions in place) before any device is
    // accepted.
    if let Some(loaded) = loaded {
        let s = shared.clone();
        rt.spawn(async move { session::restore_all(s, loaded).await })
            .await
            .map_err(|e| BrokerError::Sessions(e.to_string()))?;
    }
    let mut accepting = Vec::new();
    let s = shared.clone();
    accepting.push(rt.spawn(async move {
        match tokio::net::TcpListener::from_std(mqtt) {
            Ok(l) => accept_tcp(l, s).await,
            Err(e) => tracing::error!(error = %e, "MQTT listener"),
        }
    }));
    if let Some((l, acceptor)) = tls {
        let s = shared.clone();
        accepting.push(rt.spawn(async move {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => accept_tls(l, acceptor, s).await,
                Err(e) => tracing::error!(error = %e, "MQTT over TLS listener"),
            }
        }));
    }
    if let Some(l) = ws {
        let s = shared.clone();
        accepting.push(rt.spawn(async move {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => ws::serve(l, s).await,
                Err(e) => tracing::error!(error = %e, "MQTT over WebSocket listener"),
            }
        }));
    }
    tracing::info!(addr = %mqtt_addr, tls = ?mqtts_addr, ws = ?ws_addr, "MQTT listening");
    Ok(BrokerHandle {
        mqtt_addr,
        mqtts_addr,
        ws_addr,
        metrics,
        shared,
        local: std::sync::Mutex::new(local),
        accepting: std::sync::Mutex::new(accepting),
        _rt: Runtime(Some(rt)),
    })
}

/// Accepts on `l` until the broker stops, handing each connection (no Nagle) to `serve`.
async fn accept_loop(
    l: tokio::net::TcpListener,
    shared: Arc<Shared>,
    serve: impl Fn(tokio::net::TcpStream, SocketAddr, Arc<Shared>),
) {
    let stopped = shared.stopped();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            a = l.accept() => a,
        };
        match accepted {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                serve(s, peer, shared.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_tcp(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    accept_loop(l, shared, |s, peer, shared| {
        tokio::spawn(connect::run(Box::new(s), peer, "mqtt", None, shared));
    })
    .await
}

/// TLS: the handshake (bounded by the CONNECT timeout) runs in the connection's own task, so
/// a client that stalls or speaks plain TCP or an old TLS version affects only itself.
async fn accept_tls(l: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    accept_loop(l, shared, move |s, peer, shared| {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(shared.cfg.connect_timeout, acceptor.accept(s)).await {
                Ok(Ok(tls)) => {
                    Metrics::inc(&shared.metrics.tls_handshakes);
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    connect::run(Box::new(tls), peer, "mqtts", cert, shared).await
                }
                Ok(Err(e)) => {
                    Metrics::inc(&shared.metrics.tls_failures);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed")
                }
                Err(_) => {
                    Metrics::inc(&shared.metrics.tls_failures);
                    tracing::debug!(%peer, "TLS handshake timed out")
                }
            }
        });
    })
    .await
}

#[cfg(test)]
mod protocol_tests {
    /// Stored messages keep the protocol names they always had: TLS is a transport detail.
    #[test]
    fn tls_transports_store_as_their_plain_protocol() {
        assert_eq!(super::message_protocol("mqtts"), "mqtt");
        assert_eq!(super::message_protocol("wss"), "ws");
        assert_eq!(super::message_protocol("mqtt"), "mqtt");
        assert_eq!(super::message_protocol("ws"), "ws");
    }
}

#[cfg(test)]
mod tests {
    //! The session layer over in-memory streams, with a fake authorizer (channel "ok": publish
    //! and subscribe; anything else: nothing) and a fake sink that records what it took.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    struct FakeAuth;
    impl Authorizer for FakeAuth {
        fn login(&self, u: &str, p: &str) -> BoxFuture<Login> {
            let ok = p == "secret";
            let id = Identity {
                domain_id: "d".into(),
                client_id: u.into(),
            };
            Box::pin(async move {
                if ok {
                    Login::Ok(id)
                } else {
                    Login::BadCredentials
                }
            })
        }
        fn login_cert(&self, _: &[u8]) -> BoxFuture<(Login, Option<String>)> {
            Box::pin(async { (Login::BadCredentials, None) })
        }
        fn rights(&self, _: &Identity, channel: &str) -> BoxFuture<Rights> {
            let ok = channel == "ok";
            Box::pin(async move {
                Rights {
                    publish: ok,
                    subscribe: ok,
                }
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
        let sink = Arc::new(FakeSink::default());
        let s = Arc::new(Shared {
            stop: tokio::sync::watch::channel(false).0,
            presence: None,
            pending: Arc::new(tokio::sync::Semaphore::new(16)),
            router: router::RouterPort::spawn(64, 64 * 1024, 4),
            retained: retained::RetainedIndex::start(None, 100).expect("index"),
            cfg,
            auth: Arc::new(FakeAuth),
            sink: sink.clone(),
            metrics: Arc::new(Metrics::default()),
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
            let (a, b) = tokio::io::duplex(1 << 16);
            tokio::spawn(connect::run(
                Box::new(a),
                "127.0.0.1:1".parse().expect("addr"),
                "mqtt",
                None,
                sh.clone(),
            ));
            let mut body = Vec::new();
            s(&mut body, "MQTT");
            body.extend_from_slice(&[if v5 { 5 } else { 4 }, 0xC2, 0, 0]);
            if v5 {
                body.push(0);
            }
            s(&mut body, id);
            s(&mut body, "dev");
            s(&mut body, "secret");
            let mut d = Dev {
                io: b,
                buf: Vec::new(),
                v5,
            };
            d.io.write_all(&frame(0x10, &body)).await.expect("write");
            let (first, body) = d.packet().await.expect("CONNACK");
            assert_eq!((first, body[1]), (0x20, 0));
            d
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
                .write_all(&frame(0x30 | (qos << 1), &body))
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
}
