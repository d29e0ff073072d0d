//! The page of one client, channel or group: its details and edit forms, and what belongs to
//! it (a client's connections, presence and certificates; a channel's live view, chart,
//! history and clients).

use super::*;

/// The chart form's fields.
#[derive(Default)]
pub struct ChartForm {
    pub name: String,
    /// As typed (a picker's local time) and as the chart takes it (Unix seconds).
    pub from: String,
    pub to: String,
    pub from_unix: String,
    pub to_unix: String,
    pub interval: String,
    pub aggregation: String,
}

/// Everything an entity page shows.
pub struct Entity<'a> {
    pub d: &'a str,
    pub kind: Kind,
    pub entity: &'a Value,
    pub show_secret: bool,
    pub confirm: &'a str,
    /// A client's channels or a channel's clients, with their connection types.
    pub related: Value,
    /// Channels a client may be connected to.
    pub choices: Value,
    pub certs: Value,
    pub history: Value,
    pub chart: ChartForm,
    pub msg_filters: Vec<(&'static str, String)>,
}

fn action_button(s: &Session, here: &str, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(here) {
            (csrf(s))
            input type="hidden" name="action" value=(action);
            button class=(class) type="submit" id={ "do-" (action) } { (label) }
        }
    }
}

pub fn entity(s: &Session, w: &Where, p: &Entity, n: Option<&Notice>) -> Markup {
    let e = p.entity;
    let k = p.kind;
    let id = str_of(e, &["id"]);
    let here = format!("/console/d/{}/{}/{id}", p.d, k.path());
    let status = str_of(e, &["status"]);
    html! {
        p { a href={ "/console/d/" (p.d) "/" (k.path()) } { "← all " (k.path()) } }
        // Errors of forms this caller is not shown (a forged request) still show, at the top.
        @if let Some(n) = n.filter(|n| !w.can_edit || ["enable", "disable", "delete", "rotate"].contains(&n.form.as_str())) {
            p.error role="alert" data-form=(n.form) { (n.message) }
        }
        dl.details {
            dt { "Id" } dd { code #entity-id { (id) } }
            dt { "Status" } dd { span class={ "status " (status) } #status { (status) } }
            dt { "Tags" } dd { (tags_text(e)) }
            @let desc = str_of(e, &["description"]);
            @if !desc.is_empty() { dt { "Description" } dd { (desc) } }
            dt { "Metadata" } dd { pre { (metadata_text(e)) } }
            dt { "Created" } dd { (when(str_of(e, &["created_at"]))) }
        }
        @if k == Kind::Clients { (client_parts(s, w, p, &here, n)) }
        @if k == Kind::Channels { (channel_parts(s, w, p, &here, n)) }
        @if w.can_edit {
            @if p.confirm == "delete" {
                section.confirm {
                    p { "Delete " (k.one()) " " strong { (label_of(e)) } "? This cannot be undone." }
                    (action_button(s, &here, "delete", "Yes, delete", "danger"))
                    " " a href=(here) { "Cancel" }
                }
            }
            section #edit {
                h2 { "Edit" }
                (notice_for(n, "update"))
                form #update method="post" action=(here) {
                    (csrf(s))
                    input type="hidden" name="action" value="update";
                    label { "Name" input name="name" value=(kept(n, "update", "name", str_of(e, &["name"]))) aria-invalid=[bad(n, "update", "name")]; }
                    @if k != Kind::Clients { label { "Description" input name="description" value=(kept(n, "update", "description", desc)) aria-invalid=[bad(n, "update", "description")]; } }
                    label { "Metadata (JSON object)" textarea name="metadata" rows="3" aria-invalid=[bad(n, "update", "metadata")] { (kept(n, "update", "metadata", &metadata_text(e))) } }
                    button type="submit" { "Save" }
                }
                (notice_for(n, "tags"))
                form #tags method="post" action=(here) {
                    (csrf(s))
                    input type="hidden" name="action" value="tags";
                    label { "Tags (comma-separated)" input name="tags" value=(kept(n, "tags", "tags", &tags_text(e))) aria-invalid=[bad(n, "tags", "tags")]; }
                    button type="submit" { "Save tags" }
                }
                p.actions {
                    @if status == "enabled" {
                        (action_button(s, &here, "disable", "Disable", ""))
                    } @else {
                        (action_button(s, &here, "enable", "Enable", ""))
                    }
                    " " a.danger #delete href={ (here) "?confirm=delete" } { "Delete…" }
                }
            }
        }
    }
}

fn rights(v: &Value) -> String {
    v.get("connection_types")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" + "))
        .unwrap_or_default()
}

fn client_parts(s: &Session, w: &Where, p: &Entity, here: &str, n: Option<&Notice>) -> Markup {
    let e = p.entity;
    let secret = str_of(e, &["credentials", "secret"]);
    let sessions = items(e, "sessions");
    let channels = items(&p.related, "channels");
    let choices = items(&p.choices, "channels");
    let certs = items(&p.certs, "certs");
    html! {
        section #presence {
            h2 { "Presence" }
            p { (presence(e)) }
            @let remote = str_of(e, &["remote_addr"]);
            @if !remote.is_empty() { p { "Last remote address " code #remote { (remote) } " over " span #protocol { (str_of(e, &["protocol"])) } } }
            @if !sessions.is_empty() {
                table #sessions {
                    thead { tr { th { "MQTT client id" } th { "Remote" } th { "Protocol" } th { "Since" } } }
                    tbody { @for x in &sessions { tr {
                        td { code { (str_of(x, &["client_id"])) } }
                        td { (str_of(x, &["remote_addr"])) }
                        td { (str_of(x, &["protocol"])) }
                        td { (when(str_of(x, &["connected_at"]))) }
                    } } }
                }
            }
        }
        @if !secret.is_empty() {
            section #secret {
                h2 { "Secret" }
                (notice_for(n, "rotate"))
                @if p.show_secret {
                    p { code #secret-value { (secret) } " " a href=(here) { "Hide" } }
                } @else {
                    p { a #show-secret href={ (here) "?secret=show" } { "Show secret" } }
                }
                @if w.can_edit {
                    @if p.confirm == "rotate" {
                        div.confirm {
                            p { "Rotate the secret? Devices using the old one are disconnected and cannot log in again." }
                            (action_button(s, here, "rotate", "Yes, rotate", "danger"))
                            " " a href=(here) { "Cancel" }
                        }
                    } @else {
                        p { a #rotate href={ (here) "?confirm=rotate" } { "Rotate secret…" } }
                    }
                }
            }
        }
        section #connections {
            h2 { "Channels" }
            (notice_for(n, "disconnect"))
            @if channels.is_empty() { p { "Not connected to any channel." } } @else {
                table #connected {
                    thead { tr { th { "Channel" } th { "Rights" } @if w.can_edit { th {} } } }
                    tbody { @for c in &channels { tr {
                        td { a href={ "/console/d/" (p.d) "/channels/" (str_of(c, &["id"])) } { (label_of(c)) } }
                        td { (rights(c)) }
                        @if w.can_edit { td {
                            form.inline method="post" action=(here) {
                                (csrf(s))
                                input type="hidden" name="action" value="disconnect";
                                input type="hidden" name="other" value=(str_of(c, &["id"]));
                                button type="submit" { "Disconnect" }
                            }
                        } }
                    } } }
                }
            }
            @if w.can_edit {
                (notice_for(n, "connect"))
                form #connect method="post" action=(here) {
                    (csrf(s))
                    input type="hidden" name="action" value="connect";
                    label { "Channel" select name="other" {
                        @for c in &choices { option value=(str_of(c, &["id"])) { (label_of(c)) } }
                    } }
                    label.check { input type="checkbox" name="publish" checked; "publish" }
                    label.check { input type="checkbox" name="subscribe" checked; "subscribe" }
                    button type="submit" { "Connect" }
                }
            }
        }
        section #certificates {
            h2 { "Certificates" }
            (notice_for(n, "revoke_cert"))
            @if let Some(err) = p.certs.get("error").and_then(Value::as_str) {
                p.hint { "Certificates: " (err) }
            } @else if certs.is_empty() { p { "No certificates." } } @else {
                table {
                    thead { tr { th { "Serial" } th { "Expires" } th { "State" } @if w.can_edit { th {} } } }
                    tbody { @for c in &certs {
                        @let revoked = c.get("revoked").and_then(Value::as_bool).unwrap_or(false);
                        tr {
                            td { code { (str_of(c, &["serial"])) } }
                            td { (when(str_of(c, &["expire"]))) }
                            td { @if revoked { "revoked" } @else { "valid" } }
                            @if w.can_edit { td { @if !revoked {
                                form.inline method="post" action=(here) {
                                    (csrf(s))
                                    input type="hidden" name="action" value="revoke_cert";
                                    input type="hidden" name="serial" value=(str_of(c, &["serial"]));
                                    button.danger type="submit" { "Revoke" }
                                }
                            } } }
                        }
                    } }
                }
            }
            @if w.can_edit {
                (notice_for(n, "issue_cert"))
                form #issue-cert method="post" action=(here) {
                    (csrf(s))
                    input type="hidden" name="action" value="issue_cert";
                    label { "Valid for (e.g. 8760h)" input name="ttl" placeholder="8760h"; }
                    button type="submit" { "Issue certificate" }
                }
            }
            p { a href="/console/ca.pem" { "Download the CA certificate" } }
        }
    }
}

fn channel_parts(s: &Session, w: &Where, p: &Entity, here: &str, n: Option<&Notice>) -> Markup {
    let clients = items(&p.related, "clients");
    let d = p.d;
    let id = str_of(p.entity, &["id"]);
    let c = &p.chart;
    let chart_src = (!c.name.is_empty()).then(|| {
        let mut q = vec![format!("name={}", crate::http::percent_encode(&c.name))];
        for (k, v) in [
            ("from", &c.from_unix),
            ("to", &c.to_unix),
            ("interval", &c.interval),
            ("aggregation", &c.aggregation),
        ] {
            if !v.is_empty() {
                q.push(format!("{k}={}", crate::http::percent_encode(v)));
            }
        }
        format!("{here}/chart.svg?{}", q.join("&"))
    });
    let msgs = items(&p.history, "messages");
    html! {
        section #live-section {
            h2 { "Live messages" }
            p.hint #live-state { "connecting…" }
            table #live data-src={ (here) "/live" } {
                thead { tr { th { "Received" } th { "Publisher" } th { "Subtopic" } th { "Protocol" } th { "Name" } th { "Value" } th { "Unit" } th { "Time" } } }
                tbody {}
            }
        }
        section #chart-section {
            h2 { "Chart" }
            form.search #chart-form method="get" action=(here) {
                label { "Measurement name" input name="chart_name" value=(c.name) required; }
                label { "From" input type="datetime-local" step="1" name="chart_from" value=(crate::console::times::picker(&c.from)); }
                label { "To" input type="datetime-local" step="1" name="chart_to" value=(crate::console::times::picker(&c.to)); }
                label { "Interval (e.g. 10s, 1m, 1h)" input name="chart_interval" value=(c.interval); }
                label { "Aggregation" select name="chart_aggregation" {
                    @for a in ["", "avg", "min", "max", "sum", "count"] { option value=(a) selected[a == c.aggregation] { (if a.is_empty() { "avg" } else { a }) } }
                } }
                button type="submit" { "Draw" }
            }
            @if let Some(src) = chart_src {
                p.error #chart-error hidden {}
                img #chart src=(src) alt={ "Chart of " (c.name) };
            }
        }
        section #history {
            h2 { "History" }
            form.search method="get" action=(here) {
                @for key in crate::console::MSG_FILTERS {
                    @let v = p.msg_filters.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str());
                    @if matches!(*key, "from" | "to") {
                        label { (key) input type="datetime-local" step="1" name=(key) value=(crate::console::times::picker(v)); }
                    } @else {
                        label { (key) input name=(key) value=(v); }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if let Some(err) = p.history.get("error").and_then(Value::as_str) {
                p.error role="alert" { (err) }
            } @else {
                table #messages {
                    thead { tr { th { "Time" } th { "Publisher" } th { "Subtopic" } th { "Protocol" } th { "Name" } th { "Value" } th { "Unit" } } }
                    tbody { @for m in &msgs { tr {
                        td { @if let Some(t) = m.get("time").and_then(Value::as_f64).and_then(crate::console::times::iso) { time datetime=(t) data-local { (t) } } }
                        td { code { (str_of(m, &["publisher"])) } }
                        td { (str_of(m, &["subtopic"])) }
                        td { (str_of(m, &["protocol"])) }
                        td { (str_of(m, &["name"])) }
                        td { (value_cell(m)) }
                        td { (str_of(m, &["unit"])) }
                    } } }
                }
                @let total = p.history.get("total").and_then(Value::as_u64).unwrap_or(0);
                @let offset = p.history.get("offset").and_then(Value::as_u64).unwrap_or(0);
                @let link = |off: u64| {
                    let mut q: Vec<String> = p.msg_filters.iter().filter(|(k, _)| *k != "offset").map(|(k, v)| format!("{k}={}", crate::http::percent_encode(v))).collect();
                    q.push(format!("offset={off}"));
                    format!("{here}?{}#history", q.join("&"))
                };
                p.pager {
                    (total) " messages in all"
                    @if offset > 0 { " " a href=(link(offset.saturating_sub(20))) { "← newer" } }
                    @if offset + (msgs.len() as u64) < total { " " a href=(link(offset + 20)) { "older →" } }
                }
            }
        }
        section #clients {
            h2 { "Clients and their rights" }
            (notice_for(n, "disconnect"))
            @if clients.is_empty() { p { "No client is connected to this channel." } } @else {
                table #channel-clients {
                    thead { tr { th { "Client" } th { "Rights" } th { "Presence" } @if w.can_edit { th {} } } }
                    tbody { @for x in &clients { tr {
                        td { a href={ "/console/d/" (d) "/clients/" (str_of(x, &["id"])) } { (label_of(x)) } }
                        td { (rights(x)) }
                        td { (presence(x)) }
                        @if w.can_edit { td {
                            form.inline method="post" action=(here) {
                                (csrf(s))
                                input type="hidden" name="action" value="disconnect";
                                input type="hidden" name="other" value=(str_of(x, &["id"]));
                                button type="submit" { "Disconnect" }
                            }
                        } }
                    } } }
                }
            }
        }
        span hidden data-channel=(id) {}
    }
}

/// A stored message's value: a SenML record's value, or the payload of a JSON message
/// (pretty-printed) or a raw one (as text).
fn value_cell(m: &Value) -> Markup {
    let senml = ["value", "string_value", "bool_value", "data_value"]
        .iter()
        .find_map(|k| m.get(*k));
    html! {
        @match (senml, m.get("payload")) {
            (Some(Value::String(s)), _) => (s),
            (Some(v), _) => (v.to_string()),
            (None, Some(Value::String(raw))) => pre.payload { (raw) },
            (None, Some(json)) => pre.payload { (serde_json::to_string_pretty(json).unwrap_or_default()) },
            (None, None) => "",
        }
    }
}

/// The page that shows an issued certificate and its key, once.
pub fn issued(d: &str, client: &str, cert: &Value) -> Markup {
    let crt = str_of(cert, &["client_cert"]);
    let key = str_of(cert, &["client_key"]);
    let data = |pem: &str| {
        use base64::Engine;
        format!(
            "data:application/x-pem-file;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(pem)
        )
    };
    html! {
        p.warning { "The private key is shown this once and is not stored. Download both now." }
        p { "Serial " code { (str_of(cert, &["serial"])) } ", expires " (when(str_of(cert, &["expire"]))) }
        p {
            a download="client.crt" href=(data(crt)) { "Download certificate" }
            " · "
            a download="client.key" href=(data(key)) { "Download private key" }
        }
        details { summary { "Certificate (PEM)" } pre { (crt) } }
        p { a href={ "/console/d/" (d) "/clients/" (client) } { "Back to the client" } }
    }
}
