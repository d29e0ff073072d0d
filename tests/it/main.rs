//! Integration tests: the real server on 127.0.0.1 port 0 with a fresh data directory,
//! driven over real sockets. One test binary, so the app links once.

// Benches and integration tests fail loudly on purpose: `expect` and `panic!` are their
// assertions (clippy.toml allows them inside `#[test]` functions; this covers the helpers).
#![allow(clippy::expect_used, clippy::panic)]

mod admin_cli;
mod backpressure;
mod browser;
mod channels;
mod chart;
mod child;
mod cli;
mod clients;
mod cluster;
mod cluster_devices;
mod cluster_env;
mod cluster_faults;
mod cluster_sessions;
mod cluster_shared;
mod config;
mod conformance;
mod console;
mod console_forms;
mod domains;
mod durable;
mod engine;
mod engine_flow;
mod fairness;
mod groups;
mod hardening;
mod helpers;
mod isolation;
mod lifecycle;
mod live;
mod messages;
mod migrate;
mod mqtt;
mod mqtt_client;
mod operability;
mod paho;
mod peers;
mod pg_server;
mod postgres;
mod presence;
mod proxy;
mod raw;
mod readme;
mod tls;
mod topics;
mod users;
