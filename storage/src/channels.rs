//! Channels of a domain and the connections between clients and channels. Channel ids are
//! unique across the platform because they name MQTT topics (`channels/<id>/messages`),
//! which the broker routes without a domain.

use crate::clients::{connection_types, parse_types};
use crate::db::{params, Db, Row, ToValue, Tx};
use crate::entity::{self, record, shared_columns, OWN};
use crate::events::{Change, ConnType};
use crate::{conflict, EntityFilter, Filter, JsonText, Page, PageReq, Result, Status, Store, StoreError};

#[derive(Clone, Debug)]
pub struct Channel {
    pub id: String,
    pub domain_id: String,
    pub name: String,
    pub description: String,
    pub parent_group_id: Option<String>,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub status: Status,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub updated_by: Option<String>,
    /// Connection types of the client a list was filtered by, if any.
    pub conn_types: Vec<ConnType>,
}

pub struct NewChannel {
    pub id: String,
    pub name: String,
    pub description: String,
    pub parent_group_id: Option<String>,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub status: Status,
}

#[derive(Default)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<JsonText>,
    pub tags: Option<JsonText>,
    pub status: Option<Status>,
}

#[derive(Default)]
pub struct ChannelQuery {
    pub page: PageReq,
    pub filter: EntityFilter,
    /// Only channels this client is connected to (with connection types filled in).
    pub client: Option<String>,
}

const COLUMNS: &str = concat!(shared_columns!("h."), ", h.parent_group_id, h.description");

fn from_row(r: &Row) -> Result<Channel> {
    Ok(record!(
        r,
        Channel {
            parent_group_id: r.get(OWN)?,
            description: r.get(OWN + 1)?,
            conn_types: Vec::new(),
        }
    ))
}

fn get(c: &impl Db, domain: &str, id: &str) -> Result<Channel> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM channels h WHERE h.domain_id = ?1 AND h.id = ?2"),
        &params![domain, id],
        from_row,
    )?
    .ok_or(StoreError::not_found("channel"))
}

fn check_group(tx: &Tx<'_>, domain: &str, group: &Option<String>) -> Result<()> {
    if let Some(g) = group {
        if !tx.exists(
            "SELECT 1 FROM groups WHERE domain_id = ?1 AND id = ?2",
            &params![domain, g],
        )? {
            return Err(StoreError::Invalid("parent group not found in this domain".into()));
        }
    }
    Ok(())
}

/// The one answer to a channel id that cannot be used (malformed, or another domain's).
pub const INVALID_CHANNEL_ID: &str = "invalid channel id: give an unused UUID, or none to have one generated";

impl Store {
    pub fn create_channels(&self, domain: &str, new: &[NewChannel]) -> Result<Vec<Channel>> {
        self.write(|tx| {
            let now = crate::now_micros();
            for h in new {
                check_group(tx, domain, &h.parent_group_id)?;
                // Channel ids are global (they name MQTT topics). One taken by another domain
                // is answered like an invalid id, so the answer confirms nothing about it.
                let owner: Option<String> =
                    tx.query_opt("SELECT domain_id FROM channels WHERE id = ?1", &params![h.id], |r| {
                        r.get(0)
                    })?;
                if owner.is_some_and(|o| o != domain) {
                    return Err(StoreError::Invalid(INVALID_CHANNEL_ID.into()));
                }
                let own = [
                    ("parent_group_id", h.parent_group_id.to_value()),
                    ("description", h.description.to_value()),
                ];
                let shared = entity::Shared::new(&h.id, &h.name, &h.tags, &h.metadata, h.status);
                entity::insert(tx, "channels", domain, shared, &own, now)
                    .map_err(|e| conflict(e, "channel id already exists"))?;
            }
            new.iter().map(|h| get(tx, domain, &h.id)).collect()
        })
    }

    pub fn channel(&self, domain: &str, id: &str) -> Result<Channel> {
        get(&self.conn()?, domain, id)
    }

    /// A channel by id alone (ids are platform-unique); for routes that carry no domain.
    pub fn channel_any_domain(&self, id: &str) -> Result<Channel> {
        let c = self.conn()?;
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM channels h WHERE h.id = ?1"),
            &params![id],
            from_row,
        )?
        .ok_or(StoreError::not_found("channel"))
    }

    /// Updates a channel; a status change is announced (`ChannelEnabled`, `ChannelDisabled`).
    pub fn update_channel(&self, domain: &str, id: &str, p: ChannelPatch, by: &str) -> Result<Channel> {
        self.write_announcing(|tx, changes| {
            let (domain_id, channel_id) = (domain.to_string(), id.to_string());
            match p.status {
                Some(Status::Enabled) => changes.push(Change::ChannelEnabled { domain_id, channel_id }),
                Some(_) => changes.push(Change::ChannelDisabled { domain_id, channel_id }),
                None => {}
            }
            let n = tx.execute(
                "UPDATE channels SET name = COALESCE(?3, name), metadata = COALESCE(?4, metadata),
                    tags = COALESCE(?5, tags), status = COALESCE(?6, status), updated_at = ?7, updated_by = ?8,
                    description = COALESCE(?9, description)
                 WHERE domain_id = ?1 AND id = ?2",
                &params![
                    domain,
                    id,
                    p.name,
                    p.metadata.map(|m| m.0),
                    p.tags.map(|t| t.0),
                    p.status.map(Status::as_str),
                    crate::now_micros(),
                    by,
                    p.description
                ],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("channel"));
            }
            get(tx, domain, id)
        })
    }

    /// Deletes a channel and its connections in one transaction; returns the removed
    /// connections so callers can announce them.
    pub fn delete_channel(&self, domain: &str, id: &str) -> Result<()> {
        self.write_announcing(|tx, changes| {
            changes.push(Change::ChannelDeleted {
                domain_id: domain.into(),
                channel_id: id.into(),
            });
            tx.execute(
                "DELETE FROM connections WHERE domain_id = ?1 AND channel_id = ?2",
                &params![domain, id],
            )?;
            let n = tx.execute(
                "DELETE FROM channels WHERE domain_id = ?1 AND id = ?2",
                &params![domain, id],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("channel"));
            }
            Ok(())
        })
    }

    pub fn list_channels(&self, scope: impl Into<crate::Scope>, q: &ChannelQuery) -> Result<Page<Channel>> {
        let mut f = Filter::new(self.dialect());
        scope.into().filter(&mut f, "h.domain_id");
        q.filter.apply(&mut f, "h.");
        let types = connection_types(&mut f, "h.domain_id", ("channel_id", "h.id"), "client_id", &q.client);
        let c = self.conn()?;
        f.page(
            &c,
            "channels h",
            &format!("{COLUMNS}, {types}"),
            &q.page.sql(f.dialect(), "h.name", "h."),
            &q.page,
            |r| {
                let mut h = from_row(r)?;
                h.conn_types = parse_types(r.get(OWN + 2)?);
                Ok(h)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use crate::testutil::store;
    use crate::{NewClient, NewDomain};

    fn setup(s: &Store, d: &str) {
        if s.user("u").is_err() {
            crate::testutil::user(s, "u");
        }
        s.create_domain(
            NewDomain {
                id: d.into(),
                name: d.into(),
                route: d.into(),
                tags: JsonText::empty_array(),
                metadata: JsonText::empty_object(),
            },
            "u",
        )
        .expect("domain");
    }

    fn client(id: &str, secret: &str) -> NewClient {
        NewClient {
            id: id.into(),
            name: id.into(),
            identity: String::new(),
            secret: secret.into(),
            tags: JsonText::empty_array(),
            metadata: JsonText::empty_object(),
            status: Status::Enabled,
        }
    }

    fn channel(id: &str) -> NewChannel {
        NewChannel {
            description: String::new(),
            id: id.into(),
            name: id.into(),
            parent_group_id: None,
            tags: JsonText::empty_array(),
            metadata: JsonText::empty_object(),
            status: Status::Enabled,
        }
    }

    /// Every rights-affecting write announces its changes to the sink after it commits, and
    /// a write that fails announces nothing.
    #[test]
    fn rights_affecting_writes_announce_their_changes() {
        use crate::{CertRecord, ClientPatch, DomainPatch};
        use std::sync::{Arc, Mutex};
        let (_d, s) = store();
        setup(&s, "d1");
        s.create_clients("d1", &[client("c1", "s1"), client("c2", "s2")])
            .expect("c");
        s.create_channels("d1", &[channel("h1")]).expect("h");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        assert!(s.set_change_sink(move |c: &Change| sink.lock().expect("lock").push(c.clone())));
        assert!(!s.set_change_sink(|_: &Change| {}), "only one sink");
        let take = || std::mem::take(&mut *seen.lock().expect("lock"));
        let (d, c1, h1) = (String::from("d1"), String::from("c1"), String::from("h1"));
        let (cs, hs) = (vec![c1.clone()], vec![h1.clone()]);

        s.connect("d1", &cs, &hs, &[ConnType::Publish]).expect("connect");
        let connected = Change::Connected {
            domain_id: d.clone(),
            client_id: c1.clone(),
            channel_id: h1.clone(),
            conn_type: ConnType::Publish,
        };
        assert_eq!(take(), [connected]);
        s.connect("d1", &cs, &hs, &[ConnType::Publish]).expect("again");
        assert_eq!(take(), [], "nothing changed, nothing announced");
        assert!(s.connect("d1", &cs, &["nope".into()], &ConnType::BOTH).is_err());
        assert_eq!(take(), [], "a failed write announces nothing");
        s.disconnect("d1", &cs, &hs, &ConnType::BOTH).expect("disconnect");
        assert_eq!(
            take(),
            [Change::Disconnected {
                domain_id: d.clone(),
                client_id: c1.clone(),
                channel_id: h1.clone(),
                conn_type: ConnType::Publish
            }]
        );

        let status = |st| ClientPatch {
            status: Some(st),
            ..Default::default()
        };
        s.update_client("d1", "c1", status(Status::Disabled), "u")
            .expect("disable");
        s.update_client("d1", "c1", status(Status::Enabled), "u")
            .expect("enable");
        let secret = ClientPatch {
            secret: Some("new".into()),
            ..Default::default()
        };
        s.update_client("d1", "c1", secret, "u").expect("secret");
        let renamed = ClientPatch {
            name: Some("x".into()),
            ..Default::default()
        };
        s.update_client("d1", "c1", renamed, "u").expect("rename");
        let (dd, cc) = (d.clone(), c1.clone());
        assert_eq!(
            take(),
            [
                Change::ClientDisabled {
                    domain_id: dd.clone(),
                    client_id: cc.clone()
                },
                Change::ClientEnabled {
                    domain_id: dd.clone(),
                    client_id: cc.clone()
                },
                Change::ClientSecretChanged {
                    domain_id: dd,
                    client_id: cc
                },
            ]
        );

        let ch = |st| ChannelPatch {
            status: Some(st),
            ..Default::default()
        };
        s.update_channel("d1", "h1", ch(Status::Disabled), "u")
            .expect("disable");
        s.update_channel("d1", "h1", ch(Status::Enabled), "u").expect("enable");
        assert_eq!(
            take(),
            [
                Change::ChannelDisabled {
                    domain_id: d.clone(),
                    channel_id: h1.clone()
                },
                Change::ChannelEnabled {
                    domain_id: d.clone(),
                    channel_id: h1.clone()
                },
            ]
        );

        s.insert_cert(&CertRecord {
            serial: "ab01".into(),
            domain_id: d.clone(),
            client_id: "c2".into(),
            expire: i64::MAX / 2,
            revoked_at: None,
        })
        .expect("cert");
        s.insert_cert(&CertRecord {
            serial: "ab02".into(),
            domain_id: d.clone(),
            client_id: c1.clone(),
            expire: i64::MAX / 2,
            revoked_at: None,
        })
        .expect("cert");
        s.revoke_cert("d1", "ab01", 10).expect("revoke");
        let revoked = |client: &str, serial: &str| Change::CertRevoked {
            domain_id: "d1".into(),
            client_id: client.into(),
            serial: serial.into(),
        };
        assert_eq!(take(), [revoked("c2", "ab01")]);
        s.delete_client("d1", "c1").expect("delete");
        assert_eq!(
            take(),
            [
                Change::ClientDeleted {
                    domain_id: d.clone(),
                    client_id: c1.clone()
                },
                revoked("c1", "ab02"),
            ],
            "deleting a client announces the certificates it revoked"
        );
        s.delete_channel("d1", "h1").expect("delete");
        assert_eq!(
            take(),
            [Change::ChannelDeleted {
                domain_id: d.clone(),
                channel_id: h1
            }]
        );
        let dom = |st| DomainPatch {
            status: Some(st),
            ..Default::default()
        };
        s.update_domain("d1", dom(Status::Frozen), "u").expect("freeze");
        s.update_domain("d1", dom(Status::Disabled), "u").expect("disable");
        s.update_domain("d1", dom(Status::Enabled), "u").expect("enable");
        assert_eq!(
            take(),
            [
                Change::DomainFrozen { domain_id: d.clone() },
                Change::DomainDisabled { domain_id: d.clone() },
                Change::DomainEnabled { domain_id: d },
            ]
        );
        assert!(s.update_domain("nope", dom(Status::Disabled), "u").is_err());
        assert_eq!(take(), []);
    }

    #[test]
    fn authorization_follows_connections_and_statuses() {
        let (_d, s) = store();
        setup(&s, "d1");
        setup(&s, "d2");
        s.create_clients("d1", &[client("c1", "s1")]).expect("c");
        s.create_channels("d1", &[channel("h1")]).expect("h");
        s.create_channels("d2", &[channel("h2")]).expect("h");
        assert!(!s.can("d1", "c1", "h1", ConnType::Publish).expect("q"));
        let made = s
            .connect("d1", &["c1".into()], &["h1".into()], &[ConnType::Publish])
            .expect("connect");
        assert_eq!(made.len(), 1);
        assert!(s.can("d1", "c1", "h1", ConnType::Publish).expect("q"));
        assert!(!s.can("d1", "c1", "h1", ConnType::Subscribe).expect("q"));
        // Cross-domain: refused, nothing linked.
        assert!(matches!(
            s.connect("d1", &["c1".into()], &["h2".into()], &ConnType::BOTH),
            Err(StoreError::NotFound(what)) if what == "channel h2"
        ));
        s.update_channel(
            "d1",
            "h1",
            ChannelPatch {
                status: Some(Status::Disabled),
                ..Default::default()
            },
            "u",
        )
        .expect("disable");
        assert!(!s.can("d1", "c1", "h1", ConnType::Publish).expect("q"));
        s.update_channel(
            "d1",
            "h1",
            ChannelPatch {
                status: Some(Status::Enabled),
                ..Default::default()
            },
            "u",
        )
        .expect("enable");
        s.delete_client("d1", "c1").expect("delete");
        assert!(s.channel_connections("d1", "h1").expect("list").is_empty());
    }

    #[test]
    fn certificates_die_with_their_client_record() {
        let (_d, s) = store();
        setup(&s, "d1");
        s.create_clients("d1", &[client("dev", "s1")]).expect("c");
        let cert = |serial: &str| crate::CertRecord {
            serial: serial.into(),
            domain_id: "d1".into(),
            client_id: "dev".into(),
            expire: i64::MAX,
            revoked_at: None,
        };
        s.insert_cert(&cert("A")).expect("cert");
        s.insert_cert(&cert("B")).expect("cert");
        let (_, c) = s.cert_login("A").expect("q").expect("found");
        assert_eq!(c.map(|c| c.client_id), Some("dev".into()));
        // Deleting revokes both in the same transaction.
        let mut revoked = s.delete_client("d1", "dev").expect("delete");
        revoked.sort();
        assert_eq!(revoked, vec!["A".to_string(), "B".to_string()]);
        assert!(s.cert_login("A").expect("q").expect("found").0.revoked_at.is_some());
        // A certificate that escaped revocation (e.g. from before it existed) does not bind to
        // a client re-created under the same id.
        s.create_clients("d1", &[client("dev", "s2")]).expect("again");
        s.insert_cert(&cert("C")).expect("cert");
        s.conn()
            .expect("conn")
            .execute(
                "UPDATE certs SET client_created_at = client_created_at - 1 WHERE serial = 'C'",
                &[],
            )
            .expect("age");
        assert!(s.cert_login("C").expect("q").expect("found").1.is_none());
    }

    #[test]
    fn another_domains_channel_id_is_answered_as_invalid() {
        let (_d, s) = store();
        setup(&s, "d1");
        setup(&s, "d2");
        s.create_channels("d1", &[channel("h1")]).expect("h");
        assert!(matches!(
            s.create_channels("d2", &[channel("h1")]),
            Err(StoreError::Invalid(m)) if m == INVALID_CHANNEL_ID
        ));
        assert!(matches!(
            s.create_channels("d1", &[channel("h1")]),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn same_client_id_in_two_domains_and_duplicate_secrets() {
        let (_d, s) = store();
        setup(&s, "d1");
        setup(&s, "d2");
        s.create_clients("d1", &[client("dev", "s1")]).expect("c");
        s.create_clients("d2", &[client("dev", "s1")])
            .expect("same id and secret in another domain");
        assert!(matches!(
            s.create_clients("d1", &[client("dev", "s9")]),
            Err(StoreError::Conflict(_))
        ));
        assert!(
            matches!(s.create_clients("d1", &[client("other", "s1")]), Err(StoreError::Conflict(m)) if m.contains("secret"))
        );
        assert_eq!(s.clients_by_id("dev").expect("q").len(), 2);
        // Bulk is all-or-nothing.
        assert!(s.create_clients("d1", &[client("a", "sa"), client("b", "sa")]).is_err());
        assert!(s.client("d1", "a").is_err());
    }
}
