//! The console end to end in real headless Chromium, driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them and sets FLUXGATE_REQUIRE_PEERS=1,
//! elsewhere the test is skipped with a notice when they are missing). MQTT traffic comes from
//! mosquitto_pub and mosquitto_sub.
//!
//! With FLUXGATE_SCREENSHOTS=<dir> the test also saves the README's screenshots there.

use crate::helpers::{TestApp, ADMIN_PASSWORD};
use base64::Engine;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process (in its own process group, killed with its browsers on drop) and
/// one browser session.
struct Driver {
    http: reqwest::Client,
    base: String,
    session: String,
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        // chromedriver says when it listens.
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("started successfully") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready.ok(), Some(true), "chromedriver did not start");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let profile = tempfile::tempdir().expect("profile dir");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {v}"))
            .to_string();
        let d = Driver {
            http,
            base,
            session,
            child,
            _profile: profile,
        };
        // Element look-ups wait (in the driver) for the element to appear.
        d.cmd("POST", "timeouts", json!({"implicit": 10_000, "script": 10_000}))
            .await;
        d
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let r = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = r.send().await.expect("webdriver").json().await.expect("json");
        if v["value"].get("error").is_some() {
            panic!("webdriver {method} {path} {body}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.cmd("POST", "url", json!({ "url": url })).await;
    }

    async fn url(&self) -> String {
        self.cmd("GET", "url", Value::Null)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Finds an element (waiting up to the implicit timeout).
    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd("POST", "element", json!({"using": "css selector", "value": css}))
            .await;
        v[ELEMENT].as_str().expect("element id").to_string()
    }

    async fn count(&self, css: &str) -> usize {
        self.script("return document.querySelectorAll(arguments[0]).length", json!([css]))
            .await
            .as_u64()
            .unwrap_or(0) as usize
    }

    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.cmd("GET", &format!("element/{e}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("element/{e}/click"), json!({})).await;
    }

    /// Clicks something that loads a new page, and waits until that page has loaded (the old
    /// document's body is marked; the driver waits for a body without the mark).
    async fn submit(&self, css: &str) {
        self.script("document.body.setAttribute('data-old', '1')", json!([]))
            .await;
        self.click(css).await;
        self.find("body:not([data-old])").await;
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("element/{e}/clear"), json!({})).await;
        self.cmd("POST", &format!("element/{e}/value"), json!({ "text": text }))
            .await;
    }

    async fn script(&self, js: &str, args: Value) -> Value {
        self.cmd("POST", "execute/sync", json!({"script": js, "args": args}))
            .await
    }

    /// Runs an async script; it calls its last argument with the result.
    async fn script_async(&self, js: &str, args: Value) -> Value {
        self.cmd("POST", "execute/async", json!({"script": js, "args": args}))
            .await
    }

    /// Waits (in the browser, on DOM changes) until an element's text contains `want`.
    async fn text_contains(&self, css: &str, want: &str) -> String {
        let js = "const [css, want, done] = arguments;
            const check = () => { const e = document.querySelector(css); return e && e.textContent.includes(want) ? e.textContent : null; };
            const t = check(); if (t) { done(t); return; }
            const o = new MutationObserver(() => { const t = check(); if (t) { o.disconnect(); done(t); } });
            o.observe(document.body, {subtree: true, childList: true, characterData: true});";
        let v = self.script_async(js, json!([css, want])).await;
        v.as_str().unwrap_or_default().to_string()
    }

    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("FLUXGATE_SCREENSHOTS") else {
            return;
        };
        let b64 = self.cmd("GET", "screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .expect("png");
        std::fs::write(std::path::Path::new(&dir).join(name), png).expect("write screenshot");
    }

    async fn cookie(&self, name: &str) -> Option<String> {
        let url = format!("{}/session/{}/cookie/{name}", self.base, self.session);
        let v: Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        v["value"]["value"].as_str().map(String::from)
    }

    async fn quit(&self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

/// Is Chromium with its driver installed? (Skips with a notice, or fails under
/// FLUXGATE_REQUIRE_PEERS.)
fn browser_available() -> bool {
    let install = "Debian: apt-get install chromium chromium-driver";
    std::path::Path::new(CHROMIUM).exists()
        && crate::peers::available_from(DRIVER, install)
        && crate::peers::available("mosquitto_pub")
        && crate::peers::available("mosquitto_sub")
}

fn id_after(url: &str, marker: &str) -> String {
    url.split(marker)
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        .unwrap_or_else(|| panic!("no {marker} in {url}"))
        .to_string()
}

async fn log_in(b: &Driver, base: &str, who: &str, password: &str) {
    b.go(&format!("{base}/console/")).await;
    assert!(b.url().await.ends_with("/console/login"), "sent to the login form");
    b.fill("#identity", who).await;
    b.fill("#password", password).await;
    b.submit("#login button[type=submit]").await;
    b.find("#logout").await;
}

/// Publishes one SenML temperature with mosquitto_pub (QoS 1: acknowledged when it exits).
async fn publish(port: &str, client: &str, secret: &str, topic: &str, v: &str) {
    let st = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port, "-q", "1", "-i", "e2e-pub"])
        .args(["-u", client, "-P", secret, "-t", topic])
        .args(["-m", &format!("[{{\"n\":\"temp\",\"u\":\"Cel\",\"v\":{v}}}]")])
        .status()
        .await
        .expect("mosquitto_pub");
    assert!(st.success());
}

#[tokio::test]
async fn console_end_to_end_in_chromium() {
    if !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("FLUXGATE_REQUIRE_PEERS").is_err(),
            "{CHROMIUM} is required (FLUXGATE_REQUIRE_PEERS is set) but not installed"
        );
        eprintln!("skipping: {CHROMIUM} not installed (Debian: apt-get install chromium chromium-driver)");
        return;
    }
    if !browser_available() {
        return;
    }
    let app = TestApp::spawn().await;
    let base = app.url.clone();
    let (_, _) = app.user("vera").await;
    let b = Driver::start().await;

    // Log in; create a domain, a client and a channel.
    log_in(&b, &base, "admin", ADMIN_PASSWORD).await;
    b.fill("#create-domain input[name=name]", "Plant").await;
    b.fill("#create-domain input[name=route]", "plant").await;
    b.submit("#create-domain button").await;
    b.find("#list").await;
    let d = id_after(&b.url().await, "/console/d/");

    // Bulk creation from an uploaded CSV file: one result per row.
    let csv = tempfile::Builder::new().suffix(".csv").tempfile().expect("csv");
    std::fs::write(csv.path(), "name,tags,secret\nbulk-1,a;b,\nbulk-2,,short\n").expect("write csv");
    let input = b.find("#csv-file").await;
    b.cmd(
        "POST",
        &format!("element/{input}/value"),
        json!({ "text": csv.path().display().to_string() }),
    )
    .await;
    b.find("#csv[data-loaded]").await;
    b.submit("#bulk button").await;
    let result = b.text("#bulk-result").await;
    assert!(result.contains("bulk-1") && result.contains("created"), "{result}");
    assert!(
        result.contains("bulk-2") && result.contains("client secret must be"),
        "{result}"
    );

    b.fill("#create input[name=name]", "thermometer").await;
    b.fill("#create input[name=tags]", "kitchen, sensor").await;
    b.submit("#create button").await;
    let client = b.text("#entity-id").await;
    b.go(&format!("{base}/console/d/{d}/channels")).await;
    b.fill("#create input[name=name]", "kitchen").await;
    b.submit("#create button").await;
    let channel = b.text("#entity-id").await;

    // Connect them from the client's page; read the secret on request.
    b.go(&format!("{base}/console/d/{d}/clients/{client}")).await;
    b.submit("#connect button").await;
    let rights = b.text("#connected").await;
    assert!(
        rights.contains("kitchen") && rights.contains("publish + subscribe"),
        "{rights}"
    );
    b.submit("#show-secret").await;
    let secret = b.text("#secret-value").await;
    assert_eq!(secret.len(), 32, "{secret}");

    // The channel's live view shows a message published with mosquitto_pub.
    b.go(&format!("{base}/console/d/{d}/channels/{channel}")).await;
    b.text_contains("#live-state", "live").await;
    let topic = format!("channels/{channel}/messages/temp");
    let port = app.mqtt_addr.port().to_string();
    for v in ["21.5", "22.25", "23"] {
        publish(&port, &client, &secret, &topic, v).await;
        let row = b.text_contains("#live tbody", v).await;
        assert!(
            row.contains(&client) && row.contains("mqtt") && row.contains("temp"),
            "{row}"
        );
    }
    let first = b.text("#live tr.live-row:last-child").await;
    assert!(first.contains("21.5") && first.contains("Cel"), "{first}");
    let year = time::OffsetDateTime::now_utc().year();
    assert!(
        first.contains(&format!("{year}-")),
        "an ISO 8601 time, not a Unix float: {first}"
    );

    // The chart of that measurement renders: an SVG with a point per message.
    app.stored_at_least(3).await;
    b.fill("#chart-form input[name=chart_name]", "temp").await;
    b.fill("#chart-form input[name=chart_interval]", "1s").await;
    // The range pickers hold the browser's local time (the page adds its zone offset).
    b.script(
        "const local = (ms) => { const d = new Date(ms); return new Date(ms - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19); };
         document.querySelector('#chart-form input[name=chart_from]').value = local(Date.now() - 300000);
         document.querySelector('#chart-form input[name=chart_to]').value = local(Date.now() + 60000);",
        json!([]),
    )
    .await;
    b.submit("#chart-form button").await;
    let chart = b
        .script_async(
            "const done = arguments[0]; const img = document.getElementById('chart');
             const go = async () => { const r = await fetch(img.src); const t = await r.text();
               done({status: r.status, type: r.headers.get('content-type'), width: img.naturalWidth, svg: t}); };
             if (img.complete) go(); else img.addEventListener('load', go);",
            json!([]),
        )
        .await;
    assert_eq!(chart["status"], 200, "{chart}");
    assert!(
        chart["type"].as_str().unwrap_or("").starts_with("image/svg+xml"),
        "{chart}"
    );
    assert!(chart["width"].as_u64().unwrap_or(0) > 0, "the image rendered: {chart}");
    let svg = chart["svg"].as_str().unwrap_or("");
    assert!(svg.contains("<svg") && svg.matches("<circle").count() >= 1, "{svg}");
    // The reloaded page watches again: one more message, then the README's picture.
    b.text_contains("#live-state", "live").await;
    publish(&port, &client, &secret, &topic, "23.5").await;
    b.text_contains("#live tbody", "23.5").await;
    b.screenshot("console-channel.png").await;

    // Disable the client: its MQTT session is closed and it shows offline.
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-i", "e2e-sub", "-q", "1"])
        .args(["-u", &client, "-P", &secret, "-t", &topic])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub");
    // Each mosquitto_pub above (four) came and went (one online and one offline event each).
    for _ in 0..4 {
        app.presence_becomes(&d, &client, false).await;
    }
    app.presence_becomes(&d, &client, true).await;
    b.go(&format!("{base}/console/d/{d}/clients/{client}")).await;
    assert_eq!(b.text("[data-presence]").await, "online");
    assert!(b.text("#sessions").await.contains("e2e-sub"));
    b.screenshot("console-client.png").await;
    b.submit("#do-disable").await;
    b.text_contains("#status", "disabled").await;
    let exited = tokio::time::timeout(Duration::from_secs(10), sub.wait()).await;
    assert!(exited.is_ok(), "the MQTT session of a disabled client is closed");
    app.presence_becomes(&d, &client, false).await;
    b.go(&format!("{base}/console/d/{d}/clients/{client}")).await;
    assert_eq!(b.text("[data-presence]").await, "offline");

    // Make vera a viewer from the members page; log out.
    b.go(&format!("{base}/console/d/{d}/members")).await;
    b.fill("#assign input[name=user]", "vera").await;
    b.submit("#assign button").await;
    let members = b.text("#members").await;
    assert!(members.contains("vera"), "{members}");
    b.submit("#logout").await;
    b.find("#login").await;

    // A viewer sees no edit controls, and a forged edit request is refused.
    log_in(&b, &base, "vera", "vera-password").await;
    b.go(&format!("{base}/console/d/{d}/clients/{client}")).await;
    let page = b.text("main").await;
    assert!(b.count("#presence").await == 1, "{page}");
    for control in [
        "#update",
        "#tags",
        "#do-enable",
        "#do-disable",
        "#delete",
        "#connect",
        "#show-secret",
    ] {
        assert_eq!(b.count(control).await, 0, "a viewer sees {control}");
    }
    let forged = b
        .script_async(
            "const done = arguments[0];
             const csrf = document.querySelector('input[name=csrf]').value;
             fetch(location.pathname, {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'},
               body: 'csrf=' + csrf + '&action=enable'}).then(r => done(r.status));",
            json!([]),
        )
        .await;
    assert_eq!(forged, 403);
    let admin = app.admin_token().await;
    let (_, c) = app.get(&format!("/{d}/clients/{client}"), &admin).await;
    assert_eq!(c["status"], "disabled", "the forged edit changed nothing");

    // Log out: the session no longer works, not even with a copy of its cookie.
    let cookie = b.cookie("fg_session").await.expect("session cookie");
    b.submit("#logout").await;
    b.find("#login").await;
    b.go(&format!("{base}/console/d/{d}/clients")).await;
    assert!(b.url().await.ends_with("/console/login"));
    let replay = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("{base}/console/d/{d}/clients"))
        .header("cookie", format!("fg_session={cookie}"))
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 303);
    b.quit().await;
}
