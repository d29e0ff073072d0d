//! The one table of every route the API serves. The HTTP edge matches each request against it
//! before dispatch: a path in no row is 404, a path served only for other methods is 405, a
//! query parameter the row does not name is 400. So the handlers can serve nothing the table
//! does not list, and the table gives the route template of every request (metrics, access
//! log) and the operations of `GET /openapi.json` ([`crate::openapi`]).

use warp::http::Method;

/// How a route's caller authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// A user's access token: `Authorization: Bearer <token>`.
    Bearer,
    /// A user's refresh token as the bearer.
    Refresh,
    /// A device: `Authorization: Client <secret>` (or Basic client id and secret).
    Client,
    /// A device, or a user's access token.
    ClientOrBearer,
    /// Open, or with `metrics.token` set, that token as the bearer.
    MetricsToken,
}

/// Type of a query parameter.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Int,
    Num,
    Bool,
    Str,
    Enum(&'static [&'static str]),
}

/// A query parameter a route accepts.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub ty: Ty,
    pub doc: &'static str,
}

const fn p(name: &'static str, ty: Ty, doc: &'static str) -> Param {
    Param { name, ty, doc }
}

/// A request body: its schema's name in the document and its media type.
#[derive(Clone, Copy, Debug)]
pub struct Body {
    pub schema: &'static str,
    pub media: &'static str,
}

const fn json(schema: &'static str) -> Option<Body> {
    Some(Body {
        schema,
        media: "application/json",
    })
}

/// The successful answer: status and schema name (`None`: no body).
#[derive(Clone, Copy, Debug)]
pub struct Success {
    pub status: u16,
    pub schema: Option<&'static str>,
    pub media: &'static str,
}

const fn ok(status: u16, schema: &'static str) -> Success {
    Success {
        status,
        schema: Some(schema),
        media: "application/json",
    }
}

const fn no_content() -> Success {
    Success {
        status: 204,
        schema: None,
        media: "application/json",
    }
}

/// One operation: a method on a path template (`{name}` is one segment; a route with
/// `rest` set takes one or more segments for its last parameter).
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub rest: bool,
    pub id: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    pub query: &'static [&'static [Param]],
    pub body: Option<Body>,
    pub ok: Success,
}

const PAGE: &[Param] = &[
    p("offset", Ty::Int, "Items to skip."),
    p("limit", Ty::Int, "Items per page: 1 to 100 (default 10)."),
    p(
        "order",
        Ty::Enum(&["created_at", "updated_at", "name"]),
        "Sort key (default created_at).",
    ),
    p("dir", Ty::Enum(&["asc", "desc"]), "Sort direction (default asc)."),
];
const FILTERS: &[Param] = &[
    p(
        "status",
        Ty::Enum(&["enabled", "disabled", "all"]),
        "Status filter (default enabled).",
    ),
    p("name", Ty::Str, "Name contains."),
    p("tag", Ty::Str, "Has this tag."),
    p("tags", Ty::Str, "Has this tag (older spelling of `tag`)."),
    p("metadata", Ty::Str, "JSON object the metadata must contain."),
];
const STATUS: &[Param] = &[p(
    "status",
    Ty::Enum(&["enabled", "disabled", "all"]),
    "Status filter (default enabled).",
)];
const BY_CHANNEL: &[Param] = &[
    p("channel", Ty::Str, "Only clients connected to this channel."),
    p(
        "connected",
        Ty::Bool,
        "Only clients with (true) or without (false) a live MQTT connection.",
    ),
];
const BY_CLIENT: &[Param] = &[p("client", Ty::Str, "Only channels this client is connected to.")];
const USER_FILTERS: &[Param] = &[
    p("first_name", Ty::Str, "First name equals."),
    p("last_name", Ty::Str, "Last name equals."),
    p("email", Ty::Str, "E-mail equals."),
    p("username", Ty::Str, "Username equals."),
    p("identity", Ty::Str, "Username or e-mail equals."),
];
const SEARCH: &[Param] = &[
    p("username", Ty::Str, "Username contains."),
    p("name", Ty::Str, "Username contains (older spelling)."),
    p("first_name", Ty::Str, "First name contains."),
    p("last_name", Ty::Str, "Last name contains."),
    p("email", Ty::Str, "E-mail contains (super-admins only)."),
];
const TREE: &[Param] = &[p("tree", Ty::Bool, "Nest the groups through `children`.")];
const LEVEL: &[Param] = &[p("level", Ty::Int, "Levels to walk (default all).")];
const DURABLE: &[Param] = &[p("durable", Ty::Bool, "Answer only once the message is stored.")];
const CHART: &[Param] = &[
    p("name", Ty::Str, "SenML name of the measurement (required)."),
    p(
        "from",
        Ty::Num,
        "Start (seconds since the epoch; default: an hour before `to`).",
    ),
    p("to", Ty::Num, "End (seconds since the epoch; default: now)."),
    p(
        "interval",
        Ty::Str,
        "Bucket length, e.g. 30s, 5m, 1h (default: a hundredth of the range; at most 1000 buckets).",
    ),
    p(
        "aggregation",
        Ty::Enum(&["min", "max", "avg", "sum", "count"]),
        "Aggregate per bucket (default avg).",
    ),
];
const SVG: Success = Success {
    status: 200,
    schema: Some("Text"),
    media: "image/svg+xml",
};
const READER: &[Param] = &[
    p("offset", Ty::Int, "Messages to skip."),
    p("limit", Ty::Int, "Messages per page: 1 to 1000 (default 10)."),
    p("subtopic", Ty::Str, "Subtopic equals."),
    p("publisher", Ty::Str, "Publisher (client id) equals."),
    p("protocol", Ty::Str, "Protocol equals (http, mqtt)."),
    p("name", Ty::Str, "SenML name equals."),
    p("v", Ty::Num, "Numeric value compared with `comparator`."),
    p(
        "comparator",
        Ty::Enum(&["eq", "lt", "le", "gt", "ge"]),
        "How `v` is compared (default eq).",
    ),
    p("vb", Ty::Bool, "Boolean value equals."),
    p("vs", Ty::Str, "String value equals."),
    p("vd", Ty::Str, "Data value equals."),
    p("from", Ty::Num, "From this time (seconds since the epoch, inclusive)."),
    p("to", Ty::Num, "Up to this time (seconds since the epoch, exclusive)."),
    p(
        "aggregation",
        Ty::Enum(&["min", "max", "avg", "sum", "count"]),
        "Aggregate values per interval (needs from and to).",
    ),
    p("interval", Ty::Str, "Aggregation interval, e.g. 10s, 5m, 1h, 1d."),
    p("order", Ty::Enum(&["time"]), "Sort key (only time)."),
    p("dir", Ty::Enum(&["asc", "desc"]), "Sort direction (default desc)."),
];

macro_rules! routes {
    ($( $m:ident $path:literal $(rest $rest:literal)? => $id:literal, $tag:literal, $summary:literal, $auth:ident,
        [$($q:ident),*], $body:expr, $ok:expr; )*) => {
        /// Every route, in the order of the document.
        pub const ROUTES: &[Route] = &[$(Route {
            method: stringify!($m),
            path: $path,
            rest: false $(|| $rest)?,
            id: $id,
            tag: $tag,
            summary: $summary,
            auth: Auth::$auth,
            query: &[$($q),*],
            body: $body,
            ok: $ok,
        }),*];
    };
}

const TEXT: Success = Success {
    status: 200,
    schema: Some("Text"),
    media: "text/plain",
};
const PEM: Success = Success {
    status: 200,
    schema: Some("Text"),
    media: "application/x-pem-file",
};
const EVENTS: Success = Success {
    status: 200,
    schema: Some("Text"),
    media: "text/event-stream",
};
const ACCEPTED: Success = Success {
    status: 202,
    schema: None,
    media: "application/json",
};
const SENML: Option<Body> = Some(Body {
    schema: "SenML",
    media: "application/senml+json",
});

routes! {
    GET "/health" => "health", "health", "Health of every component (503 naming what fails)", None, [], None, Success { status: 200, schema: Some("Health"), media: "application/health+json" };
    GET "/metrics" => "metrics", "health", "Prometheus metrics", MetricsToken, [], None, TEXT;
    GET "/openapi.json" => "openapi", "health", "This document", None, [], None, ok(200, "Document");

    POST "/users" => "createUser", "users", "Register a user", None, [], json("CreateUser"), ok(201, "User");
    GET "/users" => "listUsers", "users", "List users (super-admin)", Bearer, [PAGE, FILTERS, USER_FILTERS], None, ok(200, "UsersPage");
    POST "/users/tokens/issue" => "issueToken", "users", "Log in: issue an access and a refresh token", None, [], json("IssueToken"), ok(201, "Tokens");
    POST "/users/tokens/refresh" => "refreshToken", "users", "Exchange the refresh token (as bearer) for a new pair", Refresh, [], None, ok(201, "Tokens");
    POST "/users/tokens/revoke" => "revokeToken", "users", "Log out: revoke the caller's refresh token family", Bearer, [], None, no_content();
    GET "/users/profile" => "profile", "users", "The caller", Bearer, [], None, ok(200, "User");
    GET "/users/search" => "searchUsers", "users", "Find users to invite", Bearer, [PAGE, SEARCH], None, ok(200, "UsersPage");
    PATCH "/users/secret" => "changeSecret", "users", "Change the caller's password", Bearer, [], json("ChangeSecret"), ok(200, "User");
    POST "/users/policies" => "addPolicy", "users", "Add a user to a group", Bearer, [], json("Policy"), ok(201, "Empty");
    DELETE "/users/policies/{subject}/{object}" => "removePolicy", "users", "Remove a user from a group", Bearer, [], None, no_content();
    GET "/users/{userID}/memberships" => "userMemberships", "users", "Groups a user belongs to", Bearer, [PAGE], None, ok(200, "MembershipsPage");
    GET "/users/{userID}" => "getUser", "users", "A user", Bearer, [], None, ok(200, "User");
    PATCH "/users/{userID}" => "updateUser", "users", "Update names and metadata", Bearer, [], json("UpdateUser"), ok(200, "User");
    DELETE "/users/{userID}" => "deleteUser", "users", "Delete a user", Bearer, [], None, no_content();
    PATCH "/users/{userID}/tags" => "updateUserTags", "users", "Replace a user's tags", Bearer, [], json("Tags"), ok(200, "User");
    PATCH "/users/{userID}/picture" => "updateUserPicture", "users", "Set a user's profile picture", Bearer, [], json("Picture"), ok(200, "User");
    PATCH "/users/{userID}/email" => "updateUserEmail", "users", "Change a user's e-mail", Bearer, [], json("Email"), ok(200, "User");
    PATCH "/users/{userID}/username" => "updateUsername", "users", "Change a user's username", Bearer, [], json("Username"), ok(200, "User");
    PATCH "/users/{userID}/role" => "updateUserRole", "users", "Change a user's role (super-admin)", Bearer, [], json("Role"), ok(200, "User");
    POST "/users/{userID}/enable" => "enableUser", "users", "Enable a user", Bearer, [], None, ok(200, "User");
    POST "/users/{userID}/disable" => "disableUser", "users", "Disable a user", Bearer, [], None, ok(200, "User");
    POST "/password/reset-request" => "resetRequest", "users", "E-mail a password reset link", None, [], json("ResetRequest"), ok(201, "Notice");
    PUT "/password/reset" => "resetPassword", "users", "Set a new password with a reset token", None, [], json("Reset"), Success { status: 201, schema: None, media: "application/json" };

    POST "/domains" => "createDomain", "domains", "Create a domain", Bearer, [], json("CreateDomain"), ok(201, "Domain");
    GET "/domains" => "listDomains", "domains", "Domains of the caller", Bearer, [PAGE, FILTERS], None, ok(200, "DomainsPage");
    GET "/domains/{domainID}" => "getDomain", "domains", "A domain", Bearer, [], None, ok(200, "Domain");
    PATCH "/domains/{domainID}" => "updateDomain", "domains", "Update a domain", Bearer, [], json("UpdateDomain"), ok(200, "Domain");
    PUT "/domains/{domainID}" => "replaceDomain", "domains", "Update a domain (PUT spelling)", Bearer, [], json("UpdateDomain"), ok(200, "Domain");
    POST "/domains/{domainID}/enable" => "enableDomain", "domains", "Enable a domain", Bearer, [], None, ok(200, "Domain");
    POST "/domains/{domainID}/disable" => "disableDomain", "domains", "Disable a domain", Bearer, [], None, ok(200, "Domain");
    POST "/domains/{domainID}/freeze" => "freezeDomain", "domains", "Freeze a domain (super-admin)", Bearer, [], None, ok(200, "Domain");
    POST "/domains/{domainID}/users/assign" => "assignMembers", "domains", "Add members or change their role", Bearer, [], json("Assign"), ok(201, "Empty");
    POST "/domains/{domainID}/users/unassign" => "unassignMember", "domains", "Remove a member", Bearer, [], json("Unassign"), no_content();
    GET "/domains/{domainID}/users" => "listMembers", "domains", "Members of a domain", Bearer, [PAGE], None, ok(200, "MembersPage");
    GET "/domains/{domainID}/members" => "listMembersAlias", "domains", "Members of a domain (other spelling)", Bearer, [PAGE], None, ok(200, "MembersPage");

    GET "/clients" => "listAllClients", "clients", "The caller's clients across their domains", Bearer, [PAGE, FILTERS, BY_CHANNEL], None, ok(200, "ClientsPage");
    POST "/{domainID}/clients" => "createClient", "clients", "Create a client", Bearer, [], json("CreateClient"), ok(201, "Client");
    POST "/{domainID}/clients/bulk" => "createClients", "clients", "Create clients", Bearer, [], json("CreateClients"), ok(200, "ClientsCreated");
    GET "/{domainID}/clients" => "listClients", "clients", "Clients of a domain", Bearer, [PAGE, FILTERS, BY_CHANNEL], None, ok(200, "ClientsPage");
    GET "/{domainID}/clients/{clientID}" => "getClient", "clients", "A client", Bearer, [], None, ok(200, "Client");
    PATCH "/{domainID}/clients/{clientID}" => "updateClient", "clients", "Update name and metadata", Bearer, [], json("UpdateClient"), ok(200, "Client");
    PUT "/{domainID}/clients/{clientID}" => "replaceClient", "clients", "Update name and metadata (PUT spelling)", Bearer, [], json("UpdateClient"), ok(200, "Client");
    DELETE "/{domainID}/clients/{clientID}" => "deleteClient", "clients", "Delete a client", Bearer, [], None, no_content();
    PATCH "/{domainID}/clients/{clientID}/tags" => "updateClientTags", "clients", "Replace a client's tags", Bearer, [], json("Tags"), ok(200, "Client");
    PATCH "/{domainID}/clients/{clientID}/secret" => "updateClientSecret", "clients", "Set a client's secret", Bearer, [], json("Secret"), ok(200, "Client");
    POST "/{domainID}/clients/{clientID}/enable" => "enableClient", "clients", "Enable a client", Bearer, [], None, ok(200, "Client");
    POST "/{domainID}/clients/{clientID}/disable" => "disableClient", "clients", "Disable a client", Bearer, [], None, ok(200, "Client");
    GET "/{domainID}/clients/{clientID}/channels" => "clientChannels", "clients", "Channels a client is connected to", Bearer, [PAGE, STATUS], None, ok(200, "ChannelsPage");

    GET "/channels" => "listAllChannels", "channels", "The caller's channels across their domains", Bearer, [PAGE, FILTERS, BY_CLIENT], None, ok(200, "ChannelsPage");
    POST "/{domainID}/channels" => "createChannel", "channels", "Create a channel", Bearer, [], json("CreateChannel"), ok(201, "Channel");
    POST "/{domainID}/channels/bulk" => "createChannels", "channels", "Create channels", Bearer, [], json("CreateChannels"), ok(200, "ChannelsCreated");
    POST "/{domainID}/channels/connect" => "connect", "channels", "Connect clients to channels", Bearer, [], json("Connect"), ok(201, "Empty");
    POST "/{domainID}/channels/disconnect" => "disconnect", "channels", "Disconnect clients from channels", Bearer, [], json("Connect"), no_content();
    GET "/{domainID}/channels" => "listChannels", "channels", "Channels of a domain", Bearer, [PAGE, FILTERS, BY_CLIENT], None, ok(200, "ChannelsPage");
    GET "/{domainID}/channels/{channelID}" => "getChannel", "channels", "A channel", Bearer, [], None, ok(200, "Channel");
    PATCH "/{domainID}/channels/{channelID}" => "updateChannel", "channels", "Update name, description and metadata", Bearer, [], json("UpdateChannel"), ok(200, "Channel");
    PUT "/{domainID}/channels/{channelID}" => "replaceChannel", "channels", "Update (PUT spelling)", Bearer, [], json("UpdateChannel"), ok(200, "Channel");
    DELETE "/{domainID}/channels/{channelID}" => "deleteChannel", "channels", "Delete a channel and its connections", Bearer, [], None, no_content();
    PATCH "/{domainID}/channels/{channelID}/tags" => "updateChannelTags", "channels", "Replace a channel's tags", Bearer, [], json("Tags"), ok(200, "Channel");
    POST "/{domainID}/channels/{channelID}/enable" => "enableChannel", "channels", "Enable a channel", Bearer, [], None, ok(200, "Channel");
    POST "/{domainID}/channels/{channelID}/disable" => "disableChannel", "channels", "Disable a channel", Bearer, [], None, ok(200, "Channel");
    POST "/{domainID}/channels/{channelID}/connect" => "connectChannel", "channels", "Connect clients to this channel", Bearer, [], json("Connect"), ok(201, "Empty");
    POST "/{domainID}/channels/{channelID}/disconnect" => "disconnectChannel", "channels", "Disconnect clients from this channel", Bearer, [], json("Connect"), no_content();
    GET "/{domainID}/channels/{channelID}/clients" => "channelClients", "channels", "Clients connected to a channel", Bearer, [PAGE, STATUS], None, ok(200, "ClientsPage");
    GET "/{domainID}/channels/{channelID}/messages/chart.svg" => "chartMessages", "messages", "A time-series chart (SVG) of one measurement of a channel", Bearer, [CHART], None, SVG;
    GET "/{domainID}/channels/{channelID}/messages/live" => "liveMessages", "messages", "A channel's messages as they arrive (Server-Sent Events `message`, JSON: channel, subtopic, publisher, protocol, received_at, senml or payload)", Bearer, [], None, EVENTS;

    POST "/{domainID}/groups" => "createGroup", "groups", "Create a group", Bearer, [], json("CreateGroup"), ok(201, "Group");
    GET "/{domainID}/groups" => "listGroups", "groups", "Groups of a domain", Bearer, [PAGE, FILTERS, TREE], None, ok(200, "GroupsPage");
    GET "/{domainID}/groups/{groupID}" => "getGroup", "groups", "A group", Bearer, [], None, ok(200, "Group");
    PATCH "/{domainID}/groups/{groupID}" => "updateGroup", "groups", "Update a group", Bearer, [], json("UpdateGroup"), ok(200, "Group");
    PUT "/{domainID}/groups/{groupID}" => "replaceGroup", "groups", "Update a group (PUT spelling)", Bearer, [], json("UpdateGroup"), ok(200, "Group");
    DELETE "/{domainID}/groups/{groupID}" => "deleteGroup", "groups", "Delete a group", Bearer, [], None, no_content();
    PATCH "/{domainID}/groups/{groupID}/tags" => "updateGroupTags", "groups", "Replace a group's tags", Bearer, [], json("Tags"), ok(200, "Group");
    POST "/{domainID}/groups/{groupID}/enable" => "enableGroup", "groups", "Enable a group", Bearer, [], None, ok(200, "Group");
    POST "/{domainID}/groups/{groupID}/disable" => "disableGroup", "groups", "Disable a group", Bearer, [], None, ok(200, "Group");
    POST "/{domainID}/groups/{groupID}/parent" => "setParent", "groups", "Set a group's parent", Bearer, [], json("Parent"), ok(200, "Group");
    PUT "/{domainID}/groups/{groupID}/parent" => "replaceParent", "groups", "Set a group's parent (PUT spelling)", Bearer, [], json("Parent"), ok(200, "Group");
    DELETE "/{domainID}/groups/{groupID}/parent" => "removeParent", "groups", "Make a group a root", Bearer, [], None, ok(200, "Group");
    GET "/{domainID}/groups/{groupID}/parents" => "groupParents", "groups", "A group's ancestors", Bearer, [PAGE, LEVEL, TREE], None, ok(200, "Hierarchy");
    GET "/{domainID}/groups/{groupID}/children" => "groupChildren", "groups", "A group's descendants", Bearer, [PAGE, LEVEL, TREE], None, ok(200, "Hierarchy");
    GET "/{domainID}/groups/{groupID}/members" => "groupMembers", "groups", "Members of a group", Bearer, [PAGE], None, ok(200, "GroupMembersPage");

    GET "/certs/ca" => "caCertificate", "certs", "The platform CA (PEM)", None, [], None, PEM;
    GET "/certs/crl" => "crl", "certs", "Revoked client certificates (PEM CRL)", None, [], None, PEM;
    POST "/{domainID}/certs" => "issueCert", "certs", "Issue a client certificate", Bearer, [], json("IssueCert"), ok(201, "IssuedCert");
    GET "/{domainID}/serials/{clientID}" => "listSerials", "certs", "Certificates of a client", Bearer, [], None, ok(200, "Certs");
    GET "/{domainID}/certs/{serial}" => "getCert", "certs", "A certificate", Bearer, [], None, ok(200, "Cert");
    DELETE "/{domainID}/certs/{serial}" => "revokeCert", "certs", "Revoke a certificate", Bearer, [], None, ok(200, "Revoked");

    POST "/http/channels/{channelID}/messages" => "publishHttp", "messages", "Publish SenML (device)", Client, [DURABLE], SENML, ACCEPTED;
    POST "/http/channels/{channelID}/messages/{subtopic}" rest true => "publishHttpSubtopic", "messages", "Publish SenML to a subtopic (device)", Client, [DURABLE], SENML, ACCEPTED;
    POST "/channels/{channelID}/messages" => "publish", "messages", "Publish SenML (device)", Client, [DURABLE], SENML, ACCEPTED;
    POST "/channels/{channelID}/messages/{subtopic}" rest true => "publishSubtopic", "messages", "Publish SenML to a subtopic (device)", Client, [DURABLE], SENML, ACCEPTED;
    POST "/m/{domainID}/c/{channelID}" => "publishDomain", "messages", "Publish SenML (device, domain path)", Client, [DURABLE], SENML, ACCEPTED;
    POST "/m/{domainID}/c/{channelID}/{subtopic}" rest true => "publishDomainSubtopic", "messages", "Publish SenML to a subtopic (device, domain path)", Client, [DURABLE], SENML, ACCEPTED;
    GET "/channels/{channelID}/messages" => "readMessages", "messages", "Stored messages of a channel", ClientOrBearer, [READER], None, ok(200, "MessagesPage");
    GET "/{domainID}/channels/{channelID}/messages" => "readDomainMessages", "messages", "Stored messages of a channel (domain path)", ClientOrBearer, [READER], None, ok(200, "MessagesPage");
}

/// What matching a request against [`ROUTES`] found.
#[derive(Debug)]
pub enum Found {
    Route(&'static Route),
    /// The path is served, but not for this method; the methods it is served for.
    WrongMethod(Vec<&'static str>),
    NoRoute,
}

/// How well `path` matches `segs`: `None` if it does not; otherwise a score where a literal
/// segment beats a parameter at the first position they differ (`/users/profile` wins over
/// `/users/{userID}`): bit 63 − i is set when segment i is literal. No allocation: this
/// runs for every route on every request.
fn score(r: &Route, segs: &[&str]) -> Option<u64> {
    let mut literal = 0u64;
    let mut n = 0;
    for (i, t) in r.path.split('/').filter(|s| !s.is_empty()).enumerate() {
        let s = segs.get(i)?;
        if !t.starts_with('{') {
            if t != *s {
                return None;
            }
            literal |= 1 << (63 - i.min(63));
        }
        n = i + 1;
    }
    let fits = if r.rest { segs.len() >= n } else { segs.len() == n };
    fits.then_some(literal)
}

/// The route serving `method` on `segs` (percent-decoded path segments).
pub fn find(method: &Method, segs: &[&str]) -> Found {
    let mut best: Option<(&'static Route, u64)> = None;
    let mut others = Vec::new();
    for r in ROUTES {
        let Some(s) = score(r, segs) else { continue };
        if r.method != method.as_str() {
            others.push(r.method);
            continue;
        }
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((r, s));
        }
    }
    match best {
        Some((r, _)) => Found::Route(r),
        None if !others.is_empty() => {
            others.sort_unstable();
            others.dedup();
            Found::WrongMethod(others)
        }
        None => Found::NoRoute,
    }
}

impl Route {
    /// Every query parameter of the route.
    pub fn params(&self) -> impl Iterator<Item = &'static Param> {
        self.query.iter().flat_map(|g| g.iter())
    }

    /// The first query parameter the route does not take, if any.
    pub fn unknown_param<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        keys.into_iter().find(|k| !self.params().any(|p| p.name == *k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(m: Method, path: &str) -> Option<&'static str> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match find(&m, &segs) {
            Found::Route(r) => Some(r.path),
            _ => None,
        }
    }

    #[test]
    fn literals_win_over_parameters_and_methods_are_told_apart() {
        assert_eq!(at(Method::GET, "/users/profile"), Some("/users/profile"));
        assert_eq!(at(Method::GET, "/users/abc"), Some("/users/{userID}"));
        assert_eq!(
            at(Method::POST, "/d/channels/connect"),
            Some("/{domainID}/channels/connect")
        );
        assert_eq!(
            at(Method::GET, "/d/channels/connect"),
            Some("/{domainID}/channels/{channelID}")
        );
        assert_eq!(
            at(Method::POST, "/channels/c/messages/a/b/c"),
            Some("/channels/{channelID}/messages/{subtopic}")
        );
        assert_eq!(at(Method::GET, "/nothing/here/at/all/x"), None);
        assert!(matches!(
            find(&Method::DELETE, &["users"]),
            Found::WrongMethod(m) if m == ["GET", "POST"]
        ));
    }

    #[test]
    fn every_route_is_unique_and_names_its_parameters_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(!(a.method == b.method && a.path == b.path), "{} {}", a.method, a.path);
                assert_ne!(a.id, b.id);
            }
            let names: Vec<&str> = a.params().map(|p| p.name).collect();
            let mut d = names.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), names.len(), "{} {}: {names:?}", a.method, a.path);
        }
    }
}
