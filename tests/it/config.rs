//! The `fluxgate` binary's configuration handling, run as a real process.

use std::process::Command;

#[test]
fn unknown_config_key_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[http]\naddr = \"127.0.0.1:0\"\nlisten_backlog = 5\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_fluxgate"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.listen_backlog"), "stderr: {err}");
    assert!(
        !dir.path().join("data").join("fluxgate.db").exists(),
        "nothing created on refusal"
    );
}

#[test]
fn config_default_prints_the_embedded_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_fluxgate"))
        .args(["config", "default"])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), fluxgate::config::DEFAULT_CONFIG);
}

/// Runs `fluxgate serve` in `dir` with `args` and `env` until it fails; its stderr.
fn refused(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fluxgate"))
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("run");
    assert!(!out.status.success(), "it started");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// First contact 7: a value of the wrong type names the file, the key and the type expected;
/// an unknown FLUXGATE_ variable is refused by name with the nearest real one; a config.toml
/// in the working directory is read without --config (here, with a wrong type: refused).
#[test]
fn config_errors_name_the_file_the_key_and_the_type() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("mine.toml");
    std::fs::write(&cfg, "[http]\naddr = 9000\n").expect("write");
    let err = refused(dir.path(), &["--config", cfg.to_str().expect("utf-8")], &[]);
    assert!(
        err.contains("mine.toml") && err.contains("`http.addr` must be a string") && err.contains("integer 9000"),
        "{err}"
    );
    let err = refused(dir.path(), &[], &[("FLUXGATE_HTTP_ADR", "127.0.0.1:0")]);
    assert!(
        err.contains("unknown environment variable FLUXGATE_HTTP_ADR") && err.contains("FLUXGATE_HTTP_ADDR"),
        "{err}"
    );
    std::fs::write(dir.path().join("config.toml"), "[mqtt]\nmax_connections = \"many\"\n").expect("write");
    let err = refused(dir.path(), &[], &[]);
    assert!(
        err.contains("config.toml") && err.contains("`mqtt.max_connections` must be an integer"),
        "{err}"
    );
}

/// First contact 7: the start says which configuration file it read, or that it read none.
#[tokio::test]
async fn the_start_names_the_configuration_file_it_read() {
    let s = crate::child::ChildServer::start(&[]).await;
    let line = s.wait_log("configuration file").await;
    // The suite runs in the repository, whose config.toml is read.
    assert!(
        line.contains("configuration file read") && line.contains("config.toml"),
        "{line}"
    );
}
