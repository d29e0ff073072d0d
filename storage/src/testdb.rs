//! Test support: a fresh PostgreSQL database per test when `FLUXGATE_TEST_DATABASE_URL`
//! names a server (a database there that the user may `CREATE DATABASE` from), dropped when
//! the test ends. Without the variable, tests use a temporary SQLite file.

use crate::{StoreError, StoreUrl};

/// The variable that turns the test suites onto PostgreSQL.
pub const ENV: &str = "FLUXGATE_TEST_DATABASE_URL";

/// The server to test against, if the variable is set (and not empty).
pub fn server_url() -> Option<String> {
    std::env::var(ENV).ok().filter(|v| !v.trim().is_empty())
}

/// A database created for one test, dropped with this value.
pub struct TestDatabase {
    admin: String,
    name: String,
    url: String,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestDatabase({})", self.name)
    }
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

/// Runs `f` on a plain thread: the synchronous client must not run on an async worker.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(f).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

impl TestDatabase {
    /// Creates an empty database on the server at `admin` (a URL).
    pub fn create(admin: &str) -> Result<TestDatabase, StoreError> {
        let name = format!("fg_test_{}", uuid::Uuid::new_v4().simple());
        let (a, n) = (admin.to_string(), name.clone());
        off_runtime(move || {
            let mut c = postgres::Client::connect(&a, postgres::NoTls).map_err(crate::db::pg::error)?;
            // A collation that does not sort by code point (ICU's en-US), so that nothing can
            // pass by relying on the server's locale; plain when the server has no ICU.
            c.batch_execute(&format!(
                "CREATE DATABASE {n} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            ))
            .or_else(|_| c.batch_execute(&format!("CREATE DATABASE {n}")))
            .map_err(crate::db::pg::error)
        })?;
        Ok(TestDatabase {
            url: with_database(admin, &name),
            admin: admin.to_string(),
            name,
        })
    }
    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn store_url(&self) -> StoreUrl {
        StoreUrl::Postgres(self.url.clone())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (a, n) = (self.admin.clone(), self.name.clone());
        let dropped = off_runtime(move || -> Result<(), postgres::Error> {
            let mut c = postgres::Client::connect(&a, postgres::NoTls)?;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// The store's write lock held by another connection (as another process would), until
/// dropped: SQLite's `BEGIN IMMEDIATE`, PostgreSQL's advisory write lock. The connection
/// lives on its own thread, so this may be held and dropped in async tests.
pub struct ForeignWriteLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ForeignWriteLock {
    /// Takes the lock of the store at `url`; returns once it is held.
    pub fn take(url: &StoreUrl) -> Result<ForeignWriteLock, StoreError> {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel::<Result<(), StoreError>>();
        let url = url.clone();
        let thread = std::thread::spawn(move || match url {
            StoreUrl::Sqlite(path) => {
                let c = match rusqlite::Connection::open(path) {
                    Ok(c) => c,
                    Err(e) => return drop(held.send(Err(crate::db::sqlite::error(e)))),
                };
                let r = c.execute_batch("BEGIN IMMEDIATE").map_err(crate::db::sqlite::error);
                let ok = r.is_ok();
                let _ = held.send(r);
                if ok {
                    let _ = wait.recv();
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
            StoreUrl::Postgres(u) => {
                let mut c = match postgres::Client::connect(&u, postgres::NoTls) {
                    Ok(c) => c,
                    Err(e) => return drop(held.send(Err(crate::db::pg::error(e)))),
                };
                let r = c
                    .batch_execute(&format!(
                        "BEGIN; SELECT pg_advisory_xact_lock({})",
                        crate::db::pg::WRITE_LOCK
                    ))
                    .map_err(crate::db::pg::error);
                let ok = r.is_ok();
                let _ = held.send(r);
                if ok {
                    let _ = wait.recv();
                    let _ = c.batch_execute("ROLLBACK");
                }
            }
        });
        match is_held.recv() {
            Ok(Ok(())) => Ok(ForeignWriteLock {
                release: Some(release),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable("lock thread ended".into())),
        }
    }
}

impl Drop for ForeignWriteLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `sql` (statements without parameters) on the store at `url` from another
/// connection, on a plain thread: what an operator's database shell would do.
pub fn execute_sql(url: &StoreUrl, sql: &str) -> Result<(), StoreError> {
    let (url, sql) = (url.clone(), sql.to_string());
    off_runtime(move || match url {
        StoreUrl::Sqlite(path) => rusqlite::Connection::open(path)
            .and_then(|c| c.execute_batch(&sql))
            .map_err(crate::db::sqlite::error),
        StoreUrl::Postgres(u) => postgres::Client::connect(&u, postgres::NoTls)
            .and_then(|mut c| c.batch_execute(&sql))
            .map_err(crate::db::pg::error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_options_kept() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }
}
