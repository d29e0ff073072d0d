//! The web console without a browser: its session cookie, CSRF tokens, that it can do only
//! what the caller's REST token may, and that switched off it serves nothing.

use crate::helpers::{TestApp, ADMIN_PASSWORD};
use reqwest::header::{HeaderMap, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;

/// A browser without JavaScript: keeps cookies by hand, follows no redirect.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    /// The value of the first `name="csrf"` field.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + 19;
        self.body[at..].split('"').next().expect("value").to_string()
    }
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect()
    }
}

impl Browser {
    pub fn new(app: &TestApp) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: app.url.clone(),
            cookies: Vec::new(),
        }
    }

    fn keep(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Some((name, value)) = v
                .to_str()
                .ok()
                .and_then(|c| c.split(';').next())
                .and_then(|kv| kv.split_once('='))
            else {
                continue;
            };
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, r: reqwest::RequestBuilder) -> Page {
        let r = if self.cookies.is_empty() {
            r
        } else {
            r.header(COOKIE, self.cookie_header())
        };
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        self.keep(&headers);
        let body = resp.text().await.expect("body");
        Page { status, headers, body }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let r = self.http.get(format!("{}{path}", self.base));
        self.send(r).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(
                form.iter()
                    .map(|(k, v)| format!("{k}={}", mgmt::http::percent_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        self.send(r).await
    }

    /// Logs in through the form; returns the answer to the form's POST.
    pub async fn login(&mut self, identity: &str, password: &str) -> Page {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let token = form.csrf();
        self.post(
            "/console/login",
            &[("csrf", &token), ("identity", identity), ("password", password)],
        )
        .await
    }

    /// The CSRF token of a page.
    pub async fn csrf(&mut self, path: &str) -> String {
        let p = self.get(path).await;
        assert_eq!(p.status, 200, "{path}: {}", p.body);
        p.csrf()
    }
}

#[tokio::test]
async fn login_sets_a_strict_httponly_session_cookie_that_pages_require() {
    let app = TestApp::spawn().await;
    let mut b = Browser::new(&app);
    let root = b.get("/").await;
    assert_eq!((root.status, root.location()), (303, "/console/"));
    // No session: pages send the browser to the login form.
    let p = b.get("/console/").await;
    assert_eq!((p.status, p.location()), (303, "/console/login"));

    let bad = b.login("admin", "wrong-password").await;
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("invalid identity or secret"), "{}", bad.body);
    assert!(b.cookies.iter().all(|(n, _)| n != "fg_session"));

    let ok = b.login("admin", ADMIN_PASSWORD).await;
    assert_eq!((ok.status, ok.location()), (303, "/console/"), "{}", ok.body);
    let cookies = ok.set_cookies();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("fg_session="))
        .expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(session.contains(flag), "{flag} missing: {session}");
    }
    assert!(!session.contains("Secure"), "plain HTTP: not Secure ({session})");
    // The cookie is opaque: no token in it.
    assert!(!session.contains("eyJ"), "{session}");

    let home = b.get("/console/").await;
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(home.body.contains("Create a domain"));
    let csp = home.headers.get("content-security-policy").expect("csp");
    assert!(csp.to_str().expect("s").contains("default-src 'self'"));
    let css = b.get("/console/assets/console.css").await;
    assert_eq!(css.status, 200);
}

async fn domain_count(app: &TestApp, token: &str) -> Option<u64> {
    app.get("/domains", token).await.1["total"].as_u64()
}

#[tokio::test]
async fn state_changing_requests_without_the_csrf_token_are_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut b = Browser::new(&app);
    b.login("admin", ADMIN_PASSWORD).await;
    let token = b.csrf("/console/").await;
    for forged in [vec![], vec![("csrf", "0".repeat(64))]] {
        let mut form: Vec<(&str, &str)> = vec![("name", "Forged"), ("action", "create_domain")];
        form.extend(forged.iter().map(|(k, v)| (*k, v.as_str())));
        let p = b.post("/console/domains", &form).await;
        assert_eq!(p.status, 403, "{}", p.body);
        assert!(p.body.contains("CSRF"), "{}", p.body);
    }
    assert_eq!(domain_count(&app, &admin).await, Some(0), "nothing was created");
    // A token from another session does not do either.
    let mut other = Browser::new(&app);
    other.login("admin", ADMIN_PASSWORD).await;
    let theirs = other.csrf("/console/").await;
    let p = b.post("/console/domains", &[("csrf", &theirs), ("name", "X")]).await;
    assert_eq!(p.status, 403);

    let p = b
        .post(
            "/console/domains",
            &[("csrf", &token), ("name", "Plant"), ("route", "plant")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(p.location().starts_with("/console/d/"), "{}", p.location());
    assert_eq!(domain_count(&app, &admin).await, Some(1));

    // The login form has its own token: a cross-site login post is refused.
    let mut fresh = Browser::new(&app);
    let p = fresh
        .post("/console/login", &[("identity", "admin"), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(fresh.cookies.iter().all(|(n, _)| n != "fg_session"));
}

#[tokio::test]
async fn a_viewer_sees_no_edit_controls_and_a_forged_edit_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let d = app.domain(&admin, "plant").await;
    let (viewer_id, _) = app.user("vera").await;
    app.assign(&admin, &d, &viewer_id, "viewer").await;
    let c = app.client(&admin, &d, json!({"name": "t1"})).await;
    let id = c["id"].as_str().expect("id").to_string();

    let mut b = Browser::new(&app);
    b.login("vera", "vera-password").await;
    let page = b.get(&format!("/console/d/{d}/clients/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("t1"));
    for control in [
        "id=\"update\"",
        "id=\"do-disable\"",
        "id=\"delete\"",
        "id=\"connect\"",
        "id=\"show-secret\"",
    ] {
        assert!(!page.body.contains(control), "a viewer sees {control}");
    }
    let list = b.get(&format!("/console/d/{d}/clients")).await;
    assert!(!list.body.contains("id=\"create\""), "a viewer sees the create form");

    let token = page.csrf();
    let p = b
        .post(
            &format!("/console/d/{d}/clients/{id}"),
            &[("csrf", &token), ("action", "update"), ("name", "renamed")],
        )
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(p.body.contains("role=\"alert\""), "the refusal is shown: {}", p.body);
    let p = b
        .post(
            &format!("/console/d/{d}/clients/{id}"),
            &[("csrf", &token), ("action", "delete")],
        )
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    let (s, v) = app.get(&format!("/{d}/clients/{id}"), &admin).await;
    assert_eq!((s, v["name"].as_str()), (200, Some("t1")), "unchanged");

    // Another tenant's domain is not reachable through the console either.
    let other = app.domain(&admin, "other").await;
    let p = b.get(&format!("/console/d/{other}/clients")).await;
    assert_eq!(p.status, 403, "{}", p.body);
}

#[tokio::test]
async fn an_editor_manages_clients_and_errors_show_next_to_the_form() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let d = app.domain(&admin, "plant").await;
    let mut b = Browser::new(&app);
    b.login("admin", ADMIN_PASSWORD).await;
    let list = format!("/console/d/{d}/clients");
    let token = b.csrf(&list).await;
    // Bad metadata: a 400 page with the message by the create form, and nothing created.
    let p = b
        .post(
            &list,
            &[
                ("csrf", &token),
                ("action", "create"),
                ("name", "t1"),
                ("metadata", "{oops"),
            ],
        )
        .await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("data-form=\"create\""), "{}", p.body);
    assert!(p.body.contains("metadata is not valid JSON"), "{}", p.body);
    assert_eq!(app.get(&format!("/{d}/clients"), &admin).await.1["total"], 0);

    let p = b
        .post(
            &list,
            &[("csrf", &token), ("action", "create"), ("name", "t1"), ("tags", "a, b")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let id = p.location().rsplit('/').next().expect("id").to_string();
    let (_, c) = app.get(&format!("/{d}/clients/{id}"), &admin).await;
    assert_eq!(c["tags"], json!(["a", "b"]));

    // Bulk from CSV: one result per row, a bad row does not stop the others.
    let csv = "name,tags,secret\nt2,x;y,\nt3,,short\nt4,,";
    let p = b
        .post(&list, &[("csrf", &token), ("action", "bulk"), ("csv", csv)])
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body.matches("created ").count(), 2, "{}", p.body);
    assert!(p.body.contains("client secret must be"), "{}", p.body);
    assert_eq!(app.get(&format!("/{d}/clients"), &admin).await.1["total"], 3);
    // Groups too (name and tags).
    let groups = format!("/console/d/{d}/groups");
    let p = b
        .post(&groups, &[("csrf", &token), ("action", "bulk"), ("csv", "g1,x\ng2")])
        .await;
    assert_eq!(p.body.matches("created ").count(), 2, "{}", p.body);
    assert_eq!(app.get(&format!("/{d}/groups"), &admin).await.1["total"], 2);

    // Connect from the client's page (publish only), see the right on the channel's page,
    // disconnect from there.
    let ch = app.channel(&admin, &d, "kitchen").await;
    let page = format!("/console/d/{d}/clients/{id}");
    let p = b
        .post(
            &page,
            &[
                ("csrf", &token),
                ("action", "connect"),
                ("other", &ch),
                ("publish", "on"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let chan_page = format!("/console/d/{d}/channels/{ch}");
    let cp = b.get(&chan_page).await;
    assert!(cp.body.contains("id=\"channel-clients\""), "{}", cp.body);
    assert!(cp.body.contains(">publish<"), "publish only: {}", cp.body);
    let p = b
        .post(
            &chan_page,
            &[("csrf", &token), ("action", "disconnect"), ("other", &id)],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let (_, conns) = app.get(&format!("/{d}/clients/{id}/channels"), &admin).await;
    assert_eq!(conns["total"], 0, "{conns}");
    // Neither right chosen: refused with a message, nothing connected.
    let p = b
        .post(&page, &[("csrf", &token), ("action", "connect"), ("other", &ch)])
        .await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("choose publish, subscribe or both"));

    // Disable, rotate and delete through the entity page.
    let secret = c["credentials"]["secret"].as_str().expect("secret").to_string();
    let shown = b.get(&format!("{page}?secret=show")).await;
    assert!(shown.body.contains(&secret));
    assert!(!b.get(&page).await.body.contains(&secret), "hidden until asked for");
    assert_eq!(
        b.post(&page, &[("csrf", &token), ("action", "rotate")]).await.status,
        303
    );
    let (_, c2) = app.get(&format!("/{d}/clients/{id}"), &admin).await;
    assert_ne!(c2["credentials"]["secret"], c["credentials"]["secret"]);
    assert_eq!(
        b.post(&page, &[("csrf", &token), ("action", "disable")]).await.status,
        303
    );
    assert_eq!(
        app.get(&format!("/{d}/clients/{id}"), &admin).await.1["status"],
        "disabled"
    );
    let p = b.post(&page, &[("csrf", &token), ("action", "delete")]).await;
    assert_eq!((p.status, p.location()), (303, list.as_str()));
    assert_eq!(app.get(&format!("/{d}/clients/{id}"), &admin).await.0, 404);
}

#[tokio::test]
async fn logout_ends_the_session_and_its_tokens() {
    let app = TestApp::spawn().await;
    let mut b = Browser::new(&app);
    b.login("admin", ADMIN_PASSWORD).await;
    let old = b.cookies.clone();
    let token = b.csrf("/console/").await;
    let p = b.post("/console/logout", &[("csrf", &token)]).await;
    assert_eq!((p.status, p.location()), (303, "/console/login"));
    assert!(
        b.cookies.iter().all(|(n, _)| n != "fg_session"),
        "the cookie is cleared"
    );
    // A copy of the old cookie does not work either.
    b.cookies = old;
    let p = b.get("/console/").await;
    assert_eq!((p.status, p.location()), (303, "/console/login"));
    let p = b.post("/console/domains", &[("csrf", &token), ("name", "x")]).await;
    assert_eq!(p.status, 401, "{}", p.body);
}

#[tokio::test]
async fn a_console_switched_off_serves_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = crate::helpers::test_config(dir.path());
    cfg.http.console = false;
    let app = TestApp::spawn_with(dir, cfg).await;
    let mut b = Browser::new(&app);
    for path in ["/", "/console/", "/console/login", "/console/assets/console.js"] {
        let p = b.get(path).await;
        assert_eq!(p.status, 404, "{path}: {}", p.body);
        assert!(p.set_cookies().is_empty());
    }
    // The REST API is still there.
    let (s, _) = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(s, 201);
}

#[tokio::test]
async fn members_are_managed_and_the_last_admin_stays() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let d = app.domain(&admin, "plant").await;
    let (vera, _) = app.user("vera").await;
    let me = app.get("/users/profile", &admin).await.1["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut b = Browser::new(&app);
    b.login("admin", ADMIN_PASSWORD).await;
    let page = format!("/console/d/{d}/members");
    let token = b.csrf(&page).await;
    let relation_of = |list: &serde_json::Value, id: &str| {
        list["users"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["id"] == id))
            .map(|u| u["relation"].clone())
    };

    // Added by username, then promoted by id.
    let p = b
        .post(
            &page,
            &[
                ("csrf", &token),
                ("action", "assign"),
                ("user", "vera"),
                ("relation", "viewer"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let p = b
        .post(
            &page,
            &[
                ("csrf", &token),
                ("action", "assign"),
                ("user", &vera),
                ("relation", "editor"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let (_, list) = app.get(&format!("/domains/{d}/users"), &admin).await;
    assert_eq!(relation_of(&list, &vera), Some(json!("editor")), "{list}");

    // The last admin can be neither demoted nor removed; the page says why.
    let p = b
        .post(
            &page,
            &[
                ("csrf", &token),
                ("action", "assign"),
                ("user", &me),
                ("relation", "viewer"),
            ],
        )
        .await;
    assert_eq!(p.status, 409, "{}", p.body);
    assert!(p.body.contains("last admin"), "{}", p.body);
    let p = b
        .post(&page, &[("csrf", &token), ("action", "unassign"), ("user", &me)])
        .await;
    assert_eq!(p.status, 409, "{}", p.body);
    assert!(p.body.contains("last admin"), "{}", p.body);
    let (_, list) = app.get(&format!("/domains/{d}/users"), &admin).await;
    assert_eq!(relation_of(&list, &me), Some(json!("admin")));

    let p = b
        .post(
            &page,
            &[
                ("csrf", &token),
                ("action", "assign"),
                ("user", "nobody"),
                ("relation", "viewer"),
            ],
        )
        .await;
    assert_eq!(p.status, 404);
    assert!(p.body.contains("no user named"), "{}", p.body);
    let p = b
        .post(&page, &[("csrf", &token), ("action", "unassign"), ("user", &vera)])
        .await;
    assert_eq!(p.status, 303);
}

#[tokio::test]
async fn a_channel_page_shows_its_history_with_the_readers_filters() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let d = app.domain(&admin, "plant").await;
    let ch = app.channel(&admin, &d, "kitchen").await;
    let (dev, secret) = app.device(&admin, &d).await;
    app.connect(&admin, &d, &dev, &ch, &["publish"]).await;
    let body = r#"[{"bn":"k:","n":"temp","v":19.5},{"n":"temp","v":24.5},{"n":"hum","v":40}]"#;
    let (s, _) = app
        .send(
            &format!("/http/channels/{ch}/messages"),
            &format!("Client {secret}"),
            "application/senml+json",
            body,
        )
        .await;
    assert_eq!(s, 202);
    app.stored_at_least(3).await;
    let mut b = Browser::new(&app);
    b.login("admin", ADMIN_PASSWORD).await;
    let page = format!("/console/d/{d}/channels/{ch}");
    let all = b.get(&page).await;
    assert!(all.body.contains("3 messages in all"), "{}", all.body);
    let some = b.get(&format!("{page}?name=k%3Atemp&v=20&comparator=gt")).await;
    assert_eq!(some.status, 200);
    assert!(some.body.contains("1 messages in all"), "{}", some.body);
    assert!(
        some.body.contains(">24.5<") && !some.body.contains(">19.5<"),
        "{}",
        some.body
    );
    // A bad filter is shown in words in the history section; the rest of the page still works.
    let bad = b.get(&format!("{page}?comparator=sideways")).await;
    assert_eq!(bad.status, 200);
    let history = &bad.body[bad.body.find("id=\"history\"").expect("history")..];
    assert!(
        history.contains("role=\"alert\"") && history.contains("comparator"),
        "{history}"
    );
    assert!(bad.body.contains("id=\"live\""));
}
