//! The super-admin's user list and forms, and a user's own account page.

use super::*;

/// The users page: search, a page of users with their actions, and the create form.
pub fn users(s: &Session, list: &Value, name: &str, n: Option<&Notice>) -> Markup {
    let rows = items(list, "users");
    let total = list.get("total").and_then(Value::as_u64).unwrap_or(0);
    let offset = list.get("offset").and_then(Value::as_u64).unwrap_or(0);
    let link = |off: u64| format!("/console/users?offset={off}&name={}", crate::http::percent_encode(name));
    html! {
        form.search method="get" action="/console/users" {
            label { "Name or username" input name="name" value=(name); }
            button type="submit" { "Search" }
        }
        (notice_for(n, "enable"))
        (notice_for(n, "disable"))
        (notice_for(n, "reset"))
        table #users {
            thead { tr { th { "Username" } th { "Name" } th { "E-mail" } th { "Role" } th { "Status" } th {} } }
            tbody { @for u in &rows {
                @let id = str_of(u, &["id"]);
                @let enabled = str_of(u, &["status"]) == "enabled";
                tr {
                    td { (str_of(u, &["credentials", "username"])) }
                    td { (str_of(u, &["first_name"])) " " (str_of(u, &["last_name"])) }
                    td { (str_of(u, &["email"])) }
                    td { (str_of(u, &["role"])) }
                    td { span class={ "status " (str_of(u, &["status"])) } { (str_of(u, &["status"])) } }
                    td {
                        @if id != s.user_id {
                            form.inline method="post" action="/console/users" {
                                (csrf(s))
                                input type="hidden" name="user" value=(id);
                                @if enabled {
                                    button type="submit" name="action" value="disable" { "Disable" }
                                } @else {
                                    button type="submit" name="action" value="enable" { "Enable" }
                                }
                            }
                        }
                        form.inline method="post" action="/console/users" {
                            (csrf(s))
                            input type="hidden" name="user" value=(id);
                            button type="submit" name="action" value="reset" title="E-mail the user a password reset link" { "Send password reset" }
                        }
                    }
                }
            } }
        }
        (pager(total, offset, rows.len(), link))
        section {
            h2 { "Create a user" }
            (notice_for(n, "create"))
            form #create-user method="post" action="/console/users" {
                (csrf(s))
                input type="hidden" name="action" value="create";
                label { "First name" input name="first_name" required value=(kept(n, "create", "first_name", "")); }
                label { "Last name" input name="last_name" required value=(kept(n, "create", "last_name", "")); }
                label { "E-mail" input type="email" name="email" required value=(kept(n, "create", "email", "")); }
                label { "Username" input name="username" required value=(kept(n, "create", "username", "")); }
                label { "Password (at least 8 characters)" input type="password" name="password" required minlength="8" autocomplete="new-password"; }
                button type="submit" { "Create" }
            }
        }
    }
}

/// A user's own account: who they are, and the password form.
pub fn account(s: &Session, n: Option<&Notice>) -> Markup {
    html! {
        p { "Logged in as " strong { (s.username) } @if s.super_admin { " (super-admin)" } "." }
        section {
            h2 { "Change your password" }
            p.hint { "Every session of yours ends with the change: log in again with the new password." }
            (notice_for(n, "password"))
            form #password method="post" action="/console/account" {
                (csrf(s))
                input type="hidden" name="action" value="password";
                label { "Current password" input type="password" name="old_password" required autocomplete="current-password"; }
                label { "New password (at least 8 characters)" input type="password" name="new_password" required minlength="8" autocomplete="new-password"; }
                label { "New password again" input type="password" name="confirm_password" required minlength="8" autocomplete="new-password"; }
                button type="submit" { "Change password" }
            }
        }
    }
}
