//! The data directory: created owner-only, checked and tightened at every start, and locked
//! so that one process at a time serves it.
//!
//! The database holds the token-signing key and every device secret, and the directory holds
//! the CA key: nothing in it may be readable by another local account. New files are created
//! 0600 (the process umask is 077 while serving); existing ones are tightened with a log line;
//! a directory that others can write to is refused (they could swap the database).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(
        "data directory {path} is writable by other users (mode {mode:o}); run `chmod 700 {path}` and start again"
    )]
    WritableByOthers { path: String, mode: u32 },
    #[error("data directory {path} is in use by another fluxgate process (pid {pid}); stop it first")]
    Locked { path: String, pid: String },
}

/// Held for as long as the process serves the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Creates (0700) or checks the directory, tightens what is in it, and takes its lock.
pub fn prepare(dir: &Path) -> Result<DirLock, DataDirError> {
    let io = |e| DataDirError::Io(dir.to_path_buf(), e);
    owner_only_umask();
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let meta = std::fs::metadata(dir).map_err(io)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(DataDirError::WritableByOthers {
            path: dir.display().to_string(),
            mode,
        });
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        tracing::warn!(path = %dir.display(), from = format!("{mode:o}"), "data directory was readable by others; set to 700");
    }
    let lock = lock(dir)?;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let meta = entry.metadata().map_err(io)?;
        let m = meta.mode() & 0o777;
        if meta.is_file() && m & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            tracing::warn!(file = %entry.path().display(), from = format!("{m:o}"), "file in the data directory was readable by others; set to 600");
        }
    }
    Ok(lock)
}

/// Everything this process creates from now on is owner-only (database, WAL, keys).
#[allow(unsafe_code)]
fn owner_only_umask() {
    // SAFETY: umask only replaces the process's file-creation mask; it cannot fail and touches
    // no memory.
    unsafe {
        libc::umask(0o077);
    }
}

/// An exclusive `flock` on `<dir>/fluxgate.lock`, which holds the holder's pid.
fn lock(dir: &Path) -> Result<DirLock, DataDirError> {
    let path = dir.join("fluxgate.lock");
    let io = |e| DataDirError::Io(path.clone(), e);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    if f.try_lock().is_err() {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(DataDirError::Locked {
            path: dir.display().to_string(),
            pid: pid.trim().chars().filter(char::is_ascii_digit).take(10).collect(),
        });
    }
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    write!(f, "{}", std::process::id()).map_err(io)?;
    f.flush().map_err(io)?;
    Ok(DirLock { _file: f })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_owner_only_tightens_refuses_and_locks() {
        let base = tempfile::tempdir().expect("dir");
        let dir = base.path().join("data");
        let lock = prepare(&dir).expect("prepare");
        assert_eq!(std::fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
        // A second holder is refused, naming this process.
        match prepare(&dir) {
            Err(DataDirError::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("{other:?}"),
        }
        drop(lock);
        // Readable files and directory are tightened.
        let f = dir.join("x.key");
        std::fs::write(&f, "k").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let lock = prepare(&dir).expect("prepare again");
        assert_eq!(std::fs::metadata(&f).expect("meta").mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
        drop(lock);
        // Writable by others: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(prepare(&dir), Err(DataDirError::WritableByOthers { .. })));
    }
}
