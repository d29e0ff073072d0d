//! The operator CLI: entity-first commands as in the Magistrala CLI documents
//! (`fluxgate users <id> get <token>`, `fluxgate clients create '<json>' <domain> <token>`, …),
//! talking to a running server over its REST API.
//!
//! Server URL: `--url`, then `FLUXGATE_URL`, then the CLI config file (`fluxgate config set
//! url …`), then `http://localhost:9000`. A token saved with `users token … --save` is used
//! when a command's token argument is left out.

mod provision;
mod table;

use table::Tail;

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
    /// Wrong arguments: print the entity's usage and exit 2.
    Usage,
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
    /// Saved with the token: renews it when the server says it expired.
    saved_refresh: Option<String>,
    /// The saved token's renewal, once this command renewed it.
    renewed: std::sync::Mutex<Option<String>>,
}

pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    Client(&'a str),
}

impl Api {
    /// One request. With the saved token, an expired one is renewed once with the saved
    /// refresh token (both saved again) and the request sent again.
    async fn call(&self, method: reqwest::Method, path: &str, auth: Auth<'_>, body: Option<Value>) -> Res {
        let saved = matches!(auth, Auth::Bearer(t) if Some(t) == self.saved_token.as_deref());
        if !saved {
            return self.call_once(method, path, auth, body).await;
        }
        if let Some(t) = self.renewed.lock().ok().and_then(|r| r.clone()) {
            return self.call_once(method, path, Auth::Bearer(&t), body).await;
        }
        let out = self.call_once(method.clone(), path, auth, body.clone()).await;
        let expired = matches!(&out, Err(Fail::Msg(m)) if m.starts_with("HTTP 401"));
        let Some(refresh) = self.saved_refresh.as_deref().filter(|_| expired) else {
            return out;
        };
        let pair = self
            .call_once(
                reqwest::Method::POST,
                "/users/tokens/refresh",
                Auth::Bearer(refresh),
                None,
            )
            .await;
        let Ok(Some(pair)) = pair else { return out };
        let (Some(access), Some(refresh)) = (pair["access_token"].as_str(), pair["refresh_token"].as_str()) else {
            return out;
        };
        save_config("token", access)?;
        save_config("refresh_token", refresh)?;
        if let Ok(mut r) = self.renewed.lock() {
            *r = Some(access.to_string());
        }
        self.call_once(method, path, Auth::Bearer(access), body).await
    }

    async fn call_once(&self, method: reqwest::Method, path: &str, auth: Auth<'_>, body: Option<Value>) -> Res {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => r = r.bearer_auth(t),
            Auth::Client(s) => r = r.header("authorization", format!("Client {s}")),
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.send(r).await
    }

    /// Posts `body` as it is, with its content type, as a device (`Client <secret>`).
    async fn send_raw(&self, path: &str, secret: &str, content_type: &str, body: String) -> Res {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("authorization", format!("Client {secret}"))
            .header("content-type", content_type)
            .body(body);
        self.send(r).await.map(|_| None)
    }

    /// Sends; an error status becomes the answer's `message`; a JSON answer is parsed, any
    /// other is kept as text.
    async fn send(&self, r: reqwest::RequestBuilder) -> Res {
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
        .map(|(k, v)| format!("{}={}", mgmt::http::percent_encode(k), mgmt::http::percent_encode(v)))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// The usage text of an entity, or the top-level usage.
pub fn usage(entity: &str) -> String {
    table::usage(entity)
}

/// The top-level usage.
pub fn top() -> String {
    table::top()
}

/// The command tree for shell completions: `fluxgate`'s own subcommands (from clap) and, per
/// entity, the words of its commands in the table.
pub fn completion_command(mut cmd: clap::Command) -> clap::Command {
    for e in table::ENTITIES.iter().filter(|e| **e != "config") {
        cmd = cmd.subcommand(
            clap::Command::new(*e).about(usage(e)).arg(
                clap::Arg::new("args")
                    .num_args(0..)
                    .value_parser(clap::builder::PossibleValuesParser::new(table::verbs(e))),
            ),
        );
    }
    cmd
}

/// Runs an entity command; prints the result; returns the exit code.
pub fn run(a: Args) -> ExitCode {
    let entity = a.words.first().cloned().unwrap_or_default();
    if !table::ENTITIES.contains(&entity.as_str()) && !entity.is_empty() {
        let nearest = table::ENTITIES
            .iter()
            .map(|e| (crate::config::edit_distance(e, &entity), *e))
            .min()
            .filter(|(d, _)| *d <= 2)
            .map(|(_, e)| format!(" (did you mean `{e}`?)"))
            .unwrap_or_default();
        eprintln!("error: unknown command `{entity}`{nearest}");
        eprintln!("{}", top());
        return ExitCode::from(2);
    }
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
        saved_refresh: cfg["refresh_token"].as_str().map(String::from),
        renewed: std::sync::Mutex::new(None),
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
        // Text answers (the CA certificate) are printed as they are.
        Ok(Some(Value::String(text))) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
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
        Err(Fail::Usage) => {
            eprintln!(
                "error: `fluxgate {}` is not a command, or a word it needs is missing (a token: save one with `users token … --save`)",
                a.words.join(" ")
            );
            eprintln!("{}", usage(&entity));
            ExitCode::from(2)
        }
        Err(Fail::Msg(m)) => {
            eprintln!("error: {m}");
            ExitCode::FAILURE
        }
    }
}

/// The hand-written commands first (they have fixed first words or a file name), then the
/// table.
async fn dispatch(api: &Api, a: &Args, entity: &str) -> Res {
    let w: Vec<&str> = a.words.iter().skip(1).map(String::as_str).collect();
    if let Some(out) = irregular(api, a, entity, &w).await {
        return out;
    }
    let m = table::find(entity, &w).ok_or(Fail::Usage)?;
    let c = m.cmd;
    let (domain, tok) = match c.tail {
        Tail::Public => (None, None),
        Tail::OptionalToken => (None, m.tail.first().map(|t| t.to_string())),
        Tail::Token => (None, Some(token(api, m.tail)?.to_string())),
        Tail::Domain => {
            let (d, t) = domain_and_token(api, m.tail)?;
            (Some(d), Some(t))
        }
    };
    let mut path = m.path(entity, domain.as_deref());
    if c.query {
        path.push_str(&query(a));
    }
    let body = m.body().map_err(Fail::Msg)?;
    let method = reqwest::Method::from_bytes(c.method.as_bytes()).map_err(|e| msg(e.to_string()))?;
    let auth = tok.as_deref().map(Auth::Bearer).unwrap_or(Auth::None);
    let out = api.call(method, &path, auth, body).await?;
    Ok(if c.quiet { None } else { out })
}

/// `messages watch`: finds the channel's domain among the caller's channels, then prints each
/// event of its live view as one JSON line until the server ends the stream.
async fn watch(api: &Api, channel: &str, token: &str) -> Res {
    use std::io::Write;
    let mut domain = None;
    let mut offset = 0u64;
    while domain.is_none() {
        let page = api
            .call(
                reqwest::Method::GET,
                &format!("/channels?status=all&limit=100&offset={offset}"),
                Auth::Bearer(token),
                None,
            )
            .await?
            .unwrap_or_default();
        let items = page["channels"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return Err(msg(format!("channel {channel} not found among your channels")));
        }
        domain = items
            .iter()
            .find(|c| c["id"] == channel)
            .and_then(|c| c["domain_id"].as_str().map(String::from));
        offset += items.len() as u64;
    }
    let d = domain.unwrap_or_default();
    let mut resp = api
        .http
        .get(format!("{}/{d}/channels/{channel}/messages/live", api.url))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| msg(format!("cannot reach {}: {e}", api.url)))?;
    if !resp.status().is_success() {
        return Err(msg(format!("HTTP {}", resp.status())));
    }
    // On stderr, so that stdout holds only events: the view is open from here on.
    eprintln!("watching channel {channel} of domain {d}");
    let mut buf = String::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = resp.chunk().await.map_err(|e| msg(format!("stream: {e}")))? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                let _ = writeln!(out, "{data}");
            }
            let _ = out.flush();
        }
    }
    Err(msg(
        "the server ended the live view (this viewer fell behind, or the server stopped)",
    ))
}

/// `<domain_id> <token>` at the end of a command, the token defaulting to the saved one.
fn domain_and_token(api: &Api, rest: &[&str]) -> Result<(String, String), Fail> {
    match rest {
        [d, t] => Ok((d.to_string(), t.to_string())),
        [d] => api.saved_token.clone().map(|t| (d.to_string(), t)).ok_or(Fail::Usage),
        _ => Err(Fail::Usage),
    }
}

/// The token argument, or the saved one when it was left out.
fn token<'a>(api: &'a Api, rest: &[&'a str]) -> Result<&'a str, Fail> {
    match rest {
        [t] => Ok(t),
        [] => api.saved_token.as_deref().ok_or(Fail::Usage),
        _ => Err(Fail::Usage),
    }
}

/// The commands the table cannot express (listed in `table::IRREGULAR` for usage and
/// completions); `None` when `w` is none of them.
async fn irregular(api: &Api, a: &Args, entity: &str, w: &[&str]) -> Option<Res> {
    use reqwest::Method as M;
    Some(match (entity, w) {
        ("users", ["token", identity, password]) => {
            let body = json!({"identity": identity, "secret": password});
            match api.call(M::POST, "/users/tokens/issue", Auth::None, Some(body)).await {
                Ok(v) => match v
                    .as_ref()
                    .map(|v| (v["access_token"].as_str(), v["refresh_token"].as_str()))
                {
                    Some((Some(t), refresh)) if a.save => save_config("token", t)
                        .and_then(|()| refresh.map_or(Ok(()), |r| save_config("refresh_token", r)))
                        .map(|()| v),
                    _ => Ok(v),
                },
                Err(e) => Err(e),
            }
        }
        ("users", ["search", q, rest @ ..]) => {
            let qs = if q.contains('=') {
                q.to_string()
            } else {
                format!("username={}", mgmt::http::percent_encode(q))
            };
            match token(api, rest) {
                Ok(t) => {
                    api.call(M::GET, &format!("/users/search?{qs}"), Auth::Bearer(t), None)
                        .await
                }
                Err(e) => Err(e),
            }
        }
        ("clients" | "channels", [file, rest @ ..]) if file.ends_with(".csv") || file.ends_with(".json") => {
            match domain_and_token(api, rest) {
                Ok((d, t)) => provision::entities(api, entity, file, &d, &t).await,
                Err(e) => Err(e),
            }
        }
        ("provision", [kind @ ("clients" | "channels"), file, d, rest @ ..]) => match token(api, rest) {
            Ok(t) => provision::entities(api, kind, file, d, t).await,
            Err(e) => Err(e),
        },
        ("provision", ["connect", file, d, rest @ ..]) => match token(api, rest) {
            Ok(t) => provision::connections(api, file, d, t).await,
            Err(e) => Err(e),
        },
        ("certs", ["issue", client, rest @ ..]) => match domain_and_token(api, rest) {
            Ok((d, t)) => {
                let ttl = a.flag("ttl").unwrap_or("8760h");
                let body = json!({"client_id": client, "ttl": ttl});
                api.call(M::POST, &format!("/{d}/certs"), Auth::Bearer(&t), Some(body))
                    .await
            }
            Err(e) => Err(e),
        },
        ("certs", ["ca"]) => api.call(M::GET, "/certs/ca", Auth::None, None).await,
        ("messages", ["send", target, payload, secret]) => {
            let (channel, sub) = target.split_once('/').unwrap_or((target, ""));
            let path = if sub.is_empty() {
                format!("/http/channels/{channel}/messages")
            } else {
                format!("/http/channels/{channel}/messages/{sub}")
            };
            match parse_json(payload, "message") {
                Ok(_) => {
                    api.send_raw(&path, secret, "application/senml+json", payload.to_string())
                        .await
                }
                Err(e) => Err(e),
            }
        }
        ("messages", ["read", channel, rest @ ..]) => {
            let cred = match token(api, rest) {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            // A JWT has three dot-separated parts; anything else is a client secret.
            let auth = if cred.split('.').count() == 3 {
                Auth::Bearer(cred)
            } else {
                Auth::Client(cred)
            };
            api.call(M::GET, &format!("/channels/{channel}/messages{}", query(a)), auth, None)
                .await
        }
        ("messages", ["watch", channel, rest @ ..]) => match token(api, rest) {
            Ok(t) => watch(api, channel, t).await,
            Err(e) => Err(e),
        },
        ("config", ["set", key @ ("url" | "token"), value]) => save_config(key, value).map(|()| None),
        ("config", ["show"]) => Ok(Some(load_config())),
        ("messages" | "provision" | "config", _) => Err(Fail::Usage),
        _ => return None,
    })
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
        assert_eq!(mgmt::http::percent_encode("a b/c"), "a%20b%2Fc");
    }

    /// The generated completion scripts offer every fixed word of every entity's commands.
    #[test]
    fn completion_scripts_hold_every_command_word() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Fish] {
            let mut cmd = completion_command(clap::Command::new("fluxgate"));
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "fluxgate", &mut out);
            let script = String::from_utf8(out).expect("utf-8");
            for e in table::ENTITIES.iter().filter(|e| **e != "config") {
                assert!(script.contains(e), "{shell}: {e}");
                for v in table::verbs(e) {
                    assert!(script.contains(v), "{shell}: {e} {v}");
                }
            }
        }
    }
}
