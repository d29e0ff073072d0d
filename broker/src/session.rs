//! One MQTT session: a task per router client id that owns the session's link to the router,
//! its subscriptions, its outbound queue and QoS state, and the connection currently attached
//! to it. A connection ends; a persistent session outlives it (its link stays open and its
//! queue keeps filling with QoS 1/2 messages) until a connection with the same id attaches
//! again or the session expires. Takeover is a new connection attaching to the running task,
//! so there is never a second link with the same router id.

use crate::codec::{self, Frame, FrameError};
use crate::connect::{self, Attach, BoxIo, ConnGuard, ConnectReq, Will};
use crate::durable;
use crate::outbound::{Delivery, Outbound, Push};
use crate::registry::{Control, Handed};
use crate::rights::{Action, RightsCache};
use crate::{router, topic, Identity, Message, Metrics, Retained, SessionOp, SessionsLoaded, Shared};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::Packet;
use rumqttd::Notification;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Topic aliases a client may use towards the server.
pub(crate) const TOPIC_ALIAS_MAX: u16 = 64;
/// Subscriptions one session may hold.
const MAX_SUBSCRIPTIONS: usize = 1024;
/// The write buffer stops taking deliveries beyond this, and the socket is not read beyond
/// twice this (the device is not reading what we send).
const WBUF_HIGH: usize = 64 * 1024;
/// Packets waiting in the link for the router before the session stops reading its device.
const MAX_LINK_BACKLOG: usize = 2000;
/// Read batches whose replies wait for session store commits before the device's socket is
/// not read any more.
const MAX_HELD: usize = 64;
/// Notifications taken from the link per turn of the loop.
const DRAIN_BATCH: usize = 512;

/// v5 reason codes the session sends.
mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const WILL: u8 = 0x04;
}

struct Sub {
    rid: usize,
    qos: u8,
    no_local: bool,
    rap: bool,
    sub_id: Option<u32>,
}

/// The connection currently attached.
struct Live {
    req: ConnectReq,
    peer: std::net::SocketAddr,
    rd: ReadHalf<BoxIo>,
    wr: WriteHalf<BoxIo>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    aliases: HashMap<u16, String>,
    last_rx: Instant,
    _guard: ConnGuard,
}

/// How a connection ended.
enum End {
    /// DISCONNECT from the client; `will` when it asked for its will (v5 reason 0x04).
    Normal { will: bool },
    /// Network failure, keep-alive timeout or protocol error: the will applies.
    Abnormal(String),
    /// Another connection with the same id arrived.
    Takeover(Box<Attach>),
    /// A revocation: the session ends, without will.
    Revoked(u8),
    /// The server stops: DISCONNECT 0x8B (v5), no will; a persistent session stays stored.
    ShutDown,
    /// The router dropped the link (not expected): the session ends.
    LinkGone,
    /// A clean session's outbound queue overflowed: DISCONNECT 0x97 (5), will applies.
    Overflow,
}

type Step = Result<(), End>;

pub(crate) fn spawn(
    shared: Arc<Shared>,
    key: String,
    gen: u64,
    ctrl: mpsc::UnboundedReceiver<Control>,
    identity: Option<Identity>,
    first: Box<Attach>,
) {
    let s = Session::new(shared.clone(), key, gen, ctrl, identity);
    shared.rt.spawn(s.run(Some(first)));
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        key: String,
        gen: u64,
        ctrl: mpsc::UnboundedReceiver<Control>,
        identity: Option<Identity>,
    ) -> Session {
        let origin = shared.next_origin.fetch_add(1, Ordering::Relaxed);
        let max_bytes = shared.cfg.max_queued_bytes;
        let max_msgs = shared.cfg.max_queued_messages;
        Session {
            shared: shared.clone(),
            key,
            gen,
            ctrl,
            identity,
            origin,
            link: None,
            subs: HashMap::new(),
            by_rid: HashMap::new(),
            next_rid: 1,
            rights: RightsCache::default(),
            out: Outbound::new(max_bytes, max_msgs),
            in_qos2: HashSet::new(),
            expiry: 0,
            started: false,
            pending_will: None,
            to_router: Vec::new(),
            to_sink: Vec::new(),
            v5: false,
            stored: false,
            drop_logged: false,
            waits: Vec::new(),
            offline_until: None,
            held: Held::new(),
            direct: false,
            direct_seen: HashSet::new(),
            live_will: None,
            shutting_down: false,
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    key: String,
    gen: u64,
    ctrl: mpsc::UnboundedReceiver<Control>,
    identity: Option<Identity>,
    /// Identifies this session's messages for No Local.
    origin: u64,
    link: Option<(LinkTx, LinkRx)>,
    subs: HashMap<String, Sub>,
    by_rid: HashMap<usize, String>,
    next_rid: usize,
    rights: RightsCache,
    out: Outbound,
    /// QoS 2 publishes received (PUBREC sent) and not yet released: exactly once.
    in_qos2: HashSet<u16>,
    /// Seconds the session outlives its connection.
    expiry: u32,
    started: bool,
    pending_will: Option<(Will, Instant)>,
    to_router: Vec<Packet>,
    to_sink: Vec<Message>,
    /// Protocol level of the last connection.
    v5: bool,
    /// A record of this session is in the session store.
    stored: bool,
    /// A queue-full drop was logged for this session.
    drop_logged: bool,
    /// Session store writes that must commit before the acknowledgements of this read leave.
    waits: Vec<oneshot::Receiver<bool>>,
    /// A restored session's remaining lifetime.
    offline_until: Option<Instant>,
    /// Replies waiting for session store commits, in order.
    held: Held,
    /// Restored without a router link: messages come directly from their publishers (see
    /// `durable`) until a device attaches and the session subscribes on its own link.
    direct: bool,
    /// Entries received directly since the link was built: the router may bring them again
    /// in the moment between subscribing and leaving direct delivery.
    direct_seen: HashSet<u64>,
    /// The will of the connection attached now (kept in the session record).
    live_will: Option<Will>,
    /// The server stops: the session ends without deleting what the store keeps of it.
    shutting_down: bool,
}

impl Session {
    fn m(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Tells the presence port that `live` joined (or left) this session.
    fn report_presence(&self, live: &Live, joined: bool) {
        let (Some(p), Some(identity)) = (&self.shared.presence, &self.identity) else {
            return;
        };
        let c = crate::Connection {
            identity: identity.clone(),
            mqtt_client_id: live.req.mqtt_client_id.clone(),
            remote: live.peer,
            transport: live.req.transport,
            at_ms: router::now_ms(),
        };
        if joined {
            p.connected(c);
        } else {
            p.disconnected(c);
        }
    }

    fn client(&self) -> &str {
        self.identity.as_ref().map_or("anonymous", |i| i.client_id.as_str())
    }

    async fn run(mut self, first: Option<Box<Attach>>) {
        let mut next = match first {
            Some(a) => Some(a),
            None => self.detached().await,
        };
        while let Some(a) = next.take() {
            let Some(mut live) = self.accept(a).await else { break };
            self.report_presence(&live, true);
            let end = self.serve(&mut live).await;
            let (will, ends) = match end {
                End::Normal { will } => (will, false),
                End::Abnormal(why) => {
                    tracing::debug!(client = %self.client(), why, "connection ended");
                    (true, false)
                }
                End::Takeover(a) => {
                    if live.req.v5 {
                        let _ = live
                            .wr
                            .write_all(&codec::encode_disconnect(reason::SESSION_TAKEN_OVER))
                            .await;
                    }
                    next = Some(a);
                    (true, false)
                }
                End::Revoked(code) => {
                    if live.req.v5 {
                        let _ = live.wr.write_all(&codec::encode_disconnect(code)).await;
                    }
                    if live.req.will.is_some() {
                        Metrics::inc(&self.m().wills_suppressed);
                    }
                    (false, true)
                }
                End::ShutDown => {
                    if live.req.v5 {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            live.wr
                                .write_all(&codec::encode_disconnect(reason::SERVER_SHUTTING_DOWN)),
                        )
                        .await;
                    }
                    self.shutting_down = true;
                    (false, true)
                }
                End::LinkGone => (false, true),
                End::Overflow => {
                    if live.req.v5 {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            live.wr.write_all(&codec::encode_disconnect(reason::QUOTA_EXCEEDED)),
                        )
                        .await;
                    }
                    (true, false)
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), live.wr.shutdown()).await;
            // Acknowledgements of the connection's last read reach the store.
            let _ = self.sync_out().await;
            if let (true, Some(w)) = (will, live.req.will.take()) {
                self.will_after_end(w).await;
            }
            self.report_presence(&live, false);
            drop(live);
            if ends || (self.expiry == 0 && next.is_none()) {
                break;
            }
            if next.is_none() {
                next = self.detached().await;
            }
        }
        self.finish().await;
    }

    /// A connection ended abnormally: its will goes out now, or after its delay (cancelled
    /// by a reconnect) when the session outlives the connection.
    async fn will_after_end(&mut self, w: Will) {
        let delay = w.delay.min(self.expiry);
        if delay == 0 {
            self.publish_will(w).await;
        } else {
            self.pending_will = Some((w, Instant::now() + Duration::from_secs(delay as u64)));
        }
    }

    /// Publishes a will if its client may still publish there right now.
    async fn publish_will(&mut self, w: Will) {
        if let Some(ct) = topic::parse(&w.topic, false) {
            self.rights.invalidate(Some(ct.channel));
        }
        let auth = self.shared.auth.clone();
        if !self
            .rights
            .allowed(auth.as_ref(), self.identity.as_ref(), Action::Publish, &w.topic)
            .await
        {
            Metrics::inc(&self.m().wills_suppressed);
            tracing::info!(client = %self.client(), topic = %w.topic, "will not published: no publish right");
            return;
        }
        Metrics::inc(&self.m().wills_published);
        let expires = w.expiry.map_or(0, |e| router::now_ms() + e as u64 * 1000);
        self.route(&w.topic, &w.payload, w.qos, w.retain, w.props.clone(), expires);
        let _ = self.await_durable().await;
        let _ = self.flush_router().await;
        if !self.to_sink.is_empty() {
            let refused = self.shared.sink.offer(std::mem::take(&mut self.to_sink));
            self.count_unstored(refused.len());
        }
    }

    fn count_unstored(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.m().pipeline_full.fetch_add(n as u64, Ordering::Relaxed);
        if (before + n as u64).ilog2() != before.checked_ilog2().unwrap_or(u32::MAX) {
            tracing::warn!(
                dropped_total = before + n as u64,
                "message pipeline full: QoS 0 MQTT messages not stored"
            );
        }
    }

    /// Takes a new connection: clean start or resumption, link, CONNACK, redelivery.
    async fn accept(&mut self, mut a: Box<Attach>) -> Option<Live> {
        let resumed = self.started && !a.req.clean_start;
        // A reconnect cancels a will that waits for its delay.
        self.pending_will = None;
        if self.started && a.req.clean_start {
            self.reset();
        }
        if a.req.session_expiry > 0 && self.expiry == 0 {
            if let Some(id) = &self.identity {
                if !self
                    .shared
                    .registry
                    .make_room(id, &self.key, self.shared.cfg.max_sessions_per_client)
                {
                    connect::refuse_attach(&mut a, connect::QUOTA, self.m()).await;
                    return None;
                }
            }
        }
        if self.link.is_none() {
            let (router, key) = (self.shared.router.clone(), self.key.clone());
            let built = tokio::task::spawn_blocking(move || router.link(&key))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            match built {
                Ok(l) => self.link = Some(l),
                Err(e) => {
                    tracing::error!(client = %self.client(), error = %e, "the router refused a link");
                    connect::refuse_attach(&mut a, connect::UNAVAILABLE, self.m()).await;
                    return None;
                }
            }
        }
        if self.direct {
            // The restored session's subscriptions go to its new link now.
            for (f, sub) in &self.subs {
                self.to_router.push(router::subscribe(f, sub.rid));
            }
        }
        self.direct_seen.clear();
        self.started = true;
        self.expiry = a.req.session_expiry;
        self.v5 = a.req.v5;
        self.live_will = a.req.will.clone();
        self.save(None);
        let Attach {
            req,
            peer,
            io,
            rbuf,
            guard,
        } = *a;
        self.shared
            .registry
            .update(&self.key, self.gen, req.cert_serial.clone(), self.expiry > 0, false);
        let (rd, wr) = tokio::io::split(io);
        let mut live = Live {
            rd,
            wr,
            rbuf,
            wbuf: BytesMut::with_capacity(64),
            aliases: HashMap::new(),
            last_rx: Instant::now(),
            req,
            peer,
            _guard: guard,
        };
        let props = codec::ConnAckProps {
            assigned_id: live.req.assigned.then_some(live.req.mqtt_client_id.as_str()),
            receive_max: self.shared.cfg.inflight_window,
            max_packet: self.shared.cfg.max_packet_size as u32,
            topic_alias_max: TOPIC_ALIAS_MAX,
            session_expiry: live.req.expiry_capped.then_some(self.expiry),
            server_keep_alive: live.req.server_keep_alive,
        };
        let before = live.wbuf.len();
        live.wbuf
            .extend_from_slice(&codec::encode_connack(0, resumed, live.req.v5, Some(&props)));
        if resumed {
            self.out.resend(&mut live.wbuf, live.req.v5, router::now_ms());
        }
        self.m().sent(&live.wbuf[before..]);
        if !resumed {
            self.in_qos2.clear();
        }
        Some(live)
    }

    /// Drops subscriptions, queued and in-flight messages (Clean Start on an existing session).
    fn reset(&mut self) {
        if self.direct {
            // Nothing was subscribed on a link yet.
            self.direct = false;
            self.shared.durable.set_direct(&self.key, false);
            self.subs.clear();
            self.by_rid.clear();
        }
        if self.stored {
            self.shared.durable.write(SessionOp::Delete(self.key.clone()));
            self.shared.durable.index(&self.key, self.origin, Vec::new());
            self.stored = false;
        }
        for f in self.subs.keys() {
            self.to_router.push(router::unsubscribe(f));
        }
        self.subs.clear();
        self.by_rid.clear();
        self.out.clear();
        self.in_qos2.clear();
    }

    /// The loop of a live connection.
    async fn serve(&mut self, live: &mut Live) -> End {
        if let Err(e) = self.flush_router().await {
            return e;
        }
        if self.direct {
            // Subscribed on the link: the router delivers from here on.
            self.direct = false;
            self.shared.durable.set_direct(&self.key, false);
        }
        // Packets that arrived together with CONNECT.
        if let Err(e) = self.on_bytes(live).await {
            return e;
        }
        loop {
            if let Err(e) = self.pump(live).await {
                return e;
            }
            if let Err(e) = self.sync_out().await {
                return e;
            }
            let ka = live.req.keep_alive;
            let deadline = live.last_rx + Duration::from_millis(ka as u64 * 1500);
            let reading = live.wbuf.len() < 2 * WBUF_HIGH && self.held.len() < MAX_HELD;
            let step: Step = tokio::select! {
                biased;
                c = self.ctrl.recv() => match c {
                    Some(Control::Attach(a)) => Err(End::Takeover(a)),
                    Some(Control::Close(code)) => Err(End::Revoked(code)),
                    Some(Control::ShutDown) => Err(End::ShutDown),
                    Some(Control::Invalidate(ch)) => {
                        self.rights.invalidate(ch.as_deref());
                        Ok(())
                    }
                    Some(Control::Deliver(d)) => self.on_direct(*d, true).await,
                    None => Ok(()),
                },
                r = live.wr.write(&live.wbuf), if !live.wbuf.is_empty() => match r {
                    Ok(0) | Err(_) => Err(End::Abnormal("write failed".into())),
                    Ok(n) => {
                        Metrics::add(&self.m().bytes_out, n as u64);
                        let _ = live.wbuf.split_to(n);
                        Ok(())
                    }
                },
                ok = committed(&mut self.held) => {
                    match self.held.pop_front() {
                        Some((_, replies)) if ok => {
                            self.m().sent(&replies);
                            live.wbuf.extend_from_slice(&replies);
                            Ok(())
                        }
                        _ => Err(End::Abnormal("session store write failed".into())),
                    }
                }
                n = next_notification(&mut self.link) => self.on_link(n, true).await,
                r = live.rd.read_buf(&mut live.rbuf), if reading => match r {
                    Ok(0) => Err(End::Abnormal("closed by peer".into())),
                    Err(e) => Err(End::Abnormal(e.to_string())),
                    Ok(n) => {
                        Metrics::add(&self.m().bytes_in, n as u64);
                        live.last_rx = Instant::now();
                        self.on_bytes(live).await
                    }
                },
                _ = tokio::time::sleep_until(deadline), if ka > 0 => {
                    if live.req.v5 {
                        Metrics::inc(&self.m().packets_out);
                        live.wbuf.extend_from_slice(&codec::encode_disconnect(reason::KEEP_ALIVE_TIMEOUT));
                    }
                    Err(End::Abnormal("keep-alive timeout".into()))
                }
            };
            if let Err(e) = step {
                // What the session wrote last (acknowledgements, DISCONNECT) is sent, bounded.
                if !live.wbuf.is_empty() {
                    let w = tokio::time::timeout(Duration::from_secs(1), live.wr.write_all(&live.wbuf)).await;
                    if matches!(w, Ok(Ok(()))) {
                        Metrics::add(&self.m().bytes_out, live.wbuf.len() as u64);
                    }
                    live.wbuf.clear();
                }
                return e;
            }
        }
    }

    /// A persistent session without connection: keeps its queue filling until a connection
    /// attaches (returned), it expires or it is revoked.
    async fn detached(&mut self) -> Option<Box<Attach>> {
        Metrics::inc(&self.m().sessions_persistent_offline);
        self.shared.registry.update(&self.key, self.gen, None, true, true);
        let expires = self
            .offline_until
            .take()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(self.expiry as u64));
        // The disconnect time is what a restart measures the session's expiry from.
        let left = expires.saturating_duration_since(Instant::now()).as_millis() as u64;
        let since = (router::now_ms() + left).saturating_sub(self.expiry as u64 * 1000);
        self.live_will = None;
        self.save(Some(since));
        let out = loop {
            let will_at = self.pending_will.as_ref().map(|w| w.1);
            let step = tokio::select! {
                biased;
                c = self.ctrl.recv() => match c {
                    Some(Control::Attach(a)) => break Some(a),
                    Some(Control::ShutDown) => {
                        self.shutting_down = true;
                        break None;
                    }
                    Some(Control::Close(_)) | None => {
                        if self.pending_will.take().is_some() {
                            Metrics::inc(&self.m().wills_suppressed);
                        }
                        break None;
                    }
                    Some(Control::Invalidate(ch)) => {
                        self.rights.invalidate(ch.as_deref());
                        Ok(())
                    }
                    Some(Control::Deliver(d)) => self.on_direct(*d, false).await,
                },
                n = next_notification(&mut self.link) => self.on_link(n, false).await,
                _ = tokio::time::sleep_until(will_at.unwrap_or(expires)), if will_at.is_some() => {
                    if let Some((w, _)) = self.pending_will.take() {
                        self.publish_will(w).await;
                        let left = expires.saturating_duration_since(Instant::now()).as_millis() as u64;
                        self.save(Some((router::now_ms() + left).saturating_sub(self.expiry as u64 * 1000)));
                    }
                    Ok(())
                }
                _ = tokio::time::sleep_until(expires) => {
                    Metrics::inc(&self.m().sessions_expired);
                    break None;
                }
            };
            let step = match step {
                Ok(()) => self.sync_out().await,
                e => e,
            };
            if step.is_err() {
                break None;
            }
        };
        self.shared
            .metrics
            .sessions_persistent_offline
            .fetch_sub(1, Ordering::Relaxed);
        out
    }

    /// Ends the session: its pending will, its link, its registration; connections that were
    /// handed to it meanwhile start a new session.
    async fn finish(mut self) {
        if let Some((w, _)) = self.pending_will.take() {
            if !self.shutting_down {
                self.publish_will(w).await;
            }
        }
        // A stopping server keeps persistent sessions for its next start.
        if self.stored && !self.shutting_down {
            self.shared.durable.write(SessionOp::Delete(self.key.clone()));
            self.shared.durable.index(&self.key, self.origin, Vec::new());
            self.stored = false;
        }
        if let Some((mut tx, _rx)) = self.link.take() {
            let _ = tx.send(router::disconnect()).await;
        }
        self.shared.registry.remove(&self.key, self.gen);
        while let Ok(c) = self.ctrl.try_recv() {
            if let Control::Attach(a) = c {
                if let Handed::New(gen, rx, a) = self.shared.registry.attach(&self.key, self.identity.as_ref(), a) {
                    spawn(self.shared.clone(), self.key.clone(), gen, rx, self.identity.clone(), a);
                }
            }
        }
    }

    /// Sends what is queued for the router: one router event for the whole batch.
    async fn flush_router(&mut self) -> Step {
        if self.to_router.is_empty() {
            return Ok(());
        }
        let Some((tx, _)) = self.link.as_mut() else {
            self.to_router.clear();
            return Ok(());
        };
        while tx.buffer().len() > MAX_LINK_BACKLOG {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut packets = std::mem::take(&mut self.to_router);
        let last = packets.pop();
        if !packets.is_empty() {
            tx.buffer().extend(packets);
        }
        if let Some(last) = last {
            if tx.send(last).await.is_err() {
                return Err(End::LinkGone);
            }
        }
        Ok(())
    }

    /// A message for the router (and the sink and the retained index).
    fn route(&mut self, t: &str, payload: &[u8], qos: u8, retain: bool, props: Bytes, expires_at_ms: u64) {
        if retain {
            let r = Retained {
                topic: t.to_string(),
                payload: Bytes::copy_from_slice(payload),
                qos,
                props: props.clone(),
                expires_at_ms,
            };
            if self.shared.retained.store(r) == crate::retained::Stored::Full {
                Metrics::inc(&self.m().retained_full);
                tracing::warn!(topic = t, "retained message not kept: mqtt.max_retained reached");
            }
        }
        let mut tag = router::Tag {
            qos,
            retain,
            origin: self.origin,
            expires_at_ms,
            msg: 0,
            props,
        };
        if let Some((id, wait)) = self
            .shared
            .durable_message(t.as_bytes(), payload, &tag, self.origin, true)
        {
            tag.msg = id;
            self.waits.extend(wait);
        }
        self.to_router.push(router::publish(
            Bytes::copy_from_slice(t.as_bytes()),
            router::encode(&tag, payload),
        ));
        if let (Some(id), Some(ct)) = (&self.identity, topic::parse(t, false)) {
            self.to_sink.push(Message {
                domain_id: id.domain_id.clone(),
                channel_id: ct.channel.to_string(),
                subtopic: ct.subtopic.to_string(),
                publisher: id.client_id.clone(),
                protocol: "mqtt",
                payload: Bytes::copy_from_slice(payload),
                received_at: (router::now_ms() * 1000) as i64,
                qos,
            });
        }
    }

    /// Hands accepted messages to the sink. QoS 1/2 messages that do not fit are waited for
    /// (the device's socket is not read meanwhile); QoS 0 ones are counted and not stored.
    async fn flush_sink(&mut self) {
        let mut batch = std::mem::take(&mut self.to_sink);
        loop {
            if batch.is_empty() {
                return;
            }
            let room = self.shared.sink.room();
            let refused = self.shared.sink.offer(batch);
            let (must, lost): (Vec<Message>, Vec<Message>) = refused.into_iter().partition(|m| m.qos > 0);
            self.count_unstored(lost.len());
            if must.is_empty() {
                return;
            }
            Metrics::inc(&self.m().pipeline_waits);
            room.await;
            batch = must;
        }
    }

    /// Everything the device sent that is complete in the read buffer.
    async fn on_bytes(&mut self, live: &mut Live) -> Step {
        let mut replies = BytesMut::new();
        let mut result = Ok(());
        let mut qos_in_read = 0usize;
        loop {
            let f = match codec::next_frame(&mut live.rbuf, self.shared.cfg.max_packet_size) {
                Ok(Some(f)) => {
                    Metrics::inc(&self.m().packets_in);
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    if live.req.v5 {
                        let code = if matches!(e, FrameError::TooLarge(_)) {
                            reason::PACKET_TOO_LARGE
                        } else {
                            reason::MALFORMED
                        };
                        replies.extend_from_slice(&codec::encode_disconnect(code));
                    }
                    Metrics::inc(&self.m().malformed);
                    result = Err(End::Abnormal(e.to_string()));
                    break;
                }
            };
            let r = self.on_packet(live, &f, &mut replies, &mut qos_in_read).await;
            if let Err(e) = r {
                if matches!(e, End::Abnormal(_)) {
                    Metrics::inc(&self.m().malformed);
                }
                result = Err(e);
                break;
            }
        }
        // Acknowledgements leave only once the sink took what they acknowledge, and the
        // session store committed what persistent sessions must not lose. The commit is not
        // waited for here: the replies are held, in order, and the device's next packets are
        // read meanwhile, so one commit covers many of its messages.
        self.flush_sink().await;
        if !self.waits.is_empty() || !self.held.is_empty() {
            let waits = std::mem::take(&mut self.waits);
            match self.held.back_mut() {
                Some(last) if waits.is_empty() => last.1.extend_from_slice(&replies),
                _ => self.held.push_back((waits, replies)),
            }
        } else {
            self.m().sent(&replies);
            live.wbuf.extend_from_slice(&replies);
        }
        self.flush_router().await?;
        result
    }

    async fn on_packet(&mut self, live: &mut Live, f: &Frame, replies: &mut BytesMut, qos_in_read: &mut usize) -> Step {
        let v5 = live.req.v5;
        let protocol = |replies: &mut BytesMut, code: u8, e: String| {
            if v5 {
                replies.extend_from_slice(&codec::encode_disconnect(code));
            }
            Err(End::Abnormal(e))
        };
        match f.kind() {
            codec::PUBLISH => self.on_publish(live, f, replies, qos_in_read).await,
            codec::SUBSCRIBE => match codec::subscribe(f, v5) {
                Ok(s) => self.on_subscribe(live, s, replies).await,
                Err(e) => protocol(replies, reason::MALFORMED, e.to_string()),
            },
            codec::UNSUBSCRIBE => match codec::unsubscribe(f, v5) {
                Ok((pkid, filters)) => {
                    let mut codes = Vec::with_capacity(filters.len());
                    for fl in filters {
                        match self.subs.remove(fl) {
                            Some(s) => {
                                self.by_rid.remove(&s.rid);
                                self.to_router.push(router::unsubscribe(fl));
                                codes.push(reason::SUCCESS);
                            }
                            None => codes.push(reason::NO_SUBSCRIPTION_EXISTED),
                        }
                    }
                    replies.extend_from_slice(&codec::encode_unsuback(pkid, &codes, v5));
                    if self.stored {
                        // The UNSUBACK leaves once the subscriptions are committed.
                        self.save_with(None, true);
                    }
                    Ok(())
                }
                Err(e) => protocol(replies, reason::MALFORMED, e.to_string()),
            },
            codec::PUBACK | codec::PUBREC | codec::PUBCOMP | codec::PUBREL => {
                let (pkid, code) = match codec::ack(f) {
                    Ok(x) => x,
                    Err(e) => return protocol(replies, reason::MALFORMED, e.to_string()),
                };
                match f.kind() {
                    codec::PUBACK => {
                        self.out.puback(pkid);
                    }
                    codec::PUBREC => {
                        if self.out.pubrec(pkid, code) {
                            replies.extend_from_slice(&codec::encode_ack(codec::PUBREL, pkid, None));
                        }
                    }
                    codec::PUBCOMP => {
                        self.out.pubcomp(pkid);
                    }
                    _ => {
                        let known = self.in_qos2.remove(&pkid);
                        if known && self.stored {
                            self.shared.durable.write(SessionOp::Inbound {
                                key: self.key.clone(),
                                inbound: durable::encode_inbound(self.in_qos2.iter()),
                            });
                        }
                        let r = (v5 && !known).then_some(reason::PACKET_ID_NOT_FOUND);
                        replies.extend_from_slice(&codec::encode_ack(codec::PUBCOMP, pkid, r));
                    }
                }
                Ok(())
            }
            codec::PINGREQ => {
                replies.extend_from_slice(&codec::pingresp());
                Ok(())
            }
            codec::DISCONNECT => match codec::disconnect(f, v5) {
                Ok((code, expiry)) => {
                    if let Some(e) = expiry {
                        if self.expiry == 0 && e > 0 {
                            return protocol(
                                replies,
                                reason::PROTOCOL_ERROR,
                                "session expiry set at DISCONNECT".into(),
                            );
                        }
                        self.expiry = e.min(self.shared.cfg.max_session_expiry.as_secs().min(u32::MAX as u64) as u32);
                        self.shared.registry.update(
                            &self.key,
                            self.gen,
                            live.req.cert_serial.clone(),
                            self.expiry > 0,
                            false,
                        );
                    }
                    Err(End::Normal {
                        will: code == reason::WILL,
                    })
                }
                Err(e) => protocol(replies, reason::MALFORMED, e.to_string()),
            },
            k => protocol(
                replies,
                reason::PROTOCOL_ERROR,
                format!("unexpected packet type {k} from client"),
            ),
        }
    }

    async fn on_publish(
        &mut self,
        live: &mut Live,
        f: &Frame,
        replies: &mut BytesMut,
        qos_in_read: &mut usize,
    ) -> Step {
        let v5 = live.req.v5;
        let fail = |replies: &mut BytesMut, code: u8, why: &str| {
            if v5 {
                replies.extend_from_slice(&codec::encode_disconnect(code));
            }
            Err(End::Abnormal(why.to_string()))
        };
        let p = match codec::publish(f, v5) {
            Ok(p) => p,
            Err(FrameError::Protocol(why)) => return fail(replies, reason::PROTOCOL_ERROR, why),
            Err(e) => return fail(replies, reason::MALFORMED, &e.to_string()),
        };
        // Client-to-server topic aliases are resolved here, exactly once.
        let topic: String = match p.alias {
            Some(a) if a == 0 || a > TOPIC_ALIAS_MAX => {
                return fail(replies, reason::TOPIC_ALIAS_INVALID, "topic alias out of range")
            }
            Some(a) if p.topic.is_empty() => match live.aliases.get(&a) {
                Some(t) => t.clone(),
                None => return fail(replies, reason::PROTOCOL_ERROR, "unknown topic alias"),
            },
            Some(a) => {
                live.aliases.insert(a, p.topic.to_string());
                p.topic.to_string()
            }
            None => p.topic.to_string(),
        };
        if !codec::valid_topic(&topic) {
            return fail(replies, reason::TOPIC_NAME_INVALID, "invalid topic name in PUBLISH");
        }
        if p.qos == 2 && self.in_qos2.contains(&p.pkid) {
            // A resent QoS 2 PUBLISH whose PUBREC was lost: acknowledged again, not routed again.
            replies.extend_from_slice(&codec::encode_ack(codec::PUBREC, p.pkid, None));
            return Ok(());
        }
        if p.qos > 0 {
            *qos_in_read += 1;
            if *qos_in_read + self.in_qos2.len() > self.shared.cfg.inflight_window as usize {
                return fail(replies, reason::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded");
            }
        }
        let auth = self.shared.auth.clone();
        if !self
            .rights
            .allowed(auth.as_ref(), self.identity.as_ref(), Action::Publish, &topic)
            .await
        {
            Metrics::inc(&self.m().refused_publish);
            tracing::info!(client = %self.client(), mqtt_client_id = %live.req.mqtt_client_id, topic = %topic, reason = "no publish right on this topic", "PUBLISH refused");
            if !v5 {
                return Err(End::Abnormal("publish not allowed".into()));
            }
            match p.qos {
                0 => return fail(replies, reason::NOT_AUTHORIZED, "publish not allowed"),
                1 => replies.extend_from_slice(&codec::encode_ack(codec::PUBACK, p.pkid, Some(reason::NOT_AUTHORIZED))),
                _ => replies.extend_from_slice(&codec::encode_ack(codec::PUBREC, p.pkid, Some(reason::NOT_AUTHORIZED))),
            }
            return Ok(());
        }
        Metrics::inc(&self.m().messages_in);
        let props: Bytes = if p.props.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(p.props.concat())
        };
        let expires = p.expiry.map_or(0, |e| router::now_ms() + e as u64 * 1000);
        let (qos, retain, pkid) = (p.qos, p.retain, p.pkid);
        let transport = live.req.transport;
        self.route(&topic, p.payload, qos, retain, props, expires);
        if let Some(m) = self.to_sink.last_mut() {
            m.protocol = crate::message_protocol(transport);
        }
        match qos {
            1 => replies.extend_from_slice(&codec::encode_ack(codec::PUBACK, pkid, None)),
            2 => {
                self.in_qos2.insert(pkid);
                if self.stored {
                    // Exactly once across a restart: the PUBREC leaves after this commits.
                    let w = self.shared.durable.write_wait(SessionOp::Inbound {
                        key: self.key.clone(),
                        inbound: durable::encode_inbound(self.in_qos2.iter()),
                    });
                    self.waits.push(w);
                }
                replies.extend_from_slice(&codec::encode_ack(codec::PUBREC, pkid, None));
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_subscribe(&mut self, live: &mut Live, s: codec::SubscribeInfo<'_>, replies: &mut BytesMut) -> Step {
        let v5 = live.req.v5;
        let denied = if v5 {
            reason::NOT_AUTHORIZED
        } else {
            reason::UNSPECIFIED
        };
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let auth = self.shared.auth.clone();
        for (filter, o) in &s.filters {
            let shared_sub = crate::rights::shared_filter(filter);
            let inner = shared_sub.map(|(_, f)| f).unwrap_or(filter);
            let (code, why) = if !codec::valid_filter(inner)
                || (filter.starts_with('$') && shared_sub.is_none())
                || (shared_sub.is_some() && o.no_local)
            {
                (reason::UNSPECIFIED, "invalid or unsupported filter")
            } else if !self
                .rights
                .allowed(auth.as_ref(), self.identity.as_ref(), Action::Subscribe, filter)
                .await
            {
                (denied, "no subscribe right on this filter")
            } else if !self.subs.contains_key(*filter) && self.subs.len() >= MAX_SUBSCRIPTIONS {
                let code = if v5 {
                    reason::QUOTA_EXCEEDED
                } else {
                    reason::UNSPECIFIED
                };
                (code, "too many subscriptions")
            } else {
                (o.qos, "")
            };
            if code >= 0x80 {
                Metrics::inc(&self.m().refused_subscribe);
                tracing::info!(client = %self.client(), mqtt_client_id = %live.req.mqtt_client_id, filter = %filter, reason = why, "SUBSCRIBE refused");
                codes.push(code);
                continue;
            }
            let existed = self.subs.contains_key(*filter);
            let rid = match self.subs.get(*filter) {
                Some(old) => old.rid,
                None => {
                    let rid = self.next_rid;
                    self.next_rid += 1;
                    rid
                }
            };
            self.subs.insert(
                filter.to_string(),
                Sub {
                    rid,
                    qos: o.qos,
                    no_local: o.no_local,
                    rap: o.retain_as_published,
                    sub_id: s.sub_id,
                },
            );
            self.by_rid.insert(rid, filter.to_string());
            if !existed {
                self.to_router.push(router::subscribe(filter, rid));
            }
            codes.push(o.qos);
            // Retained messages: not for shared subscriptions; Retain Handling 1 only for a
            // new subscription, 2 never.
            if shared_sub.is_none() && (o.retain_handling == 0 || (o.retain_handling == 1 && !existed)) {
                for r in self.shared.retained.matching(filter) {
                    retained.push((r, o.qos, s.sub_id));
                }
            }
        }
        replies.extend_from_slice(&codec::encode_suback(s.pkid, &codes, v5));
        if self.stored {
            // The SUBACK leaves once the subscriptions are committed, and before the retained
            // messages it brings: everything held is waited for here.
            self.save_with(None, true);
            self.drain_held(live).await?;
        }
        for (r, granted, sub_id) in retained {
            if !self
                .rights
                .allowed(auth.as_ref(), self.identity.as_ref(), Action::Deliver, &r.topic)
                .await
            {
                continue;
            }
            let mut d = Delivery {
                topic: Bytes::copy_from_slice(r.topic.as_bytes()),
                payload: r.payload.clone(),
                props: r.props.clone(),
                qos: r.qos.min(granted),
                retain: true,
                expires_at_ms: r.expires_at_ms,
                sub_ids: sub_id.into_iter().collect(),
                msg: 0,
            };
            if self.stored && d.qos > 0 {
                d.msg = self.own_entry(&d);
            }
            self.enqueue(d, true)?;
        }
        Ok(())
    }

    /// A notification from the router (or the link's end).
    async fn on_link(&mut self, n: Result<Option<Notification>, ()>, live: bool) -> Step {
        let mut n = match n {
            Ok(n) => n,
            Err(()) => {
                tracing::error!(client = %self.client(), "the router dropped a session's link");
                return Err(End::LinkGone);
            }
        };
        let mut unscheduled = false;
        for _ in 0..DRAIN_BATCH {
            match n.take() {
                Some(Notification::Forward(f)) => self.on_forward(f, live).await?,
                Some(Notification::Unschedule) => unscheduled = true,
                Some(Notification::Disconnect(..)) => {
                    tracing::error!(client = %self.client(), "the router disconnected a session's link");
                    return Err(End::LinkGone);
                }
                Some(_) | None => {}
            }
            match self.link.as_mut().and_then(|l| l.1.next().now_or_never()) {
                Some(Ok(next)) => n = next,
                Some(Err(_)) => return Err(End::LinkGone),
                None => break,
            }
        }
        if unscheduled {
            if let Some((_, rx)) = self.link.as_ref() {
                if rx.wake().await.is_err() {
                    return Err(End::LinkGone);
                }
            }
        }
        Ok(())
    }

    async fn on_forward(&mut self, f: rumqttd::Forward, live: bool) -> Step {
        let Some(rid) = f
            .properties
            .as_ref()
            .and_then(|p| p.subscription_identifiers.first().copied())
        else {
            return Ok(());
        };
        let Some(sub) = self.by_rid.get(&rid).and_then(|fl| self.subs.get(fl)) else {
            return Ok(());
        };
        let Some((tag, payload)) = router::decode(f.publish.payload) else {
            return Ok(());
        };
        let entry = if self.stored { tag.msg } else { 0 };
        if entry != 0 && self.direct_seen.remove(&entry) {
            // Already received directly (see `direct`).
            return Ok(());
        }
        if sub.no_local && tag.origin == self.origin {
            return Ok(());
        }
        let d = Delivery {
            topic: f.publish.topic,
            payload,
            props: tag.props,
            qos: tag.qos.min(sub.qos),
            retain: sub.rap && tag.retain,
            expires_at_ms: tag.expires_at_ms,
            sub_ids: sub.sub_id.into_iter().collect(),
            msg: entry,
        };
        // Persistent sessions queue only QoS 1/2 while offline.
        if !live && d.qos == 0 {
            return Ok(());
        }
        self.admit(d, live).await
    }

    /// A message handed over directly (restored session without subscriptions on a link).
    async fn on_direct(&mut self, d: Delivery, live: bool) -> Step {
        if self.link.is_some() {
            self.direct_seen.insert(d.msg);
        }
        self.admit(d, live).await
    }

    /// A delivery for this session, from the router or directly: not when expired or when
    /// the client may not receive it (its stored entry goes then), else queued (and written
    /// as an entry of this session when it is persistent and nobody wrote one).
    async fn admit(&mut self, mut d: Delivery, live: bool) -> Step {
        if d.expires_at_ms != 0 && d.expires_at_ms <= router::now_ms() {
            Metrics::inc(&self.m().dropped_expired);
            self.drop_entry(d.msg);
            return Ok(());
        }
        let t = std::str::from_utf8(&d.topic).unwrap_or("");
        let auth = self.shared.auth.clone();
        if !self
            .rights
            .allowed(auth.as_ref(), self.identity.as_ref(), Action::Deliver, t)
            .await
        {
            Metrics::inc(&self.m().refused_delivery);
            self.drop_entry(d.msg);
            return Ok(());
        }
        if d.msg == 0 && d.qos > 0 && self.stored {
            // Not written by its publisher for this session (a shared subscription's
            // message, or one that raced this subscription): written here.
            d.msg = self.own_entry(&d);
        }
        self.enqueue(d, live)
    }

    /// A queue entry that will not be delivered goes from the store.
    fn drop_entry(&mut self, msg: u64) {
        if msg != 0 && self.stored {
            self.shared.durable.write(SessionOp::Ack {
                key: self.key.clone(),
                msg,
            });
        }
    }

    /// Writes a delivery as a queue entry of this session only (not waited for).
    fn own_entry(&self, d: &Delivery) -> u64 {
        let size = d.size() as u64;
        if !self.shared.durable.has_room(size) {
            Metrics::inc(&self.m().dropped_store_full);
            return 0;
        }
        self.shared.durable.add_bytes(size);
        let id = self.shared.durable.next_id();
        let body = durable::encode_body(&durable::Body {
            topic: d.topic.clone(),
            props: d.props.clone(),
            retain: d.retain,
            expires_at_ms: d.expires_at_ms,
            payload: d.payload.clone(),
        });
        self.shared.durable.write(SessionOp::Message {
            id,
            body,
            targets: vec![(self.key.clone(), durable::encode_meta(d.qos, &d.sub_ids))],
        });
        id
    }

    /// Waits for every held reply (moving them to the write buffer in order) and for the
    /// writes of this read.
    async fn drain_held(&mut self, live: &mut Live) -> Step {
        while !self.held.is_empty() {
            let ok = committed(&mut self.held).await;
            match self.held.pop_front() {
                Some((_, replies)) if ok => {
                    self.m().sent(&replies);
                    live.wbuf.extend_from_slice(&replies)
                }
                _ => return Err(End::Abnormal("session store write failed".into())),
            }
        }
        self.await_durable().await
    }

    /// Waits for the session store writes this read depends on.
    async fn await_durable(&mut self) -> Step {
        let mut ok = true;
        for w in std::mem::take(&mut self.waits) {
            ok &= w.await.unwrap_or(false);
        }
        if ok {
            Ok(())
        } else {
            Err(End::Abnormal("session store write failed".into()))
        }
    }

    /// Writes what the outbound side did to stored entries: acknowledged or dropped ones go,
    /// QoS 2 packet ids and releases are recorded (a QoS 2 PUBLISH leaves only once its packet
    /// id is stored).
    async fn sync_out(&mut self) -> Step {
        if self.out.gone.is_empty() && self.out.marks.is_empty() {
            return Ok(());
        }
        let gone = std::mem::take(&mut self.out.gone);
        let marks = std::mem::take(&mut self.out.marks);
        for (_, n) in &gone {
            self.shared.durable.sub_bytes(*n as u64);
        }
        if !self.stored {
            return Ok(());
        }
        let mut wait = None;
        for (msg, state, pkid) in marks {
            let op = SessionOp::Mark {
                key: self.key.clone(),
                msg,
                state,
                pkid,
            };
            if state == durable::SENT {
                wait = Some(self.shared.durable.write_wait(op));
            } else {
                self.shared.durable.write(op);
            }
        }
        for (msg, _) in gone {
            self.shared.durable.write(SessionOp::Ack {
                key: self.key.clone(),
                msg,
            });
        }
        if let Some(w) = wait {
            if !w.await.unwrap_or(false) {
                return Err(End::Abnormal("session store write failed".into()));
            }
        }
        Ok(())
    }

    /// Writes the session record (or removes it when the session is not persistent) and
    /// indexes its subscriptions for the publisher side.
    fn save(&mut self, disconnected_at_ms: Option<u64>) {
        self.save_with(disconnected_at_ms, false)
    }

    /// `save`; with `wait`, the replies of the current read leave only after the commit.
    fn save_with(&mut self, disconnected_at_ms: Option<u64>, wait: bool) {
        if !self.shared.durable.enabled() {
            return;
        }
        if self.expiry == 0 {
            if self.stored {
                self.shared.durable.write(SessionOp::Delete(self.key.clone()));
                self.shared.durable.index(&self.key, self.origin, Vec::new());
                self.stored = false;
            }
            return;
        }
        let now = router::now_ms();
        let will = match (&self.pending_will, &self.live_will) {
            (Some((w, at)), _) => {
                let left = at.saturating_duration_since(Instant::now()).as_millis() as u64;
                Some((w.clone(), now + left))
            }
            (None, Some(w)) => Some((w.clone(), 0)),
            (None, None) => None,
        };
        let state = durable::State {
            v5: self.v5,
            subs: self
                .subs
                .iter()
                .map(|(f, s)| (f.clone(), s.qos, s.no_local, s.rap, s.sub_id))
                .collect(),
            will,
        };
        let rec = durable::record(
            &self.key,
            self.identity.as_ref(),
            self.expiry,
            disconnected_at_ms,
            &state,
            durable::encode_inbound(self.in_qos2.iter()),
        );
        if wait {
            let w = self.shared.durable.write_wait(SessionOp::Put(rec));
            self.waits.push(w);
        } else {
            self.shared.durable.write(SessionOp::Put(rec));
        }
        self.index_subscriptions();
        self.stored = true;
    }

    /// Puts the session's subscriptions in the index of persistent subscriptions.
    fn index_subscriptions(&self) {
        self.shared.durable.index(
            &self.key,
            self.origin,
            self.subs
                .iter()
                .map(|(f, s)| (f.clone(), s.qos, s.no_local, s.sub_id))
                .collect(),
        );
    }

    fn enqueue(&mut self, d: Delivery, live: bool) -> Step {
        let before = (self.out.evicted_qos0, self.out.evicted_full);
        let entry = d.msg;
        let r = self.out.push(d, self.expiry > 0);
        let evicted = self.out.evicted_qos0 - before.0;
        if evicted > 0 {
            self.m().dropped_qos0_full.fetch_add(evicted, Ordering::Relaxed);
        }
        let evicted = self.out.evicted_full - before.1;
        if evicted > 0 {
            self.m().dropped_queue_full.fetch_add(evicted, Ordering::Relaxed);
            if !self.drop_logged {
                self.drop_logged = true;
                tracing::warn!(
                    client = %self.client(),
                    session = %self.key,
                    limit_messages = self.shared.cfg.max_queued_messages,
                    limit_bytes = self.shared.cfg.max_queued_bytes,
                    "persistent session queue full: dropping its oldest QoS 1/2 messages (logged once per session)"
                );
            }
        }
        match r {
            Push::Queued => Ok(()),
            Push::DroppedQos0 => {
                Metrics::inc(&self.m().dropped_qos0_full);
                Ok(())
            }
            Push::Full if live && self.expiry == 0 => {
                // A clean session that cannot keep up is disconnected rather than letting it
                // hold more memory.
                Metrics::inc(&self.m().disconnected_slow);
                tracing::warn!(client = %self.client(), "subscriber too slow: outbound queue full, disconnecting");
                Err(End::Overflow)
            }
            Push::Full => {
                self.drop_entry(entry);
                let n = self.m().dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(client = %self.client(), dropped_total = n + 1, "session queue full: QoS 1/2 message dropped");
                }
                Ok(())
            }
        }
    }

    /// Moves deliveries from the queue to the write buffer, within the device's Receive
    /// Maximum and Maximum Packet Size, checking rights once more.
    async fn pump(&mut self, live: &mut Live) -> Step {
        let now = router::now_ms();
        let v5 = live.req.v5;
        let receive_max = live.req.receive_max as usize;
        let auth = self.shared.auth.clone();
        while live.wbuf.len() < WBUF_HIGH {
            let mut expired = 0;
            let next = self.out.next(receive_max, now, &mut expired);
            if expired > 0 {
                self.m().dropped_expired.fetch_add(expired, Ordering::Relaxed);
            }
            let Some((pkid, d)) = next else { break };
            let t = std::str::from_utf8(&d.topic).unwrap_or("");
            let allowed = self
                .rights
                .allowed(auth.as_ref(), self.identity.as_ref(), Action::Deliver, t)
                .await;
            let fits = live.req.max_packet.is_none_or(|m| d.encoded_len(v5, now) <= m);
            if !allowed || !fits {
                if !allowed {
                    Metrics::inc(&self.m().refused_delivery);
                } else {
                    Metrics::inc(&self.m().dropped_too_large);
                }
                if pkid != 0 {
                    self.out.abandon(pkid);
                }
                continue;
            }
            Metrics::inc(&self.m().messages_out);
            Metrics::inc(&self.m().packets_out);
            d.encode(&mut live.wbuf, pkid, false, v5, now);
        }
        Ok(())
    }
}

/// Replies waiting for session store commits.
type Held = std::collections::VecDeque<(Vec<oneshot::Receiver<bool>>, BytesMut)>;

/// Resolves when every commit the first held reply waits for is done (true if all
/// succeeded, false at the first failure); pending forever when nothing is held.
/// Cancel-safe: receivers are removed as they complete.
async fn committed(held: &mut Held) -> bool {
    let Some((waits, _)) = held.front_mut() else {
        return std::future::pending().await;
    };
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < waits.len() {
            match std::future::Future::poll(std::pin::Pin::new(&mut waits[i]), cx) {
                std::task::Poll::Ready(Ok(true)) => {
                    waits.swap_remove(i);
                }
                std::task::Poll::Ready(_) => return std::task::Poll::Ready(false),
                std::task::Poll::Pending => i += 1,
            }
        }
        if waits.is_empty() {
            std::task::Poll::Ready(true)
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The next notification of a session's link (pending forever without a link).
async fn next_notification(link: &mut Option<(LinkTx, LinkRx)>) -> Result<Option<Notification>, ()> {
    match link.as_mut() {
        Some((_, rx)) => rx.next().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

/// Recreates the persistent sessions found in the store, each with its subscriptions, queue,
/// in-flight QoS state and pending will, offline and without a router link until a device
/// attaches (meanwhile its messages come directly from their publishers, see `durable`);
/// expired ones are removed with their queues. Returns once every restored session is
/// registered and indexed.
pub(crate) async fn restore_all(shared: Arc<Shared>, loaded: SessionsLoaded) {
    let started = std::time::Instant::now();
    let now = router::now_ms();
    let mut queued: HashMap<String, Vec<crate::StoredDelivery>> = HashMap::new();
    for q in loaded.queued {
        queued.entry(q.session.clone()).or_default().push(q);
    }
    let (mut restored, mut expired) = (0u64, 0u64);
    for rec in loaded.sessions {
        let since = rec.disconnected_at_ms.unwrap_or(now);
        let ends_at = since.saturating_add(rec.expiry_s as u64 * 1000);
        let state = durable::decode_state(rec.state.clone());
        let Some(state) = state.filter(|_| ends_at > now && rec.expiry_s > 0) else {
            expired += 1;
            shared.durable.write(SessionOp::Delete(rec.key.clone()));
            continue;
        };
        let Some((gen, ctrl)) = shared.registry.register(&rec.key, rec.owner.as_ref()) else {
            continue;
        };
        let mut s = Session::new(shared.clone(), rec.key.clone(), gen, ctrl, rec.owner.clone());
        s.started = true;
        s.stored = true;
        s.v5 = state.v5;
        s.expiry = rec.expiry_s;
        s.offline_until = Some(Instant::now() + Duration::from_millis(ends_at - now));
        s.in_qos2 = durable::decode_inbound(rec.inbound.clone()).into_iter().collect();
        for (filter, qos, no_local, rap, sub_id) in state.subs {
            let rid = s.next_rid;
            s.next_rid += 1;
            if crate::rights::shared_filter(&filter).is_none() && filter.starts_with('$') {
                continue;
            }
            s.by_rid.insert(rid, filter.clone());
            s.subs.insert(
                filter,
                Sub {
                    rid,
                    qos,
                    no_local,
                    rap,
                    sub_id,
                },
            );
        }
        if let Some((w, due)) = state.will {
            // A will whose connection was live when the process stopped is due after its
            // delay from now; one that was waiting keeps its time.
            let at = if due == 0 {
                Instant::now() + Duration::from_secs(w.delay.min(rec.expiry_s) as u64)
            } else {
                Instant::now() + Duration::from_millis(due.saturating_sub(now))
            };
            s.pending_will = Some((w, at));
        }
        let mut entries = Vec::new();
        for q in queued.remove(&rec.key).unwrap_or_default() {
            let (Some(body), Some((qos, sub_ids))) = (durable::decode_body(q.body), durable::decode_meta(q.meta))
            else {
                shared.durable.write(SessionOp::Ack {
                    key: rec.key.clone(),
                    msg: q.msg,
                });
                continue;
            };
            let d = Delivery {
                topic: body.topic,
                payload: body.payload,
                props: body.props,
                qos,
                retain: body.retain,
                expires_at_ms: body.expires_at_ms,
                sub_ids,
                msg: q.msg,
            };
            shared.durable.add_bytes(d.size() as u64);
            entries.push((q.state, q.pkid, d));
        }
        s.out.restore(entries);
        s.index_subscriptions();
        // No router link until a device attaches (building 10,000 links is what would make
        // a restart slow): its publishers hand its messages over directly.
        s.direct = true;
        s.shared.durable.set_direct(&s.key, true);
        restored += 1;
        let _ = s.sync_out().await;
        let rt = s.shared.rt.clone();
        rt.spawn(s.run(None));
    }
    shared.metrics.sessions_restored.fetch_add(restored, Ordering::Relaxed);
    shared.metrics.sessions_expired.fetch_add(expired, Ordering::Relaxed);
    if restored + expired > 0 || loaded.dropped > 0 {
        tracing::info!(
            restored,
            expired,
            revoked = loaded.dropped,
            ms = started.elapsed().as_millis() as u64,
            "persistent sessions restored from the store"
        );
    }
}
