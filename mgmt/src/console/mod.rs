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

mod pages;
pub mod session;
mod times;

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

/// A submitted form (`application/x-www-form-urlencoded`).
pub struct Form(Vec<(String, String)>);

impl Form {
    fn parse(req: &Request) -> Result<Form, ApiError> {
        let ct = req
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ct != "application/x-www-form-urlencoded" {
            return Err(ApiError::UnsupportedMediaType(
                "console forms are application/x-www-form-urlencoded".into(),
            ));
        }
        let text = std::str::from_utf8(&req.body).map_err(|_| ApiError::bad("form is not UTF-8"))?;
        Ok(Form(crate::http::parse_query(text)))
    }
    pub fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
            .trim()
    }
    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
}

/// An error shown next to the form that caused it, with what the user typed there (shown
/// again, so nothing is lost) and the field the error is about (marked).
pub struct Notice {
    pub form: String,
    pub message: String,
    /// The form's fields as submitted (never the CSRF token or a secret).
    pub values: Vec<(String, String)>,
}

/// The fields a message is about: the first field name it mentions.
const FIELDS: &[&str] = &["metadata", "tags", "description", "name"];

impl Notice {
    fn new(form: &Form, action: &str, e: &ApiError) -> Notice {
        Notice {
            form: action.to_string(),
            message: e.to_string(),
            values: form
                .0
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "csrf" | "secret" | "password" | "new_password"))
                .cloned()
                .collect(),
        }
    }

    /// What was typed into `field` of `form`, when this notice is about that form.
    pub fn typed(&self, form: &str, field: &str) -> Option<&str> {
        (self.form == form)
            .then(|| self.values.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str()))
            .flatten()
    }

    /// The field of `form` the error is about, if it names one.
    pub fn field(&self, form: &str) -> Option<&'static str> {
        let m = self.message.to_ascii_lowercase();
        (self.form == form)
            .then(|| FIELDS.iter().copied().find(|f| m.contains(f)))
            .flatten()
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

impl Cx {
    /// A REST call with this session's token.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        json_of(internal_raw(&self.ctx, &self.s.access, self.remote, method, path, query, body).await?)
    }

    async fn get_json(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ApiError> {
        self.api(Method::GET, path, query, None).await
    }

    /// The caller's standing in a domain, through the REST authorization function.
    async fn where_in(&self, d: &str) -> Result<Where, ApiError> {
        uuid_ok(d)?;
        let domain = self.get_json(&format!("/domains/{d}"), &[]).await?;
        let req = Req {
            method: Method::GET,
            segs: Vec::new(),
            query: Vec::new(),
            headers: bearer(&self.s.access)?,
            body: bytes::Bytes::new(),
            remote: self.remote,
            caller: std::sync::OnceLock::new(),
        };
        let caller = crate::auth::caller(&self.ctx, &req).await?;
        let a = authz::authorize(&self.ctx, &caller, d, authz::Action::Read).await?;
        Ok(Where {
            domain,
            can_edit: a.may(authz::Action::Edit),
            can_manage: a.may(authz::Action::Manage),
        })
    }

    fn page(&self, status: StatusCode, title: &str, d: Option<(&str, &Where)>, body: maud::Markup) -> Reply {
        html(status, pages::layout(&self.s, title, d, body))
    }

    async fn get(&self, segs: &[&str], req: &Request) -> Result<Reply, ApiError> {
        let r = match segs {
            [] => self.domains_page(None).await,
            ["session"] => Reply::ok(&json!({"expires_at": self.s.expires_at})),
            ["ca.pem"] => {
                let mut r = internal_raw(&self.ctx, "", self.remote, Method::GET, "/certs/ca", &[], None).await?;
                r.headers
                    .push(("content-disposition", "attachment; filename=\"fluxgate-ca.pem\"".into()));
                Ok(r)
            }
            ["d", d] => {
                uuid_ok(d)?;
                Ok(redirect(&format!("/console/d/{d}/clients")))
            }
            ["d", d, "members"] => self.members_page(d, req, None).await,
            ["d", d, kind] => match Kind::parse(kind) {
                Some(k) => self.list_page(d, k, req, None, None).await,
                None => Err(ApiError::NotFound("no such page".into())),
            },
            ["d", d, "channels", id, "live"] => {
                uuid_ok(d)?;
                let path = format!("/{d}/channels/{id}/messages/live");
                let r = internal_raw(&self.ctx, &self.s.access, self.remote, Method::GET, &path, &[], None).await;
                return Ok(as_api(r));
            }
            ["d", d, "channels", id, "chart.svg"] => {
                uuid_ok(d)?;
                let path = format!("/{d}/channels/{id}/messages/chart.svg");
                let q: Vec<(&str, String)> = ["name", "from", "to", "interval", "aggregation"]
                    .iter()
                    .filter_map(|k| req.q(k).map(|v| (*k, v.to_string())))
                    .collect();
                let r = internal_raw(&self.ctx, &self.s.access, self.remote, Method::GET, &path, &q, None).await;
                return Ok(as_api(r));
            }
            ["d", d, kind, id] => match Kind::parse(kind) {
                Some(k) => self.entity_page(d, k, id, req, None).await,
                None => Err(ApiError::NotFound("no such page".into())),
            },
            _ => Err(ApiError::NotFound("no such page".into())),
        };
        self.or_error_page(r)
    }

    /// Errors of a page become a page; a token that stopped working ends the session.
    fn or_error_page(&self, r: Result<Reply, ApiError>) -> Result<Reply, ApiError> {
        match r {
            Err(ApiError::Unauthorized(_)) => {
                self.ctx.console.end(&self.s.id);
                Ok(redirect("/console/login"))
            }
            Err(e) => Ok(self.page(e.status(), "Error", None, pages::problem(&e.to_string()))),
            ok => ok,
        }
    }

    async fn post(&self, segs: &[&str], req: &Request, form: Form) -> Result<Reply, ApiError> {
        let action = form.get("action").to_string();
        let notice = |e: &ApiError| Notice::new(&form, &action, e);
        let r = match segs {
            ["logout"] => {
                // Revoke the token family first: the tokens die even if the cookie survives.
                let _ = self.api(Method::POST, "/users/tokens/revoke", &[], None).await;
                self.ctx.console.end(&self.s.id);
                return Ok(redirect("/console/login")
                    .with_header("set-cookie", session::expired(session::COOKIE, self.ctx.cfg.tls)));
            }
            ["domains"] => match self.create_domain(&form).await {
                Ok(d) => Ok(redirect(&format!("/console/d/{d}/clients"))),
                Err(e) => self.domains_page(Some(notice(&e))).await.map(|r| status(r, &e)),
            },
            ["d", d, "members"] => match self.members_action(d, &form).await {
                Ok(()) => Ok(redirect(&format!("/console/d/{d}/members"))),
                Err(e) => self.members_page(d, req, Some(notice(&e))).await.map(|r| status(r, &e)),
            },
            ["d", d, kind] => {
                let k = Kind::parse(kind).ok_or_else(|| ApiError::NotFound("no such page".into()))?;
                uuid_ok(d)?;
                match action.as_str() {
                    "bulk" => {
                        let rows = self.bulk(d, k, form.get("csv")).await;
                        match rows {
                            Ok(rows) => self.list_page(d, k, req, None, Some(rows)).await,
                            Err(e) => self
                                .list_page(d, k, req, Some(notice(&e)), None)
                                .await
                                .map(|r| status(r, &e)),
                        }
                    }
                    _ => match self.create(d, k, &form).await {
                        Ok(id) => Ok(redirect(&format!("/console/d/{d}/{}/{id}", k.path()))),
                        Err(e) => self
                            .list_page(d, k, req, Some(notice(&e)), None)
                            .await
                            .map(|r| status(r, &e)),
                    },
                }
            }
            ["d", d, kind, id] => {
                let k = Kind::parse(kind).ok_or_else(|| ApiError::NotFound("no such page".into()))?;
                uuid_ok(d)?;
                match self.entity_action(d, k, id, &form).await {
                    Ok(Done::Back) => Ok(redirect(&format!("/console/d/{d}/{}/{id}", k.path()))),
                    Ok(Done::Gone) => Ok(redirect(&format!("/console/d/{d}/{}", k.path()))),
                    Ok(Done::Show(page)) => Ok(self.page(StatusCode::OK, "Certificate issued", None, page)),
                    Err(e) => self
                        .entity_page(d, k, id, req, Some(notice(&e)))
                        .await
                        .map(|r| status(r, &e)),
                }
            }
            _ => Err(ApiError::NotFound("no such page".into())),
        };
        self.or_error_page(r)
    }
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

/// Splits a tags field (commas or semicolons) into tags.
pub fn tags(s: &str) -> Vec<String> {
    s.split([',', ';'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

/// A metadata field: empty means `{}`; otherwise a JSON object.
pub fn metadata(s: &str) -> Result<Value, ApiError> {
    if s.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(s) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::bad(
            "metadata must be a JSON object, e.g. {\"room\": \"kitchen\"}",
        )),
        Err(e) => Err(ApiError::bad(format!("metadata is not valid JSON: {e}"))),
    }
}

/// Parses one line of a bulk CSV: `name[,tags[,secret]]` (tags separated by `;`). Quotes
/// around a cell are removed; a cell may not contain a comma.
pub fn csv_row(line: &str) -> (String, Vec<String>, String) {
    let cells: Vec<String> = line
        .split(',')
        .map(|c| c.trim().trim_matches('"').trim().to_string())
        .collect();
    let cell = |i: usize| cells.get(i).cloned().unwrap_or_default();
    (cell(0), tags(&cell(1)), cell(2))
}

impl Cx {
    async fn create_domain(&self, form: &Form) -> Result<String, ApiError> {
        let mut body = json!({"name": form.get("name")});
        if !form.get("route").is_empty() {
            body["route"] = json!(form.get("route"));
        }
        let d = self.api(Method::POST, "/domains", &[], Some(body)).await?;
        Ok(str_of(&d, &["id"]).to_string())
    }

    async fn domains_page(&self, notice: Option<Notice>) -> Result<Reply, ApiError> {
        let list = self.get_json("/domains", &[("limit", "100".into())]).await?;
        Ok(self.page(
            StatusCode::OK,
            "Domains",
            None,
            pages::domains(&self.s, &list, notice.as_ref()),
        ))
    }

    async fn members_page(&self, d: &str, req: &Request, notice: Option<Notice>) -> Result<Reply, ApiError> {
        let w = self.where_in(d).await?;
        let offset = req.q("offset").unwrap_or("0").to_string();
        let list = self
            .get_json(
                &format!("/domains/{d}/users"),
                &[("limit", "100".into()), ("offset", offset)],
            )
            .await?;
        let body = pages::members(&self.s, d, &w, &list, notice.as_ref());
        Ok(self.page(StatusCode::OK, "Members", Some((d, &w)), body))
    }

    async fn members_action(&self, d: &str, form: &Form) -> Result<(), ApiError> {
        uuid_ok(d)?;
        match form.get("action") {
            "assign" => {
                let user = self.user_id(form.get("user")).await?;
                let body = json!({"user_ids": [user], "relation": form.get("relation")});
                self.api(Method::POST, &format!("/domains/{d}/users/assign"), &[], Some(body))
                    .await?;
            }
            "unassign" => {
                let body = json!({"user_id": form.get("user")});
                self.api(Method::POST, &format!("/domains/{d}/users/unassign"), &[], Some(body))
                    .await?;
            }
            other => return Err(ApiError::bad(format!("unknown action `{other}`"))),
        }
        Ok(())
    }

    /// A user id from an id or an exact username.
    async fn user_id(&self, who: &str) -> Result<String, ApiError> {
        if who.is_empty() {
            return Err(ApiError::bad("name the user: a user id or a username"));
        }
        if uuid::Uuid::parse_str(who).is_ok() {
            return Ok(who.to_string());
        }
        let found = self
            .get_json(
                "/users/search",
                &[("username", who.to_string()), ("limit", "100".into())],
            )
            .await?;
        found["users"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| str_of(u, &["username"]) == who || str_of(u, &["credentials", "username"]) == who)
            .map(|u| str_of(u, &["id"]).to_string())
            .ok_or_else(|| ApiError::NotFound(format!("no user named `{who}`")))
    }

    async fn list_page(
        &self,
        d: &str,
        k: Kind,
        req: &Request,
        notice: Option<Notice>,
        bulk: Option<Vec<pages::BulkRow>>,
    ) -> Result<Reply, ApiError> {
        let w = self.where_in(d).await?;
        let mut q: Vec<(&str, String)> = vec![("limit", PAGE.to_string())];
        for key in ["offset", "name", "tag", "status", "connected"] {
            if let Some(v) = req.q(key) {
                if key != "connected" || k == Kind::Clients {
                    q.push((key, v.to_string()));
                }
            }
        }
        let list = self.get_json(&format!("/{d}/{}", k.path()), &q).await?;
        let filters = pages::Filters {
            name: req.q("name").unwrap_or(""),
            tag: req.q("tag").unwrap_or(""),
            status: req.q("status").unwrap_or(""),
            connected: req.q("connected").unwrap_or(""),
        };
        let body = pages::list(&self.s, d, &w, k, &list, &filters, notice.as_ref(), bulk.as_deref());
        Ok(self.page(StatusCode::OK, k.title(), Some((d, &w)), body))
    }

    async fn create(&self, d: &str, k: Kind, form: &Form) -> Result<String, ApiError> {
        let mut body = json!({
            "name": form.get("name"),
            "tags": tags(form.get("tags")),
            "metadata": metadata(form.get("metadata"))?,
        });
        if k == Kind::Clients && !form.get("secret").is_empty() {
            body["credentials"] = json!({"secret": form.get("secret")});
        }
        let v = self
            .api(Method::POST, &format!("/{d}/{}", k.path()), &[], Some(body))
            .await?;
        Ok(str_of(&v, &["id"]).to_string())
    }

    /// Creates one entity per CSV row; a bad row does not stop the others.
    async fn bulk(&self, d: &str, k: Kind, csv: &str) -> Result<Vec<pages::BulkRow>, ApiError> {
        let lines: Vec<&str> = csv.lines().filter(|l| !l.trim().is_empty()).collect();
        let skip_header = lines.first().is_some_and(|l| csv_row(l).0.eq_ignore_ascii_case("name"));
        let lines = &lines[usize::from(skip_header)..];
        if lines.is_empty() {
            return Err(ApiError::bad("the CSV has no rows (one per line: name,tags,secret)"));
        }
        if lines.len() > MAX_CSV_ROWS {
            return Err(ApiError::bad(format!(
                "the CSV has {} rows; at most {MAX_CSV_ROWS} at once",
                lines.len()
            )));
        }
        let mut out = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let (name, tags, secret) = csv_row(line);
            let mut body = json!({"name": name, "tags": tags});
            if k == Kind::Clients && !secret.is_empty() {
                body["credentials"] = json!({"secret": secret});
            }
            let r = self
                .api(Method::POST, &format!("/{d}/{}", k.path()), &[], Some(body))
                .await;
            out.push(pages::BulkRow {
                line: i + 1 + usize::from(skip_header),
                name,
                result: r.map(|v| str_of(&v, &["id"]).to_string()).map_err(|e| e.to_string()),
            });
        }
        Ok(out)
    }

    async fn entity_page(
        &self,
        d: &str,
        k: Kind,
        id: &str,
        req: &Request,
        notice: Option<Notice>,
    ) -> Result<Reply, ApiError> {
        let w = self.where_in(d).await?;
        let base = format!("/{d}/{}/{id}", k.path());
        let entity = self.get_json(&base, &[]).await?;
        let mut page = pages::Entity {
            d,
            kind: k,
            entity: &entity,
            show_secret: req.q("secret") == Some("show"),
            confirm: req.q("confirm").unwrap_or(""),
            related: Value::Null,
            choices: Value::Null,
            certs: Value::Null,
            history: Value::Null,
            chart: pages::ChartForm::default(),
            msg_filters: Vec::new(),
        };
        match k {
            Kind::Clients => {
                page.related = self
                    .get_json(&format!("{base}/channels"), &[("limit", "100".into())])
                    .await?;
                if w.can_edit {
                    page.choices = self
                        .get_json(&format!("/{d}/channels"), &[("limit", "100".into())])
                        .await?;
                }
                // Listing certificates may need more than reading the client: say so in place.
                page.certs = match self.get_json(&format!("/{d}/serials/{id}"), &[]).await {
                    Ok(v) => v,
                    Err(e) => json!({"error": e.to_string()}),
                };
            }
            Kind::Channels => {
                page.related = self
                    .get_json(&format!("{base}/clients"), &[("limit", "100".into())])
                    .await?;
                let tz: i64 = req.q("tz").and_then(|t| t.parse().ok()).unwrap_or(0);
                let mut q: Vec<(&str, String)> = vec![("limit", "20".into())];
                for key in std::iter::once("offset").chain(MSG_FILTERS.iter().copied()) {
                    if let Some(v) = req.q(key) {
                        // Times come from date-time pickers: the readers take Unix seconds.
                        let sent = match key {
                            "from" | "to" => times::to_unix(v, tz),
                            _ => Some(v.to_string()),
                        };
                        if let Some(sent) = sent {
                            q.push((key, sent));
                        }
                        page.msg_filters.push((key, v.to_string()));
                    }
                }
                if let Some(tz) = req.q("tz") {
                    page.msg_filters.push(("tz", tz.to_string()));
                }
                page.history = match self.get_json(&format!("/{d}/channels/{id}/messages"), &q).await {
                    Ok(v) => v,
                    Err(e) => json!({"error": e.to_string()}),
                };
                page.chart = pages::ChartForm {
                    name: req.q("chart_name").unwrap_or("").to_string(),
                    from: req.q("chart_from").unwrap_or("").to_string(),
                    to: req.q("chart_to").unwrap_or("").to_string(),
                    from_unix: times::to_unix(req.q("chart_from").unwrap_or(""), tz).unwrap_or_default(),
                    to_unix: times::to_unix(req.q("chart_to").unwrap_or(""), tz).unwrap_or_default(),
                    interval: req.q("chart_interval").unwrap_or("").to_string(),
                    aggregation: req.q("chart_aggregation").unwrap_or("").to_string(),
                };
            }
            Kind::Groups => {}
        }
        let title = label_of(&entity).to_string();
        let body = pages::entity(&self.s, &w, &page, notice.as_ref());
        Ok(self.page(
            StatusCode::OK,
            if title.is_empty() { k.one() } else { &title },
            Some((d, &w)),
            body,
        ))
    }

    async fn entity_action(&self, d: &str, k: Kind, id: &str, form: &Form) -> Result<Done, ApiError> {
        let base = format!("/{d}/{}/{id}", k.path());
        match form.get("action") {
            "update" => {
                let mut body = json!({"name": form.get("name"), "metadata": metadata(form.get("metadata"))?});
                if k != Kind::Clients && form.has("description") {
                    body["description"] = json!(form.get("description"));
                }
                self.api(Method::PATCH, &base, &[], Some(body)).await?;
            }
            "tags" => {
                let body = json!({"tags": tags(form.get("tags"))});
                self.api(Method::PATCH, &format!("{base}/tags"), &[], Some(body))
                    .await?;
            }
            a @ ("enable" | "disable") => {
                self.api(Method::POST, &format!("{base}/{a}"), &[], None).await?;
            }
            "delete" => {
                self.api(Method::DELETE, &base, &[], None).await?;
                return Ok(Done::Gone);
            }
            "rotate" if k == Kind::Clients => {
                let body = json!({"secret": crate::clients::random_secret()});
                self.api(Method::PATCH, &format!("{base}/secret"), &[], Some(body))
                    .await?;
            }
            a @ ("connect" | "disconnect") if k != Kind::Groups => {
                let types: Vec<&str> = ["publish", "subscribe"]
                    .into_iter()
                    .filter(|t| a == "disconnect" && !form.has("publish") && !form.has("subscribe") || form.has(t))
                    .collect();
                if types.is_empty() {
                    return Err(ApiError::bad("choose publish, subscribe or both"));
                }
                let other = form.get("other");
                if other.is_empty() {
                    return Err(ApiError::bad(format!(
                        "choose a {}",
                        if k == Kind::Clients { "channel" } else { "client" }
                    )));
                }
                let (clients, channels) = if k == Kind::Clients { (id, other) } else { (other, id) };
                let body = json!({"client_ids": [clients], "channel_ids": [channels], "types": types});
                self.api(Method::POST, &format!("/{d}/channels/{a}"), &[], Some(body))
                    .await?;
            }
            "issue_cert" if k == Kind::Clients => {
                let mut body = json!({"client_id": id});
                if !form.get("ttl").is_empty() {
                    body["ttl"] = json!(form.get("ttl"));
                }
                let cert = self.api(Method::POST, &format!("/{d}/certs"), &[], Some(body)).await?;
                return Ok(Done::Show(pages::issued(d, id, &cert)));
            }
            "revoke_cert" if k == Kind::Clients => {
                let serial = form.get("serial");
                if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(ApiError::bad("no certificate serial given"));
                }
                self.api(Method::DELETE, &format!("/{d}/certs/{serial}"), &[], None)
                    .await?;
            }
            other => return Err(ApiError::bad(format!("unknown action `{other}`"))),
        }
        Ok(Done::Back)
    }
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
