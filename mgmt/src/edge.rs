//! What happens around every request once it is answered: CORS headers, the access log line,
//! the HTTP metrics; and the two routes that describe the server rather than the platform:
//! `GET /metrics` and the CORS preflight.

use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::{routes, Ctx, Seen};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::Mutex;
use std::time::Instant;
use warp::http::{HeaderValue, Method, StatusCode};

/// The metrics registry of one server, and the HTTP metrics the edge records in it.
pub struct Telemetry {
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Run before every scrape: components copy their counters and gauges into the registry.
    refresh: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Telemetry {
    pub fn new() -> Result<Telemetry, prometheus::Error> {
        let registry = Registry::new_custom(Some("fluxgate".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route template and status",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Time to answer an HTTP request").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Telemetry {
            registry,
            requests,
            latency,
            refresh: Mutex::new(Vec::new()),
        })
    }

    /// Adds a function run before every scrape.
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut v) = self.refresh.lock() {
            v.push(Box::new(f));
        }
    }

    fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.latency.with_label_values(&[method, route]).observe(secs);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, ApiError> {
        if let Ok(v) = self.refresh.lock() {
            v.iter().for_each(|f| f());
        }
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(|e| ApiError::Internal(format!("metrics encoding failed: {e}")))
    }
}

/// Route label of requests that matched no route (one label, so junk paths cannot grow the
/// metrics without bound).
const UNMATCHED: &str = "unmatched";

/// Finishes a response: CORS headers for a configured origin, the metrics, one access log
/// line (never a header value, query or body: tokens and secrets stay out of the log).
pub(crate) fn finish(
    ctx: &Ctx,
    method: &Method,
    seen: Seen,
    mut resp: warp::reply::Response,
    started: Instant,
) -> warp::reply::Response {
    if let Some(origin) = seen.origin.as_ref().filter(|o| allowed(ctx, o)) {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", origin.clone());
        h.insert("access-control-expose-headers", HeaderValue::from_static("Location"));
        h.append("vary", HeaderValue::from_static("Origin"));
    }
    let elapsed = started.elapsed();
    let route = match seen.route {
        Some(r) => r.path,
        None if seen.console => "/console",
        None => UNMATCHED,
    };
    let status = resp.status().as_u16();
    // An unknown method would be another unbounded label.
    let m = if ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"].contains(&method.as_str()) {
        method.as_str()
    } else {
        "other"
    };
    ctx.telemetry.observe(m, route, status, elapsed.as_secs_f64());
    tracing::info!(
        target: "fluxgate::access",
        method = m,
        route,
        status,
        latency_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        caller = seen.caller.as_deref().unwrap_or("-"),
        "http request"
    );
    resp
}

fn allowed(ctx: &Ctx, origin: &HeaderValue) -> bool {
    let Ok(o) = origin.to_str() else { return false };
    ctx.cfg.cors_origins.iter().any(|c| c == o || c == "*")
}

/// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from a
/// configured origin, for a path the API serves: 204 naming the path's methods. Anything
/// else is not a preflight Fluxgate answers (`None`: the route table answers 404 or 405).
pub(crate) fn preflight(
    ctx: &Ctx,
    headers: &warp::http::HeaderMap,
    segs: &[String],
) -> Option<Result<Reply, ApiError>> {
    let origin = headers.get("origin")?;
    headers.get("access-control-request-method")?;
    if !allowed(ctx, origin) {
        return None;
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let methods: Vec<&str> = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
        .iter()
        .filter(|m| matches!(routes::find(m, &segs), routes::Found::Route(_)))
        .map(Method::as_str)
        .collect();
    if methods.is_empty() {
        return None;
    }
    let reply = Reply {
        status: StatusCode::NO_CONTENT,
        body: None,
        content_type: "text/plain",
        headers: vec![
            (
                "access-control-allow-methods",
                format!("OPTIONS, {}", methods.join(", ")),
            ),
            (
                "access-control-allow-headers",
                "Authorization, Content-Type, X-Fluxgate-Durable".into(),
            ),
            ("access-control-max-age", "600".into()),
        ],
        raw: None,
    };
    Some(Ok(reply))
}

/// `GET /metrics`: the Prometheus text format; with `metrics.token` set, only for a bearer
/// presenting it.
pub(crate) fn metrics(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let want = ctx.cfg.metrics_token.as_bytes();
    if !want.is_empty() {
        let got = req.bearer().unwrap_or("").as_bytes();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(got, want)) {
            return Err(ApiError::unauthorized());
        }
    }
    let text = ctx.telemetry.render()?;
    Ok(Reply {
        status: StatusCode::OK,
        body: Some(text.into()),
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        headers: Vec::new(),
        raw: None,
    })
}
