//! The change feed's vocabulary: changes that affect who may publish or subscribe.
//! The management layer announces them after its transaction commits; the broker and other
//! caches subscribe. Defined here so every layer shares one type without depending on each other.

/// A connection type: the right to publish or to subscribe on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnType {
    Publish,
    Subscribe,
}

impl ConnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnType::Publish => "publish",
            ConnType::Subscribe => "subscribe",
        }
    }
    /// Case-insensitive; also accepts Magistrala's action names.
    pub fn parse(s: &str) -> Option<ConnType> {
        match s.to_ascii_lowercase().as_str() {
            "publish" | "m_write" | "pub" => Some(ConnType::Publish),
            "subscribe" | "m_read" | "sub" => Some(ConnType::Subscribe),
            _ => None,
        }
    }
    pub const BOTH: [ConnType; 2] = [ConnType::Publish, ConnType::Subscribe];
}

/// A change, as announced and as written to the outbox (`{"kind": "client_enabled", …}`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    ClientEnabled {
        domain_id: String,
        client_id: String,
    },
    ClientDisabled {
        domain_id: String,
        client_id: String,
    },
    ClientDeleted {
        domain_id: String,
        client_id: String,
    },
    ClientSecretChanged {
        domain_id: String,
        client_id: String,
    },
    ChannelEnabled {
        domain_id: String,
        channel_id: String,
    },
    ChannelDisabled {
        domain_id: String,
        channel_id: String,
    },
    ChannelDeleted {
        domain_id: String,
        channel_id: String,
    },
    Connected {
        domain_id: String,
        client_id: String,
        channel_id: String,
        conn_type: ConnType,
    },
    Disconnected {
        domain_id: String,
        client_id: String,
        channel_id: String,
        conn_type: ConnType,
    },
    /// A client certificate was revoked: sessions that logged in with it must end.
    CertRevoked {
        domain_id: String,
        client_id: String,
        serial: String,
    },
    DomainEnabled {
        domain_id: String,
    },
    DomainDisabled {
        domain_id: String,
    },
    DomainFrozen {
        domain_id: String,
    },
    /// Cluster mode: a node claimed a device's session (its outbox number orders claims;
    /// the newest wins, older holders end their session). Recorded by
    /// [`crate::Store::claim_session`], never announced locally.
    SessionClaimed {
        key: String,
        node: String,
    },
    /// Cluster mode: a persistent session's state (its subscriptions) changed, it ended, or
    /// it moved to another node: every node reads it again for its index of the cluster's
    /// persistent subscriptions. Recorded by the session writes, never a revocation.
    SessionIndexed {
        key: String,
    },
}
