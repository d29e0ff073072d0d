//! The console's HTML, rendered from the REST API's JSON answers (maud escapes every value).

use super::session::Session;
use super::{label_of, str_of, Kind, Notice, Where, PAGE};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use warp::http::StatusCode;

mod entity;
mod users;
pub use entity::{entity, issued, ChartForm, Entity};
pub use users::{account, users};

/// A REST timestamp (`2026-11-24T08:58:02.205874Z`) as `2026-11-24 08:58:02 UTC`; the zero
/// time as "never".
fn when(s: &str) -> String {
    if s.is_empty() || s.starts_with("0001-") {
        return "never".into();
    }
    let s = s.split('.').next().unwrap_or(s).trim_end_matches('Z');
    format!("{} UTC", s.replacen('T', " ", 1))
}

fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// What to show in `field` of `form`: what the user typed when that form was refused,
/// else `current`.
fn kept<'a>(n: Option<&'a Notice>, form: &str, field: &str, current: &'a str) -> &'a str {
    n.and_then(|n| n.typed(form, field)).unwrap_or(current)
}

/// `Some("true")` for the field of `form` an error is about (its `aria-invalid`).
fn bad(n: Option<&Notice>, form: &str, field: &str) -> Option<&'static str> {
    (n.and_then(|n| n.field(form)) == Some(field)).then_some("true")
}

/// The error box of one form, when the notice is about it.
fn notice_for(n: Option<&Notice>, form: &str) -> Markup {
    html! {
        @if let Some(n) = n.filter(|n| n.form == form) {
            p.error role="alert" data-form=(form) { (n.message) }
        }
    }
}

/// "1–20 of 57" with links to the previous and next page of a list.
fn pager(total: u64, offset: u64, shown: usize, link: impl Fn(u64) -> String) -> Markup {
    html! {
        p.pager {
            (if total == 0 { 0 } else { offset + 1 }) "–" (offset + shown as u64) " of " (total)
            @if offset > 0 { " " a href=(link(offset.saturating_sub(PAGE))) { "← previous" } }
            @if offset + (shown as u64) < total { " " a href=(link(offset + PAGE)) { "next →" } }
        }
    }
}

fn items(v: &Value, key: &str) -> Vec<Value> {
    v.get(key).and_then(Value::as_array).cloned().unwrap_or_default()
}

fn tags_text(v: &Value) -> String {
    v.get("tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn metadata_text(v: &Value) -> String {
    match v.get("metadata") {
        Some(m @ Value::Object(o)) if !o.is_empty() => serde_json::to_string_pretty(m).unwrap_or_default(),
        _ => String::new(),
    }
}

/// The `<head>` of every page: the embedded stylesheet and script, nothing from elsewhere.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Fluxgate" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// The frame of every page after login.
pub fn layout(s: &Session, title: &str, d: Option<(&str, &Where)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-keepalive=(s.ttl / 3) {
                header.top {
                    a.brand href="/console/" { "Fluxgate" }
                    @if let Some((d, w)) = d {
                        a.domain href="/console/" title="Change domain" { (label_of(&w.domain)) " ▾" }
                        nav {
                            a href={ "/console/d/" (d) "/clients" } { "Clients" }
                            a href={ "/console/d/" (d) "/channels" } { "Channels" }
                            a href={ "/console/d/" (d) "/groups" } { "Groups" }
                            a href={ "/console/d/" (d) "/members" } { "Members" }
                        }
                    }
                    @if s.super_admin { a.users href="/console/users" { "Users" } }
                    a.user href="/console/account" title="Your account" { (s.username) }
                    form.inline method="post" action="/console/logout" {
                        (csrf(s))
                        button #logout type="submit" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page without a session (login, errors before login).
fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main.narrow {
                    h1 { "Fluxgate" }
                    (body)
                }
            }
        }
    }
}

pub fn error(status: StatusCode, message: &str) -> Markup {
    bare(
        "Error",
        html! {
            h2 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error role="alert" { (message) }
            p { a href="/console/" { "Back to the console" } }
        },
    )
}

pub fn problem(message: &str) -> Markup {
    html! {
        p.error role="alert" { (message) }
        p { a href="/console/" { "Back to your domains" } }
    }
}

pub fn login(token: &str, identity: &str, message: &str) -> Markup {
    bare(
        "Log in",
        html! {
            form #login method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(token);
                @if !message.is_empty() { p.error role="alert" { (message) } }
                label { "Username or e-mail" input #identity name="identity" value=(identity) autocomplete="username" required autofocus; }
                label { "Password" input #password name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub fn domains(s: &Session, list: &Value, n: Option<&Notice>) -> Markup {
    let ds = items(list, "domains");
    html! {
        @if ds.is_empty() {
            p { "You belong to no domain yet. Create one: you become its admin." }
        } @else {
            table #domains {
                thead { tr { th { "Domain" } th { "Route" } th { "Status" } th { "Created" } } }
                tbody {
                    @for d in &ds {
                        tr {
                            td { a href={ "/console/d/" (str_of(d, &["id"])) "/clients" } { (label_of(d)) } }
                            td { (str_of(d, &["route"])) }
                            td { span class={ "status " (str_of(d, &["status"])) } { (str_of(d, &["status"])) } }
                            td { (when(str_of(d, &["created_at"]))) }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Create a domain" }
            (notice_for(n, "create_domain"))
            form #create-domain method="post" action="/console/domains" {
                (csrf(s))
                input type="hidden" name="action" value="create_domain";
                label { "Name" input name="name" required; }
                label { "Route (optional, lower case)" input name="route"; }
                button type="submit" { "Create domain" }
            }
        }
    }
}

pub fn members(s: &Session, d: &str, w: &Where, list: &Value, n: Option<&Notice>) -> Markup {
    let users = items(list, "users");
    let action = format!("/console/d/{d}/members");
    html! {
        @if let Some(n) = n.filter(|n| !w.can_manage || n.form == "unassign") {
            p.error role="alert" data-form=(n.form) { (n.message) }
        }
        table #members {
            thead { tr { th { "User" } th { "E-mail" } th { "Role" } @if w.can_manage { th {} } } }
            tbody {
                @for u in &users {
                    @let id = str_of(u, &["id"]);
                    @let rel = str_of(u, &["relation"]);
                    tr {
                        td { (str_of(u, &["credentials", "username"])) }
                        td { (str_of(u, &["email"])) }
                        @if w.can_manage {
                            td {
                                form.inline method="post" action=(action) {
                                    (csrf(s))
                                    input type="hidden" name="action" value="assign";
                                    input type="hidden" name="user" value=(id);
                                    select name="relation" aria-label="Role" {
                                        @for r in ["admin", "editor", "viewer"] {
                                            option value=(r) selected[r == rel] { (r) }
                                        }
                                    }
                                    button type="submit" { "Change role" }
                                }
                            }
                            td {
                                form.inline method="post" action=(action) {
                                    (csrf(s))
                                    input type="hidden" name="action" value="unassign";
                                    input type="hidden" name="user" value=(id);
                                    button.danger type="submit" { "Remove" }
                                }
                            }
                        } @else {
                            td { (rel) }
                        }
                    }
                }
            }
        }
        @if w.can_manage {
            section {
                h2 { "Add a member" }
                (notice_for(n, "assign"))
                form #assign method="post" action=(action) {
                    (csrf(s))
                    input type="hidden" name="action" value="assign";
                    label { "User (id or username)" input name="user" required; }
                    label { "Role" select name="relation" { option value="viewer" { "viewer" } option value="editor" { "editor" } option value="admin" { "admin" } } }
                    button type="submit" { "Add" }
                }
                p.hint { "The last admin of a domain can be neither demoted nor removed." }
            }
        }
    }
}

/// The search fields of a list page.
pub struct Filters<'a> {
    pub name: &'a str,
    pub tag: &'a str,
    pub status: &'a str,
    pub connected: &'a str,
}

/// One row of a bulk creation's result.
pub struct BulkRow {
    pub line: usize,
    pub name: String,
    /// The new id, or why the row failed.
    pub result: Result<String, String>,
}

fn presence(c: &Value) -> Markup {
    let online = c.get("connected").and_then(Value::as_bool).unwrap_or(false);
    html! {
        @if online {
            span.online data-presence="online" { "online" }
            " since " (when(str_of(c, &["connected_at"])))
        } @else {
            span.offline data-presence="offline" { "offline" }
            @let since = str_of(c, &["disconnected_at"]);
            @if !since.is_empty() { " since " (when(since)) }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn list(
    s: &Session,
    d: &str,
    w: &Where,
    k: Kind,
    list: &Value,
    f: &Filters,
    n: Option<&Notice>,
    bulk: Option<&[BulkRow]>,
) -> Markup {
    let rows = items(list, k.path());
    let total = list.get("total").and_then(Value::as_u64).unwrap_or(0);
    let offset = list.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let here = format!("/console/d/{d}/{}", k.path());
    let page_link = |off: u64| {
        let mut q = vec![format!("offset={off}")];
        for (k, v) in [
            ("name", f.name),
            ("tag", f.tag),
            ("status", f.status),
            ("connected", f.connected),
        ] {
            if !v.is_empty() {
                q.push(format!("{k}={}", crate::http::percent_encode(v)));
            }
        }
        format!("{here}?{}", q.join("&"))
    };
    html! {
        @if let Some(n) = n.filter(|_| !w.can_edit) {
            p.error role="alert" data-form=(n.form) { (n.message) }
        }
        form.search method="get" action=(here) {
            label { "Name" input name="name" value=(f.name); }
            label { "Tag" input name="tag" value=(f.tag); }
            label { "Status" select name="status" {
                @for st in ["", "enabled", "disabled", "all"] { option value=(st) selected[st == f.status] { (if st.is_empty() { "enabled" } else { st }) } }
            } }
            @if k == Kind::Clients {
                label { "Presence" select name="connected" {
                    option value="" selected[f.connected.is_empty()] { "any" }
                    option value="true" selected[f.connected == "true"] { "online" }
                    option value="false" selected[f.connected == "false"] { "offline" }
                } }
            }
            button type="submit" { "Search" }
        }
        table #list data-total=(total) {
            thead { tr {
                th { "Name" } th { "Id" } th { "Tags" } th { "Status" }
                @if k == Kind::Clients { th { "Presence" } th { "Protocol" } }
            } }
            tbody {
                @for e in &rows {
                    tr {
                        td { a href={ (here) "/" (str_of(e, &["id"])) } { (label_of(e)) } }
                        td.id { code { (str_of(e, &["id"])) } }
                        td { (tags_text(e)) }
                        td { span class={ "status " (str_of(e, &["status"])) } { (str_of(e, &["status"])) } }
                        @if k == Kind::Clients {
                            td { (presence(e)) }
                            td { (str_of(e, &["protocol"])) }
                        }
                    }
                }
            }
        }
        (pager(total, offset, rows.len(), page_link))
        @if w.can_edit {
            section {
                h2 { "Create a " (k.one()) }
                (notice_for(n, "create"))
                form #create method="post" action=(here) {
                    (csrf(s))
                    input type="hidden" name="action" value="create";
                    label { "Name" input name="name" required value=(kept(n, "create", "name", "")) aria-invalid=[bad(n, "create", "name")]; }
                    label { "Tags (comma-separated)" input name="tags" value=(kept(n, "create", "tags", "")) aria-invalid=[bad(n, "create", "tags")]; }
                    label { "Metadata (JSON object)" textarea name="metadata" rows="2" aria-invalid=[bad(n, "create", "metadata")] { (kept(n, "create", "metadata", "")) } }
                    @if k == Kind::Clients { label { "Secret (empty: generated)" input name="secret" autocomplete="off"; } }
                    button type="submit" { "Create" }
                }
            }
            section {
                h2 { "Create many from CSV" }
                p.hint { "One " (k.one()) " per line: " code { "name,tags" @if k == Kind::Clients { ",secret" } } " (tags separated by semicolons; a header line " code { "name,…" } " is skipped; at most " (super::MAX_CSV_ROWS) " rows)." }
                (notice_for(n, "bulk"))
                form #bulk method="post" action=(here) {
                    (csrf(s))
                    input type="hidden" name="action" value="bulk";
                    label { "CSV file" input #csv-file type="file" accept=".csv,text/csv"; }
                    label { "or paste it" textarea #csv name="csv" rows="5" {} }
                    button type="submit" { "Create all" }
                }
                @if let Some(rows) = bulk {
                    table #bulk-result {
                        thead { tr { th { "Line" } th { "Name" } th { "Result" } } }
                        tbody {
                            @for r in rows {
                                tr {
                                    td { (r.line) }
                                    td { (r.name) }
                                    @match &r.result {
                                        Ok(id) => td.ok { "created " a href={ (here) "/" (id) } { code { (id) } } },
                                        Err(e) => td.error { (e) },
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_encoding() {
        assert_eq!(when("2026-11-24T08:58:02.205874Z"), "2026-11-24 08:58:02 UTC");
        assert_eq!(when("0001-01-01T00:00:00Z"), "never");
        assert_eq!(crate::http::percent_encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn values_are_escaped() {
        let m = problem("<script>alert(1)</script>");
        assert!(!m.into_string().contains("<script>"));
    }
}
