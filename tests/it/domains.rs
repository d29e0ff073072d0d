//! Domains (tenants) and membership through the REST API.

use crate::helpers::TestApp;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn members_and_roles() {
    let app = TestApp::spawn().await;
    let (_, a) = app.user("anna").await;
    let (b_id, b) = app.user("ben").await;
    let (s, d) = app
        .post(
            "/domains",
            Some(&a),
            json!({"name": "Plant", "route": "plant-1", "tags": ["x"], "metadata": {"site": "north"}}),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    let id = d["id"].as_str().expect("id").to_string();
    assert_eq!(d["status"], "enabled");

    // B is not a member: 403 on every route of the domain.
    let (s, _) = app.get(&format!("/domains/{id}"), &b).await;
    assert_eq!(s, 403);
    let (s, _) = app.get(&format!("/domains/{id}/users"), &b).await;
    assert_eq!(s, 403);
    let (s, _) = app.patch(&format!("/domains/{id}"), &b, json!({"name": "mine"})).await;
    assert_eq!(s, 403);
    let (s, v) = app.get("/domains", &b).await;
    assert_eq!((s, &v["total"]), (200, &json!(0)));

    let (s, _) = app
        .post(
            &format!("/domains/{id}/users/assign"),
            Some(&a),
            json!({"user_ids": [b_id], "relation": "viewer"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = app.get(&format!("/domains/{id}"), &b).await;
    assert_eq!((s, &v["name"]), (200, &json!("Plant")));
    let (s, _) = app.patch(&format!("/domains/{id}"), &b, json!({"name": "mine"})).await;
    assert_eq!(s, 403, "a viewer cannot update");
    let (s, v) = app.get("/domains", &b).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)));
    let (s, v) = app.get(&format!("/domains/{id}/users"), &b).await;
    assert_eq!((s, &v["total"]), (200, &json!(2)));
    let rels: Vec<_> = v["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["relation"].clone())
        .collect();
    assert!(rels.contains(&json!("admin")) && rels.contains(&json!("viewer")));

    let (s, v) = app
        .patch(
            &format!("/domains/{id}"),
            &a,
            json!({"name": "Plant 2", "metadata": {"site": "south"}}),
        )
        .await;
    assert_eq!(
        (s, &v["name"], &v["metadata"]["site"]),
        (200, &json!("Plant 2"), &json!("south"))
    );

    let (s, _) = app
        .post(
            &format!("/domains/{id}/users/assign"),
            Some(&a),
            json!({"user_ids": [b_id], "relation": "overlord"}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .post(
            &format!("/domains/{id}/users/assign"),
            Some(&a),
            json!({"user_ids": ["00000000-0000-4000-8000-000000000000"], "relation": "viewer"}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .post(
            &format!("/domains/{id}/users/unassign"),
            Some(&b),
            json!({"user_id": b_id}),
        )
        .await;
    assert_eq!(s, 403, "a viewer cannot manage members");
    let (s, _) = app
        .post(
            &format!("/domains/{id}/users/unassign"),
            Some(&a),
            json!({"user_id": b_id}),
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = app.get(&format!("/domains/{id}"), &b).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn create_validation_and_route_conflicts() {
    let app = TestApp::spawn().await;
    let (_, a) = app.user("cleo").await;
    let (s, _) = app
        .post("/domains", Some(&a), json!({"name": "x", "route": "r1"}))
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .post("/domains", Some(&a), json!({"name": "y", "route": "r1"}))
        .await;
    assert_eq!(s, 409);
    let (s, _) = app
        .post("/domains", Some(&a), json!({"name": "y", "route": "1bad"}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = app.post("/domains", Some(&a), json!({"name": "y"})).await;
    assert_eq!(s, 400);
    let (s, _) = app.post("/domains", None, json!({"name": "y", "route": "r2"})).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn status_changes_and_the_super_admin() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, a) = app.user("dora").await;
    let (e_id, e) = app.user("eli").await;
    let id = app.domain(&a, "factory").await;
    app.post(
        &format!("/domains/{id}/users/assign"),
        Some(&a),
        json!({"user_ids": [e_id], "relation": "editor"}),
    )
    .await;

    let (s, _) = app
        .call(Method::POST, &format!("/domains/{id}/disable"), Some(&e), None)
        .await;
    assert_eq!(s, 403, "an editor cannot disable the domain");
    let (s, v) = app
        .call(Method::POST, &format!("/domains/{id}/disable"), Some(&a), None)
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("disabled")));
    let (s, _) = app.get(&format!("/domains/{id}"), &e).await;
    assert_eq!(s, 403, "a disabled domain is closed to non-admins");
    let (s, _) = app
        .call(Method::POST, &format!("/domains/{id}/enable"), Some(&a), None)
        .await;
    assert_eq!(s, 200);

    let (s, _) = app
        .call(Method::POST, &format!("/domains/{id}/freeze"), Some(&a), None)
        .await;
    assert_eq!(s, 403, "only the super-admin freezes");
    let (s, v) = app
        .call(Method::POST, &format!("/domains/{id}/freeze"), Some(&admin), None)
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("freezed")));
    let (s, _) = app.get(&format!("/domains/{id}"), &e).await;
    assert_eq!(s, 200, "a frozen domain stays readable");
    let (s, _) = app.patch(&format!("/domains/{id}"), &a, json!({"name": "z"})).await;
    assert_eq!(s, 403);

    let (s, v) = app.get("/domains?status=all", &admin).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)), "the super-admin sees every domain");
    let (s, _) = app.get("/domains/00000000-0000-4000-8000-000000000000", &admin).await;
    assert_eq!(s, 404);
}

/// #15 defect 1: a domain's only admin cannot demote themselves (or be demoted together with
/// others): 409 with a clear message, nothing changes, and the domain stays manageable.
#[tokio::test]
async fn the_last_admin_cannot_be_demoted() {
    let app = TestApp::spawn().await;
    let (a_id, a) = app.user("solo").await;
    let (b_id, _) = app.user("other").await;
    let id = app.domain(&a, "solo-plant").await;
    for users in [json!([a_id]), json!([b_id, a_id])] {
        for rel in ["viewer", "editor"] {
            let (s, v) = app
                .post(
                    &format!("/domains/{id}/users/assign"),
                    Some(&a),
                    json!({"user_ids": users, "relation": rel}),
                )
                .await;
            assert_eq!(s, 409, "{v}");
            assert!(v["message"].as_str().unwrap_or("").contains("last admin"), "{v}");
        }
    }
    // Still the admin: managing the domain works, and B was not added by the refused call.
    let (s, v) = app.get(&format!("/domains/{id}/users"), &a).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)), "{v}");
    let (s, _) = app
        .post(
            &format!("/domains/{id}/users/assign"),
            Some(&a),
            json!({"user_ids": [b_id], "relation": "admin"}),
        )
        .await;
    assert_eq!(s, 201);
    // With a second admin, demoting oneself is allowed.
    let (s, _) = app
        .post(
            &format!("/domains/{id}/users/assign"),
            Some(&a),
            json!({"user_ids": [a_id], "relation": "viewer"}),
        )
        .await;
    assert_eq!(s, 201);
}

/// #15 defect 5: the `Location` of every created entity names a path that answers GET with
/// that entity.
#[tokio::test]
async fn location_headers_answer_get() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("locator").await;
    let d = app.domain(&t, "locations").await;
    for (path, body) in [
        ("/domains".to_string(), json!({"name": "Another", "route": "another"})),
        (format!("/{d}/clients"), json!({"name": "c"})),
        (format!("/{d}/channels"), json!({"name": "h"})),
        (format!("/{d}/groups"), json!({"name": "g"})),
    ] {
        let r = app
            .client
            .post(format!("{}{}", app.url, path))
            .bearer_auth(&t)
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(r.status().as_u16(), 201, "{path}");
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{path}: no Location"))
            .to_string();
        let created: serde_json::Value = r.json().await.expect("json");
        let (s, v) = app.get(&location, &t).await;
        assert_eq!((s, &v["id"]), (200, &created["id"]), "{path} -> {location}: {v}");
    }
}
