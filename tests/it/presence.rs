//! Device presence (#16): the broker's session events kept in the store and shown in the
//! client view, the `connected` list filter and the CLI.

use crate::engine::{env, Env};
use crate::helpers::TestApp;
use serde_json::Value;

/// A time field of a view (RFC 3339; its fraction has as many digits as it needs, so the
/// strings do not compare as times).
fn at(v: &Value, key: &str) -> time::OffsetDateTime {
    let s = v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"));
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("RFC 3339")
}

async fn client_view(e: &Env) -> Value {
    let (s, v) = e.app.get(&format!("/{}/clients/{}", e.d, e.c), &e.t).await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn listed(e: &Env, connected: bool) -> Vec<String> {
    let (s, v) = e
        .app
        .get(&format!("/{}/clients?connected={connected}", e.d), &e.t)
        .await;
    assert_eq!(s, 200, "{v}");
    v["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["id"].as_str().map(String::from))
        .collect()
}

/// A connection makes its client online with the session's MQTT client id, remote address
/// and protocol; its end makes it offline since then; the list filters on it (both levels).
#[tokio::test]
async fn connecting_and_disconnecting_updates_presence() {
    let e = env().await;
    let before = client_view(&e).await;
    assert_eq!(before["connected"], false);
    assert_eq!(before["sessions"], serde_json::json!([]));
    for v5 in [false, true] {
        let id = format!("presence-{v5}");
        let mut r = e.raw(v5, &id).await;
        e.app.presence_becomes(&e.d, &e.c, true).await;
        let v = client_view(&e).await;
        assert_eq!(v["connected"], true, "{v}");
        assert_eq!(v["protocol"], "mqtt");
        let local = r.local_addr();
        assert_eq!(v["remote_addr"], local.to_string(), "{v}");
        assert_eq!(v["sessions"][0]["client_id"], id.as_str());
        assert_eq!(v["sessions"][0]["remote_addr"], local.to_string());
        assert!(v["connected_at"].as_str().is_some_and(|t| t.starts_with("20")), "{v}");
        assert_eq!(listed(&e, true).await, vec![e.c.clone()]);
        assert!(listed(&e, false).await.is_empty());
        r.disconnect().await;
        e.app.presence_becomes(&e.d, &e.c, false).await;
        let v = client_view(&e).await;
        assert_eq!(v["connected"], false, "{v}");
        assert_eq!(v["sessions"], serde_json::json!([]));
        assert!(at(&v, "disconnected_at") >= at(&v, "connected_at"), "{v}");
        assert!(listed(&e, true).await.is_empty());
        assert_eq!(listed(&e, false).await, vec![e.c.clone()]);
    }
    let (s, v) = e.app.get(&format!("/{}/clients?connected=maybe", e.d), &e.t).await;
    assert_eq!(s, 400, "{v}");
}

/// A client that was online when the server stopped is offline after the restart, since the
/// stop.
#[tokio::test]
async fn presence_survives_a_restart_as_offline_since() {
    let e = env().await;
    let _r = e.raw(true, "presence-restart").await;
    e.app.presence_becomes(&e.d, &e.c, true).await;
    let (d, c, t) = (e.d.clone(), e.c.clone(), e.t.clone());
    let dir = e.app.stop().await;
    let app = TestApp::spawn_in(dir).await;
    let (s, v) = app.get(&format!("/{d}/clients/{c}"), &t).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["connected"], false, "{v}");
    assert!(at(&v, "disconnected_at") >= at(&v, "connected_at"), "{v}");
    assert_eq!(
        v["remote_addr"].as_str().map(|a| a.starts_with("127.0.0.1:")),
        Some(true)
    );
}

/// Disabling a client closes its session, and the client shows offline.
#[tokio::test]
async fn a_disabled_client_goes_offline() {
    let e = env().await;
    let mut r = e.raw(true, "presence-disabled").await;
    e.app.presence_becomes(&e.d, &e.c, true).await;
    let (s, v) = e
        .app
        .post(
            &format!("/{}/clients/{}/disable", e.d, e.c),
            Some(&e.t),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(r.closed().await, Some(0x98), "DISCONNECT administrative action");
    e.app.presence_becomes(&e.d, &e.c, false).await;
    let (s, v) = e
        .app
        .get(&format!("/{}/clients?connected=false&status=all", e.d), &e.t)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["clients"][0]["connected"], false, "{v}");
}

/// The CLI lists connected clients through the same filter.
#[tokio::test]
async fn the_cli_filters_on_presence() {
    let e = env().await;
    let _r = e.raw(false, "presence-cli").await;
    e.app.presence_becomes(&e.d, &e.c, true).await;
    let cli = crate::cli::Cli::new(&e.app);
    let v = cli
        .json(&["clients", "all", "get", &e.d, &e.t, "--connected", "true"])
        .await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["clients"][0]["connected"], true);
    let v = cli
        .json(&["clients", "all", "get", &e.d, &e.t, "--connected", "false"])
        .await;
    assert_eq!(v["total"], 0, "{v}");
}
