//! The console's forms and listings at first contact (#29): what a newcomer types is kept
//! when the API refuses it, and entities without a name are still shown.

use crate::console::Browser;
use crate::helpers::{TestApp, ADMIN_PASSWORD};
use serde_json::json;

/// First contact 3: when the API refuses a form (metadata that is not JSON), the page shows
/// the error next to the form, keeps everything the user typed, and marks the field at fault.
#[tokio::test]
async fn a_refused_form_keeps_what_was_typed_and_marks_the_field() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let d = app.domain(&token, "forms").await;
    let mut b = Browser::new(&app);
    assert_eq!(b.login("admin", ADMIN_PASSWORD).await.status, 303);
    let here = format!("/console/d/{d}/clients");
    let csrf = b.csrf(&here).await;
    let page = b
        .post(
            &here,
            &[
                ("csrf", &csrf),
                ("action", "create"),
                ("name", "boiler-7"),
                ("tags", "basement, gas"),
                ("metadata", "{\"floor\": -1"),
            ],
        )
        .await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("metadata is not valid JSON"), "{}", page.body);
    assert!(
        page.body.contains("value=\"boiler-7\""),
        "the name is kept:\n{}",
        page.body
    );
    assert!(page.body.contains("value=\"basement, gas\""), "the tags are kept");
    assert!(
        page.body.contains("{&quot;floor&quot;: -1</textarea>"),
        "the metadata is kept:\n{}",
        page.body
    );
    assert!(
        page.body.contains("name=\"metadata\" rows=\"2\" aria-invalid=\"true\""),
        "the metadata field is marked:\n{}",
        page.body
    );
    assert!(
        !page
            .body
            .contains("name=\"name\" required value=\"boiler-7\" aria-invalid"),
        "only that field"
    );
}

/// First contact 5: clients and channels created without a name (`{}`; the API accepts it, as
/// Magistrala does for clients) are listed with their id as the link text, and their pages
/// open titled by it. (Groups need a name, as in Magistrala.)
#[tokio::test]
async fn nameless_entities_are_shown_by_their_id() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let d = app.domain(&token, "nameless").await;
    let mut b = Browser::new(&app);
    assert_eq!(b.login("admin", ADMIN_PASSWORD).await.status, 303);
    for kind in ["clients", "channels"] {
        let (s, v) = app.post(&format!("/{d}/{kind}"), Some(&token), json!({})).await;
        assert_eq!(s, 201, "{kind}: {v}");
        let id = v["id"].as_str().expect("id");
        let list = b.get(&format!("/console/d/{d}/{kind}")).await;
        assert_eq!(list.status, 200, "{}", list.body);
        let link = format!("<a href=\"/console/d/{d}/{kind}/{id}\">{id}</a>");
        assert!(list.body.contains(&link), "{kind}: no {link} in\n{}", list.body);
        let page = b.get(&format!("/console/d/{d}/{kind}/{id}")).await;
        assert_eq!(page.status, 200, "{kind}: {}", page.body);
        assert!(
            page.body.contains(&format!("<h1>{id}")),
            "{kind}: titled by its id\n{}",
            page.body
        );
    }
}

/// First contact 4: the channel page's history shows raw and JSON messages (the README's own
/// `-m hi`), times as ISO 8601, and date-time pickers for the chart and the history range
/// (a picker's local time plus the browser's offset `tz` filters as it should).
#[tokio::test]
async fn the_history_shows_every_payload_with_iso_times_and_pickers() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let d = app.domain(&token, "history").await;
    let h = app.channel(&token, &d, "hall").await;
    let (c, secret) = app.device(&token, &d).await;
    app.connect(&token, &d, &c, &h, &["publish"]).await;
    // `mosquitto_pub -m hi`: a raw payload over MQTT; and a JSON one over HTTP.
    let conn = crate::raw::Connect::new(false, "history-pub", &c, &secret);
    let mut p = crate::raw::Raw::ok(app.mqtt_addr, &conn).await;
    p.publish(&format!("channels/{h}/messages"), b"hi", 1, false, 1).await;
    let auth = format!("Client {secret}");
    let path = format!("/http/channels/{h}/messages");
    assert_eq!(
        app.send(&path, &auth, "application/json", r#"{"door":"open","n":1}"#)
            .await
            .0,
        202
    );
    app.stored_at_least(2).await;
    let mut b = Browser::new(&app);
    assert_eq!(b.login("admin", ADMIN_PASSWORD).await.status, 303);
    let here = format!("/console/d/{d}/channels/{h}");
    let page = b.get(&here).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let history = &page.body[page.body.find("id=\"history\"").expect("history")..];
    assert!(
        history.contains("<pre class=\"payload\">hi</pre>"),
        "the raw message:\n{history}"
    );
    assert!(
        history.contains("&quot;door&quot;: &quot;open&quot;"),
        "the JSON message, pretty:\n{history}"
    );
    let year = time::OffsetDateTime::now_utc().year();
    assert!(
        history.contains(&format!("<time datetime=\"{year}-")),
        "ISO times:\n{history}"
    );
    assert!(!page.body.contains("Unix s"), "no Unix seconds asked for");
    assert!(page
        .body
        .contains("type=\"datetime-local\" step=\"1\" name=\"chart_from\""));
    assert!(page.body.contains("type=\"datetime-local\" step=\"1\" name=\"from\""));
    // A range in local time, 60 minutes ahead of UTC (tz=-60): an hour ago .. in an hour.
    let local = |offset_h: i64| {
        let t = time::OffsetDateTime::now_utc() + time::Duration::hours(1 + offset_h);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        )
    };
    let within = b
        .get(&format!("{here}?from={}&to={}&tz=-60", local(-1), local(1)))
        .await;
    assert!(within.body.contains("2 messages in all"), "{}", within.body);
    let later = b.get(&format!("{here}?from={}&tz=-60", local(1))).await;
    assert!(later.body.contains("0 messages in all"), "{}", later.body);
}

/// First contact 6: the super-admin manages users in the console (create, disable, enable,
/// send a password reset) and anyone changes their own password there; another user is
/// refused the users page.
#[tokio::test]
async fn the_super_admin_manages_users_and_anyone_changes_their_password() {
    let app = TestApp::spawn().await;
    let mut admin = Browser::new(&app);
    assert_eq!(admin.login("admin", ADMIN_PASSWORD).await.status, 303);
    let home = admin.get("/console/").await;
    assert!(
        home.body.contains("href=\"/console/users\""),
        "a Users link for the super-admin"
    );
    let csrf = admin.csrf("/console/users").await;
    let created = admin
        .post(
            "/console/users",
            &[
                ("csrf", &csrf),
                ("action", "create"),
                ("first_name", "Dana"),
                ("last_name", "Scully"),
                ("email", "dana@example.com"),
                ("username", "dana"),
                ("password", "dana-password"),
            ],
        )
        .await;
    assert_eq!(
        (created.status, created.location()),
        (303, "/console/users"),
        "{}",
        created.body
    );
    let (s, v) = app.get("/users?name=dana", &app.admin_token().await).await;
    assert_eq!(s, 200, "{v}");
    let dana = v["users"][0]["id"].as_str().expect("dana").to_string();
    let act = |a: &'static str| {
        [
            ("csrf", csrf.clone()),
            ("action", a.to_string()),
            ("user", dana.clone()),
        ]
    };
    let page = admin.post("/console/users", &to_refs(&act("disable"))).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(app.login("dana", "dana-password").await.0, 401, "disabled");
    assert_eq!(admin.post("/console/users", &to_refs(&act("enable"))).await.status, 303);
    assert_eq!(app.login("dana", "dana-password").await.0, 201, "enabled again");
    assert_eq!(admin.post("/console/users", &to_refs(&act("reset"))).await.status, 303);
    assert!(
        app.mailbox.token_for("dana@example.com").is_some(),
        "a reset e-mail went out"
    );

    // Dana: no users page; her own password.
    let mut b = Browser::new(&app);
    assert_eq!(b.login("dana", "dana-password").await.status, 303);
    assert_eq!(b.get("/console/users").await.status, 403);
    let csrf = b.csrf("/console/account").await;
    let mismatch = change_password(&mut b, &csrf, "something-else").await;
    assert_eq!(mismatch.status, 400);
    assert!(mismatch.body.contains("differ"), "{}", mismatch.body);
    let changed = change_password(&mut b, &csrf, "dana-new-password").await;
    assert_eq!(
        (changed.status, changed.location()),
        (303, "/console/login"),
        "{}",
        changed.body
    );
    assert_eq!(
        app.login("dana", "dana-password").await.0,
        401,
        "the old password is gone"
    );
    assert_eq!(app.login("dana", "dana-new-password").await.0, 201);
}

/// Dana's password form: from dana-password to dana-new-password, confirmed as `confirm`.
async fn change_password(b: &mut Browser, csrf: &str, confirm: &str) -> crate::console::Page {
    b.post(
        "/console/account",
        &[
            ("csrf", csrf),
            ("action", "password"),
            ("old_password", "dana-password"),
            ("new_password", "dana-new-password"),
            ("confirm_password", confirm),
        ],
    )
    .await
}

fn to_refs<'a>(pairs: &'a [(&'static str, String); 3]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
