//! The operator CLI: entity-first commands as in the Magistrala CLI documents
//! (`fluxgate users <id> get <token>`, `fluxgate clients create '<json>' <domain> <token>`, …),
//! talking to a running server over its REST API.
//!
//! Server URL: `--url`, then `FLUXGATE_URL`, then the CLI config file (`fluxgate config set
//! url …`), then `http://localhost:9000`. A token saved with `users token … --save` is used
//! when a command's token argument is left out.

mod provision;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// Parsed global flags and the remaining positional words.
pub struct Args {
    pub words: Vec<String>,
    pub flags: Vec<(String, String)>,
    pub raw: bool,
    pub help: bool,
    pub save: bool,
}

impl Args {
    pub fn parse(argv: impl Iterator<Item = String>) -> Args {
        let mut a = Args {
            words: Vec::new(),
            flags: Vec::new(),
            raw: false,
            help: false,
            save: false,
        };
        let mut it = argv.peekable();
        while let Some(w) = it.next() {
            match w.as_str() {
                "--raw" => a.raw = true,
                "--help" | "-h" => a.help = true,
                "--save" => a.save = true,
                f if f.starts_with("--") && f.len() > 2 => {
                    let f = &f[2..];
                    match f.split_once('=') {
                        Some((k, v)) => a.flags.push((k.to_string(), v.to_string())),
                        None => {
                            let v = it.next().unwrap_or_default();
                            a.flags.push((f.to_string(), v));
                        }
                    }
                }
                _ => a.words.push(w),
            }
        }
        a
    }
    fn flag(&self, k: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(f, _)| f == k).map(|(_, v)| v.as_str())
    }
}

/// Why a command failed, and how to exit.
pub enum Fail {
    /// Wrong arguments: print this usage and exit 2.
    Usage(&'static str),
    /// Anything else: print and exit 1.
    Msg(String),
}

type Res = Result<Option<Value>, Fail>;

fn msg(s: impl Into<String>) -> Fail {
    Fail::Msg(s.into())
}

/// The CLI's own configuration file (server URL, saved token).
pub fn config_path() -> PathBuf {
    if let Ok(p) = std::env::var("FLUXGATE_CLI_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|_| PathBuf::from("."));
    base.join("fluxgate").join("cli.json")
}

fn load_config() -> Value {
    std::fs::read_to_string(config_path())
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| json!({}))
}

fn save_config(key: &str, value: &str) -> Result<(), Fail> {
    let mut c = load_config();
    c[key] = json!(value);
    let p = config_path();
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| msg(format!("cannot create {}: {e}", d.display())))?;
    }
    std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap_or_default())
        .map_err(|e| msg(format!("cannot write {}: {e}", p.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

/// A REST client bound to one server.
pub struct Api {
    url: String,
    http: reqwest::Client,
    saved_token: Option<String>,
}

pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    Client(&'a str),
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, auth: Auth<'_>, body: Option<Value>) -> Res {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => r = r.bearer_auth(t),
            Auth::Client(s) => r = r.header("authorization", format!("Client {s}")),
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r
            .send()
            .await
            .map_err(|e| msg(format!("cannot reach {}: {e}", self.url)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(String::from))
                .unwrap_or(text);
            return Err(msg(format!("HTTP {status}: {detail}")));
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn send_raw(&self, path: &str, secret: &str, content_type: &str, body: String) -> Res {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .header("authorization", format!("Client {secret}"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| msg(format!("cannot reach {}: {e}", self.url)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(String::from))
                .unwrap_or(text);
            return Err(msg(format!("HTTP {status}: {detail}")));
        }
        Ok(None)
    }
}

fn parse_json(s: &str, what: &str) -> Result<Value, Fail> {
    serde_json::from_str(s).map_err(|e| msg(format!("{what} is not valid JSON: {e}")))
}

/// Query string from `--offset`, `--limit` and any other `--key value` flags.
fn query(a: &Args) -> String {
    let q: Vec<String> = a
        .flags
        .iter()
        .filter(|(k, _)| k != "url")
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const USERS: &str = "usage: fluxgate users create <first_name> <last_name> <email> <username> <password> [<token>]
       fluxgate users token <username|email> <password> [--save]
       fluxgate users refreshtoken <refresh_token>
       fluxgate users <user_id|all> get <token> [--offset N --limit N]
       fluxgate users <user_id> update '<json>' | tags '<json list>' | email <email> | username <name> | role <role> <token>
       fluxgate users password <old_password> <new_password> <token>
       fluxgate users resetpasswordrequest <email>
       fluxgate users resetpassword <password> <confirm_password> <reset_token>
       fluxgate users <user_id> enable|disable|delete <token>
       fluxgate users profile <token>
       fluxgate users search <query> <token>";
const DOMAINS: &str = "usage: fluxgate domains create <name> <route> <token>
       fluxgate domains <domain_id|all> get <token>
       fluxgate domains <domain_id> update '<json>' <token>
       fluxgate domains <domain_id> enable|disable|freeze <token>
       fluxgate domains <domain_id> members [list | add <user_id> <relation> | remove <user_id>] <token>";
const CLIENTS: &str = "usage: fluxgate clients create '<json>' <domain_id> <token>
       fluxgate clients <client_id|all> get <domain_id> <token> [--offset N --limit N]
       fluxgate clients <client_id> update '<json>' | update tags '<json list>' | update secret <secret> <domain_id> <token>
       fluxgate clients <client_id> enable|disable|delete <domain_id> <token>
       fluxgate clients <client_id> connect|disconnect <channel_id> '<conn types json list>' <domain_id> <token>
       fluxgate clients <file.csv|file.json> <domain_id> <token>";
const CHANNELS: &str = "usage: fluxgate channels create '<json>' <domain_id> <token>
       fluxgate channels <channel_id|all> get <domain_id> <token> [--offset N --limit N]
       fluxgate channels <channel_id> update '<json>' | update tags '<json list>' <domain_id> <token>
       fluxgate channels <channel_id> enable|disable|delete <domain_id> <token>
       fluxgate channels <channel_id> connect|disconnect <client_id> '<conn types json list>' <domain_id> <token>
       fluxgate channels <file.csv|file.json> <domain_id> <token>";
const GROUPS: &str = "usage: fluxgate groups create '<json>' <domain_id> <token>
       fluxgate groups <group_id|all> get <domain_id> <token>
       fluxgate groups <group_id> parents|children|members <domain_id> <token>
       fluxgate groups <group_id> update '<json>' <domain_id> <token>
       fluxgate groups <group_id> enable|disable|delete <domain_id> <token>";
const MESSAGES: &str = "usage: fluxgate messages send <channel_id>[/<subtopic>] '<senml json>' <client_secret>
       fluxgate messages read <channel_id> <token or client secret> [--offset N --limit N --name X ...]";
const PROVISION: &str = "usage: fluxgate provision clients|channels <file.csv|file.json> <domain_id> <token>
       fluxgate provision connect <connections.csv> <domain_id> <token>";
const CERTS: &str = "usage: fluxgate certs issue <client_id> <domain_id> <token> [--ttl 8760h]
       fluxgate certs get <client_id> <domain_id> <token>      (the client's certificates)
       fluxgate certs serial <serial> <domain_id> <token>
       fluxgate certs revoke <serial> <domain_id> <token>
       fluxgate certs ca";
const CONFIG: &str = "usage: fluxgate config default
       fluxgate config set url|token <value>
       fluxgate config show";
pub const TOP: &str = "usage: fluxgate serve [--config FILE --data-dir DIR --http-addr A --mqtt-addr A --ws-addr A]
       fluxgate users|domains|clients|channels|groups|messages|provision|certs|config ...
       fluxgate completions bash|zsh|fish
global flags: --url URL (or FLUXGATE_URL), --raw (compact JSON), --help";

/// The usage text of an entity.
pub fn usage(entity: &str) -> &'static str {
    match entity {
        "users" => USERS,
        "domains" => DOMAINS,
        "clients" => CLIENTS,
        "channels" => CHANNELS,
        "groups" => GROUPS,
        "messages" => MESSAGES,
        "provision" => PROVISION,
        "config" => CONFIG,
        "certs" => CERTS,
        _ => TOP,
    }
}

/// Runs an entity command; prints the result; returns the exit code.
pub fn run(a: Args) -> ExitCode {
    let entity = a.words.first().cloned().unwrap_or_default();
    if a.help || a.words.len() < 2 {
        println!("{}", usage(&entity));
        return if a.help { ExitCode::SUCCESS } else { ExitCode::from(2) };
    }
    let cfg = load_config();
    let url = a
        .flag("url")
        .map(String::from)
        .or_else(|| std::env::var("FLUXGATE_URL").ok())
        .or_else(|| cfg["url"].as_str().map(String::from))
        .unwrap_or_else(|| "http://localhost:9000".into());
    let api = Api {
        url: url.trim_end_matches('/').to_string(),
        http: reqwest::Client::new(),
        saved_token: cfg["token"].as_str().map(String::from),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = rt.block_on(dispatch(&api, &a, &entity));
    match out {
        Ok(None) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(Some(v)) => {
            let text = if a.raw {
                v.to_string()
            } else {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            };
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(Fail::Usage(u)) => {
            eprintln!("{u}");
            ExitCode::from(2)
        }
        Err(Fail::Msg(m)) => {
            eprintln!("error: {m}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(api: &Api, a: &Args, entity: &str) -> Res {
    let w: Vec<&str> = a.words.iter().skip(1).map(String::as_str).collect();
    match entity {
        "users" => users(api, a, &w).await,
        "domains" => domains(api, &w).await,
        "clients" | "channels" => things(api, a, entity, &w).await,
        "groups" => groups(api, &w).await,
        "messages" => messages(api, a, &w).await,
        "provision" => match w.as_slice() {
            [kind @ ("clients" | "channels"), file, d, rest @ ..] => {
                provision::entities(api, kind, file, d, token(api, rest, PROVISION)?).await
            }
            ["connect", file, d, rest @ ..] => provision::connections(api, file, d, token(api, rest, PROVISION)?).await,
            _ => Err(Fail::Usage(PROVISION)),
        },
        "certs" => certs(api, a, &w).await,
        "config" => match w.as_slice() {
            ["set", key @ ("url" | "token"), value] => {
                save_config(key, value)?;
                Ok(None)
            }
            ["show"] => Ok(Some(load_config())),
            _ => Err(Fail::Usage(CONFIG)),
        },
        _ => Err(Fail::Usage(TOP)),
    }
}

/// `<domain_id> <token>` at the end of a command, the token defaulting to the saved one.
fn domain_and_token(api: &Api, rest: &[&str], u: &'static str) -> Result<(String, String), Fail> {
    match rest {
        [d, t] => Ok((d.to_string(), t.to_string())),
        [d] => api
            .saved_token
            .clone()
            .map(|t| (d.to_string(), t))
            .ok_or(Fail::Usage(u)),
        _ => Err(Fail::Usage(u)),
    }
}

/// The token argument, or the saved one when it was left out.
fn token<'a>(api: &'a Api, rest: &[&'a str], u: &'static str) -> Result<&'a str, Fail> {
    match rest {
        [t] => Ok(t),
        [] => api.saved_token.as_deref().ok_or(Fail::Usage(u)),
        _ => Err(Fail::Usage(u)),
    }
}

async fn users(api: &Api, a: &Args, w: &[&str]) -> Res {
    use reqwest::Method as M;
    let u = USERS;
    match w {
        ["create", first, last, email, username, password, rest @ ..] => {
            let body = json!({"first_name": first, "last_name": last, "email": email,
                              "credentials": {"username": username, "secret": password}});
            let auth = rest.first().map(|t| Auth::Bearer(t)).unwrap_or(Auth::None);
            if rest.len() > 1 {
                return Err(Fail::Usage(u));
            }
            api.call(M::POST, "/users", auth, Some(body)).await
        }
        ["token", identity, password] => {
            let v = api
                .call(
                    M::POST,
                    "/users/tokens/issue",
                    Auth::None,
                    Some(json!({"identity": identity, "secret": password})),
                )
                .await?;
            if a.save {
                if let Some(t) = v.as_ref().and_then(|v| v["access_token"].as_str()) {
                    save_config("token", t)?;
                }
            }
            Ok(v)
        }
        ["refreshtoken", t] => api.call(M::POST, "/users/tokens/refresh", Auth::Bearer(t), None).await,
        ["profile", rest @ ..] => {
            api.call(M::GET, "/users/profile", Auth::Bearer(token(api, rest, u)?), None)
                .await
        }
        ["search", q, rest @ ..] => {
            let qs = if q.contains('=') {
                q.to_string()
            } else {
                format!("username={}", enc(q))
            };
            api.call(
                M::GET,
                &format!("/users/search?{qs}"),
                Auth::Bearer(token(api, rest, u)?),
                None,
            )
            .await
        }
        ["password", old, new, rest @ ..] => {
            api.call(
                M::PATCH,
                "/users/secret",
                Auth::Bearer(token(api, rest, u)?),
                Some(json!({"old_secret": old, "new_secret": new})),
            )
            .await
        }
        ["resetpasswordrequest", email] => {
            api.call(
                M::POST,
                "/password/reset-request",
                Auth::None,
                Some(json!({"email": email})),
            )
            .await?;
            Ok(None)
        }
        ["resetpassword", p, c, t] => {
            api.call(
                M::PUT,
                "/password/reset",
                Auth::None,
                Some(json!({"password": p, "confirm_password": c, "token": t})),
            )
            .await
        }
        ["all", "get", rest @ ..] => {
            api.call(
                M::GET,
                &format!("/users{}", query(a)),
                Auth::Bearer(token(api, rest, u)?),
                None,
            )
            .await
        }
        [id, "get", rest @ ..] => {
            api.call(
                M::GET,
                &format!("/users/{id}"),
                Auth::Bearer(token(api, rest, u)?),
                None,
            )
            .await
        }
        [id, "update", field @ ("tags" | "email" | "username" | "role" | "picture"), value, rest @ ..] => {
            let body = match *field {
                "tags" => json!({"tags": parse_json(value, "tags")?}),
                "picture" => json!({"profile_picture": value}),
                f => json!({ f: value }),
            };
            api.call(
                M::PATCH,
                &format!("/users/{id}/{field}"),
                Auth::Bearer(token(api, rest, u)?),
                Some(body),
            )
            .await
        }
        [id, "update", body, rest @ ..] => {
            api.call(
                M::PATCH,
                &format!("/users/{id}"),
                Auth::Bearer(token(api, rest, u)?),
                Some(parse_json(body, "update")?),
            )
            .await
        }
        [id, op @ ("enable" | "disable"), rest @ ..] => {
            api.call(
                M::POST,
                &format!("/users/{id}/{op}"),
                Auth::Bearer(token(api, rest, u)?),
                None,
            )
            .await
        }
        [id, "delete", rest @ ..] => {
            api.call(
                M::DELETE,
                &format!("/users/{id}"),
                Auth::Bearer(token(api, rest, u)?),
                None,
            )
            .await
        }
        _ => Err(Fail::Usage(u)),
    }
}

async fn domains(api: &Api, w: &[&str]) -> Res {
    use reqwest::Method as M;
    let u = DOMAINS;
    match w {
        ["create", name, route, rest @ ..] => {
            api.call(
                M::POST,
                "/domains",
                Auth::Bearer(token(api, rest, u)?),
                Some(json!({"name": name, "route": route})),
            )
            .await
        }
        ["all", "get", rest @ ..] => {
            api.call(M::GET, "/domains", Auth::Bearer(token(api, rest, u)?), None)
                .await
        }
        [id, "get", rest @ ..] => {
            api.call(
                M::GET,
                &format!("/domains/{id}"),
                Auth::Bearer(token(api, rest, u)?),
                None,
            )
            .await
        }
        [id, "update", body, rest @ ..] => {
            api.call(
                M::PATCH,
                &format!("/domains/{id}"),
                Auth::Bearer(token(api, rest, u)?),
                Some(parse_json(body, "update")?),
            )
            .await
        }
        [id, op @ ("enable" | "disable" | "freeze"), rest @ ..] => {
            api.call(
                M::POST,
                &format!("/domains/{id}/{op}"),
                Auth::Bearer(token(api, rest, u)?),
                None,
            )
            .await
        }
        [id, "members", "add", user, rel, rest @ ..] => {
            api.call(
                M::POST,
                &format!("/domains/{id}/users/assign"),
                Auth::Bearer(token(api, rest, u)?),
                Some(json!({"user_ids": [user], "relation": rel})),
            )
            .await
        }
        [id, "members", "remove", user, rest @ ..] => {
            api.call(
                M::POST,
                &format!("/domains/{id}/users/unassign"),
                Auth::Bearer(token(api, rest, u)?),
                Some(json!({"user_id": user})),
            )
            .await
        }
        [id, "members", "list", rest @ ..] | [id, "members", rest @ ..] => {
            api.call(
                M::GET,
                &format!("/domains/{id}/users"),
                Auth::Bearer(token(api, rest, u)?),
                None,
            )
            .await
        }
        _ => Err(Fail::Usage(u)),
    }
}

/// Clients and channels share their command shapes.
async fn things(api: &Api, a: &Args, entity: &str, w: &[&str]) -> Res {
    use reqwest::Method as M;
    let u = usage(entity);
    let dt = |rest: &[&str]| domain_and_token(api, rest, u);
    match w {
        ["create", body, rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(
                M::POST,
                &format!("/{d}/{entity}"),
                Auth::Bearer(&t),
                Some(parse_json(body, "entity")?),
            )
            .await
        }
        ["all", "get", rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::GET, &format!("/{d}/{entity}{}", query(a)), Auth::Bearer(&t), None)
                .await
        }
        [file, rest @ ..] if file.ends_with(".csv") || file.ends_with(".json") => {
            let (d, t) = dt(rest)?;
            provision::entities(api, entity, file, &d, &t).await
        }
        [id, "get", rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::GET, &format!("/{d}/{entity}/{id}"), Auth::Bearer(&t), None)
                .await
        }
        [id, "update", "tags", tags, rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(
                M::PATCH,
                &format!("/{d}/{entity}/{id}/tags"),
                Auth::Bearer(&t),
                Some(json!({"tags": parse_json(tags, "tags")?})),
            )
            .await
        }
        [id, "update", "secret", secret, rest @ ..] if entity == "clients" => {
            let (d, t) = dt(rest)?;
            api.call(
                M::PATCH,
                &format!("/{d}/clients/{id}/secret"),
                Auth::Bearer(&t),
                Some(json!({"secret": secret})),
            )
            .await
        }
        [id, "update", body, rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(
                M::PATCH,
                &format!("/{d}/{entity}/{id}"),
                Auth::Bearer(&t),
                Some(parse_json(body, "update")?),
            )
            .await
        }
        [id, op @ ("enable" | "disable"), rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::POST, &format!("/{d}/{entity}/{id}/{op}"), Auth::Bearer(&t), None)
                .await
        }
        [id, "delete", rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::DELETE, &format!("/{d}/{entity}/{id}"), Auth::Bearer(&t), None)
                .await
        }
        [id, op @ ("connect" | "disconnect"), other, types, rest @ ..] => {
            let (d, t) = dt(rest)?;
            let types = parse_json(types, "connection types")?;
            let (client, channel) = if entity == "clients" { (id, other) } else { (other, id) };
            api.call(
                M::POST,
                &format!("/{d}/channels/{op}"),
                Auth::Bearer(&t),
                Some(json!({"client_ids": [client], "channel_ids": [channel], "types": types})),
            )
            .await?;
            Ok(None)
        }
        _ => Err(Fail::Usage(u)),
    }
}

async fn groups(api: &Api, w: &[&str]) -> Res {
    use reqwest::Method as M;
    let u = GROUPS;
    let dt = |rest: &[&str]| domain_and_token(api, rest, u);
    match w {
        ["create", body, rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(
                M::POST,
                &format!("/{d}/groups"),
                Auth::Bearer(&t),
                Some(parse_json(body, "group")?),
            )
            .await
        }
        ["all", "get", rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::GET, &format!("/{d}/groups"), Auth::Bearer(&t), None).await
        }
        [id, "get", rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::GET, &format!("/{d}/groups/{id}"), Auth::Bearer(&t), None)
                .await
        }
        [id, op @ ("parents" | "children" | "members"), rest @ ..] => {
            let (d, t) = dt(rest)?;
            let q = if *op == "members" { "" } else { "?tree=true" };
            api.call(M::GET, &format!("/{d}/groups/{id}/{op}{q}"), Auth::Bearer(&t), None)
                .await
        }
        [id, "update", body, rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(
                M::PUT,
                &format!("/{d}/groups/{id}"),
                Auth::Bearer(&t),
                Some(parse_json(body, "update")?),
            )
            .await
        }
        [id, op @ ("enable" | "disable"), rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::POST, &format!("/{d}/groups/{id}/{op}"), Auth::Bearer(&t), None)
                .await
        }
        [id, "delete", rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::DELETE, &format!("/{d}/groups/{id}"), Auth::Bearer(&t), None)
                .await
        }
        _ => Err(Fail::Usage(u)),
    }
}

async fn certs(api: &Api, a: &Args, w: &[&str]) -> Res {
    use reqwest::Method as M;
    let u = CERTS;
    let dt = |rest: &[&str]| domain_and_token(api, rest, u);
    match w {
        ["ca"] => {
            let r = api
                .http
                .get(format!("{}/certs/ca", api.url))
                .send()
                .await
                .map_err(|e| msg(format!("cannot reach {}: {e}", api.url)))?;
            if !r.status().is_success() {
                return Err(msg(format!("HTTP {}", r.status())));
            }
            print!("{}", r.text().await.unwrap_or_default());
            std::process::exit(0);
        }
        ["issue", client, rest @ ..] => {
            let (d, t) = dt(rest)?;
            let ttl = a.flag("ttl").unwrap_or("8760h");
            api.call(
                M::POST,
                &format!("/{d}/certs"),
                Auth::Bearer(&t),
                Some(json!({"client_id": client, "ttl": ttl})),
            )
            .await
        }
        ["get", client, rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::GET, &format!("/{d}/serials/{client}"), Auth::Bearer(&t), None)
                .await
        }
        ["serial", serial, rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::GET, &format!("/{d}/certs/{serial}"), Auth::Bearer(&t), None)
                .await
        }
        ["revoke", serial, rest @ ..] => {
            let (d, t) = dt(rest)?;
            api.call(M::DELETE, &format!("/{d}/certs/{serial}"), Auth::Bearer(&t), None)
                .await
        }
        _ => Err(Fail::Usage(u)),
    }
}

async fn messages(api: &Api, a: &Args, w: &[&str]) -> Res {
    match w {
        ["send", target, payload, secret] => {
            let (channel, sub) = target.split_once('/').unwrap_or((target, ""));
            let path = if sub.is_empty() {
                format!("/http/channels/{channel}/messages")
            } else {
                format!("/http/channels/{channel}/messages/{sub}")
            };
            parse_json(payload, "message")?;
            api.send_raw(&path, secret, "application/senml+json", payload.to_string())
                .await
        }
        ["read", channel, cred] => {
            // A JWT has three dot-separated parts; anything else is a client secret.
            let auth = if cred.split('.').count() == 3 {
                Auth::Bearer(cred)
            } else {
                Auth::Client(cred)
            };
            api.call(
                reqwest::Method::GET,
                &format!("/channels/{channel}/messages{}", query(a)),
                auth,
                None,
            )
            .await
        }
        _ => Err(Fail::Usage(MESSAGES)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_anywhere_and_queries() {
        let a = Args::parse(
            ["users", "all", "--offset=1", "get", "--limit", "5", "tok", "--raw"]
                .iter()
                .map(|s| s.to_string()),
        );
        assert_eq!(a.words, vec!["users", "all", "get", "tok"]);
        assert!(a.raw);
        assert_eq!(query(&a), "?offset=1&limit=5");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
