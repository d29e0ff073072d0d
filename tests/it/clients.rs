//! Clients (devices) through the REST API.

use crate::helpers::TestApp;
use reqwest::Method;
use serde_json::json;
use storage::Change;

#[tokio::test]
async fn client_life_cycle() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("owner").await;
    let d = app.domain(&t, "home").await;

    let c = app
        .client(
            &t,
            &d,
            json!({"name": "Temperature Sensor", "tags": ["sensor"], "metadata": {"location": "warehouse"},
                                "credentials": {"identity": "temp-sensor-001", "secret": "secure-password"}}),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "generated id is a UUID");
    assert_eq!(c["domain_id"], d.as_str());
    assert_eq!(
        c["credentials"],
        json!({"identity": "temp-sensor-001", "secret": "secure-password"})
    );
    assert_eq!(c["status"], "enabled");
    assert_eq!(c["updated_at"], "0001-01-01T00:00:00Z");

    // A missing secret is generated: 128 bits, hex.
    let g = app.client(&t, &d, json!({"name": "myClient"})).await;
    let secret = g["credentials"]["secret"].as_str().expect("secret");
    assert_eq!(secret.len(), 32);
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));

    let base = format!("/{d}/clients/{id}");
    let (s, v) = app.get(&base, &t).await;
    assert_eq!((s, &v["name"]), (200, &json!("Temperature Sensor")));
    let (s, v) = app
        .patch(&base, &t, json!({"name": "LightBulb", "metadata": {"k": 1}}))
        .await;
    assert_eq!(
        (s, &v["name"], &v["metadata"]),
        (200, &json!("LightBulb"), &json!({"k": 1}))
    );
    assert!(v["updated_by"].is_string());
    let (s, v) = app
        .patch(&format!("{base}/tags"), &t, json!({"tags": ["tag1", "tag2"]}))
        .await;
    assert_eq!((s, &v["tags"]), (200, &json!(["tag1", "tag2"])));
    let (s, v) = app
        .patch(&format!("{base}/secret"), &t, json!({"secret": "12345678"}))
        .await;
    assert_eq!((s, &v["credentials"]["secret"]), (200, &json!("12345678")));
    let (s, _) = app
        .patch(&format!("{base}/secret"), &t, json!({"secret": "short"}))
        .await;
    assert_eq!(s, 400);
    let (s, v) = app.call(Method::POST, &format!("{base}/disable"), Some(&t), None).await;
    assert_eq!((s, &v["status"]), (200, &json!("disabled")));

    // Listing: status filter, name filter, pagination totals.
    let (s, v) = app.get(&format!("/{d}/clients"), &t).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)), "default lists enabled only: {v}");
    let (s, v) = app.get(&format!("/{d}/clients?status=all&limit=1"), &t).await;
    assert_eq!(
        (s, &v["total"], v["clients"].as_array().map(Vec::len)),
        (200, &json!(2), Some(1))
    );
    let (s, v) = app.get(&format!("/{d}/clients?status=disabled"), &t).await;
    assert_eq!((s, &v["clients"][0]["id"]), (200, &json!(id)));
    let (s, v) = app.get(&format!("/{d}/clients?status=all&name=bulb"), &t).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)));
    let (s, v) = app.get(&format!("/{d}/clients?status=all&tag=tag2"), &t).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)));
    let (s, v) = app
        .get(&format!("/{d}/clients?status=all&metadata=%7B%22k%22%3A1%7D"), &t)
        .await;
    assert_eq!((s, &v["total"]), (200, &json!(1)));
    let (s, _) = app.get(&format!("/{d}/clients?metadata=notjson"), &t).await;
    assert_eq!(s, 400);
    let (s, v) = app
        .get(&format!("/{d}/clients?status=all&order=name&dir=desc"), &t)
        .await;
    assert_eq!((s, &v["clients"][0]["name"]), (200, &json!("myClient")));

    let (s, _) = app.call(Method::POST, &format!("{base}/enable"), Some(&t), None).await;
    assert_eq!(s, 200);
    let (s, _) = app.call(Method::DELETE, &base, Some(&t), None).await;
    assert_eq!(s, 204);
    let (s, _) = app.get(&base, &t).await;
    assert_eq!(s, 404);
    let (s, _) = app.call(Method::DELETE, &base, Some(&t), None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn external_ids_and_secrets_are_unique_per_domain() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("uniq").await;
    let d1 = app.domain(&t, "one").await;
    let d2 = app.domain(&t, "two").await;
    let body =
        json!({"id": "2766ae94-9a08-4418-82ce-3b91cf2ccd3e", "name": "T", "credentials": {"secret": "94939159-9a08"}});
    let c = app.client(&t, &d1, body.clone()).await;
    assert_eq!(c["id"], "2766ae94-9a08-4418-82ce-3b91cf2ccd3e");
    let (s, e) = app
        .post(
            &format!("/{d1}/clients"),
            Some(&t),
            json!({"id": "2766ae94-9a08-4418-82ce-3b91cf2ccd3e"}),
        )
        .await;
    assert_eq!(s, 409, "{e}");
    let (s, e) = app
        .post(
            &format!("/{d1}/clients"),
            Some(&t),
            json!({"credentials": {"secret": "94939159-9a08"}}),
        )
        .await;
    assert_eq!(s, 409, "{e}");
    app.client(&t, &d2, body).await;
    let (s, _) = app
        .post(&format!("/{d1}/clients"), Some(&t), json!({"id": "bad/id"}))
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn bulk_is_all_or_nothing() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("bulker").await;
    let d = app.domain(&t, "bulk").await;
    let (s, v) = app
        .post(
            &format!("/{d}/clients/bulk"),
            Some(&t),
            json!([
                {"name": "Motion Sensor", "credentials": {"identity": "motion-001", "secret": "secure-secret"}},
                {"name": "Humidity Sensor", "id": "eb2670ba-a2be-4ea4-83cb-111111111112"}
            ]),
        )
        .await;
    assert_eq!((s, &v["total"]), (200, &json!(2)), "{v}");
    assert_eq!(v["clients"][1]["id"], "eb2670ba-a2be-4ea4-83cb-111111111112");
    // The second item collides: nothing of this request is created.
    let (s, _) = app
        .post(
            &format!("/{d}/clients/bulk"),
            Some(&t),
            json!([{"name": "new one"}, {"credentials": {"secret": "secure-secret"}}]),
        )
        .await;
    assert_eq!(s, 409);
    let (_, v) = app.get(&format!("/{d}/clients?status=all"), &t).await;
    assert_eq!(v["total"], 2);
    let (s, _) = app.post(&format!("/{d}/clients/bulk"), Some(&t), json!([])).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn client_changes_are_announced() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("feeder").await;
    let d = app.domain(&t, "feed").await;
    let id = app.client(&t, &d, json!({"name": "x"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    app.drain_changes().await;
    let key = || (d.clone(), id.clone());
    app.call(Method::POST, &format!("/{d}/clients/{id}/disable"), Some(&t), None)
        .await;
    assert_eq!(
        app.next_change().await,
        Change::ClientDisabled {
            domain_id: key().0,
            client_id: key().1
        }
    );
    app.call(Method::POST, &format!("/{d}/clients/{id}/enable"), Some(&t), None)
        .await;
    assert_eq!(
        app.next_change().await,
        Change::ClientEnabled {
            domain_id: key().0,
            client_id: key().1
        }
    );
    app.patch(
        &format!("/{d}/clients/{id}/secret"),
        &t,
        json!({"secret": "another-secret"}),
    )
    .await;
    assert_eq!(
        app.next_change().await,
        Change::ClientSecretChanged {
            domain_id: key().0,
            client_id: key().1
        }
    );
    app.call(Method::DELETE, &format!("/{d}/clients/{id}"), Some(&t), None)
        .await;
    assert_eq!(
        app.next_change().await,
        Change::ClientDeleted {
            domain_id: key().0,
            client_id: key().1
        }
    );
}

/// #15 defect 5: `GET /clients` and `GET /channels` without a domain answer with the caller's
/// entities across the domains they belong to, with the same filters and page shape; nobody
/// sees another tenant's, and secrets are not shown.
#[tokio::test]
async fn clients_and_channels_across_the_callers_domains() {
    let app = TestApp::spawn().await;
    let (_, a) = app.user("multi").await;
    let (_, b) = app.user("single").await;
    let d1 = app.domain(&a, "multi-one").await;
    let d2 = app.domain(&a, "multi-two").await;
    let d3 = app.domain(&b, "single-one").await;
    for (t, d, name) in [(&a, &d1, "alpha"), (&a, &d2, "beta"), (&b, &d3, "gamma")] {
        app.client(t, d, json!({"name": name})).await;
        app.channel(t, d, name).await;
    }
    for (kind, key) in [("clients", "clients"), ("channels", "channels")] {
        let (s, v) = app.get(&format!("/{kind}"), &a).await;
        assert_eq!((s, &v["total"]), (200, &json!(2)), "{kind}: {v}");
        assert!(v.get("offset").is_some() && v.get("limit").is_some());
        let mut names: Vec<&str> = v[key]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["alpha", "beta"], "{kind}");
        let (s, v) = app.get(&format!("/{kind}?name=bet&limit=1"), &a).await;
        assert_eq!((s, &v["total"]), (200, &json!(1)), "{kind} filtered: {v}");
        let (s, v) = app.get(&format!("/{kind}"), &b).await;
        assert_eq!(
            (s, &v["total"]),
            (200, &json!(1)),
            "{kind}: another tenant's are not listed"
        );
        let (s, _) = app.call(Method::GET, &format!("/{kind}"), None, None).await;
        assert_eq!(s, 401);
        let (s, _) = app.get(&format!("/{kind}?limit=500"), &a).await;
        assert_eq!(s, 400);
    }
    let (_, v) = app.get("/clients", &a).await;
    assert!(
        v["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .all(|c| c["credentials"]["secret"].is_null()),
        "no secrets in the cross-domain list: {v}"
    );
}
