//! Starting the broker and the handle the root crate holds.

use crate::listeners::{accept_tcp, accept_tls};
use crate::*;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// What the broker is plugged into.
pub struct Ports {
    pub auth: Arc<dyn Authorizer>,
    pub sink: Arc<dyn MessageSink>,
    pub retained: Option<Arc<dyn RetainedStore>>,
    pub sessions: Option<Arc<dyn SessionStore>>,
    pub presence: Option<Arc<dyn Presence>>,
    /// Cluster mode: the other nodes (see [`Cluster`]).
    pub cluster: Option<Arc<dyn Cluster>>,
}

/// The broker's runtime; shut down without waiting when the broker is dropped (allowed from
/// inside another runtime).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// An HTTP message the broker accepted.
pub struct Published {
    /// Resolves once it is stored (when a commit was asked for), else at once; false: it
    /// could not be.
    pub stored: BoxFuture<bool>,
    /// False when the router's queue was full or gone (stored, not relayed; the caller
    /// counts it).
    pub fanned_out: bool,
}

/// A running broker.
pub struct BrokerHandle {
    pub mqtt_addr: SocketAddr,
    pub mqtts_addr: Option<SocketAddr>,
    pub ws_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    local: std::sync::Mutex<(rumqttd::local::LinkTx, rumqttd::local::LinkRx)>,
    /// The link messages from other nodes enter the router by.
    imports: std::sync::Mutex<(rumqttd::local::LinkTx, rumqttd::local::LinkRx)>,
    /// The accept loops (they end, closing their listeners, when the broker stops).
    accepting: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Wakes the catch-up task (see [`BrokerHandle::catch_up`]).
    catching: Arc<tokio::sync::Notify>,
    _rt: Runtime,
}

/// Catch-up rounds start at most this often: a burst of reasons makes one read per session.
const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

impl BrokerHandle {
    /// Applies a revocation from the change feed to live and offline sessions.
    pub fn revoke(&self, r: Revocation) {
        Metrics::inc(&self.shared.metrics.revocations_applied);
        self.shared.registry.apply(r);
    }

    /// Publishes an HTTP message through the one ingress, as an acknowledged (QoS 1)
    /// message of `publisher` on `topic`: the sink takes it whole or it is refused
    /// (nothing of it happens), then persistent sessions and the router get it.
    pub async fn publish(
        &self,
        publisher: &Identity,
        topic: &str,
        payload: Bytes,
        format: PayloadFormat,
        commit: bool,
    ) -> Result<Published, NotTaken> {
        let p = ingress::Publish {
            topic,
            payload: &payload,
            qos: 1,
            retain: false,
            props: Bytes::new(),
            expires_at_ms: 0,
            origin: 0,
            publisher: Some(publisher),
            transport: Transport::Http,
            format,
            // Queued for persistent sessions without waiting: an HTTP 202 promises the
            // in-process queue, as for the message store.
            wait_durable: false,
            refusable: false,
        };
        if !self.shared.current() {
            return Err(NotTaken::NotCurrent);
        }
        // Cluster mode: the answer waits for the commit, as a PUBACK does.
        let commit = commit || self.shared.cluster.is_some();
        let routed = match self.shared.ingress(p, ingress::ToSink::Whole { commit }).await {
            Ok(r) => r,
            Err(ingress::Refused::Sink(e)) => return Err(e),
            // Not retained: nothing else refuses an HTTP message.
            Err(_) => return Err(NotTaken::Closed),
        };
        let fanned_out = match (routed.packet, self.local.lock()) {
            (rumqttd::protocol::Packet::Publish(p, _), Ok(mut l)) => l.0.try_publish(p.topic, p.payload).is_ok(),
            _ => false,
        };
        let stored = routed.stored.unwrap_or_else(|| Box::pin(async { true }));
        let stored: BoxFuture<bool> = match routed.exported {
            Some(exported) => Box::pin(async move {
                let ok = stored.await;
                let _ = exported.await;
                ok
            }),
            None => stored,
        };
        Ok(Published { stored, fanned_out })
    }

    /// Cluster mode: a message another node accepted enters here (live views, persistent
    /// sessions, the router; never stored or exported again). Non-blocking: a router that
    /// cannot take it now drops it (counted).
    pub fn import(&self, c: &Carried) {
        let packet = self.shared.import(c);
        let sent = match (packet, self.imports.lock()) {
            (rumqttd::protocol::Packet::Publish(p, _), Ok(mut l)) => l.0.try_publish(p.topic, p.payload).is_ok(),
            _ => false,
        };
        if !sent {
            Metrics::inc(&self.shared.metrics.cluster_import_dropped);
            if c.entry != 0 {
                // Entries were written for persistent sessions: theirs are in the store.
                self.catch_up();
            }
        }
    }

    /// Live copies of messages may have been missed (cluster mode: NATS was lost, another
    /// node could not export, NATS dropped messages for this node): every persistent session
    /// reads its stored queue again and delivers what it does not hold (see
    /// `session::recover`). Rounds are coalesced.
    pub fn catch_up(&self) {
        self.catching.notify_one();
    }

    /// Cluster mode: a message of shared subscription `group` on `filter` (see
    /// [`Cluster::share`]) that the cluster gave this node: one local member takes it, in
    /// turn; false when it is not for the group (the filter does not match) or no member is
    /// left here (counted).
    pub fn import_shared(&self, group: &str, filter: &str, c: &Carried) -> bool {
        let Some(interest) = self.shared.interest.as_ref() else {
            return false;
        };
        if !crate::cluster::group_matches(filter, &c.topic) {
            return false;
        }
        let Some((key, o)) = interest.pick(&(group.to_string(), filter.to_string())) else {
            Metrics::inc(&self.shared.metrics.cluster_import_dropped);
            return false;
        };
        Metrics::inc(&self.shared.metrics.cluster_imported);
        let d = outbound::Delivery {
            topic: Bytes::copy_from_slice(c.topic.as_bytes()),
            payload: c.payload.clone(),
            props: c.props.clone(),
            qos: c.qos.min(o.qos),
            retain: o.rap && c.retain,
            expires_at_ms: c.expires_at_ms,
            sub_ids: o.sub_id.into_iter().collect(),
            msg: 0,
        };
        let whole = format!("$share/{group}/{filter}");
        self.shared
            .registry
            .send(&key, registry::Control::Shared(Box::new(d), whole));
        true
    }

    /// Cluster mode: a message this node accepted could not go through NATS (not connected):
    /// each shared subscription group with members here gets it from here (one member in
    /// turn), as on a single node. Returns how many groups took it.
    pub fn share_here(&self, c: &Carried) -> usize {
        let Some(interest) = self.shared.interest.as_ref() else {
            return 0;
        };
        interest
            .groups_matching(&c.topic)
            .into_iter()
            .filter(|(g, f)| self.import_shared(g, f, c))
            .count()
    }

    /// Cluster mode: what another node holds for persistent session `key` (its domain, if a
    /// registry client's, and its stored state), or `None` when no other node holds it: the
    /// publisher side writes entries for it too (see `durable`).
    pub fn index_remote(&self, key: &str, held: Option<(Option<&str>, Bytes)>) {
        let subs = held
            .and_then(|(domain, state)| {
                let st = durable::decode_state(state)?;
                Some(
                    st.subs
                        .into_iter()
                        .map(|(f, o)| match domain.and_then(|d| crate::topic::canonical(&f, d)) {
                            Some(c) => (c, o),
                            None => (f, o),
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        let n = self.shared.durable.index_remote(key, subs);
        self.shared
            .metrics
            .cluster_remote_sessions
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Cluster mode: another node claimed a session key (see [`Cluster::claim`]); a session
    /// here with an older claim ends with DISCONNECT 0x8E.
    pub fn claimed(&self, key: &str, claim: u64) {
        if self.shared.registry.claimed_elsewhere(key, claim) {
            Metrics::inc(&self.shared.metrics.cluster_taken_over);
        }
    }

    /// Cluster mode: the retained message (or, empty, the deletion) another node stored,
    /// kept in this node's index (the store has it already).
    pub fn remember_retained(&self, c: &Carried) {
        let _ = self.shared.retained.remember(Retained {
            topic: c.topic.clone(),
            payload: c.payload.clone(),
            qos: c.qos,
            props: c.props.clone(),
            expires_at_ms: c.expires_at_ms,
        });
    }

    /// Cluster mode: reloads the retained index from the store (after a gap in what other
    /// nodes told this one).
    pub fn reload_retained(&self) -> Result<usize, PortError> {
        self.shared.retained.reload()
    }

    /// The MQTT-over-WebSocket endpoint (`/mqtt`) as a warp filter, for serving it over TLS.
    pub fn ws_routes(&self) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        ws::routes(self.shared.clone(), Transport::Wss)
    }

    /// Sessions held (live and persistent offline ones).
    pub fn sessions(&self) -> usize {
        self.shared.registry.len()
    }

    /// Retained topics held.
    pub fn retained(&self) -> usize {
        self.shared.retained.len()
    }

    /// Stops the broker: its listeners stop accepting (MQTT, TLS, WebSocket), every session
    /// is closed (DISCONNECT 0x8B to v5 clients, no wills; persistent sessions stay stored),
    /// and this resolves once every session task has ended, or after `within`.
    pub async fn shut_down(&self, within: Duration) {
        let _ = self.shared.stop.send(true);
        self.shared.registry.apply(Revocation::ShutDown);
        let accepting = self
            .accepting
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let ended = async {
            self.shared.registry.empty().await;
            // The accept loops (and the WebSocket server, once its connections closed).
            for t in accepting {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(within, ended).await.is_err() {
            tracing::warn!(
                left = self.shared.registry.len(),
                "sessions still ending after the shutdown wait"
            );
        }
    }

    /// False once the router thread has stopped (it panicked): the broker cannot serve.
    pub fn healthy(&self) -> bool {
        self.shared.router.alive()
    }

    /// Resolves when the router has stopped, after logging it.
    pub fn failed(&self) -> BoxFuture<()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            while shared.router.alive() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            tracing::error!("the MQTT router stopped (it panicked); the broker cannot serve devices");
        })
    }
}

/// Spawns the router and the broker's runtime, restores persistent sessions, then accepts on
/// the bound listeners. `metrics` is the broker's counters (made by the caller, so they can be
/// read before the broker starts).
pub async fn start(
    cfg: BrokerConfig,
    listeners: Listeners,
    ports: Ports,
    metrics: Arc<Metrics>,
) -> Result<BrokerHandle, BrokerError> {
    let Ports {
        auth,
        sink,
        retained: retained_store,
        sessions: session_store,
        presence,
        cluster,
    } = ports;
    let Listeners { mqtt, ws, mqtts } = listeners;
    let mqtt_addr = mqtt.local_addr()?;
    let ws_addr = ws.as_ref().map(|l| l.local_addr()).transpose()?;
    let tls = mqtts.map(|(l, c)| (l, tokio_rustls::TlsAcceptor::from(c)));
    let mqtts_addr = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .thread_name("fluxgate-mqtt")
        .enable_all()
        .build()?;
    let router = router::RouterPort::spawn(
        cfg.max_connections + cfg.max_connections.min(100_000) + 16,
        cfg.max_segment_size,
        cfg.max_segment_count,
    );
    let link = |name: &'static str| {
        let r = router.clone();
        async move {
            tokio::task::spawn_blocking(move || r.named_link(name))
                .await
                .map_err(|e| BrokerError::Router(e.to_string()))?
                .map_err(BrokerError::Router)
        }
    };
    let local = link("l:fluxgate-http").await?;
    let imports = link("l:fluxgate-cluster").await?;
    let (max_retained, m2) = (cfg.max_retained, metrics.clone());
    let retained =
        tokio::task::spawn_blocking(move || retained::RetainedIndex::start(retained_store, max_retained, m2)).await??;
    let sessions = session_store.clone();
    let (durable, loaded) = match session_store {
        Some(store) => {
            let max = cfg.max_stored_queue_bytes;
            tokio::task::spawn_blocking(move || -> Result<_, BrokerError> {
                let t = std::time::Instant::now();
                let loaded = store.load().map_err(BrokerError::Sessions)?;
                tracing::info!(
                    sessions = loaded.sessions.len(),
                    queued = loaded.queued.len(),
                    ms = t.elapsed().as_millis() as u64,
                    "persistent sessions loaded from the store"
                );
                Ok((durable::Durable::start(store, loaded.max_msg, max)?, Some(loaded)))
            })
            .await??
        }
        None => (durable::Durable::off(), None),
    };
    let (stop, _) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        stop,
        presence,
        durable,
        sessions,
        pending: fair::FairSlots::new(cfg.max_pending_connections, cfg.max_pending_per_source),
        pressure: crate::pressure::Pressure::new(cfg.max_segment_size, cfg.max_segment_count),
        cfg,
        auth,
        sink,
        metrics: metrics.clone(),
        registry: registry::Registry::default(),
        router,
        retained,
        rt: rt.handle().clone(),
        next_origin: AtomicU64::new(1),
        interest: cluster.clone().map(|c| crate::cluster::Interest::start(c, rt.handle())),
        cluster,
    });
    // Persistent sessions come back (links and subscriptions in place) before any device is
    // accepted.
    if let Some(loaded) = loaded {
        let s = shared.clone();
        rt.spawn(async move { session::restore_all(s, loaded).await }).await?;
    }
    let mut accepting = Vec::new();
    let s = shared.clone();
    accepting.push(rt.spawn(async move {
        match tokio::net::TcpListener::from_std(mqtt) {
            Ok(l) => accept_tcp(l, s).await,
            Err(e) => tracing::error!(error = %e, "MQTT listener"),
        }
    }));
    if let Some((l, acceptor)) = tls {
        let s = shared.clone();
        accepting.push(rt.spawn(async move {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => accept_tls(l, acceptor, s).await,
                Err(e) => tracing::error!(error = %e, "MQTT over TLS listener"),
            }
        }));
    }
    if let Some(l) = ws {
        let s = shared.clone();
        accepting.push(rt.spawn(async move {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => ws::serve(l, s).await,
                Err(e) => tracing::error!(error = %e, "MQTT over WebSocket listener"),
            }
        }));
    }
    let catching = Arc::new(tokio::sync::Notify::new());
    if shared.durable.enabled() {
        let (s, wake) = (shared.clone(), catching.clone());
        rt.spawn(async move {
            loop {
                wake.notified().await;
                Metrics::inc(&s.metrics.catch_ups);
                s.registry.send_all(|| registry::Control::CatchUp);
                tokio::time::sleep(CATCH_UP_EVERY).await;
            }
        });
    }
    // Plain addresses, "off" for a listener that is not open.
    let shown = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(addr = %mqtt_addr, tls = %shown(mqtts_addr), ws = %shown(ws_addr), "MQTT listening");
    Ok(BrokerHandle {
        mqtt_addr,
        mqtts_addr,
        ws_addr,
        metrics,
        shared,
        local: std::sync::Mutex::new(local),
        imports: std::sync::Mutex::new(imports),
        accepting: std::sync::Mutex::new(accepting),
        catching,
        _rt: Runtime(Some(rt)),
    })
}
