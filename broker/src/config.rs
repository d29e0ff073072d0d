//! The broker's configuration and start-up errors.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub allow_anonymous: bool,
    /// Largest packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    /// Largest CONNECT accepted before authentication, in bytes.
    pub max_connect_size: usize,
    /// Connections that have not finished CONNECT, at most.
    pub max_pending_connections: usize,
    /// One source's share of them: beyond it, its oldest is shed for others when all are taken.
    pub max_pending_per_source: usize,
    pub connect_timeout: Duration,
    /// A connected device that takes nothing (no byte of what waits accepted by its socket,
    /// no acknowledgement of the QoS 1/2 messages it was sent) for this long is disconnected.
    pub stall_timeout: Duration,
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

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            allow_anonymous: false,
            max_packet_size: 1024 * 1024,
            max_connect_size: 64 * 1024,
            max_pending_connections: 1024,
            max_pending_per_source: 64,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(5),
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
    Sessions(crate::PortError),
    #[error("retained messages: {0}")]
    Retained(crate::PortError),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
