//! TLS: MQTT over TLS with the platform CA, client certificates and mTLS login.

use crate::helpers::TestApp;
use crate::mqtt_client::{connect, Ev, Opts};
use reqwest::Method;
use serde_json::{json, Value};

async fn ca_pem(app: &TestApp) -> String {
    let r = app
        .client
        .get(format!("{}/certs/ca", app.url))
        .send()
        .await
        .expect("ca");
    assert_eq!(r.status(), 200);
    r.text().await.expect("pem")
}

/// A domain, channel and client connected both ways: (token, domain, channel, client, secret).
async fn setup(app: &TestApp) -> (String, String, String, String, String) {
    let (_, t) = app.user("tlsowner").await;
    let d = app.domain(&t, "tls").await;
    let h = app.channel(&t, &d, "ch").await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
    (t, d, h, c, s)
}

async fn issue(app: &TestApp, t: &str, d: &str, client: &str) -> Value {
    let (s, v) = app
        .post(
            &format!("/{d}/certs"),
            Some(t),
            json!({"client_id": client, "ttl": "24h"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v
}

fn tls_opts<'a>(
    id: &'a str,
    ca: &str,
    client_auth: Option<(&str, &str)>,
    user: Option<&'a str>,
    pass: Option<&'a str>,
) -> Opts<'a> {
    Opts {
        id,
        user,
        pass,
        tls: Some((
            ca.as_bytes().to_vec(),
            client_auth.map(|(c, k)| (c.as_bytes().to_vec(), k.as_bytes().to_vec())),
        )),
        ..Default::default()
    }
}

#[tokio::test]
async fn password_login_over_tls_with_the_platform_ca() {
    let app = TestApp::spawn().await;
    let (_, _, h, c, s) = setup(&app).await;
    let ca = ca_pem(&app).await;
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let addr = app.mqtts_addr.expect("tls listener");
    let mut conn = connect(addr, tls_opts("tls-pw", &ca, None, Some(&c), Some(&s)))
        .connected()
        .await;
    let topic = format!("channels/{h}/messages");
    assert_eq!(conn.subscribe(&topic, 1).await, vec![1]);
    conn.publish(&topic, b"over tls", 1, false).await;
    assert_eq!(conn.message().await.1, b"over tls".to_vec());
    // Wrong password over TLS is still refused.
    let mut bad = connect(addr, tls_opts("tls-bad", &ca, None, Some(&c), Some("wrong-secret")));
    assert_eq!(bad.connack().await, 4);
}

#[tokio::test]
async fn certificate_login_revocation_and_refusals() {
    let app = TestApp::spawn().await;
    let (t, d, h, c, _) = setup(&app).await;
    let ca = ca_pem(&app).await;
    let addr = app.mqtts_addr.expect("tls listener");
    let cert = issue(&app, &t, &d, &c).await;
    assert_eq!((&cert["client_id"], &cert["issuing_ca"]), (&json!(c), &json!(ca)));
    let (pem, key, serial) = (
        cert["client_cert"].as_str().expect("c"),
        cert["client_key"].as_str().expect("k"),
        cert["serial"].as_str().expect("s"),
    );
    assert!(key.contains("PRIVATE KEY"));

    // Listing and lookup; the key is not stored.
    let (st, v) = app.get(&format!("/{d}/serials/{c}"), &t).await;
    assert_eq!((st, &v["total"]), (200, &json!(1)));
    assert!(!v.to_string().contains("PRIVATE KEY"));
    let (st, v) = app.get(&format!("/{d}/certs/{serial}"), &t).await;
    assert_eq!((st, &v["revoked"]), (200, &json!(false)));
    let (st, _) = app
        .post(&format!("/{d}/certs"), Some(&t), json!({"client_id": "no-such-client"}))
        .await;
    assert_eq!(st, 404);

    // mTLS: no password needed.
    let mut conn = connect(addr, tls_opts("mtls", &ca, Some((pem, key)), None, None))
        .connected()
        .await;
    let topic = format!("channels/{h}/messages");
    assert_eq!(conn.subscribe(&topic, 0).await, vec![0]);
    conn.publish(&topic, b"by certificate", 0, false).await;
    assert_eq!(conn.message().await.1, b"by certificate".to_vec());

    // Revoking closes the live session and refuses new ones; the CRL lists it.
    let (st, v) = app
        .call(Method::DELETE, &format!("/{d}/certs/{serial}"), Some(&t), None)
        .await;
    assert_eq!(st, 200, "{v}");
    conn.closed().await;
    let mut again = connect(addr, tls_opts("mtls2", &ca, Some((pem, key)), None, None));
    assert_eq!(again.connack().await, 5);
    let crl = app
        .client
        .get(format!("{}/certs/crl", app.url))
        .send()
        .await
        .expect("crl")
        .text()
        .await
        .expect("text");
    assert!(crl.contains("BEGIN X509 CRL"));

    // A certificate from another CA fails the handshake.
    let other_dir = tempfile::tempdir().expect("tmp");
    let other = certs::Ca::load_or_create(other_dir.path(), None).expect("ca");
    let now = time::OffsetDateTime::now_utc();
    let foreign = other
        .issue_client(&c, now - time::Duration::hours(1), now + time::Duration::hours(1))
        .expect("issue");
    let mut f = connect(
        addr,
        tls_opts("foreign", &ca, Some((&foreign.cert_pem, &foreign.key_pem)), None, None),
    );
    assert!(matches!(f.next().await, Ev::Closed(_)));

    // An expired certificate from the platform CA fails too.
    let platform = certs::Ca::load_or_create(&app.data_dir, None).expect("platform ca");
    let expired = platform
        .issue_client(&c, now - time::Duration::days(2), now - time::Duration::days(1))
        .expect("issue");
    let rec = storage::CertRecord {
        serial: expired.serial.clone(),
        domain_id: d.clone(),
        client_id: c.clone(),
        expire: expired.expire.unix_timestamp(),
        revoked_at: None,
    };
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.insert_cert(&rec).expect("record"))
        .await
        .expect("record");
    let mut e = connect(
        addr,
        tls_opts("expired", &ca, Some((&expired.cert_pem, &expired.key_pem)), None, None),
    );
    assert!(matches!(e.next().await, Ev::Closed(_)));
}

#[tokio::test]
async fn bad_handshakes_leave_the_listener_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let (_, _, _, c, s) = setup(&app).await;
    let ca = ca_pem(&app).await;
    let addr = app.mqtts_addr.expect("tls listener");
    // Plain MQTT on the TLS port: the server closes it.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    plain
        .write_all(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0])
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(15), plain.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert!(n == 0 || buf[0] == 0x15, "no MQTT answer on the TLS port");
    // TLS 1.1 is refused: a TLS 1.1 ClientHello (written by hand: Debian's OpenSSL will not
    // offer 1.1, rustls cannot) gets a fatal alert (rustls: handshake_failure), not a
    // ServerHello.
    let (record, level, _) = tls11_hello_answer(addr).await;
    assert_eq!((record, level), (0x15, 2), "a fatal alert, not a ServerHello (0x16)");
    // The listener still serves a proper client.
    let mut ok = connect(addr, tls_opts("after", &ca, None, Some(&c), Some(&s)));
    assert_eq!(ok.connack().await, 0);
}

#[tokio::test]
async fn certificates_survive_a_restart() {
    let app = TestApp::spawn().await;
    let (t, d, h, c, _) = setup(&app).await;
    let ca = ca_pem(&app).await;
    let cert = issue(&app, &t, &d, &c).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(app.data_dir.join("ca.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir).await;
    assert_eq!(ca_pem(&app).await, ca, "the same CA after a restart");
    let addr = app.mqtts_addr.expect("tls");
    let (pem, key) = (
        cert["client_cert"].as_str().expect("c"),
        cert["client_key"].as_str().expect("k"),
    );
    let mut conn = connect(addr, tls_opts("restart", &ca, Some((pem, key)), None, None))
        .connected()
        .await;
    assert_eq!(conn.subscribe(&format!("channels/{h}/messages"), 0).await, vec![0]);
}

#[tokio::test]
async fn https_api_and_secure_websocket() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = crate::helpers::test_config(dir.path());
    cfg.http.tls = true;
    cfg.tls.wss_addr = "127.0.0.1:0".into();
    let data = dir.path().to_path_buf();
    // The helper talks plain HTTP; here the API is checked with curl over HTTPS.
    let app = fluxgate::App::build(cfg, fluxgate::Hooks::default())
        .await
        .expect("build");
    let (http, wss) = (app.http_addr(), app.wss_addr().expect("wss"));
    let store = app.store();
    tokio::spawn(app.run(std::future::pending()));
    let ca_file = data.join("ca.crt");
    if crate::peers::available("curl") {
        https_checked_with_curl(&ca_file, http).await;
    }

    // MQTT over secure WebSocket with a device provisioned directly in the store (on a
    // blocking thread, as the server calls its store).
    let h = uuid::Uuid::new_v4().to_string();
    let channel = h.clone();
    tokio::task::spawn_blocking(move || provision_wss_device(&store, &channel))
        .await
        .expect("provision");
    let ca = std::fs::read(&ca_file).expect("ca");
    let mut opts = rumqttc::MqttOptions::new("wss-client", format!("wss://localhost:{}/mqtt", wss.port()), wss.port());
    opts.set_credentials("wss-dev", "wss-secret-1");
    opts.set_transport(rumqttc::Transport::Wss(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth: None,
    }));
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    let topic = format!("channels/{h}/messages");
    client.subscribe(&topic, rumqttc::QoS::AtLeastOnce).await.expect("sub");
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, b"wss".to_vec())
        .await
        .expect("pub");
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => return p.payload.to_vec(),
                Ok(_) => continue,
                Err(e) => panic!("wss connection failed: {e}"),
            }
        }
    })
    .await
    .expect("message in time");
    assert_eq!(got, b"wss".to_vec());
}

/// The API over HTTPS answers with the platform CA; plain HTTP is not served.
async fn https_checked_with_curl(ca_file: &std::path::Path, http: std::net::SocketAddr) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            ca_file.to_str().expect("p"),
            &format!("https://127.0.0.1:{}/health", http.port()),
        ])
        .output()
        .await
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"status\":\"pass\""),
        "{:?}",
        out
    );
    // The console's cookies are Secure when the API is served over TLS.
    let login = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            ca_file.to_str().expect("p"),
            &format!("https://127.0.0.1:{}/console/login", http.port()),
        ])
        .output()
        .await
        .expect("curl");
    let head = String::from_utf8_lossy(&login.stdout).to_ascii_lowercase();
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    let plain = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{}/health", http.port()),
        ])
        .output()
        .await
        .expect("curl");
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("pass"),
        "plain HTTP is not served"
    );
}

/// Presence names the transport of each connection: `mqtts` over TLS, `ws` over WebSocket.
#[tokio::test]
async fn presence_names_the_transport() {
    let app = TestApp::spawn().await;
    let (t, d, _, c, s) = setup(&app).await;
    let ca = ca_pem(&app).await;
    let tls = connect(
        app.mqtts_addr.expect("tls listener"),
        tls_opts("presence-tls", &ca, None, Some(&c), Some(&s)),
    )
    .connected()
    .await;
    app.presence_becomes(&d, &c, true).await;
    let (_, v) = app.get(&format!("/{d}/clients/{c}"), &t).await;
    assert_eq!(
        (v["protocol"].as_str(), v["sessions"][0]["protocol"].as_str()),
        (Some("mqtts"), Some("mqtts")),
        "{v}"
    );
    tls.disconnect().await;
    app.presence_becomes(&d, &c, false).await;
    let ws = connect(
        app.ws_addr.expect("ws listener"),
        Opts {
            id: "presence-ws",
            user: Some(&c),
            pass: Some(&s),
            ws: true,
            ..Default::default()
        },
    )
    .connected()
    .await;
    app.presence_becomes(&d, &c, true).await;
    let (_, v) = app.get(&format!("/{d}/clients/{c}"), &t).await;
    assert_eq!(
        (v["protocol"].as_str(), v["sessions"][0]["client_id"].as_str()),
        (Some("ws"), Some("presence-ws")),
        "{v}"
    );
    ws.disconnect().await;
}

/// Sends a TLS 1.1 ClientHello (no supported_versions extension, TLS 1.0/1.1 cipher suites)
/// and returns the answer's record type, and for an alert its level and description.
async fn tls11_hello_answer(addr: std::net::SocketAddr) -> (u8, u8, u8) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut hello = vec![0x03, 0x02]; // client_version: TLS 1.1
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
    let suites: [u16; 4] = [0xC013, 0xC014, 0x002F, 0x0035];
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for c in suites {
        hello.extend_from_slice(&c.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null
    let mut hs = vec![1, 0, (hello.len() >> 8) as u8, hello.len() as u8];
    hs.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend_from_slice(&hs);
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    s.write_all(&record).await.expect("hello");
    let mut buf = [0u8; 7];
    tokio::time::timeout(std::time::Duration::from_secs(15), s.read_exact(&mut buf))
        .await
        .expect("an answer in time")
        .expect("a whole record header and body");
    (buf[0], buf[5], buf[6])
}

/// A domain with channel `h` and device `wss-dev` (secret `wss-secret-1`) connected to it.
fn provision_wss_device(store: &storage::Store, h: &str) {
    let admin = store.user_by_identity("admin").expect("q").expect("admin");
    let d = store
        .create_domain(
            storage::NewDomain {
                id: uuid::Uuid::new_v4().to_string(),
                name: "w".into(),
                route: "wss".into(),
                tags: storage::JsonText::empty_array(),
                metadata: storage::JsonText::empty_object(),
            },
            &admin.id,
        )
        .expect("domain");
    store
        .create_channels(
            &d.id,
            &[storage::NewChannel {
                description: String::new(),
                id: h.to_string(),
                name: "c".into(),
                parent_group_id: None,
                tags: storage::JsonText::empty_array(),
                metadata: storage::JsonText::empty_object(),
                status: storage::Status::Enabled,
            }],
        )
        .expect("channel");
    store
        .create_clients(
            &d.id,
            &[storage::NewClient {
                id: "wss-dev".into(),
                name: String::new(),
                identity: String::new(),
                secret: "wss-secret-1".into(),
                tags: storage::JsonText::empty_array(),
                metadata: storage::JsonText::empty_object(),
                status: storage::Status::Enabled,
            }],
        )
        .expect("client");
    store
        .connect(&d.id, &["wss-dev".into()], &[h.to_string()], &storage::ConnType::BOTH)
        .expect("connect");
}
