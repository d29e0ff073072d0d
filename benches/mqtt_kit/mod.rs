//! The MQTT benchmark's parts: the load generator (`load`, run as its own process), the
//! servers it measures (`servers`), and the memory figures (`memory`).

pub mod load;
pub mod memory;
pub mod servers;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Where the load goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// (client id, secret) per connection slot; None for brokers without auth.
    pub creds: Option<Vec<(String, String)>>,
    pub topics: Vec<String>,
    /// Fluxgate: its `/metrics` URL (the counters printed beside each figure).
    pub metrics: Option<String>,
}

/// The broker counters that explain a figure: what the router skipped, publisher reads
/// slowed, sessions disconnected for a full queue or a stall.
pub const COUNTERS: [&str; 4] = [
    "fluxgate_mqtt_router_skipped_total",
    "fluxgate_mqtt_publishers_slowed_total",
    "fluxgate_mqtt_slow_consumers_disconnected_total",
    "fluxgate_mqtt_stalled_consumers_disconnected_total",
];

/// The `COUNTERS` a Fluxgate server shows now (zeros when it cannot be read).
pub async fn counters(url: &str) -> [f64; 4] {
    let text = match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut out = [0.0; 4];
    for line in text.lines() {
        for (i, name) in COUNTERS.iter().enumerate() {
            if let Some(v) = line.strip_prefix(name).and_then(|r| r.trim().parse::<f64>().ok()) {
                out[i] = v;
            }
        }
    }
    out
}

/// One run of one scenario, as the load process gets it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub target: Target,
    /// `pubs[i]`: the topic index publisher i publishes to; `subs[j]`: subscriber j's.
    pub pubs: Vec<usize>,
    pub subs: Vec<usize>,
    pub qos: u8,
    /// Total messages per second, or None for as fast as possible.
    pub rate: Option<u64>,
    pub secs: u64,
}

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    /// Deliveries per second within the window.
    pub rate: f64,
    pub delivered: u64,
    /// Messages published (QoS 1: acknowledged) times the subscribers of their topic.
    pub expected: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl Figures {
    pub fn loss(&self) -> f64 {
        100.0 * (1.0 - self.delivered as f64 / self.expected.max(1) as f64)
    }
}

/// The median of some runs' figure.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
