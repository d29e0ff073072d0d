//! What requests give beyond their path: list parameters (page, order, the shared entity
//! filter), the status of a create body and id lists. Every list handler reads its parameters
//! here, so a parameter means the same on every route.

use crate::error::ApiError;
use crate::http::Req;
use crate::views;
use serde::Deserialize;
use storage::{
    ChannelPatch, ClientPatch, EntityFilter, GroupPatch, JsonText, ListQuery, Order, PageReq, Status, StatusFilter,
};

/// Largest page a list returns.
pub const MAX_LIMIT: u64 = 100;

/// Ids in a request body: at most this many per list.
pub const MAX_IDS: usize = 1000;

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
    let descending = descending(req, false)?;
    Ok(PageReq {
        offset,
        limit,
        order,
        descending,
    })
}

/// `dir`: `asc` or `desc`, `default_desc` when absent.
pub fn descending(req: &Req, default_desc: bool) -> Result<bool, ApiError> {
    match req.q("dir") {
        None | Some("") => Ok(default_desc),
        Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(_) => Err(ApiError::bad("invalid value of query parameter `dir`")),
    }
}

/// The page of a list route: [`page_req`] up to [`MAX_LIMIT`].
pub fn page(req: &Req) -> Result<PageReq, ApiError> {
    page_req(req, MAX_LIMIT)
}

/// Reads the `status` filter (`enabled` by default).
pub fn status_filter(req: &Req) -> Result<StatusFilter, ApiError> {
    match req.q("status") {
        None | Some("") => Ok(StatusFilter::Enabled),
        Some(s) => StatusFilter::parse(s).ok_or_else(|| ApiError::bad("invalid value of query parameter `status`")),
    }
}

/// A trimmed, non-empty query parameter.
pub fn q_text(req: &Req, key: &str) -> Option<String> {
    req.q(key).map(str::trim).filter(|s| !s.is_empty()).map(String::from)
}

/// `status`, `name`, `tag` (or `tags`) and `metadata`.
pub fn entity_filter(req: &Req) -> Result<EntityFilter, ApiError> {
    Ok(EntityFilter {
        status: status_filter(req)?,
        name: q_text(req, "name"),
        tag: q_text(req, "tag").or_else(|| q_text(req, "tags")),
        metadata: views::metadata_query(req.q("metadata"))?,
    })
}

/// The page and the entity filter.
pub fn list_query(req: &Req) -> Result<ListQuery, ApiError> {
    Ok(ListQuery {
        page: page(req)?,
        filter: entity_filter(req)?,
    })
}

/// The page and the status filter alone (lists of a client's channels, a channel's clients).
pub fn status_page(req: &Req) -> Result<ListQuery, ApiError> {
    Ok(ListQuery {
        page: page(req)?,
        filter: EntityFilter {
            status: status_filter(req)?,
            ..Default::default()
        },
    })
}

/// The `status` of a create body: enabled unless it says disabled.
pub fn body_status(s: Option<&str>) -> Result<Status, ApiError> {
    match s {
        None | Some("") | Some("enabled") => Ok(Status::Enabled),
        Some("disabled") => Ok(Status::Disabled),
        Some(_) => Err(ApiError::bad("status must be \"enabled\" or \"disabled\"")),
    }
}

/// A list of ids in a body: 1 to [`MAX_IDS`].
pub fn check_ids(ids: &[String], what: &str) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(ApiError::bad(format!("{what} must not be empty")));
    }
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad(format!("{what} holds more than {MAX_IDS} ids")));
    }
    Ok(())
}

/// Creations in one bulk request: at most this many.
pub const MAX_BULK: usize = 1000;

/// A bulk create body: a JSON array of 1 to [`MAX_BULK`] items, each made by `make`; the first
/// bad item fails the whole request, naming its index.
pub fn bulk<B: serde::de::DeserializeOwned, T>(
    req: &Req,
    what: &str,
    make: impl Fn(B) -> Result<T, ApiError>,
) -> Result<Vec<T>, ApiError> {
    let items: Vec<B> = req.json()?;
    if items.is_empty() || items.len() > MAX_BULK {
        return Err(ApiError::bad(format!("a bulk request holds 1 to {MAX_BULK} {what}s")));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, b)| make(b).map_err(|e| ApiError::bad(format!("{what} {i}: {e}"))))
        .collect()
}

/// The body of `PATCH …/{id}/tags`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tags {
    tags: Vec<String>,
}

impl Tags {
    /// The validated tags of a `PATCH …/{id}/tags` body.
    pub fn read(req: &Req) -> Result<JsonText, ApiError> {
        let b: Tags = req.json()?;
        views::tags(Some(b.tags))?.ok_or_else(|| ApiError::bad("tags are required"))
    }
}

/// The patches of registry entities that `…/tags` and `…/enable|disable` routes make.
pub trait LabelPatch: Default {
    fn tags(tags: JsonText) -> Self;
    fn status(status: Status) -> Self;
}

macro_rules! label_patch {
    ($($t:ty),*) => {$(
        impl LabelPatch for $t {
            fn tags(tags: JsonText) -> Self {
                Self { tags: Some(tags), ..Default::default() }
            }
            fn status(status: Status) -> Self {
                Self { status: Some(status), ..Default::default() }
            }
        }
    )*};
}
label_patch!(ClientPatch, ChannelPatch, GroupPatch);

/// The patch of `PATCH …/{id}/tags`.
pub fn tags_patch<P: LabelPatch>(req: &Req) -> Result<P, ApiError> {
    Ok(P::tags(Tags::read(req)?))
}

/// The patch of `POST …/{id}/enable` or `…/disable`.
pub fn status_patch<P: LabelPatch>(op: &str) -> P {
    P::status(if op == "enable" {
        Status::Enabled
    } else {
        Status::Disabled
    })
}
