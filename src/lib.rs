//! The `fluxgate` binary's library: configuration, wiring of the crates into one [`App`],
//! and the command line.
//!
//! [`App::build`] binds every listener (port 0 allowed) and reports the chosen addresses;
//! [`App::run`] serves until the shutdown future completes, then stops cleanly.

pub mod admin;
pub mod cli;
pub mod cluster;
pub use admin::reset_admin_password;
pub mod config;
pub mod datadir;
pub mod http_ingest;
pub mod http_server;
pub mod live;
pub mod mail;
pub mod mqtt;
pub mod pipeline;
pub mod presence;
pub mod store_cmd;
pub mod telemetry;

use config::Config;
use mgmt::{auth, Ctx, MgmtConfig, Outbox};
use rand::RngCore;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use storage::Store;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors of starting and running the platform, each from its layer.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] storage::StoreError),
    #[error("cannot bind {addr}: {err}")]
    Bind { addr: String, err: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    #[error("MQTT broker: {0}")]
    Broker(#[from] broker::BrokerError),
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    #[error("cannot read {path}: {err}")]
    ReadFile { path: String, err: std::io::Error },
    #[error("password hashing: {0}")]
    Passwords(#[from] mgmt::error::ApiError),
    #[error("smtp: {0}")]
    Smtp(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("user `{0}` exists and is not a super-admin; set admin.username to the super-admin's username")]
    NotSuperAdmin(String),
    #[error("{0} stopped while the platform was running")]
    Stopped(&'static str),
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
}

/// Options that are not configuration: hooks for embedding (tests use them).
#[derive(Default)]
pub struct Hooks {
    /// Where password-reset notices go; the server log when `None`.
    pub outbox: Option<Arc<dyn Outbox>>,
}

/// A built platform: every listener bound, the store open, keys and certificates ready, the
/// super-admin in place; nothing running yet (no task, no thread, nothing accepted).
pub struct App {
    cfg: Config,
    http: tokio::net::TcpListener,
    http_addr: SocketAddr,
    https: Option<Arc<certs::RustlsServerConfig>>,
    mqtt: broker::Listeners,
    mqtt_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    mqtts_addr: Option<SocketAddr>,
    wss: Option<(tokio::net::TcpListener, Arc<certs::RustlsServerConfig>)>,
    wss_addr: Option<SocketAddr>,
    store: Store,
    tokens: auth::Tokens,
    passwords: auth::Passwords,
    outbox: Arc<dyn mgmt::Outbox>,
    ca: Arc<certs::Ca>,
    events: tokio::sync::broadcast::Sender<storage::Change>,
    presence_feed: tokio::sync::broadcast::Sender<storage::PresenceChange>,
    broker_metrics: Arc<broker::Metrics>,
    sink: Arc<pipeline::LateSink>,
    pipeline: pipeline::Pipeline,
    parked: pipeline::Parked,
    limits: http_server::HttpLimits,
    http_counters: Arc<http_server::HttpCounters>,
    /// Released when the platform stops.
    dir_lock: datadir::DirLock,
    cluster: Option<cluster::parts::Parts>,
    /// The generated bootstrap password, when this start created the super-admin with one.
    pub generated_admin_password: Option<String>,
}

fn bind_http(addr: &str, backlog: u32) -> Result<tokio::net::TcpListener, AppError> {
    http_server::bind(addr, backlog).map_err(|err| AppError::Bind {
        addr: addr.to_string(),
        err,
    })
}

impl App {
    /// Binds every listener, opens the store, prepares keys and certificates and the
    /// super-admin. Starts nothing: a failure here leaves no task or thread behind.
    pub async fn build(cfg: Config, hooks: Hooks) -> Result<App, AppError> {
        // The API listener first: nothing is created when its port is taken.
        let http = bind_http(&cfg.http.addr, cfg.http.backlog)?;
        let http_addr = http.local_addr()?;
        let limits = http_server::HttpLimits {
            header_timeout: std::time::Duration::from_secs(cfg.http.header_timeout),
            idle_timeout: std::time::Duration::from_secs(cfg.http.idle_timeout),
            max_connections: cfg.http.max_connections,
            per_source: cfg.http.max_connections_per_source,
        };
        let dir_lock = datadir::prepare(&cfg.data_dir)?;
        let (url, store_cfg) = (cfg.store_url()?, cfg.store_config());
        tracing::info!(store = %url, "opening the store");
        let store = blocking(move || Store::open_url(&url, &store_cfg)).await??;

        let secret = if cfg.auth.jwt_secret.is_empty() {
            let s = store.clone();
            blocking(move || s.setting_or_insert("jwt_secret", random_hex::<32>)).await??
        } else {
            cfg.auth.jwt_secret.expose().to_string()
        };
        let tokens = auth::Tokens::new(secret.as_bytes(), cfg.auth.access_token_ttl, cfg.auth.refresh_token_ttl);
        let iterations = cfg.auth.pbkdf2_iterations;
        let passwords = blocking(move || auth::Passwords::new(iterations)).await??;

        let outbox: Arc<dyn mgmt::Outbox> = match hooks.outbox {
            Some(o) => o,
            None if !cfg.smtp.host.is_empty() => Arc::new(mail::SmtpOutbox::new(&cfg.smtp).map_err(AppError::Smtp)?),
            None => Arc::new(mgmt::LogOutbox),
        };
        let (events, _) = tokio::sync::broadcast::channel(4096);
        // The store announces every rights-affecting change after its commit; the change feed
        // carries them to the broker (and to tests).
        let feed = events.clone();
        store.set_change_sink(move |c: &storage::Change| {
            tracing::debug!(change = ?c, "change feed");
            let _ = feed.send(c.clone());
        });
        // The platform CA and the TLS server configuration.
        let (ca, tls) = {
            let (data_dir, t, https) = (cfg.data_dir.clone(), cfg.tls.clone(), cfg.http.tls);
            let (s, shared) = (store.clone(), cfg.cluster.enabled());
            blocking(
                move || -> Result<(certs::Ca, Option<Arc<certs::RustlsServerConfig>>), AppError> {
                    let configured = (!t.ca_cert_file.is_empty())
                        .then(|| (PathBuf::from(&t.ca_cert_file), PathBuf::from(&t.ca_key_file)));
                    let ca = match (&configured, shared) {
                        (None, true) => cluster::shared_ca(&s, &data_dir)?,
                        _ => certs::Ca::load_or_create(
                            &data_dir,
                            configured.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                        )?,
                    };
                    if t.mqtts_addr.is_empty() && t.wss_addr.is_empty() && !https {
                        return Ok((ca, None));
                    }
                    let (cert, key) = if t.cert_file.is_empty() {
                        ca.issue_server(&t.hosts)?
                    } else {
                        let read = |p: &str| {
                            std::fs::read_to_string(p).map_err(|err| AppError::ReadFile {
                                path: p.to_string(),
                                err,
                            })
                        };
                        (read(&t.cert_file)?, read(&t.key_file)?)
                    };
                    let sc = ca.server_config(&cert, &key)?;
                    Ok((ca, Some(sc)))
                },
            )
            .await??
        };
        // The MQTT listeners (TCP, WebSocket, TLS) and MQTT over secure WebSocket.
        let mqtts = tls
            .clone()
            .filter(|_| !cfg.tls.mqtts_addr.is_empty())
            .map(|c| (cfg.tls.mqtts_addr.as_str(), c));
        let ws = Some(cfg.mqtt.ws_addr.as_str()).filter(|a| !a.is_empty());
        let mqtt = broker::Listeners::bind(&cfg.mqtt.addr, ws, mqtts, cfg.mqtt.backlog, cfg.mqtt.socket_send_buffer)?;
        let mqtt_addr = mqtt.mqtt.local_addr()?;
        let ws_addr = mqtt.ws.as_ref().map(|l| l.local_addr()).transpose()?;
        let mqtts_addr = mqtt.mqtts.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
        let wss = match (&tls, cfg.tls.wss_addr.as_str()) {
            (Some(sc), a) if !a.is_empty() => Some((bind_http(a, cfg.mqtt.backlog)?, sc.clone())),
            _ => None,
        };
        let wss_addr = wss.as_ref().map(|(l, _)| l.local_addr()).transpose()?;

        let sink = Arc::new(pipeline::LateSink::default());
        let (pipeline, parked) = pipeline::prepare(&cfg.messages, &sink);
        let (generated_admin_password, passwords) = admin::bootstrap_admin(&store, passwords, &cfg).await?;
        // Last: nothing after it can fail, so a node that registered also serves (and leaves).
        let cluster = cluster::parts::Parts::prepare(&cfg.cluster, &cfg.data_dir, &store).await?;

        Ok(App {
            http,
            http_addr,
            https: tls.filter(|_| cfg.http.tls),
            mqtt,
            mqtt_addr,
            ws_addr,
            mqtts_addr,
            wss,
            wss_addr,
            store,
            tokens,
            passwords,
            outbox,
            ca: Arc::new(ca),
            events,
            presence_feed: tokio::sync::broadcast::channel(4096).0,
            broker_metrics: Arc::new(broker::Metrics::default()),
            sink,
            pipeline,
            parked,
            limits,
            http_counters: Arc::new(http_server::HttpCounters::default()),
            dir_lock,
            cluster,
            generated_admin_password,
            cfg,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// What the API listener refused or closed (connection cap, idle connections).
    pub fn http_counters(&self) -> Arc<http_server::HttpCounters> {
        self.http_counters.clone()
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtts_addr
    }

    /// The broker's counters.
    pub fn broker_metrics(&self) -> Arc<broker::Metrics> {
        self.broker_metrics.clone()
    }

    /// Total message rows committed by the pipeline, as a watch (await `wait_for`).
    pub fn stored_messages(&self) -> tokio::sync::watch::Receiver<u64> {
        self.pipeline.stored.clone()
    }

    /// The message pipeline's counters.
    pub fn pipeline_metrics(&self) -> Arc<pipeline::PipelineMetrics> {
        self.pipeline.metrics.clone()
    }

    /// Subscribes to the change feed (changes that affect who may publish or subscribe).
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<storage::Change> {
        self.events.subscribe()
    }

    /// Subscribes to device presence: each client's online state after its sessions' events
    /// are stored.
    pub fn subscribe_presence(&self) -> tokio::sync::broadcast::Receiver<storage::PresenceChange> {
        self.presence_feed.subscribe()
    }

    /// The store, for in-process embedders and tests that check authorization answers.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Starts everything (broker, change feed, message writer, HTTP API, MQTT over secure
    /// WebSocket) and serves until `shutdown` completes or a part stops on its own. Then stops
    /// in order: no listener accepts, MQTT sessions are closed, the HTTP servers finish their
    /// requests, and the writer stores everything queued, so no message arrives after the
    /// writer stopped. A part that stopped on its own is named in the error.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), AppError> {
        let App {
            cfg,
            http,
            http_addr,
            https,
            mqtt,
            wss,
            store,
            tokens,
            passwords,
            outbox,
            ca,
            events,
            presence_feed,
            broker_metrics,
            sink,
            pipeline,
            parked,
            limits,
            http_counters,
            dir_lock,
            cluster,
            ..
        } = self;
        // Connections a previous run recorded as live ended with it.
        let s = store.clone();
        blocking(move || s.reset_presence(storage::now_micros())).await??;
        let mut writer = parked.start(store.clone(), &cfg.messages)?;
        let presence = presence::StorePresence::start(store.clone(), presence_feed);
        let hub = Arc::new(live::LiveHub::new(live::Limits {
            max: cfg.http.max_live_viewers,
            per_domain: cfg.http.max_live_viewers_per_domain,
            per_user: cfg.http.max_live_viewers_per_user,
        }));
        let sink = Arc::new(live::LiveSink {
            hub: hub.clone(),
            inner: sink,
        });
        let port = cluster.as_ref().map(|c| c.port(&store));
        let started = start_broker(
            &cfg,
            mqtt,
            &store,
            sink,
            presence::port(&presence),
            broker_metrics,
            port.as_ref().map(|p| p.nats.clone() as Arc<dyn broker::Cluster>),
        )
        .await;
        let broker = match started {
            Ok(b) => Arc::new(b),
            Err(e) => {
                writer.drain().await;
                return Err(e);
            }
        };
        // Revocations: from this node's change feed, or, in a cluster, from the store's
        // outbox (this node's changes and every other node's, in order).
        let mut running = match (&cluster, port) {
            (Some(c), Some(port)) => Some(c.run(port, &store, broker.clone(), events.subscribe()).await),
            _ => None,
        };
        let follow = match &running {
            Some(_) => None,
            None => Some(tokio::spawn(mqtt::follow_changes(events.subscribe(), broker.clone()))),
        };
        if cfg.store.outbox_max_age > 0 {
            let outbox = tokio::spawn(pipeline::prune_outbox(store.clone(), cfg.store.outbox_max_age));
            // Ends with the process; nothing to drain.
            drop(outbox);
        }
        let http_ingest = Arc::new(http_ingest::HttpIngest::new(broker.clone()));
        let wss_counters = Arc::new(http_server::HttpCounters::default());
        let telemetry = telemetry::build(telemetry::Sources {
            broker: broker.metrics.clone(),
            pipeline: pipeline.metrics.clone(),
            store: store.clone(),
            http: vec![("api", http_counters.clone()), ("wss", wss_counters.clone())],
            http_fanout_refused: http_ingest.refused_fanout.clone(),
            cluster: cluster.as_ref().map(|c| c.metrics.clone()),
        })?;
        let ctx = Arc::new(Ctx {
            store: store.clone(),
            tokens,
            passwords,
            cfg: MgmtConfig {
                self_registration: cfg.auth.self_registration,
                max_body_bytes: cfg.http.max_body_bytes,
                version: VERSION,
                public_url: public_url(&cfg, http_addr),
                senml: cfg.messages.senml_limits(),
                cors_origins: cfg.http.cors_origins.clone(),
                metrics_token: cfg.metrics.token.expose().to_string(),
                console: cfg.http.console,
                tls: cfg.http.tls,
                trusted_proxies: cfg.http.trusted_proxies().unwrap_or_default(),
            },
            outbox,
            messages: http_ingest,
            live: hub.clone(),
            ca,
            probes: probes(&broker, &store, &pipeline, cluster.as_ref().map(|c| c.client.clone())),
            telemetry,
            guard: mgmt::guard::LoginGuard::default(),
            hash_slots: mgmt::default_hash_slots(),
            console: mgmt::console::session::Sessions::new(
                cfg.http.max_console_sessions,
                cfg.http.max_console_sessions_per_user,
            ),
        });

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut wss_task = wss.map(|(l, sc)| {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(%addr, "MQTT over secure WebSocket listening on /mqtt");
            let wss_limits = http_server::HttpLimits {
                max_connections: cfg.mqtt.max_connections,
                ..limits
            };
            tokio::spawn(http_server::serve(
                l,
                Some(sc),
                broker.ws_routes(),
                wss_limits,
                wss_counters,
                stopped(),
            ))
        });
        let scheme = if https.is_some() { "https" } else { "http" };
        tracing::info!(addr = %http_addr, scheme, "HTTP API listening");
        let mut http_task = {
            use warp::Filter;
            let routes = mgmt::routes(ctx).boxed();
            tokio::spawn(http_server::serve(
                http,
                https,
                routes,
                limits,
                http_counters,
                stopped(),
            ))
        };

        // Serve until asked to stop, or until a part stops on its own.
        let mut http_done = false;
        let mut wss_done = false;
        let early = tokio::select! {
            _ = shutdown => None,
            _ = broker.failed() => Some("the MQTT router"),
            _ = &mut http_task => {
                http_done = true;
                Some("the HTTP API server")
            }
            _ = async {
                match wss_task.as_mut() {
                    Some(t) => {
                        let _ = t.await;
                    }
                    None => std::future::pending().await,
                }
            } => {
                wss_done = true;
                Some("the MQTT over secure WebSocket server")
            }
            _ = writer.ended() => Some("the message writer"),
            _ = async {
                match running.as_mut() {
                    Some(r) => {
                        let _ = (&mut r.beating).await;
                    }
                    None => std::future::pending().await,
                }
            } => Some("this node's hold on its cluster node id (another process took it)"),
        };
        if let Some(what) = early {
            tracing::error!(part = what, "stopped on its own; the platform stops");
        }
        // 1. No listener accepts any more; 2. MQTT sessions close (persistent ones stay
        // stored); 3. the HTTP servers (plain and TLS) finish their requests; 4. the writer
        // stores what is queued.
        let _ = stop_tx.send(true);
        broker.shut_down(std::time::Duration::from_secs(5)).await;
        // The ends of the sessions just closed are recorded.
        presence.flush().await;
        // Live views end, so that the HTTP server's requests finish.
        hub.close_all();
        if !http_done {
            let _ = http_task.await;
        }
        if let (Some(t), false) = (wss_task, wss_done) {
            let _ = t.await;
        }
        if let Some(f) = &follow {
            f.abort();
        }
        if let Some(r) = &running {
            r.stop();
        }
        writer.drain().await;
        if let Some(c) = &cluster {
            c.leave(&store).await;
        }
        drop(dir_lock);
        match early {
            Some(what) => Err(AppError::Stopped(what)),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// Starts the broker on its bound listeners, plugged into the store and the pipeline.
async fn start_broker(
    cfg: &Config,
    listeners: broker::Listeners,
    store: &Store,
    sink: Arc<dyn broker::MessageSink>,
    presence: Arc<dyn broker::Presence>,
    metrics: Arc<broker::Metrics>,
    cluster: Option<Arc<dyn broker::Cluster>>,
) -> Result<broker::BrokerHandle, AppError> {
    let m = &cfg.mqtt;
    let bcfg = broker::BrokerConfig {
        allow_anonymous: m.allow_anonymous,
        max_packet_size: m.max_packet_size,
        connect_timeout: std::time::Duration::from_secs(m.connect_timeout),
        stall_timeout: std::time::Duration::from_millis(m.stall_timeout_ms),
        max_keep_alive: m.max_keep_alive,
        max_connections: m.max_connections,
        backlog: m.backlog,
        inflight_window: m.inflight_window,
        max_connect_size: m.max_connect_size,
        max_pending_connections: m.max_pending_connections,
        max_pending_per_source: m.max_pending_per_source,
        max_queued_bytes: m.max_queued_bytes,
        max_queued_messages: m.max_queued_messages,
        max_session_expiry: std::time::Duration::from_secs(m.max_session_expiry),
        max_sessions_per_client: m.max_sessions_per_client,
        max_stored_queue_bytes: m.max_stored_queue_bytes,
        max_retained: m.max_retained,
        threads: m.threads,
        max_segment_size: m.max_segment_size,
        max_segment_count: m.max_segment_count,
    };
    let ports = broker::Ports {
        auth: Arc::new(mqtt::StoreAuthorizer { store: store.clone() }),
        sink,
        retained: Some(Arc::new(mqtt::StoreRetained { store: store.clone() })),
        sessions: m
            .persist_sessions
            .then(|| Arc::new(mqtt::StoreSessions { store: store.clone() }) as _),
        presence: Some(presence),
        cluster,
    };
    Ok(broker::start(bcfg, listeners, ports, metrics).await?)
}

/// The base of links sent to users: `http.public_url`, else the API's own address (an
/// unspecified bind address becomes `localhost`). Never derived from a request.
fn public_url(cfg: &Config, bound: SocketAddr) -> String {
    if !cfg.http.public_url.is_empty() {
        return cfg.http.public_url.trim_end_matches('/').to_string();
    }
    let scheme = if cfg.http.tls { "https" } else { "http" };
    if bound.ip().is_unspecified() {
        format!("{scheme}://localhost:{}", bound.port())
    } else {
        format!("{scheme}://{bound}")
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, AppError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The health checks behind `GET /health`: the MQTT router runs, the database takes a write,
/// the message writer is not stuck.
fn probes(
    broker: &Arc<broker::BrokerHandle>,
    store: &Store,
    pipeline: &pipeline::Pipeline,
    nats: Option<async_nats::Client>,
) -> Vec<(&'static str, mgmt::Probe)> {
    let b = broker.clone();
    let s = store.clone();
    let m = pipeline.metrics.clone();
    let mut probes = nats
        .map(|c| {
            vec![(
                "nats",
                Arc::new(move || match c.connection_state() {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("not connected to NATS ({other})")),
                }) as mgmt::Probe,
            )]
        })
        .unwrap_or_default();
    probes.extend([
        (
            "mqtt broker",
            Arc::new(move || {
                b.healthy()
                    .then_some(())
                    .ok_or_else(|| "the MQTT router stopped".to_string())
            }) as mgmt::Probe,
        ),
        (
            "store",
            Arc::new(move || s.probe_write().map_err(|e| format!("database not writable: {e}"))) as mgmt::Probe,
        ),
        ("message pipeline", Arc::new(move || m.check()) as mgmt::Probe),
    ]);
    probes
}
