//! The CLI's entity grammar as one table: each row is the words of a command, the REST call it
//! makes (method, path, body) and what it takes at the end (nothing, a token, or a domain id
//! and a token). Dispatch, the usage text and the shell completions are all generated from
//! [`COMMANDS`] and [`IRREGULAR`]; only commands that do more than one REST call with fixed
//! words (saving a token, reading files, choosing credentials) are written by hand in `mod.rs`.

use serde_json::{json, Map, Value};

mod grammar;
#[cfg(test)]
use grammar::usage_line;
pub use grammar::{find, top, usage, verbs};

/// One word of a command.
#[derive(Clone, Copy, Debug)]
pub enum W {
    /// This word exactly.
    Lit(&'static str),
    /// One of these words, captured under the name.
    Alt(&'static str, &'static [&'static str]),
    /// Any word, captured under the name.
    Arg(&'static str),
    /// A JSON document, captured under the name (shown quoted in usage).
    Json(&'static str),
}

/// What a command takes after its words; a token left out is the saved one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: an unauthenticated call.
    Public,
    /// `[<token>]`, sent only when given.
    OptionalToken,
    /// `<token>`.
    Token,
    /// `<domain_id> <token>`; the path's `{d}`.
    Domain,
}

/// A value of a request body.
#[derive(Clone, Copy, Debug)]
pub enum V {
    /// A captured word, as a string.
    Arg(&'static str),
    /// A captured word parsed as JSON.
    Json(&'static str),
    /// A captured word as a one-element list.
    One(&'static str),
    /// An object of these fields.
    Obj(&'static [(&'static str, V)]),
}

/// One command of the table.
#[derive(Debug)]
pub struct Cmd {
    /// The entities (first word) it belongs to; the path's `{entity}`.
    pub entities: &'static [&'static str],
    pub words: &'static [W],
    pub method: &'static str,
    /// The path, with `{capture}`, `{entity}` and `{d}` (the domain id) filled in.
    pub path: &'static str,
    /// The body: an object of fields, or `Some(V::Json(..))` for a captured document.
    pub body: Option<V>,
    pub tail: Tail,
    /// Whether `--key value` flags become the query string.
    pub query: bool,
    /// Whether success prints `ok` instead of the answer.
    pub quiet: bool,
}

const fn cmd(entities: &'static [&'static str], words: &'static [W], method: &'static str, path: &'static str) -> Cmd {
    Cmd {
        entities,
        words,
        method,
        path,
        body: None,
        tail: Tail::Token,
        query: false,
        quiet: false,
    }
}

impl Cmd {
    const fn body(mut self, v: V) -> Cmd {
        self.body = Some(v);
        self
    }
    const fn tail(mut self, t: Tail) -> Cmd {
        self.tail = t;
        self
    }
    const fn domain(self) -> Cmd {
        self.tail(Tail::Domain)
    }
    const fn query(mut self) -> Cmd {
        self.query = true;
        self
    }
    const fn quiet(mut self) -> Cmd {
        self.quiet = true;
        self
    }
}

use W::{Alt, Arg, Json, Lit};

const USERS: &[&str] = &["users"];
const DOMAINS: &[&str] = &["domains"];
const THINGS: &[&str] = &["clients", "channels"];
const CLIENTS: &[&str] = &["clients"];
const CHANNELS: &[&str] = &["channels"];
const GROUPS: &[&str] = &["groups"];
const CERTS: &[&str] = &["certs"];

/// The table. Rows are tried in order; the first whose words and tail fit runs.
pub static COMMANDS: &[Cmd] = &[
    // users
    cmd(
        USERS,
        &[
            Lit("create"),
            Arg("first_name"),
            Arg("last_name"),
            Arg("email"),
            Arg("username"),
            Arg("password"),
        ],
        "POST",
        "/users",
    )
    .body(V::Obj(&[
        ("first_name", V::Arg("first_name")),
        ("last_name", V::Arg("last_name")),
        ("email", V::Arg("email")),
        (
            "credentials",
            V::Obj(&[("username", V::Arg("username")), ("secret", V::Arg("password"))]),
        ),
    ]))
    .tail(Tail::OptionalToken),
    // The refresh token is the bearer of its own call.
    cmd(USERS, &[Lit("refreshtoken")], "POST", "/users/tokens/refresh"),
    cmd(USERS, &[Lit("profile")], "GET", "/users/profile"),
    cmd(
        USERS,
        &[Lit("password"), Arg("old_password"), Arg("new_password")],
        "PATCH",
        "/users/secret",
    )
    .body(V::Obj(&[
        ("old_secret", V::Arg("old_password")),
        ("new_secret", V::Arg("new_password")),
    ])),
    cmd(
        USERS,
        &[Lit("resetpasswordrequest"), Arg("email")],
        "POST",
        "/password/reset-request",
    )
    .body(V::Obj(&[("email", V::Arg("email"))]))
    .tail(Tail::Public)
    .quiet(),
    cmd(
        USERS,
        &[
            Lit("resetpassword"),
            Arg("password"),
            Arg("confirm_password"),
            Arg("reset_token"),
        ],
        "PUT",
        "/password/reset",
    )
    .body(V::Obj(&[
        ("password", V::Arg("password")),
        ("confirm_password", V::Arg("confirm_password")),
        ("token", V::Arg("reset_token")),
    ]))
    .tail(Tail::Public),
    cmd(USERS, &[Lit("all"), Lit("get")], "GET", "/users").query(),
    cmd(USERS, &[Arg("user_id"), Lit("get")], "GET", "/users/{user_id}"),
    cmd(
        USERS,
        &[Arg("user_id"), Lit("update"), Lit("tags"), Json("tags")],
        "PATCH",
        "/users/{user_id}/tags",
    )
    .body(V::Obj(&[("tags", V::Json("tags"))])),
    cmd(
        USERS,
        &[Arg("user_id"), Lit("update"), Lit("email"), Arg("email")],
        "PATCH",
        "/users/{user_id}/email",
    )
    .body(V::Obj(&[("email", V::Arg("email"))])),
    cmd(
        USERS,
        &[Arg("user_id"), Lit("update"), Lit("username"), Arg("username")],
        "PATCH",
        "/users/{user_id}/username",
    )
    .body(V::Obj(&[("username", V::Arg("username"))])),
    cmd(
        USERS,
        &[Arg("user_id"), Lit("update"), Lit("role"), Arg("role")],
        "PATCH",
        "/users/{user_id}/role",
    )
    .body(V::Obj(&[("role", V::Arg("role"))])),
    cmd(
        USERS,
        &[Arg("user_id"), Lit("update"), Lit("picture"), Arg("url")],
        "PATCH",
        "/users/{user_id}/picture",
    )
    .body(V::Obj(&[("profile_picture", V::Arg("url"))])),
    cmd(
        USERS,
        &[Arg("user_id"), Lit("update"), Json("json")],
        "PATCH",
        "/users/{user_id}",
    )
    .body(V::Json("json")),
    cmd(
        USERS,
        &[Arg("user_id"), Alt("op", &["enable", "disable"])],
        "POST",
        "/users/{user_id}/{op}",
    ),
    cmd(USERS, &[Arg("user_id"), Lit("delete")], "DELETE", "/users/{user_id}"),
    // domains
    cmd(DOMAINS, &[Lit("create"), Arg("name"), Arg("route")], "POST", "/domains")
        .body(V::Obj(&[("name", V::Arg("name")), ("route", V::Arg("route"))])),
    cmd(DOMAINS, &[Lit("all"), Lit("get")], "GET", "/domains"),
    cmd(DOMAINS, &[Arg("domain_id"), Lit("get")], "GET", "/domains/{domain_id}"),
    cmd(
        DOMAINS,
        &[Arg("domain_id"), Lit("update"), Json("json")],
        "PATCH",
        "/domains/{domain_id}",
    )
    .body(V::Json("json")),
    cmd(
        DOMAINS,
        &[Arg("domain_id"), Alt("op", &["enable", "disable", "freeze"])],
        "POST",
        "/domains/{domain_id}/{op}",
    ),
    cmd(
        DOMAINS,
        &[
            Arg("domain_id"),
            Lit("members"),
            Lit("add"),
            Arg("user_id"),
            Arg("relation"),
        ],
        "POST",
        "/domains/{domain_id}/users/assign",
    )
    .body(V::Obj(&[
        ("user_ids", V::One("user_id")),
        ("relation", V::Arg("relation")),
    ])),
    cmd(
        DOMAINS,
        &[Arg("domain_id"), Lit("members"), Lit("remove"), Arg("user_id")],
        "POST",
        "/domains/{domain_id}/users/unassign",
    )
    .body(V::Obj(&[("user_id", V::Arg("user_id"))])),
    cmd(
        DOMAINS,
        &[Arg("domain_id"), Lit("members"), Lit("list")],
        "GET",
        "/domains/{domain_id}/users",
    ),
    cmd(
        DOMAINS,
        &[Arg("domain_id"), Lit("members")],
        "GET",
        "/domains/{domain_id}/users",
    ),
    // clients and channels
    cmd(THINGS, &[Lit("create"), Json("json")], "POST", "/{d}/{entity}")
        .body(V::Json("json"))
        .domain(),
    cmd(THINGS, &[Lit("all"), Lit("get")], "GET", "/{d}/{entity}")
        .domain()
        .query(),
    cmd(THINGS, &[Arg("id"), Lit("get")], "GET", "/{d}/{entity}/{id}").domain(),
    cmd(
        THINGS,
        &[Arg("id"), Lit("update"), Lit("tags"), Json("tags")],
        "PATCH",
        "/{d}/{entity}/{id}/tags",
    )
    .body(V::Obj(&[("tags", V::Json("tags"))]))
    .domain(),
    cmd(
        CLIENTS,
        &[Arg("id"), Lit("update"), Lit("secret"), Arg("secret")],
        "PATCH",
        "/{d}/clients/{id}/secret",
    )
    .body(V::Obj(&[("secret", V::Arg("secret"))]))
    .domain(),
    cmd(
        THINGS,
        &[Arg("id"), Lit("update"), Json("json")],
        "PATCH",
        "/{d}/{entity}/{id}",
    )
    .body(V::Json("json"))
    .domain(),
    cmd(
        THINGS,
        &[Arg("id"), Alt("op", &["enable", "disable"])],
        "POST",
        "/{d}/{entity}/{id}/{op}",
    )
    .domain(),
    cmd(THINGS, &[Arg("id"), Lit("delete")], "DELETE", "/{d}/{entity}/{id}").domain(),
    cmd(
        CLIENTS,
        &[
            Arg("client_id"),
            Alt("op", &["connect", "disconnect"]),
            Arg("channel_id"),
            Json("conn_types"),
        ],
        "POST",
        "/{d}/channels/{op}",
    )
    .body(CONNECT)
    .domain()
    .quiet(),
    cmd(
        CHANNELS,
        &[
            Arg("channel_id"),
            Alt("op", &["connect", "disconnect"]),
            Arg("client_id"),
            Json("conn_types"),
        ],
        "POST",
        "/{d}/channels/{op}",
    )
    .body(CONNECT)
    .domain()
    .quiet(),
    // groups
    cmd(GROUPS, &[Lit("create"), Json("json")], "POST", "/{d}/groups")
        .body(V::Json("json"))
        .domain(),
    cmd(GROUPS, &[Lit("all"), Lit("get")], "GET", "/{d}/groups").domain(),
    cmd(GROUPS, &[Arg("group_id"), Lit("get")], "GET", "/{d}/groups/{group_id}").domain(),
    cmd(
        GROUPS,
        &[Arg("group_id"), Alt("op", &["parents", "children"])],
        "GET",
        "/{d}/groups/{group_id}/{op}?tree=true",
    )
    .domain(),
    cmd(
        GROUPS,
        &[Arg("group_id"), Lit("members")],
        "GET",
        "/{d}/groups/{group_id}/members",
    )
    .domain(),
    cmd(
        GROUPS,
        &[Arg("group_id"), Lit("update"), Json("json")],
        "PUT",
        "/{d}/groups/{group_id}",
    )
    .body(V::Json("json"))
    .domain(),
    cmd(
        GROUPS,
        &[Arg("group_id"), Alt("op", &["enable", "disable"])],
        "POST",
        "/{d}/groups/{group_id}/{op}",
    )
    .domain(),
    cmd(
        GROUPS,
        &[Arg("group_id"), Lit("delete")],
        "DELETE",
        "/{d}/groups/{group_id}",
    )
    .domain(),
    // certificates
    cmd(
        CERTS,
        &[Lit("get"), Arg("client_id")],
        "GET",
        "/{d}/serials/{client_id}",
    )
    .domain(),
    cmd(CERTS, &[Lit("serial"), Arg("serial")], "GET", "/{d}/certs/{serial}").domain(),
    cmd(CERTS, &[Lit("revoke"), Arg("serial")], "DELETE", "/{d}/certs/{serial}").domain(),
];

/// The body of connect and disconnect, from either side.
const CONNECT: V = V::Obj(&[
    ("client_ids", V::One("client_id")),
    ("channel_ids", V::One("channel_id")),
    ("types", V::Json("conn_types")),
]);

/// The commands written by hand in `mod.rs`: entity, usage line (after `fluxgate <entity>`),
/// and the words completions offer for it.
pub static IRREGULAR: &[(&str, &str, &[&str])] = &[
    ("users", "token <username|email> <password> [--save]", &["token"]),
    ("users", "search <query> <token>", &["search"]),
    ("clients", "<file.csv|file.json> <domain_id> <token>", &[]),
    ("channels", "<file.csv|file.json> <domain_id> <token>", &[]),
    (
        "certs",
        "issue <client_id> <domain_id> <token> [--ttl 8760h]",
        &["issue"],
    ),
    ("certs", "ca", &["ca"]),
    (
        "messages",
        "send <channel_id>[/<subtopic>] '<senml json>' <client_secret>",
        &["send"],
    ),
    (
        "messages",
        "read <channel_id> [<token or client secret>] [--offset N --limit N --name X ...]",
        &["read"],
    ),
    (
        "provision",
        "clients|channels <file.csv|file.json> <domain_id> <token>",
        &["clients", "channels"],
    ),
    (
        "provision",
        "connect <connections.csv> <domain_id> <token>",
        &["connect"],
    ),
    (
        "messages",
        "watch <channel_id> <token>      (prints each message as it arrives, one JSON line)",
        &["watch"],
    ),
    ("config", "set url|token <value>", &["set"]),
    ("config", "show", &["show"]),
    ("config", "default", &["default"]),
];

/// Every entity, in the order the top-level usage names them.
pub const ENTITIES: &[&str] = &[
    "users",
    "domains",
    "clients",
    "channels",
    "groups",
    "messages",
    "provision",
    "certs",
    "config",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_in_the_usage_and_its_words_in_the_completions() {
        for c in COMMANDS {
            for e in c.entities {
                assert!(ENTITIES.contains(e), "{e}");
                let line = format!("fluxgate {e} {}", usage_line(c));
                assert!(usage(e).contains(&line), "usage of {e} lacks {line}");
                let verbs = verbs(e);
                for w in c.words {
                    let fixed: &[&str] = match w {
                        W::Lit(l) => std::slice::from_ref(l),
                        W::Alt(_, o) => o,
                        _ => &[],
                    };
                    for f in fixed {
                        assert!(verbs.contains(f), "completions of {e} lack {f}");
                    }
                }
            }
        }
        for (e, line, words) in IRREGULAR {
            assert!(usage(e).contains(&format!("fluxgate {e} {line}")));
            assert!(words.iter().all(|w| verbs(e).contains(w)));
        }
    }

    #[test]
    fn every_path_capture_and_body_field_is_captured_by_the_row() {
        fn body_names(v: V, out: &mut Vec<&'static str>) {
            match v {
                V::Arg(n) | V::Json(n) | V::One(n) => out.push(n),
                V::Obj(f) => f.iter().for_each(|(_, v)| body_names(*v, out)),
            }
        }
        for c in COMMANDS {
            let names: Vec<&str> = c
                .words
                .iter()
                .filter_map(|w| match w {
                    W::Alt(n, _) | W::Arg(n) | W::Json(n) => Some(*n),
                    W::Lit(_) => None,
                })
                .collect();
            let mut needed = Vec::new();
            if let Some(b) = c.body {
                body_names(b, &mut needed);
            }
            let mut rest = c.path;
            while let Some(i) = rest.find('{') {
                let j = rest[i..].find('}').map(|j| i + j).unwrap_or(rest.len());
                needed.push(&rest[i + 1..j]);
                rest = &rest[j..];
            }
            for n in needed {
                let known = names.contains(&n) || n == "entity" || (n == "d" && c.tail == Tail::Domain);
                assert!(known, "{:?}: `{n}` is not captured", c.words);
            }
            assert!(reqwest::Method::from_bytes(c.method.as_bytes()).is_ok());
        }
    }

    #[test]
    fn rows_match_in_order_with_their_tails() {
        let m = find("clients", &["c1", "update", "tags", "[\"a\"]", "d1", "t"]).expect("tags");
        assert_eq!(m.path("clients", Some("d1")), "/d1/clients/c1/tags");
        assert_eq!(m.body().expect("body"), Some(json!({"tags": ["a"]})));
        let m = find("channels", &["h1", "connect", "c1", "[\"publish\"]", "d1"]).expect("connect");
        assert_eq!(
            m.body().expect("body"),
            Some(json!({"client_ids": ["c1"], "channel_ids": ["h1"], "types": ["publish"]}))
        );
        assert_eq!(m.tail, &["d1"]);
        let m = find("domains", &["d1", "members", "list"]).expect("saved token");
        assert_eq!(m.path("domains", None), "/domains/d1/users");
        assert!(find("clients", &["c1", "frobnicate", "d", "t"]).is_none());
        assert!(find("users", &["create", "only-one"]).is_none());
        assert!(
            find("users", &["resetpasswordrequest", "e", "extra"]).is_none(),
            "public: no tail"
        );
        let m = find("users", &["u1", "update", "{\"x\""]).expect("matched");
        assert!(m.body().is_err(), "bad JSON is an error, not a panic");
    }
}
