//! `fluxgate`: the command line. `serve` runs the platform; `config default` prints the
//! embedded default configuration.

use clap::{Parser, Subcommand};
use fluxgate::config::{Config, Overrides, DEFAULT_CONFIG};
use fluxgate::{App, Hooks};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fluxgate",
    version,
    about = "One-binary IoT platform: MQTT broker, management API, message store"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the platform.
    Serve {
        /// Configuration file (TOML; default: ./config.toml when there is one); see
        /// `fluxgate config default`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory (database, keys).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address of the REST API, e.g. 127.0.0.1:9000 (port 0 picks one).
        #[arg(long, value_name = "HOST:PORT")]
        http_addr: Option<String>,
        /// Address of the MQTT listener, e.g. 0.0.0.0:1883.
        #[arg(long, value_name = "HOST:PORT")]
        mqtt_addr: Option<String>,
        /// Address of the MQTT-over-WebSocket listener (path /mqtt); empty disables it.
        #[arg(long, value_name = "HOST:PORT")]
        ws_addr: Option<String>,
        /// Address of the MQTT-over-TLS listener, e.g. 0.0.0.0:8883; empty disables it.
        #[arg(long, value_name = "HOST:PORT")]
        mqtts_addr: Option<String>,
        /// Address of the MQTT-over-secure-WebSocket listener (path /mqtt); empty disables it.
        #[arg(long, value_name = "HOST:PORT")]
        wss_addr: Option<String>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Operator tasks on a stopped server's data directory.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// The store: move an embedded deployment to PostgreSQL.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The whole command tree (including the entity-first commands, from the CLI's command table)
/// for shell completions.
fn completion_command() -> clap::Command {
    use clap::CommandFactory;
    fluxgate::cli::completion_command(Cli::command())
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Give the super-admin a new password (generated, or FLUXGATE_ADMIN_PASSWORD), creating
    /// it if the first start did not finish. Run it while the server is stopped.
    ResetPassword {
        /// Configuration file (TOML), as given to `serve` (default: ./config.toml when there
        /// is one).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory, as given to `serve`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy a stopped deployment's store into an empty one: users, domains, clients with
    /// their secrets, channels, connections, groups, certificates, settings (issued tokens keep
    /// working), retained messages, persistent sessions with their queues and the message
    /// history. Refuses a target that holds data; re-run after a failure to start over.
    /// PostgreSQL over TLS: FLUXGATE_STORE_TLS_CA_FILE names the CA that verifies the server.
    Migrate {
        /// The store to copy, e.g. sqlite:///var/lib/fluxgate/fluxgate.db.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The empty store to fill, e.g. postgres://fluxgate:secret@db:5432/fluxgate.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the embedded default configuration.
    Default,
}

fn main() -> ExitCode {
    // `serve`, `config default` and `completions` go through clap; everything else is the
    // entity-first operator CLI (fluxgate::cli), whose grammar clap cannot express.
    let argv: Vec<String> = std::env::args().collect();
    let first = argv.get(1).map(String::as_str).unwrap_or("");
    let clap_cmd = matches!(first, "serve" | "completions" | "admin" | "store" | "--version" | "-V")
        || (first == "config" && argv.get(2).map(String::as_str) == Some("default"));
    if !clap_cmd {
        if matches!(first, "" | "--help" | "-h" | "help") {
            println!("{}", fluxgate::cli::top());
            return if first.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        return fluxgate::cli::run(fluxgate::cli::Args::parse(argv.into_iter().skip(1)));
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Config {
            cmd: ConfigCmd::Default,
        } => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Cmd::Admin {
            cmd: AdminCmd::ResetPassword { config, data_dir },
        } => {
            let flags = Overrides {
                data_dir,
                ..Default::default()
            };
            let config = fluxgate::config::locate(config);
            let cfg = match Config::load(config.as_deref(), std::env::vars(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fluxgate: {e}");
                    return ExitCode::from(2);
                }
            };
            match fluxgate::reset_admin_password(&cfg) {
                Ok(Some(p)) => {
                    // Printed once, on the terminal, never logged.
                    println!("Super-admin `{}`: new password `{p}`", cfg.admin.username);
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    println!(
                        "Super-admin `{}`: password set from admin.password (FLUXGATE_ADMIN_PASSWORD)",
                        cfg.admin.username
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fluxgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Store {
            cmd: StoreCmd::Migrate { from, to },
        } => match fluxgate::store_cmd::migrate(&from, &to) {
            Ok((copied, took)) => {
                let rate = copied.rows() as f64 / took.as_secs_f64().max(0.001);
                println!(
                    "copied {} rows in {} tables in {:.1} s ({rate:.0} rows/s); row counts verified",
                    copied.rows(),
                    copied.tables.len(),
                    took.as_secs_f64()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fluxgate: store migrate: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Completions { shell } => {
            let mut cmd = completion_command();
            clap_complete::generate(shell, &mut cmd, "fluxgate", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Serve {
            config,
            data_dir,
            http_addr,
            mqtt_addr,
            ws_addr,
            mqtts_addr,
            wss_addr,
        } => {
            let flags = Overrides {
                data_dir,
                http_addr,
                mqtt_addr,
                ws_addr,
                mqtts_addr,
                wss_addr,
            };
            let config = fluxgate::config::locate(config);
            let cfg = match Config::load(config.as_deref(), std::env::vars(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("fluxgate: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log.level, cfg.log.format);
            match &config {
                Some(f) => tracing::info!(file = %f.display(), "configuration file read"),
                None => tracing::info!(
                    "no configuration file: embedded defaults, environment and flags (--config FILE, or a config.toml in the working directory)"
                ),
            }
            raise_open_file_limit();
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fluxgate: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "fatal");
                    eprintln!("fluxgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every device connection is a
/// descriptor, and the default soft limit (often 1024) would refuse devices long before the
/// configured connection caps.
#[allow(unsafe_code)]
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed by pointer.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 || lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let from = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::info!(from, to = lim.rlim_max, "raised the open-file limit to the hard limit");
    } else {
        tracing::warn!(soft = from, hard = lim.rlim_max, "could not raise the open-file limit");
    }
}

async fn serve(cfg: Config) -> Result<(), fluxgate::AppError> {
    let admin = cfg.admin.username.clone();
    let app = App::build(cfg, Hooks::default()).await?;
    if let Some(p) = &app.generated_admin_password {
        // Printed once, on the terminal, never through the log pipeline.
        eprintln!("\n  Bootstrap super-admin created: username `{admin}`, password `{p}`\n  Change it with PATCH /users/secret. It will not be shown again.\n");
    }
    app.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

fn init_logging(level: &str, format: fluxgate::config::LogFormat) {
    // rumqttd's router logs ordinary events (a client going away while a message is routed to
    // it) at ERROR; the broker reports the router's real failure itself. Its log is off unless
    // the filter names it (e.g. "info,rumqttd=debug"). rustls warns about every client that
    // names the server by IP address in SNI (OpenSSL and mosquitto do, when given an IP):
    // normal for devices, so its handshake parser's notices show only when the filter names
    // rustls (e.g. "info,rustls=debug").
    let directives = |d: &str| {
        let mut d = d.to_string();
        if !d.contains("rumqttd") {
            d.push_str(",rumqttd=off");
        }
        if !d.contains("rustls") {
            d.push_str(",rustls::msgs::handshake=error");
        }
        d
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|d| tracing_subscriber::EnvFilter::try_new(directives(&d)).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(directives(level)).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(directives("info")));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        fluxgate::config::LogFormat::Text => fmt.init(),
        fluxgate::config::LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).init(),
    }
}
