//! `fluxgate store migrate`: moves a stopped embedded deployment's store into PostgreSQL (or
//! any store into an empty one), with progress on a terminal.

use crate::{datadir, AppError};
use std::io::{IsTerminal, Write};
use storage::{Copied, Progress, Store, StoreConfig, StoreUrl};

/// Copies the store at `from` into the empty store at `to`; prints progress to stderr and
/// returns what was copied and how long it took.
pub fn migrate(from: &str, to: &str) -> Result<(Copied, std::time::Duration), AppError> {
    let (from, to) = (StoreUrl::parse(from)?, StoreUrl::parse(to)?);
    if from == to {
        return Err(storage::StoreError::Invalid("--from and --to name the same store".into()).into());
    }
    // An embedded store must exist (never create an empty one) and its server be stopped:
    // the data directory's lock says so.
    let _lock = match &from {
        StoreUrl::Sqlite(path) => {
            if !path.is_file() {
                return Err(storage::StoreError::Invalid(format!("{}: no such database file", path.display())).into());
            }
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            Some(datadir::prepare(dir.unwrap_or(std::path::Path::new(".")))?)
        }
        StoreUrl::Postgres(_) => None,
    };
    let cfg = StoreConfig {
        pool_size: 2,
        // PostgreSQL over TLS: the CA that verifies the server (as `store.tls_ca_file`).
        tls_ca_file: std::env::var_os("FLUXGATE_STORE_TLS_CA_FILE")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from),
        ..Default::default()
    };
    let source = Store::open_url(&from, &cfg)?;
    let target = Store::open_url(&to, &cfg)?;
    eprintln!("copying {from} into {to}");
    let started = std::time::Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut shown: Option<&'static str> = None;
    let copied = source.copy_into(&target, |p: &Progress| {
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r  {:<24} {:>12} / {}", p.table, p.copied, p.total);
            if p.copied >= p.total {
                let _ = writeln!(err);
            }
        } else if p.copied >= p.total && shown != Some(p.table) {
            let _ = writeln!(err, "  {:<24} {:>12} rows", p.table, p.copied);
            shown = Some(p.table);
        }
    })?;
    Ok((copied, started.elapsed()))
}
