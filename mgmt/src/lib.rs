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
mod clients;
mod domains;
pub mod error;
mod groups;
pub mod guard;
pub mod http;
pub mod messages;
mod scoped;
pub mod senml;
mod users;
pub mod views;

use crate::error::ApiError;
use crate::http::{Reply, Req};
use std::sync::Arc;
use storage::{Order, PageReq, Store};
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
    /// The change feed: rights-affecting changes, announced after their transaction commits.
    pub events: tokio::sync::broadcast::Sender<storage::Change>,
    /// The message pipeline (HTTP adapter).
    pub messages: Arc<dyn messages::MessagePort>,
    /// The platform CA (client certificates, CRL).
    pub ca: Arc<::certs::Ca>,
    /// Health checks of the other components (name, "is it working?"), for `GET /health`.
    pub probes: Vec<(&'static str, Probe)>,
    /// Failed-login brake (per identity and per source address).
    pub guard: guard::LoginGuard,
    /// Password hashes computed at once, at most: a flood of logins cannot take every core
    /// from the API and the broker.
    pub hash_slots: tokio::sync::Semaphore,
}

/// Concurrent password hashes: half the cores, at least one.
pub fn default_hash_slots() -> tokio::sync::Semaphore {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::sync::Semaphore::new((cores / 2).max(1))
}

/// A component's health check.
pub type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

impl Ctx {
    /// Announces a committed change on the change feed (no receivers is fine).
    pub fn emit(&self, change: storage::Change) {
        tracing::debug!(?change, "change feed");
        let _ = self.events.send(change);
    }

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
                let res = async {
                    let body = http::read_body(&headers, Box::pin(body), ctx.cfg.max_body_bytes).await?;
                    let req = Req {
                        method,
                        segs: http::split_path(path.as_str())?,
                        query: http::parse_query(&query),
                        headers,
                        body,
                        remote,
                    };
                    route(&ctx, req).await
                }
                .await;
                http::render(res)
            },
        )
}

async fn route(ctx: &Arc<Ctx>, req: Req) -> Result<Reply, ApiError> {
    let first = req.seg(0).to_string();
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let post = req.method == Method::POST;
    let get = req.method == Method::GET;
    // Messaging routes first: they authenticate devices, not users.
    match segs.as_slice() {
        ["http", "channels", ch, "messages", sub @ ..] | ["channels", ch, "messages", sub @ ..] if post => {
            return messages::publish(ctx, &req, None, ch, sub).await
        }
        ["m", d, "c", ch, sub @ ..] if post => return messages::publish(ctx, &req, Some(d), ch, sub).await,
        ["channels", ch, "messages"] if get => return messages::read(ctx, &req, None, ch).await,
        [d, "channels", ch, "messages"] if get && uuid::Uuid::parse_str(d).is_ok() => {
            return messages::read(ctx, &req, Some(d), ch).await
        }
        _ => {}
    }
    match first.as_str() {
        "health" if req.segs.len() == 1 => health(ctx, &req),
        "users" => users::route(ctx, &req).await,
        "password" => users::password_route(ctx, &req).await,
        "domains" => domains::route(ctx, &req).await,
        "certs" => certs::public(ctx, &req).await,
        "clients" => clients::list_all(ctx, &req).await,
        "channels" => channels::list_all(ctx, &req).await,
        d if uuid::Uuid::parse_str(d).is_ok() => scoped::route(ctx, &req).await,
        _ => Err(ApiError::NotFound(format!(
            "no route for {} /{}",
            req.method,
            req.segs.join("/")
        ))),
    }
}

fn health(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    if req.method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let failing: Vec<&str> = ctx.probes.iter().filter(|(_, ok)| !ok()).map(|(n, _)| *n).collect();
    let checks: serde_json::Map<String, serde_json::Value> = ctx
        .probes
        .iter()
        .map(|(n, _)| {
            let status = if failing.contains(n) { "fail" } else { "pass" };
            (n.to_string(), serde_json::json!([{ "status": status }]))
        })
        .collect();
    let (status, code) = if failing.is_empty() {
        ("pass", warp::http::StatusCode::OK)
    } else {
        ("fail", warp::http::StatusCode::SERVICE_UNAVAILABLE)
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

/// Reads `offset`, `limit` (default 10, at most `max_limit`), `order` and `dir`.
pub fn page_req(req: &Req, max_limit: u64) -> Result<PageReq, ApiError> {
    let offset = req.q_u64("offset")?.unwrap_or(0);
    let limit = req.q_u64("limit")?.unwrap_or(10);
    if limit == 0 || limit > max_limit {
        return Err(ApiError::bad(format!(
            "query parameter `limit` must be between 1 and {max_limit}"
        )));
    }
    let order = match req.q("order") {
        None | Some("") => Order::CreatedAt,
        Some(o) => Order::parse(o).ok_or_else(|| ApiError::bad("invalid value of query parameter `order`"))?,
    };
    let descending = match req.q("dir") {
        None | Some("") | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(ApiError::bad("invalid value of query parameter `dir`")),
    };
    Ok(PageReq {
        offset,
        limit,
        order,
        descending,
    })
}

/// Reads the `status` filter (`enabled` by default).
pub fn status_filter(req: &Req) -> Result<storage::StatusFilter, ApiError> {
    match req.q("status") {
        None | Some("") => Ok(storage::StatusFilter::Enabled),
        Some(s) => {
            storage::StatusFilter::parse(s).ok_or_else(|| ApiError::bad("invalid value of query parameter `status`"))
        }
    }
}

/// A trimmed, non-empty query parameter.
pub fn q_text(req: &Req, key: &str) -> Option<String> {
    req.q(key).map(str::trim).filter(|s| !s.is_empty()).map(String::from)
}
