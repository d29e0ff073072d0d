//! `/{domainID}/…`: every route inside a domain. The caller is authenticated and authorized
//! here, once, through [`authorize`]: reads need a relation, writes need editor or admin.
//! Sub-modules receive the resulting [`DomainAccess`] and take the domain id from it.

use crate::auth;
use crate::authz::{authorize, Action};
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::{certs, channels, clients, groups, Ctx};
use std::sync::Arc;
use warp::http::Method;

pub async fn route(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    let caller = auth::caller(ctx, req).await?;
    let action = if req.method == Method::GET {
        Action::Read
    } else {
        Action::Edit
    };
    let access = authorize(ctx, &caller, req.seg(0), action).await?;
    let segs: Vec<&str> = req.segs.iter().skip(1).map(String::as_str).collect();
    match segs.first().copied() {
        Some("clients") => clients::route(ctx, req, &access, &segs[1..]).await,
        Some("channels") => channels::route(ctx, req, &access, &segs[1..]).await,
        Some("groups") => groups::route(ctx, req, &access, &segs[1..]).await,
        Some("certs" | "serials") => certs::route(ctx, req, &access, &segs).await,
        _ => Err(ApiError::NotFound("no such route in domain".into())),
    }
}
