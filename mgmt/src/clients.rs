//! `/{domainID}/clients…`: devices of a domain.

use crate::authz::DomainAccess;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::params::{self, q_text};
use crate::{views, Ctx};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use storage::{ClientPatch, ClientQuery, ListQuery, NewClient, Scope};
use warp::http::{Method, StatusCode};

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ClientCredentials)]
struct Credentials {
    identity: Option<String>,
    secret: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClient {
    /// Shown in the spec's examples; the domain comes from the path, so it is ignored.
    #[serde(default, rename = "domain_id")]
    #[schema(value_type = Option<String>)]
    _domain_id: Option<serde::de::IgnoredAny>,
    id: Option<String>,
    name: Option<String>,
    tags: Option<Vec<String>>,
    credentials: Option<Credentials>,
    metadata: Option<Value>,
    status: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateClient {
    name: Option<String>,
    metadata: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Secret {
    secret: String,
}

/// A client id: 1–64 characters from letters, digits and `_ - . :` (it is also the MQTT
/// username, so no `/`, `+`, `#` or spaces).
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn valid_secret(s: &str) -> Result<(), ApiError> {
    if s.len() < 8 || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(ApiError::bad("client secret must be 8 to 256 printable characters"));
    }
    Ok(())
}

/// A random 128-bit secret, hex-encoded.
pub fn random_secret() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn new_client(b: CreateClient) -> Result<NewClient, ApiError> {
    let id = match b.id.filter(|s| !s.is_empty()) {
        Some(id) if valid_client_id(&id) => id,
        Some(_) => {
            return Err(ApiError::bad(
                "client id must be 1-64 characters of letters, digits, '_', '-', '.', ':'",
            ))
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    let creds = b.credentials.unwrap_or_default();
    let secret = match creds.secret.filter(|s| !s.is_empty()) {
        Some(s) => {
            valid_secret(&s)?;
            s
        }
        None => random_secret(),
    };
    let name = b.name.unwrap_or_default();
    views::name(&name)?;
    let identity = creds.identity.unwrap_or_default();
    views::name(&identity)?;
    Ok(NewClient {
        id,
        name,
        identity,
        secret,
        tags: views::tags(b.tags)?.unwrap_or_else(storage::JsonText::empty_array),
        metadata: views::metadata(b.metadata)?.unwrap_or_else(storage::JsonText::empty_object),
        status: params::body_status(b.status.as_deref())?,
    })
}

/// The list filters of `GET …/clients`.
fn client_query(req: &Req) -> Result<ClientQuery, ApiError> {
    let ListQuery { page, filter } = params::list_query(req)?;
    Ok(ClientQuery {
        page,
        filter,
        channel: q_text(req, "channel"),
        connected: req.q_bool("connected")?,
    })
}

/// `GET /clients`: the caller's clients across the enabled domains they are a member of, with
/// the same filters and page as `GET /{domainID}/clients`; secrets are not shown.
pub async fn list_all(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let me = crate::auth::caller(ctx, req).await?.id().to_string();
    list(ctx, req, Scope::MemberOf(me), false).await
}

/// A page of the clients in `scope`, secrets shown when `show`.
async fn list(ctx: &Ctx, req: &Req, scope: Scope, show: bool) -> Result<Reply, ApiError> {
    let q = client_query(req)?;
    let p = ctx.db(move |s| s.list_clients(scope, &q)).await?;
    Reply::ok(&views::page(&p, "clients", |c| views::client(c, show)))
}

pub async fn route(ctx: &Arc<Ctx>, req: &Req, a: &DomainAccess, segs: &[&str]) -> Result<Reply, ApiError> {
    let m = &req.method;
    let show = a.sees_secrets();
    match segs {
        [] if m == Method::POST => {
            let new = new_client(req.json()?)?;
            let d = a.domain_id().to_string();
            let mut made = ctx.db(move |s| s.create_clients(&d, &[new])).await?;
            let c = made
                .pop()
                .ok_or_else(|| ApiError::Internal("no client returned".into()))?;
            tracing::info!(domain = %c.domain_id, client = %c.id, "client created");
            Ok(Reply::created(&views::client(&c, show))?
                .with_header("location", format!("/{}/clients/{}", c.domain_id, c.id)))
        }
        ["bulk"] if m == Method::POST => {
            let new = params::bulk(req, "client", new_client)?;
            let d = a.domain_id().to_string();
            let made = ctx.db(move |s| s.create_clients(&d, &new)).await?;
            Reply::ok(
                &json!({"total": made.len(), "clients": made.iter().map(|c| views::client(c, show)).collect::<Vec<_>>()}),
            )
        }
        [] if m == Method::GET => list(ctx, req, a.domain_id().into(), show).await,
        [id] if m == Method::GET => {
            let (d, id) = (a.domain_id().to_string(), id.to_string());
            let c = ctx.db(move |s| s.client(&d, &id)).await?;
            Reply::ok(&views::client(&c, show))
        }
        [id] if m == Method::PATCH || m == Method::PUT => {
            let b: UpdateClient = req.json()?;
            if let Some(n) = &b.name {
                views::name(n)?;
            }
            let patch = ClientPatch {
                name: b.name,
                metadata: views::metadata(b.metadata)?,
                ..Default::default()
            };
            update(ctx, a, id, patch).await
        }
        [id, "tags"] if m == Method::PATCH => update(ctx, a, id, params::tags_patch::<ClientPatch>(req)?).await,
        [id, "secret"] if m == Method::PATCH => {
            let b: Secret = req.json()?;
            valid_secret(&b.secret)?;
            let patch = ClientPatch {
                secret: Some(b.secret),
                ..Default::default()
            };
            update(ctx, a, id, patch).await
        }
        [id, op @ ("enable" | "disable")] if m == Method::POST => {
            update(ctx, a, id, params::status_patch::<ClientPatch>(op)).await
        }
        [id] if m == Method::DELETE => {
            let (d, cid) = (a.domain_id().to_string(), id.to_string());
            ctx.db(move |s| s.delete_client(&d, &cid)).await?;
            tracing::info!(domain = %a.domain_id(), client = %id, "client deleted");
            Reply::empty(StatusCode::NO_CONTENT)
        }
        [id, "channels"] if m == Method::GET => {
            let ListQuery { page, filter } = params::status_page(req)?;
            let q = storage::ChannelQuery {
                page,
                filter,
                client: Some(id.to_string()),
            };
            let d = a.domain_id().to_string();
            let p = ctx.db(move |s| s.list_channels(&d, &q)).await?;
            Reply::ok(&views::page(&p, "channels", views::channel))
        }
        _ => Err(ApiError::NotFound("no such clients route".into())),
    }
}

async fn update(ctx: &Ctx, a: &DomainAccess, id: &str, patch: ClientPatch) -> Result<Reply, ApiError> {
    let (d, id, by) = (a.domain_id().to_string(), id.to_string(), a.user_id().to_string());
    let c = ctx.db(move |s| s.update_client(&d, &id, patch, &by)).await?;
    Reply::ok(&views::client(&c, a.sees_secrets()))
}

/// The request bodies of this module's routes, for the OpenAPI document.
pub(crate) fn request_schemas(out: &mut crate::openapi::Schemas) {
    crate::openapi::add::<CreateClient>(out);
    crate::openapi::add::<UpdateClient>(out);
    crate::openapi::add::<Secret>(out);
}
