//! The broker's ports: what it is plugged into (registry, message pipeline, retained and
//! session stores, presence) and the types that cross them.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A port could not answer: its backing service (the store) is unavailable or failed. The
/// broker tells devices "server unavailable" (CONNACK 0x03 / 0x88) or refuses what it could
/// not keep, and never mistakes it for a "no".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The service behind the port cannot be reached or did not answer.
    #[error("{0} unavailable: {1}")]
    Unavailable(&'static str, String),
}

/// How a message or a connection reached this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over secure WebSocket.
    Wss,
    /// HTTP publishing (`POST …/messages`).
    Http,
}

impl Transport {
    /// The transport's name (`mqtt`, `mqtts`, `ws`, `wss`, `http`), as presence reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Mqtts => "mqtts",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Http => "http",
        }
    }

    /// The protocol a message arrived over, as stored: TLS is not told apart.
    pub fn protocol(self) -> &'static str {
        match self {
            Transport::Mqtt | Transport::Mqtts => "mqtt",
            Transport::Ws | Transport::Wss => "ws",
            Transport::Http => "http",
        }
    }
}

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
/// An error means the registry could not answer (not "no").
pub trait Authorizer: Send + Sync + 'static {
    fn login(&self, username: &str, password: &str) -> BoxFuture<Result<Login, PortError>>;
    /// Login with a TLS client certificate (DER) that already passed chain and expiry checks;
    /// returns the outcome and the certificate's serial.
    fn login_cert(&self, der: &[u8]) -> BoxFuture<(Result<Login, PortError>, Option<String>)>;
    fn rights(&self, who: &Identity, channel_id: &str) -> BoxFuture<Result<Rights, PortError>>;
}

/// One live connection of a registered client, as presence reports it.
#[derive(Clone, Debug)]
pub struct Connection {
    pub identity: Identity,
    /// The MQTT client identifier of the session.
    pub mqtt_client_id: String,
    pub remote: std::net::SocketAddr,
    pub transport: Transport,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Cluster mode: the connection's claim on its session key (newer claims win; 0
    /// outside a cluster).
    pub claim: u64,
}

/// Where the broker reports device presence: a connection joined its session (CONNACK sent)
/// or left it. Called on the broker's threads: implementations must not block.
pub trait Presence: Send + Sync + 'static {
    fn connected(&self, c: Connection);
    fn disconnected(&self, c: Connection);
}

/// A message accepted from a device, on its way to the message pipeline.
#[derive(Clone, Debug)]
pub struct Message {
    pub domain_id: String,
    pub channel_id: String,
    pub subtopic: String,
    pub publisher: String,
    pub transport: Transport,
    pub payload: Bytes,
    pub format: PayloadFormat,
    /// Receive time, microseconds since the Unix epoch.
    pub received_at: i64,
    /// The publisher's QoS: QoS 1/2 messages are acknowledged only once the sink took them.
    pub qos: u8,
}

/// How the sink reads a message's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    /// MQTT: a SenML pack when it is one, else a JSON document, else raw bytes.
    Detect,
    /// Declared SenML (HTTP `application/senml+json`, validated before it was accepted).
    Senml,
    /// Declared JSON (HTTP `application/json`, validated before it was accepted).
    Json,
}

/// Why the sink did not take a message it was asked to take whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotTaken {
    #[error("the message queue is full")]
    Full,
    #[error("the message pipeline is closed")]
    Closed,
    #[error("this node cannot confirm it is current with the cluster")]
    NotCurrent,
}

/// The message pipeline port (storage; the root crate shows what it takes to live views).
/// `offer` takes messages from the front of the batch (what one read from a device carried)
/// as far as there is room and never blocks; it returns the ones it did not take. `room`
/// resolves when there may be room again. A sink that does not store MQTT messages takes
/// everything. `take` takes one message whole (HTTP: it is always stored) or refuses it;
/// the future resolves once it is committed when `commit` is asked (false: it never will
/// be), else at once.
pub trait MessageSink: Send + Sync + 'static {
    fn offer(&self, batch: Vec<Message>) -> Vec<Message>;
    fn room(&self) -> BoxFuture<()>;
    fn take(&self, m: Message, commit: bool) -> Result<BoxFuture<bool>, NotTaken>;
    /// Resolves true once everything this sink took so far is committed (false: it will
    /// not be). Cluster mode acknowledges a session's QoS 1/2 messages only after it.
    fn committed(&self) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(true);
        rx
    }
    /// A message another node accepted (and stores): shown to whatever watches this sink's
    /// messages (live views), never stored here.
    fn observe(&self, _m: Message) {}
}

pub use crate::cluster::{Carried, Cluster, Scope};

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
/// thread, in order. A batch that fails to apply is reported: the messages it held are
/// refused to their publishers (QoS 1/2) or counted (QoS 0), never dropped silently.
pub trait RetainedStore: Send + Sync + 'static {
    fn load(&self) -> Result<Vec<Retained>, PortError>;
    fn apply(&self, ops: &[RetainedOp]) -> Result<(), PortError>;
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
    fn load(&self) -> Result<SessionsLoaded, PortError>;
    fn apply(&self, ops: &[SessionOp]) -> Result<(), PortError>;
    /// Cluster mode: once this node claimed `key` ([`crate::Cluster::claim`]), moves the
    /// session another node holds for it here (record, queue, in-flight states) and returns
    /// it; `None` when no other node holds one. From then on the other node's writes of it
    /// are refused by the store.
    fn adopt(&self, _key: &str) -> Result<Option<SessionsLoaded>, PortError> {
        Ok(None)
    }
    /// The entries queued for session `key` now, in order (read again after live copies
    /// of its messages may have been missed: a NATS gap, a router that dropped some).
    fn queued(&self, _key: &str) -> Result<Vec<StoredDelivery>, PortError> {
        Ok(Vec::new())
    }
}
