//! `mgmt`: the management plane's REST API (users, tokens, domains and, through the
//! domain-permission function in [`authz`], everything under `/{domainID}/…`).
//!
//! Invariants:
//! - SQL lives in `storage`; this crate calls the store only through [`Ctx::db`], which runs
//!   the blocking call on Tokio's blocking pool.
//! - Status codes are decided only in [`error::ApiError::status`]; handlers return typed errors.
//! - Every domain-scoped handler obtains an [`authz::DomainAccess`] first; store calls on
//!   tenant data take the domain id from it, never from the request directly.

pub mod auth;
pub mod authz;
mod certs;
mod channels;
pub mod chart;
mod clients;
pub mod console;
mod domains;
pub mod edge;
pub mod error;
mod groups;
pub mod guard;
pub mod http;
pub mod live;
pub mod messages;
pub mod openapi;
pub mod params;
pub mod proxy;
pub mod routes;
mod scoped;
mod users;
pub mod views;

use crate::error::ApiError;
use crate::http::{Reply, Req};
use std::sync::Arc;
use storage::Store;
use warp::http::Method;
use warp::Filter;

/// Settings of the management API.
#[derive(Clone, Debug)]
pub struct MgmtConfig {
    pub self_registration: bool,
    pub max_body_bytes: u64,
    pub version: &'static str,
    /// Base of links sent to users (password reset), from configuration only.
    pub public_url: String,
    pub senml: senml::Limits,
    /// Origins answered with CORS headers (empty: none; `*`: any).
    pub cors_origins: Vec<String>,
    /// Bearer token `GET /metrics` requires (empty: open).
    pub metrics_token: String,
    /// Serve the web console at `/` and `/console/…`.
    pub console: bool,
    /// The API listener speaks TLS (console cookies are then `Secure`).
    pub tls: bool,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` name the client.
    pub trusted_proxies: Vec<proxy::Cidr>,
}

/// The peer address of a request, put into its extensions by the server that accepted it.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

/// Where notices for users (password reset links) are delivered.
pub trait Outbox: Send + Sync {
    fn send(&self, to: &str, subject: &str, body: &str);
}

/// The default outbox when no SMTP server is configured: the server log.
pub struct LogOutbox;

impl Outbox for LogOutbox {
    fn send(&self, to: &str, subject: &str, body: &str) {
        tracing::info!(to, subject, body, "notice for user (no SMTP configured)");
    }
}

/// Shared state of every handler.
pub struct Ctx {
    pub store: Store,
    pub tokens: auth::Tokens,
    pub passwords: auth::Passwords,
    pub cfg: MgmtConfig,
    pub outbox: Arc<dyn Outbox>,
    /// The message pipeline (HTTP adapter).
    pub messages: Arc<dyn messages::MessagePort>,
    /// Live views of channels (Server-Sent Events).
    pub live: Arc<dyn live::LivePort>,
    /// The platform CA (client certificates, CRL).
    pub ca: Arc<::certs::Ca>,
    /// Health checks of the other components (name, "is it working?"), for `GET /health`.
    pub probes: Vec<(&'static str, Probe)>,
    /// The metrics registry (`GET /metrics`).
    pub telemetry: Arc<edge::Telemetry>,
    /// Failed-login brake (per identity and per source address).
    pub guard: guard::LoginGuard,
    /// Password hashes computed at once, at most: a flood of logins cannot take every core
    /// from the API and the broker.
    pub hash_slots: tokio::sync::Semaphore,
    /// Logged-in console browsers.
    pub console: console::session::Sessions,
}

/// Concurrent password hashes: half the cores, at least one.
pub fn default_hash_slots() -> tokio::sync::Semaphore {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::sync::Semaphore::new((cores / 2).max(1))
}

/// A component's health check: `Err` says what is wrong. Probes may block (the store's
/// takes the write lock), so they run on the blocking pool.
pub type Probe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl Ctx {
    /// Runs a blocking store call on the blocking pool.
    pub async fn db<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Store) -> storage::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
            .map_err(ApiError::from)
    }

    /// Runs CPU-heavy work (password hashing) on the blocking pool, at most `hash_slots` at
    /// once; a request that waits 10 s for a slot is answered 503.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Ctx) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let _slot = tokio::time::timeout(std::time::Duration::from_secs(10), self.hash_slots.acquire())
            .await
            .map_err(|_| ApiError::Unavailable("too many logins in progress; try again".into()))?
            .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?
    }
}

/// The warp filter serving the whole API.
pub fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::any()
        .map(move || ctx.clone())
        .and(warp::method())
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<Peer>().map(|p: Option<Peer>| p.map(|p| p.0)))
        .and(warp::body::stream())
        .then(
            |ctx: Arc<Ctx>, method: Method, path: warp::path::FullPath, query: String, headers, remote, body| async move {
                let started = std::time::Instant::now();
                let mut seen = Seen::default();
                let res = serve_one(&ctx, &mut seen, method.clone(), path.as_str(), &query, headers, remote, body).await;
                let resp = http::render(res);
                edge::finish(&ctx, &method, seen, resp, started)
            },
        )
}

/// What the edge learnt about a request while serving it (for the access log and metrics).
#[derive(Default)]
pub struct Seen {
    pub route: Option<&'static routes::Route>,
    pub caller: Option<String>,
    pub origin: Option<warp::http::HeaderValue>,
    /// A console page (one route label for all of them).
    pub console: bool,
}

/// Matches the request against the route table (404, 405, 400 for an unknown query
/// parameter), reads the body within its limit and dispatches.
#[allow(clippy::too_many_arguments)]
async fn serve_one<S, B>(
    ctx: &Arc<Ctx>,
    seen: &mut Seen,
    method: Method,
    path: &str,
    query: &str,
    headers: warp::http::HeaderMap,
    remote: Option<std::net::SocketAddr>,
    body: S,
) -> Result<Reply, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    seen.origin = headers.get("origin").cloned();
    let remote = proxy::client(&ctx.cfg.trusted_proxies, remote, &headers);
    let segs = http::split_path(path)?;
    if console::owns(&segs) {
        seen.console = true;
        let body = http::read_body(&headers, Box::pin(body), ctx.cfg.max_body_bytes).await?;
        let req = console::Request {
            method,
            segs,
            query: http::parse_query(query),
            headers,
            body,
            remote,
        };
        return console::serve(ctx, req).await.or_else(|e| match e {
            // Off means absent: the plain JSON 404 of an unknown path.
            ApiError::NotFound(_) if !ctx.cfg.console => Err(e),
            e => Ok(console::error_page(&e)),
        });
    }
    if method == Method::OPTIONS {
        if let Some(r) = edge::preflight(ctx, &headers, &segs) {
            return r;
        }
    }
    let seg_refs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let found = match routes::find(&method, &seg_refs) {
        routes::Found::Route(r) => r,
        routes::Found::WrongMethod(allowed) => return Err(ApiError::MethodNotAllowed(allowed.join(", "))),
        routes::Found::NoRoute => return Err(ApiError::NotFound(format!("no route for {method} {path}"))),
    };
    seen.route = Some(found);
    let query = http::parse_query(query);
    if let Some(k) = found.unknown_param(query.iter().map(|(k, _)| k.as_str())) {
        let takes: Vec<&str> = found.params().map(|p| p.name).collect();
        return Err(ApiError::bad(if takes.is_empty() {
            format!("unknown query parameter `{k}`: this route takes none")
        } else {
            format!("unknown query parameter `{k}`: this route takes {}", takes.join(", "))
        }));
    }
    let body = http::read_body(&headers, Box::pin(body), ctx.cfg.max_body_bytes).await?;
    let req = Req {
        method,
        segs,
        query,
        headers,
        body,
        remote,
        caller: std::sync::OnceLock::new(),
    };
    let res = route(ctx, &req).await;
    seen.caller = req.caller.get().cloned();
    res
}

async fn route(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let first = req.seg(0).to_string();
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let post = req.method == Method::POST;
    let get = req.method == Method::GET;
    // Messaging routes first: they authenticate devices, not users.
    match segs.as_slice() {
        ["http", "channels", ch, "messages", sub @ ..] | ["channels", ch, "messages", sub @ ..] if post => {
            return messages::publish(ctx, req, None, ch, sub).await
        }
        ["m", d, "c", ch, sub @ ..] if post => return messages::publish(ctx, req, Some(d), ch, sub).await,
        ["channels", ch, "messages"] if get => return messages::read(ctx, req, None, ch).await,
        [d, "channels", ch, "messages"] if get && uuid::Uuid::parse_str(d).is_ok() => {
            return messages::read(ctx, req, Some(d), ch).await
        }
        _ => {}
    }
    match first.as_str() {
        "health" if req.segs.len() == 1 => health(ctx).await,
        "metrics" if req.segs.len() == 1 => edge::metrics(ctx, req),
        "openapi.json" if req.segs.len() == 1 => Reply::ok(openapi::document()),
        "users" => users::route(ctx, req).await,
        "password" => users::password_route(ctx, req).await,
        "domains" => domains::route(ctx, req).await,
        "certs" => certs::public(ctx, req).await,
        "clients" => clients::list_all(ctx, req).await,
        "channels" => channels::list_all(ctx, req).await,
        d if uuid::Uuid::parse_str(d).is_ok() => scoped::route(ctx, req).await,
        _ => Err(ApiError::NotFound(format!(
            "no route for {} /{}",
            req.method,
            req.segs.join("/")
        ))),
    }
}

/// `GET /health`: `pass`, or `fail` (503) naming each component that is not serving and why.
async fn health(ctx: &Ctx) -> Result<Reply, ApiError> {
    let probes = ctx.probes.clone();
    let results: Vec<(&'static str, Result<(), String>)> =
        tokio::task::spawn_blocking(move || probes.iter().map(|(n, p)| (*n, p())).collect())
            .await
            .map_err(|e| ApiError::Internal(format!("health task failed: {e}")))?;
    let failing = results.iter().any(|(_, r)| r.is_err());
    let checks: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(n, r)| {
            let check = match r {
                Ok(()) => serde_json::json!([{ "status": "pass" }]),
                Err(why) => serde_json::json!([{ "status": "fail", "output": why }]),
            };
            (n.to_string(), check)
        })
        .collect();
    let (status, code) = if failing {
        ("fail", warp::http::StatusCode::SERVICE_UNAVAILABLE)
    } else {
        ("pass", warp::http::StatusCode::OK)
    };
    let mut r = Reply::json(
        code,
        &serde_json::json!({
            "status": status,
            "version": ctx.cfg.version,
            "description": "fluxgate IoT platform",
            "checks": checks,
        }),
    )?;
    r.content_type = "application/health+json";
    Ok(r)
}
