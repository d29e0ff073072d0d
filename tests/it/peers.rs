//! Third-party MQTT clients (Debian's mosquitto-clients) against Fluxgate. `.ci/run`
//! installs them and sets FLUXGATE_REQUIRE_PEERS=1; elsewhere the test is skipped with a
//! notice when the tools are missing.

use crate::helpers::TestApp;
use std::process::Stdio;
use tokio::process::Command;

/// Is `tool` installed? Missing: skipped with a notice, or a failure when
/// FLUXGATE_REQUIRE_PEERS is set (as `.ci/run` does).
pub(crate) fn available(tool: &str) -> bool {
    available_from(tool, "Debian: apt-get install mosquitto-clients curl openssl")
}

/// [`available`], naming where `tool` comes from in the notice.
pub(crate) fn available_from(tool: &str, install: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        // Spawning is the test: some tools (mosquitto_sub) exit non-zero on --version.
        .is_ok();
    if !found {
        assert!(
            std::env::var("FLUXGATE_REQUIRE_PEERS").is_err(),
            "{tool} is required (FLUXGATE_REQUIRE_PEERS is set) but not installed"
        );
        eprintln!("skipping: {tool} not installed ({install})");
    }
    found
}

#[tokio::test]
async fn mosquitto_clients_publish_and_receive() {
    if !available("mosquitto_sub") || !available("mosquitto_pub") {
        return;
    }
    let app = TestApp::spawn().await;
    let (_, t) = app.user("mosq").await;
    let d = app.domain(&t, "mosq").await;
    let h = app.channel(&t, &d, "ch").await;
    let (c, s) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish", "subscribe"]).await;
    let port = app.mqtt_addr.port().to_string();
    let topic = format!("channels/{h}/messages/temp");
    // Retained messages make the order of publisher and subscriber irrelevant.
    for version in ["mqttv311", "mqttv5"] {
        let t = format!("{topic}/{version}");
        let st = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                &c,
                "-P",
                &s,
                "-t",
                &t,
                "-m",
                "21.5",
                "-q",
                "1",
                "-r",
                "-V",
                version,
            ])
            .status()
            .await
            .expect("mosquitto_pub");
        assert!(st.success(), "mosquitto_pub {version}");
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            Command::new("mosquitto_sub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-u",
                    &c,
                    "-P",
                    &s,
                    "-t",
                    &t,
                    "-C",
                    "1",
                    "-W",
                    "20",
                    "-V",
                    version,
                ])
                .output(),
        )
        .await
        .expect("in time")
        .expect("mosquitto_sub");
        assert!(out.status.success(), "mosquitto_sub {version}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "21.5");
    }

    // Over TLS, trusting the platform CA.
    let ca = app
        .client
        .get(format!("{}/certs/ca", app.url))
        .send()
        .await
        .expect("ca")
        .text()
        .await
        .expect("pem");
    let ca_file = app.data_dir.join("downloaded-ca.pem");
    std::fs::write(&ca_file, ca).expect("write ca");
    let tls_port = app.mqtts_addr.expect("tls").port().to_string();
    let t = format!("{topic}/tls");
    let ca_arg = ca_file.to_str().expect("path");
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port,
            "--cafile",
            ca_arg,
            "-u",
            &c,
            "-P",
            &s,
            "-t",
            &t,
            "-m",
            "secure",
            "-q",
            "1",
            "-r",
        ])
        .status()
        .await
        .expect("mosquitto_pub");
    assert!(st.success(), "mosquitto_pub over TLS");
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port,
            "--cafile",
            ca_arg,
            "-u",
            &c,
            "-P",
            &s,
            "-t",
            &t,
            "-C",
            "1",
            "-W",
            "20",
        ])
        .output()
        .await
        .expect("mosquitto_sub");
    assert!(out.status.success(), "mosquitto_sub over TLS");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "secure");

    // Wrong credentials: mosquitto_pub fails.
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            &c,
            "-P",
            "wrong",
            "-t",
            &topic,
            "-m",
            "x",
        ])
        .stderr(Stdio::null())
        .status()
        .await
        .expect("mosquitto_pub");
    assert!(!st.success());
}
