//! `GET /openapi.json`: the OpenAPI 3.1 document of the API, generated from the code. Its
//! operations are the rows of [`crate::routes::ROUTES`] (the table the edge refuses every
//! other request by); request body schemas are derived (`utoipa::ToSchema`) from the very
//! structs the handlers deserialize (unknown fields refused, so `additionalProperties` is
//! false); response schemas are written here next to the views in [`crate::views`].

use crate::routes::{Auth, Route, Ty, ROUTES};
use serde_json::{json, Map, Value};
use std::sync::LazyLock;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;

/// Named component schemas.
pub type Schemas = Vec<(String, RefOr<Schema>)>;

/// Adds `T`'s schema and the schemas it refers to.
pub(crate) fn add<T: utoipa::ToSchema>(out: &mut Schemas) {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: LazyLock<Value> = LazyLock::new(build);
    &DOC
}

const REF: &str = "#/components/schemas/";

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("{REF}{name}")})
}

/// Error statuses every operation may answer, with why.
const ERRORS: &[(u16, &str)] = &[
    (400, "Malformed request: a body, path or query parameter that does not parse or is out of range, an unknown field or query parameter"),
    (401, "Missing, invalid, expired or revoked credentials"),
    (403, "Authenticated, but not allowed"),
    (404, "No such entity (or not visible to the caller)"),
    (409, "Conflicts with the current state (duplicate id or name, the last admin)"),
    (413, "Body larger than http.max_body_bytes"),
    (415, "Body of another media type than the operation takes"),
    (422, "Well-formed but not acceptable"),
    (429, "Too many failed logins (retry after the seconds in Retry-After), or the caller holds its share of a limited resource (live views per user or domain)"),
    (503, "Busy or shutting down: retry"),
];

fn param_schema(ty: Ty) -> Value {
    match ty {
        Ty::Int => json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
        Ty::Num => json!({"type": "number"}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Str => json!({"type": "string"}),
        Ty::Enum(v) => json!({"type": "string", "enum": v}),
    }
}

/// Path parameters that must be UUIDs.
fn path_param_schema(name: &str) -> Value {
    match name {
        "domainID" | "channelID" | "groupID" | "userID" => json!({"type": "string", "format": "uuid"}),
        _ => json!({"type": "string", "minLength": 1}),
    }
}

fn security(auth: Auth) -> Value {
    match auth {
        Auth::None => json!([]),
        Auth::Bearer | Auth::Refresh => json!([{"bearerAuth": []}]),
        Auth::Client => json!([{"clientAuth": []}, {"basicAuth": []}]),
        Auth::ClientOrBearer => json!([{"clientAuth": []}, {"basicAuth": []}, {"bearerAuth": []}]),
        Auth::MetricsToken => json!([{}, {"bearerAuth": []}]),
    }
}

fn operation(r: &Route) -> Value {
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let mut desc = format!("The {name}.");
            if r.rest && r.path.ends_with(&format!("{{{name}}}")) {
                desc = "Subtopic: one or more path segments.".into();
            }
            json!({"name": name, "in": "path", "required": true, "schema": path_param_schema(name), "description": desc})
        })
        .collect();
    params.extend(r.params().map(|p| {
        json!({"name": p.name, "in": "query", "required": false, "schema": param_schema(p.ty), "description": p.doc})
    }));
    let mut responses = Map::new();
    let mut success = json!({"description": r.summary});
    if let Some(s) = r.ok.schema {
        success["content"] = json!({ r.ok.media: {"schema": schema_ref(s)} });
    }
    if r.ok.status == 201 && r.ok.schema.is_some() && r.method == "POST" && !r.path.contains("tokens") {
        success["headers"] =
            json!({"Location": {"description": "Path of the new entity", "schema": {"type": "string"}}});
    }
    responses.insert(r.ok.status.to_string(), success);
    for (code, why) in ERRORS {
        // A failing health check answers 503 with the health document itself.
        let (schema, media) = if *code == 503 && r.id == "health" {
            (schema_ref("Health"), "application/health+json")
        } else {
            (schema_ref("Error"), "application/json")
        };
        responses.insert(
            code.to_string(),
            json!({"description": why, "content": { media: {"schema": schema} }}),
        );
    }
    let mut op = json!({
        "operationId": r.id,
        "tags": [r.tag],
        "summary": r.summary,
        "parameters": params,
        "responses": responses,
        "security": security(r.auth),
    });
    if let Some(b) = r.body {
        op["requestBody"] = json!({"required": true, "content": { b.media: {"schema": schema_ref(b.schema)} }});
    }
    op
}

fn build() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let item = paths.entry(r.path).or_insert_with(|| json!({}));
        item[r.method.to_ascii_lowercase()] = operation(r);
    }
    let mut schemas = Map::new();
    let mut derived = Schemas::new();
    crate::users::request_schemas(&mut derived);
    crate::domains::request_schemas(&mut derived);
    crate::clients::request_schemas(&mut derived);
    crate::channels::request_schemas(&mut derived);
    crate::groups::request_schemas(&mut derived);
    crate::certs::request_schemas(&mut derived);
    for (name, s) in derived {
        schemas.insert(name, serde_json::to_value(s).unwrap_or(Value::Null));
    }
    for (name, s) in response_schemas() {
        schemas.insert(name.into(), s);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Fluxgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Fluxgate's management API, HTTP message publishing and readers: every route the server serves, generated from its route table.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A user's access token (`POST /users/tokens/issue`); on `/users/tokens/refresh`, the refresh token."},
                "clientAuth": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "A device: `Client <secret>`."},
                "basicAuth": {"type": "http", "scheme": "basic", "description": "A device: client id and secret."},
            },
        },
    })
}

fn s(t: &str) -> Value {
    json!({"type": t})
}

fn object(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "required": required, "properties": props})
}

fn page(items: &str, plural: &str) -> Value {
    object(
        &["total", "offset", "limit", plural],
        json!({"total": s("integer"), "offset": s("integer"), "limit": s("integer"), plural: {"type": "array", "items": schema_ref(items)}}),
    )
}

fn response_schemas() -> Vec<(&'static str, Value)> {
    let time = json!({"type": "string", "description": "RFC 3339; 0001-01-01T00:00:00Z when never"});
    let tags = json!({"type": "array", "items": s("string")});
    let meta = s("object");
    let status = json!({"type": "string", "enum": ["enabled", "disabled", "freezed"]});
    let conn = json!({"type": "array", "items": {"type": "string", "enum": ["publish", "subscribe"]}});
    vec![
        (
            "Error",
            object(
                &["error", "message"],
                json!({"error": s("string"), "message": s("string")}),
            ),
        ),
        ("Empty", json!({"description": "No body"})),
        ("Text", s("string")),
        (
            "Document",
            json!({"type": "object", "description": "An OpenAPI 3.1 document"}),
        ),
        ("Notice", object(&["msg"], json!({"msg": s("string")}))),
        (
            "Health",
            object(
                &["status"],
                json!({
                    "status": {"type": "string", "enum": ["pass", "fail"]},
                    "version": s("string"), "description": s("string"),
                    "checks": {"type": "object", "additionalProperties": {"type": "array", "items": object(&["status"], json!({"status": {"type": "string", "enum": ["pass", "fail"]}, "output": s("string")}))}},
                }),
            ),
        ),
        (
            "Tokens",
            object(
                &["access_token", "refresh_token", "access_type"],
                json!({"access_token": s("string"), "refresh_token": s("string"), "access_type": s("string")}),
            ),
        ),
        (
            "User",
            object(
                &["id"],
                json!({
                    "id": s("string"), "first_name": s("string"), "last_name": s("string"), "email": s("string"), "username": s("string"),
                    "credentials": object(&[], json!({"username": s("string")})),
                    "tags": tags, "metadata": meta, "profile_picture": s("string"),
                    "role": {"type": "string", "enum": ["admin", "user"]}, "status": status, "relation": s("string"),
                    "created_at": time, "updated_at": time, "updated_by": s("string"),
                }),
            ),
        ),
        (
            "Domain",
            object(
                &["id", "name", "route", "status"],
                json!({
                    "id": s("string"), "name": s("string"), "route": s("string"), "tags": tags, "metadata": meta, "status": status,
                    "created_by": s("string"), "created_at": time, "updated_at": time, "updated_by": s("string"),
                }),
            ),
        ),
        (
            "Client",
            object(
                &["id", "domain_id", "status"],
                json!({
                    "id": s("string"), "name": s("string"), "tags": tags, "domain_id": s("string"),
                    "credentials": object(&[], json!({"identity": s("string"), "secret": s("string")})),
                    "metadata": meta, "status": status, "created_at": time, "updated_at": time, "updated_by": s("string"),
                    "connection_types": conn,
                    "connected": s("boolean"), "connected_at": time, "disconnected_at": time,
                    "remote_addr": s("string"), "protocol": {"type": "string", "enum": ["mqtt", "mqtts", "ws", "wss"]},
                    "sessions": {"type": "array", "items": object(&["client_id", "remote_addr", "protocol", "connected_at"], json!({
                        "client_id": s("string"), "remote_addr": s("string"), "protocol": s("string"), "connected_at": time,
                    }))},
                }),
            ),
        ),
        (
            "Channel",
            object(
                &["id", "domain_id", "status"],
                json!({
                    "id": s("string"), "name": s("string"), "description": s("string"), "tags": tags, "domain_id": s("string"),
                    "parent_group_id": s("string"), "metadata": meta, "status": status, "created_at": time, "updated_at": time,
                    "updated_by": s("string"), "connection_types": conn,
                }),
            ),
        ),
        (
            "Group",
            object(
                &["id", "domain_id", "name", "status"],
                json!({
                    "id": s("string"), "domain_id": s("string"), "parent_id": s("string"), "name": s("string"), "description": s("string"),
                    "tags": tags, "metadata": meta, "status": status, "created_at": time, "updated_at": time, "updated_by": s("string"),
                    "level": s("integer"), "path": s("string"), "children": {"type": "array", "items": schema_ref("Group")},
                }),
            ),
        ),
        ("UsersPage", page("User", "users")),
        ("MembersPage", page("User", "users")),
        ("GroupMembersPage", page("User", "members")),
        ("DomainsPage", page("Domain", "domains")),
        ("ClientsPage", page("Client", "clients")),
        ("ChannelsPage", page("Channel", "channels")),
        ("GroupsPage", page("Group", "groups")),
        ("Hierarchy", page("Group", "groups")),
        ("MembershipsPage", page("Group", "memberships")),
        (
            "ClientsCreated",
            object(
                &["total", "clients"],
                json!({"total": s("integer"), "clients": {"type": "array", "items": schema_ref("Client")}}),
            ),
        ),
        (
            "ChannelsCreated",
            object(
                &["total", "channels"],
                json!({"total": s("integer"), "channels": {"type": "array", "items": schema_ref("Channel")}}),
            ),
        ),
        (
            "CreateClients",
            json!({"type": "array", "minItems": 1, "maxItems": crate::params::MAX_BULK, "items": schema_ref("CreateClient")}),
        ),
        (
            "CreateChannels",
            json!({"type": "array", "minItems": 1, "maxItems": crate::params::MAX_BULK, "items": schema_ref("CreateChannel")}),
        ),
        (
            "Cert",
            object(
                &["client_id", "serial", "expire", "revoked"],
                json!({
                    "client_id": s("string"), "serial": s("string"), "expire": s("string"), "revoked": s("boolean"),
                    "revocation_time": {"type": ["string", "null"]},
                }),
            ),
        ),
        (
            "Certs",
            object(
                &["total", "certs"],
                json!({"total": s("integer"), "certs": {"type": "array", "items": schema_ref("Cert")}}),
            ),
        ),
        (
            "IssuedCert",
            object(
                &["client_id", "client_cert", "client_key"],
                json!({
                    "client_id": s("string"), "client_cert": s("string"), "client_key": s("string"), "serial": s("string"), "expire": s("string"),
                }),
            ),
        ),
        (
            "Revoked",
            object(
                &["serial"],
                json!({"serial": s("string"), "revocation_time": {"type": ["string", "null"]}}),
            ),
        ),
        (
            "SenML",
            json!({"description": "A SenML pack (RFC 8428): an array of records", "type": "array", "items": {"type": "object"}}),
        ),
        (
            "Message",
            object(
                &["channel", "time"],
                json!({
                    "channel": s("string"), "subtopic": s("string"), "publisher": s("string"), "protocol": s("string"),
                    "name": s("string"), "unit": s("string"), "time": s("number"), "update_time": s("number"),
                    "value": s("number"), "string_value": s("string"), "bool_value": s("boolean"), "data_value": s("string"), "sum": s("number"),
                }),
            ),
        ),
        (
            "MessagesPage",
            object(
                &["offset", "limit", "total", "messages"],
                json!({
                    "offset": s("integer"), "limit": s("integer"), "format": s("string"), "total": s("integer"),
                    "messages": {"type": "array", "items": schema_ref("Message")},
                }),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document names a schema it holds.
    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|x| walk(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(doc, &mut refs);
        assert!(refs.len() > 100);
        for r in refs {
            let name = r.strip_prefix(REF).expect("local ref");
            assert!(schemas.contains_key(name), "dangling {r}");
        }
    }

    /// Request schemas come from the handlers' structs: unknown fields are refused there, so
    /// the document says so.
    #[test]
    fn request_schemas_refuse_unknown_fields() {
        let doc = document();
        let c = &doc["components"]["schemas"]["CreateChannel"];
        assert_eq!(c["additionalProperties"], false, "{c}");
        assert!(c["properties"]["description"].is_object(), "{c}");
    }
}
