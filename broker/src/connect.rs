//! The CONNECT handshake: read at most `max_connect_size` bytes within the CONNECT timeout,
//! parse, authenticate (password or client certificate), validate the client id and the will,
//! then hand the connection to its session (a new one, or the one already holding the id).
//! Each check returns the [`Refusal`] (from the one reason table, `reason`) that ends the
//! handshake; [`handshake`] writes it, once.

use crate::codec::{self, Frame};
use crate::reason::{self, Refusal};
use crate::registry::Handed;
use crate::rights::{Action, RightsCache};
use crate::{session, Identity, Login, Metrics, PortError, Shared, Transport};
use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{self as proto, Packet, Protocol};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;

/// Writes the refusal CONNACK (best effort), counts and logs it.
pub(crate) async fn refuse<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, v5: bool, r: Refusal, m: &Metrics, client: &str) {
    m.refused(r.label);
    tracing::info!(client, reason = r.why, "CONNECT refused");
    let connack = codec::encode_connack(r.code(v5), false, v5, None);
    if w.write_all(&connack).await.is_ok() {
        Metrics::inc(&m.packets_out);
        Metrics::add(&m.bytes_out, connack.len() as u64);
    }
    let _ = w.flush().await;
}

/// A will, as the front publishes it (and as a persistent session stores it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Bytes,
    pub delay: u32,
    pub expiry: Option<u32>,
}

/// What a CONNECT asked for, after authentication.
pub(crate) struct ConnectReq {
    pub v5: bool,
    pub identity: Option<Identity>,
    pub cert_serial: Option<String>,
    pub mqtt_client_id: String,
    pub assigned: bool,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// v5 Server Keep Alive sent in CONNACK when the server chose `keep_alive`.
    pub server_keep_alive: Option<u16>,
    /// Seconds the session outlives the connection (0: ends with it), already capped.
    pub session_expiry: u32,
    pub expiry_capped: bool,
    pub receive_max: u16,
    pub max_packet: Option<usize>,
    /// v5: how many topic aliases the client takes from the server (0: none).
    pub topic_alias_max: u16,
    pub will: Option<Will>,
    pub transport: Transport,
    /// Cluster mode: this node's claim on the session key (0 outside a cluster).
    pub claim: u64,
}

/// A connection ready to join its session: the request, the stream, and what was read past
/// the CONNECT.
pub(crate) struct Attach {
    pub req: ConnectReq,
    pub peer: std::net::SocketAddr,
    pub io: BoxIo,
    pub rbuf: BytesMut,
    pub guard: ConnGuard,
}

/// Counts a connection in `connections_current` for as long as it lives.
pub(crate) struct ConnGuard(pub Arc<Metrics>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0
            .connections_current
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A handshake slot for a connection from `peer` (see `pending`), counted in the metrics;
/// `None`: refused, close it.
pub(crate) fn admit(shared: &Shared, peer: std::net::SocketAddr) -> Option<crate::fair::Slot> {
    use crate::fair::Admitted;
    match shared.pending.acquire(peer) {
        Admitted::Free(s) => Some(s),
        Admitted::Shed(s) => {
            Metrics::inc(&shared.metrics.shed_pending);
            Some(s)
        }
        Admitted::Refused => {
            Metrics::inc(&shared.metrics.refused_pending);
            tracing::debug!(%peer, "too many connections without CONNECT");
            None
        }
    }
}

/// Serves one accepted connection: handshake, then hand-over to its session. `slot`: the
/// handshake slot taken before a TLS handshake, if any (else one is taken here).
pub(crate) async fn run(
    mut io: BoxIo,
    peer: std::net::SocketAddr,
    transport: Transport,
    cert: Option<Vec<u8>>,
    shared: Arc<Shared>,
    slot: Option<crate::fair::Slot>,
) {
    let m = shared.metrics.clone();
    let current = m.connections_current.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let guard = ConnGuard(m.clone());
    Metrics::inc(&m.connections_total);
    if current as usize >= shared.cfg.max_connections {
        tracing::debug!(%peer, "connection limit reached");
        return;
    }
    // Connections that have not finished CONNECT are bounded, fairly between sources.
    let Some(mut slot) = slot.or_else(|| admit(&shared, peer)) else {
        return;
    };
    let handshake = tokio::select! {
        h = tokio::time::timeout(shared.cfg.connect_timeout, handshake(&mut io, transport, cert, &shared)) => h,
        _ = slot.shed() => {
            tracing::debug!(%peer, "closed without CONNECT: its source holds the most pending connections");
            return;
        }
    };
    drop(slot);
    let (req, rbuf) = match handshake {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            Metrics::inc(&m.malformed);
            tracing::debug!(%peer, error = %e, "CONNECT failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    let key = crate::registry::session_key(
        req.identity
            .as_ref()
            .map(|i| (i.domain_id.as_str(), i.client_id.as_str())),
        &req.mqtt_client_id,
    );
    let identity = req.identity.clone();
    let claim = req.claim;
    let a = Box::new(Attach {
        req,
        peer,
        io,
        rbuf,
        guard,
    });
    match shared.registry.attach(&key, identity.as_ref(), a, claim) {
        Handed::Existing => {}
        Handed::New(gen, rx, a) => session::spawn(shared.clone(), key, gen, rx, identity, a),
    }
}

async fn read_frame(
    io: &mut BoxIo,
    buf: &mut BytesMut,
    max: usize,
    m: &Metrics,
) -> Result<Option<Frame>, codec::FrameError> {
    loop {
        if let Some(f) = codec::next_frame(buf, max)? {
            Metrics::inc(&m.packets_in);
            return Ok(Some(f));
        }
        // Reads at most what is needed to finish the packet (bounded by `max`), never more.
        let room = (max + 8).saturating_sub(buf.len()).clamp(1, 4096);
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => {
                Metrics::add(&m.bytes_in, n as u64);
                buf.extend_from_slice(&chunk[..n])
            }
        }
    }
}

/// A refusal, and who it was for (for the log).
type Refused = (Refusal, String);

fn refused(r: Refusal, client: &str) -> Refused {
    (r, client.to_string())
}

/// Reads and checks CONNECT. `Ok(None)`: refused (answered here) or closed.
async fn handshake(
    io: &mut BoxIo,
    transport: Transport,
    cert: Option<Vec<u8>>,
    shared: &Arc<Shared>,
) -> Result<Option<(ConnectReq, BytesMut)>, codec::FrameError> {
    let m = &shared.metrics;
    let mut buf = BytesMut::with_capacity(256);
    let Some(first) = read_frame(io, &mut buf, shared.cfg.max_connect_size, m).await? else {
        return Ok(None);
    };
    // The packet type is checked before anything parses it.
    if first.kind() != codec::CONNECT || first.flags() != 0 {
        return Err(codec::FrameError::Protocol("first packet is not CONNECT"));
    }
    let level = codec::connect_level(&first)?;
    match check(&first, level, transport, cert, shared).await {
        Ok(req) => Ok(Some((req, buf))),
        Err((r, client)) => {
            refuse(io, level == 5, r, m, &client).await;
            Ok(None)
        }
    }
}

/// The checks of a CONNECT, in order; each refusal is one line.
async fn check(
    first: &Frame,
    level: u8,
    transport: Transport,
    cert: Option<Vec<u8>>,
    shared: &Arc<Shared>,
) -> Result<ConnectReq, Refused> {
    if level != 4 && level != 5 {
        return Err(refused(reason::UNSUPPORTED_PROTOCOL, ""));
    }
    let v5 = level == 5;
    let mut raw = BytesMut::from(&first.bytes[..]);
    let parsed = if v5 {
        proto::v5::V5.read_mut(&mut raw, shared.cfg.max_connect_size)
    } else {
        proto::v4::V4.read_mut(&mut raw, shared.cfg.max_connect_size)
    };
    let Ok(Packet::Connect(connect, props, will, will_props, login)) = parsed else {
        return Err(refused(reason::MALFORMED, ""));
    };
    if connect.client_id.contains('\0') {
        return Err(refused(reason::MALFORMED, ""));
    }
    if !shared.current() {
        return Err(refused(reason::NOT_CURRENT, ""));
    }
    let (identity, cert_serial) = authenticate(shared, cert, login.as_ref()).await?;
    let who = identity.as_ref().map_or("", |i| i.client_id.as_str()).to_string();

    // Client id: assigned when empty; 3.1.1 only with clean session [MQTT-3.1.3-8], 5 with
    // either Clean Start (the assigned id names a new session anyway).
    let (mut mqtt_client_id, mut assigned) = (connect.client_id.clone(), false);
    if mqtt_client_id.is_empty() {
        if !connect.clean_session && !v5 {
            return Err(refused(reason::BAD_CLIENT_ID, &who));
        }
        mqtt_client_id = format!("fg-{}", uuid_like());
        assigned = true;
    }

    let props = props.unwrap_or_default_props();
    let max_expiry = shared.cfg.max_session_expiry.as_secs().min(u32::MAX as u64) as u32;
    let asked = if v5 {
        props.0.unwrap_or(0)
    } else if connect.clean_session {
        0
    } else {
        u32::MAX
    };
    let session_expiry = asked.min(max_expiry);
    let expiry_capped = v5 && session_expiry != asked;

    // The will is published on the client's behalf: it needs the publish right now, and is
    // checked again when it is published.
    let will = match will {
        Some(w) => {
            let topic = String::from_utf8(w.topic.to_vec()).unwrap_or_default();
            // Magistrala's `m/<domain>/c/<channel>` form is the same channel.
            let topic = identity
                .as_ref()
                .and_then(|i| crate::topic::canonical(&topic, &i.domain_id))
                .unwrap_or(topic);
            let mut rc = RightsCache::default();
            let allowed = if codec::valid_topic(&topic) {
                rc.check(shared.auth.as_ref(), identity.as_ref(), Action::Publish, &topic)
                    .await
                    .map_err(|_| refused(reason::STORE_UNAVAILABLE, &who))?
            } else {
                false
            };
            if !allowed {
                return Err(refused(reason::WILL_NOT_ALLOWED, &who));
            }
            let wp = will_props.as_ref();
            Some(Will {
                topic,
                payload: w.message,
                qos: w.qos as u8,
                retain: w.retain,
                props: codec::will_props(
                    wp.and_then(|p| p.payload_format_indicator),
                    wp.and_then(|p| p.content_type.as_deref()),
                    wp.and_then(|p| p.response_topic.as_deref()),
                    wp.and_then(|p| p.correlation_data.as_deref()),
                    wp.map(|p| p.user_properties.as_slice()).unwrap_or(&[]),
                ),
                delay: wp.and_then(|p| p.delay_interval).unwrap_or(0),
                expiry: wp.and_then(|p| p.message_expiry_interval),
            })
        }
        None => None,
    };
    // Keep alive: capped at mqtt.max_keep_alive. A v5 client is told the value it must use
    // (Server Keep Alive, also when it asked for none) [MQTT-3.2.2-21]; a 3.1.1 client cannot
    // be told, so one asking for more is refused (as Mosquitto does).
    let max_ka = shared.cfg.max_keep_alive;
    let (keep_alive, server_keep_alive) = match connect.keep_alive {
        ka if v5 && (ka == 0 || ka > max_ka) => (max_ka, Some(max_ka)),
        ka if !v5 && ka > max_ka => return Err(refused(reason::KEEP_ALIVE_TOO_LONG, &mqtt_client_id)),
        ka => (ka, None),
    };
    // Cluster mode: the session key is claimed (newest wins cluster-wide) before CONNACK.
    let claim = match &shared.cluster {
        Some(c) => {
            let key = crate::registry::session_key(
                identity.as_ref().map(|i| (i.domain_id.as_str(), i.client_id.as_str())),
                &mqtt_client_id,
            );
            let claim = c
                .claim(&key)
                .await
                .map_err(|_| refused(reason::STORE_UNAVAILABLE, &who))?;
            adopt(shared, &key)
                .await
                .map_err(|_| refused(reason::STORE_UNAVAILABLE, &who))?;
            claim
        }
        None => 0,
    };
    Ok(ConnectReq {
        v5,
        identity,
        cert_serial,
        mqtt_client_id,
        assigned,
        clean_start: connect.clean_session,
        keep_alive,
        server_keep_alive,
        session_expiry,
        expiry_capped,
        receive_max: props.1.filter(|r| *r > 0).unwrap_or(65_535),
        max_packet: props.2.map(|m| m as usize),
        topic_alias_max: props.3,
        will,
        transport,
        claim,
    })
}

/// Cluster mode, once this node claimed `key`: a session another node holds for it moves
/// here (with its queue and in-flight states) and is recreated offline, so the connection
/// resumes it (or, with Clean Start, discards it) as if it had always been here.
async fn adopt(shared: &Arc<Shared>, key: &str) -> Result<(), PortError> {
    let Some(store) = shared.sessions.clone() else {
        return Ok(());
    };
    if shared.registry.contains(key) {
        return Ok(());
    }
    let k = key.to_string();
    let loaded = tokio::task::spawn_blocking(move || store.adopt(&k))
        .await
        .map_err(|e| PortError::Unavailable("store", e.to_string()))??;
    if let Some(loaded) = loaded {
        Metrics::inc(&shared.metrics.cluster_sessions_adopted);
        session::restore_all(shared.clone(), loaded).await;
    }
    Ok(())
}

/// Who the CONNECT is: a verified client certificate names the client; otherwise the
/// credentials do (or nobody, when anonymous access is allowed). Also returns the
/// certificate's serial.
async fn authenticate(
    shared: &Arc<Shared>,
    cert: Option<Vec<u8>>,
    login: Option<&proto::Login>,
) -> Result<(Option<Identity>, Option<String>), Refused> {
    let username = login.map(|l| l.username.as_str()).filter(|u| !u.is_empty());
    match (cert, username, login) {
        (Some(der), _, _) => {
            let (outcome, serial) = shared.auth.login_cert(&der).await;
            let id = login_outcome(outcome, true).map_err(|r| refused(r, ""))?;
            if username.is_some_and(|u| u != id.client_id) {
                return Err(refused(reason::CERT_MISMATCH, &id.client_id));
            }
            Ok((Some(id), serial))
        }
        (None, Some(u), Some(l)) => {
            let outcome = shared.auth.login(u, &l.password).await;
            let id = login_outcome(outcome, false).map_err(|r| refused(r, u))?;
            Ok((Some(id), None))
        }
        _ if shared.cfg.allow_anonymous => Ok((None, None)),
        _ => Err(refused(reason::NO_CREDENTIALS, "")),
    }
}

/// The registry's answer to credentials (a certificate's, with `cert`), as a refusal table.
fn login_outcome(outcome: Result<Login, PortError>, cert: bool) -> Result<Identity, Refusal> {
    match (outcome, cert) {
        (Ok(Login::Ok(id)), _) => Ok(id),
        (Ok(Login::BadCredentials), false) => Err(reason::BAD_CREDENTIALS),
        (Ok(Login::BadCredentials), true) => Err(reason::UNKNOWN_CERT),
        (Ok(Login::Disabled), _) => Err(reason::DISABLED),
        (Err(e), _) => {
            tracing::error!(error = %e, "MQTT login: the registry could not answer");
            Err(reason::STORE_UNAVAILABLE)
        }
    }
}

/// (session expiry, receive maximum, maximum packet size, topic alias maximum) of a
/// CONNECT's properties.
trait PropsExt {
    fn unwrap_or_default_props(self) -> (Option<u32>, Option<u16>, Option<u32>, u16);
}

impl PropsExt for Option<proto::ConnectProperties> {
    fn unwrap_or_default_props(self) -> (Option<u32>, Option<u16>, Option<u32>, u16) {
        match self {
            Some(p) => (
                p.session_expiry_interval,
                p.receive_maximum,
                p.max_packet_size,
                p.topic_alias_max.unwrap_or(0),
            ),
            None => (None, None, None, 0),
        }
    }
}

fn uuid_like() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Used by sessions to refuse at attach time (e.g. the router cannot take the link).
pub(crate) async fn refuse_attach(a: &mut Attach, r: Refusal, m: &Metrics) {
    let client = a.req.identity.as_ref().map(|i| i.client_id.clone()).unwrap_or_default();
    refuse(&mut a.io, a.req.v5, r, m, &client).await;
    let _ = a.io.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            domain_id: "d".into(),
            client_id: "c".into(),
        }
    }

    /// The registry's answers map to one refusal each; an outage is never "bad credentials".
    #[test]
    fn login_outcomes_are_a_table() {
        assert_eq!(login_outcome(Ok(Login::Ok(id())), false), Ok(id()));
        assert_eq!(
            login_outcome(Ok(Login::BadCredentials), false),
            Err(reason::BAD_CREDENTIALS)
        );
        assert_eq!(
            login_outcome(Ok(Login::BadCredentials), true),
            Err(reason::UNKNOWN_CERT)
        );
        assert_eq!(login_outcome(Ok(Login::Disabled), true), Err(reason::DISABLED));
        let down = Err(PortError::Unavailable("store", "connection refused".into()));
        assert_eq!(login_outcome(down.clone(), false), Err(reason::STORE_UNAVAILABLE));
        assert_eq!(login_outcome(down, true), Err(reason::STORE_UNAVAILABLE));
    }
}
