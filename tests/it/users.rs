//! Users, tokens and passwords through the REST API.

use crate::helpers::{TestApp, ADMIN_PASSWORD};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn register_login_profile_refresh() {
    let app = TestApp::spawn().await;
    let (s, u) = app
        .post(
            "/users",
            None,
            json!({"first_name": "Jane", "last_name": "Doe", "email": "jane@example.com",
                   "tags": ["developer"], "metadata": {"location": "Paris"},
                   "credentials": {"username": "janedoe", "secret": "securepassword"}}),
        )
        .await;
    assert_eq!(s, 201, "{u}");
    assert_eq!(u["credentials"], json!({"username": "janedoe"}));
    assert_eq!(u["role"], "user");
    assert_eq!(u["status"], "enabled");
    assert_eq!(u["metadata"]["location"], "Paris");
    let text = u.to_string();
    assert!(!text.contains("securepassword") && !text.contains("pbkdf2"), "{text}");

    let (s, by_name) = app.login("janedoe", "securepassword").await;
    assert_eq!(s, 201);
    assert_eq!(by_name["access_type"], "Bearer");
    let (s, by_mail) = app.login("jane@example.com", "securepassword").await;
    assert_eq!(s, 201);
    // The newer spelling of the login body is accepted too.
    let (s, _) = app
        .post(
            "/users/tokens/issue",
            None,
            json!({"username": "janedoe", "password": "securepassword"}),
        )
        .await;
    assert_eq!(s, 201);

    let access = by_mail["access_token"].as_str().expect("a");
    let refresh = by_mail["refresh_token"].as_str().expect("r");
    let (s, p) = app.get("/users/profile", access).await;
    assert_eq!(s, 200);
    assert_eq!(p["id"], u["id"]);

    // A refresh token is not an access token, and the other way round.
    let (s, e) = app.get("/users/profile", refresh).await;
    assert_eq!(s, 401, "{e}");
    assert!(e["error"].is_string() && e["message"].is_string());
    let (s, _) = app
        .call(Method::POST, "/users/tokens/refresh", Some(access), None)
        .await;
    assert_eq!(s, 401);

    let (s, pair) = app
        .call(Method::POST, "/users/tokens/refresh", Some(refresh), None)
        .await;
    assert_eq!(s, 201, "{pair}");
    let (s, _) = app
        .get("/users/profile", pair["access_token"].as_str().expect("a"))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn registration_and_login_failures() {
    let app = TestApp::spawn().await;
    app.user("ann").await;
    let cases = [
        (
            json!({"email": "x@example.com", "credentials": {"username": "x1", "secret": "short"}}),
            400,
        ),
        (
            json!({"email": "not-an-email", "credentials": {"username": "x2", "secret": "longenough"}}),
            400,
        ),
        (
            json!({"email": "x3@example.com", "credentials": {"username": "_bad", "secret": "longenough"}}),
            400,
        ),
        (json!({"email": "x4@example.com"}), 400),
        (
            json!({"email": "ann@example.com", "credentials": {"username": "x5", "secret": "longenough"}}),
            409,
        ),
        (
            json!({"email": "x6@example.com", "credentials": {"username": "ANN", "secret": "longenough"}}),
            409,
        ),
        (
            json!({"email": "x7@example.com", "metadata": [1], "credentials": {"username": "x7", "secret": "longenough"}}),
            400,
        ),
    ];
    for (body, want) in cases {
        let (s, v) = app.post("/users", None, body.clone()).await;
        assert_eq!(s, want, "{body} -> {v}");
    }
    // Malformed JSON, wrong content type, oversized body.
    let r = app
        .client
        .post(format!("{}/users", app.url))
        .header("content-type", "application/json")
        .body("{\"email\":")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(format!("{}/users", app.url))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 415);
    let big = "x".repeat(2 * 1024 * 1024);
    let r = app
        .client
        .post(format!("{}/users", app.url))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);

    let (s, _) = app.login("ann", "wrong-password").await;
    assert_eq!(s, 401);
    let (s, _) = app.login("nobody", "ann-password").await;
    assert_eq!(s, 401);
    let (s, _) = app.post("/users/tokens/issue", None, json!({"identity": "ann"})).await;
    assert_eq!(s, 400);
    let (s, _) = app.get("/users/profile", "not-a-token").await;
    assert_eq!(s, 401);
    let (s, _) = app.call(Method::GET, "/users/profile", None, None).await;
    assert_eq!(s, 401);
    let (s, _) = app.call(Method::GET, "/nowhere", None, None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn self_updates_and_their_failures() {
    let app = TestApp::spawn().await;
    let (id, t) = app.user("bob").await;
    app.user("carol").await;
    let base = format!("/users/{id}");

    let (s, u) = app.get(&base, &t).await;
    assert_eq!((s, u["id"].as_str()), (200, Some(id.as_str())));
    let (s, u) = app
        .patch(&base, &t, json!({"first_name": "Robert", "metadata": {"k": "v"}}))
        .await;
    assert_eq!(
        (s, &u["first_name"], &u["metadata"]["k"]),
        (200, &json!("Robert"), &json!("v"))
    );
    assert_ne!(u["updated_at"], "0001-01-01T00:00:00Z");
    let (s, u) = app
        .patch(&format!("{base}/tags"), &t, json!({"tags": ["a", "b"]}))
        .await;
    assert_eq!((s, &u["tags"]), (200, &json!(["a", "b"])));
    let (s, _) = app.patch(&format!("{base}/tags"), &t, json!({"tags": "a"})).await;
    assert_eq!(s, 400);
    let (s, u) = app
        .patch(
            &format!("{base}/picture"),
            &t,
            json!({"profile_picture": "https://x/p.png"}),
        )
        .await;
    assert_eq!((s, &u["profile_picture"]), (200, &json!("https://x/p.png")));
    let (s, u) = app
        .patch(&format!("{base}/email"), &t, json!({"email": "robert@example.com"}))
        .await;
    assert_eq!((s, &u["email"]), (200, &json!("robert@example.com")));
    let (s, _) = app
        .patch(&format!("{base}/email"), &t, json!({"email": "carol@example.com"}))
        .await;
    assert_eq!(s, 409);
    let (s, _) = app.patch(&format!("{base}/email"), &t, json!({"email": "nope"})).await;
    assert_eq!(s, 400);
    let (s, u) = app
        .patch(&format!("{base}/username"), &t, json!({"username": "robert"}))
        .await;
    assert_eq!((s, &u["credentials"]["username"]), (200, &json!("robert")));
    let (s, _) = app
        .patch(&format!("{base}/username"), &t, json!({"username": "carol"}))
        .await;
    assert_eq!(s, 409);
    let (s, _) = app.get("/users/00000000-0000-4000-8000-000000000000", &t).await;
    assert_eq!(s, 403);

    let (s, v) = app.get("/users/search?username=car", &t).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)));
    assert_eq!(v["users"][0]["username"], "carol");
    assert!(v["users"][0].get("role").is_none());
    let (s, _) = app.get("/users/search", &t).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn plain_users_cannot_administer_others() {
    let app = TestApp::spawn().await;
    let (a_id, a) = app.user("alice").await;
    let (b_id, b) = app.user("bert").await;
    let (s, _) = app.get("/users", &a).await;
    assert_eq!(s, 403);
    let (s, _) = app
        .patch(&format!("/users/{b_id}/role"), &a, json!({"role": "admin"}))
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .patch(&format!("/users/{a_id}/role"), &a, json!({"role": "admin"}))
        .await;
    assert_eq!(s, 403, "no self-promotion");
    let (s, _) = app
        .patch(&format!("/users/{b_id}"), &a, json!({"first_name": "x"}))
        .await;
    assert_eq!(s, 403);
    for action in ["enable", "disable"] {
        let (s, _) = app
            .call(Method::POST, &format!("/users/{b_id}/{action}"), Some(&a), None)
            .await;
        assert_eq!(s, 403, "{action}");
    }
    let (s, _) = app
        .call(Method::DELETE, &format!("/users/{b_id}"), Some(&a), None)
        .await;
    assert_eq!(s, 403);
    // B is untouched.
    let (s, p) = app.get("/users/profile", &b).await;
    assert_eq!((s, &p["status"]), (200, &json!("enabled")));
}

#[tokio::test]
async fn admin_lists_changes_role_disables_and_deletes() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (d_id, d) = app.user("dave").await;
    let (e_id, e) = app.user("erin").await;

    let (s, page) = app.get("/users?limit=1&offset=0", &admin).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["total"], 3);
    assert_eq!(page["limit"], 1);
    assert_eq!(page["users"].as_array().map(Vec::len), Some(1));
    let (s, page) = app.get("/users?username=dave", &admin).await;
    assert_eq!((s, &page["total"]), (200, &json!(1)));
    // #15 defect 5: the page's `identity` (e-mail or username) and `name` filters.
    for (q, want) in [
        ("identity=dave@example.com", Some("dave")),
        ("identity=erin", Some("erin")),
        ("identity=nobody@example.com", None),
        ("name=erin", Some("erin")),
        ("name=Dave%20Test", Some("dave")),
    ] {
        let (s, page) = app.get(&format!("/users?{q}"), &admin).await;
        assert_eq!(s, 200, "{q}: {page}");
        let names: Vec<&str> = page["users"]
            .as_array()
            .expect("users")
            .iter()
            .filter_map(|u| u["credentials"]["username"].as_str())
            .collect();
        assert_eq!(names, want.into_iter().collect::<Vec<_>>(), "{q}");
    }
    let (s, _) = app.get("/users?limit=101", &admin).await;
    assert_eq!(s, 400);
    let (s, _) = app.get("/users?status=sleeping", &admin).await;
    assert_eq!(s, 400);

    let (s, u) = app
        .patch(&format!("/users/{e_id}/role"), &admin, json!({"role": "admin"}))
        .await;
    assert_eq!((s, &u["role"]), (200, &json!("admin")));
    let (s, _) = app
        .patch(&format!("/users/{e_id}/role"), &admin, json!({"role": "king"}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = app.get("/users", &e).await;
    assert_eq!(s, 200, "promotion takes effect on the existing token");

    // Disabling stops the user's tokens at once; enabling restores them.
    let (s, u) = app
        .call(Method::POST, &format!("/users/{d_id}/disable"), Some(&admin), None)
        .await;
    assert_eq!((s, &u["status"]), (200, &json!("disabled")));
    let (s, _) = app.get("/users/profile", &d).await;
    assert_eq!(s, 401);
    let (s, _) = app.login("dave", "dave-password").await;
    assert_eq!(s, 401);
    let (s, page) = app.get("/users?status=disabled", &admin).await;
    assert_eq!((s, &page["total"]), (200, &json!(1)));
    let (s, _) = app
        .call(Method::POST, &format!("/users/{d_id}/enable"), Some(&admin), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = app.get("/users/profile", &d).await;
    assert_eq!(s, 200);

    let (s, _) = app
        .call(Method::DELETE, &format!("/users/{d_id}"), Some(&admin), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = app.get("/users/profile", &d).await;
    assert_eq!(s, 401, "a deleted user's token stops working");
    let (s, _) = app
        .call(Method::DELETE, &format!("/users/{d_id}"), Some(&admin), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .call(
            Method::POST,
            "/users/00000000-0000-4000-8000-000000000000/enable",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn password_change_and_reset_revoke_refresh_tokens() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("fay").await;
    let (_, pair) = app.login("fay", "fay-password").await;
    let old_refresh = pair["refresh_token"].as_str().expect("r").to_string();

    let (s, _) = app
        .patch(
            "/users/secret",
            &t,
            json!({"old_secret": "wrong-one", "new_secret": "new-password"}),
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = app
        .patch(
            "/users/secret",
            &t,
            json!({"old_secret": "fay-password", "new_secret": "short"}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .patch(
            "/users/secret",
            &t,
            json!({"old_secret": "fay-password", "new_secret": "new-password"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call(Method::POST, "/users/tokens/refresh", Some(&old_refresh), None)
        .await;
    assert_eq!(s, 401, "refresh tokens from before the change are revoked");
    let (s, _) = app.login("fay", "fay-password").await;
    assert_eq!(s, 401);
    let (s, pair) = app.login("fay", "new-password").await;
    assert_eq!(s, 201);
    let refresh2 = pair["refresh_token"].as_str().expect("r").to_string();

    // Reset: the token goes to the outbox; unknown addresses get the same answer.
    let (s, _) = app
        .post("/password/reset-request", None, json!({"email": "nobody@example.com"}))
        .await;
    assert_eq!(s, 201);
    assert!(app.mailbox.token_for("nobody@example.com").is_none());
    let (s, _) = app
        .post("/password/reset-request", None, json!({"email": "fay@example.com"}))
        .await;
    assert_eq!(s, 201);
    let token = app.mailbox.token_for("fay@example.com").expect("reset token sent");
    let reset = |pw: &str, confirm: &str, tok: &str| json!({"password": pw, "confirm_password": confirm, "token": tok});
    let (s, _) = app
        .call(
            Method::PUT,
            "/password/reset",
            None,
            Some(reset("reset-password", "other-password", &token)),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .call(
            Method::PUT,
            "/password/reset",
            None,
            Some(reset("reset-password", "reset-password", &t)),
        )
        .await;
    assert_eq!(s, 401, "an access token is not a reset token");
    let (s, _) = app
        .call(
            Method::PUT,
            "/password/reset",
            None,
            Some(reset("reset-password", "reset-password", &token)),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .call(
            Method::PUT,
            "/password/reset",
            None,
            Some(reset("again-password", "again-password", &token)),
        )
        .await;
    assert_eq!(s, 401, "a reset token works once");
    let (s, _) = app
        .call(Method::POST, "/users/tokens/refresh", Some(&refresh2), None)
        .await;
    assert_eq!(s, 401);
    let (s, _) = app.login("fay", "reset-password").await;
    assert_eq!(s, 201);
}

#[tokio::test]
async fn restart_keeps_users_domains_and_signing_key() {
    let app = TestApp::spawn().await;
    let (id, t) = app.user("gus").await;
    let d = app.domain(&t, "gusdomain").await;
    let dir = app.stop().await;

    let app = TestApp::spawn_in(dir).await;
    let (s, p) = app.get("/users/profile", &t).await;
    assert_eq!(s, 200, "a token issued before the restart still works: {p}");
    assert_eq!(p["id"], id.as_str());
    let (s, v) = app.get(&format!("/domains/{d}"), &t).await;
    assert_eq!((s, &v["route"]), (200, &json!("gusdomain")));
    let (s, _) = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(s, 201);
}

#[tokio::test]
async fn health_is_open() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(format!("{}/health", app.url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/health+json");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["status"], "pass");
    assert_eq!(v["version"], fluxgate::VERSION);
}

#[tokio::test]
async fn closed_registration_needs_the_super_admin() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = crate::helpers::test_config(dir.path());
    cfg.auth.self_registration = false;
    let app = TestApp::spawn_with(dir, cfg).await;
    let body = json!({"email": "h@example.com", "credentials": {"username": "hal", "secret": "hal-password"}});
    let (s, _) = app.post("/users", None, body.clone()).await;
    assert_eq!(s, 401);
    let admin = app.admin_token().await;
    let (s, _) = app.post("/users", Some(&admin), body).await;
    assert_eq!(s, 201);
}

/// A minimal SMTP server: accepts one message and hands its DATA to the test.
async fn fake_smtp() -> (u16, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.expect("accept");
        let (r, mut w) = s.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"220 fake ESMTP\r\n").await.expect("w");
        let mut data = String::new();
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            if in_data {
                if line == "." {
                    in_data = false;
                    w.write_all(b"250 queued\r\n").await.expect("w");
                } else {
                    data.push_str(&line);
                    data.push('\n');
                }
                continue;
            }
            let cmd = line.to_ascii_uppercase();
            if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                w.write_all(b"250 fake\r\n").await.expect("w");
            } else if cmd.starts_with("DATA") {
                in_data = true;
                w.write_all(b"354 go\r\n").await.expect("w");
            } else if cmd.starts_with("QUIT") {
                w.write_all(b"221 bye\r\n").await.expect("w");
                break;
            } else {
                w.write_all(b"250 ok\r\n").await.expect("w");
            }
        }
        let _ = tx.send(data);
    });
    (port, rx)
}

#[tokio::test]
async fn reset_tokens_are_emailed_when_smtp_is_configured() {
    let (port, mail) = fake_smtp().await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = crate::helpers::test_config(dir.path());
    cfg.smtp.host = "127.0.0.1".into();
    cfg.smtp.port = port;
    // No test outbox: the configured SMTP relay is used.
    let app = TestApp::spawn_with_hooks(dir, cfg, fluxgate::Hooks::default()).await;
    app.user("mailee").await;
    let (s, _) = app
        .post("/password/reset-request", None, json!({"email": "mailee@example.com"}))
        .await;
    assert_eq!(s, 201);
    let data = tokio::time::timeout(std::time::Duration::from_secs(20), mail)
        .await
        .expect("mail in time")
        .expect("mail");
    assert!(data.contains("To: mailee@example.com"), "{data}");
    // Quoted-printable may fold long lines: join soft breaks before looking for the token.
    let text = data.replace("=\n", "").replace("=3D", "=");
    let start = text.find("15 minutes: ").expect("token line") + "15 minutes: ".len();
    let token: String = text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    let (s, _) = app
        .call(
            Method::PUT,
            "/password/reset",
            None,
            Some(json!({"password": "mailed-password", "confirm_password": "mailed-password", "token": token})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(app.login("mailee", "mailed-password").await.0, 201);
}
