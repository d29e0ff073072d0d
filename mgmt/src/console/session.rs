//! Console sessions: the browser holds only an opaque cookie (`id.secret`); the user's access
//! and refresh tokens stay here, in memory. A session lives as long as its access token and
//! is renewed (a token refresh) while the page is in use; a restart ends every session.
//!
//! Invariants: the secret half of the cookie and the CSRF token are compared in constant
//! time; at most `per_user` sessions are held for one user (their own least recently used
//! one is dropped first) and at most `cap` in all (when full, the least recently used
//! session of the user holding the most goes), so logins cannot grow memory without bound
//! and one user's logins never end another user's sessions while others hold fewer.

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
    /// The user was the super-admin at login (the console offers user management; the REST
    /// API decides, as for every call).
    pub super_admin: bool,
    pub access: String,
    pub refresh: String,
    /// When the access token expires (Unix seconds): the session ends then unless renewed.
    pub expires_at: u64,
    /// Lifetime of an access token (seconds), to decide when to renew.
    pub ttl: u64,
    pub csrf: String,
    /// When it was last used, in the order of uses (a counter: many uses share a second).
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
    pub super_admin: bool,
    pub access: String,
    pub refresh: String,
    pub expires_at: u64,
    pub ttl: u64,
}

/// Every live session of this server.
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
    cap: usize,
    per_user: usize,
    uses: std::sync::atomic::AtomicU64,
}

impl Sessions {
    pub fn new(cap: usize, per_user: usize) -> Sessions {
        Sessions {
            inner: Mutex::new(HashMap::new()),
            cap: cap.max(1),
            per_user: per_user.max(1),
            uses: Default::default(),
        }
    }

    /// Starts a session. A user at their share loses their own least recently used session;
    /// when all are taken, the busiest user's least recently used one goes.
    pub fn start(&self, login: Login, now: u64) -> Session {
        let s = Session {
            id: random_token(),
            secret: random_token(),
            user_id: login.user_id,
            username: login.username,
            super_admin: login.super_admin,
            access: login.access,
            refresh: login.refresh,
            expires_at: login.expires_at,
            ttl: login.ttl,
            csrf: random_token(),
            last_used: self.use_number(),
        };
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|_, v| v.expires_at > now);
            let mut per_user: HashMap<&str, usize> = HashMap::new();
            for v in m.values() {
                *per_user.entry(v.user_id.as_str()).or_default() += 1;
            }
            let own = per_user.get(s.user_id.as_str()).copied().unwrap_or(0);
            let victim = if own >= self.per_user {
                Some(s.user_id.clone())
            } else if m.len() >= self.cap {
                per_user.iter().max_by_key(|(_, n)| **n).map(|(u, _)| (*u).to_string())
            } else {
                None
            };
            if let Some(user) = victim {
                let oldest = m
                    .values()
                    .filter(|v| v.user_id == user)
                    .min_by_key(|v| v.last_used)
                    .map(|v| v.id.clone());
                if let Some(oldest) = oldest {
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
        s.last_used = self.use_number();
        Some(s.clone())
    }

    fn use_number(&self) -> u64 {
        self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
        login_as("u", ttl, now)
    }

    fn login_as(user: &str, ttl: u64, now: u64) -> Login {
        Login {
            user_id: user.into(),
            username: "n".into(),
            super_admin: false,
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
        let ss = Sessions::new(10, 10);
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
        let ss = Sessions::new(10, 10);
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
        let ss = Sessions::new(2, 2);
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
    fn one_user_past_their_share_loses_only_their_own_oldest_session() {
        let ss = Sessions::new(4, 2);
        let other = ss.start(login_as("b", 100, 0), 0);
        let first = ss.start(login_as("a", 100, 1), 1);
        let second = ss.start(login_as("a", 100, 2), 2);
        for t in 3..20 {
            ss.start(login_as("a", 100, t), t);
        }
        assert!(ss.find(&value(&other), 20).is_some(), "b's session stays");
        assert!(ss.find(&value(&first), 20).is_none() && ss.find(&value(&second), 20).is_none());
        assert_eq!(ss.len(), 3, "a holds its share of 2, b its one");
        // Full: the busiest user gives way, not the newcomer's peers.
        let c = ss.start(login_as("c", 100, 21), 21);
        let d = ss.start(login_as("d", 100, 22), 22);
        assert_eq!(ss.len(), 4);
        for s in [&other, &c, &d] {
            assert!(ss.find(&value(s), 23).is_some(), "{}", s.user_id);
        }
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let ss = Sessions::new(1, 1);
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
