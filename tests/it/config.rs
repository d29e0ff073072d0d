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
