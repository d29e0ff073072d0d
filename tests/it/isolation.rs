//! Tenant isolation and role limits across every domain-scoped route.

use crate::helpers::TestApp;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn a_user_of_domain_a_cannot_touch_domain_b() {
    let app = TestApp::spawn().await;
    let (_, a) = app.user("tenanta").await;
    let (_, b) = app.user("tenantb").await;
    let da = app.domain(&a, "dom-a").await;
    let db = app.domain(&b, "dom-b").await;
    let ca = app.client(&a, &da, json!({"name": "a-dev"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let cb = app.client(&b, &db, json!({"name": "b-dev"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let hb = app.channel(&b, &db, "b-ch").await;
    let (_, g) = app
        .post(&format!("/{db}/groups"), Some(&b), json!({"name": "b-group"}))
        .await;
    let gb = g["id"].as_str().expect("id").to_string();

    // A, using domain B's id: every route is refused.
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/{db}/clients"), None),
        (Method::GET, format!("/{db}/clients/{cb}"), None),
        (Method::POST, format!("/{db}/clients"), Some(json!({"name": "x"}))),
        (Method::PATCH, format!("/{db}/clients/{cb}"), Some(json!({"name": "x"}))),
        (Method::DELETE, format!("/{db}/clients/{cb}"), None),
        (Method::GET, format!("/{db}/channels"), None),
        (Method::GET, format!("/{db}/channels/{hb}"), None),
        (Method::DELETE, format!("/{db}/channels/{hb}"), None),
        (
            Method::POST,
            format!("/{db}/channels/connect"),
            Some(json!({"channel_ids": [hb], "client_ids": [cb]})),
        ),
        (
            Method::POST,
            format!("/{db}/channels/disconnect"),
            Some(json!({"channel_ids": [hb], "client_ids": [cb]})),
        ),
        (Method::GET, format!("/{db}/groups"), None),
        (Method::GET, format!("/{db}/groups/{gb}"), None),
        (Method::GET, format!("/{db}/groups/{gb}/members"), None),
        (Method::DELETE, format!("/{db}/groups/{gb}"), None),
    ];
    for (m, path, body) in routes {
        let (s, v) = app.call(m.clone(), &path, Some(&a), body).await;
        assert!(s == 403 || s == 404, "{m} {path} gave {s}: {v}");
    }
    // A, using its own domain id with B's entity ids: not found, and no cross-tenant link.
    let (s, _) = app.get(&format!("/{da}/clients/{cb}"), &a).await;
    assert_eq!(s, 404);
    let (s, _) = app.get(&format!("/{da}/channels/{hb}"), &a).await;
    assert_eq!(s, 404);
    let (s, v) = app
        .post(
            &format!("/{da}/channels/connect"),
            Some(&a),
            json!({"channel_ids": [hb], "client_ids": [ca]}),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, _) = app
        .post(
            "/users/policies",
            Some(&a),
            json!({"subject": "x", "object": gb, "actions": ["g_list"]}),
        )
        .await;
    assert_eq!(s, 403);
    let (_, v) = app.get(&format!("/{db}/channels/{hb}/clients"), &b).await;
    assert_eq!(v["total"], 0);
    // B's things are intact.
    let (s, _) = app.get(&format!("/{db}/clients/{cb}"), &b).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn viewers_read_editors_write_and_secrets_are_hidden_from_viewers() {
    let app = TestApp::spawn().await;
    let (_, admin) = app.user("dadmin").await;
    let (v_id, viewer) = app.user("dviewer").await;
    let (e_id, editor) = app.user("deditor").await;
    let d = app.domain(&admin, "roles").await;
    app.post(
        &format!("/domains/{d}/users/assign"),
        Some(&admin),
        json!({"user_ids": [v_id], "relation": "viewer"}),
    )
    .await;
    app.post(
        &format!("/domains/{d}/users/assign"),
        Some(&admin),
        json!({"user_ids": [e_id], "relation": "editor"}),
    )
    .await;
    let c = app
        .client(
            &admin,
            &d,
            json!({"name": "dev", "credentials": {"secret": "the-secret-1"}}),
        )
        .await;
    let cid = c["id"].as_str().expect("id").to_string();
    let h = app.channel(&admin, &d, "ch").await;

    // Viewer: reads, without the secret; cannot create, update, delete or connect.
    let (s, v) = app.get(&format!("/{d}/clients/{cid}"), &viewer).await;
    assert_eq!(s, 200);
    assert!(v["credentials"].get("secret").is_none(), "{v}");
    let (_, v) = app.get(&format!("/{d}/clients"), &viewer).await;
    assert!(!v.to_string().contains("the-secret-1"));
    for (m, path, body) in [
        (Method::POST, format!("/{d}/clients"), Some(json!({"name": "x"}))),
        (Method::PATCH, format!("/{d}/clients/{cid}"), Some(json!({"name": "x"}))),
        (Method::DELETE, format!("/{d}/clients/{cid}"), None),
        (Method::POST, format!("/{d}/channels"), Some(json!({"name": "x"}))),
        (
            Method::POST,
            format!("/{d}/channels/connect"),
            Some(json!({"channel_ids": [h], "client_ids": [cid]})),
        ),
        (Method::POST, format!("/{d}/groups"), Some(json!({"name": "g"}))),
    ] {
        let (s, _) = app.call(m.clone(), &path, Some(&viewer), body).await;
        assert_eq!(s, 403, "viewer {m} {path}");
    }
    // Editor: can do all of that and sees secrets.
    let (_, v) = app.get(&format!("/{d}/clients/{cid}"), &editor).await;
    assert_eq!(v["credentials"]["secret"], "the-secret-1");
    let (s, _) = app
        .post(&format!("/{d}/clients"), Some(&editor), json!({"name": "x"}))
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .post(
            &format!("/{d}/channels/connect"),
            Some(&editor),
            json!({"channel_ids": [h], "client_ids": [cid]}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .patch(&format!("/{d}/clients/{cid}"), &editor, json!({"name": "renamed"}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call(Method::DELETE, &format!("/{d}/clients/{cid}"), Some(&editor), None)
        .await;
    assert_eq!(s, 204);
}
