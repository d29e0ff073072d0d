//! A logged-in console request: routing its GET and POST to the pages and actions.

use super::*;

impl Cx {
    /// A REST call with this session's token.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        json_of(internal_raw(&self.ctx, &self.s.access, self.remote, method, path, query, body).await?)
    }

    pub(super) async fn get_json(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ApiError> {
        self.api(Method::GET, path, query, None).await
    }

    /// The caller's standing in a domain, through the REST authorization function.
    pub(super) async fn where_in(&self, d: &str) -> Result<Where, ApiError> {
        uuid_ok(d)?;
        let domain = self.get_json(&format!("/domains/{d}"), &[]).await?;
        let req = Req {
            method: Method::GET,
            segs: Vec::new(),
            query: Vec::new(),
            headers: bearer(&self.s.access)?,
            body: bytes::Bytes::new(),
            remote: self.remote,
            caller: std::sync::OnceLock::new(),
        };
        let caller = crate::auth::caller(&self.ctx, &req).await?;
        let a = authz::authorize(&self.ctx, &caller, d, authz::Action::Read).await?;
        Ok(Where {
            domain,
            can_edit: a.may(authz::Action::Edit),
            can_manage: a.may(authz::Action::Manage),
        })
    }

    pub(super) fn page(&self, status: StatusCode, title: &str, d: Option<(&str, &Where)>, body: maud::Markup) -> Reply {
        html(status, pages::layout(&self.s, title, d, body))
    }

    pub(super) async fn get(&self, segs: &[&str], req: &Request) -> Result<Reply, ApiError> {
        let r = match segs {
            [] => self.domains_page(None).await,
            ["session"] => Reply::ok(&json!({"expires_at": self.s.expires_at})),
            ["ca.pem"] => {
                let mut r = internal_raw(&self.ctx, "", self.remote, Method::GET, "/certs/ca", &[], None).await?;
                r.headers
                    .push(("content-disposition", "attachment; filename=\"fluxgate-ca.pem\"".into()));
                Ok(r)
            }
            ["d", d] => {
                uuid_ok(d)?;
                Ok(redirect(&format!("/console/d/{d}/clients")))
            }
            ["d", d, "members"] => self.members_page(d, req, None).await,
            ["users"] => self.users_page(req, None).await,
            ["account"] => Ok(self.account_page(None)),
            ["d", d, kind] => match Kind::parse(kind) {
                Some(k) => self.list_page(d, k, req, None, None).await,
                None => Err(ApiError::NotFound("no such page".into())),
            },
            ["d", d, "channels", id, "live"] => {
                uuid_ok(d)?;
                let path = format!("/{d}/channels/{id}/messages/live");
                let r = internal_raw(&self.ctx, &self.s.access, self.remote, Method::GET, &path, &[], None).await;
                return Ok(as_api(r));
            }
            ["d", d, "channels", id, "chart.svg"] => {
                uuid_ok(d)?;
                let path = format!("/{d}/channels/{id}/messages/chart.svg");
                let q: Vec<(&str, String)> = ["name", "from", "to", "interval", "aggregation"]
                    .iter()
                    .filter_map(|k| req.q(k).map(|v| (*k, v.to_string())))
                    .collect();
                let r = internal_raw(&self.ctx, &self.s.access, self.remote, Method::GET, &path, &q, None).await;
                return Ok(as_api(r));
            }
            ["d", d, kind, id] => match Kind::parse(kind) {
                Some(k) => self.entity_page(d, k, id, req, None).await,
                None => Err(ApiError::NotFound("no such page".into())),
            },
            _ => Err(ApiError::NotFound("no such page".into())),
        };
        self.or_error_page(r)
    }

    /// Errors of a page become a page; a token that stopped working ends the session.
    pub(super) fn or_error_page(&self, r: Result<Reply, ApiError>) -> Result<Reply, ApiError> {
        match r {
            Err(ApiError::Unauthorized(_)) => {
                self.ctx.console.end(&self.s.id);
                Ok(redirect("/console/login"))
            }
            Err(e) => Ok(self.page(e.status(), "Error", None, pages::problem(&e.to_string()))),
            ok => ok,
        }
    }

    pub(super) async fn post(&self, segs: &[&str], req: &Request, form: Form) -> Result<Reply, ApiError> {
        let action = form.get("action").to_string();
        let notice = |e: &ApiError| Notice::new(&form, &action, e);
        let r = match segs {
            ["logout"] => {
                // Revoke the token family first: the tokens die even if the cookie survives.
                let _ = self.api(Method::POST, "/users/tokens/revoke", &[], None).await;
                self.ctx.console.end(&self.s.id);
                return Ok(redirect("/console/login")
                    .with_header("set-cookie", session::expired(session::COOKIE, self.ctx.cfg.tls)));
            }
            ["domains"] => match self.create_domain(&form).await {
                Ok(d) => Ok(redirect(&format!("/console/d/{d}/clients"))),
                Err(e) => self.domains_page(Some(notice(&e))).await.map(|r| status(r, &e)),
            },
            ["users"] => match self.users_action(&form).await {
                Ok(()) => Ok(redirect("/console/users")),
                Err(e) => self.users_page(req, Some(notice(&e))).await.map(|r| status(r, &e)),
            },
            ["account"] => match self.account_action(&form).await {
                // A new password ends every session of the user (its tokens are revoked).
                Ok(()) => {
                    self.ctx.console.end(&self.s.id);
                    return Ok(redirect("/console/login")
                        .with_header("set-cookie", session::expired(session::COOKIE, self.ctx.cfg.tls)));
                }
                Err(e) => Ok(status(self.account_page(Some(notice(&e))), &e)),
            },
            ["d", d, "members"] => match self.members_action(d, &form).await {
                Ok(()) => Ok(redirect(&format!("/console/d/{d}/members"))),
                Err(e) => self.members_page(d, req, Some(notice(&e))).await.map(|r| status(r, &e)),
            },
            ["d", d, kind] => {
                let k = Kind::parse(kind).ok_or_else(|| ApiError::NotFound("no such page".into()))?;
                uuid_ok(d)?;
                match action.as_str() {
                    "bulk" => {
                        let rows = self.bulk(d, k, form.get("csv")).await;
                        match rows {
                            Ok(rows) => self.list_page(d, k, req, None, Some(rows)).await,
                            Err(e) => self
                                .list_page(d, k, req, Some(notice(&e)), None)
                                .await
                                .map(|r| status(r, &e)),
                        }
                    }
                    _ => match self.create(d, k, &form).await {
                        Ok(id) => Ok(redirect(&format!("/console/d/{d}/{}/{id}", k.path()))),
                        Err(e) => self
                            .list_page(d, k, req, Some(notice(&e)), None)
                            .await
                            .map(|r| status(r, &e)),
                    },
                }
            }
            ["d", d, kind, id] => {
                let k = Kind::parse(kind).ok_or_else(|| ApiError::NotFound("no such page".into()))?;
                uuid_ok(d)?;
                match self.entity_action(d, k, id, &form).await {
                    Ok(Done::Back) => Ok(redirect(&format!("/console/d/{d}/{}/{id}", k.path()))),
                    Ok(Done::Gone) => Ok(redirect(&format!("/console/d/{d}/{}", k.path()))),
                    Ok(Done::Show(page)) => Ok(self.page(StatusCode::OK, "Certificate issued", None, page)),
                    Err(e) => self
                        .entity_page(d, k, id, req, Some(notice(&e)))
                        .await
                        .map(|r| status(r, &e)),
                }
            }
            _ => Err(ApiError::NotFound("no such page".into())),
        };
        self.or_error_page(r)
    }
}
