//! The `fluxgate` binary's library: configuration, wiring of the crates into one [`App`],
//! and the command line.
//!
//! [`App::build`] binds every listener (port 0 allowed) and reports the chosen addresses;
//! [`App::run`] serves until the shutdown future completes, then stops cleanly.

pub mod cli;
pub mod config;
pub mod datadir;
pub mod http_ingest;
pub mod http_server;
pub mod mail;
pub mod mqtt;
pub mod pipeline;
pub mod telemetry;

use config::Config;
use mgmt::{auth, Ctx, MgmtConfig, Outbox};
use rand::RngCore;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use storage::{NewUser, Role, Status, Store, StoreConfig, UserQuery};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    #[error("startup: {0}")]
    Startup(String),
}

/// Options that are not configuration: hooks for embedding (tests use them).
#[derive(Default)]
pub struct Hooks {
    /// Where password-reset notices go; the server log when `None`.
    pub outbox: Option<Arc<dyn Outbox>>,
}

/// A built, bound, not yet running platform.
pub struct App {
    http: tokio::net::TcpListener,
    http_addr: SocketAddr,
    ctx: Arc<Ctx>,
    events: tokio::sync::broadcast::Sender<storage::Change>,
    broker: Arc<broker::BrokerHandle>,
    pipeline: pipeline::Pipeline,
    writer: pipeline::Writer,
    https: Option<Arc<certs::RustlsServerConfig>>,
    wss_addr: Option<SocketAddr>,
    limits: http_server::HttpLimits,
    /// Released when the platform stops.
    _dir_lock: datadir::DirLock,
    http_counters: Arc<http_server::HttpCounters>,
    /// The generated bootstrap password, when this start created the super-admin with one.
    pub generated_admin_password: Option<String>,
}

impl App {
    pub async fn build(cfg: Config, hooks: Hooks) -> Result<App, AppError> {
        // The API listener first: nothing is created when its port is taken.
        let http = http_server::bind(&cfg.http.addr, cfg.http.backlog).map_err(|err| AppError::Bind {
            addr: cfg.http.addr.clone(),
            err,
        })?;
        let http_addr = http.local_addr()?;
        let limits = http_server::HttpLimits {
            header_timeout: std::time::Duration::from_secs(cfg.http.header_timeout),
            idle_timeout: std::time::Duration::from_secs(cfg.http.idle_timeout),
            max_connections: cfg.http.max_connections,
        };
        let dir_lock = datadir::prepare(&cfg.data_dir)?;
        let db_path = cfg.data_dir.join("fluxgate.db");
        let store_cfg = StoreConfig {
            busy_timeout: std::time::Duration::from_millis(cfg.store.busy_timeout_ms),
            pool_size: cfg.store.pool_size,
        };
        let store = blocking(move || Store::open(&db_path, &store_cfg)).await??;

        let secret = if cfg.auth.jwt_secret.is_empty() {
            let s = store.clone();
            blocking(move || s.setting_or_insert("jwt_secret", random_hex::<32>)).await??
        } else {
            cfg.auth.jwt_secret.expose().to_string()
        };
        let tokens = auth::Tokens::new(secret.as_bytes(), cfg.auth.access_token_ttl, cfg.auth.refresh_token_ttl);
        let iterations = cfg.auth.pbkdf2_iterations;
        let passwords = blocking(move || auth::Passwords::new(iterations))
            .await?
            .map_err(|e| AppError::Startup(e.to_string()))?;

        let outbox: Arc<dyn mgmt::Outbox> = match hooks.outbox {
            Some(o) => o,
            None if !cfg.smtp.host.is_empty() => Arc::new(mail::SmtpOutbox::new(&cfg.smtp).map_err(AppError::Startup)?),
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
            blocking(
                move || -> Result<(certs::Ca, Option<Arc<certs::RustlsServerConfig>>), String> {
                    let configured = (!t.ca_cert_file.is_empty())
                        .then(|| (PathBuf::from(&t.ca_cert_file), PathBuf::from(&t.ca_key_file)));
                    let ca = certs::Ca::load_or_create(
                        &data_dir,
                        configured.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                    )
                    .map_err(|e| e.to_string())?;
                    if t.mqtts_addr.is_empty() && t.wss_addr.is_empty() && !https {
                        return Ok((ca, None));
                    }
                    let (cert, key) = if t.cert_file.is_empty() {
                        ca.issue_server(&t.hosts).map_err(|e| e.to_string())?
                    } else {
                        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
                        (read(&t.cert_file)?, read(&t.key_file)?)
                    };
                    let sc = ca.server_config(&cert, &key).map_err(|e| e.to_string())?;
                    Ok((ca, Some(sc)))
                },
            )
            .await?
            .map_err(AppError::Startup)?
        };
        let ca = Arc::new(ca);
        let bcfg = broker::BrokerConfig {
            mqtt_addr: cfg.mqtt.addr.clone(),
            ws_addr: Some(cfg.mqtt.ws_addr.clone()).filter(|a| !a.is_empty()),
            allow_anonymous: cfg.mqtt.allow_anonymous,
            max_packet_size: cfg.mqtt.max_packet_size,
            connect_timeout: std::time::Duration::from_secs(cfg.mqtt.connect_timeout),
            max_keep_alive: cfg.mqtt.max_keep_alive,
            max_connections: cfg.mqtt.max_connections,
            backlog: cfg.mqtt.backlog,
            inflight_window: cfg.mqtt.inflight_window,
            max_connect_size: cfg.mqtt.max_connect_size,
            max_pending_connections: cfg.mqtt.max_pending_connections,
            max_queued_bytes: cfg.mqtt.max_queued_bytes,
            max_queued_messages: cfg.mqtt.max_queued_messages,
            max_session_expiry: std::time::Duration::from_secs(cfg.mqtt.max_session_expiry),
            max_sessions_per_client: cfg.mqtt.max_sessions_per_client,
            max_stored_queue_bytes: cfg.mqtt.max_stored_queue_bytes,
            max_retained: cfg.mqtt.max_retained,
            threads: cfg.mqtt.threads,
            max_segment_size: cfg.mqtt.max_segment_size,
            max_segment_count: cfg.mqtt.max_segment_count,
            tls: tls
                .clone()
                .filter(|_| !cfg.tls.mqtts_addr.is_empty())
                .map(|config| broker::TlsSettings {
                    addr: cfg.tls.mqtts_addr.clone(),
                    config,
                }),
        };
        let authorizer = Arc::new(mqtt::StoreAuthorizer { store: store.clone() });
        let sink = Arc::new(pipeline::LateSink::default());
        let retained = Arc::new(mqtt::StoreRetained { store: store.clone() });
        let sessions: Option<Arc<dyn broker::SessionStore>> = cfg
            .mqtt
            .persist_sessions
            .then(|| Arc::new(mqtt::StoreSessions { store: store.clone() }) as _);
        let broker = broker::start(bcfg, authorizer, sink.clone(), Some(retained), sessions)
            .await
            .map_err(|e| AppError::Startup(e.to_string()))?;
        let broker = Arc::new(broker);
        tokio::spawn(mqtt::follow_changes(events.subscribe(), broker.clone()));
        let wss_counters = Arc::new(http_server::HttpCounters::default());
        let wss_addr = match (&tls, cfg.tls.wss_addr.as_str()) {
            (Some(sc), a) if !a.is_empty() => {
                let l = http_server::bind(a, cfg.mqtt.backlog).map_err(|err| AppError::Bind {
                    addr: a.to_string(),
                    err,
                })?;
                let addr = l.local_addr()?;
                tracing::info!(%addr, "MQTT over secure WebSocket listening on /mqtt");
                tokio::spawn(http_server::serve(
                    l,
                    Some(sc.clone()),
                    broker.ws_routes(),
                    http_server::HttpLimits {
                        max_connections: cfg.mqtt.max_connections,
                        ..limits
                    },
                    wss_counters.clone(),
                    std::future::pending(),
                ));
                Some(addr)
            }
            _ => None,
        };
        let (pipeline, writer) = pipeline::start(store.clone(), &cfg.messages, &sink)?;
        let http_ingest = Arc::new(http_ingest::HttpIngest::new(pipeline.clone(), broker.clone()));
        let http_counters = Arc::new(http_server::HttpCounters::default());
        let telemetry = telemetry::build(telemetry::Sources {
            broker: broker.metrics.clone(),
            pipeline: pipeline.metrics.clone(),
            store: store.clone(),
            http: vec![("api", http_counters.clone()), ("wss", wss_counters)],
            http_fanout_refused: http_ingest.refused_fanout.clone(),
        })
        .map_err(|e| AppError::Startup(format!("metrics: {e}")))?;
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
            },
            outbox,
            messages: http_ingest.clone(),
            ca: ca.clone(),
            probes: probes(&broker, &store, &pipeline),
            telemetry,
            guard: mgmt::guard::LoginGuard::default(),
            hash_slots: mgmt::default_hash_slots(),
        });
        let generated_admin_password = bootstrap_admin(&ctx, &cfg).await?;

        Ok(App {
            http,
            http_addr,
            ctx,
            events,
            broker,
            pipeline,
            writer,
            https: tls.filter(|_| cfg.http.tls),
            wss_addr,
            limits,
            _dir_lock: dir_lock,
            http_counters,
            generated_admin_password,
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
        self.broker.mqtt_addr
    }

    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.broker.ws_addr
    }

    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.broker.mqtts_addr
    }

    /// The broker's counters.
    pub fn broker_metrics(&self) -> Arc<broker::Metrics> {
        self.broker.metrics.clone()
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

    /// The store, for in-process embedders and tests that check authorization answers.
    pub fn store(&self) -> Store {
        self.ctx.store.clone()
    }

    /// Serves until `shutdown` completes; in-flight requests finish first. Ends with an error
    /// (after draining the writer) if the MQTT router stops: a broker that refuses every
    /// device must not look healthy.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), AppError> {
        tracing::info!(addr = %self.http_addr, "HTTP API listening");
        tracing::info!(mqtt = %self.broker.mqtt_addr, mqtts = ?self.broker.mqtts_addr, ws = ?self.broker.ws_addr, "MQTT listening");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let failed = self.broker.failed();
        tokio::spawn(async move {
            let router_died = tokio::select! {
                _ = shutdown => false,
                _ = failed => true,
            };
            let _ = stop_tx.send(router_died);
        });
        let (died_tx, died_rx) = tokio::sync::oneshot::channel::<bool>();
        let stop = async move {
            let died = stop_rx.await.unwrap_or(false);
            let _ = died_tx.send(died);
        };
        {
            use warp::Filter;
            let routes = mgmt::routes(self.ctx).boxed();
            http_server::serve(self.http, self.https, routes, self.limits, self.http_counters, stop).await;
        }
        // Everything accepted is written before exit.
        self.writer.drain().await;
        if died_rx.await.unwrap_or(false) {
            return Err(AppError::Startup("the MQTT router stopped".into()));
        }
        tracing::info!("stopped");
        Ok(())
    }
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
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Startup(format!("blocking task failed: {e}")))
}

fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Creates the super-admin from configuration when the store has none. Returns the password
/// when it was generated here.
/// The configured super-admin as a new user with this password hash.
fn admin_user(cfg: &Config, hash: String) -> NewUser {
    NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        first_name: cfg.admin.first_name.clone(),
        last_name: cfg.admin.last_name.clone(),
        email: cfg.admin.email.clone(),
        username: cfg.admin.username.clone(),
        secret: hash,
        tags: storage::JsonText::empty_array(),
        metadata: storage::JsonText::empty_object(),
        profile_picture: String::new(),
        role: Role::Admin,
        status: Status::Enabled,
    }
}

/// `fluxgate admin reset-password`: gives the configured super-admin (`admin.username`) a
/// new password, creating the super-admin if a first start never got that far. Runs on a
/// stopped server's data directory (it takes the directory's lock, so it is refused while a
/// server runs there). The password is `admin.password` (`FLUXGATE_ADMIN_PASSWORD`) when
/// set, else generated and returned to be printed once. The user's earlier tokens stop
/// working (the password epoch moves).
/// The health checks behind `GET /health`: the MQTT router runs, the database takes a write,
/// the message writer is not stuck.
fn probes(
    broker: &Arc<broker::BrokerHandle>,
    store: &Store,
    pipeline: &pipeline::Pipeline,
) -> Vec<(&'static str, mgmt::Probe)> {
    let b = broker.clone();
    let s = store.clone();
    let m = pipeline.metrics.clone();
    vec![
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
    ]
}

pub fn reset_admin_password(cfg: &Config) -> Result<Option<String>, AppError> {
    let _lock = datadir::prepare(&cfg.data_dir)?;
    let store = Store::open(
        &cfg.data_dir.join("fluxgate.db"),
        &StoreConfig {
            busy_timeout: std::time::Duration::from_millis(cfg.store.busy_timeout_ms),
            pool_size: 1,
        },
    )?;
    let (password, generated) = if cfg.admin.password.is_empty() {
        let p = random_hex::<12>();
        (p.clone(), Some(p))
    } else {
        (cfg.admin.password.expose().to_string(), None)
    };
    let hash = auth::Passwords::new(cfg.auth.pbkdf2_iterations)
        .and_then(|p| p.hash(&password))
        .map_err(|e| AppError::Startup(e.to_string()))?;
    match store.user_by_identity(&cfg.admin.username)? {
        Some(u) if u.role == Role::Admin => {
            store.set_user_secret(&u.id, &hash, None)?;
        }
        Some(_) => {
            return Err(AppError::Startup(format!(
                "user `{}` exists and is not a super-admin; set admin.username to the super-admin's username",
                cfg.admin.username
            )))
        }
        None => {
            store.create_user(admin_user(cfg, hash))?;
        }
    }
    Ok(generated)
}

async fn bootstrap_admin(ctx: &Arc<Ctx>, cfg: &Config) -> Result<Option<String>, AppError> {
    let s = ctx.store.clone();
    let existing = blocking(move || {
        s.list_users(&UserQuery {
            filter: storage::EntityFilter {
                status: storage::StatusFilter::All,
                ..Default::default()
            },
            role: Some(Role::Admin),
            ..Default::default()
        })
        .map(|p| p.total > 0)
    })
    .await??;
    if existing {
        return Ok(None);
    }
    let (password, generated) = if cfg.admin.password.is_empty() {
        let p = random_hex::<12>();
        (p.clone(), Some(p))
    } else {
        (cfg.admin.password.expose().to_string(), None)
    };
    let hash = ctx
        .blocking(move |c| c.passwords.hash(&password))
        .await
        .map_err(|e| AppError::Startup(e.to_string()))?;
    let new = admin_user(cfg, hash);
    let s = ctx.store.clone();
    let u = blocking(move || s.create_user(new)).await??;
    tracing::info!(user = %u.id, username = %u.username, "created the bootstrap super-admin");
    Ok(generated)
}
