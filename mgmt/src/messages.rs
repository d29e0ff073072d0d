//! The HTTP adapter (`POST /http/channels/{id}/messages[/{subtopic…}]`, the same without
//! `/http`, and `POST /m/{domain}/c/{channel}[/{subtopic…}]`) and the readers
//! (`GET /channels/{id}/messages`, `GET /{domain}/channels/{id}/messages`).
//!
//! Devices authenticate with `Authorization: Client <secret>` or HTTP Basic (client id and
//! secret); readers may also use a user's bearer token with read access to the domain.

use crate::auth;
use crate::authz::{authorize, Action};
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::Ctx;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use storage::{Aggregate, Channel, ClientAuth, Cmp, ConnType, MessageQuery, MessageRow, ValueFilter};
use warp::http::StatusCode;

/// What the adapter hands to the message pipeline.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub domain_id: String,
    pub channel_id: String,
    pub subtopic: String,
    pub publisher: String,
    pub protocol: &'static str,
    pub content: Content,
    /// The body as received, for MQTT subscribers.
    pub payload: bytes::Bytes,
    /// Receive time, Unix seconds.
    pub received_at: f64,
}

#[derive(Clone, Debug)]
pub enum Content {
    Senml(Vec<senml::Record>),
    Json(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("message queue is full")]
    Full,
    #[error("message pipeline is shutting down")]
    Closed,
    #[error("this node cannot confirm it is current with the cluster; retry later or on another node")]
    NotCurrent,
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The message pipeline port; the root crate implements it (queue, store, MQTT fan-out).
pub trait MessagePort: Send + Sync {
    /// Enqueues without waiting, or with `durable`, answers once the message is committed.
    fn submit(&self, msg: Inbound, durable: bool) -> BoxFuture<Result<(), SubmitError>>;
}

/// Subtopic levels: non-empty, no MQTT wildcards, printable; at most 1024 bytes in all.
pub fn subtopic(levels: &[&str]) -> Result<String, ApiError> {
    let s = levels.join("/");
    if s.len() > 1024
        || levels
            .iter()
            .any(|l| l.is_empty() || l.contains(['+', '#']) || l.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(ApiError::bad("invalid subtopic"));
    }
    Ok(s)
}

pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn find_channel(ctx: &Ctx, domain: Option<&str>, channel: &str) -> Result<Channel, ApiError> {
    let (d, h) = (domain.map(String::from), channel.to_string());
    ctx.db(move |s| match d {
        Some(d) => s.channel(&d, &h),
        None => s.channel_any_domain(&h),
    })
    .await
    .map_err(|e| match e {
        ApiError::NotFound(_) => ApiError::not_found("channel"),
        e => e,
    })
}

/// Device credentials from `Authorization: Client <secret>` or Basic `id:secret`.
enum DeviceCreds {
    Secret(String),
    IdSecret(String, String),
}

fn device_creds(req: &Req) -> Option<DeviceCreds> {
    let h = req.header("authorization")?;
    let (scheme, rest) = h.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("client") || scheme.eq_ignore_ascii_case("thing") {
        return Some(DeviceCreds::Secret(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (id, secret) = text.split_once(':')?;
        return Some(DeviceCreds::IdSecret(id.to_string(), secret.to_string()));
    }
    None
}

/// Authenticates a device of `domain`: 401 for unknown credentials, 403 when the client or
/// the domain is disabled.
async fn device(ctx: &Ctx, domain: &str, creds: DeviceCreds) -> Result<ClientAuth, ApiError> {
    let d = domain.to_string();
    let found = match creds {
        DeviceCreds::Secret(secret) => {
            let key = secret.clone();
            let candidates = ctx.db(move |s| s.client_by_secret(&d, &key)).await?;
            auth::match_device_secret(candidates.into_iter().collect(), &secret)
        }
        DeviceCreds::IdSecret(id, secret) => {
            let candidates = ctx.db(move |s| s.clients_by_id(&id)).await?;
            let in_domain = candidates.into_iter().filter(|c| c.domain_id == d).collect();
            auth::match_device_secret(in_domain, &secret)
        }
    };
    let c = found.ok_or_else(|| ApiError::Unauthorized("invalid client credentials".into()))?;
    if !c.active() {
        return Err(ApiError::Forbidden("client or domain is disabled".into()));
    }
    Ok(c)
}

/// A device call's channel and client. An unknown channel and wrong credentials get the same
/// 401, so a caller without valid credentials cannot tell which channel ids exist.
async fn device_channel(
    ctx: &Ctx,
    domain: Option<&str>,
    channel: &str,
    creds: DeviceCreds,
) -> Result<(Channel, ClientAuth), ApiError> {
    let refused = || ApiError::Unauthorized("invalid client credentials for this channel".into());
    let ch = match find_channel(ctx, domain, channel).await {
        Ok(ch) => ch,
        Err(ApiError::NotFound(_)) => return Err(refused()),
        Err(e) => return Err(e),
    };
    match device(ctx, &ch.domain_id, creds).await {
        Ok(c) => Ok((ch, c)),
        Err(ApiError::Unauthorized(_)) => Err(refused()),
        Err(e) => Err(e),
    }
}

async fn may(ctx: &Ctx, c: &ClientAuth, channel: &str, t: ConnType) -> Result<bool, ApiError> {
    let (d, id, h) = (c.domain_id.clone(), c.client_id.clone(), channel.to_string());
    ctx.db(move |s| s.can(&d, &id, &h, t)).await
}

/// `POST …/messages`: validate, authorize, hand to the pipeline, answer 202.
pub async fn publish(
    ctx: &Arc<Ctx>,
    req: &Req,
    domain: Option<&str>,
    channel: &str,
    sub: &[&str],
) -> Result<Reply, ApiError> {
    let subtopic = subtopic(sub)?;
    let creds = device_creds(req).ok_or_else(|| ApiError::Unauthorized("missing client credentials".into()))?;
    let (ch, client) = device_channel(ctx, domain, channel, creds).await?;
    if !may(ctx, &client, &ch.id, ConnType::Publish).await? {
        return Err(ApiError::Forbidden(
            "client is not connected to this channel for publishing".into(),
        ));
    }
    let now = now_secs();
    let content = match req.content_type().as_deref() {
        Some("application/senml+json") => Content::Senml(
            senml::normalize(&req.body, now, ctx.cfg.senml)
                .map_err(|e| ApiError::bad(format!("invalid SenML: {e}")))?,
        ),
        Some("application/json") => {
            if req.body.is_empty() {
                return Err(ApiError::bad("request body is empty"));
            }
            let v: Value =
                serde_json::from_slice(&req.body).map_err(|e| ApiError::bad(format!("malformed JSON body: {e}")))?;
            Content::Json(v.to_string())
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/senml+json or application/json".into(),
            ))
        }
    };
    let durable = req.q_bool("durable")?.unwrap_or(false)
        || req
            .header("x-fluxgate-durable")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let msg = Inbound {
        domain_id: ch.domain_id.clone(),
        channel_id: ch.id.clone(),
        subtopic,
        publisher: client.client_id.clone(),
        protocol: "http",
        content,
        payload: req.body.clone(),
        received_at: now,
    };
    ctx.messages
        .submit(msg, durable)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Reply::empty(StatusCode::ACCEPTED)
}

pub(crate) fn parse_interval(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1.0),
        'm' => (&s[..s.len() - 1], 60.0),
        'h' => (&s[..s.len() - 1], 3600.0),
        'd' => (&s[..s.len() - 1], 86400.0),
        'w' => (&s[..s.len() - 1], 604800.0),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    (v > 0.0 && v.is_finite()).then_some(v * mult)
}

pub(crate) fn q_f64(req: &Req, key: &str) -> Result<Option<f64>, ApiError> {
    match req.q(key) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("invalid value of query parameter `{key}`"))),
    }
}

fn reader_query(req: &Req) -> Result<MessageQuery, ApiError> {
    let offset = req.q_u64("offset")?.unwrap_or(0);
    let limit = req.q_u64("limit")?.unwrap_or(10);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("query parameter `limit` must be between 1 and 1000"));
    }
    let text = |k: &str| req.q(k).filter(|s| !s.is_empty()).map(String::from);
    let comparator = match req.q("comparator") {
        None | Some("") => Cmp::Eq,
        Some(c) => Cmp::parse(c).ok_or_else(|| ApiError::bad("invalid value of query parameter `comparator`"))?,
    };
    let value = if let Some(v) = q_f64(req, "v")? {
        Some(ValueFilter::Number(v, comparator))
    } else if let Some(b) = req.q_bool("vb")? {
        Some(ValueFilter::Bool(b))
    } else if let Some(s) = text("vs") {
        Some(ValueFilter::Text(s))
    } else {
        text("vd").map(ValueFilter::Data)
    };
    let from = q_f64(req, "from")?.map(senml::to_seconds);
    let to = q_f64(req, "to")?.map(senml::to_seconds);
    let aggregate = match req.q("aggregation").filter(|s| !s.is_empty()) {
        None => None,
        Some(a) => {
            let agg =
                Aggregate::parse(a).ok_or_else(|| ApiError::bad("invalid value of query parameter `aggregation`"))?;
            if from.is_none() || to.is_none() {
                return Err(ApiError::bad("query parameter `aggregation` needs `from` and `to`"));
            }
            let interval = match req.q("interval").filter(|s| !s.is_empty()) {
                None => to.unwrap_or(0.0) - from.unwrap_or(0.0),
                Some(i) => {
                    parse_interval(i).ok_or_else(|| ApiError::bad("invalid value of query parameter `interval`"))?
                }
            };
            if interval <= 0.0 {
                return Err(ApiError::bad("invalid value of query parameter `interval`"));
            }
            Some((agg, interval))
        }
    };
    match req.q("order") {
        None | Some("") | Some("time") => {}
        Some(_) => return Err(ApiError::bad("invalid value of query parameter `order`: only `time`")),
    }
    // Newest first unless asked otherwise.
    let ascending = !crate::params::descending(req, true)?;
    Ok(MessageQuery {
        offset,
        limit,
        subtopic: text("subtopic"),
        publisher: text("publisher"),
        protocol: text("protocol"),
        name: text("name"),
        value,
        from,
        to,
        aggregate,
        ascending,
    })
}

fn message_json(m: &MessageRow) -> Value {
    let mut o = Map::new();
    o.insert("channel".into(), json!(m.channel));
    if !m.subtopic.is_empty() {
        o.insert("subtopic".into(), json!(m.subtopic));
    }
    if !m.publisher.is_empty() {
        o.insert("publisher".into(), json!(m.publisher));
    }
    if !m.protocol.is_empty() {
        o.insert("protocol".into(), json!(m.protocol));
    }
    if !m.name.is_empty() {
        o.insert("name".into(), json!(m.name));
    }
    if !m.unit.is_empty() {
        o.insert("unit".into(), json!(m.unit));
    }
    o.insert("time".into(), json!(m.time));
    if let Some(u) = m.update_time {
        o.insert("update_time".into(), json!(u));
    }
    if let Some(v) = m.value {
        o.insert("value".into(), json!(v));
    }
    if let Some(v) = &m.string_value {
        o.insert("string_value".into(), json!(v));
    }
    if let Some(v) = m.bool_value {
        o.insert("bool_value".into(), json!(v));
    }
    if let Some(v) = &m.data_value {
        o.insert("data_value".into(), json!(v));
    }
    if let Some(v) = m.sum {
        o.insert("sum".into(), json!(v));
    }
    match (m.format, &m.payload) {
        ("json", Some(p)) => {
            o.insert("payload".into(), serde_json::from_slice(p).unwrap_or(Value::Null));
        }
        ("raw", Some(p)) => {
            o.insert("format".into(), json!("raw"));
            o.insert("payload".into(), json!(String::from_utf8_lossy(p)));
        }
        _ => {}
    }
    Value::Object(o)
}

/// `GET …/channels/{id}/messages`.
pub async fn read(ctx: &Arc<Ctx>, req: &Req, domain: Option<&str>, channel: &str) -> Result<Reply, ApiError> {
    let ch = if req.bearer().is_some() {
        // The token first: an unauthenticated caller learns nothing about the channel.
        let caller = auth::caller(ctx, req).await?;
        let ch = find_channel(ctx, domain, channel).await?;
        authorize(ctx, &caller, &ch.domain_id, Action::Read).await?;
        ch
    } else {
        let creds = device_creds(req).ok_or_else(ApiError::unauthorized)?;
        let (ch, client) = device_channel(ctx, domain, channel, creds).await?;
        if !may(ctx, &client, &ch.id, ConnType::Subscribe).await? {
            return Err(ApiError::Forbidden(
                "client is not connected to this channel for subscribing".into(),
            ));
        }
        ch
    };
    let q = reader_query(req)?;
    let (offset, limit) = (q.offset, q.limit);
    let h = ch.id.clone();
    let (total, rows) = ctx.db(move |s| s.read_messages(&h, &q)).await?;
    Reply::ok(&json!({
        "offset": offset,
        "limit": limit,
        "format": "messages",
        "total": total,
        "messages": rows.iter().map(message_json).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_subtopics() {
        assert_eq!(parse_interval("5m"), Some(300.0));
        assert_eq!(parse_interval("1h"), Some(3600.0));
        assert_eq!(parse_interval("2"), Some(2.0));
        assert_eq!(parse_interval("0s"), None);
        assert_eq!(parse_interval("xs"), None);
        assert_eq!(subtopic(&["a", "b"]).expect("ok"), "a/b");
        assert!(subtopic(&["a", "+"]).is_err());
        assert!(subtopic(&["a b"]).is_err());
    }
}
