//! Groups, their hierarchy and their members through the REST API.

use crate::helpers::TestApp;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn hierarchy_tree_and_cycles() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("grouper").await;
    let d = app.domain(&t, "grp").await;
    let mk = |name: &str, parent: Option<&str>| {
        let body = match parent {
            Some(p) => json!({"name": name, "description": "d", "parent_id": p}),
            None => json!({"name": name, "description": "d"}),
        };
        let (app, t, d) = (&app, &t, &d);
        async move {
            let (s, v) = app.post(&format!("/{d}/groups"), Some(t), body).await;
            assert_eq!(s, 201, "{v}");
            v["id"].as_str().expect("id").to_string()
        }
    };
    let root = mk("Security Engineers", None).await;
    let child = mk("Customer Support", Some(&root)).await;
    let grandchild = mk("Night Shift", Some(&child)).await;
    let (s, _) = app
        .post(
            &format!("/{d}/groups"),
            Some(&t),
            json!({"name": "x", "parent_id": "00000000-0000-4000-8000-000000000000"}),
        )
        .await;
    assert_eq!(s, 400);

    let (s, v) = app.get(&format!("/{d}/groups/{child}"), &t).await;
    assert_eq!((s, &v["parent_id"]), (200, &json!(root)));
    let (_, v) = app.get(&format!("/{d}/groups"), &t).await;
    assert_eq!(v["total"], 3);

    // Children as a tree: the group itself at the root with nested children, level and path.
    let (s, v) = app.get(&format!("/{d}/groups/{root}/children?tree=true"), &t).await;
    assert_eq!(s, 200, "{v}");
    let top = &v["groups"][0];
    assert_eq!((&top["id"], &top["path"]), (&json!(root), &json!(root)));
    let c1 = &top["children"][0];
    assert_eq!((&c1["id"], &c1["level"]), (&json!(child), &json!(1)));
    assert_eq!(c1["path"], format!("{root}.{child}"));
    assert_eq!(c1["children"][0]["path"], format!("{root}.{child}.{grandchild}"));
    // Flat with a level bound.
    let (_, v) = app.get(&format!("/{d}/groups/{root}/children?level=1"), &t).await;
    assert_eq!((&v["total"], &v["groups"][0]["id"]), (&json!(1), &json!(child)));
    // Parents: negative levels, tree ends at the group itself.
    let (_, v) = app.get(&format!("/{d}/groups/{grandchild}/parents"), &t).await;
    assert_eq!(v["total"], 2);
    assert_eq!(
        (&v["groups"][0]["id"], &v["groups"][0]["level"]),
        (&json!(child), &json!(-1))
    );
    let (_, v) = app
        .get(&format!("/{d}/groups/{grandchild}/parents?tree=true"), &t)
        .await;
    assert_eq!(v["groups"][0]["id"], json!(root));
    assert_eq!(v["groups"][0]["level"], json!(-2));
    assert_eq!(v["groups"][0]["children"][0]["children"][0]["id"], json!(grandchild));
    // The whole domain as a forest.
    let (_, v) = app.get(&format!("/{d}/groups?tree=true"), &t).await;
    assert_eq!(v["groups"].as_array().map(Vec::len), Some(1));

    // Cycles refused; moves allowed.
    let (s, _) = app
        .post(
            &format!("/{d}/groups/{root}/parent"),
            Some(&t),
            json!({"parent_id": grandchild}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = app
        .post(
            &format!("/{d}/groups/{root}/parent"),
            Some(&t),
            json!({"parent_id": root}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, v) = app
        .post(
            &format!("/{d}/groups/{grandchild}/parent"),
            Some(&t),
            json!({"parent_id": root}),
        )
        .await;
    assert_eq!((s, &v["parent_id"]), (200, &json!(root)));

    // Update, disable, enable; delete refused while children exist.
    let (s, v) = app
        .call(
            Method::PUT,
            &format!("/{d}/groups/{root}"),
            Some(&t),
            Some(json!({"name": "Data Analysts", "metadata": {"location": "london"}})),
        )
        .await;
    assert_eq!(
        (s, &v["name"], &v["metadata"]["location"]),
        (200, &json!("Data Analysts"), &json!("london"))
    );
    let (s, v) = app
        .call(Method::POST, &format!("/{d}/groups/{root}/disable"), Some(&t), None)
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("disabled")));
    let (s, _) = app
        .call(Method::POST, &format!("/{d}/groups/{root}/enable"), Some(&t), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call(Method::DELETE, &format!("/{d}/groups/{root}"), Some(&t), None)
        .await;
    assert_eq!(s, 409);
    let (s, _) = app
        .call(Method::DELETE, &format!("/{d}/groups/{grandchild}"), Some(&t), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = app.get(&format!("/{d}/groups/{grandchild}"), &t).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn group_members_via_policies() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("gowner").await;
    let (m_id, m) = app.user("gmember").await;
    let (o_id, _) = app.user("goutsider").await;
    let d = app.domain(&t, "gm").await;
    app.assign(&t, &d, &m_id, "viewer").await;
    let (_, g) = app
        .post(&format!("/{d}/groups"), Some(&t), json!({"name": "Ops"}))
        .await;
    let g = g["id"].as_str().expect("id").to_string();

    let (s, v) = app
        .post(
            "/users/policies",
            Some(&t),
            json!({"subject": m_id, "object": g, "actions": ["g_list", "c_list"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = app
        .post(
            "/users/policies",
            Some(&t),
            json!({"subject": o_id, "object": g, "actions": ["g_list"]}),
        )
        .await;
    assert_eq!(s, 400, "not a member of the domain");
    let (s, _) = app
        .post(
            "/users/policies",
            Some(&m),
            json!({"subject": m_id, "object": g, "actions": ["g_list"]}),
        )
        .await;
    assert_eq!(s, 403, "viewers cannot assign");

    let (s, v) = app.get(&format!("/{d}/groups/{g}/members"), &t).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)));
    assert_eq!(v["members"][0]["id"], json!(m_id));
    assert!(v.get("limit").is_some() && v.get("offset").is_some());
    let (s, v) = app.get(&format!("/users/{m_id}/memberships"), &m).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)));
    assert_eq!(v["memberships"][0]["id"], json!(g));
    let (s, _) = app
        .get(&format!("/users/{m_id}/memberships"), &app.user("nosy").await.1)
        .await;
    assert_eq!(s, 403);
    // #15 defect 5: the admin of a domain reads a member's memberships, those in the domains
    // they administer only; a viewer cannot read the admin's.
    let (_, t2) = app.user("gother").await;
    let d2 = app.domain(&t2, "gm2").await;
    app.assign(&t2, &d2, &m_id, "viewer").await;
    let (_, g2) = app
        .post(&format!("/{d2}/groups"), Some(&t2), json!({"name": "Elsewhere"}))
        .await;
    let (s, _) = app
        .post(
            "/users/policies",
            Some(&t2),
            json!({"subject": m_id, "object": g2["id"], "actions": ["g_list"]}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = app.get(&format!("/users/{m_id}/memberships"), &t).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)), "{v}");
    assert_eq!(v["memberships"][0]["id"], json!(g));
    let (s, v) = app.get(&format!("/users/{m_id}/memberships"), &m).await;
    assert_eq!((s, &v["total"]), (200, &json!(2)), "the member sees both: {v}");
    let (t_id, _) = {
        let (_, p) = app.get("/users/profile", &t).await;
        (p["id"].as_str().expect("id").to_string(), ())
    };
    let (s, _) = app.get(&format!("/users/{t_id}/memberships"), &m).await;
    assert_eq!(s, 403, "a viewer does not administer the admin");

    let (s, _) = app
        .call(Method::DELETE, &format!("/users/policies/{m_id}/{g}"), Some(&t), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = app
        .call(Method::DELETE, &format!("/users/policies/{m_id}/{g}"), Some(&t), None)
        .await;
    assert_eq!(s, 404);
    let (_, v) = app.get(&format!("/{d}/groups/{g}/members"), &t).await;
    assert_eq!(v["total"], 0);
}
