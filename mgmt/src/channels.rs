//! `/{domainID}/channels…`: channels of a domain and connections of clients to them.

use crate::authz::DomainAccess;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::params::{self, check_ids, q_text};
use crate::{views, Ctx};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use storage::{ChannelPatch, ChannelQuery, ConnType, ListQuery, NewChannel, Scope};
use warp::http::{Method, StatusCode};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// Shown in the spec's examples; the domain comes from the path, so it is ignored.
    #[serde(default, rename = "domain_id")]
    #[schema(value_type = Option<String>)]
    _domain_id: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "domainid")]
    #[schema(value_type = Option<String>)]
    _domainid: Option<serde::de::IgnoredAny>,
    id: Option<String>,
    name: Option<String>,
    description: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<Value>,
    status: Option<String>,
    parent_group_id: Option<String>,
    parent_id: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateChannel {
    name: Option<String>,
    description: Option<String>,
    metadata: Option<Value>,
}

/// `{channel_ids, client_ids, types}`; the documents' older `{subjects, objects}` spelling
/// (clients, channels) is accepted too.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Connect {
    channel_ids: Option<Vec<String>>,
    client_ids: Option<Vec<String>>,
    subjects: Option<Vec<String>>,
    objects: Option<Vec<String>>,
    types: Option<Vec<String>>,
}

fn new_channel(b: CreateChannel) -> Result<NewChannel, ApiError> {
    let id = match b.id.filter(|s| !s.is_empty()) {
        Some(id) => uuid::Uuid::parse_str(&id)
            .map_err(|_| ApiError::bad(storage::INVALID_CHANNEL_ID))?
            .hyphenated()
            .to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let name = b.name.unwrap_or_default();
    views::name(&name)?;
    let description = b.description.unwrap_or_default();
    views::description(&description)?;
    Ok(NewChannel {
        id,
        name,
        description,
        parent_group_id: b.parent_group_id.or(b.parent_id).filter(|s| !s.is_empty()),
        tags: views::tags(b.tags)?.unwrap_or_else(storage::JsonText::empty_array),
        metadata: views::metadata(b.metadata)?.unwrap_or_else(storage::JsonText::empty_object),
        status: params::body_status(b.status.as_deref())?,
    })
}

fn parse_types(t: Option<Vec<String>>) -> Result<Vec<ConnType>, ApiError> {
    match t {
        None => Ok(ConnType::BOTH.to_vec()),
        Some(v) if v.is_empty() => Ok(ConnType::BOTH.to_vec()),
        Some(v) => {
            let mut out = v
                .iter()
                .map(|s| {
                    ConnType::parse(s).ok_or_else(|| {
                        ApiError::bad(format!("unknown connection type `{s}`: use publish or subscribe"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.sort();
            out.dedup();
            Ok(out)
        }
    }
}

/// The list filters of `GET …/channels`.
fn channel_query(req: &Req) -> Result<ChannelQuery, ApiError> {
    let ListQuery { page, filter } = params::list_query(req)?;
    Ok(ChannelQuery {
        page,
        filter,
        client: q_text(req, "client"),
    })
}

/// `GET /channels`: the caller's channels across the enabled domains they are a member of,
/// with the same filters and page as `GET /{domainID}/channels`.
pub async fn list_all(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let me = crate::auth::caller(ctx, req).await?.id().to_string();
    list(ctx, req, Scope::MemberOf(me)).await
}

/// A page of the channels in `scope`.
async fn list(ctx: &Ctx, req: &Req, scope: Scope) -> Result<Reply, ApiError> {
    let q = channel_query(req)?;
    let p = ctx.db(move |s| s.list_channels(scope, &q)).await?;
    Reply::ok(&views::page(&p, "channels", views::channel))
}

pub async fn route(ctx: &Arc<Ctx>, req: &Req, a: &DomainAccess, segs: &[&str]) -> Result<Reply, ApiError> {
    let m = &req.method;
    match segs {
        [] if m == Method::POST => {
            let new = new_channel(req.json()?)?;
            let d = a.domain_id().to_string();
            let mut made = ctx.db(move |s| s.create_channels(&d, &[new])).await?;
            let h = made
                .pop()
                .ok_or_else(|| ApiError::Internal("no channel returned".into()))?;
            tracing::info!(domain = %h.domain_id, channel = %h.id, "channel created");
            Ok(Reply::created(&views::channel(&h))?
                .with_header("location", format!("/{}/channels/{}", h.domain_id, h.id)))
        }
        ["bulk"] if m == Method::POST => {
            let new = params::bulk(req, "channel", new_channel)?;
            let d = a.domain_id().to_string();
            let made = ctx.db(move |s| s.create_channels(&d, &new)).await?;
            Reply::ok(&json!({"total": made.len(), "channels": made.iter().map(views::channel).collect::<Vec<_>>()}))
        }
        [op @ ("connect" | "disconnect")] if m == Method::POST => connections(ctx, a, req, None, op).await,
        [id, op @ ("connect" | "disconnect")] if m == Method::POST => connections(ctx, a, req, Some(id), op).await,
        [] if m == Method::GET => list(ctx, req, a.domain_id().into()).await,
        [id, "messages", "chart.svg"] if m == Method::GET => {
            let (d, hid) = (a.domain_id().to_string(), id.to_string());
            ctx.db(move |s| s.channel(&d, &hid)).await?;
            crate::chart::chart(ctx, req, id).await
        }
        [id, "messages", "live"] if m == Method::GET => {
            let (d, hid) = (a.domain_id().to_string(), id.to_string());
            ctx.db(move |s| s.channel(&d, &hid)).await?;
            let rx = ctx.live.watch(a.domain_id(), a.user_id(), id)?;
            Ok(Reply::stream(crate::live::response(rx, ctx.cfg.senml)))
        }
        [id] if m == Method::GET => {
            let (d, id) = (a.domain_id().to_string(), id.to_string());
            let h = ctx.db(move |s| s.channel(&d, &id)).await?;
            Reply::ok(&views::channel(&h))
        }
        [id] if m == Method::PATCH || m == Method::PUT => {
            let b: UpdateChannel = req.json()?;
            if let Some(n) = &b.name {
                views::name(n)?;
            }
            if let Some(d) = &b.description {
                views::description(d)?;
            }
            let patch = ChannelPatch {
                name: b.name,
                description: b.description,
                metadata: views::metadata(b.metadata)?,
                ..Default::default()
            };
            update(ctx, a, id, patch).await
        }
        [id, "tags"] if m == Method::PATCH => update(ctx, a, id, params::tags_patch::<ChannelPatch>(req)?).await,
        [id, op @ ("enable" | "disable")] if m == Method::POST => {
            update(ctx, a, id, params::status_patch::<ChannelPatch>(op)).await
        }
        [id] if m == Method::DELETE => {
            let (d, hid) = (a.domain_id().to_string(), id.to_string());
            ctx.db(move |s| s.delete_channel(&d, &hid)).await?;
            tracing::info!(domain = %a.domain_id(), channel = %id, "channel deleted");
            Reply::empty(StatusCode::NO_CONTENT)
        }
        [id, "clients"] if m == Method::GET => {
            let ListQuery { page, filter } = params::status_page(req)?;
            let q = storage::ClientQuery {
                page,
                filter,
                channel: Some(id.to_string()),
                connected: None,
            };
            let d = a.domain_id().to_string();
            let p = ctx.db(move |s| s.list_clients(&d, &q)).await?;
            let show = a.sees_secrets();
            Reply::ok(&views::page(&p, "clients", |c| views::client(c, show)))
        }
        _ => Err(ApiError::NotFound("no such channels route".into())),
    }
}

async fn update(ctx: &Ctx, a: &DomainAccess, id: &str, patch: ChannelPatch) -> Result<Reply, ApiError> {
    let (d, id, by) = (a.domain_id().to_string(), id.to_string(), a.user_id().to_string());
    let h = ctx.db(move |s| s.update_channel(&d, &id, patch, &by)).await?;
    Reply::ok(&views::channel(&h))
}

/// `POST …/connect` or `…/disconnect` (of `channel` when the path names one): every client to
/// every channel with each type; 201 or 204 (the store announces each connection that changed).
async fn connections(
    ctx: &Ctx,
    a: &DomainAccess,
    req: &Req,
    channel: Option<&str>,
    op: &str,
) -> Result<Reply, ApiError> {
    let b: Connect = req.json()?;
    let clients = b.client_ids.or(b.subjects).unwrap_or_default();
    let channels = match channel {
        Some(id) => vec![id.to_string()],
        None => b.channel_ids.or(b.objects).unwrap_or_default(),
    };
    let types = parse_types(b.types)?;
    check_ids(&clients, "client_ids")?;
    check_ids(&channels, "channel_ids")?;
    if clients.len() * channels.len() > 100_000 {
        return Err(ApiError::bad("at most 100000 client-channel pairs per request"));
    }
    let d = a.domain_id().to_string();
    let remove = op == "disconnect";
    ctx.db(move |s| {
        if remove {
            s.disconnect(&d, &clients, &channels, &types)
        } else {
            s.connect(&d, &clients, &channels, &types)
        }
    })
    .await?;
    Reply::empty(if remove {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// The request bodies of this module's routes, for the OpenAPI document.
pub(crate) fn request_schemas(out: &mut crate::openapi::Schemas) {
    crate::openapi::add::<CreateChannel>(out);
    crate::openapi::add::<UpdateChannel>(out);
    crate::openapi::add::<Connect>(out);
}
