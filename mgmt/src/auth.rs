//! Authentication: password hashing (PBKDF2-HMAC-SHA256, PHC strings), JWT access, refresh
//! and reset tokens, and resolving the caller of a request.
//!
//! Invariants: hashing runs on the blocking pool, never on the async runtime; a login for an
//! unknown identity verifies against a dummy hash so it costs what a wrong password costs;
//! refresh and reset tokens carry the user's secret epoch, so a password change revokes them.

use crate::error::ApiError;
use crate::http::Req;
use crate::Ctx;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pbkdf2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use pbkdf2::{Params, Pbkdf2};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};
use storage::{Status, User};

/// Password hashing with a configurable iteration count. The count is stored in each PHC
/// string, so raising it later does not invalidate existing hashes.
pub struct Passwords {
    iterations: u32,
    dummy: String,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("iterations", &self.iterations)
            .finish()
    }
}

pub const MIN_PASSWORD_LEN: usize = 8;

/// The one password rule (REST, the configured super-admin password, `admin
/// reset-password`): at least [`MIN_PASSWORD_LEN`] characters, at most 1,024 bytes. `Err`
/// says what is wrong.
pub fn password_rule(p: &str) -> Result<(), String> {
    if p.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!("password must have at least {MIN_PASSWORD_LEN} characters"));
    }
    if p.len() > 1024 {
        return Err("password exceeds 1024 bytes".into());
    }
    Ok(())
}

impl Passwords {
    /// Prepares the hasher; computes one dummy hash (blocking) for unknown-identity logins.
    pub fn new(iterations: u32) -> Result<Passwords, ApiError> {
        let mut p = Passwords {
            iterations: iterations.max(1),
            dummy: String::new(),
        };
        let random: String = uuid::Uuid::new_v4().to_string();
        p.dummy = p.hash(&random)?;
        Ok(p)
    }

    /// Hashes with a fresh random salt. Blocking: call from the blocking pool.
    pub fn hash(&self, password: &str) -> Result<String, ApiError> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let params = Params {
            rounds: self.iterations,
            output_length: 32,
        };
        Pbkdf2
            .hash_password_customized(
                password.as_bytes(),
                Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
                None,
                params,
                &salt,
            )
            .map(|h| h.to_string())
            .map_err(|e| ApiError::Internal(format!("hashing failed: {e}")))
    }

    /// Verifies in constant time. With `None` verifies against the dummy hash and fails, so
    /// unknown identities take as long as wrong passwords. Blocking.
    pub fn verify(&self, password: &str, phc: Option<&str>) -> bool {
        let target = phc.unwrap_or(&self.dummy);
        let ok = match PasswordHash::new(target) {
            Ok(h) => Pbkdf2.verify_password(password.as_bytes(), &h).is_ok(),
            Err(_) => false,
        };
        ok && phc.is_some()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
    Reset,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(rename = "type")]
    pub kind: TokenKind,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
    /// The user's secret epoch when issued (refresh and reset tokens).
    #[serde(default)]
    pub ep: i64,
    /// Unique token id, so two tokens issued in one second differ.
    pub jti: String,
    /// The token family: every access and refresh token issued from one login and its
    /// refreshes share it, and logout revokes it (empty for reset tokens).
    #[serde(default)]
    pub fam: String,
}

const ISSUER: &str = "fluxgate";

/// JWT issuing and verification with an HMAC-SHA256 key.
pub struct Tokens {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    pub access_ttl: u64,
    pub refresh_ttl: u64,
    pub reset_ttl: u64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Tokens {
    pub fn new(secret: &[u8], access_ttl: u64, refresh_ttl: u64) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Tokens {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
            refresh_ttl,
            reset_ttl: 15 * 60,
        }
    }

    pub fn issue(&self, user: &User, kind: TokenKind, family: &str) -> Result<String, ApiError> {
        let iat = now();
        let ttl = match kind {
            TokenKind::Access => self.access_ttl,
            TokenKind::Refresh => self.refresh_ttl,
            TokenKind::Reset => self.reset_ttl,
        };
        let claims = Claims {
            sub: user.id.clone(),
            kind,
            iss: ISSUER.into(),
            iat,
            exp: iat + ttl,
            ep: user.secret_epoch,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            fam: family.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| ApiError::Internal(format!("token encoding failed: {e}")))
    }

    /// Checks signature, expiry, issuer and kind.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token".into()))?;
        if data.claims.kind != kind {
            return Err(ApiError::Unauthorized(format!(
                "expected an {} token",
                match kind {
                    TokenKind::Access => "access",
                    TokenKind::Refresh => "refresh",
                    TokenKind::Reset => "reset",
                }
            )));
        }
        Ok(data.claims)
    }
}

/// The authenticated user behind a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// The family of the access token the caller presented.
    pub family: String,
}

impl Caller {
    pub fn is_super_admin(&self) -> bool {
        self.user.role == storage::Role::Admin
    }
    pub fn id(&self) -> &str {
        &self.user.id
    }
}

/// Resolves the bearer access token to an enabled user. The user is read on every request
/// so disabling or deleting a user takes effect at once.
pub async fn caller(ctx: &Ctx, req: &Req) -> Result<Caller, ApiError> {
    let token = req.bearer().ok_or_else(ApiError::unauthorized)?;
    let claims = ctx.tokens.verify(token, TokenKind::Access)?;
    let family = claims.fam.clone();
    let user = user_for_token(ctx, claims).await?;
    let _ = req.caller.set(user.id.clone());
    Ok(Caller { user, family })
}

/// Loads the token's user and checks it is still enabled (and, for refresh and reset
/// tokens, that the password has not changed since).
pub async fn user_for_token(ctx: &Ctx, claims: Claims) -> Result<User, ApiError> {
    let (id, family) = (claims.sub.clone(), claims.fam.clone());
    let found = ctx.db(move |s| s.token_user(&id, &family)).await;
    let user = match found {
        Ok((_, true)) => return Err(ApiError::Unauthorized("token revoked by logout".into())),
        Ok((u, false)) => u,
        Err(ApiError::NotFound(_)) => return Err(ApiError::Unauthorized("user no longer exists".into())),
        Err(e) => return Err(e),
    };
    if user.status != Status::Enabled {
        return Err(ApiError::Unauthorized("user is disabled".into()));
    }
    // Every token (access included) dies with a password change.
    if claims.ep != user.secret_epoch {
        return Err(ApiError::Unauthorized("token revoked by a password change".into()));
    }
    Ok(user)
}

/// The one device secret check, for MQTT CONNECT and HTTP device calls alike: `secret` is
/// compared with every candidate's in constant time (and with a dummy when there is none), so
/// the time taken says nothing about which ids exist or how much of a secret matched.
/// Returns the candidate whose secret it is.
pub fn match_device_secret(candidates: Vec<storage::ClientAuth>, secret: &str) -> Option<storage::ClientAuth> {
    fn equal(a: &str, b: &str) -> bool {
        a.len() == b.len() && bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
    }
    if candidates.is_empty() {
        let _ = equal("fluxgate-no-such-client-secret", secret);
        return None;
    }
    let mut found = None;
    for c in candidates {
        if equal(&c.secret, secret) {
            found = Some(c);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: "u1".into(),
            first_name: String::new(),
            last_name: String::new(),
            email: "a@b.c".into(),
            username: "a".into(),
            secret: String::new(),
            secret_epoch: 3,
            tags: storage::JsonText::empty_array(),
            metadata: storage::JsonText::empty_object(),
            profile_picture: String::new(),
            role: storage::Role::User,
            status: Status::Enabled,
            created_at: 0,
            updated_at: None,
            updated_by: None,
        }
    }

    #[test]
    fn hash_roundtrip_and_phc_format() {
        let p = Passwords::new(1000).expect("new");
        let h = p.hash("correct horse").expect("hash");
        assert!(h.starts_with("$pbkdf2-sha256$i=1000,l=32$"), "{h}");
        assert!(p.verify("correct horse", Some(&h)));
        assert!(!p.verify("wrong horse", Some(&h)));
        assert!(!p.verify("correct horse", None));
        // A hash made with another count still verifies: the count is in the string.
        let p2 = Passwords::new(2000).expect("new");
        assert!(p2.verify("correct horse", Some(&h)));
    }

    #[test]
    fn device_secrets_match_only_exactly() {
        let c = |id: &str, secret: &str| storage::ClientAuth {
            domain_id: "d".into(),
            client_id: id.into(),
            secret: secret.into(),
            client_status: Status::Enabled,
            domain_status: Status::Enabled,
        };
        let found = match_device_secret(vec![c("a", "s1"), c("b", "s2")], "s2");
        assert_eq!(found.map(|c| c.client_id), Some("b".into()));
        assert!(match_device_secret(vec![c("a", "s1")], "s").is_none());
        assert!(match_device_secret(vec![c("a", "s1")], "s10").is_none());
        assert!(match_device_secret(Vec::new(), "s1").is_none());
    }

    #[test]
    fn token_kinds_are_not_interchangeable() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 60, 120);
        let access = t.issue(&user(), TokenKind::Access, "f").expect("issue");
        let refresh = t.issue(&user(), TokenKind::Refresh, "f").expect("issue");
        assert!(t.verify(&access, TokenKind::Access).is_ok());
        assert!(t.verify(&refresh, TokenKind::Access).is_err());
        assert!(t.verify(&access, TokenKind::Refresh).is_err());
        assert_eq!(t.verify(&refresh, TokenKind::Refresh).expect("ok").ep, 3);
        let other = Tokens::new(b"another key another key another k", 60, 120);
        assert!(other.verify(&access, TokenKind::Access).is_err());
    }
}
