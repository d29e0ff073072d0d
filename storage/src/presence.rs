//! Device presence: the broker's session events (a connection joined or left a client's
//! session) kept per client, so the API, the CLI and the console can show who is online,
//! since when, from where and over what.
//!
//! In a cluster a connection's row names the node that holds it ([`Store::node`]): a node
//! ends only its own rows, so a late disconnect from a node whose session was taken over
//! never removes the new node's row, and a node's rows can be cleared when it stops.

use crate::db::{params, Db};
use crate::{Result, Store};
use std::collections::{HashMap, HashSet};

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
    /// Cluster mode: the connection's claim on its session (a newer claim's row is never
    /// replaced or ended by an older one's event); 0 outside a cluster.
    pub claim: i64,
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
    ///
    /// The events of one client are folded in memory over its live connections as stored:
    /// each connection's last event decides whether its row stays, the last connect gives the
    /// client's `connected_at`, address and transport, and the last disconnect that left no
    /// connection gives `disconnected_at`. The result is what applying the events one by one
    /// would leave, in a few statements per client instead of several per event (a churn of
    /// short connections would otherwise outpace the writer).
    pub fn apply_presence(&self, events: &[PresenceEvent]) -> Result<Vec<PresenceChange>> {
        let node = self.node();
        let mut clients: Vec<(&str, &str)> = Vec::new();
        let mut of: HashMap<(&str, &str), Vec<&PresenceEvent>> = HashMap::new();
        for e in events {
            let key = (e.domain_id.as_str(), e.client_id.as_str());
            of.entry(key).or_insert_with(|| {
                clients.push(key);
                Vec::new()
            });
            if let Some(v) = of.get_mut(&key) {
                v.push(e);
            }
        }
        self.write(|tx| {
            let mut out = Vec::with_capacity(clients.len());
            for (d, c) in clients {
                if !tx.exists("SELECT 1 FROM clients WHERE domain_id = ?1 AND id = ?2", &params![d, c])? {
                    continue;
                }
                let stored: HashSet<String> = tx
                    .query_map(
                        "SELECT mqtt_client_id FROM client_sessions WHERE domain_id = ?1 AND client_id = ?2",
                        &params![d, c],
                        |r| r.get(0),
                    )?
                    .into_iter()
                    .collect();
                let folded = fold(&stored, of.get(&(d, c)).map(Vec::as_slice).unwrap_or_default());
                for (k, last) in &folded.last {
                    if last.connected {
                        tx.execute(
                            "INSERT INTO client_sessions (domain_id, client_id, mqtt_client_id, remote_addr, protocol, connected_at, node_id, claim)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                             ON CONFLICT (domain_id, client_id, mqtt_client_id) DO UPDATE SET remote_addr = excluded.remote_addr,
                               protocol = excluded.protocol, connected_at = excluded.connected_at, node_id = excluded.node_id,
                               claim = excluded.claim
                             WHERE client_sessions.claim <= excluded.claim",
                            &params![d, c, k, last.remote_addr, last.protocol, last.at, node, last.claim],
                        )?;
                    } else if stored.contains(*k) {
                        tx.execute(
                            "DELETE FROM client_sessions WHERE domain_id = ?1 AND client_id = ?2 AND mqtt_client_id = ?3
                               AND node_id = ?4 AND claim <= ?5",
                            &params![d, c, k, node, last.claim],
                        )?;
                    }
                }
                let connect = folded.last_connect;
                tx.execute(
                    "UPDATE clients SET connected_at = COALESCE(?3, connected_at), remote_addr = COALESCE(?4, remote_addr),
                       protocol = COALESCE(?5, protocol), disconnected_at = COALESCE(?6, disconnected_at)
                     WHERE domain_id = ?1 AND id = ?2",
                    &params![
                        d,
                        c,
                        connect.map(|e| e.at),
                        connect.map(|e| e.remote_addr.as_str()),
                        connect.map(|e| e.protocol.as_str()),
                        folded.disconnected_at
                    ],
                )?;
                // Another node may hold a connection this one saw end (a takeover).
                let online = folded.online
                    || (!node.is_empty()
                        && tx.exists(
                            "SELECT 1 FROM client_sessions WHERE domain_id = ?1 AND client_id = ?2",
                            &params![d, c],
                        )?);
                out.push(PresenceChange {
                    domain_id: d.to_string(),
                    client_id: c.to_string(),
                    online,
                });
            }
            Ok(out)
        })
    }

    /// At start-up: connections this node recorded live belong to a previous run, which
    /// ended (perhaps by a crash) without recording their end; their clients are offline
    /// since `at` (unless connected on another node).
    pub fn reset_presence(&self, at: i64) -> Result<u64> {
        self.reset_presence_of(self.node(), at)
    }

    /// Ends every connection `node` recorded (that node stopped or died); returns the
    /// clients that went offline.
    pub fn reset_presence_of(&self, node: &str, at: i64) -> Result<u64> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE clients SET disconnected_at = ?1
                 WHERE EXISTS (SELECT 1 FROM client_sessions s WHERE s.domain_id = clients.domain_id AND s.client_id = clients.id AND s.node_id = ?2)
                   AND NOT EXISTS (SELECT 1 FROM client_sessions s WHERE s.domain_id = clients.domain_id AND s.client_id = clients.id AND s.node_id <> ?2)",
                &params![at, node],
            )?;
            tx.execute("DELETE FROM client_sessions WHERE node_id = ?1", &params![node])?;
            Ok(n as u64)
        })
    }
}

/// One client's events folded over its stored live connections.
struct Folded<'e> {
    /// Each connection's last event, in the order the connections first appear.
    last: Vec<(&'e str, &'e PresenceEvent)>,
    last_connect: Option<&'e PresenceEvent>,
    /// The time of the last disconnect that left the client with no connection.
    disconnected_at: Option<i64>,
    online: bool,
}

fn fold<'e>(stored: &HashSet<String>, events: &[&'e PresenceEvent]) -> Folded<'e> {
    let mut live: HashSet<&str> = stored.iter().map(String::as_str).collect();
    let mut last: Vec<(&str, &PresenceEvent)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let (mut last_connect, mut disconnected_at) = (None, None);
    for e in events {
        let k = e.mqtt_client_id.as_str();
        match index.get(k) {
            Some(&i) => last[i].1 = e,
            None => {
                index.insert(k, last.len());
                last.push((k, e));
            }
        }
        if e.connected {
            live.insert(k);
            last_connect = Some(*e);
        } else {
            live.remove(k);
            if live.is_empty() {
                disconnected_at = Some(e.at);
            }
        }
    }
    Folded {
        last,
        last_connect,
        disconnected_at,
        online: !live.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;
    use crate::{ClientQuery, JsonText, NewClient, Status};

    fn event(c: &str, mqtt: &str, at: i64, connected: bool) -> PresenceEvent {
        PresenceEvent {
            domain_id: "d".into(),
            client_id: c.into(),
            mqtt_client_id: mqtt.into(),
            remote_addr: "127.0.0.1:5000".into(),
            protocol: "mqtt".into(),
            at,
            connected,
            claim: 0,
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
        domain_with(&s, &["a", "b"]);
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

    fn domain_with(s: &Store, ids: &[&str]) {
        crate::testutil::user(s, "u");
        crate::testutil::domain(s, "d", "u");
        let clients: Vec<NewClient> = ids
            .iter()
            .map(|id| NewClient {
                id: id.to_string(),
                name: id.to_string(),
                identity: String::new(),
                secret: format!("s-{id}"),
                tags: JsonText::empty_array(),
                metadata: JsonText::empty_object(),
                status: Status::Enabled,
            })
            .collect();
        s.create_clients("d", &clients).expect("clients");
    }

    /// A batch folded per client leaves exactly what the events applied one by one leave:
    /// sessions, connect and disconnect times, address and transport, and the answers.
    #[test]
    fn a_folded_batch_equals_the_events_one_by_one() {
        let mut events = vec![event("a", "old", 1, true)];
        for (i, (c, m, up)) in [
            ("a", "m1", true),
            ("b", "x", true),
            ("a", "m1", false),
            ("a", "old", false),
            ("a", "m2", true),
            ("b", "x", false),
            ("a", "m3", true),
            ("a", "m2", false),
            ("b", "y", true),
            ("b", "y", false),
            ("a", "m1", true),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = event(c, m, 10 + i as i64, up);
            e.remote_addr = format!("10.0.0.{i}:1");
            e.protocol = if i % 2 == 0 { "ws".into() } else { "mqtt".into() };
            events.push(e);
        }
        let (_d1, batch) = store();
        let (_d2, single) = store();
        for s in [&batch, &single] {
            domain_with(s, &["a", "b"]);
        }
        // The first event is stored before the batch (a connection live from earlier).
        batch.apply_presence(&events[..1]).expect("before");
        let folded = batch.apply_presence(&events[1..]).expect("batch");
        let mut last = Vec::new();
        for e in &events {
            last = single.apply_presence(std::slice::from_ref(e)).expect("one");
        }
        let online = |v: &[PresenceChange], c: &str| v.iter().find(|p| p.client_id == c).map(|p| p.online);
        assert_eq!(online(&folded, "a"), Some(true));
        assert_eq!(online(&folded, "b"), Some(false));
        assert_eq!(online(&last, "a"), Some(true), "the last single event was a's");
        for id in ["a", "b"] {
            let (x, y) = (batch.client("d", id).expect("x"), single.client("d", id).expect("y"));
            let sessions = |c: &crate::Client| {
                let mut v: Vec<String> = c.presence.sessions.0.split('}').map(|s| s.replace(' ', "")).collect();
                v.sort();
                v
            };
            assert_eq!(
                (
                    x.presence.connected_at,
                    x.presence.disconnected_at,
                    &x.presence.remote_addr,
                    &x.presence.protocol
                ),
                (
                    y.presence.connected_at,
                    y.presence.disconnected_at,
                    &y.presence.remote_addr,
                    &y.presence.protocol
                ),
                "{id}"
            );
            assert_eq!(sessions(&x), sessions(&y), "{id}");
        }
        let a = batch.client("d", "a").expect("a");
        assert_eq!(a.presence.connected_at, Some(20), "the last connect");
        assert_eq!(
            a.presence.disconnected_at,
            Some(13),
            "old left last at 13: a was offline then"
        );
        assert_eq!(batch.client("d", "b").expect("b").presence.disconnected_at, Some(19));
    }
}
