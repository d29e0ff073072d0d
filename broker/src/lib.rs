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

mod cluster;
mod codec;
mod connect;
mod durable;
pub mod fair;
mod ingress;
mod outbound;
mod pressure;
mod reason;
mod registry;
mod retained;
mod rights;
mod router;
mod session;
pub mod topic;
mod ws;

pub use registry::Revocation;

mod config;
mod handle;
mod listeners;
mod metrics;
mod ports;
mod shared;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use config::{BrokerConfig, BrokerError};
pub use handle::{start, BrokerHandle, Ports, Published};
pub use listeners::{bind_listener, Listeners};
pub use metrics::Metrics;
pub use ports::*;
pub(crate) use shared::Shared;
