//! Channels and connections through the REST API, checked against the store's
//! authorization answers.

use crate::helpers::TestApp;
use reqwest::Method;
use serde_json::json;
use storage::{Change, ConnType};

#[tokio::test]
async fn channel_life_cycle_and_bulk() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("chan").await;
    let d = app.domain(&t, "chans").await;
    let (s, h) = app
        .post(&format!("/{d}/channels"), Some(&t), json!({"id": "48101ecd-1535-40c6-9ed8-5b1d21e371bb", "name": "Humidity Data", "metadata": {"location": "server1"}}))
        .await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(h["id"], "48101ecd-1535-40c6-9ed8-5b1d21e371bb");
    let (s, _) = app
        .post(
            &format!("/{d}/channels"),
            Some(&t),
            json!({"id": "48101ecd-1535-40c6-9ed8-5b1d21e371bb"}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = app
        .post(&format!("/{d}/channels"), Some(&t), json!({"id": "not-a-uuid"}))
        .await;
    assert_eq!(s, 400);
    let id = h["id"].as_str().expect("id");
    let base = format!("/{d}/channels/{id}");
    let (s, v) = app
        .call(
            Method::PUT,
            &base,
            Some(&t),
            Some(json!({"name": "Jane Doe", "metadata": {"location": "london"}})),
        )
        .await;
    assert_eq!((s, &v["name"]), (200, &json!("Jane Doe")));
    let (s, v) = app.patch(&base, &t, json!({"name": "Patched"})).await;
    assert_eq!(
        (s, &v["name"], &v["metadata"]["location"]),
        (200, &json!("Patched"), &json!("london"))
    );
    let (s, v) = app.patch(&format!("{base}/tags"), &t, json!({"tags": ["t"]})).await;
    assert_eq!((s, &v["tags"]), (200, &json!(["t"])));
    let (s, v) = app.call(Method::POST, &format!("{base}/disable"), Some(&t), None).await;
    assert_eq!((s, &v["status"]), (200, &json!("disabled")));
    let (s, v) = app.call(Method::POST, &format!("{base}/enable"), Some(&t), None).await;
    assert_eq!((s, &v["status"]), (200, &json!("enabled")));

    let (s, v) = app
        .post(
            &format!("/{d}/channels/bulk"),
            Some(&t),
            json!([{"name": "Light Data"}, {"name": "Pressure Data"}]),
        )
        .await;
    assert_eq!((s, &v["total"]), (200, &json!(2)));
    let (s, v) = app.get(&format!("/{d}/channels?limit=2&offset=1"), &t).await;
    assert_eq!(
        (s, &v["total"], v["channels"].as_array().map(Vec::len)),
        (200, &json!(3), Some(2))
    );
    let (s, v) = app.get(&format!("/{d}/channels?name=light"), &t).await;
    assert_eq!((s, &v["total"]), (200, &json!(1)));

    let (s, _) = app.call(Method::DELETE, &base, Some(&t), None).await;
    assert_eq!(s, 204);
    let (s, _) = app.get(&base, &t).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn connect_disconnect_and_authorization_answers() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("wire").await;
    let d = app.domain(&t, "wires").await;
    let c = app.client(&t, &d, json!({"name": "dev"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let h = app.channel(&t, &d, "ch").await;
    let can = |ty| {
        let (s, d, c, h) = (app.store.clone(), d.clone(), c.clone(), h.clone());
        async move {
            tokio::task::spawn_blocking(move || s.can(&d, &c, &h, ty).expect("query"))
                .await
                .expect("join")
        }
    };
    assert!(!can(ConnType::Publish).await);
    app.drain_changes().await;

    // One type, case-insensitive.
    let (s, _) = app
        .post(
            &format!("/{d}/channels/connect"),
            Some(&t),
            json!({"channel_ids": [h], "client_ids": [c], "types": ["PUBLISH"]}),
        )
        .await;
    assert_eq!(s, 201);
    assert!(can(ConnType::Publish).await);
    assert!(!can(ConnType::Subscribe).await);
    assert_eq!(
        app.next_change().await,
        Change::Connected {
            domain_id: d.clone(),
            client_id: c.clone(),
            channel_id: h.clone(),
            conn_type: ConnType::Publish
        }
    );
    // Both when omitted; listing shows the types from either side.
    let (s, _) = app
        .post(
            &format!("/{d}/channels/{h}/connect"),
            Some(&t),
            json!({"client_ids": [c]}),
        )
        .await;
    assert_eq!(s, 201);
    assert!(can(ConnType::Subscribe).await);
    let (_, v) = app.get(&format!("/{d}/clients?channel={h}"), &t).await;
    assert_eq!(
        (&v["total"], &v["clients"][0]["connection_types"]),
        (&json!(1), &json!(["publish", "subscribe"]))
    );
    let (_, v) = app.get(&format!("/{d}/channels?client={c}"), &t).await;
    assert_eq!(v["channels"][0]["connection_types"], json!(["publish", "subscribe"]));
    let (_, v) = app.get(&format!("/{d}/channels/{h}/clients"), &t).await;
    assert_eq!(v["total"], 1);
    let (_, v) = app.get(&format!("/{d}/clients/{c}/channels"), &t).await;
    assert_eq!(v["total"], 1);
    let (s, _) = app
        .post(
            &format!("/{d}/channels/connect"),
            Some(&t),
            json!({"channel_ids": [h], "client_ids": [c], "types": ["read"]}),
        )
        .await;
    assert_eq!(s, 400);

    app.drain_changes().await;
    let (s, _) = app
        .post(
            &format!("/{d}/channels/disconnect"),
            Some(&t),
            json!({"channel_ids": [h], "client_ids": [c], "types": ["subscribe"]}),
        )
        .await;
    assert_eq!(s, 204);
    assert!(can(ConnType::Publish).await);
    assert!(!can(ConnType::Subscribe).await);
    assert_eq!(
        app.next_change().await,
        Change::Disconnected {
            domain_id: d.clone(),
            client_id: c.clone(),
            channel_id: h.clone(),
            conn_type: ConnType::Subscribe
        }
    );
    // The documents' older spelling.
    let (s, _) = app
        .post(
            &format!("/{d}/channels/disconnect"),
            Some(&t),
            json!({"subjects": [c], "objects": [h]}),
        )
        .await;
    assert_eq!(s, 204);
    assert!(!can(ConnType::Publish).await);

    // Status changes turn answers off without touching connections.
    app.post(
        &format!("/{d}/channels/connect"),
        Some(&t),
        json!({"channel_ids": [h], "client_ids": [c]}),
    )
    .await;
    app.drain_changes().await;
    app.call(Method::POST, &format!("/{d}/channels/{h}/disable"), Some(&t), None)
        .await;
    assert!(!can(ConnType::Publish).await);
    assert_eq!(
        app.next_change().await,
        Change::ChannelDisabled {
            domain_id: d.clone(),
            channel_id: h.clone()
        }
    );
    app.call(Method::POST, &format!("/{d}/channels/{h}/enable"), Some(&t), None)
        .await;
    assert_eq!(
        app.next_change().await,
        Change::ChannelEnabled {
            domain_id: d.clone(),
            channel_id: h.clone()
        }
    );
    app.call(Method::POST, &format!("/{d}/clients/{c}/disable"), Some(&t), None)
        .await;
    assert!(!can(ConnType::Publish).await);
    app.call(Method::POST, &format!("/{d}/clients/{c}/enable"), Some(&t), None)
        .await;
    assert!(can(ConnType::Publish).await);
    app.drain_changes().await;
    app.call(Method::POST, &format!("/domains/{d}/disable"), Some(&t), None)
        .await;
    assert_eq!(app.next_change().await, Change::DomainDisabled { domain_id: d.clone() });
    assert!(!can(ConnType::Publish).await);
    app.call(Method::POST, &format!("/domains/{d}/enable"), Some(&t), None)
        .await;
    assert_eq!(app.next_change().await, Change::DomainEnabled { domain_id: d.clone() });
    let admin = app.admin_token().await;
    app.call(Method::POST, &format!("/domains/{d}/freeze"), Some(&admin), None)
        .await;
    assert_eq!(app.next_change().await, Change::DomainFrozen { domain_id: d.clone() });
    assert!(!can(ConnType::Publish).await);
    app.call(Method::POST, &format!("/domains/{d}/enable"), Some(&admin), None)
        .await;
    assert!(can(ConnType::Publish).await);

    // Deleting the channel removes its connections and is announced.
    app.drain_changes().await;
    let (s, _) = app
        .call(Method::DELETE, &format!("/{d}/channels/{h}"), Some(&t), None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        app.next_change().await,
        Change::ChannelDeleted {
            domain_id: d.clone(),
            channel_id: h.clone()
        }
    );
    let (_, v) = app.get(&format!("/{d}/clients/{c}/channels"), &t).await;
    assert_eq!(v["total"], 0);
}

#[tokio::test]
async fn deleting_a_client_removes_its_connections() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("deleter").await;
    let d = app.domain(&t, "del").await;
    let c = app.client(&t, &d, json!({"id": "dev-1"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let h = app.channel(&t, &d, "ch").await;
    app.post(
        &format!("/{d}/channels/connect"),
        Some(&t),
        json!({"channel_ids": [h], "client_ids": [c]}),
    )
    .await;
    let (s, _) = app
        .call(Method::DELETE, &format!("/{d}/clients/{c}"), Some(&t), None)
        .await;
    assert_eq!(s, 204);
    let (_, v) = app.get(&format!("/{d}/channels/{h}/clients"), &t).await;
    assert_eq!(v["total"], 0);
    // Re-creating the same id does not resurrect the old connections.
    app.client(&t, &d, json!({"id": "dev-1"})).await;
    let (_, v) = app.get(&format!("/{d}/channels/{h}/clients"), &t).await;
    assert_eq!(v["total"], 0);
}

/// #15 defect 4: a misspelt field in a create or update body is refused with 400 naming it,
/// and nothing is created; the spec's compatibility fields are kept (a channel's
/// `description` is stored and returned) or ignored (`domain_id`, which the path gives).
#[tokio::test]
async fn unknown_body_fields_are_refused_and_description_is_kept() {
    let app = TestApp::spawn().await;
    let (_, t) = app.user("typo").await;
    let d = app.domain(&t, "typos").await;
    let cases = [
        (Method::POST, format!("/{d}/channels"), json!({"nmae": "x"}), "nmae"),
        (
            Method::POST,
            format!("/{d}/clients"),
            json!({"name": "c", "secert": "s"}),
            "secert",
        ),
        (
            Method::POST,
            format!("/{d}/groups"),
            json!({"name": "g", "parent": "p"}),
            "parent",
        ),
        (
            Method::POST,
            "/domains".to_string(),
            json!({"name": "n", "route": "r1", "owner": "me"}),
            "owner",
        ),
        (
            Method::POST,
            format!("/{d}/clients/bulk"),
            json!([{"name": "ok"}, {"naem": "bad"}]),
            "naem",
        ),
        (
            Method::POST,
            "/users".to_string(),
            json!({"first_name": "a", "emial": "x@y.z"}),
            "emial",
        ),
    ];
    for (m, path, body, field) in cases {
        let (s, v) = app.call(m, &path, Some(&t), Some(body)).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert!(v["message"].as_str().unwrap_or("").contains(field), "{path}: {v}");
    }
    for list in ["channels", "clients", "groups"] {
        let (s, v) = app.get(&format!("/{d}/{list}"), &t).await;
        assert_eq!(s, 200);
        assert_eq!(v["total"], 0, "nothing created by a refused body: {v}");
    }

    let (s, h) = app
        .post(
            &format!("/{d}/channels"),
            Some(&t),
            json!({"name": "Temperature Data", "description": "Weather temperature data", "domain_id": "abc123-domain"}),
        )
        .await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(h["description"], "Weather temperature data");
    assert_eq!(h["domain_id"], d.as_str(), "the path's domain, not the body's");
    let id = h["id"].as_str().unwrap_or_default().to_string();
    let (s, v) = app
        .patch(&format!("/{d}/channels/{id}"), &t, json!({"name": "T", "nmae": "x"}))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = app
        .patch(&format!("/{d}/channels/{id}"), &t, json!({"description": "Outdoor"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = app.get(&format!("/{d}/channels/{id}"), &t).await;
    assert_eq!(v["description"], "Outdoor");
    assert_eq!(v["name"], "Temperature Data", "the refused update changed nothing");

    let (s, c) = app
        .post(
            &format!("/{d}/clients"),
            Some(&t),
            json!({"name": "dev", "domain_id": "elsewhere", "status": "enabled"}),
        )
        .await;
    assert_eq!(s, 201, "a client file's domain_id is ignored: {c}");
}
