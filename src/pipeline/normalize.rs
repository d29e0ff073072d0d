//! Message rows from what the broker's ingress accepted, by the payload's format: declared
//! SenML or JSON (HTTP, validated before it was accepted), or an MQTT payload that is SenML
//! when it is a valid pack, a JSON document when it is other JSON, else raw bytes.

use super::PipelineMetrics;
use broker::{Message, PayloadFormat};
use std::sync::atomic::Ordering;
use storage::NewMessage;

pub(super) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn rows_from_records(base: &NewMessage, records: Vec<senml::Record>) -> Vec<NewMessage> {
    records
        .into_iter()
        .map(|r| NewMessage {
            name: r.name,
            unit: r.unit,
            time: r.time,
            update_time: r.update_time,
            value: r.value,
            string_value: r.string_value,
            bool_value: r.bool_value,
            data_value: r.data_value,
            sum: r.sum,
            format: "senml",
            ..base.clone()
        })
        .collect()
}

/// The rows of one message: its SenML records, a JSON document, or (MQTT only) the raw
/// payload (counted, never dropped).
pub(super) fn message_rows(m: Message, metrics: &PipelineMetrics, limits: senml::Limits) -> Vec<NewMessage> {
    let received = m.received_at as f64 / 1e6;
    let base = NewMessage {
        domain_id: m.domain_id,
        channel: m.channel_id,
        subtopic: m.subtopic,
        publisher: m.publisher,
        protocol: m.transport.protocol().to_string(),
        time: received,
        format: "raw",
        ..Default::default()
    };
    if m.format != PayloadFormat::Json {
        if let Ok(records) = senml::normalize(&m.payload, received, limits) {
            return rows_from_records(&base, records);
        }
    }
    if m.format != PayloadFormat::Senml {
        if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
            // A declared JSON document is stored in its compact form; an MQTT one as sent.
            let payload = match m.format {
                PayloadFormat::Json => doc.to_string().into_bytes(),
                _ => m.payload.to_vec(),
            };
            return vec![NewMessage {
                format: "json",
                payload: Some(payload),
                ..base
            }];
        }
    }
    let n = metrics.stored_raw.fetch_add(1, Ordering::Relaxed);
    // Raw payloads are normal (a device's own format): noted at debug, counted.
    if n.is_power_of_two() {
        tracing::debug!(channel = %base.channel, publisher = %base.publisher, raw_total = n + 1, "MQTT payload is neither SenML nor JSON: stored raw");
    }
    vec![NewMessage {
        payload: Some(m.payload.to_vec()),
        ..base
    }]
}
