//! The operator CLI run as a subprocess against a real server.

use crate::helpers::{TestApp, ADMIN_PASSWORD};
use serde_json::Value;
use std::path::PathBuf;

pub(crate) struct Cli {
    url: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }
}

impl Cli {
    pub(crate) fn new(app: &TestApp) -> Cli {
        let dir = tempfile::tempdir().expect("tmp");
        Cli {
            url: app.url.clone(),
            config: dir.path().join("cli.json"),
            _dir: dir,
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"))
            .args(args)
            .env("FLUXGATE_URL", &self.url)
            .env("FLUXGATE_CLI_CONFIG", &self.config)
            .output()
            .await
            .expect("run fluxgate");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }

    pub(crate) async fn json(&self, args: &[&str]) -> Value {
        self.run(args).await.ok().json()
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_string()
}

#[tokio::test]
async fn documented_user_and_domain_commands() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let u = cli
        .json(&[
            "users",
            "create",
            "jane",
            "doe",
            "janicedoe@example.com",
            "janicedoe",
            "12345678",
        ])
        .await;
    assert_eq!(
        (&u["first_name"], &u["credentials"]["username"], &u["role"]),
        (&"jane".into(), &"janicedoe".into(), &"user".into())
    );
    let id = s(&u, "id");
    let tok = cli.json(&["users", "token", "janicedoe", "12345678"]).await;
    let t = s(&tok, "access_token");
    let r = cli.json(&["users", "refreshtoken", &s(&tok, "refresh_token")]).await;
    assert!(r["access_token"].is_string());
    assert_eq!(
        cli.json(&["users", &id, "get", &t]).await["email"],
        "janicedoe@example.com"
    );
    let v = cli
        .json(&[
            "users",
            &id,
            "update",
            r#"{"first_name":"Janice", "last_name":"Doe"}"#,
            &t,
        ])
        .await;
    assert_eq!((&v["first_name"], &v["last_name"]), (&"Janice".into(), &"Doe".into()));
    let v = cli
        .json(&["users", &id, "update", r#"{"metadata":{"aoty": "1"}}"#, &t])
        .await;
    assert_eq!(v["metadata"]["aoty"], "1");
    let v = cli
        .json(&["users", &id, "update", "tags", r#"["light 1", "light 2"]"#, &t])
        .await;
    assert_eq!(v["tags"], serde_json::json!(["light 1", "light 2"]));
    assert_eq!(
        cli.json(&["users", &id, "update", "email", "Janice@example.com", &t])
            .await["email"],
        "Janice@example.com"
    );
    assert_eq!(
        cli.json(&["users", &id, "update", "username", "Janice", &t]).await["credentials"]["username"],
        "Janice"
    );
    assert_eq!(cli.json(&["users", "profile", &t]).await["id"], id.as_str());
    assert_eq!(cli.json(&["users", "search", "Jan", &t]).await["total"], 1);
    cli.json(&["users", "password", "12345678", "123456789", &t]).await;
    assert_eq!(
        cli.run(&["users", "resetpasswordrequest", "Janice@example.com"])
            .await
            .ok()
            .stdout,
        "ok"
    );
    let token = app.mailbox.token_for("Janice@example.com").expect("reset token");
    cli.run(&["users", "resetpassword", "abcdefgh1", "abcdefgh1", &token])
        .await
        .ok();
    // Saved token: later commands may leave it out.
    cli.run(&["users", "token", "Janice", "abcdefgh1", "--save"]).await.ok();
    assert_eq!(
        cli.json(&["users", "profile"]).await["credentials"]["username"],
        "Janice"
    );

    // Admin commands.
    let admin = s(
        &cli.json(&["users", "token", "admin", ADMIN_PASSWORD]).await,
        "access_token",
    );
    let all = cli.json(&["users", "all", "get", &admin]).await;
    assert_eq!(all["total"], 2);
    let page = cli
        .json(&["users", "all", "get", "--offset=1", "--limit=1", &admin])
        .await;
    assert_eq!((&page["offset"], &page["limit"]), (&1.into(), &1.into()));
    assert_eq!(cli.json(&["users", &id, "disable", &admin]).await["status"], "disabled");
    assert_eq!(cli.json(&["users", &id, "enable", &admin]).await["status"], "enabled");
    // --raw prints compact JSON.
    let raw = cli.run(&["users", &id, "get", &admin, "--raw"]).await;
    assert!(!raw.ok().stdout.contains('\n'));

    // Domains.
    let t = s(
        &cli.json(&["users", "token", "Janice", "abcdefgh1"]).await,
        "access_token",
    );
    let d = cli.json(&["domains", "create", "Plant", "plant", &t]).await;
    let did = s(&d, "id");
    assert_eq!(cli.json(&["domains", &did, "get", &t]).await["route"], "plant");
    assert_eq!(cli.json(&["domains", "all", "get", &t]).await["total"], 1);
    assert_eq!(
        cli.json(&["domains", &did, "update", r#"{"name":"Plant 2"}"#, &t])
            .await["name"],
        "Plant 2"
    );
    let bob = s(
        &cli.json(&["users", "create", "bob", "b", "bob@example.com", "bob", "bob-password"])
            .await,
        "id",
    );
    assert_eq!(
        cli.run(&["domains", &did, "members", "add", &bob, "viewer", &t])
            .await
            .ok()
            .stdout,
        "ok"
    );
    assert_eq!(cli.json(&["domains", &did, "members", "list", &t]).await["total"], 2);
    assert_eq!(cli.json(&["domains", &did, "disable", &t]).await["status"], "disabled");
    assert_eq!(cli.json(&["domains", &did, "enable", &t]).await["status"], "enabled");
    assert_eq!(cli.run(&["users", &bob, "delete", &admin]).await.ok().stdout, "ok");
}

#[tokio::test]
async fn documented_client_channel_group_and_message_commands() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let (_, t) = app.user("cliuser").await;
    let d = app.domain(&t, "clidomain").await;
    let c = cli.json(&["clients", "create", r#"{"name":"myClient"}"#, &d, &t]).await;
    assert_eq!(
        (&c["name"], &c["domain_id"], &c["status"]),
        (&"myClient".into(), &d.as_str().into(), &"enabled".into())
    );
    assert!(c["credentials"]["secret"].is_string());
    let cid = s(&c, "id");
    assert_eq!(
        cli.json(&["clients", &cid, "update", r#"{"name":"LightBulb"}"#, &d, &t])
            .await["name"],
        "LightBulb"
    );
    assert_eq!(
        cli.json(&["clients", &cid, "update", "tags", r#"["tag1", "tag2"]"#, &d, &t])
            .await["tags"],
        serde_json::json!(["tag1", "tag2"])
    );
    cli.json(&["clients", &cid, "update", "secret", "12345678", &d, &t])
        .await;
    assert_eq!(
        cli.json(&["clients", &cid, "get", &d, &t]).await["credentials"]["secret"],
        "12345678"
    );
    assert_eq!(
        cli.json(&["clients", &cid, "disable", &d, &t]).await["status"],
        "disabled"
    );
    assert_eq!(
        cli.json(&["clients", &cid, "enable", &d, &t]).await["status"],
        "enabled"
    );
    cli.json(&["clients", "create", r#"{"name":"second"}"#, &d, &t]).await;
    let page = cli
        .json(&["clients", "all", "get", "--offset=1", "--limit=5", &d, &t])
        .await;
    assert_eq!(
        (
            &page["total"],
            &page["offset"],
            page["clients"].as_array().map(Vec::len)
        ),
        (&2.into(), &1.into(), Some(1))
    );

    let h = s(
        &cli.json(&["channels", "create", r#"{"name":"Temperature Data"}"#, &d, &t])
            .await,
        "id",
    );
    assert_eq!(
        cli.json(&["channels", &h, "get", &d, &t]).await["name"],
        "Temperature Data"
    );
    assert_eq!(
        cli.json(&["channels", &h, "update", r#"{"name":"Temp"}"#, &d, &t])
            .await["name"],
        "Temp"
    );
    assert_eq!(
        cli.run(&["clients", &cid, "connect", &h, r#"["publish","subscribe"]"#, &d, &t])
            .await
            .ok()
            .stdout,
        "ok"
    );
    assert_eq!(
        cli.json(&["channels", "all", "get", &format!("--client={cid}"), &d, &t])
            .await["total"],
        1
    );

    let g = s(
        &cli.json(&["groups", "create", r#"{"name":"Security Engineers"}"#, &d, &t])
            .await,
        "id",
    );
    cli.json(&[
        "groups",
        "create",
        &format!(r#"{{"name":"Support","parent_id":"{g}"}}"#),
        &d,
        &t,
    ])
    .await;
    assert_eq!(
        cli.json(&["groups", &g, "children", &d, &t]).await["groups"][0]["children"][0]["name"],
        "Support"
    );
    assert_eq!(cli.json(&["groups", "all", "get", &d, &t]).await["total"], 2);
    assert_eq!(
        cli.json(&["groups", &g, "update", r#"{"name":"Data Analysts"}"#, &d, &t])
            .await["name"],
        "Data Analysts"
    );

    // Messages: send with the client secret, read with the secret or a token.
    let senml = r#"[{"bn":"some-base-name:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3}]"#;
    assert_eq!(
        cli.run(&["messages", "send", &format!("{h}/room"), senml, "12345678"])
            .await
            .ok()
            .stdout,
        "ok"
    );
    app.stored_at_least(3).await;
    let r = cli.json(&["messages", "read", &h, "12345678"]).await;
    assert_eq!((&r["total"], &r["format"]), (&3.into(), &"messages".into()));
    assert_eq!(
        cli.json(&["messages", "read", &h, &t, "--name=some-base-name:current"])
            .await["total"],
        2
    );

    assert_eq!(
        cli.run(&["clients", &cid, "disconnect", &h, r#"["publish"]"#, &d, &t])
            .await
            .ok()
            .stdout,
        "ok"
    );
    assert_eq!(cli.run(&["channels", &h, "delete", &d, &t]).await.ok().stdout, "ok");
    assert_eq!(cli.run(&["clients", &cid, "delete", &d, &t]).await.ok().stdout, "ok");
}

#[tokio::test]
async fn provisioning_ten_thousand_clients_from_csv_and_json() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let (_, t) = app.user("provisioner").await;
    let d = app.domain(&t, "prov").await;
    let dir = tempfile::tempdir().expect("tmp");
    let csv = dir.path().join("clients.csv");
    std::fs::write(&csv, (0..10_000).map(|i| format!("client{i},\n")).collect::<String>()).expect("w");
    let out = cli.run(&["clients", csv.to_str().expect("p"), &d, &t]).await;
    let v = out.ok().json();
    assert_eq!((&v["created"], &v["failed"]), (&10_000.into(), &0.into()));
    let json_file = dir.path().join("channels.json");
    let items: Vec<Value> = (0..10_000)
        .map(|i| serde_json::json!({"name": format!("ch{i}"), "status": "enabled"}))
        .collect();
    std::fs::write(&json_file, serde_json::to_string(&items).expect("json")).expect("w");
    let v = cli
        .run(&["provision", "channels", json_file.to_str().expect("p"), &d, &t])
        .await
        .ok()
        .json();
    assert_eq!(v["created"], 10_000);
    let clients_json = dir.path().join("clients.json");
    let items: Vec<Value> = (0..10_000)
        .map(|i| serde_json::json!({"name": format!("j{i}")}))
        .collect();
    std::fs::write(&clients_json, serde_json::to_string(&items).expect("json")).expect("w");
    let v = cli
        .run(&["provision", "clients", clients_json.to_str().expect("p"), &d, &t])
        .await
        .ok()
        .json();
    assert_eq!(v["created"], 10_000);
    let (_, page) = app.get(&format!("/{d}/clients?limit=1"), &t).await;
    assert_eq!(page["total"], 20_000);

    // Connections from CSV.
    let c0 = s(&v["entities"][0], "id");
    let c1 = s(&v["entities"][1], "id");
    let (_, chans) = app.get(&format!("/{d}/channels?limit=1"), &t).await;
    let h = s(&chans["channels"][0], "id");
    let conns = dir.path().join("connections.csv");
    std::fs::write(&conns, format!("{c0},{h}\n{c1},{h}\n")).expect("w");
    let v = cli
        .run(&["provision", "connect", conns.to_str().expect("p"), &d, &t])
        .await
        .ok()
        .json();
    assert_eq!(v["created"], 2);
}

#[tokio::test]
async fn bad_rows_are_reported_with_row_numbers() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let (_, t) = app.user("badrows").await;
    let d = app.domain(&t, "badrows").await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("clients.json");
    std::fs::write(
        &file,
        r#"[{"name":"ok1","credentials":{"secret":"shared-secret-1"}},
            {"name":"dup","credentials":{"secret":"shared-secret-1"}},
            {"name":"ok2"},
            {"name":"bad","id":"not/allowed"},
            "not an object"]"#,
    )
    .expect("w");
    let out = cli
        .run(&["provision", "clients", file.to_str().expect("p"), &d, &t])
        .await;
    assert_ne!(out.code, 0);
    let v = out.json();
    assert_eq!((&v["created"], &v["failed"]), (&2.into(), &3.into()));
    let rows: Vec<u64> = v["failures"]
        .as_array()
        .expect("f")
        .iter()
        .map(|f| f["row"].as_u64().expect("row"))
        .collect();
    assert_eq!(rows, vec![5, 2, 4]);
    assert!(v["failures"].to_string().contains("409"), "{v}");
    assert!(out.stderr.contains("3 of 5 rows failed"), "{}", out.stderr);
    let conns = dir.path().join("c.csv");
    std::fs::write(&conns, "nope,00000000-0000-4000-8000-000000000000\n").expect("w");
    let out = cli
        .run(&["provision", "connect", conns.to_str().expect("p"), &d, &t])
        .await;
    assert_ne!(out.code, 0);
    assert_eq!(out.json()["failures"][0]["row"], 1);
}

#[tokio::test]
async fn usage_errors_and_server_errors() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let out = cli.run(&["users", "create", "only-one"]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("usage: fluxgate users create"), "{}", out.stderr);
    let out = cli.run(&["clients", "x", "frobnicate", "d", "t"]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("fluxgate clients"));
    let out = cli
        .run(&["users", "00000000-0000-4000-8000-000000000000", "get", "not-a-token"])
        .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("HTTP 401") && out.stderr.contains("invalid or expired token"),
        "{}",
        out.stderr
    );
    let out = cli.run(&["users", "--help"]).await;
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("users token"));
    let out = cli.run(&["--help"]).await;
    assert!(out.stdout.contains("fluxgate serve"));
    for shell in ["bash", "zsh", "fish"] {
        let out = cli.run(&["completions", shell]).await;
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("clients"), "{shell}");
    }
    // An unreachable server is an error too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fluxgate"))
        .args(["users", "profile", "tok", "--url", "http://127.0.0.1:1"])
        .env("FLUXGATE_CLI_CONFIG", &cli.config)
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[tokio::test]
async fn certificate_commands() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let (_, t) = app.user("certcli").await;
    let d = app.domain(&t, "certcli").await;
    let (c, _) = app.device(&t, &d).await;
    let issued = cli.json(&["certs", "issue", &c, &d, &t, "--ttl", "2h"]).await;
    assert!(issued["client_cert"]
        .as_str()
        .is_some_and(|p| p.contains("BEGIN CERTIFICATE")));
    let serial = s(&issued, "serial");
    assert_eq!(cli.json(&["certs", "get", &c, &d, &t]).await["total"], 1);
    assert_eq!(cli.json(&["certs", "serial", &serial, &d, &t]).await["revoked"], false);
    assert!(cli.json(&["certs", "revoke", &serial, &d, &t]).await["revocation_time"].is_string());
    assert_eq!(cli.json(&["certs", "serial", &serial, &d, &t]).await["revoked"], true);
    let ca = cli.run(&["certs", "ca"]).await;
    assert!(ca.ok().stdout.starts_with("-----BEGIN CERTIFICATE-----"));
}

/// First contact 8: `messages read` uses the saved token; a saved token that expired is
/// renewed with the saved refresh token; a mistyped command is named; provisioning keeps the
/// tags of CSV and JSON rows.
#[tokio::test]
async fn saved_tokens_renew_typos_are_named_and_provisioning_keeps_tags() {
    let app = TestApp::spawn().await;
    let cli = Cli::new(&app);
    let login = cli.json(&["users", "token", "admin", ADMIN_PASSWORD, "--save"]).await;
    let t = s(&login, "access_token");
    let d = app.domain(&t, "first").await;
    let h = app.channel(&t, &d, "kitchen").await;
    let (c, secret) = app.device(&t, &d).await;
    app.connect(&t, &d, &c, &h, &["publish"]).await;
    cli.run(&[
        "messages",
        "send",
        &format!("{h}/room"),
        r#"[{"n":"temp","v":21.5}]"#,
        &secret,
    ])
    .await
    .ok();
    app.stored_at_least(1).await;
    let read = cli
        .json(&["messages", "read", &h, "--limit", "5", "--name", "temp"])
        .await;
    assert_eq!(read["total"], 1, "{read}");

    // The saved access token is worthless now; the refresh token renews it.
    let mut saved: Value = serde_json::from_str(&std::fs::read_to_string(&cli.config).expect("config")).expect("json");
    assert!(saved["refresh_token"].is_string(), "{saved}");
    saved["token"] = "expired.token.value".into();
    std::fs::write(&cli.config, saved.to_string()).expect("write");
    let profile = cli.json(&["users", "profile"]).await;
    assert_eq!(profile["credentials"]["username"], "admin", "{profile}");
    let renewed: Value = serde_json::from_str(&std::fs::read_to_string(&cli.config).expect("config")).expect("json");
    assert_ne!(renewed["token"], "expired.token.value", "the new token is saved");

    let out = cli.run(&["user", "profile"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown command `user`") && out.stderr.contains("did you mean `users`"),
        "{}",
        out.stderr
    );
    let out = cli.run(&["users", "profil"]).await;
    assert!(
        out.stderr.contains("`fluxgate users profil` is not a command"),
        "{}",
        out.stderr
    );

    let dir = tempfile::tempdir().expect("tmp");
    let csv = dir.path().join("channels.csv");
    std::fs::write(
        &csv,
        "name,tags,metadata\nhall,\"ground;public\",\"{\"\"floor\"\":0}\"\n",
    )
    .expect("w");
    let v = cli
        .json(&["provision", "channels", csv.to_str().expect("p"), &d, &t])
        .await;
    assert_eq!(v["entities"][0]["tags"], serde_json::json!(["ground", "public"]), "{v}");
    assert_eq!(v["entities"][0]["metadata"]["floor"], 0, "{v}");
    let json_file = dir.path().join("channels.json");
    std::fs::write(&json_file, r#"[{"name": "attic", "tags": ["top"]}]"#).expect("w");
    let v = cli
        .json(&["provision", "channels", json_file.to_str().expect("p"), &d, &t])
        .await;
    let id = s(&v["entities"][0], "id");
    let (_, got) = app.get(&format!("/{d}/channels/{id}"), &t).await;
    assert_eq!(got["tags"], serde_json::json!(["top"]), "{got}");
}
