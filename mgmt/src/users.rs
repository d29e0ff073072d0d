//! `/users…` and `/password…`: registration, tokens, profile, updates, status, deletion and
//! password reset.

use crate::auth::{self, Caller, TokenKind};
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::params::{self, q_text};
use crate::{views, Ctx};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use storage::{NewUser, Role, Status, UserPatch, UserQuery};
use warp::http::{Method, StatusCode};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UserCredentials)]
struct Credentials {
    username: Option<String>,
    secret: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    email: Option<String>,
    tags: Option<Vec<String>>,
    credentials: Option<Credentials>,
    metadata: Option<Value>,
    #[serde(default)]
    profile_picture: String,
    status: Option<String>,
    role: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueToken {
    identity: Option<String>,
    username: Option<String>,
    secret: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    first_name: Option<String>,
    last_name: Option<String>,
    metadata: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Picture {
    profile_picture: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Email {
    email: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Username {
    username: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Role)]
struct RoleBody {
    role: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ChangeSecret)]
struct Secret {
    old_secret: String,
    new_secret: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    email: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Reset {
    password: String,
    confirm_password: String,
    token: String,
}

/// Username rule: a letter or digit, then letters, digits, `_` or `-`; at most 32.
pub fn valid_username(u: &str) -> bool {
    let mut chars = u.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && u.len() <= 32
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub fn valid_email(e: &str) -> bool {
    let Some((local, host)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && host.contains('.')
        && !host.starts_with('.')
        && !host.ends_with('.')
        && e.len() <= 254
        && !e.contains(char::is_whitespace)
}

fn check_password(p: &str) -> Result<(), ApiError> {
    auth::password_rule(p).map_err(ApiError::bad)
}

pub async fn route(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let m = &req.method;
    match segs.as_slice() {
        ["users"] if m == Method::POST => create(ctx, req).await,
        ["users"] if m == Method::GET => list(ctx, req).await,
        ["users", "tokens", "issue"] if m == Method::POST => issue_token(ctx, req).await,
        ["users", "tokens", "refresh"] if m == Method::POST => refresh(ctx, req).await,
        ["users", "tokens", "revoke"] if m == Method::POST => revoke(ctx, req).await,
        ["users", "profile"] if m == Method::GET => {
            let c = auth::caller(ctx, req).await?;
            Reply::ok(&views::user(&c.user))
        }
        ["users", "search"] if m == Method::GET => search(ctx, req).await,
        ["users", "secret"] if m == Method::PATCH => change_secret(ctx, req).await,
        ["users", "policies", ..] | ["users", _, "memberships"] => crate::groups::users_route(ctx, req, &segs).await,
        ["users", id] if m == Method::GET => get(ctx, req, id).await,
        ["users", id] if m == Method::PATCH => {
            let b: UpdateUser = req.json()?;
            if let Some(n) = b.first_name.as_deref().or(b.last_name.as_deref()) {
                views::name(n)?;
            }
            let patch = UserPatch {
                first_name: b.first_name,
                last_name: b.last_name,
                metadata: views::metadata(b.metadata)?,
                ..Default::default()
            };
            update(ctx, req, id, patch, false).await
        }
        ["users", id] if m == Method::DELETE => delete(ctx, req, id).await,
        ["users", id, "tags"] if m == Method::PATCH => {
            let patch = UserPatch {
                tags: Some(params::Tags::read(req)?),
                ..Default::default()
            };
            update(ctx, req, id, patch, false).await
        }
        ["users", id, "picture"] if m == Method::PATCH => {
            let b: Picture = req.json()?;
            if b.profile_picture.len() > 2048 {
                return Err(ApiError::bad("profile_picture exceeds 2048 bytes"));
            }
            let patch = UserPatch {
                profile_picture: Some(b.profile_picture),
                ..Default::default()
            };
            update(ctx, req, id, patch, false).await
        }
        ["users", id, "email"] if m == Method::PATCH => {
            let b: Email = req.json()?;
            if !valid_email(&b.email) {
                return Err(ApiError::bad("invalid e-mail address"));
            }
            let patch = UserPatch {
                email: Some(b.email),
                ..Default::default()
            };
            update(ctx, req, id, patch, false).await
        }
        ["users", id, "username"] if m == Method::PATCH => {
            let b: Username = req.json()?;
            if !valid_username(&b.username) {
                return Err(ApiError::bad("invalid username"));
            }
            let patch = UserPatch {
                username: Some(b.username),
                ..Default::default()
            };
            update(ctx, req, id, patch, false).await
        }
        ["users", id, "role"] if m == Method::PATCH => {
            let b: RoleBody = req.json()?;
            let role = Role::parse(&b.role).ok_or_else(|| ApiError::bad("role must be \"admin\" or \"user\""))?;
            let patch = UserPatch {
                role: Some(role),
                ..Default::default()
            };
            update(ctx, req, id, patch, true).await
        }
        ["users", id, "enable"] if m == Method::POST => set_status(ctx, req, id, Status::Enabled).await,
        ["users", id, "disable"] if m == Method::POST => set_status(ctx, req, id, Status::Disabled).await,
        ["users", ..] => Err(ApiError::NotFound("no such users route".into())),
        _ => Err(ApiError::NotFound("no such route".into())),
    }
}

pub async fn password_route(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    match (segs.as_slice(), &req.method) {
        (["password", "reset-request"], &Method::POST) => reset_request(ctx, req).await,
        (["password", "reset"], &Method::PUT) => reset(ctx, req).await,
        _ => Err(ApiError::NotFound("no such password route".into())),
    }
}

async fn create(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    // Registration is open unless configured otherwise; a super-admin may always create users.
    let admin = match req.bearer() {
        Some(_) => Some(auth::caller(ctx, req).await?),
        None => None,
    };
    let is_admin = admin.as_ref().is_some_and(Caller::is_super_admin);
    if !ctx.cfg.self_registration && !is_admin {
        return Err(match admin {
            None => ApiError::unauthorized(),
            Some(_) => ApiError::forbidden(),
        });
    }
    let b: CreateUser = req.json()?;
    let creds = b
        .credentials
        .ok_or_else(|| ApiError::bad("credentials.username and credentials.secret are required"))?;
    let username = creds.username.unwrap_or_default();
    let secret = creds.secret.unwrap_or_default();
    let email = b.email.unwrap_or_default();
    if !valid_username(&username) {
        return Err(ApiError::bad(
            "invalid username: a letter or digit, then letters, digits, '_' or '-', at most 32",
        ));
    }
    if !valid_email(&email) {
        return Err(ApiError::bad("invalid e-mail address"));
    }
    check_password(&secret)?;
    views::name(&b.first_name)?;
    views::name(&b.last_name)?;
    let status = match b.status.as_deref() {
        None | Some("") | Some("enabled") => Status::Enabled,
        Some("disabled") => Status::Disabled,
        Some(_) => return Err(ApiError::bad("status must be \"enabled\" or \"disabled\"")),
    };
    let role = match b.role.as_deref() {
        None | Some("") | Some("user") => Role::User,
        Some("admin") if is_admin => Role::Admin,
        Some("admin") => return Err(ApiError::forbidden()),
        Some(_) => return Err(ApiError::bad("role must be \"admin\" or \"user\"")),
    };
    if b.profile_picture.len() > 2048 {
        return Err(ApiError::bad("profile_picture exceeds 2048 bytes"));
    }
    let tags = views::tags(b.tags)?.unwrap_or_else(storage::JsonText::empty_array);
    let metadata = views::metadata(b.metadata)?.unwrap_or_else(storage::JsonText::empty_object);
    let hash = ctx.blocking(move |c| c.passwords.hash(&secret)).await?;
    let new = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        first_name: b.first_name,
        last_name: b.last_name,
        email,
        username,
        secret: hash,
        tags,
        metadata,
        profile_picture: b.profile_picture,
        role,
        status,
    };
    let u = ctx.db(move |s| s.create_user(new)).await?;
    tracing::info!(user = %u.id, "user created");
    Ok(Reply::created(&views::user(&u))?.with_header("location", format!("/users/{}", u.id)))
}

async fn issue_token(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let b: IssueToken = req.json()?;
    let identity = b.identity.or(b.username).unwrap_or_default();
    let secret = b.secret.or(b.password).unwrap_or_default();
    if identity.is_empty() || secret.is_empty() {
        return Err(ApiError::bad("identity and secret are required"));
    }
    let addr = req.remote.map(|a| a.ip());
    let too_many = |wait: std::time::Duration| ApiError::TooManyRequests(wait.as_secs_f64().ceil() as u64);
    // `probation`: the address is braked, this identity is not: only a wrong password waits.
    let probation = ctx
        .guard
        .check(&identity, addr, std::time::Instant::now())
        .map_err(too_many)?;
    let id2 = identity.clone();
    let user = ctx.db(move |s| s.user_by_identity(&id2)).await?;
    let phc = user.as_ref().map(|u| u.secret.clone());
    let ok = ctx
        .blocking(move |c| Ok(c.passwords.verify(&secret, phc.as_deref())))
        .await?;
    let user = match (ok, user) {
        (true, Some(u)) => {
            ctx.guard.success(&identity);
            u
        }
        _ => {
            ctx.guard.failure(&identity, addr, std::time::Instant::now());
            tracing::info!(remote = ?addr, "failed login");
            if let Some(wait) = probation {
                return Err(too_many(wait));
            }
            return Err(ApiError::Unauthorized("invalid identity or secret".into()));
        }
    };
    if user.status != Status::Enabled {
        return Err(ApiError::Unauthorized("user is disabled".into()));
    }
    token_pair(ctx, &user, &uuid::Uuid::new_v4().simple().to_string())
}

/// An access and a refresh token of `family`.
fn token_pair(ctx: &Ctx, user: &storage::User, family: &str) -> Result<Reply, ApiError> {
    Reply::json(
        StatusCode::CREATED,
        &json!({
            "access_token": ctx.tokens.issue(user, TokenKind::Access, family)?,
            "refresh_token": ctx.tokens.issue(user, TokenKind::Refresh, family)?,
            "access_type": "Bearer",
        }),
    )
}

async fn refresh(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let token = req.bearer().ok_or_else(ApiError::unauthorized)?;
    let claims = ctx.tokens.verify(token, TokenKind::Refresh)?;
    // Tokens from before families existed start one.
    let family = match claims.fam.as_str() {
        "" => uuid::Uuid::new_v4().simple().to_string(),
        f => f.to_string(),
    };
    let user = auth::user_for_token(ctx, claims).await?;
    token_pair(ctx, &user, &family)
}

/// `POST /users/tokens/revoke`: logout. The caller's token family (the access token presented
/// and every refresh token issued with it or from it) stops working at once.
async fn revoke(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let c = auth::caller(ctx, req).await?;
    if c.family.is_empty() {
        return Err(ApiError::bad(
            "this token has no family to revoke; it expires on its own",
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Every token of the family expires by then: refresh tokens are the longest-lived.
    let until = now + ctx.tokens.refresh_ttl.max(ctx.tokens.access_ttl) as i64;
    let (user, family) = (c.id().to_string(), c.family.clone());
    ctx.db(move |s| s.revoke_token_family(&user, &family, until, now))
        .await?;
    tracing::info!(user = %c.id(), "logged out: token family revoked");
    Reply::empty(StatusCode::NO_CONTENT)
}

/// May `caller` act on user `id`? Themselves or the super-admin.
fn self_or_admin(c: &Caller, id: &str) -> Result<(), ApiError> {
    if c.id() == id || c.is_super_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

async fn get(ctx: &Arc<Ctx>, req: &Req, id: &str) -> Result<Reply, ApiError> {
    let c = auth::caller(ctx, req).await?;
    self_or_admin(&c, id)?;
    let id = id.to_string();
    let u = ctx.db(move |s| s.user(&id)).await?;
    Reply::ok(&views::user(&u))
}

async fn list(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let c = auth::caller(ctx, req).await?;
    if !c.is_super_admin() {
        return Err(ApiError::forbidden());
    }
    let q = UserQuery {
        page: params::page(req)?,
        filter: params::entity_filter(req)?,
        first_name: q_text(req, "first_name"),
        last_name: q_text(req, "last_name"),
        email: q_text(req, "email"),
        username: q_text(req, "username"),
        identity: q_text(req, "identity"),
        role: None,
        partial: false,
    };
    let p = ctx.db(move |s| s.list_users(&q)).await?;
    Reply::ok(&views::page(&p, "users", views::user))
}

/// Shortest search term: a shorter one would enumerate users.
const MIN_SEARCH_CHARS: usize = 3;

/// `GET /users/search`: finds users to invite. Ordinary users match on username and names only
/// and see id, username and names; only a super-admin may match on and see e-mail addresses.
async fn search(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let c = auth::caller(ctx, req).await?;
    let admin = c.is_super_admin();
    let email = q_text(req, "email");
    if email.is_some() && !admin {
        return Err(ApiError::forbidden());
    }
    let q = UserQuery {
        page: params::page(req)?,
        first_name: q_text(req, "first_name"),
        last_name: q_text(req, "last_name"),
        email,
        username: q_text(req, "username").or_else(|| q_text(req, "name")),
        partial: true,
        ..Default::default()
    };
    let terms = [&q.first_name, &q.last_name, &q.email, &q.username];
    if terms.iter().all(|t| t.is_none()) {
        return Err(ApiError::bad(
            "give at least one of username, first_name, last_name (email: super-admins only)",
        ));
    }
    if terms
        .iter()
        .flat_map(|t| t.iter())
        .any(|t| t.chars().count() < MIN_SEARCH_CHARS)
    {
        return Err(ApiError::bad(format!(
            "search terms need at least {MIN_SEARCH_CHARS} characters"
        )));
    }
    let p = ctx.db(move |s| s.list_users(&q)).await?;
    Reply::ok(&views::page(&p, "users", |u| {
        let mut v = json!({"id": u.id, "username": u.username, "first_name": u.first_name, "last_name": u.last_name});
        if admin {
            v["email"] = json!(u.email);
        }
        v
    }))
}

async fn update(ctx: &Arc<Ctx>, req: &Req, id: &str, patch: UserPatch, admin_only: bool) -> Result<Reply, ApiError> {
    let c = auth::caller(ctx, req).await?;
    if admin_only && !c.is_super_admin() {
        return Err(ApiError::forbidden());
    }
    self_or_admin(&c, id)?;
    let (id, by) = (id.to_string(), c.user.id.clone());
    let u = ctx.db(move |s| s.update_user(&id, patch, &by)).await?;
    Reply::ok(&views::user(&u))
}

async fn set_status(ctx: &Arc<Ctx>, req: &Req, id: &str, status: Status) -> Result<Reply, ApiError> {
    let c = auth::caller(ctx, req).await?;
    if !c.is_super_admin() {
        return Err(ApiError::forbidden());
    }
    if c.id() == id && status == Status::Disabled {
        return Err(ApiError::Conflict("the super-admin cannot disable themselves".into()));
    }
    let patch = UserPatch {
        status: Some(status),
        ..Default::default()
    };
    let (id, by) = (id.to_string(), c.user.id.clone());
    let u = ctx.db(move |s| s.update_user(&id, patch, &by)).await?;
    tracing::info!(user = %u.id, status = u.status.as_str(), "user status changed");
    Reply::ok(&views::user(&u))
}

async fn delete(ctx: &Arc<Ctx>, req: &Req, id: &str) -> Result<Reply, ApiError> {
    let c = auth::caller(ctx, req).await?;
    self_or_admin(&c, id)?;
    if c.is_super_admin() && c.id() == id {
        return Err(ApiError::Conflict("the super-admin cannot delete themselves".into()));
    }
    let id = id.to_string();
    ctx.db(move |s| s.delete_user(&id)).await?;
    Reply::empty(StatusCode::NO_CONTENT)
}

async fn change_secret(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let c = auth::caller(ctx, req).await?;
    let b: Secret = req.json()?;
    check_password(&b.new_secret)?;
    let phc = c.user.secret.clone();
    let old = b.old_secret;
    let new = b.new_secret;
    let hash = ctx
        .blocking(move |x| {
            if !x.passwords.verify(&old, Some(&phc)) {
                return Err(ApiError::Unauthorized("old secret is wrong".into()));
            }
            x.passwords.hash(&new)
        })
        .await?;
    let id = c.user.id.clone();
    let u = ctx.db(move |s| s.set_user_secret(&id, &hash, None)).await?;
    tracing::info!(user = %u.id, "password changed; earlier tokens revoked");
    Reply::ok(&views::user(&u))
}

async fn reset_request(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let b: ResetRequest = req.json()?;
    let email = b.email.clone();
    // The answer is the same whether or not the address is known, so it cannot be used to
    // find out who has an account.
    if let Some(u) = ctx.db(move |s| s.user_by_identity(&email)).await? {
        if u.status == Status::Enabled && u.email.eq_ignore_ascii_case(&b.email) {
            let token = ctx.tokens.issue(&u, TokenKind::Reset, "")?;
            let base = &ctx.cfg.public_url;
            let body = format!(
                "A password reset was requested for your account. Use this token within 15 minutes: {token}\n{base}/password/reset?token={token}"
            );
            ctx.outbox.send(&u.email, "Fluxgate password reset", &body);
        }
    }
    Reply::json(
        StatusCode::CREATED,
        &json!({"msg": "if the address is registered, a reset token has been sent"}),
    )
}

async fn reset(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let b: Reset = req.json()?;
    if b.password != b.confirm_password {
        return Err(ApiError::bad("password and confirm_password differ"));
    }
    check_password(&b.password)?;
    let claims = ctx.tokens.verify(&b.token, TokenKind::Reset)?;
    let epoch = claims.ep;
    let user = auth::user_for_token(ctx, claims).await?;
    let pw = b.password;
    let hash = ctx.blocking(move |c| c.passwords.hash(&pw)).await?;
    let id = user.id.clone();
    ctx.db(move |s| s.set_user_secret(&id, &hash, Some(epoch)))
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::Unauthorized("reset token already used".into()),
            e => e,
        })?;
    tracing::info!(user = %user.id, "password reset");
    Reply::empty(StatusCode::CREATED)
}

/// The request bodies of this module's routes, for the OpenAPI document.
pub(crate) fn request_schemas(out: &mut crate::openapi::Schemas) {
    crate::openapi::add::<CreateUser>(out);
    crate::openapi::add::<IssueToken>(out);
    crate::openapi::add::<UpdateUser>(out);
    crate::openapi::add::<params::Tags>(out);
    crate::openapi::add::<Picture>(out);
    crate::openapi::add::<Email>(out);
    crate::openapi::add::<Username>(out);
    crate::openapi::add::<RoleBody>(out);
    crate::openapi::add::<Secret>(out);
    crate::openapi::add::<ResetRequest>(out);
    crate::openapi::add::<Reset>(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_and_email_rules() {
        assert!(valid_username("jane_doe-2"));
        assert!(valid_username("9lives"));
        assert!(!valid_username("_jane"));
        assert!(!valid_username("jane@x.io"));
        assert!(!valid_username(&"a".repeat(33)));
        assert!(valid_email("a@b.io"));
        assert!(!valid_email("a@b"));
        assert!(!valid_email("@b.io"));
        assert!(!valid_email("a b@c.io"));
    }
}
