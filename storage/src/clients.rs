//! Clients (devices) of a domain and the authorization questions asked about them.
//! A client is identified by (domain, id): the same external id may exist in two domains.

use crate::db::{params, Db, Dialect, Row, ToValue, Tx};
use crate::entity::{self, record, shared_columns, OWN};
use crate::events::{Change, ConnType};
use crate::{
    conflict, status_from_sql, EntityFilter, Filter, JsonText, Page, PageReq, Result, Status, Store, StoreError,
};

#[derive(Clone)]
pub struct Client {
    pub id: String,
    pub domain_id: String,
    pub name: String,
    pub identity: String,
    pub secret: String,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub status: Status,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub updated_by: Option<String>,
    /// Connection types to the channel a list was filtered by, if any.
    pub conn_types: Vec<ConnType>,
    pub presence: Presence,
}

/// Where and since when a client is connected, from the broker's session events.
#[derive(Clone, Debug, Default)]
pub struct Presence {
    /// The last time one of its MQTT sessions got a connection.
    pub connected_at: Option<i64>,
    /// The last time its last live connection ended.
    pub disconnected_at: Option<i64>,
    /// Remote address and transport (`mqtt`, `mqtts`, `ws`, `wss`) of the last connection.
    pub remote_addr: Option<String>,
    pub protocol: Option<String>,
    /// The live connections: a JSON array of `{client_id, remote_addr, protocol,
    /// connected_at, node}` (the MQTT client id; microseconds; the cluster node holding it,
    /// "" outside a cluster).
    pub sessions: JsonText,
}

impl Presence {
    /// Whether a connection is live now.
    pub fn online(&self) -> bool {
        self.sessions.0.trim() != "[]"
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("domain_id", &self.domain_id)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

pub struct NewClient {
    pub id: String,
    pub name: String,
    pub identity: String,
    pub secret: String,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub status: Status,
}

#[derive(Default)]
pub struct ClientPatch {
    pub name: Option<String>,
    pub metadata: Option<JsonText>,
    pub tags: Option<JsonText>,
    pub secret: Option<String>,
    pub status: Option<Status>,
}

#[derive(Default)]
pub struct ClientQuery {
    pub page: PageReq,
    pub filter: EntityFilter,
    /// Only clients connected to this channel (with their connection types filled in).
    pub channel: Option<String>,
    /// Only clients with (`true`) or without (`false`) a live connection.
    pub connected: Option<bool>,
}

/// What the MQTT front and the HTTP adapter need to authenticate a client.
#[derive(Clone)]
pub struct ClientAuth {
    pub domain_id: String,
    pub client_id: String,
    pub secret: String,
    pub client_status: Status,
    pub domain_status: Status,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("domain_id", &self.domain_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// Client and its domain both enabled.
    pub fn active(&self) -> bool {
        self.client_status == Status::Enabled && self.domain_status == Status::Enabled
    }
}

/// The columns [`from_row`] reads, in `d`'s dialect (the live sessions are a JSON array).
fn columns(d: Dialect) -> String {
    let sessions = d.json_objects(
        &[
            ("client_id", "s.mqtt_client_id"),
            ("remote_addr", "s.remote_addr"),
            ("protocol", "s.protocol"),
            ("connected_at", "s.connected_at"),
            ("node", "s.node_id"),
        ],
        "FROM client_sessions s WHERE s.domain_id = c.domain_id AND s.client_id = c.id",
    );
    format!(
        "{}, c.identity, c.secret, c.connected_at, c.disconnected_at, c.remote_addr, c.protocol, {sessions}",
        shared_columns!("c.")
    )
}

/// Where the list query's connection types column is (after [`columns`]).
const TYPES_COLUMN: usize = OWN + 7;

fn from_row(r: &Row) -> Result<Client> {
    Ok(record!(
        r,
        Client {
            identity: r.get(OWN)?,
            secret: r.get(OWN + 1)?,
            conn_types: Vec::new(),
            presence: Presence {
                connected_at: r.get(OWN + 2)?,
                disconnected_at: r.get(OWN + 3)?,
                remote_addr: r.get(OWN + 4)?,
                protocol: r.get(OWN + 5)?,
                sessions: JsonText(compact_json(
                    r.get::<Option<String>>(OWN + 6)?.unwrap_or_else(|| "[]".into())
                )),
            },
        }
    ))
}

/// A JSON document in one spelling whichever database built it: no spaces, keys sorted.
fn compact_json(s: String) -> String {
    serde_json::from_str::<serde_json::Value>(&s)
        .map(|v| v.to_string())
        .unwrap_or(s)
}

/// With `other` (an id of the other side of connections, in column `other_column`), keeps the
/// rows connected to it and returns the SQL of their connection types (comma-separated); without,
/// `NULL`. `this` is (column of `connections`, column of the listed row).
pub(crate) fn connection_types(
    f: &mut Filter,
    domain_column: &str,
    this: (&str, &str),
    other_column: &str,
    other: &Option<String>,
) -> String {
    let Some(other) = other else {
        return "NULL".into();
    };
    let (this_column, row_id) = this;
    let n = f.next_index();
    let on = format!("k.domain_id = {domain_column} AND k.{this_column} = {row_id} AND k.{other_column}");
    f.push(
        format!("EXISTS (SELECT 1 FROM connections k WHERE {on} = ?)"),
        other.clone(),
    );
    let types = f.dialect().group_concat("type");
    format!("(SELECT {types} FROM connections k WHERE {on} = ?{n})")
}

pub(crate) fn parse_types(s: Option<String>) -> Vec<ConnType> {
    let mut v: Vec<ConnType> = s.unwrap_or_default().split(',').filter_map(ConnType::parse).collect();
    v.sort();
    v
}

fn unique(e: StoreError) -> StoreError {
    // SQLite names the columns (clients.domain_id, clients.secret), PostgreSQL the index.
    let what = if e.to_string().contains("clients.secret") || e.to_string().contains("clients_secret") {
        "client secret already in use in this domain"
    } else {
        "client id already exists in this domain"
    };
    conflict(e, what)
}

fn insert(tx: &Tx<'_>, domain: &str, c: &NewClient, now: i64) -> Result<()> {
    let own = [("identity", c.identity.to_value()), ("secret", c.secret.to_value())];
    let shared = entity::Shared::new(&c.id, &c.name, &c.tags, &c.metadata, c.status);
    entity::insert(tx, "clients", domain, shared, &own, now).map_err(unique)
}

fn get(c: &impl Db, domain: &str, id: &str) -> Result<Client> {
    let sql = format!(
        "SELECT {} FROM clients c WHERE c.domain_id = ?1 AND c.id = ?2",
        columns(c.dialect())
    );
    c.query_opt(&sql, &params![domain, id], from_row)?
        .ok_or(StoreError::not_found("client"))
}

impl Store {
    pub fn create_clients(&self, domain: &str, new: &[NewClient]) -> Result<Vec<Client>> {
        self.write(|tx| {
            let now = crate::now_micros();
            for c in new {
                insert(tx, domain, c, now)?;
            }
            new.iter().map(|c| get(tx, domain, &c.id)).collect()
        })
    }

    pub fn client(&self, domain: &str, id: &str) -> Result<Client> {
        get(&self.conn()?, domain, id)
    }

    /// Updates a client; a status or secret change is announced (`ClientEnabled`,
    /// `ClientDisabled`, `ClientSecretChanged`).
    pub fn update_client(&self, domain: &str, id: &str, p: ClientPatch, by: &str) -> Result<Client> {
        self.write_announcing(|tx, changes| {
            let (domain_id, client_id) = (domain.to_string(), id.to_string());
            match p.status {
                Some(Status::Enabled) => changes.push(Change::ClientEnabled {
                    domain_id: domain_id.clone(),
                    client_id: client_id.clone(),
                }),
                Some(_) => changes.push(Change::ClientDisabled {
                    domain_id: domain_id.clone(),
                    client_id: client_id.clone(),
                }),
                None => {}
            }
            if p.secret.is_some() {
                changes.push(Change::ClientSecretChanged { domain_id, client_id });
            }
            let n = tx
                .execute(
                    "UPDATE clients SET name = COALESCE(?3, name), metadata = COALESCE(?4, metadata),
                        tags = COALESCE(?5, tags), secret = COALESCE(?6, secret), status = COALESCE(?7, status),
                        updated_at = ?8, updated_by = ?9
                     WHERE domain_id = ?1 AND id = ?2",
                    &params![
                        domain,
                        id,
                        p.name,
                        p.metadata.map(|m| m.0),
                        p.tags.map(|t| t.0),
                        p.secret,
                        p.status.map(Status::as_str),
                        crate::now_micros(),
                        by
                    ],
                )
                .map_err(unique)?;
            if n == 0 {
                return Err(StoreError::not_found("client"));
            }
            get(tx, domain, id)
        })
    }

    /// Deletes a client with its connections and revokes its certificates, in one
    /// transaction; announces `ClientDeleted` and a `CertRevoked` per certificate revoked now,
    /// and returns those serials.
    pub fn delete_client(&self, domain: &str, id: &str) -> Result<Vec<String>> {
        self.write_announcing(|tx, changes| {
            tx.execute(
                "DELETE FROM connections WHERE domain_id = ?1 AND client_id = ?2",
                &params![domain, id],
            )?;
            let n = tx.execute(
                "DELETE FROM clients WHERE domain_id = ?1 AND id = ?2",
                &params![domain, id],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("client"));
            }
            let now = crate::now_micros() / 1_000_000;
            let serials: Vec<String> = tx.query_map(
                "UPDATE certs SET revoked_at = ?3 WHERE domain_id = ?1 AND client_id = ?2 AND revoked_at IS NULL
                 RETURNING serial",
                &params![domain, id, now],
                |r| r.get(0),
            )?;
            changes.push(Change::ClientDeleted {
                domain_id: domain.into(),
                client_id: id.into(),
            });
            changes.extend(serials.iter().map(|serial| Change::CertRevoked {
                domain_id: domain.into(),
                client_id: id.into(),
                serial: serial.clone(),
            }));
            Ok(serials)
        })
    }

    pub fn list_clients(&self, scope: impl Into<crate::Scope>, q: &ClientQuery) -> Result<Page<Client>> {
        let mut f = Filter::new(self.dialect());
        scope.into().filter(&mut f, "c.domain_id");
        q.filter.apply(&mut f, "c.");
        let types = connection_types(&mut f, "c.domain_id", ("client_id", "c.id"), "channel_id", &q.channel);
        if let Some(online) = q.connected {
            let not = if online { "" } else { "NOT " };
            f.raw(format!(
                "{not}EXISTS (SELECT 1 FROM client_sessions s WHERE s.domain_id = c.domain_id AND s.client_id = c.id)"
            ));
        }
        let c = self.conn()?;
        f.page(
            &c,
            "clients c",
            &format!("{}, {types}", columns(f.dialect())),
            &q.page.sql(f.dialect(), "c.name", "c."),
            &q.page,
            |r| {
                let mut cl = from_row(r)?;
                cl.conn_types = parse_types(r.get(TYPES_COLUMN)?);
                Ok(cl)
            },
        )
    }

    /// Authentication by id: every client with this id (ids are unique per domain only),
    /// with its secret for the caller's constant-time comparison.
    pub fn clients_by_id(&self, id: &str) -> Result<Vec<ClientAuth>> {
        self.conn()?.query_map(
            "SELECT c.domain_id, c.id, c.secret, c.status, d.status FROM clients c JOIN domains d ON d.id = c.domain_id
             WHERE c.id = ?1 LIMIT 16",
            &params![id],
            auth_row,
        )
    }

    /// Authentication by secret within a domain (HTTP `Authorization: Client <secret>`).
    pub fn client_by_secret(&self, domain: &str, secret: &str) -> Result<Option<ClientAuth>> {
        self.conn()?.query_opt(
            "SELECT c.domain_id, c.id, c.secret, c.status, d.status FROM clients c JOIN domains d ON d.id = c.domain_id
             WHERE c.domain_id = ?1 AND c.secret = ?2",
            &params![domain, secret],
            auth_row,
        )
    }

    /// May client `client` of `domain` publish (or subscribe) on `channel`? True only when
    /// the client, the channel and the domain are enabled and a connection of that type exists.
    pub fn can(&self, domain: &str, client: &str, channel: &str, t: ConnType) -> Result<bool> {
        self.conn()?.exists(
            "SELECT 1 FROM connections k
               JOIN clients c ON c.domain_id = k.domain_id AND c.id = k.client_id
               JOIN channels h ON h.id = k.channel_id AND h.domain_id = k.domain_id
               JOIN domains d ON d.id = k.domain_id
             WHERE k.domain_id = ?1 AND k.client_id = ?2 AND k.channel_id = ?3 AND k.type = ?4
               AND c.status = 'enabled' AND h.status = 'enabled' AND d.status = 'enabled'",
            &params![domain, client, channel, t.as_str()],
        )
    }
}

pub(crate) fn auth_row(r: &Row) -> Result<ClientAuth> {
    Ok(ClientAuth {
        domain_id: r.get(0)?,
        client_id: r.get(1)?,
        secret: r.get(2)?,
        client_status: status_from_sql(&r.get::<String>(3)?),
        domain_status: status_from_sql(&r.get::<String>(4)?),
    })
}
