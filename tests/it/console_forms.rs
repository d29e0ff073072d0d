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
