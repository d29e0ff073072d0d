//! `GET /{domainID}/channels/{channelID}/messages/live`: a channel's messages as
//! Server-Sent Events, as they are accepted (over MQTT or HTTP), for the domain's readers.
//! The stream is fed by a [`LivePort`] the root crate provides; a viewer that does not keep
//! up is dropped by the port (its stream ends), never buffered without bound.

use crate::error::ApiError;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// One accepted message of a channel.
#[derive(Clone, Debug)]
pub struct LiveMessage {
    pub domain_id: String,
    pub channel_id: String,
    pub subtopic: String,
    pub publisher: String,
    pub protocol: &'static str,
    pub payload: Bytes,
    /// Microseconds since the Unix epoch.
    pub received_at: i64,
}

/// Where live views subscribe.
pub trait LivePort: Send + Sync {
    /// The messages of `channel` in `domain` from now on; the stream ends when the viewer
    /// falls behind. `Err` when no more viewers are allowed (in all, in `domain`, or for
    /// `user`).
    fn watch(
        &self,
        domain: &str,
        user: &str,
        channel: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Arc<LiveMessage>>, ApiError>;
}

/// The JSON of one event: where it came from and, when the payload is SenML, its records.
pub fn event_json(m: &LiveMessage, limits: senml::Limits) -> Value {
    let mut v = Map::new();
    v.insert("channel".into(), json!(m.channel_id));
    v.insert("subtopic".into(), json!(m.subtopic));
    v.insert("publisher".into(), json!(m.publisher));
    v.insert("protocol".into(), json!(m.protocol));
    v.insert("received_at".into(), json!(crate::views::time(Some(m.received_at))));
    let now = m.received_at as f64 / 1e6;
    match senml::normalize(&m.payload, now, limits) {
        Ok(records) => {
            let records: Vec<Value> = records.iter().map(record).collect();
            v.insert("senml".into(), Value::Array(records));
        }
        Err(_) => match std::str::from_utf8(&m.payload) {
            Ok(text) => {
                v.insert("payload".into(), json!(text));
            }
            Err(_) => {
                v.insert("payload_bytes".into(), json!(m.payload.len()));
            }
        },
    }
    Value::Object(v)
}

fn record(r: &senml::Record) -> Value {
    let mut m = Map::new();
    m.insert("n".into(), json!(r.name));
    if !r.unit.is_empty() {
        m.insert("u".into(), json!(r.unit));
    }
    m.insert("t".into(), json!(r.time));
    let fields = [
        ("v", r.value.map(|x| json!(x))),
        ("vs", r.string_value.as_ref().map(|x| json!(x))),
        ("vb", r.bool_value.map(|x| json!(x))),
        ("vd", r.data_value.as_ref().map(|x| json!(x))),
        ("s", r.sum.map(|x| json!(x))),
        ("ut", r.update_time.map(|x| json!(x))),
    ];
    for (k, x) in fields {
        if let Some(x) = x {
            m.insert(k.into(), x);
        }
    }
    Value::Object(m)
}

/// The event stream as an HTTP response (`text/event-stream`, a comment every 15 s keeps
/// the connection alive).
pub fn response(rx: tokio::sync::mpsc::Receiver<Arc<LiveMessage>>, limits: senml::Limits) -> warp::reply::Response {
    use warp::Reply;
    let events = tokio_stream_of(rx).map(move |m| {
        let data = event_json(&m, limits).to_string();
        Ok::<_, std::convert::Infallible>(warp::sse::Event::default().event("message").data(data))
    });
    let stream = warp::sse::keep_alive()
        .interval(std::time::Duration::from_secs(15))
        .stream(events);
    warp::sse::reply(stream).into_response()
}

/// The receiver as a stream (ends when the port drops the sender).
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}
