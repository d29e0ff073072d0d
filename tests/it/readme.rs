//! The README keeps its promises (#29, first contact): its quick tour runs literally from top
//! to bottom against a real server, and every configuration key and metric it names exists.

use crate::child::ChildServer;
use std::time::Duration;

const README: &str = include_str!("../../README.md");

/// The shell blocks of the quick tour, in order.
fn tour_blocks() -> Vec<String> {
    let start = README.find("## Quick tour").expect("a quick tour");
    let end = start + README[start..].find("Registry endpoints").expect("the tour's end");
    let tour = &README[start..end];
    let mut blocks = Vec::new();
    let mut rest = tour;
    while let Some(at) = rest.find("```sh\n") {
        let body = &rest[at + 6..];
        let close = body.find("```").expect("a closed block");
        blocks.push(body[..close].to_string());
        rest = &body[close + 3..];
    }
    blocks
}

/// Runs the tour's blocks as one script against a real server (only its addresses are put in:
/// the API URL and the MQTT port), with every `curl` call's HTTP status recorded: all of them
/// succeed, the MQTT subscriber prints the message, the chart is an SVG, and the messages read
/// back are as many as the README says.
#[tokio::test]
async fn the_quick_tour_runs_literally() {
    if !crate::peers::available("mosquitto_sub") || !crate::peers::available("curl") {
        return;
    }
    let s = ChildServer::start(&[]).await;
    let blocks = tour_blocks();
    assert!(blocks.len() >= 4, "{} blocks", blocks.len());
    let mut script = String::from(
        "STATUS_LOG=$PWD/statuses\n\
         curl() {\n\
           local body code\n\
           body=$(mktemp)\n\
           code=$(command curl -o \"$body\" -w '%{http_code}' \"$@\")\n\
           cat \"$body\"; rm -f \"$body\"\n\
           echo \"$code\" >> \"$STATUS_LOG\"\n\
         }\n",
    );
    for b in &blocks {
        let b = b
            .replace("API=http://localhost:9000", &format!("API=http://{}", s.http))
            .replace("-h localhost", &format!("-h 127.0.0.1 -p {}", s.mqtt.port()));
        script.push_str(&b);
        script.push('\n');
    }
    script.push_str("echo; echo \"__TOUR__ $CH $SECRET\"\n");
    let dir = tempfile::tempdir().expect("dir");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the tour finishes")
    .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let statuses = std::fs::read_to_string(dir.path().join("statuses")).expect("statuses");
    let codes: Vec<&str> = statuses.lines().collect();
    assert!(codes.len() >= 15, "{codes:?}\n{stdout}\n{stderr}");
    assert!(
        codes.iter().all(|c| c.starts_with('2')),
        "a tour command failed: {codes:?}\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(r#"[{"n":"temp","v":21.5}]"#),
        "mosquitto_sub printed it:\n{stdout}\n{stderr}"
    );
    let svg = std::fs::read_to_string(dir.path().join("temp.svg")).expect("temp.svg");
    assert!(svg.contains("<svg"), "{svg}");
    // The README's count of messages read back, reached once the writer stored them all.
    let tour = README.split("## Quick tour").nth(1).expect("tour");
    let claimed: u64 = tour
        .split("\"total\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("a claimed total");
    let vars = stdout
        .split("__TOUR__ ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .expect("the tour's ids");
    let (ch, secret) = vars.split_once(' ').expect("channel and secret");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{}/channels/{ch}/messages?limit=10", s.http))
            .header("authorization", format!("Client {secret}"))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        let total = v["total"].as_u64().unwrap_or(0);
        assert!(total <= claimed, "more than the README says: {v}");
        if total == claimed {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {total} of {claimed}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Backticked words of the README.
fn quoted() -> Vec<&'static str> {
    README
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| !t.contains('\n'))
        .collect()
}

/// Every `section.key` the README names (its first part a section of the configuration)
/// exists in the configuration, with the README's default where it gives one as `= value`.
#[test]
fn every_config_key_the_readme_names_exists() {
    let defaults: toml::Table = fluxgate::config::DEFAULT_CONFIG.parse().expect("config.toml");
    let mut checked = 0;
    for t in quoted() {
        let path = t.split([' ', '=']).next().unwrap_or("");
        let parts: Vec<&str> = path.split('.').collect();
        let key_like = parts.len() >= 2
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        if !key_like || !defaults.get(parts[0]).is_some_and(|v| v.is_table()) {
            continue;
        }
        let mut at = &defaults[parts[0]];
        for p in &parts[1..] {
            at = at
                .get(p)
                .unwrap_or_else(|| panic!("README names `{t}`, which is not a configuration key"));
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} keys found: the README's form changed?");
}

/// Every metric the README names (with or without the `fluxgate_` prefix, labels aside) is
/// exported by `/metrics`.
#[tokio::test]
async fn every_metric_the_readme_names_exists() {
    let app = crate::helpers::TestApp::spawn().await;
    app.admin_token().await;
    let (status, _) = app.call(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!(status, 200);
    let text = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    // Bare configuration keys (`nats_url`) are not metrics.
    let defaults: toml::Table = fluxgate::config::DEFAULT_CONFIG.parse().expect("config.toml");
    let keys: std::collections::HashSet<&str> = defaults
        .values()
        .filter_map(|v| v.as_table())
        .flat_map(|t| t.keys().map(String::as_str))
        .collect();
    let prefixes = [
        "fluxgate_",
        "mqtt_",
        "http_",
        "pipeline_",
        "store_",
        "cluster_",
        "nats_",
        "process_",
        "tls_",
    ];
    let mut checked = 0;
    for t in quoted() {
        let name = t.split('{').next().unwrap_or("");
        let metric_like = !keys.contains(name)
            && prefixes.iter().any(|p| name.starts_with(p))
            && name.contains('_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !metric_like {
            continue;
        }
        let full = if name.starts_with("fluxgate_") {
            name.to_string()
        } else {
            format!("fluxgate_{name}")
        };
        let cluster_only = full.starts_with("fluxgate_cluster_") || full.starts_with("fluxgate_nats_");
        if cluster_only {
            // Exported by cluster nodes only: named in the source instead.
            let bare = full.trim_start_matches("fluxgate_");
            let src = include_str!("../../src/telemetry.rs");
            assert!(
                src.contains(&format!("\"{bare}\"")),
                "README names `{t}`, which no node exports"
            );
        } else {
            assert!(
                exported.contains(full.as_str()),
                "README names `{t}`, which /metrics does not export"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} metrics found");
}

/// First contact 11: the release binary ships without debug info (it was 167 MB with it;
/// 27 MB without), and the README says its size.
#[test]
fn the_release_profile_strips_debug_info() {
    let manifest: toml::Table = include_str!("../../Cargo.toml").parse().expect("Cargo.toml");
    let release = &manifest["profile"]["release"];
    let debug = release.get("debug");
    assert!(
        debug.is_none_or(|d| d.as_integer() == Some(0) || d.as_bool() == Some(false)),
        "release keeps debug info: {debug:?}"
    );
    let strip = release.get("strip").and_then(|s| s.as_str());
    assert!(matches!(strip, Some("debuginfo" | "symbols")), "{strip:?}");
    assert!(README.contains("about 27 MB"), "README says the size");
}
