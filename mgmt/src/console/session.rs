//! Console sessions: the browser holds only an opaque cookie (`id.secret`); the user's access
//! and refresh tokens stay here, in memory. A session lives as long as its access token and
//! is renewed (a token refresh) while the page is in use; a restart ends every session.
//!
//! Invariants: the secret half of the cookie and the CSRF token are compared in constant
//! time; at most `cap` sessions are held (the least recently used one is dropped first), so
//! logins cannot grow memory without bound.

use std::collections::HashMap;
use std::sync::Mutex;

/// Name of the session cookie.
pub const COOKIE: &str = "fg_session";
/// Name of the cookie that carries the login form's CSRF token (before there is a session).
pub const LOGIN_COOKIE: &str = "fg_login";

/// One logged-in browser. (`Debug` shows no secret, token or CSRF value.)
#[derive(Clone)]
pub struct Session {
    pub id: String,
    secret: String,
    pub user_id: String,
    pub username: String,
    pub access: String,
    pub refresh: String,
    /// When the access token expires (Unix seconds): the session ends then unless renewed.
    pub expires_at: u64,
    /// Lifetime of an access token (seconds), to decide when to renew.
    pub ttl: u64,
    pub csrf: String,
    last_used: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The `Set-Cookie` value naming this session.
    pub fn cookie(&self, secure: bool) -> String {
        cookie(
            COOKIE,
            &format!("{}.{}", self.id, self.secret),
            self.ttl.max(60),
            secure,
        )
    }

    /// Whether the access token should be renewed now (less than half its life left).
    pub fn wants_renewal(&self, now: u64) -> bool {
        self.expires_at.saturating_sub(now) < self.ttl / 2
    }
}

/// A `Set-Cookie` value scoped to the console: HttpOnly, SameSite=Strict, Secure over TLS.
pub fn cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A `Set-Cookie` value that removes the cookie.
pub fn expired(name: &str, secure: bool) -> String {
    cookie(name, "", 0, secure)
}

/// A cookie's value from a `Cookie` request header.
pub fn cookie_value<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A random token: 32 bytes, hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Constant-time string equality.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}

/// What a login yields: the tokens and who they belong to.
pub struct Login {
    pub user_id: String,
    pub username: String,
    pub access: String,
    pub refresh: String,
    pub expires_at: u64,
    pub ttl: u64,
}

/// Every live session of this server.
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
    cap: usize,
}

impl Sessions {
    pub fn new(cap: usize) -> Sessions {
        Sessions {
            inner: Mutex::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    /// Starts a session; drops the least recently used one when full.
    pub fn start(&self, login: Login, now: u64) -> Session {
        let s = Session {
            id: random_token(),
            secret: random_token(),
            user_id: login.user_id,
            username: login.username,
            access: login.access,
            refresh: login.refresh,
            expires_at: login.expires_at,
            ttl: login.ttl,
            csrf: random_token(),
            last_used: now,
        };
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|_, v| v.expires_at > now);
            if m.len() >= self.cap {
                if let Some(oldest) = m.values().min_by_key(|v| v.last_used).map(|v| v.id.clone()) {
                    m.remove(&oldest);
                }
            }
            m.insert(s.id.clone(), s.clone());
        }
        s
    }

    /// The live session a cookie value names (`None` when unknown, wrong or expired).
    pub fn find(&self, cookie: &str, now: u64) -> Option<Session> {
        let (id, secret) = cookie.split_once('.')?;
        let mut m = self.inner.lock().ok()?;
        let s = m.get_mut(id)?;
        if !same(&s.secret, secret) {
            return None;
        }
        if s.expires_at <= now {
            m.remove(id);
            return None;
        }
        s.last_used = now;
        Some(s.clone())
    }

    /// Replaces a session's tokens after a refresh.
    pub fn renew(&self, id: &str, access: String, refresh: String, expires_at: u64) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some(s) = m.get_mut(id) {
                s.access = access;
                s.refresh = refresh;
                s.expires_at = expires_at;
            }
        }
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(id);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(ttl: u64, now: u64) -> Login {
        Login {
            user_id: "u".into(),
            username: "n".into(),
            access: "a".into(),
            refresh: "r".into(),
            expires_at: now + ttl,
            ttl,
        }
    }

    fn value(s: &Session) -> String {
        s.cookie(false)
            .split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_session_is_found_only_with_its_secret_and_until_it_expires() {
        let ss = Sessions::new(10);
        let s = ss.start(login(100, 1000), 1000);
        let v = value(&s);
        assert_eq!(ss.find(&v, 1050).map(|f| f.user_id), Some("u".into()));
        let forged = format!("{}.{}", s.id, random_token());
        assert!(ss.find(&forged, 1050).is_none(), "a wrong secret finds nothing");
        assert!(ss.find(&s.id, 1050).is_none(), "the id alone finds nothing");
        assert!(ss.find(&v, 1100).is_none(), "expired with the access token");
        assert!(ss.is_empty());
    }

    #[test]
    fn renewal_extends_and_logout_ends() {
        let ss = Sessions::new(10);
        let s = ss.start(login(100, 1000), 1000);
        assert!(!s.wants_renewal(1040));
        assert!(s.wants_renewal(1060));
        ss.renew(&s.id, "a2".into(), "r2".into(), 1160);
        let f = ss.find(&value(&s), 1150).expect("renewed");
        assert_eq!(f.access, "a2");
        ss.end(&s.id);
        assert!(ss.find(&value(&s), 1150).is_none());
    }

    #[test]
    fn sessions_are_bounded_dropping_the_least_recently_used() {
        let ss = Sessions::new(2);
        let a = ss.start(login(100, 0), 0);
        let b = ss.start(login(100, 1), 1);
        assert!(ss.find(&value(&a), 2).is_some());
        let c = ss.start(login(100, 3), 3);
        assert_eq!(ss.len(), 2);
        assert!(ss.find(&value(&b), 4).is_none(), "b was used least recently");
        assert!(ss.find(&value(&a), 4).is_some());
        assert!(ss.find(&value(&c), 4).is_some());
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let ss = Sessions::new(1);
        let s = ss.start(login(100, 0), 0);
        let shown = format!("{s:?}");
        for secret in [value(&s), s.csrf.clone(), s.access.clone(), s.refresh.clone()] {
            assert!(!shown.contains(&format!("\"{secret}\"")), "{shown}");
        }
        assert!(!shown.contains(value(&s).split('.').nth(1).unwrap_or("-")));
    }

    #[test]
    fn cookies_are_httponly_strict_and_secure_over_tls() {
        let c = cookie("x", "v", 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(c.contains("Path=/console"));
        assert!(!cookie("x", "v", 60, false).contains("Secure"));
        assert_eq!(cookie_value(Some("a=1; fg_session=x.y; b=2"), COOKIE), Some("x.y"));
        assert_eq!(cookie_value(Some("a=1"), COOKIE), None);
    }
}
