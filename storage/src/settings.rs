//! Key/value settings the platform persists for itself (the JWT signing key, for example).

use crate::db::{params, Db};
use crate::{Result, Store};

impl Store {
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn()?
            .query_opt("SELECT value FROM settings WHERE key = ?1", &params![key], |r| r.get(0))
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                &params![key, value],
            )?;
            Ok(())
        })
    }

    /// Returns the stored value of `key`, storing `make()` first if there is none. Two
    /// processes racing here both end with the value that won.
    pub fn setting_or_insert(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING",
                &params![key, make()],
            )?;
            tx.query_row("SELECT value FROM settings WHERE key = ?1", &params![key], |r| r.get(0))
        })
    }
}
