//! The broker's ports implemented over the store: MQTT login and channel rights, and the
//! translation of the store's change feed into broker revocations.

use broker::{
    Authorizer, BoxFuture, Identity, Login, PortError, Retained, RetainedOp, RetainedStore, Revocation, Rights,
    SessionOp, SessionStore, SessionsLoaded, StoredDelivery, StoredSession,
};
use std::sync::Arc;
use storage::{Change, ConnType, Store};

/// A store failure as the broker sees it: the registry could not answer.
fn unavailable(e: impl std::fmt::Display) -> PortError {
    PortError::Unavailable("store", e.to_string())
}

/// Runs a store call on the blocking pool; a task that could not finish is an outage too.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PortError> + Send + 'static,
) -> Result<T, PortError> {
    tokio::task::spawn_blocking(f).await.map_err(unavailable)?
}

/// Answers the broker's questions with one indexed query each, on the blocking pool. A store
/// that fails is reported as such (the broker answers "server unavailable"), never as "no".
pub struct StoreAuthorizer {
    pub store: Store,
}

impl Authorizer for StoreAuthorizer {
    fn login(&self, username: &str, password: &str) -> BoxFuture<Result<Login, PortError>> {
        let (store, user, pass) = (self.store.clone(), username.to_string(), password.to_string());
        Box::pin(blocking(move || {
            let candidates = store.clients_by_id(&user).map_err(unavailable)?;
            Ok(match mgmt::auth::match_device_secret(candidates, &pass) {
                None => Login::BadCredentials,
                Some(c) if !c.active() => Login::Disabled,
                Some(c) => Login::Ok(Identity {
                    domain_id: c.domain_id,
                    client_id: c.client_id,
                }),
            })
        }))
    }

    fn login_cert(&self, der: &[u8]) -> BoxFuture<(Result<Login, PortError>, Option<String>)> {
        let (store, serial) = (self.store.clone(), certs::serial_of(der));
        Box::pin(async move {
            let Some(serial) = serial else {
                return (Ok(Login::BadCredentials), None);
            };
            let s2 = serial.clone();
            let outcome = blocking(move || {
                let Some((rec, client)) = store.cert_login(&s2).map_err(unavailable)? else {
                    return Ok(Login::BadCredentials);
                };
                if rec.revoked_at.is_some() {
                    return Ok(Login::Disabled);
                }
                // The client record the certificate was issued for (not one re-created under
                // the same id).
                Ok(match client {
                    None => Login::BadCredentials,
                    Some(c) if !c.active() => Login::Disabled,
                    Some(c) => Login::Ok(Identity {
                        domain_id: c.domain_id,
                        client_id: c.client_id,
                    }),
                })
            })
            .await;
            (outcome, Some(serial))
        })
    }

    fn rights(&self, who: &Identity, channel_id: &str) -> BoxFuture<Result<Rights, PortError>> {
        let (store, who, channel) = (self.store.clone(), who.clone(), channel_id.to_string());
        Box::pin(blocking(move || {
            let can = |t| {
                store
                    .can(&who.domain_id, &who.client_id, &channel, t)
                    .map_err(unavailable)
            };
            Ok(Rights {
                publish: can(ConnType::Publish)?,
                subscribe: can(ConnType::Subscribe)?,
            })
        }))
    }
}

/// Persistent MQTT sessions and their queues in the store.
pub struct StoreSessions {
    pub store: Store,
}

/// The broker's view of what the store holds for persistent sessions.
fn loaded(snap: storage::SessionSnapshot) -> SessionsLoaded {
    SessionsLoaded {
        sessions: snap
            .sessions
            .into_iter()
            .map(|s| StoredSession {
                key: s.key,
                owner: s.owner.map(|(domain_id, client_id)| Identity { domain_id, client_id }),
                expiry_s: s.expiry_s,
                disconnected_at_ms: s.disconnected_at_ms,
                state: s.state.into(),
                inbound: s.inbound.into(),
            })
            .collect(),
        queued: snap.queued.into_iter().map(delivery).collect(),
        max_msg: snap.max_msg,
        dropped: snap.dropped,
    }
}

fn delivery(q: storage::QueuedRow) -> StoredDelivery {
    StoredDelivery {
        session: q.session,
        msg: q.msg,
        meta: q.meta.into(),
        state: q.state,
        pkid: q.pkid,
        body: q.body.into(),
    }
}

impl SessionStore for StoreSessions {
    fn load(&self) -> Result<SessionsLoaded, PortError> {
        Ok(loaded(self.store.sessions_load().map_err(unavailable)?))
    }

    fn adopt(&self, key: &str) -> Result<Option<SessionsLoaded>, PortError> {
        Ok(self.store.session_adopt(key).map_err(unavailable)?.map(loaded))
    }

    fn queued(&self, key: &str) -> Result<Vec<StoredDelivery>, PortError> {
        let rows = self.store.session_queued(key).map_err(unavailable)?;
        Ok(rows.into_iter().map(delivery).collect())
    }

    fn apply(&self, ops: &[SessionOp]) -> Result<(), PortError> {
        use storage::{SessionRow, SessionWrite};
        let writes: Vec<SessionWrite> = ops
            .iter()
            .map(|op| match op {
                SessionOp::Put(s) => SessionWrite::Put(SessionRow {
                    key: s.key.clone(),
                    owner: s.owner.as_ref().map(|i| (i.domain_id.clone(), i.client_id.clone())),
                    expiry_s: s.expiry_s,
                    disconnected_at_ms: s.disconnected_at_ms,
                    state: s.state.to_vec(),
                    inbound: s.inbound.to_vec(),
                }),
                SessionOp::Inbound { key, inbound } => SessionWrite::Inbound {
                    key: key.clone(),
                    inbound: inbound.to_vec(),
                },
                SessionOp::Delete(k) => SessionWrite::Delete(k.clone()),
                SessionOp::Message { id, body, targets } => SessionWrite::Message {
                    id: *id,
                    body: body.to_vec(),
                    targets: targets.iter().map(|(k, m)| (k.clone(), m.to_vec())).collect(),
                },
                SessionOp::Mark { key, msg, state, pkid } => SessionWrite::Mark {
                    key: key.clone(),
                    msg: *msg,
                    state: *state,
                    pkid: *pkid,
                },
                SessionOp::Ack { key, msg } => SessionWrite::Ack {
                    key: key.clone(),
                    msg: *msg,
                },
            })
            .collect();
        self.store.sessions_apply(&writes).map_err(unavailable)
    }
}

/// Retained MQTT messages in the store.
pub struct StoreRetained {
    pub store: Store,
}

impl RetainedStore for StoreRetained {
    fn load(&self) -> Result<Vec<Retained>, PortError> {
        let rows = self.store.retained_all().map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|r| Retained {
                topic: r.topic,
                payload: r.payload.into(),
                qos: r.qos,
                props: r.props.into(),
                expires_at_ms: r.expires_at_ms,
            })
            .collect())
    }

    /// One attempt per batch: a store that cannot take it is reported at once, and the
    /// broker refuses what it could not keep (a QoS 1/2 publisher is told) instead of
    /// retrying for seconds and dropping it silently.
    fn apply(&self, ops: &[RetainedOp]) -> Result<(), PortError> {
        let rows: Vec<(String, Option<storage::RetainedRow>)> = ops
            .iter()
            .map(|op| match op {
                RetainedOp::Put(r) => (
                    r.topic.clone(),
                    Some(storage::RetainedRow {
                        topic: r.topic.clone(),
                        payload: r.payload.to_vec(),
                        qos: r.qos,
                        props: r.props.to_vec(),
                        expires_at_ms: r.expires_at_ms,
                    }),
                ),
                RetainedOp::Delete(t) => (t.clone(), None),
            })
            .collect();
        self.store.retained_apply(&rows).map_err(unavailable)
    }
}

/// What a change means for live MQTT sessions (`None`: nothing).
pub fn revocation(c: Change) -> Option<Revocation> {
    Some(match c {
        Change::ClientDisabled { domain_id, client_id }
        | Change::ClientDeleted { domain_id, client_id }
        | Change::ClientSecretChanged { domain_id, client_id } => Revocation::Client { domain_id, client_id },
        Change::DomainDisabled { domain_id } | Change::DomainFrozen { domain_id } => Revocation::Domain { domain_id },
        Change::Connected {
            domain_id,
            client_id,
            channel_id,
            ..
        }
        | Change::Disconnected {
            domain_id,
            client_id,
            channel_id,
            ..
        } => Revocation::Rights {
            domain_id,
            client_id: Some(client_id),
            channel_id: Some(channel_id),
        },
        Change::ChannelEnabled { domain_id, channel_id }
        | Change::ChannelDisabled { domain_id, channel_id }
        | Change::ChannelDeleted { domain_id, channel_id } => Revocation::Rights {
            domain_id,
            client_id: None,
            channel_id: Some(channel_id),
        },
        Change::DomainEnabled { domain_id } => Revocation::Rights {
            domain_id,
            client_id: None,
            channel_id: None,
        },
        Change::CertRevoked { serial, .. } => Revocation::Cert { serial },
        Change::ClientEnabled { .. } | Change::SessionClaimed { .. } | Change::SessionIndexed { .. } => return None,
    })
}

/// Feeds the change feed into the broker until the feed closes.
pub async fn follow_changes(mut rx: tokio::sync::broadcast::Receiver<Change>, broker: Arc<broker::BrokerHandle>) {
    loop {
        match rx.recv().await {
            Ok(c) => {
                if let Some(r) = revocation(c) {
                    broker.revoke(r);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Some changes were missed: every session forgets its cached rights and asks
                // the store again, which reflects every change.
                tracing::warn!(missed = n, "change feed lagged; invalidating all cached MQTT rights");
                broker.revoke(Revocation::Everything);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
