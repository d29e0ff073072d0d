//! `/domains…`: tenants, their status and their members.

use crate::auth::{self, Caller};
use crate::authz::{authorize, Action};
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::params;
use crate::{views, Ctx};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use storage::{DomainPatch, DomainQuery, NewDomain, Relation, Status};
use warp::http::{Method, StatusCode};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDomain {
    name: String,
    route: Option<String>,
    alias: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateDomain {
    name: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Assign {
    user_ids: Vec<String>,
    relation: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Unassign {
    user_id: String,
}

/// Route rule: a letter, then letters, digits, `_` or `-`; at most 36.
pub fn valid_route(r: &str) -> bool {
    let mut c = r.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic())
        && r.len() <= 36
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == '-')
}

pub async fn route(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let segs: Vec<&str> = req.segs.iter().map(String::as_str).collect();
    let m = &req.method;
    let caller = auth::caller(ctx, req).await?;
    match segs.as_slice() {
        ["domains"] if m == Method::POST => create(ctx, req, &caller).await,
        ["domains"] if m == Method::GET => list(ctx, req, &caller).await,
        ["domains", id] if m == Method::GET => {
            let a = authorize(ctx, &caller, id, Action::Read).await?;
            Reply::ok(&views::domain(a.domain()))
        }
        ["domains", id] if m == Method::PATCH || m == Method::PUT => {
            let a = authorize(ctx, &caller, id, Action::Manage).await?;
            let b: UpdateDomain = req.json()?;
            if let Some(n) = &b.name {
                if n.trim().is_empty() {
                    return Err(ApiError::bad("name must not be empty"));
                }
                views::name(n)?;
            }
            let patch = DomainPatch {
                name: b.name,
                tags: views::tags(b.tags)?,
                metadata: views::metadata(b.metadata)?,
                status: None,
            };
            update(ctx, a.domain_id(), patch, caller.id()).await
        }
        ["domains", id, "enable"] if m == Method::POST => set_status(ctx, &caller, id, Status::Enabled).await,
        ["domains", id, "disable"] if m == Method::POST => set_status(ctx, &caller, id, Status::Disabled).await,
        ["domains", id, "freeze"] if m == Method::POST => set_status(ctx, &caller, id, Status::Frozen).await,
        ["domains", id, "users", "assign"] if m == Method::POST => {
            let a = authorize(ctx, &caller, id, Action::Manage).await?;
            let b: Assign = req.json()?;
            let rel = Relation::parse(&b.relation)
                .ok_or_else(|| ApiError::bad("relation must be \"admin\", \"editor\" or \"viewer\""))?;
            if b.user_ids.is_empty() || b.user_ids.len() > 1000 {
                return Err(ApiError::bad("user_ids must hold 1 to 1000 ids"));
            }
            let d = a.domain_id().to_string();
            ctx.db(move |s| s.assign_members(&d, &b.user_ids, rel))
                .await
                .map_err(|e| match e {
                    ApiError::NotFound(_) => ApiError::not_found("user"),
                    e => e,
                })?;
            Reply::empty(StatusCode::CREATED)
        }
        ["domains", id, "users", "unassign"] if m == Method::POST => {
            let a = authorize(ctx, &caller, id, Action::Manage).await?;
            let b: Unassign = req.json()?;
            let d = a.domain_id().to_string();
            ctx.db(move |s| s.unassign_member(&d, &b.user_id)).await?;
            Reply::empty(StatusCode::NO_CONTENT)
        }
        ["domains", id, "users" | "members"] if m == Method::GET => {
            let a = authorize(ctx, &caller, id, Action::Read).await?;
            let page = params::page(req)?;
            let d = a.domain_id().to_string();
            let p = ctx.db(move |s| s.list_members(&d, &page)).await?;
            Reply::ok(&views::page(&p, "users", |m| {
                let mut v = views::user(&m.user);
                v["relation"] = Value::from(m.relation.as_str());
                v
            }))
        }
        _ => Err(ApiError::NotFound("no such domains route".into())),
    }
}

async fn create(ctx: &Arc<Ctx>, req: &Req, caller: &Caller) -> Result<Reply, ApiError> {
    let b: CreateDomain = req.json()?;
    if b.name.trim().is_empty() {
        return Err(ApiError::bad("name is required"));
    }
    views::name(&b.name)?;
    let route = b.route.or(b.alias).unwrap_or_default();
    if !valid_route(&route) {
        return Err(ApiError::bad(
            "route is required: a letter, then letters, digits, '_' or '-', at most 36",
        ));
    }
    let new = NewDomain {
        id: uuid::Uuid::new_v4().to_string(),
        name: b.name,
        route,
        tags: views::tags(b.tags)?.unwrap_or_else(storage::JsonText::empty_array),
        metadata: views::metadata(b.metadata)?.unwrap_or_else(storage::JsonText::empty_object),
    };
    let creator = caller.id().to_string();
    let d = ctx.db(move |s| s.create_domain(new, &creator)).await?;
    tracing::info!(domain = %d.id, "domain created");
    Ok(Reply::created(&views::domain(&d))?.with_header("location", format!("/domains/{}", d.id)))
}

async fn list(ctx: &Arc<Ctx>, req: &Req, caller: &Caller) -> Result<Reply, ApiError> {
    let q = DomainQuery {
        page: params::page(req)?,
        filter: params::entity_filter(req)?,
        member: (!caller.is_super_admin()).then(|| caller.id().to_string()),
    };
    let p = ctx.db(move |s| s.list_domains(&q)).await?;
    Reply::ok(&views::page(&p, "domains", views::domain))
}

async fn update(ctx: &Arc<Ctx>, id: &str, patch: DomainPatch, by: &str) -> Result<Reply, ApiError> {
    let (id, by) = (id.to_string(), by.to_string());
    let d = ctx.db(move |s| s.update_domain(&id, patch, &by)).await?;
    Reply::ok(&views::domain(&d))
}

async fn set_status(ctx: &Arc<Ctx>, caller: &Caller, id: &str, status: Status) -> Result<Reply, ApiError> {
    // Freezing (and lifting a freeze) is the platform operator's call, not the tenant's.
    let a = authorize(ctx, caller, id, Action::Manage).await?;
    if (status == Status::Frozen || a.domain().status == Status::Frozen) && !caller.is_super_admin() {
        return Err(ApiError::forbidden());
    }
    let patch = DomainPatch {
        status: Some(status),
        ..Default::default()
    };
    tracing::info!(domain = %id, status = status.as_str(), "domain status changed");
    update(ctx, a.domain_id(), patch, caller.id()).await
}

/// The request bodies of this module's routes, for the OpenAPI document.
pub(crate) fn request_schemas(out: &mut crate::openapi::Schemas) {
    crate::openapi::add::<CreateDomain>(out);
    crate::openapi::add::<UpdateDomain>(out);
    crate::openapi::add::<Assign>(out);
    crate::openapi::add::<Unassign>(out);
}
