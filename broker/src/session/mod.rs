//! One MQTT session: a task per router client id that owns the session's link to the router,
//! its subscriptions, its outbound queue and QoS state, and the connection currently attached
//! to it. A connection ends; a persistent session outlives it (its link stays open and its
//! queue keeps filling with QoS 1/2 messages) until a connection with the same id attaches
//! again or the session expires. Takeover is a new connection attaching to the running task,
//! so there is never a second link with the same router id.
//!
//! Each of the session's jobs has its own file: `lifecycle` (the task: connections come and
//! go, detached time, the end), `attach` (a connection joining: clean start or resumption,
//! CONNACK, redelivery), `live` (the read/write loop of a live connection), `inbound`
//! (PUBLISH, UNSUBSCRIBE, acknowledgements, PINGREQ, DISCONNECT from the device), `subscribe`
//! (SUBSCRIBE and the retained messages it brings), `subs` (the subscription bookkeeping),
//! `delivery` (router and direct deliveries: admit, queue, pump), `persist` (write-through of
//! persistent sessions and the replies held for their commits), `recover` (reading the
//! stored queue again after live copies may have been missed), `will` and `restore` (the
//! persistent sessions found in the store at start-up).

mod attach;
mod delivery;
mod inbound;
mod lifecycle;
mod live;
mod persist;
mod recover;
mod restore;
mod subs;
mod subscribe;
#[cfg(test)]
mod tests;
mod will;

pub(crate) use restore::restore_all;
pub(crate) use subs::SubOptions;
use subs::Subscriptions;

use crate::codec::{self, Frame, FrameError};
use crate::connect::{self, Attach, BoxIo, ConnGuard, ConnectReq, Will};
use crate::durable;
use crate::ingress::{Publish, Refused, ToSink};
use crate::outbound::{Delivery, Outbound, Push};
use crate::reason::{self, code};
use crate::registry::{Control, Handed};
use crate::rights::{Action, RightsCache};
use crate::{router, topic, Identity, Message, Metrics, PayloadFormat, SessionOp, SessionsLoaded, Shared, Transport};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
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
/// The write buffer stops taking deliveries beyond this, and the socket is not read beyond
/// twice this (the device is not reading what we send).
const WBUF_HIGH: usize = 64 * 1024;
/// Packets waiting in the link for the router before the session stops reading its device.
const MAX_LINK_BACKLOG: usize = 2000;
/// Read batches whose replies wait for session store commits before the device's socket is
/// not read any more.
const MAX_HELD: usize = 64;
/// A device whose socket took bytes within this counts as reading (`pressure`).
const READING: Duration = Duration::from_millis(100);
/// Notifications taken from the link per turn of the loop.
const DRAIN_BATCH: usize = 512;

/// The connection currently attached.
struct Live {
    req: ConnectReq,
    peer: std::net::SocketAddr,
    rd: ReadHalf<BoxIo>,
    wr: WriteHalf<BoxIo>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    aliases: HashMap<u16, String>,
    /// Topic aliases given to the device (v5 Topic Alias Maximum > 0).
    out_aliases: crate::outbound::Aliases,
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
        let subs = Subscriptions::new(shared.interest.clone(), &key)
            .with_reader(crate::pressure::Reader::new(shared.pressure.clone(), origin));
        Session {
            shared: shared.clone(),
            key,
            gen,
            ctrl,
            identity,
            origin,
            link: None,
            subs,
            rights: RightsCache::default(),
            out: Outbound::new(max_bytes, max_msgs),
            in_qos2: HashSet::new(),
            expiry: 0,
            started: false,
            pending_will: None,
            to_router: Vec::new(),
            to_router_marks: crate::pressure::Batch::default(),
            to_sink: Vec::new(),
            v5: false,
            stored: false,
            drop_logged: false,
            waits: Vec::new(),
            offline_until: None,
            held: Held::new(),
            direct: false,
            direct_seen: HashSet::new(),
            copies: Copies::default(),
            catching_up: None,
            catch_up_again: false,
            recovered: HashSet::new(),
            live_will: None,
            shutting_down: false,
            transport: Transport::Mqtt,
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
    link: Option<router::Link>,
    subs: Subscriptions,
    rights: RightsCache,
    out: Outbound,
    /// QoS 2 publishes received (PUBREC sent) and not yet released: exactly once.
    in_qos2: HashSet<u16>,
    /// Seconds the session outlives its connection.
    expiry: u32,
    started: bool,
    pending_will: Option<(Will, Instant)>,
    to_router: Vec<Packet>,
    /// The scopes, topics and marks of the messages in `to_router` (`pressure`).
    to_router_marks: crate::pressure::Batch,
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
    /// Messages delivered for several subscriptions at once (their other copies are dropped).
    copies: Copies,
    /// A catch-up read runs: the entries that left since it began (see `recover`).
    catching_up: Option<HashSet<u64>>,
    /// Another catch-up was asked for while one ran: its read may predate the entries of the
    /// newer gap, so one more follows it.
    catch_up_again: bool,
    /// Entries the last catch-up took from the store (their live copies are dropped).
    recovered: HashSet<u64>,
    /// The will of the connection attached now (kept in the session record).
    live_will: Option<Will>,
    /// The server stops: the session ends without deleting what the store keeps of it.
    shutting_down: bool,
    /// The transport of the last connection (its will is published as coming over it).
    transport: Transport,
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
            claim: live.req.claim,
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

    /// The canonical form of a topic or filter this client gave in Magistrala's
    /// `m/<its domain>/c/<channel>` form (`None`: not in that form; used as it is).
    fn canonical(&self, t: &str) -> Option<String> {
        let i = self.identity.as_ref()?;
        crate::topic::canonical(t, &i.domain_id)
    }
}

/// The last messages (router mark, topic) delivered once for several subscriptions of a
/// session, so that the router's other copies of them are recognised.
#[derive(Default)]
struct Copies {
    seen: HashSet<(u64, Bytes)>,
    order: std::collections::VecDeque<(u64, Bytes)>,
}

impl Copies {
    /// Remembered: how many of the last messages with several copies are.
    const KEPT: usize = 4096;

    /// True for the first copy of the message; false for the others.
    fn first(&mut self, mark: u64, topic: &Bytes) -> bool {
        let key = (mark, topic.clone());
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= Self::KEPT {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

/// Replies waiting for session store commits.
type Held = std::collections::VecDeque<(Vec<oneshot::Receiver<bool>>, BytesMut)>;
