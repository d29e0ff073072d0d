//! `fluxgate admin reset-password` (#15 defect 2): a bootstrap that did not complete, or a
//! lost super-admin password, is recoverable from the data directory of a stopped server.

use crate::child::{data, ChildServer, ADMIN_PASSWORD};

/// Runs `fluxgate admin reset-password --data-dir DIR` without FLUXGATE_ADMIN_PASSWORD:
/// (exit success, stdout, stderr).
async fn reset(dir: &std::path::Path) -> (bool, String, String) {
    reset_to(dir, None).await
}

/// `reset`, with FLUXGATE_ADMIN_PASSWORD set to `password` when given.
async fn reset_to(dir: &std::path::Path, password: Option<&str>) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"));
    match password {
        Some(p) => cmd.env("FLUXGATE_ADMIN_PASSWORD", p),
        None => cmd.env_remove("FLUXGATE_ADMIN_PASSWORD"),
    };
    if let Some(url) = crate::helpers::pg_database_for(&data(dir)) {
        cmd.env("FLUXGATE_STORE_URL", url);
    }
    let out = cmd
        .args(["admin", "reset-password", "--data-dir"])
        .arg(data(dir))
        .env("FLUXGATE_AUTH_PBKDF2_ITERATIONS", "1000")
        .output()
        .await
        .expect("run fluxgate admin reset-password");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn printed_password(stdout: &str) -> String {
    stdout
        .split('`')
        .nth(3)
        .unwrap_or_else(|| panic!("no password in {stdout:?}"))
        .to_string()
}

#[tokio::test]
async fn reset_password_recovers_the_super_admin_and_is_refused_while_the_server_runs() {
    let s = ChildServer::start(&[]).await;
    let (st, t) = s.login(ADMIN_PASSWORD).await;
    assert_eq!(st, 201);
    let old_token = t["access_token"].as_str().expect("token").to_string();
    // While the server runs on the directory: refused, naming the holder.
    let dir_path = s.data_dir().to_path_buf();
    let (ok, _, err) = reset(&dir_path).await;
    assert!(!ok, "refused while the server runs");
    assert!(
        err.contains(&s.pid().to_string()),
        "names the running server's pid: {err}"
    );
    let dir = s.kill9().await;
    let (ok, out, err) = reset(dir.path()).await;
    assert!(ok, "{err}");
    let password = printed_password(&out);
    assert!(password.len() >= 16, "{out}");
    let s = ChildServer::start_in(dir, &[]).await;
    assert_eq!(s.login(&password).await.0, 201, "the new password works");
    assert_eq!(s.login(ADMIN_PASSWORD).await.0, 401, "the old one does not");
    let r = reqwest::Client::new()
        .get(format!("http://{}/users/profile", s.http))
        .bearer_auth(&old_token)
        .send()
        .await
        .expect("profile");
    assert_eq!(r.status().as_u16(), 401, "tokens issued before the reset stop working");
}

#[tokio::test]
async fn reset_password_creates_a_super_admin_that_was_never_created() {
    // A data directory where no start ever created the super-admin (e.g. the first start
    // failed before it): the command creates it, and the server then accepts its password.
    let dir = tempfile::tempdir().expect("dir");
    let (ok, out, err) = reset(dir.path()).await;
    assert!(ok, "{err}");
    let password = printed_password(&out);
    let s = ChildServer::start_in(dir, &[]).await;
    assert_eq!(s.login(&password).await.0, 201);
}

/// (#29 item 7) The super-admin's password follows the REST API's rule: a one-character
/// password is refused by `admin reset-password`, naming the setting and the rule, and the
/// password in force stays; a password of eight characters is taken.
#[tokio::test]
async fn reset_password_applies_the_password_rule() {
    let s = ChildServer::start(&[]).await;
    let dir = s.kill9().await;
    let (ok, _, err) = reset_to(dir.path(), Some("x")).await;
    assert!(!ok, "a one-character password is refused");
    assert!(
        err.contains("admin.password") && err.contains("at least 8 characters"),
        "{err}"
    );
    let s = ChildServer::start_in(dir, &[]).await;
    assert_eq!(s.login(ADMIN_PASSWORD).await.0, 201, "the password in force stays");
    let dir = s.kill9().await;
    let (ok, _, err) = reset_to(dir.path(), Some("eight-ch")).await;
    assert!(ok, "{err}");
    let s = ChildServer::start_in(dir, &[("FLUXGATE_ADMIN_PASSWORD", "eight-ch")]).await;
    assert_eq!(s.login("eight-ch").await.0, 201);
}
