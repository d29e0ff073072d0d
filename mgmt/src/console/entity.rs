//! The console's pages and actions on domains, members, clients, channels and groups: each is
//! the REST calls the user's own token may make, rendered by `pages`.

use super::*;

impl Cx {
    pub(super) async fn create_domain(&self, form: &Form) -> Result<String, ApiError> {
        let mut body = json!({"name": form.get("name")});
        if !form.get("route").is_empty() {
            body["route"] = json!(form.get("route"));
        }
        let d = self.api(Method::POST, "/domains", &[], Some(body)).await?;
        Ok(str_of(&d, &["id"]).to_string())
    }

    pub(super) async fn domains_page(&self, notice: Option<Notice>) -> Result<Reply, ApiError> {
        let list = self.get_json("/domains", &[("limit", "100".into())]).await?;
        Ok(self.page(
            StatusCode::OK,
            "Domains",
            None,
            pages::domains(&self.s, &list, notice.as_ref()),
        ))
    }

    pub(super) async fn members_page(&self, d: &str, req: &Request, notice: Option<Notice>) -> Result<Reply, ApiError> {
        let w = self.where_in(d).await?;
        let offset = req.q("offset").unwrap_or("0").to_string();
        let list = self
            .get_json(
                &format!("/domains/{d}/users"),
                &[("limit", "100".into()), ("offset", offset)],
            )
            .await?;
        let body = pages::members(&self.s, d, &w, &list, notice.as_ref());
        Ok(self.page(StatusCode::OK, "Members", Some((d, &w)), body))
    }

    pub(super) async fn members_action(&self, d: &str, form: &Form) -> Result<(), ApiError> {
        uuid_ok(d)?;
        match form.get("action") {
            "assign" => {
                let user = self.user_id(form.get("user")).await?;
                let body = json!({"user_ids": [user], "relation": form.get("relation")});
                self.api(Method::POST, &format!("/domains/{d}/users/assign"), &[], Some(body))
                    .await?;
            }
            "unassign" => {
                let body = json!({"user_id": form.get("user")});
                self.api(Method::POST, &format!("/domains/{d}/users/unassign"), &[], Some(body))
                    .await?;
            }
            other => return Err(ApiError::bad(format!("unknown action `{other}`"))),
        }
        Ok(())
    }

    /// A user id from an id or an exact username.
    pub(super) async fn user_id(&self, who: &str) -> Result<String, ApiError> {
        if who.is_empty() {
            return Err(ApiError::bad("name the user: a user id or a username"));
        }
        if uuid::Uuid::parse_str(who).is_ok() {
            return Ok(who.to_string());
        }
        let found = self
            .get_json(
                "/users/search",
                &[("username", who.to_string()), ("limit", "100".into())],
            )
            .await?;
        found["users"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| str_of(u, &["username"]) == who || str_of(u, &["credentials", "username"]) == who)
            .map(|u| str_of(u, &["id"]).to_string())
            .ok_or_else(|| ApiError::NotFound(format!("no user named `{who}`")))
    }

    pub(super) async fn list_page(
        &self,
        d: &str,
        k: Kind,
        req: &Request,
        notice: Option<Notice>,
        bulk: Option<Vec<pages::BulkRow>>,
    ) -> Result<Reply, ApiError> {
        let w = self.where_in(d).await?;
        let mut q: Vec<(&str, String)> = vec![("limit", PAGE.to_string())];
        for key in ["offset", "name", "tag", "status", "connected"] {
            if let Some(v) = req.q(key) {
                if key != "connected" || k == Kind::Clients {
                    q.push((key, v.to_string()));
                }
            }
        }
        let list = self.get_json(&format!("/{d}/{}", k.path()), &q).await?;
        let filters = pages::Filters {
            name: req.q("name").unwrap_or(""),
            tag: req.q("tag").unwrap_or(""),
            status: req.q("status").unwrap_or(""),
            connected: req.q("connected").unwrap_or(""),
        };
        let body = pages::list(&self.s, d, &w, k, &list, &filters, notice.as_ref(), bulk.as_deref());
        Ok(self.page(StatusCode::OK, k.title(), Some((d, &w)), body))
    }

    pub(super) async fn create(&self, d: &str, k: Kind, form: &Form) -> Result<String, ApiError> {
        let mut body = json!({
            "name": form.get("name"),
            "tags": tags(form.get("tags")),
            "metadata": metadata(form.get("metadata"))?,
        });
        if k == Kind::Clients && !form.get("secret").is_empty() {
            body["credentials"] = json!({"secret": form.get("secret")});
        }
        let v = self
            .api(Method::POST, &format!("/{d}/{}", k.path()), &[], Some(body))
            .await?;
        Ok(str_of(&v, &["id"]).to_string())
    }

    /// Creates one entity per CSV row; a bad row does not stop the others.
    pub(super) async fn bulk(&self, d: &str, k: Kind, csv: &str) -> Result<Vec<pages::BulkRow>, ApiError> {
        let lines: Vec<&str> = csv.lines().filter(|l| !l.trim().is_empty()).collect();
        let skip_header = lines.first().is_some_and(|l| csv_row(l).0.eq_ignore_ascii_case("name"));
        let lines = &lines[usize::from(skip_header)..];
        if lines.is_empty() {
            return Err(ApiError::bad("the CSV has no rows (one per line: name,tags,secret)"));
        }
        if lines.len() > MAX_CSV_ROWS {
            return Err(ApiError::bad(format!(
                "the CSV has {} rows; at most {MAX_CSV_ROWS} at once",
                lines.len()
            )));
        }
        let mut out = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let (name, tags, secret) = csv_row(line);
            let mut body = json!({"name": name, "tags": tags});
            if k == Kind::Clients && !secret.is_empty() {
                body["credentials"] = json!({"secret": secret});
            }
            let r = self
                .api(Method::POST, &format!("/{d}/{}", k.path()), &[], Some(body))
                .await;
            out.push(pages::BulkRow {
                line: i + 1 + usize::from(skip_header),
                name,
                result: r.map(|v| str_of(&v, &["id"]).to_string()).map_err(|e| e.to_string()),
            });
        }
        Ok(out)
    }

    pub(super) async fn entity_page(
        &self,
        d: &str,
        k: Kind,
        id: &str,
        req: &Request,
        notice: Option<Notice>,
    ) -> Result<Reply, ApiError> {
        let w = self.where_in(d).await?;
        let base = format!("/{d}/{}/{id}", k.path());
        let entity = self.get_json(&base, &[]).await?;
        let mut page = pages::Entity {
            d,
            kind: k,
            entity: &entity,
            show_secret: req.q("secret") == Some("show"),
            confirm: req.q("confirm").unwrap_or(""),
            related: Value::Null,
            choices: Value::Null,
            certs: Value::Null,
            history: Value::Null,
            chart: pages::ChartForm::default(),
            msg_filters: Vec::new(),
        };
        match k {
            Kind::Clients => {
                page.related = self
                    .get_json(&format!("{base}/channels"), &[("limit", "100".into())])
                    .await?;
                if w.can_edit {
                    page.choices = self
                        .get_json(&format!("/{d}/channels"), &[("limit", "100".into())])
                        .await?;
                }
                // Listing certificates may need more than reading the client: say so in place.
                page.certs = match self.get_json(&format!("/{d}/serials/{id}"), &[]).await {
                    Ok(v) => v,
                    Err(e) => json!({"error": e.to_string()}),
                };
            }
            Kind::Channels => {
                page.related = self
                    .get_json(&format!("{base}/clients"), &[("limit", "100".into())])
                    .await?;
                let tz: i64 = req.q("tz").and_then(|t| t.parse().ok()).unwrap_or(0);
                let mut q: Vec<(&str, String)> = vec![("limit", "20".into())];
                for key in std::iter::once("offset").chain(MSG_FILTERS.iter().copied()) {
                    if let Some(v) = req.q(key) {
                        // Times come from date-time pickers: the readers take Unix seconds.
                        let sent = match key {
                            "from" | "to" => times::to_unix(v, tz),
                            _ => Some(v.to_string()),
                        };
                        if let Some(sent) = sent {
                            q.push((key, sent));
                        }
                        page.msg_filters.push((key, v.to_string()));
                    }
                }
                if let Some(tz) = req.q("tz") {
                    page.msg_filters.push(("tz", tz.to_string()));
                }
                page.history = match self.get_json(&format!("/{d}/channels/{id}/messages"), &q).await {
                    Ok(v) => v,
                    Err(e) => json!({"error": e.to_string()}),
                };
                page.chart = pages::ChartForm {
                    name: req.q("chart_name").unwrap_or("").to_string(),
                    from: req.q("chart_from").unwrap_or("").to_string(),
                    to: req.q("chart_to").unwrap_or("").to_string(),
                    from_unix: times::to_unix(req.q("chart_from").unwrap_or(""), tz).unwrap_or_default(),
                    to_unix: times::to_unix(req.q("chart_to").unwrap_or(""), tz).unwrap_or_default(),
                    interval: req.q("chart_interval").unwrap_or("").to_string(),
                    aggregation: req.q("chart_aggregation").unwrap_or("").to_string(),
                };
            }
            Kind::Groups => {}
        }
        let title = label_of(&entity).to_string();
        let body = pages::entity(&self.s, &w, &page, notice.as_ref());
        Ok(self.page(
            StatusCode::OK,
            if title.is_empty() { k.one() } else { &title },
            Some((d, &w)),
            body,
        ))
    }

    pub(super) async fn entity_action(&self, d: &str, k: Kind, id: &str, form: &Form) -> Result<Done, ApiError> {
        let base = format!("/{d}/{}/{id}", k.path());
        match form.get("action") {
            "update" => {
                let mut body = json!({"name": form.get("name"), "metadata": metadata(form.get("metadata"))?});
                if k != Kind::Clients && form.has("description") {
                    body["description"] = json!(form.get("description"));
                }
                self.api(Method::PATCH, &base, &[], Some(body)).await?;
            }
            "tags" => {
                let body = json!({"tags": tags(form.get("tags"))});
                self.api(Method::PATCH, &format!("{base}/tags"), &[], Some(body))
                    .await?;
            }
            a @ ("enable" | "disable") => {
                self.api(Method::POST, &format!("{base}/{a}"), &[], None).await?;
            }
            "delete" => {
                self.api(Method::DELETE, &base, &[], None).await?;
                return Ok(Done::Gone);
            }
            "rotate" if k == Kind::Clients => {
                let body = json!({"secret": crate::clients::random_secret()});
                self.api(Method::PATCH, &format!("{base}/secret"), &[], Some(body))
                    .await?;
            }
            a @ ("connect" | "disconnect") if k != Kind::Groups => {
                let types: Vec<&str> = ["publish", "subscribe"]
                    .into_iter()
                    .filter(|t| a == "disconnect" && !form.has("publish") && !form.has("subscribe") || form.has(t))
                    .collect();
                if types.is_empty() {
                    return Err(ApiError::bad("choose publish, subscribe or both"));
                }
                let other = form.get("other");
                if other.is_empty() {
                    return Err(ApiError::bad(format!(
                        "choose a {}",
                        if k == Kind::Clients { "channel" } else { "client" }
                    )));
                }
                let (clients, channels) = if k == Kind::Clients { (id, other) } else { (other, id) };
                let body = json!({"client_ids": [clients], "channel_ids": [channels], "types": types});
                self.api(Method::POST, &format!("/{d}/channels/{a}"), &[], Some(body))
                    .await?;
            }
            "issue_cert" if k == Kind::Clients => {
                let mut body = json!({"client_id": id});
                if !form.get("ttl").is_empty() {
                    body["ttl"] = json!(form.get("ttl"));
                }
                let cert = self.api(Method::POST, &format!("/{d}/certs"), &[], Some(body)).await?;
                return Ok(Done::Show(pages::issued(d, id, &cert)));
            }
            "revoke_cert" if k == Kind::Clients => {
                let serial = form.get("serial");
                if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(ApiError::bad("no certificate serial given"));
                }
                self.api(Method::DELETE, &format!("/{d}/certs/{serial}"), &[], None)
                    .await?;
            }
            other => return Err(ApiError::bad(format!("unknown action `{other}`"))),
        }
        Ok(Done::Back)
    }
}
