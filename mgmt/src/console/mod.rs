//! The web console: server-rendered HTML pages at `/` and `/console/…` on the API listener.
//!
//! Invariants:
//! - The console holds no authority of its own. Every read and write is a call into the REST
//!   router ([`Cx::api`]) with the session's own access token, so it passes the same route
//!   table, the same authentication and the same [`crate::authz`] decisions as a REST client
//!   presenting that token; it can do nothing that token could not.
//! - The browser holds an opaque HttpOnly, SameSite=Strict cookie (Secure over TLS); tokens
//!   stay in [`session::Sessions`]. Every POST carries the session's CSRF token (the login form
//!   a token of its own, in a short-lived cookie), compared in constant time.
//! - Assets are embedded; pages load nothing from elsewhere (Content-Security-Policy: self).

mod cx;
mod entity;
mod forms;
mod pages;
pub mod session;
mod times;
mod users;

pub use forms::{csv_row, metadata, tags, Form, Notice};

use crate::auth::TokenKind;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::{authz, routes, Ctx};
use serde_json::{json, Value};
use session::{Login, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};

/// Rows in a console list page.
pub const PAGE: u64 = 20;
/// The readers' filters the channel page's history offers.
pub const MSG_FILTERS: &[&str] = &[
    "name",
    "subtopic",
    "publisher",
    "protocol",
    "v",
    "comparator",
    "vs",
    "vb",
    "from",
    "to",
    "dir",
];
/// Rows a bulk CSV may hold.
pub const MAX_CSV_ROWS: usize = 1000;

/// Whether a request path belongs to the console (`/` or `/console/…`).
pub fn owns(segs: &[String]) -> bool {
    segs.is_empty() || segs.first().is_some_and(|s| s == "console")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A console request, parsed.
pub struct Request {
    pub method: Method,
    pub segs: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    pub remote: Option<SocketAddr>,
}

impl Request {
    fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
    fn cookie(&self, name: &str) -> Option<&str> {
        session::cookie_value(self.headers.get("cookie").and_then(|v| v.to_str().ok()), name)
    }
}

/// Serves one console request. Errors are rendered as pages by the caller's edge.
pub async fn serve(ctx: &Arc<Ctx>, req: Request) -> Result<Reply, ApiError> {
    if !ctx.cfg.console {
        return Err(ApiError::NotFound("the console is switched off (http.console)".into()));
    }
    let segs: Vec<&str> = req.segs.iter().skip(1).map(String::as_str).collect();
    let get = req.method == Method::GET;
    let post = req.method == Method::POST;
    if req.segs.is_empty() {
        return if get {
            Ok(redirect("/console/"))
        } else {
            Err(wrong_method("GET"))
        };
    }
    match segs.as_slice() {
        ["assets", name] if get => return asset(name),
        ["login"] if get => return Ok(login_page(ctx, None, StatusCode::OK)),
        ["login"] if post => return login(ctx, &req).await,
        ["login"] => return Err(wrong_method("GET, POST")),
        _ => {}
    }
    let Some((s, renewed)) = current(ctx, &req).await else {
        return if get {
            Ok(redirect("/console/login"))
        } else {
            Err(ApiError::Unauthorized(
                "your console session has ended; log in again".into(),
            ))
        };
    };
    // A renewed session's cookie lives as long as its new token.
    let cookie = renewed.then(|| s.cookie(ctx.cfg.tls));
    let cx = Cx {
        ctx: ctx.clone(),
        s,
        remote: req.remote,
    };
    let reply = if post {
        let form = Form::parse(&req)?;
        if !session::same(form.get("csrf"), &cx.s.csrf) {
            return Err(ApiError::Forbidden(
                "this form is stale or forged (CSRF token missing or wrong); reload the page".into(),
            ));
        }
        cx.post(&segs, &req, form).await?
    } else if get {
        cx.get(&segs, &req).await?
    } else {
        return Err(wrong_method("GET, POST"));
    };
    Ok(match cookie {
        // A logout clears the cookie itself.
        Some(c) if !reply.headers.iter().any(|(k, _)| *k == "set-cookie") => reply.with_header("set-cookie", c),
        _ => reply,
    })
}

fn wrong_method(allowed: &str) -> ApiError {
    ApiError::MethodNotAllowed(allowed.into())
}

/// The session a request's cookie names, renewed (`true`) when its access token is half
/// spent. A session whose renewal fails (its tokens were revoked) ends.
async fn current(ctx: &Arc<Ctx>, req: &Request) -> Option<(Session, bool)> {
    let s = ctx.console.find(req.cookie(session::COOKIE)?, now())?;
    if !s.wants_renewal(now()) {
        return Some((s, false));
    }
    let renewed = async {
        let tokens = internal_raw(
            ctx,
            &s.refresh,
            req.remote,
            Method::POST,
            "/users/tokens/refresh",
            &[],
            None,
        )
        .await
        .and_then(json_of)
        .ok()?;
        let (access, refresh) = token_pair(&tokens)?;
        let exp = ctx.tokens.verify(&access, TokenKind::Access).ok()?.exp;
        Some((access, refresh, exp))
    }
    .await;
    let Some((access, refresh, exp)) = renewed else {
        ctx.console.end(&s.id);
        return None;
    };
    ctx.console.renew(&s.id, access.clone(), refresh.clone(), exp);
    let mut s = s;
    (s.access, s.refresh, s.expires_at) = (access, refresh, exp);
    Some((s, true))
}

fn token_pair(v: &Value) -> Option<(String, String)> {
    Some((
        v.get("access_token")?.as_str()?.to_string(),
        v.get("refresh_token")?.as_str()?.to_string(),
    ))
}

/// The JSON of an API answer (`null` when there is none).
fn json_of(reply: Reply) -> Result<Value, ApiError> {
    match reply.body {
        Some(b) if !b.is_empty() && reply.content_type.contains("json") => {
            serde_json::from_slice(&b).map_err(|e| ApiError::Internal(format!("API answer: {e}")))
        }
        _ => Ok(Value::Null),
    }
}

/// Calls the REST router as the holder of `token` would: route table, authentication and
/// authorization included.
async fn internal_raw(
    ctx: &Arc<Ctx>,
    token: &str,
    remote: Option<SocketAddr>,
    method: Method,
    path: &str,
    query: &[(&str, String)],
    body: Option<Value>,
) -> Result<Reply, ApiError> {
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
    let refs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if !matches!(routes::find(&method, &refs), routes::Found::Route(_)) {
        return Err(ApiError::Internal(format!(
            "console calls an unknown route {method} {path}"
        )));
    }
    let mut headers = bearer(token)?;
    let body = match body {
        Some(v) => {
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            serde_json::to_vec(&v)
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .into()
        }
        None => bytes::Bytes::new(),
    };
    let req = Req {
        method,
        segs,
        query: query
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        headers,
        body,
        remote,
        caller: std::sync::OnceLock::new(),
    };
    crate::route(ctx, &req).await
}

/// Headers presenting `token` as a bearer token (none for an empty token).
fn bearer(token: &str) -> Result<HeaderMap, ApiError> {
    let mut headers = HeaderMap::new();
    if !token.is_empty() {
        let v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ApiError::Unauthorized("malformed token".into()))?;
        headers.insert("authorization", v);
    }
    Ok(headers)
}

/// A 303 redirect.
pub fn redirect(to: &str) -> Reply {
    Reply {
        status: StatusCode::SEE_OTHER,
        body: None,
        content_type: "text/plain",
        headers: vec![("location", to.to_string())],
        raw: None,
    }
}

/// An HTML page with the console's security headers.
pub fn html(status: StatusCode, markup: maud::Markup) -> Reply {
    Reply {
        status,
        body: Some(markup.into_string().into()),
        content_type: "text/html; charset=utf-8",
        headers: vec![
            ("cache-control", "no-store".into()),
            (
                "content-security-policy",
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                 object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
                    .into(),
            ),
            ("x-frame-options", "DENY".into()),
            ("x-content-type-options", "nosniff".into()),
            ("referrer-policy", "same-origin".into()),
        ],
        raw: None,
    }
}

/// Renders an error as a console page (for requests under `/console`).
pub fn error_page(e: &ApiError) -> Reply {
    html(e.status(), pages::error(e.status(), &e.to_string()))
}

fn asset(name: &str) -> Result<Reply, ApiError> {
    let (body, ct): (&'static str, &'static str) = match name {
        "console.css" => (include_str!("assets/console.css"), "text/css; charset=utf-8"),
        "console.js" => (include_str!("assets/console.js"), "text/javascript; charset=utf-8"),
        _ => return Err(ApiError::NotFound(format!("no console asset {name}"))),
    };
    Ok(Reply {
        status: StatusCode::OK,
        body: Some(bytes::Bytes::from_static(body.as_bytes())),
        content_type: ct,
        headers: vec![("cache-control", "max-age=3600".into())],
        raw: None,
    })
}

fn login_page(ctx: &Ctx, notice: Option<(String, String)>, status: StatusCode) -> Reply {
    let token = session::random_token();
    let (identity, message) = notice.unwrap_or_default();
    let mut r = html(status, pages::login(&token, &identity, &message));
    r.headers.push((
        "set-cookie",
        session::cookie(session::LOGIN_COOKIE, &token, 3600, ctx.cfg.tls),
    ));
    r
}

/// `POST /console/login`: the REST login, then a session for its tokens.
async fn login(ctx: &Arc<Ctx>, req: &Request) -> Result<Reply, ApiError> {
    let form = Form::parse(req)?;
    let identity = form.get("identity").to_string();
    let fail = |e: ApiError| Ok(login_page(ctx, Some((identity.clone(), e.to_string())), e.status()));
    let expected = req.cookie(session::LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !session::same(form.get("csrf"), expected) {
        return fail(ApiError::Forbidden(
            "the login form is stale or forged; try again".into(),
        ));
    }
    let body = json!({"identity": identity, "secret": form.get("password")});
    let tokens = match internal_raw(
        ctx,
        "",
        req.remote,
        Method::POST,
        "/users/tokens/issue",
        &[],
        Some(body),
    )
    .await
    .and_then(json_of)
    {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let Some((access, refresh)) = token_pair(&tokens) else {
        return fail(ApiError::Internal("login answered without tokens".into()));
    };
    let claims = ctx.tokens.verify(&access, TokenKind::Access)?;
    let profile = json_of(internal_raw(ctx, &access, req.remote, Method::GET, "/users/profile", &[], None).await?)?;
    let username = str_of(&profile, &["credentials", "username"]).to_string();
    let s = ctx.console.start(
        Login {
            user_id: claims.sub,
            username,
            super_admin: str_of(&profile, &["role"]) == "admin",
            access,
            refresh,
            expires_at: claims.exp,
            ttl: ctx.tokens.access_ttl,
        },
        now(),
    );
    Ok(redirect("/console/")
        .with_header("set-cookie", s.cookie(ctx.cfg.tls))
        .with_header("set-cookie", session::expired(session::LOGIN_COOKIE, ctx.cfg.tls)))
}

/// A string inside a JSON value (empty when absent).
/// What an entity is shown as: its name, or its id when it has none (names are optional in
/// the API, as in Magistrala's; a link is never empty).
pub fn label_of(v: &Value) -> &str {
    match str_of(v, &["name"]) {
        "" => str_of(v, &["id"]),
        name => name,
    }
}

pub fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// The three entity kinds with list and detail pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Clients,
    Channels,
    Groups,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "clients" => Some(Kind::Clients),
            "channels" => Some(Kind::Channels),
            "groups" => Some(Kind::Groups),
            _ => None,
        }
    }
    pub fn path(self) -> &'static str {
        match self {
            Kind::Clients => "clients",
            Kind::Channels => "channels",
            Kind::Groups => "groups",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            Kind::Clients => "Clients",
            Kind::Channels => "Channels",
            Kind::Groups => "Groups",
        }
    }
    pub fn one(self) -> &'static str {
        match self {
            Kind::Clients => "client",
            Kind::Channels => "channel",
            Kind::Groups => "group",
        }
    }
}

/// What a page knows about the caller in the current domain.
pub struct Where {
    pub domain: Value,
    pub can_edit: bool,
    pub can_manage: bool,
}

/// A console request with a live session.
pub struct Cx {
    ctx: Arc<Ctx>,
    pub s: Session,
    remote: Option<SocketAddr>,
}

fn uuid_ok(s: &str) -> Result<(), ApiError> {
    uuid::Uuid::parse_str(s)
        .map(|_| ())
        .map_err(|_| ApiError::NotFound("no such page".into()))
}

/// An API answer passed through as the REST API gives it (errors as JSON, for scripts and
/// images rather than for reading as a page).
fn as_api(r: Result<Reply, ApiError>) -> Reply {
    let resp = crate::http::render(r);
    Reply {
        status: resp.status(),
        body: None,
        content_type: "application/json",
        headers: Vec::new(),
        raw: Some(resp),
    }
}

/// A re-rendered form page carries the status of the error it shows.
fn status(mut r: Reply, e: &ApiError) -> Reply {
    r.status = e.status();
    r
}

/// What a successful action on one entity leads to.
enum Done {
    /// Back to the entity's page.
    Back,
    /// The entity is gone: to its list.
    Gone,
    /// A page shown once (an issued certificate and its key).
    Show(maud::Markup),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_metadata_fields() {
        assert_eq!(tags(" a, b;c ,,"), vec!["a", "b", "c"]);
        assert_eq!(metadata("").ok(), Some(json!({})));
        assert_eq!(metadata("{\"a\":1}").ok(), Some(json!({"a": 1})));
        assert!(metadata("[1]").is_err());
        assert!(metadata("{").is_err());
    }

    #[test]
    fn csv_rows() {
        assert_eq!(
            csv_row("t1, a;b ,s3cretpass"),
            ("t1".into(), vec!["a".into(), "b".into()], "s3cretpass".into())
        );
        assert_eq!(csv_row("\"t2\""), ("t2".into(), vec![], String::new()));
    }

    #[test]
    fn console_paths() {
        assert!(owns(&[]));
        assert!(owns(&["console".into(), "login".into()]));
        assert!(!owns(&["clients".into()]));
    }
}
