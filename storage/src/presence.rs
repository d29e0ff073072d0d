//! Device presence: the broker's session events (a connection joined or left a client's
//! session) kept per client, so the API, the CLI and the console can show who is online,
//! since when, from where and over what.

use crate::db::{params, Db};
use crate::{Result, Store};

/// One connection joining or leaving a client's MQTT session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceEvent {
    pub domain_id: String,
    pub client_id: String,
    pub mqtt_client_id: String,
    pub remote_addr: String,
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub protocol: String,
    /// Microseconds since the Unix epoch.
    pub at: i64,
    pub connected: bool,
}

/// A client's presence after a batch of events: online when a connection is live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceChange {
    pub domain_id: String,
    pub client_id: String,
    pub online: bool,
}

impl Store {
    /// Applies session events in order, in one transaction; returns each affected client's
    /// presence afterwards (clients deleted meanwhile are skipped).
    pub fn apply_presence(&self, events: &[PresenceEvent]) -> Result<Vec<PresenceChange>> {
        self.write(|tx| {
            let mut out: Vec<PresenceChange> = Vec::new();
            let mut at: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
            for e in events {
                let (d, c) = (&e.domain_id, &e.client_id);
                if e.connected {
                    tx.execute(
                        "INSERT INTO client_sessions (domain_id, client_id, mqtt_client_id, remote_addr, protocol, connected_at)
                         SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM clients WHERE domain_id = ?1 AND id = ?2)
                         ON CONFLICT (domain_id, client_id, mqtt_client_id) DO UPDATE SET remote_addr = excluded.remote_addr,
                           protocol = excluded.protocol, connected_at = excluded.connected_at",
                        &params![d, c, e.mqtt_client_id, e.remote_addr, e.protocol, e.at],
                    )?;
                    tx.execute(
                        "UPDATE clients SET connected_at = ?3, remote_addr = ?4, protocol = ?5 WHERE domain_id = ?1 AND id = ?2",
                        &params![d, c, e.at, e.remote_addr, e.protocol],
                    )?;
                } else {
                    tx.execute(
                        "DELETE FROM client_sessions WHERE domain_id = ?1 AND client_id = ?2 AND mqtt_client_id = ?3",
                        &params![d, c, e.mqtt_client_id],
                    )?;
                    tx.execute(
                        "UPDATE clients SET disconnected_at = ?3 WHERE domain_id = ?1 AND id = ?2
                         AND NOT EXISTS (SELECT 1 FROM client_sessions s WHERE s.domain_id = ?1 AND s.client_id = ?2)",
                        &params![d, c, e.at],
                    )?;
                }
                let (live, exists): (bool, bool) = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM client_sessions WHERE domain_id = ?1 AND client_id = ?2),
                            EXISTS (SELECT 1 FROM clients WHERE domain_id = ?1 AND id = ?2)",
                    &params![d, c],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if !exists {
                    continue;
                }
                // One change per client: its state after the batch.
                match at.get(&(d.clone(), c.clone())) {
                    Some(&i) => out[i].online = live,
                    None => {
                        at.insert((d.clone(), c.clone()), out.len());
                        out.push(PresenceChange {
                            domain_id: d.clone(),
                            client_id: c.clone(),
                            online: live,
                        });
                    }
                }
            }
            Ok(out)
        })
    }

    /// At start-up: connections recorded live belong to a previous run, which ended (perhaps
    /// by a crash) without recording their end; their clients are offline since `at`.
    pub fn reset_presence(&self, at: i64) -> Result<u64> {
        self.write(|tx| {
            let n = tx.execute("UPDATE clients SET disconnected_at = ?1
                 WHERE EXISTS (SELECT 1 FROM client_sessions s WHERE s.domain_id = clients.domain_id AND s.client_id = clients.id)", &params![at])?;
            tx.execute("DELETE FROM client_sessions", &[])?;
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;
    use crate::{ClientQuery, JsonText, NewClient, NewDomain, Status};

    fn event(c: &str, mqtt: &str, at: i64, connected: bool) -> PresenceEvent {
        PresenceEvent {
            domain_id: "d".into(),
            client_id: c.into(),
            mqtt_client_id: mqtt.into(),
            remote_addr: "127.0.0.1:5000".into(),
            protocol: "mqtt".into(),
            at,
            connected,
        }
    }

    fn online(s: &Store, connected: bool) -> Vec<String> {
        let q = ClientQuery {
            connected: Some(connected),
            ..Default::default()
        };
        s.list_clients("d", &q)
            .expect("list")
            .items
            .into_iter()
            .map(|c| c.id)
            .collect()
    }

    #[test]
    fn sessions_come_and_go_and_a_restart_leaves_everyone_offline() {
        let (_d, s) = store();
        crate::testutil::user(&s, "u");
        s.create_domain(
            NewDomain {
                id: "d".into(),
                name: "d".into(),
                route: "d".into(),
                tags: JsonText::empty_array(),
                metadata: JsonText::empty_object(),
            },
            "u",
        )
        .expect("domain");
        let client = |id: &str| NewClient {
            id: id.into(),
            name: id.into(),
            identity: String::new(),
            secret: format!("s-{id}"),
            tags: JsonText::empty_array(),
            metadata: JsonText::empty_object(),
            status: Status::Enabled,
        };
        s.create_clients("d", &[client("a"), client("b")]).expect("clients");
        let up = s
            .apply_presence(&[event("a", "m1", 10, true), event("a", "m2", 20, true)])
            .expect("up");
        assert_eq!(up.len(), 1, "one change per client");
        assert!(up[0].online);
        let a = s.client("d", "a").expect("a");
        assert_eq!(a.presence.connected_at, Some(20));
        assert!(a.presence.online());
        assert!(a.presence.sessions.0.contains("\"m1\"") && a.presence.sessions.0.contains("\"m2\""));
        assert_eq!(online(&s, true), vec!["a"]);
        assert_eq!(online(&s, false), vec!["b"]);
        // One of two connections ends: still online, no disconnect time yet.
        let ch = s.apply_presence(&[event("a", "m1", 30, false)]).expect("m1 left");
        assert!(ch[0].online);
        assert_eq!(s.client("d", "a").expect("a").presence.disconnected_at, None);
        let ch = s.apply_presence(&[event("a", "m2", 40, false)]).expect("m2 left");
        assert!(!ch[0].online);
        let a = s.client("d", "a").expect("a");
        assert_eq!((a.presence.disconnected_at, a.presence.online()), (Some(40), false));
        assert_eq!(a.presence.remote_addr.as_deref(), Some("127.0.0.1:5000"));
        // Events of a client that no longer exists change nothing.
        assert!(s
            .apply_presence(&[event("ghost", "g", 1, true)])
            .expect("ghost")
            .is_empty());
        // A crash left b online; the next start marks it offline since then.
        s.apply_presence(&[event("b", "m", 50, true)]).expect("b");
        assert_eq!(s.reset_presence(60).expect("reset"), 1);
        let b = s.client("d", "b").expect("b");
        assert_eq!((b.presence.online(), b.presence.disconnected_at), (false, Some(60)));
        assert!(online(&s, true).is_empty());
    }
}
