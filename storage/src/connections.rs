//! Connections between clients and channels: who may publish or subscribe where. Every
//! connection links a client and a channel of the same domain.

use crate::db::{params, Db, Tx, Value};
use crate::events::{Change, ConnType};
use crate::{Result, Store, StoreError};

/// Every client and channel id must belong to `domain` (`NotFound` naming the first that does
/// not), so a connection can never link two tenants.
fn all_in_domain(tx: &Tx<'_>, domain: &str, clients: &[String], channels: &[String]) -> Result<()> {
    for (table, what, ids) in [("clients", "client", clients), ("channels", "channel", channels)] {
        let sql = format!("SELECT 1 FROM {table} WHERE domain_id = ?1 AND id = ?2");
        for id in ids {
            if !tx.exists(&sql, &params![domain, id])? {
                return Err(StoreError::not_found(format!("{what} {id}")));
            }
        }
    }
    Ok(())
}

impl Store {
    /// Connects every client to every channel with every type, all or nothing. An id not in
    /// `domain` is `NotFound` (never a cross-tenant link). Returns the connections created
    /// (existing ones are left as they are).
    pub fn connect(
        &self,
        domain: &str,
        clients: &[String],
        channels: &[String],
        types: &[ConnType],
    ) -> Result<Vec<(String, String, ConnType)>> {
        let now = crate::now_micros();
        self.change_connections(
            (domain, clients, channels, types),
            "INSERT INTO connections (domain_id, client_id, channel_id, type, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT DO NOTHING",
            |c, h, t| params![domain, c, h, t.as_str(), now].to_vec(),
            |domain_id, client_id, channel_id, conn_type| Change::Connected {
                domain_id,
                client_id,
                channel_id,
                conn_type,
            },
        )
    }

    /// Removes connections; returns those that existed. Unknown ids are `NotFound`.
    pub fn disconnect(
        &self,
        domain: &str,
        clients: &[String],
        channels: &[String],
        types: &[ConnType],
    ) -> Result<Vec<(String, String, ConnType)>> {
        self.change_connections(
            (domain, clients, channels, types),
            "DELETE FROM connections WHERE domain_id = ?1 AND client_id = ?2 AND channel_id = ?3 AND type = ?4",
            |c, h, t| params![domain, c, h, t.as_str()].to_vec(),
            |domain_id, client_id, channel_id, conn_type| Change::Disconnected {
                domain_id,
                client_id,
                channel_id,
                conn_type,
            },
        )
    }

    /// Runs `sql` (with `params`) for every (client, channel, type) of `domain`, all or
    /// nothing, after checking every id belongs to it; announces each one that changed a row.
    fn change_connections(
        &self,
        (domain, clients, channels, types): (&str, &[String], &[String], &[ConnType]),
        sql: &str,
        params: impl Fn(&str, &str, ConnType) -> Vec<Value>,
        announce: impl Fn(String, String, String, ConnType) -> Change,
    ) -> Result<Vec<(String, String, ConnType)>> {
        self.write_announcing(|tx, changes| {
            all_in_domain(tx, domain, clients, channels)?;
            let changed = each_connection(clients, channels, types, |c, h, t| tx.execute(sql, &params(c, h, t)))?;
            changes.extend(
                changed
                    .iter()
                    .map(|(c, h, t)| announce(domain.into(), c.clone(), h.clone(), *t)),
            );
            Ok(changed)
        })
    }

    /// Connections of one client, as (channel id, type).
    pub fn client_connections(&self, domain: &str, client: &str) -> Result<Vec<(String, ConnType)>> {
        self.connections_of(domain, "client_id", "channel_id", client)
    }

    /// Connections of one channel, as (client id, type).
    pub fn channel_connections(&self, domain: &str, channel: &str) -> Result<Vec<(String, ConnType)>> {
        self.connections_of(domain, "channel_id", "client_id", channel)
    }

    /// The connections whose `side` column is `id`, as (`other` column, type).
    fn connections_of(&self, domain: &str, side: &str, other: &str, id: &str) -> Result<Vec<(String, ConnType)>> {
        self.conn()?.query_map(
            &format!(
                "SELECT {other}, type FROM connections WHERE domain_id = ?1 AND {side} = ?2 ORDER BY {other}, type"
            ),
            &params![domain, id],
            |r| Ok((r.get::<String>(0)?, r.parsed(1, ConnType::parse)?)),
        )
    }
}

/// Runs `write` for every (client, channel, type); returns those it changed a row for.
fn each_connection(
    clients: &[String],
    channels: &[String],
    types: &[ConnType],
    mut write: impl FnMut(&str, &str, ConnType) -> Result<usize>,
) -> Result<Vec<(String, String, ConnType)>> {
    let mut changed = Vec::new();
    for c in clients {
        for h in channels {
            for t in types {
                if write(c, h, *t)? > 0 {
                    changed.push((c.clone(), h.clone(), *t));
                }
            }
        }
    }
    Ok(changed)
}
