//! Client certificates (`/{domainID}/certs…`, `/{domainID}/serials/{clientID}`) and the
//! public CA material (`/certs/ca`, `/certs/crl`).

use crate::authz::DomainAccess;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::{views, Ctx};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use storage::CertRecord;
use warp::http::{Method, StatusCode};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = IssueCert)]
struct Issue {
    client_id: String,
    ttl: Option<String>,
}

const DEFAULT_TTL: &str = "8760h";
const MAX_TTL_DAYS: i64 = 3650;

fn rfc3339(secs: i64) -> String {
    views::time(Some(secs.saturating_mul(1_000_000)))
}

fn record_json(c: &CertRecord) -> serde_json::Value {
    json!({
        "client_id": c.client_id,
        "serial": c.serial,
        "expire": rfc3339(c.expire),
        "revoked": c.revoked_at.is_some(),
        "revocation_time": c.revoked_at.map(rfc3339),
    })
}

fn pem(body: String) -> Result<Reply, ApiError> {
    Ok(Reply {
        status: StatusCode::OK,
        body: Some(body.into()),
        content_type: "application/x-pem-file",
        headers: Vec::new(),
        raw: None,
    })
}

/// `GET /certs/ca` and `GET /certs/crl`: public, no authentication.
pub async fn public(ctx: &Arc<Ctx>, req: &Req) -> Result<Reply, ApiError> {
    match (
        req.segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
        &req.method,
    ) {
        (["certs", "ca"], &Method::GET) => pem(ctx.ca.pem().to_string()),
        (["certs", "crl"], &Method::GET) => {
            let revoked = ctx.db(|s| s.revoked_certs()).await?;
            let list: Vec<(String, time::OffsetDateTime)> = revoked
                .iter()
                .filter_map(|c| {
                    Some((
                        c.serial.clone(),
                        time::OffsetDateTime::from_unix_timestamp(c.revoked_at?).ok()?,
                    ))
                })
                .collect();
            let crl = ctx
                .ca
                .crl(&list, list.len() as u64 + 1)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            pem(crl)
        }
        _ => Err(ApiError::NotFound("no such certs route".into())),
    }
}

pub async fn route(ctx: &Arc<Ctx>, req: &Req, a: &DomainAccess, segs: &[&str]) -> Result<Reply, ApiError> {
    let d = a.domain_id().to_string();
    match (segs, &req.method) {
        (["certs"], &Method::POST) => {
            let b: Issue = req.json()?;
            let ttl_text = b.ttl.unwrap_or_else(|| DEFAULT_TTL.into());
            let ttl = certs::parse_ttl(&ttl_text)
                .ok_or_else(|| ApiError::bad("ttl must look like 8760h, 30d, 15m or 3600s"))?;
            if ttl > time::Duration::days(MAX_TTL_DAYS) {
                return Err(ApiError::bad(format!("ttl may be at most {MAX_TTL_DAYS} days")));
            }
            let (d2, c2) = (d.clone(), b.client_id.clone());
            ctx.db(move |s| s.client(&d2, &c2))
                .await
                .map_err(|_| ApiError::not_found("client"))?;
            let now = time::OffsetDateTime::now_utc();
            let ca = ctx.ca.clone();
            let client_id = b.client_id.clone();
            let issued = tokio::task::spawn_blocking(move || {
                ca.issue_client(&client_id, now - time::Duration::minutes(5), now + ttl)
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            let rec = CertRecord {
                serial: issued.serial.clone(),
                domain_id: d.clone(),
                client_id: b.client_id.clone(),
                expire: issued.expire.unix_timestamp(),
                revoked_at: None,
            };
            ctx.db(move |s| s.insert_cert(&rec)).await.map_err(|e| match e {
                ApiError::NotFound(_) => ApiError::not_found("client"),
                e => e,
            })?;
            tracing::info!(domain = %d, client = %b.client_id, serial = %issued.serial, "client certificate issued");
            Reply::created(&json!({
                "client_id": b.client_id,
                "client_cert": issued.cert_pem,
                "client_key": issued.key_pem,
                "issuing_ca": ctx.ca.pem(),
                "serial": issued.serial,
                "expire": rfc3339(issued.expire.unix_timestamp()),
            }))
        }
        (["serials", client], &Method::GET) => {
            let c = client.to_string();
            let list = ctx.db(move |s| s.client_certs(&d, &c)).await?;
            Reply::ok(&json!({"total": list.len(), "certs": list.iter().map(record_json).collect::<Vec<_>>()}))
        }
        (["certs", serial], &Method::GET) => {
            let sn = serial.to_ascii_lowercase();
            let c = ctx
                .db(move |s| s.cert(&d, &sn))
                .await
                .map_err(|_| ApiError::not_found("certificate"))?;
            Reply::ok(&record_json(&c))
        }
        (["certs", serial], &Method::DELETE) => {
            let sn = serial.to_ascii_lowercase();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let c = ctx
                .db(move |s| s.revoke_cert(&d, &sn, now))
                .await
                .map_err(|_| ApiError::not_found("certificate"))?;
            tracing::info!(domain = %c.domain_id, serial = %c.serial, "client certificate revoked");
            Reply::ok(&json!({"serial": c.serial, "revocation_time": c.revoked_at.map(rfc3339)}))
        }
        _ => Err(ApiError::NotFound("no such certs route".into())),
    }
}

/// The request bodies of this module's routes, for the OpenAPI document.
pub(crate) fn request_schemas(out: &mut crate::openapi::Schemas) {
    crate::openapi::add::<Issue>(out);
}
