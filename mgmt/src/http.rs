//! The HTTP edge: turns a warp request into a [`Req`], dispatches it, and renders the
//! [`Reply`] or [`ApiError`]. Routing is a plain `match` on path segments in [`crate::route`]
//! rather than a tree of warp filters: one place lists every route, and builds stay fast.

use crate::error::ApiError;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};

/// A parsed request.
pub struct Req {
    pub method: Method,
    /// Percent-decoded path segments, empty ones dropped.
    pub segs: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub remote: Option<SocketAddr>,
    /// The authenticated user's id, once known (for the access log).
    pub caller: std::sync::OnceLock<String>,
}

impl Req {
    pub fn seg(&self, i: usize) -> &str {
        self.segs.get(i).map(String::as_str).unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The media type of the body, lower-cased, without parameters.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }

    /// Parses a JSON body: 415 unless the content type is JSON, 400 if it does not parse
    /// into `T` (the message names the problem).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        match self.content_type().as_deref() {
            Some("application/json") => {}
            Some(ct) if ct.starts_with("application/") && ct.ends_with("+json") => {}
            _ => {
                return Err(ApiError::UnsupportedMediaType(
                    "expected Content-Type: application/json".into(),
                ))
            }
        }
        if self.body.is_empty() {
            return Err(ApiError::bad("request body is empty"));
        }
        serde_json::from_slice(&self.body).map_err(|e| ApiError::bad(format!("malformed JSON body: {e}")))
    }

    /// The bearer token of the `Authorization` header.
    pub fn bearer(&self) -> Option<&str> {
        let h = self.header("authorization")?;
        let (scheme, rest) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }

    pub fn q(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A numeric query parameter, the one parser of them all: 400 naming the parameter when it
    /// does not parse or exceeds what the store holds (a signed 64-bit integer).
    pub fn q_u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.q(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= i64::MAX as u64)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "query parameter `{key}` must be an integer from 0 to {}",
                        i64::MAX
                    ))
                }),
        }
    }

    pub fn q_bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.q(key) {
            None | Some("") => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(_) => Err(ApiError::bad(format!("invalid value of query parameter `{key}`"))),
        }
    }
}

/// A successful answer.
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Bytes>,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// A response made elsewhere (a stream), sent as it is.
    pub raw: Option<warp::reply::Response>,
}

impl Reply {
    pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Reply {
            status,
            body: Some(body.into()),
            content_type: "application/json",
            headers: Vec::new(),
            raw: None,
        })
    }
    pub fn ok<T: Serialize>(v: &T) -> Result<Reply, ApiError> {
        Reply::json(StatusCode::OK, v)
    }
    pub fn created<T: Serialize>(v: &T) -> Result<Reply, ApiError> {
        Reply::json(StatusCode::CREATED, v)
    }
    pub fn empty(status: StatusCode) -> Result<Reply, ApiError> {
        Ok(Reply {
            status,
            body: None,
            content_type: "application/json",
            headers: Vec::new(),
            raw: None,
        })
    }
    /// A streamed response (Server-Sent Events).
    pub fn stream(resp: warp::reply::Response) -> Reply {
        Reply {
            status: resp.status(),
            body: None,
            content_type: "text/event-stream",
            headers: Vec::new(),
            raw: Some(resp),
        }
    }
    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

pub(crate) fn render(res: Result<Reply, ApiError>) -> warp::reply::Response {
    let reply = match res {
        Ok(r) => r,
        Err(e) => {
            if let ApiError::Internal(detail) = &e {
                tracing::error!(error = %detail, "request failed");
            }
            let body = serde_json::json!({"error": e.code(), "message": e.to_string()});
            let mut r = Reply {
                status: e.status(),
                body: Some(body.to_string().into()),
                content_type: "application/json",
                headers: Vec::new(),
                raw: None,
            };
            if matches!(e, ApiError::Unauthorized(_)) {
                r.headers.push(("www-authenticate", "Bearer".into()));
            }
            if let ApiError::MethodNotAllowed(allow) = &e {
                r.headers.push(("allow", allow.clone()));
            }
            if matches!(e, ApiError::Unavailable(_)) {
                r.headers.push(("retry-after", "1".into()));
            }
            if let ApiError::TooManyRequests(secs) = e {
                r.headers.push(("retry-after", secs.to_string()));
            }
            r
        }
    };
    if let Some(raw) = reply.raw {
        return raw;
    }
    let mut resp = warp::reply::Response::new(reply.body.unwrap_or_default().into());
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    if resp_has_body(reply.status) {
        h.insert("content-type", HeaderValue::from_static(reply.content_type));
    }
    for (k, v) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.append(k, v);
        }
    }
    resp
}

fn resp_has_body(s: StatusCode) -> bool {
    s != StatusCode::NO_CONTENT && s != StatusCode::ACCEPTED
}

/// Reads the body, refusing more than `limit` bytes (413) whether or not the client sent a
/// Content-Length.
pub(crate) async fn read_body<S, B>(headers: &HeaderMap, body: S, limit: u64) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
    }
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::bad(format!("could not read body: {e}")))?;
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            buf.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

pub(crate) fn split_path(path: &str) -> Result<Vec<String>, ApiError> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s).ok_or_else(|| ApiError::bad("malformed percent-encoding in path")))
        .collect()
}

pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode(&s.replace('+', " ")).unwrap_or_default();
            (dec(k), dec(v))
        })
        .collect()
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved
/// characters).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_path_decoding() {
        let q = parse_query("name=Light%20Sensor&limit=5&x");
        assert_eq!(q[0], ("name".into(), "Light Sensor".into()));
        assert_eq!(q[2], ("x".into(), "".into()));
        assert_eq!(split_path("/a//b%2Fc/").expect("ok"), vec!["a", "b/c"]);
        assert!(split_path("/%zz").is_err());
    }
}
