//! Every MQTT reason code and CONNECT refusal the broker sends is chosen here, and nowhere
//! else: the v5 reason codes (`code`), the mapping of each v5 code to what a 3.1.1 client can
//! be told (`Refusal`, for CONNACK), and the reasons sessions end for. Other modules name a
//! constant from this table; none writes a bare number.

/// MQTT 5 reason codes (the subset the broker sends).
pub(crate) mod code {
    pub const SUCCESS: u8 = 0x00;
    /// DISCONNECT from the client: publish my will.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const UNSUPPORTED_PROTOCOL: u8 = 0x84;
    pub const BAD_CLIENT_ID: u8 = 0x85;
    pub const BAD_CREDENTIALS: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
}

/// 3.1.1 CONNACK return codes.
mod v4 {
    pub const UNACCEPTABLE_PROTOCOL: u8 = 0x01;
    pub const IDENTIFIER_REJECTED: u8 = 0x02;
    pub const SERVER_UNAVAILABLE: u8 = 0x03;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
    pub const NOT_AUTHORIZED: u8 = 0x05;
}

/// A CONNECT refusal: CONNACK code for 3.1.1 and for 5, and why (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub v4: u8,
    pub v5: u8,
    pub why: &'static str,
    /// Short reason label for the metrics.
    pub label: &'static str,
}

impl Refusal {
    /// The CONNACK code for a client at this protocol level.
    pub fn code(&self, v5: bool) -> u8 {
        if v5 {
            self.v5
        } else {
            self.v4
        }
    }
}

const fn refusal(v4: u8, v5: u8, why: &'static str, label: &'static str) -> Refusal {
    Refusal { v4, v5, why, label }
}

/// The table of CONNECT refusals: one line each.
pub(crate) const UNSUPPORTED_PROTOCOL: Refusal = refusal(
    v4::UNACCEPTABLE_PROTOCOL,
    code::UNSUPPORTED_PROTOCOL,
    "unsupported protocol level",
    "unsupported_protocol",
);
pub(crate) const MALFORMED: Refusal = refusal(
    v4::IDENTIFIER_REJECTED,
    code::MALFORMED,
    "malformed CONNECT",
    "malformed",
);
pub(crate) const BAD_CLIENT_ID: Refusal = refusal(
    v4::IDENTIFIER_REJECTED,
    code::BAD_CLIENT_ID,
    "empty client id without clean session",
    "bad_client_id",
);
pub(crate) const BAD_CREDENTIALS: Refusal = refusal(
    v4::BAD_USERNAME_OR_PASSWORD,
    code::BAD_CREDENTIALS,
    "bad credentials",
    "bad_credentials",
);
pub(crate) const UNKNOWN_CERT: Refusal = refusal(
    v4::BAD_USERNAME_OR_PASSWORD,
    code::BAD_CREDENTIALS,
    "unknown certificate",
    "unknown_cert",
);
pub(crate) const CERT_MISMATCH: Refusal = refusal(
    v4::BAD_USERNAME_OR_PASSWORD,
    code::BAD_CREDENTIALS,
    "username does not match the certificate",
    "cert_mismatch",
);
pub(crate) const DISABLED: Refusal = refusal(
    v4::NOT_AUTHORIZED,
    code::NOT_AUTHORIZED,
    "client or domain disabled, or certificate revoked",
    "disabled",
);
pub(crate) const NO_CREDENTIALS: Refusal = refusal(
    v4::NOT_AUTHORIZED,
    code::NOT_AUTHORIZED,
    "credentials required",
    "no_credentials",
);
pub(crate) const WILL_NOT_ALLOWED: Refusal = refusal(
    v4::NOT_AUTHORIZED,
    code::NOT_AUTHORIZED,
    "will topic not allowed",
    "will_not_allowed",
);
pub(crate) const UNAVAILABLE: Refusal = refusal(
    v4::SERVER_UNAVAILABLE,
    code::SERVER_UNAVAILABLE,
    "server unavailable",
    "unavailable",
);
/// The registry (store) could not answer: the device is told to come back, not that its
/// credentials are wrong.
pub(crate) const STORE_UNAVAILABLE: Refusal = refusal(
    v4::SERVER_UNAVAILABLE,
    code::SERVER_UNAVAILABLE,
    "the registry is unavailable",
    "store_unavailable",
);
/// Cluster mode: this node cannot confirm it is current with the cluster's revocations.
pub(crate) const NOT_CURRENT: Refusal = refusal(
    v4::SERVER_UNAVAILABLE,
    code::SERVER_UNAVAILABLE,
    "this node cannot confirm it is current with the cluster",
    "cluster_not_current",
);
pub(crate) const KEEP_ALIVE_TOO_LONG: Refusal = refusal(
    v4::IDENTIFIER_REJECTED,
    code::PROTOCOL_ERROR,
    "keep alive above mqtt.max_keep_alive (3.1.1 cannot be told a shorter one)",
    "keep_alive_too_long",
);
pub(crate) const QUOTA: Refusal = refusal(
    v4::SERVER_UNAVAILABLE,
    code::QUOTA_EXCEEDED,
    "persistent session limit reached",
    "quota",
);

/// Why the broker ends a session, as the v5 DISCONNECT reason it sends (3.1.1 connections
/// are closed without a packet).
pub(crate) mod ended {
    use super::code;
    /// The client, its domain or its certificate was revoked.
    pub const REVOKED: u8 = code::ADMINISTRATIVE_ACTION;
    /// The client's oldest offline persistent session made room for a new one.
    pub const SESSION_LIMIT: u8 = code::QUOTA_EXCEEDED;
    /// A clean session's outbound queue overflowed.
    pub const TOO_SLOW: u8 = code::QUOTA_EXCEEDED;
    pub const TAKEN_OVER: u8 = code::SESSION_TAKEN_OVER;
    pub const SHUTTING_DOWN: u8 = code::SERVER_SHUTTING_DOWN;
    pub const KEEP_ALIVE: u8 = code::KEEP_ALIVE_TIMEOUT;
}

/// What a refused PUBLISH gets: the v5 reason code for its PUBACK/PUBREC, or for the
/// DISCONNECT when it was QoS 0.
pub(crate) mod publish {
    use super::code;
    /// No publish right on the topic.
    pub const NOT_AUTHORIZED: u8 = code::NOT_AUTHORIZED;
    /// The retained message could not be stored.
    pub const NOT_STORED: u8 = code::UNSPECIFIED;
    /// `mqtt.max_retained` topics are held already.
    pub const RETAINED_FULL: u8 = code::QUOTA_EXCEEDED;
    /// Cluster mode: the node cannot confirm it is current (it fails closed).
    pub const NOT_CURRENT: u8 = code::UNSPECIFIED;
}

/// What a refused subscription filter gets in SUBACK.
pub(crate) mod subscribe {
    use super::code;
    /// No subscribe right: 5 says so; 3.1.1 has only "failure".
    pub fn denied(v5: bool) -> u8 {
        if v5 {
            code::NOT_AUTHORIZED
        } else {
            code::UNSPECIFIED
        }
    }
    /// Too many subscriptions in the session.
    pub fn quota(v5: bool) -> u8 {
        if v5 {
            code::QUOTA_EXCEEDED
        } else {
            code::UNSPECIFIED
        }
    }
    /// An invalid or unsupported filter (both levels: 0x80).
    pub const INVALID: u8 = code::UNSPECIFIED;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal tells a 3.1.1 client one of its five return codes and a v5 client a
    /// failure code (>= 0x80); labels are unique (they name metrics).
    #[test]
    fn refusals_are_valid_at_both_levels_and_labelled_once() {
        let all = [
            UNSUPPORTED_PROTOCOL,
            MALFORMED,
            BAD_CLIENT_ID,
            BAD_CREDENTIALS,
            UNKNOWN_CERT,
            CERT_MISMATCH,
            DISABLED,
            NO_CREDENTIALS,
            WILL_NOT_ALLOWED,
            UNAVAILABLE,
            STORE_UNAVAILABLE,
            NOT_CURRENT,
            KEEP_ALIVE_TOO_LONG,
            QUOTA,
        ];
        let mut labels = std::collections::HashSet::new();
        for r in all {
            assert!((1..=5).contains(&r.v4), "{r:?}");
            assert!(r.v5 >= 0x80, "{r:?}");
            assert!(labels.insert(r.label), "duplicate label {}", r.label);
            assert_eq!(r.code(true), r.v5);
            assert_eq!(r.code(false), r.v4);
        }
        // A store outage is never told as bad credentials.
        assert_eq!((STORE_UNAVAILABLE.v4, STORE_UNAVAILABLE.v5), (0x03, 0x88));
    }
}
