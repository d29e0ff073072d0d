//! Live sessions by registry client, so revocations reach them at once.

use crate::Identity;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// A change from the store's change feed, as the broker needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The client was disabled, deleted or given a new secret: close its sessions.
    Client { domain_id: String, client_id: String },
    /// The domain was disabled or frozen: close every session in it.
    Domain { domain_id: String },
    /// Rights may have changed: forget cached rights of the matching sessions (`None`
    /// matches any client or channel); they are looked up again on next use.
    Rights {
        domain_id: String,
        client_id: Option<String>,
        channel_id: Option<String>,
    },
    /// A client certificate was revoked: close the sessions that logged in with it.
    Cert { serial: String },
    /// Some changes may have been missed: every session forgets all cached rights.
    Everything,
}

/// A message from the registry to one session.
#[derive(Debug)]
pub(crate) enum Control {
    /// Close the session; v5 clients get DISCONNECT with this reason.
    Close(u8),
    /// Forget cached rights (of one channel, or all).
    Invalidate(Option<String>),
}

struct Entry {
    id: u64,
    serial: Option<String>,
    tx: mpsc::UnboundedSender<Control>,
}

type Sessions = HashMap<String, Vec<Entry>>;

#[derive(Default)]
pub(crate) struct Registry {
    by_domain: Mutex<HashMap<String, Sessions>>,
    next: AtomicU64,
}

impl Registry {
    pub fn register(&self, who: &Identity, serial: Option<String>) -> (u64, mpsc::UnboundedReceiver<Control>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut m) = self.by_domain.lock() {
            m.entry(who.domain_id.clone())
                .or_default()
                .entry(who.client_id.clone())
                .or_default()
                .push(Entry { id, serial, tx });
        }
        (id, rx)
    }

    pub fn unregister(&self, who: &Identity, id: u64) {
        if let Ok(mut m) = self.by_domain.lock() {
            if let Some(d) = m.get_mut(&who.domain_id) {
                if let Some(v) = d.get_mut(&who.client_id) {
                    v.retain(|e| e.id != id);
                    if v.is_empty() {
                        d.remove(&who.client_id);
                    }
                }
                if d.is_empty() {
                    m.remove(&who.domain_id);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_domain
            .lock()
            .map(|m| m.values().flat_map(|d| d.values()).map(Vec::len).sum())
            .unwrap_or(0)
    }

    pub fn apply(&self, r: Revocation) {
        let Ok(m) = self.by_domain.lock() else { return };
        let send = |v: &Vec<Entry>, c: &dyn Fn() -> Control| {
            for e in v {
                let _ = e.tx.send(c());
            }
        };
        // 0x98: Administrative action.
        match r {
            Revocation::Client { domain_id, client_id } => {
                if let Some(v) = m.get(&domain_id).and_then(|d| d.get(&client_id)) {
                    tracing::info!(domain = %domain_id, client = %client_id, sessions = v.len(), "closing sessions of revoked client");
                    send(v, &|| Control::Close(0x98));
                }
            }
            Revocation::Domain { domain_id } => {
                if let Some(d) = m.get(&domain_id) {
                    tracing::info!(domain = %domain_id, "closing sessions of disabled domain");
                    for v in d.values() {
                        send(v, &|| Control::Close(0x98));
                    }
                }
            }
            Revocation::Cert { serial } => {
                for e in m.values().flat_map(|d| d.values()).flatten() {
                    if e.serial.as_deref() == Some(serial.as_str()) {
                        tracing::info!(serial = %serial, "closing a session of a revoked certificate");
                        let _ = e.tx.send(Control::Close(0x98));
                    }
                }
            }
            Revocation::Everything => {
                for v in m.values().flat_map(|d| d.values()) {
                    send(v, &|| Control::Invalidate(None));
                }
            }
            Revocation::Rights {
                domain_id,
                client_id,
                channel_id,
            } => {
                if let Some(d) = m.get(&domain_id) {
                    for (c, v) in d {
                        if client_id.as_ref().is_none_or(|x| x == c) {
                            send(v, &|| Control::Invalidate(channel_id.clone()));
                        }
                    }
                }
            }
        }
    }
}
