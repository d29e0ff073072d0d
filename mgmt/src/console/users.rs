//! User management in the console: the super-admin lists, creates, enables and disables
//! users and sends them password reset e-mails; everyone changes their own password. Each is
//! the REST call the user's own token may make (the API refuses what it may not).

use super::*;

impl Cx {
    pub(super) async fn users_page(&self, req: &Request, notice: Option<Notice>) -> Result<Reply, ApiError> {
        if !self.s.super_admin {
            return Err(ApiError::Forbidden("only the super-admin manages users".into()));
        }
        let offset = req.q("offset").unwrap_or("0").to_string();
        let name = req.q("name").unwrap_or("").trim().to_string();
        let mut q = vec![("offset", offset), ("limit", PAGE.to_string())];
        if !name.is_empty() {
            q.push(("name", name.clone()));
        }
        let list = self.get_json("/users", &q).await?;
        Ok(self.page(
            StatusCode::OK,
            "Users",
            None,
            pages::users(&self.s, &list, &name, notice.as_ref()),
        ))
    }

    pub(super) async fn users_action(&self, form: &Form) -> Result<(), ApiError> {
        let user = form.get("user");
        match form.get("action") {
            "create" => {
                let body = json!({
                    "first_name": form.get("first_name"),
                    "last_name": form.get("last_name"),
                    "email": form.get("email"),
                    "credentials": {"username": form.get("username"), "secret": form.get("password")},
                });
                self.api(Method::POST, "/users", &[], Some(body)).await?;
            }
            op @ ("enable" | "disable") => {
                uuid_ok(user)?;
                self.api(Method::POST, &format!("/users/{user}/{op}"), &[], None)
                    .await?;
            }
            "reset" => {
                uuid_ok(user)?;
                let u = self.get_json(&format!("/users/{user}"), &[]).await?;
                let email = str_of(&u, &["email"]).to_string();
                self.api(
                    Method::POST,
                    "/password/reset-request",
                    &[],
                    Some(json!({"email": email})),
                )
                .await?;
            }
            other => return Err(ApiError::bad(format!("unknown action `{other}`"))),
        }
        Ok(())
    }

    pub(super) fn account_page(&self, notice: Option<Notice>) -> Reply {
        self.page(
            StatusCode::OK,
            "Your account",
            None,
            pages::account(&self.s, notice.as_ref()),
        )
    }

    pub(super) async fn account_action(&self, form: &Form) -> Result<(), ApiError> {
        if form.get("new_password") != form.get("confirm_password") {
            return Err(ApiError::bad("the new password and its confirmation differ"));
        }
        let body = json!({"old_secret": form.get("old_password"), "new_secret": form.get("new_password")});
        self.api(Method::PATCH, "/users/secret", &[], Some(body)).await?;
        Ok(())
    }
}
