//! One device connection through the front: CONNECT, then a loop relaying packets between
//! the device and the embedded broker, checking each PUBLISH, SUBSCRIBE and delivery.

use crate::codec::{self, Frame};
use crate::registry::Control;
use crate::{topic, Identity, Login, Message, Metrics, Rights, Shared};
use bytes::BytesMut;
use rumqttd::protocol::{self as proto, Packet, Protocol};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Why a session ended (for the debug log).
#[derive(Debug)]
enum End {
    Closed,
    Refused(&'static str),
    Protocol(String),
    Io(std::io::Error),
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Closed => "closed".into(),
            End::Refused(why) => format!("refused: {why}"),
            End::Protocol(why) => format!("protocol error: {why}"),
            End::Io(e) => format!("io: {e}"),
        }
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

impl From<codec::FrameError> for End {
    fn from(e: codec::FrameError) -> Self {
        End::Protocol(e.to_string())
    }
}

const MAX_CACHED_CHANNELS: usize = 4096;
const UPSTREAM_KEEP_ALIVE: u16 = 60;

pub(crate) async fn run<S>(
    stream: S,
    peer: std::net::SocketAddr,
    transport: &'static str,
    cert: Option<Vec<u8>>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let m = &shared.metrics;
    let current = m.connections_current.fetch_add(1, Ordering::Relaxed);
    Metrics::inc(&m.connections_total);
    let end = if current as usize >= shared.cfg.max_connections {
        End::Refused("connection limit reached")
    } else {
        match session(stream, transport, cert, &shared).await {
            Ok(()) => End::Closed,
            Err(e) => e,
        }
    };
    m.connections_current.fetch_sub(1, Ordering::Relaxed);
    if let End::Protocol(_) = &end {
        Metrics::inc(&m.malformed);
    }
    tracing::debug!(%peer, end = %end.describe(), "session ended");
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, End> {
    loop {
        if let Some(f) = codec::next_frame(buf, max)? {
            return Ok(Some(f));
        }
        if r.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

struct Connected {
    v5: bool,
    identity: Option<Identity>,
    mqtt_client_id: String,
    client_keep_alive: u16,
    /// The client's Maximum Packet Size (v5), enforced on deliveries.
    client_max_packet: Option<usize>,
}

async fn session<S>(stream: S, transport: &'static str, cert: Option<Vec<u8>>, shared: &Arc<Shared>) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut cr, mut cw) = tokio::io::split(stream);
    let mut cbuf = BytesMut::with_capacity(4096);
    let max = shared.cfg.max_packet_size;
    let first = match tokio::time::timeout(shared.cfg.connect_timeout, read_frame(&mut cr, &mut cbuf, max)).await {
        Err(_) => return Err(End::Refused("no CONNECT in time")),
        Ok(r) => r?.ok_or(End::Closed)?,
    };
    if first.kind() != codec::CONNECT {
        return Err(End::Protocol("first packet is not CONNECT".into()));
    }
    let level = codec::connect_level(&first)?;
    if level != 4 && level != 5 {
        cw.write_all(&codec::encode_connack(0x01, false)).await?;
        return Err(End::Refused("unsupported protocol level"));
    }
    let v5 = level == 5;
    let refuse = |v4code: u8, v5code: u8| codec::encode_connack(if v5 { v5code } else { v4code }, v5);
    let mut raw = BytesMut::from(&first.bytes[..]);
    let parsed = if v5 {
        proto::v5::V5.read_mut(&mut raw, max)
    } else {
        proto::v4::V4.read_mut(&mut raw, max)
    };
    let Ok(Packet::Connect(mut connect, props, will, will_props, login)) = parsed else {
        cw.write_all(&refuse(0x02, 0x81)).await?;
        return Err(End::Protocol("malformed CONNECT".into()));
    };

    // Authenticate: a verified client certificate names the client; otherwise credentials.
    let mut cert_serial = None;
    let cert_login = match &cert {
        Some(der) => {
            let (outcome, serial) = shared.auth.login_cert(der).await;
            cert_serial = serial;
            Some(outcome)
        }
        None => None,
    };
    if let (Some(Login::Ok(id)), Some(l)) = (&cert_login, login.as_ref().filter(|l| !l.username.is_empty())) {
        if l.username != id.client_id {
            Metrics::inc(&shared.metrics.refused_connect);
            cw.write_all(&refuse(0x04, 0x86)).await?;
            return Err(End::Refused("username does not match the certificate"));
        }
    }
    let identity = match cert_login {
        Some(Login::Ok(id)) => Some(id),
        Some(Login::BadCredentials) => {
            Metrics::inc(&shared.metrics.refused_connect);
            tracing::info!(reason = "unknown certificate", "CONNECT refused");
            cw.write_all(&refuse(0x04, 0x86)).await?;
            return Err(End::Refused("unknown certificate"));
        }
        Some(Login::Disabled) => {
            Metrics::inc(&shared.metrics.refused_connect);
            tracing::info!(reason = "revoked certificate or disabled client", "CONNECT refused");
            cw.write_all(&refuse(0x05, 0x87)).await?;
            return Err(End::Refused("certificate revoked or client disabled"));
        }
        None => match login.as_ref().filter(|l| !l.username.is_empty()) {
            Some(l) => match shared.auth.login(&l.username, &l.password).await {
                Login::Ok(id) => Some(id),
                Login::BadCredentials => {
                    Metrics::inc(&shared.metrics.refused_connect);
                    tracing::info!(client = %l.username, reason = "bad credentials", "CONNECT refused");
                    cw.write_all(&refuse(0x04, 0x86)).await?;
                    return Err(End::Refused("bad credentials"));
                }
                Login::Disabled => {
                    Metrics::inc(&shared.metrics.refused_connect);
                    tracing::info!(client = %l.username, reason = "disabled", "CONNECT refused");
                    cw.write_all(&refuse(0x05, 0x87)).await?;
                    return Err(End::Refused("client or domain disabled"));
                }
            },
            None if shared.cfg.allow_anonymous => None,
            None => {
                Metrics::inc(&shared.metrics.refused_connect);
                cw.write_all(&refuse(0x05, 0x87)).await?;
                return Err(End::Refused("credentials required"));
            }
        },
    };

    // Client id: assigned when empty (clean session only), namespaced upstream.
    let mut assigned = None;
    if connect.client_id.is_empty() {
        if !connect.clean_session {
            cw.write_all(&refuse(0x02, 0x85)).await?;
            return Err(End::Refused("empty client id without clean session"));
        }
        let id = format!("fg-{}", crate::random_hex(8));
        assigned = Some(id.clone());
        connect.client_id = id;
    }
    let mqtt_client_id = connect.client_id.clone();
    connect.client_id = match &identity {
        Some(i) => format!("{}:{}:{}", i.domain_id, i.client_id, mqtt_client_id),
        None => format!("anonymous:{mqtt_client_id}"),
    };

    let mut rights: HashMap<String, Rights> = HashMap::new();
    // The will is published on the client's behalf: it needs the publish right.
    if let Some(w) = &will {
        let t = std::str::from_utf8(&w.topic).unwrap_or("");
        if !may_publish(shared, &identity, &mut rights, t).await {
            Metrics::inc(&shared.metrics.refused_connect);
            tracing::info!(topic = %t, reason = "will topic not allowed", "CONNECT refused");
            cw.write_all(&refuse(0x05, 0x87)).await?;
            return Err(End::Refused("will topic not allowed"));
        }
    }

    let client_keep_alive = connect.keep_alive;
    connect.keep_alive = if client_keep_alive == 0 {
        UPSTREAM_KEEP_ALIVE
    } else {
        client_keep_alive
    };
    let client_max_packet = props.as_ref().and_then(|p| p.max_packet_size).map(|m| m as usize);
    let login = Some(proto::Login {
        username: shared.internal_user.clone(),
        password: shared.internal_pass.clone(),
    });
    let upstream = tokio::net::TcpStream::connect(if v5 { shared.upstream_v5 } else { shared.upstream_v4 }).await?;
    let _ = upstream.set_nodelay(true);
    let (mut ur, mut uw) = upstream.into_split();
    let mut out = BytesMut::new();
    let packet = Packet::Connect(connect, props, will, will_props, login);
    let written = if v5 {
        proto::v5::V5.write(packet, &mut out)
    } else {
        proto::v4::V4.write(packet, &mut out)
    };
    written.map_err(|e| End::Protocol(format!("cannot encode CONNECT: {e}")))?;
    uw.write_all(&out).await?;

    // CONNACK from upstream: forwarded; in v5 with our assigned id and limits.
    let mut ubuf = BytesMut::with_capacity(8192);
    let ack = read_frame(&mut ur, &mut ubuf, usize::MAX).await?.ok_or(End::Closed)?;
    if ack.kind() != codec::CONNACK {
        return Err(End::Protocol("upstream did not answer CONNECT".into()));
    }
    if v5 {
        let (rewritten, ok) = codec::rewrite_connack_v5(
            &ack,
            assigned.as_deref(),
            shared.cfg.inflight_window,
            shared.cfg.max_packet_size as u32,
        )?;
        cw.write_all(&rewritten).await?;
        if !ok {
            return Err(End::Refused("upstream refused"));
        }
    } else {
        cw.write_all(&ack.bytes).await?;
        if ack.body().get(1).copied().unwrap_or(1) != 0 {
            return Err(End::Refused("upstream refused"));
        }
    }

    let conn = Connected {
        v5,
        identity,
        mqtt_client_id,
        client_keep_alive,
        client_max_packet,
    };
    let (sid, mut ctrl, _keep) = match &conn.identity {
        Some(i) => {
            let (sid, rx) = shared.registry.register(i, cert_serial.clone());
            (Some(sid), rx, None)
        }
        None => {
            let (tx, rx) = mpsc::unbounded_channel();
            (None, rx, Some(tx))
        }
    };
    let mut relay = Relay {
        shared: shared.clone(),
        conn,
        transport,
        rights,
        in_aliases: HashMap::new(),
        out_aliases: HashMap::new(),
        pending_subs: HashMap::new(),
        dropped_qos2: HashSet::new(),
        inflight_in: 0,
        own_pings: 0,
        to_up: BytesMut::new(),
        to_client: BytesMut::new(),
        to_sink: Vec::new(),
    };
    let result = relay
        .run(&mut cr, &mut cw, &mut ur, &mut uw, &mut cbuf, &mut ubuf, &mut ctrl)
        .await;
    if let (Some(sid), Some(i)) = (sid, &relay.conn.identity) {
        shared.registry.unregister(i, sid);
    }
    let _ = cw.shutdown().await;
    result
}

async fn may_publish(shared: &Shared, who: &Option<Identity>, cache: &mut HashMap<String, Rights>, t: &str) -> bool {
    if !codec::valid_topic(t) || t.starts_with('$') {
        return false;
    }
    match who {
        None => !topic::in_channel_space(t),
        Some(id) => match topic::parse(t, false) {
            Some(ct) => rights_of(shared, id, cache, ct.channel).await.publish,
            None => false,
        },
    }
}

async fn rights_of(shared: &Shared, who: &Identity, cache: &mut HashMap<String, Rights>, channel: &str) -> Rights {
    if let Some(r) = cache.get(channel) {
        return *r;
    }
    let r = shared.auth.rights(who, channel).await;
    if cache.len() >= MAX_CACHED_CHANNELS {
        cache.clear();
    }
    cache.insert(channel.to_string(), r);
    r
}

struct Relay {
    shared: Arc<Shared>,
    conn: Connected,
    transport: &'static str,
    rights: HashMap<String, Rights>,
    in_aliases: HashMap<u16, String>,
    out_aliases: HashMap<u16, String>,
    /// SUBSCRIBEs forwarded with some filters removed: per filter, the refusal code or
    /// `None` for a filter whose code comes from upstream's SUBACK.
    pending_subs: HashMap<u16, Vec<Option<u8>>>,
    /// QoS 2 deliveries the front dropped and acknowledged upstream itself.
    dropped_qos2: HashSet<u16>,
    inflight_in: u32,
    own_pings: u32,
    to_up: BytesMut,
    to_client: BytesMut,
    /// Accepted messages for the pipeline, handed over together at the next flush.
    to_sink: Vec<Message>,
}

enum Step {
    Continue,
    Stop,
}

impl Relay {
    #[allow(clippy::too_many_arguments)]
    async fn run<CR, CW, UR, UW>(
        &mut self,
        cr: &mut CR,
        cw: &mut CW,
        ur: &mut UR,
        uw: &mut UW,
        cbuf: &mut BytesMut,
        ubuf: &mut BytesMut,
        ctrl: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Result<(), End>
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        UR: AsyncRead + Unpin,
        UW: AsyncWrite + Unpin,
    {
        let max = self.shared.cfg.max_packet_size;
        let mut ping = (self.conn.client_keep_alive == 0)
            .then(|| tokio::time::interval(Duration::from_secs(UPSTREAM_KEEP_ALIVE as u64 / 2)));
        // Packets that arrived together with CONNECT (from the client) or CONNACK (upstream,
        // e.g. a persistent session's queued messages).
        let mut step = self.on_client_bytes(cbuf, max).await?;
        if let Step::Continue = step {
            step = self.on_upstream_bytes(ubuf).await?;
        }
        loop {
            if let Step::Stop = step {
                self.flush(cw, uw).await?;
                return Ok(());
            }
            self.flush(cw, uw).await?;
            // Biased: a revocation queued before a packet arrived is applied before that
            // packet is looked at.
            step = tokio::select! {
                biased;
                c = ctrl.recv() => match c {
                    Some(Control::Close(reason)) => {
                        if self.conn.v5 {
                            self.to_client.extend_from_slice(&codec::encode_disconnect(reason));
                        }
                        Step::Stop
                    }
                    Some(Control::Invalidate(ch)) => {
                        match ch {
                            Some(ch) => { self.rights.remove(&ch); }
                            None => self.rights.clear(),
                        }
                        Step::Continue
                    }
                    None => Step::Continue,
                },
                r = cr.read_buf(spare(cbuf)) => {
                    if r? == 0 { return Ok(()) }
                    self.on_client_bytes(cbuf, max).await?
                }
                r = ur.read_buf(spare(ubuf)) => {
                    if r? == 0 { return Ok(()) }
                    self.on_upstream_bytes(ubuf).await?
                }
                _ = async { match ping.as_mut() { Some(p) => { p.tick().await; } None => std::future::pending::<()>().await } } => {
                    self.to_up.extend_from_slice(&codec::pingreq());
                    self.own_pings += 1;
                    Step::Continue
                }
            };
        }
    }

    async fn flush<CW: AsyncWrite + Unpin, UW: AsyncWrite + Unpin>(
        &mut self,
        cw: &mut CW,
        uw: &mut UW,
    ) -> Result<(), End> {
        if !self.to_sink.is_empty() {
            let refused = self.shared.sink.offer(std::mem::take(&mut self.to_sink)) as u64;
            if refused > 0 {
                let before = self.shared.metrics.pipeline_full.fetch_add(refused, Ordering::Relaxed);
                if (before + refused).ilog2() != before.checked_ilog2().unwrap_or(u32::MAX) {
                    tracing::warn!(
                        dropped_total = before + refused,
                        "message pipeline full: MQTT messages not stored"
                    );
                }
            }
        }
        if !self.to_up.is_empty() {
            uw.write_all(&self.to_up).await?;
            self.to_up.clear();
        }
        if !self.to_client.is_empty() {
            cw.write_all(&self.to_client).await?;
            self.to_client.clear();
        }
        Ok(())
    }

    fn refuse_log(&self, what: &str, t: &str, reason: &str) {
        let (d, c) = self
            .conn
            .identity
            .as_ref()
            .map(|i| (i.domain_id.as_str(), i.client_id.as_str()))
            .unwrap_or(("", "anonymous"));
        let id = &self.conn.mqtt_client_id;
        tracing::info!(domain = d, client = c, mqtt_client_id = %id, topic = t, reason, "{what} refused");
    }

    async fn on_client_bytes(&mut self, buf: &mut BytesMut, max: usize) -> Result<Step, End> {
        while let Some(f) = codec::next_frame(buf, max).map_err(|e| {
            if let codec::FrameError::TooLarge(_) = e {
                if self.conn.v5 {
                    self.to_client.extend_from_slice(&codec::encode_disconnect(0x95));
                }
            }
            End::from(e)
        })? {
            match f.kind() {
                codec::PUBLISH => {
                    if let Step::Stop = self.client_publish(&f).await? {
                        return Ok(Step::Stop);
                    }
                }
                codec::SUBSCRIBE => self.client_subscribe(&f).await?,
                codec::UNSUBSCRIBE
                | codec::PUBACK
                | codec::PUBREC
                | codec::PUBREL
                | codec::PUBCOMP
                | codec::PINGREQ => self.to_up.extend_from_slice(&f.bytes),
                codec::DISCONNECT => {
                    self.to_up.extend_from_slice(&f.bytes);
                    return Ok(Step::Stop);
                }
                k => return Err(End::Protocol(format!("unexpected packet type {k} from client"))),
            }
        }
        Ok(Step::Continue)
    }

    async fn client_publish(&mut self, f: &Frame) -> Result<Step, End> {
        let v5 = self.conn.v5;
        let p = codec::publish(f, v5)?;
        let topic = resolve_topic(&mut self.in_aliases, &p)
            .ok_or_else(|| End::Protocol("PUBLISH without topic or with an unknown topic alias".into()))?;
        if !codec::valid_topic(&topic) {
            if v5 {
                self.to_client.extend_from_slice(&codec::encode_disconnect(0x90));
            }
            return Err(End::Protocol("invalid topic name in PUBLISH".into()));
        }
        if p.qos > 0 {
            self.inflight_in += 1;
            if self.inflight_in > self.shared.cfg.inflight_window as u32 {
                if v5 {
                    self.to_client.extend_from_slice(&codec::encode_disconnect(0x93));
                }
                return Err(End::Protocol("receive maximum exceeded".into()));
            }
        }
        let allowed = may_publish(&self.shared, &self.conn.identity, &mut self.rights, &topic).await;
        if !allowed {
            Metrics::inc(&self.shared.metrics.refused_publish);
            self.refuse_log("PUBLISH", &topic, "not connected for publish");
            if !v5 {
                return Ok(Step::Stop);
            }
            match p.qos {
                0 => {
                    self.to_client.extend_from_slice(&codec::encode_disconnect(0x87));
                    return Ok(Step::Stop);
                }
                1 => self
                    .to_client
                    .extend_from_slice(&codec::encode_ack(codec::PUBACK, p.pkid, Some(0x87))),
                _ => self
                    .to_client
                    .extend_from_slice(&codec::encode_ack(codec::PUBREC, p.pkid, Some(0x87))),
            }
            self.inflight_in = self.inflight_in.saturating_sub(1);
            return Ok(Step::Continue);
        }
        Metrics::inc(&self.shared.metrics.messages_in);
        if let (Some(id), Some(ct)) = (&self.conn.identity, topic::parse(&topic, false)) {
            let msg = Message {
                domain_id: id.domain_id.clone(),
                channel_id: ct.channel.to_string(),
                subtopic: ct.subtopic.to_string(),
                publisher: id.client_id.clone(),
                protocol: self.transport,
                // A copy, not a view: a view would keep the whole read buffer alive while the
                // message waits in the queue (up to queue_size read buffers).
                payload: bytes::Bytes::copy_from_slice(p.payload),
                received_at: now_micros(),
            };
            self.to_sink.push(msg);
        }
        self.to_up.extend_from_slice(&f.bytes);
        Ok(Step::Continue)
    }

    async fn client_subscribe(&mut self, f: &Frame) -> Result<(), End> {
        let v5 = self.conn.v5;
        let s = codec::subscribe(f, v5)?;
        let denied = if v5 { 0x87 } else { 0x80 };
        let mut codes: Vec<Option<u8>> = Vec::with_capacity(s.filters.len());
        let mut allowed: Vec<(&str, u8)> = Vec::new();
        for (filter, opts) in &s.filters {
            let code = if !codec::valid_filter(filter) || filter.starts_with('$') {
                Some(0x80)
            } else {
                match &self.conn.identity {
                    None if topic::in_channel_space(filter) => Some(denied),
                    None => None,
                    Some(id) => match topic::parse(filter, true) {
                        None => Some(denied),
                        Some(ct) => {
                            let r = rights_of(&self.shared, id, &mut self.rights, ct.channel).await;
                            (!r.subscribe).then_some(denied)
                        }
                    },
                }
            };
            if code.is_some() {
                Metrics::inc(&self.shared.metrics.refused_subscribe);
                self.refuse_log("SUBSCRIBE", filter, "not connected for subscribe");
            } else {
                allowed.push((filter, *opts));
            }
            codes.push(code);
        }
        if allowed.is_empty() {
            let codes: Vec<u8> = codes.into_iter().map(|c| c.unwrap_or(0x80)).collect();
            self.to_client
                .extend_from_slice(&codec::encode_suback(s.pkid, &codes, v5));
        } else if allowed.len() == s.filters.len() {
            self.to_up.extend_from_slice(&f.bytes);
        } else {
            self.to_up
                .extend_from_slice(&codec::encode_subscribe(s.pkid, s.props, &allowed, v5));
            self.pending_subs.insert(s.pkid, codes);
        }
        Ok(())
    }

    async fn on_upstream_bytes(&mut self, buf: &mut BytesMut) -> Result<Step, End> {
        while let Some(f) = codec::next_frame(buf, usize::MAX)? {
            match f.kind() {
                codec::PUBLISH => self.deliver(&f).await?,
                codec::SUBACK => {
                    let (pkid, up_codes) = codec::suback(&f, self.conn.v5)?;
                    match self.pending_subs.remove(&pkid) {
                        Some(template) => {
                            let mut it = up_codes.into_iter();
                            let merged: Vec<u8> = template
                                .into_iter()
                                .map(|c| c.unwrap_or_else(|| it.next().unwrap_or(0x80)))
                                .collect();
                            self.to_client
                                .extend_from_slice(&codec::encode_suback(pkid, &merged, self.conn.v5));
                        }
                        None => self.to_client.extend_from_slice(&f.bytes),
                    }
                }
                codec::PUBACK | codec::PUBCOMP => {
                    self.inflight_in = self.inflight_in.saturating_sub(1);
                    self.to_client.extend_from_slice(&f.bytes);
                }
                codec::PUBREC => {
                    if codec::ack(&f)?.1 >= 0x80 {
                        self.inflight_in = self.inflight_in.saturating_sub(1);
                    }
                    self.to_client.extend_from_slice(&f.bytes);
                }
                codec::PUBREL => {
                    let (pkid, _) = codec::ack(&f)?;
                    if self.dropped_qos2.remove(&pkid) {
                        self.to_up
                            .extend_from_slice(&codec::encode_ack(codec::PUBCOMP, pkid, None));
                    } else {
                        self.to_client.extend_from_slice(&f.bytes);
                    }
                }
                codec::PINGRESP if self.own_pings > 0 => self.own_pings -= 1,
                codec::DISCONNECT => {
                    self.to_client.extend_from_slice(&f.bytes);
                    return Ok(Step::Stop);
                }
                _ => self.to_client.extend_from_slice(&f.bytes),
            }
        }
        Ok(Step::Continue)
    }

    /// A delivery to the client: only on channels it may still subscribe to, and never larger
    /// than the client's Maximum Packet Size.
    async fn deliver(&mut self, f: &Frame) -> Result<(), End> {
        let p = codec::publish(f, self.conn.v5)?;
        let topic = resolve_topic(&mut self.out_aliases, &p).unwrap_or_default();
        let allowed = match &self.conn.identity {
            None => !topic::in_channel_space(&topic),
            Some(id) => match topic::parse(&topic, false) {
                Some(ct) => {
                    rights_of(&self.shared, id, &mut self.rights, ct.channel)
                        .await
                        .subscribe
                }
                None => false,
            },
        };
        let fits = self.conn.client_max_packet.is_none_or(|m| f.bytes.len() <= m);
        if allowed && fits {
            Metrics::inc(&self.shared.metrics.messages_out);
            self.to_client.extend_from_slice(&f.bytes);
            return Ok(());
        }
        Metrics::inc(&self.shared.metrics.refused_delivery);
        match p.qos {
            1 => self
                .to_up
                .extend_from_slice(&codec::encode_ack(codec::PUBACK, p.pkid, None)),
            2 => {
                self.to_up
                    .extend_from_slice(&codec::encode_ack(codec::PUBREC, p.pkid, None));
                self.dropped_qos2.insert(p.pkid);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Room for one read: under load one read then carries many packets (fewer system calls);
/// idle connections keep their small initial buffers.
fn spare(buf: &mut BytesMut) -> &mut BytesMut {
    const READ_CHUNK: usize = 16 * 1024;
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    buf
}

/// The topic of a PUBLISH, recording and resolving MQTT 5 topic aliases. Borrowed from the
/// packet unless an alias supplies it, so the usual case allocates nothing.
fn resolve_topic<'a>(aliases: &mut HashMap<u16, String>, p: &codec::PublishInfo<'a>) -> Option<Cow<'a, str>> {
    match (p.topic.is_empty(), p.alias) {
        (false, Some(a)) => {
            aliases.insert(a, p.topic.to_string());
            Some(Cow::Borrowed(p.topic))
        }
        (false, None) => Some(Cow::Borrowed(p.topic)),
        (true, Some(a)) => aliases.get(&a).cloned().map(Cow::Owned),
        (true, None) => None,
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
