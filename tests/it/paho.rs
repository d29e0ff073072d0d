//! The Eclipse Paho MQTT interoperability suites (3.1.1 `client_test`, 5 `client_test5`),
//! run unchanged from where they are kept (`../shared/peers/paho.mqtt.testing`, never copied
//! here) by `tests/peers/paho_run.py`, against a real `fluxgate serve` with
//! `mqtt.allow_anonymous = true` (#30). Every test must pass except those that need a
//! broker-specific setup: a deny rule (`test_subscribe_failure`) or a server keep-alive
//! constant (`test_server_keep_alive`).
//!
//! The suites time their waits with sleeps, and some publish right after a SUBSCRIBE without
//! waiting for its SUBACK; on a busy machine a test may miss one, so a test that fails is run
//! again on its own (up to 5 times) before it counts as failed.

use crate::child::ChildServer;
use std::path::PathBuf;

/// Tests that need a broker-specific deny rule or constant.
const NEEDS_SETUP: [&str; 2] = ["test_subscribe_failure", "test_server_keep_alive"];

/// Where the suites are: `FLUXGATE_PAHO_DIR`, else beside the repository (`../shared/peers`).
fn suites() -> Option<PathBuf> {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/paho.mqtt.testing/interoperability");
    std::env::var_os("FLUXGATE_PAHO_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            beside,
            PathBuf::from("/work/shared/peers/paho.mqtt.testing/interoperability"),
        ])
        .find(|d| d.join("client_test5.py").is_file())
}

/// Runs `suite` (or only `tests` of it); returns (tests run, names of those that failed).
async fn run(dir: &std::path::Path, suite: &str, port: u16, tests: &[String]) -> (usize, Vec<String>, String) {
    let wrapper = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/paho_run.py");
    let out = tokio::process::Command::new("python3")
        .arg(&wrapper)
        .arg(dir)
        .arg(suite)
        .arg(port.to_string())
        .args(tests)
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(600), out)
        .await
        .expect("the suite finished within 10 minutes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        panic!("{suite}: no result\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    };
    let v: serde_json::Value = serde_json::from_str(line).expect("result JSON");
    let failed = v["failed"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    // The suite's own report (unittest writes it to stderr), for a failure's why.
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    (v["run"].as_u64().unwrap_or(0) as usize, failed, report)
}

#[tokio::test]
async fn paho_interoperability_suites_pass_at_both_levels() {
    let Some(dir) = suites() else {
        assert!(
            std::env::var_os("FLUXGATE_REQUIRE_PAHO").is_none(),
            "FLUXGATE_REQUIRE_PAHO is set but the Paho suites are not found (FLUXGATE_PAHO_DIR)"
        );
        eprintln!("SKIPPED: the Paho interoperability suites are not found (set FLUXGATE_PAHO_DIR)");
        return;
    };
    let server = ChildServer::start(&[("FLUXGATE_MQTT_ALLOW_ANONYMOUS", "true")]).await;
    let port = server.mqtt.port();
    let mut failing = Vec::new();
    for (suite, at_least) in [("client_test", 10), ("client_test5", 27)] {
        let (ran, failed, _) = run(&dir, suite, port, &[]).await;
        assert!(ran >= at_least, "{suite}: {ran} tests ran");
        for name in failed.into_iter().filter(|n| !NEEDS_SETUP.contains(&n.as_str())) {
            // Again on its own, up to 5 times: the suites' waits are sleeps, and some race
            // the server (5 `test_request_response` publishes from one client right after
            // another client's SUBSCRIBE, waiting on the first client's SUBACK), which a
            // loaded machine loses often (2 or 3 times in a row seen on PostgreSQL).
            let mut passed = false;
            for attempt in 1..=5 {
                let (_, again, report) = run(&dir, suite, port, &[format!("Test.{name}")]).await;
                passed = again.is_empty();
                eprintln!("{suite}::{name} failed; on its own, attempt {attempt}: passed {passed}");
                if !passed {
                    let tail: Vec<&str> = report.lines().rev().take(30).collect();
                    eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
                if passed {
                    break;
                }
            }
            if !passed {
                failing.push(format!("{suite}::{name}"));
            }
        }
    }
    assert!(failing.is_empty(), "Paho tests failing twice: {failing:?}");
}
