//! `/{domainID}/groups…` (the hierarchy) and group membership (`/users/policies`,
//! `/{domainID}/groups/{id}/members`, `/users/{id}/memberships`).

use crate::auth::{self, Caller};
use crate::authz::{authorize, Action, DomainAccess};
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::params::{self, page, status_filter};
use crate::{views, Ctx};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use storage::{GroupPatch, NewGroup};
use warp::http::{Method, StatusCode};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    /// Shown in the spec's examples; the domain comes from the path, so it is ignored.
    #[serde(default, rename = "domain_id")]
    #[schema(value_type = Option<String>)]
    _domain_id: Option<serde::de::IgnoredAny>,
    name: String,
    description: Option<String>,
    parent_id: Option<String>,
    tags: Option<Vec<String>>,
    metadata: Option<Value>,
    status: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateGroup {
    name: Option<String>,
    description: Option<String>,
    metadata: Option<Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Parent {
    parent_id: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Policy {
    subject: String,
    object: String,
    #[serde(default)]
    actions: Vec<String>,
}

fn levels(req: &Req) -> Result<i64, ApiError> {
    Ok(req
        .q_u64("level")?
        .map(|l| l as i64)
        .unwrap_or(storage::groups_max_depth()))
}

pub async fn route(ctx: &Arc<Ctx>, req: &Req, a: &DomainAccess, segs: &[&str]) -> Result<Reply, ApiError> {
    let m = &req.method;
    let d = a.domain_id().to_string();
    match segs {
        [] if m == Method::POST => {
            let b: CreateGroup = req.json()?;
            if b.name.trim().is_empty() {
                return Err(ApiError::bad("name is required"));
            }
            views::name(&b.name)?;
            let description = b.description.unwrap_or_default();
            views::description(&description)?;
            let new = NewGroup {
                id: uuid::Uuid::new_v4().to_string(),
                parent_id: b.parent_id.filter(|p| !p.is_empty()),
                name: b.name,
                description,
                tags: views::tags(b.tags)?.unwrap_or_else(storage::JsonText::empty_array),
                metadata: views::metadata(b.metadata)?.unwrap_or_else(storage::JsonText::empty_object),
                status: params::body_status(b.status.as_deref())?,
            };
            let g = ctx.db(move |s| s.create_group(&d, new)).await?;
            Ok(Reply::created(&views::group(&g))?.with_header("location", format!("/{}/groups/{}", g.domain_id, g.id)))
        }
        [] if m == Method::GET => {
            if req.q_bool("tree")?.unwrap_or(false) {
                let status = status_filter(req)?;
                let nodes = ctx.db(move |s| s.group_forest(&d, status)).await?;
                let page = page(req)?;
                return Reply::ok(
                    &json!({"total": nodes.len(), "offset": page.offset, "limit": page.limit, "groups": views::group_tree(&nodes)}),
                );
            }
            let q = params::list_query(req)?;
            let p = ctx.db(move |s| s.list_groups(&d, &q)).await?;
            Reply::ok(&views::page(&p, "groups", views::group))
        }
        [id] if m == Method::GET => {
            let id = id.to_string();
            let g = ctx.db(move |s| s.group(&d, &id)).await?;
            Reply::ok(&views::group(&g))
        }
        [id] if m == Method::PUT || m == Method::PATCH => {
            let b: UpdateGroup = req.json()?;
            if let Some(n) = &b.name {
                if n.trim().is_empty() {
                    return Err(ApiError::bad("name must not be empty"));
                }
                views::name(n)?;
            }
            if let Some(d) = &b.description {
                views::description(d)?;
            }
            let patch = GroupPatch {
                name: b.name,
                description: b.description,
                metadata: views::metadata(b.metadata)?,
                ..Default::default()
            };
            update(ctx, a, id, patch).await
        }
        [id, "tags"] if m == Method::PATCH => update(ctx, a, id, params::tags_patch::<GroupPatch>(req)?).await,
        [id, op @ ("enable" | "disable")] if m == Method::POST => {
            update(ctx, a, id, params::status_patch::<GroupPatch>(op)).await
        }
        [id] if m == Method::DELETE => {
            let id = id.to_string();
            ctx.db(move |s| s.delete_group(&d, &id)).await?;
            Reply::empty(StatusCode::NO_CONTENT)
        }
        [id, "parent"] if m == Method::POST || m == Method::PUT => {
            let b: Parent = req.json()?;
            set_parent(ctx, a, id, b.parent_id.filter(|p| !p.is_empty())).await
        }
        [id, "parent"] if m == Method::DELETE => set_parent(ctx, a, id, None).await,
        [id, "parents"] if m == Method::GET => {
            let (id, lv) = (id.to_string(), levels(req)?);
            let nodes = ctx.db(move |s| s.group_ancestors(&d, &id, lv)).await?;
            hierarchy(req, nodes)
        }
        [id, "children"] if m == Method::GET => {
            let (id, lv) = (id.to_string(), levels(req)?);
            let nodes = ctx.db(move |s| s.group_descendants(&d, &id, lv)).await?;
            hierarchy(req, nodes)
        }
        [id, "members"] if m == Method::GET => {
            let (id, page) = (id.to_string(), page(req)?);
            let p = ctx.db(move |s| s.list_group_members(&d, &id, &page)).await?;
            Reply::ok(&views::page(&p, "members", views::user))
        }
        _ => Err(ApiError::NotFound("no such groups route".into())),
    }
}

/// Flat: the other groups with `level` and `path`. With `tree=true`: the group and the others
/// nested through `children`.
fn hierarchy(req: &Req, nodes: Vec<storage::GroupNode>) -> Result<Reply, ApiError> {
    let page = page(req)?;
    if req.q_bool("tree")?.unwrap_or(false) {
        return Reply::ok(
            &json!({"total": nodes.len(), "offset": page.offset, "limit": page.limit, "groups": views::group_tree(&nodes)}),
        );
    }
    let others: Vec<Value> = nodes.iter().filter(|n| n.level != 0).map(views::group_node).collect();
    let total = others.len();
    let items: Vec<Value> = others
        .into_iter()
        .skip(page.offset as usize)
        .take(page.limit as usize)
        .collect();
    Reply::ok(&json!({"total": total, "offset": page.offset, "limit": page.limit, "groups": items}))
}

async fn update(ctx: &Ctx, a: &DomainAccess, id: &str, patch: GroupPatch) -> Result<Reply, ApiError> {
    let (d, id, by) = (a.domain_id().to_string(), id.to_string(), a.user_id().to_string());
    let g = ctx.db(move |s| s.update_group(&d, &id, patch, &by)).await?;
    Reply::ok(&views::group(&g))
}

async fn set_parent(ctx: &Ctx, a: &DomainAccess, id: &str, parent: Option<String>) -> Result<Reply, ApiError> {
    let (d, id, by) = (a.domain_id().to_string(), id.to_string(), a.user_id().to_string());
    let g = ctx
        .db(move |s| s.set_group_parent(&d, &id, parent.as_deref(), &by))
        .await?;
    Reply::ok(&views::group(&g))
}

/// `POST /users/policies`, `DELETE /users/policies/{subject}/{object}`,
/// `GET /users/{id}/memberships`.
pub async fn users_route(ctx: &Arc<Ctx>, req: &Req, segs: &[&str]) -> Result<Reply, ApiError> {
    let caller = auth::caller(ctx, req).await?;
    match segs {
        ["users", "policies"] if req.method == Method::POST => {
            let b: Policy = req.json()?;
            let (access, group) = group_access(ctx, &caller, &b.object).await?;
            if b.actions.len() > 32 {
                return Err(ApiError::bad("at most 32 actions"));
            }
            let actions = storage::JsonText(Value::from(b.actions).to_string());
            let d = access.domain_id().to_string();
            ctx.db(move |s| s.add_group_member(&d, &group, &b.subject, &actions))
                .await?;
            Reply::empty(StatusCode::CREATED)
        }
        ["users", "policies", subject, object] if req.method == Method::DELETE => {
            let (access, group) = group_access(ctx, &caller, object).await?;
            let (d, u) = (access.domain_id().to_string(), subject.to_string());
            ctx.db(move |s| s.remove_group_member(&d, &group, &u)).await?;
            Reply::empty(StatusCode::NO_CONTENT)
        }
        ["users", id, "memberships"] if req.method == Method::GET => {
            // Oneself and the super-admin see everything; an admin of a domain the user is a
            // member of sees the memberships in the domains they administer.
            let scope = if caller.id() == *id || caller.is_super_admin() {
                None
            } else {
                let (me, them) = (caller.id().to_string(), id.to_string());
                if !ctx.db(move |s| s.administers_member(&me, &them)).await? {
                    return Err(ApiError::forbidden());
                }
                Some(caller.id().to_string())
            };
            let (id, page) = (id.to_string(), page(req)?);
            let p = ctx
                .db(move |s| s.user_memberships(&id, scope.as_deref(), &page))
                .await?;
            Reply::ok(&views::page(&p, "memberships", views::group))
        }
        _ => Err(ApiError::NotFound("no such users route".into())),
    }
}

/// Resolves a group id to its domain and checks the caller may edit there. A group the
/// caller cannot see is a 403, exactly like one that does not exist for a non-member.
async fn group_access(ctx: &Ctx, caller: &Caller, group: &str) -> Result<(DomainAccess, String), ApiError> {
    let gid = group.to_string();
    let g = match ctx.db(move |s| s.group_any_domain(&gid)).await {
        Ok(g) => g,
        Err(ApiError::NotFound(_)) if caller.is_super_admin() => return Err(ApiError::not_found("group")),
        Err(ApiError::NotFound(_)) => return Err(ApiError::forbidden()),
        Err(e) => return Err(e),
    };
    let access = authorize(ctx, caller, &g.domain_id, Action::Edit).await?;
    Ok((access, g.id))
}

/// The request bodies of this module's routes, for the OpenAPI document.
pub(crate) fn request_schemas(out: &mut crate::openapi::Schemas) {
    crate::openapi::add::<CreateGroup>(out);
    crate::openapi::add::<UpdateGroup>(out);
    crate::openapi::add::<Parent>(out);
    crate::openapi::add::<Policy>(out);
}
