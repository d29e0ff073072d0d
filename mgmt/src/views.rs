//! JSON shapes of entities as the documents show them, and parsing helpers for the JSON
//! fields the store keeps as text.

use crate::error::ApiError;
use serde_json::{json, Map, Value};
use storage::{Domain, JsonText, User};

/// RFC 3339 UTC with sub-second precision; `None` renders as the documents' zero time.
pub fn time(micros: Option<i64>) -> String {
    match micros {
        None => "0001-01-01T00:00:00Z".into(),
        Some(us) => time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
    }
}

fn parse_text(t: &JsonText) -> Value {
    serde_json::from_str(&t.0).unwrap_or(Value::Null)
}

/// Inserts `key` only when the value is not empty (the documents omit empty fields).
fn put_nonempty(m: &mut Map<String, Value>, key: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if !empty {
        m.insert(key.into(), v);
    }
}

pub fn user(u: &User) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(u.id));
    m.insert("first_name".into(), json!(u.first_name));
    m.insert("last_name".into(), json!(u.last_name));
    m.insert("email".into(), json!(u.email));
    m.insert("credentials".into(), json!({"username": u.username}));
    put_nonempty(&mut m, "tags", parse_text(&u.tags));
    put_nonempty(&mut m, "metadata", parse_text(&u.metadata));
    put_nonempty(&mut m, "profile_picture", json!(u.profile_picture));
    m.insert("role".into(), json!(u.role.as_str()));
    m.insert("status".into(), json!(u.status.as_str()));
    m.insert("created_at".into(), json!(time(Some(u.created_at))));
    m.insert("updated_at".into(), json!(time(u.updated_at)));
    if let Some(by) = &u.updated_by {
        m.insert("updated_by".into(), json!(by));
    }
    Value::Object(m)
}

pub fn domain(d: &Domain) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(d.id));
    m.insert("name".into(), json!(d.name));
    m.insert("route".into(), json!(d.route));
    put_nonempty(&mut m, "tags", parse_text(&d.tags));
    put_nonempty(&mut m, "metadata", parse_text(&d.metadata));
    m.insert("status".into(), json!(d.status.as_str()));
    m.insert("created_by".into(), json!(d.created_by));
    m.insert("created_at".into(), json!(time(Some(d.created_at))));
    m.insert("updated_at".into(), json!(time(d.updated_at)));
    if let Some(by) = &d.updated_by {
        m.insert("updated_by".into(), json!(by));
    }
    Value::Object(m)
}

/// A page as `{"total", "offset", "limit", "<plural>": [...]}`.
pub fn page<T>(p: &storage::Page<T>, plural: &str, f: impl Fn(&T) -> Value) -> Value {
    let items: Vec<Value> = p.items.iter().map(f).collect();
    let mut m = Map::new();
    m.insert("total".into(), json!(p.total));
    m.insert("offset".into(), json!(p.offset));
    m.insert("limit".into(), json!(p.limit));
    m.insert(plural.into(), Value::Array(items));
    Value::Object(m)
}

pub const MAX_METADATA_BYTES: usize = 64 * 1024;
pub const MAX_TAGS: usize = 64;

/// Validates metadata: a JSON object of bounded size.
pub fn metadata(v: Option<Value>) -> Result<Option<JsonText>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => {
            let s = Value::Object(o).to_string();
            if s.len() > MAX_METADATA_BYTES {
                return Err(ApiError::bad(format!("metadata exceeds {MAX_METADATA_BYTES} bytes")));
            }
            Ok(Some(JsonText(s)))
        }
        Some(_) => Err(ApiError::bad("metadata must be a JSON object")),
    }
}

/// Validates tags: at most [`MAX_TAGS`] non-empty strings of at most 256 bytes.
pub fn tags(v: Option<Vec<String>>) -> Result<Option<JsonText>, ApiError> {
    match v {
        None => Ok(None),
        Some(t) => {
            if t.len() > MAX_TAGS {
                return Err(ApiError::bad(format!("at most {MAX_TAGS} tags are allowed")));
            }
            if t.iter().any(|s| s.is_empty() || s.len() > 256) {
                return Err(ApiError::bad("tags must be non-empty strings of at most 256 bytes"));
            }
            Ok(Some(JsonText(Value::from(t).to_string())))
        }
    }
}

/// Parses the `metadata` query parameter (a JSON object).
pub fn metadata_query(q: Option<&str>) -> Result<Option<JsonText>, ApiError> {
    match q {
        None | Some("") => Ok(None),
        Some(s) => {
            let v: Value =
                serde_json::from_str(s).map_err(|_| ApiError::bad("invalid value of query parameter `metadata`"))?;
            if let Some(bad) = v.as_object().and_then(|m| m.keys().find(|k| !metadata_key_ok(k))) {
                return Err(ApiError::bad(format!(
                    "query parameter `metadata`: key {bad:?} must be 1 to 256 characters without control characters, quotes or backslashes"
                )));
            }
            metadata(Some(v)).map_err(|_| ApiError::bad("query parameter `metadata` must be a JSON object"))
        }
    }
}

/// A metadata key a filter can name (it becomes part of a JSON path in the store).
fn metadata_key_ok(k: &str) -> bool {
    (1..=256).contains(&k.chars().count()) && !k.chars().any(|c| c.is_control() || c == '"' || c == '\\')
}

/// A display name: at most 1024 bytes.
pub fn name(n: &str) -> Result<(), ApiError> {
    text("name", n)
}

pub fn description(d: &str) -> Result<(), ApiError> {
    text("description", d)
}

/// A free-text field: at most 1024 bytes (400 naming the field beyond).
fn text(field: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > 1024 {
        return Err(ApiError::bad(format!("{field} exceeds 1024 bytes")));
    }
    Ok(())
}

fn conn_types(m: &mut Map<String, Value>, types: &[storage::ConnType]) {
    if !types.is_empty() {
        m.insert(
            "connection_types".into(),
            Value::from(types.iter().map(|t| t.as_str()).collect::<Vec<_>>()),
        );
    }
}

/// A client; the secret only when `show_secret` (domain admins and editors).
pub fn client(c: &storage::Client, show_secret: bool) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(c.id));
    put_nonempty(&mut m, "name", json!(c.name));
    put_nonempty(&mut m, "tags", parse_text(&c.tags));
    m.insert("domain_id".into(), json!(c.domain_id));
    let mut creds = Map::new();
    put_nonempty(&mut creds, "identity", json!(c.identity));
    if show_secret {
        creds.insert("secret".into(), json!(c.secret));
    }
    m.insert("credentials".into(), Value::Object(creds));
    put_nonempty(&mut m, "metadata", parse_text(&c.metadata));
    m.insert("status".into(), json!(c.status.as_str()));
    m.insert("created_at".into(), json!(time(Some(c.created_at))));
    m.insert("updated_at".into(), json!(time(c.updated_at)));
    if let Some(by) = &c.updated_by {
        m.insert("updated_by".into(), json!(by));
    }
    conn_types(&mut m, &c.conn_types);
    presence(&mut m, &c.presence);
    Value::Object(m)
}

/// `connected`, `connected_at`, `disconnected_at`, `remote_addr`, `protocol` and the live
/// `sessions` (`client_id` is the MQTT client identifier; in a cluster, `node` names the
/// node holding the connection).
fn presence(m: &mut Map<String, Value>, p: &storage::Presence) {
    m.insert("connected".into(), json!(p.online()));
    if let Some(t) = p.connected_at {
        m.insert("connected_at".into(), json!(time(Some(t))));
    }
    if let Some(t) = p.disconnected_at {
        m.insert("disconnected_at".into(), json!(time(Some(t))));
    }
    if let Some(a) = &p.remote_addr {
        m.insert("remote_addr".into(), json!(a));
    }
    if let Some(pr) = &p.protocol {
        m.insert("protocol".into(), json!(pr));
    }
    let mut sessions = parse_text(&p.sessions);
    if let Some(list) = sessions.as_array_mut() {
        for s in list {
            if let Some(at) = s.get("connected_at").and_then(Value::as_i64) {
                s["connected_at"] = json!(time(Some(at)));
            }
            if let Some(o) = s.as_object_mut() {
                if o.get("node").and_then(Value::as_str) == Some("") {
                    o.remove("node");
                }
            }
        }
    }
    m.insert("sessions".into(), sessions);
}

pub fn channel(h: &storage::Channel) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(h.id));
    put_nonempty(&mut m, "name", json!(h.name));
    put_nonempty(&mut m, "description", json!(h.description));
    put_nonempty(&mut m, "tags", parse_text(&h.tags));
    m.insert("domain_id".into(), json!(h.domain_id));
    if let Some(p) = &h.parent_group_id {
        m.insert("parent_group_id".into(), json!(p));
    }
    put_nonempty(&mut m, "metadata", parse_text(&h.metadata));
    m.insert("status".into(), json!(h.status.as_str()));
    m.insert("created_at".into(), json!(time(Some(h.created_at))));
    m.insert("updated_at".into(), json!(time(h.updated_at)));
    if let Some(by) = &h.updated_by {
        m.insert("updated_by".into(), json!(by));
    }
    conn_types(&mut m, &h.conn_types);
    Value::Object(m)
}

pub fn group(g: &storage::Group) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(g.id));
    m.insert("domain_id".into(), json!(g.domain_id));
    if let Some(p) = &g.parent_id {
        m.insert("parent_id".into(), json!(p));
    }
    m.insert("name".into(), json!(g.name));
    put_nonempty(&mut m, "description", json!(g.description));
    put_nonempty(&mut m, "tags", parse_text(&g.tags));
    put_nonempty(&mut m, "metadata", parse_text(&g.metadata));
    m.insert("status".into(), json!(g.status.as_str()));
    m.insert("created_at".into(), json!(time(Some(g.created_at))));
    m.insert("updated_at".into(), json!(time(g.updated_at)));
    if let Some(by) = &g.updated_by {
        m.insert("updated_by".into(), json!(by));
    }
    Value::Object(m)
}

/// A group in a hierarchy listing: the group plus `level` and `path`.
pub fn group_node(n: &storage::GroupNode) -> Value {
    let mut v = group(&n.group);
    v["level"] = json!(n.level);
    v["path"] = json!(n.path);
    v
}

/// Nests hierarchy nodes: each node's `children` are the nodes whose parent it is; roots are
/// the nodes whose parent is not in the set.
pub fn group_tree(nodes: &[storage::GroupNode]) -> Vec<Value> {
    use std::collections::{HashMap, HashSet};
    let ids: HashSet<&str> = nodes.iter().map(|n| n.group.id.as_str()).collect();
    let mut kids: HashMap<&str, Vec<&storage::GroupNode>> = HashMap::new();
    let mut roots = Vec::new();
    for n in nodes {
        match n.group.parent_id.as_deref() {
            Some(p) if ids.contains(p) => kids.entry(p).or_default().push(n),
            _ => roots.push(n),
        }
    }
    fn build(n: &storage::GroupNode, kids: &HashMap<&str, Vec<&storage::GroupNode>>, depth: usize) -> Value {
        let mut v = group_node(n);
        if let Some(cs) = kids.get(n.group.id.as_str()) {
            if depth < 128 {
                v["children"] = Value::from(cs.iter().map(|c| build(c, kids, depth + 1)).collect::<Vec<_>>());
            }
        }
        v
    }
    roots.iter().map(|r| build(r, &kids, 0)).collect()
}
