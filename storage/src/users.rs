//! Users: identity records, password hashes (PHC strings produced by the caller) and the
//! secret epoch that revokes earlier refresh tokens when a password changes.

use crate::db::{params, Db, Row};
use crate::{
    conflict, status_from_sql, EntityFilter, Filter, JsonText, Page, PageReq, Result, Status, Store, StoreError,
};

/// Platform-wide role of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The super-admin: may do anything anywhere.
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct User {
    pub id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub username: String,
    /// PHC string of the password hash. Never leaves the management layer.
    pub secret: String,
    pub secret_epoch: i64,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub profile_picture: String,
    pub role: Role,
    pub status: Status,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub updated_by: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct NewUser {
    pub id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub username: String,
    pub secret: String,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub profile_picture: String,
    pub role: Role,
    pub status: Status,
}

/// A partial update; `None` leaves a field unchanged.
#[derive(Default)]
pub struct UserPatch {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub metadata: Option<JsonText>,
    pub tags: Option<JsonText>,
    pub profile_picture: Option<String>,
    pub email: Option<String>,
    pub username: Option<String>,
    pub role: Option<Role>,
    pub status: Option<Status>,
}

#[derive(Default)]
pub struct UserQuery {
    pub page: PageReq,
    /// Status, tag, metadata; its name matches username, first name, last name or "first last"
    /// (equality, case-insensitive).
    pub filter: EntityFilter,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub username: Option<String>,
    /// The login identity: e-mail or username (equality, case-insensitive).
    pub identity: Option<String>,
    /// Only users with this platform role.
    pub role: Option<Role>,
    /// Substring match instead of equality on the text fields (used by search).
    pub partial: bool,
}

const COLUMNS: &str = "id, first_name, last_name, email, username, secret, secret_epoch, tags, metadata, profile_picture, role, status, created_at, updated_at, updated_by";

/// [`COLUMNS`] on the users table aliased `u`.
pub(crate) const COLUMNS_U: &str = "u.id, u.first_name, u.last_name, u.email, u.username, u.secret, u.secret_epoch, u.tags, u.metadata, u.profile_picture, u.role, u.status, u.created_at, u.updated_at, u.updated_by";

pub(crate) fn from_row_pub(r: &Row) -> Result<User> {
    from_row(r)
}

fn from_row(r: &Row) -> Result<User> {
    Ok(User {
        id: r.get(0)?,
        first_name: r.get(1)?,
        last_name: r.get(2)?,
        email: r.get(3)?,
        username: r.get(4)?,
        secret: r.get(5)?,
        secret_epoch: r.get(6)?,
        tags: JsonText(r.get(7)?),
        metadata: JsonText(r.get(8)?),
        profile_picture: r.get(9)?,
        role: Role::parse(&r.get::<String>(10)?).unwrap_or(Role::User),
        status: status_from_sql(&r.get::<String>(11)?),
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
        updated_by: r.get(14)?,
    })
}

fn unique_violation(e: StoreError) -> StoreError {
    // SQLite names the column (users.email), PostgreSQL the index (users_email).
    let msg = e.to_string();
    let what = if msg.contains("users.email") || msg.contains("users_email") {
        "email already in use"
    } else if msg.contains("users.username") || msg.contains("users_username") {
        "username already in use"
    } else {
        "user already exists"
    };
    conflict(e, what)
}

fn family_revoked(c: &impl Db, family: &str) -> Result<bool> {
    c.exists(
        "SELECT 1 FROM revoked_token_families WHERE family = ?1",
        &params![family],
    )
}

fn user_on(c: &impl Db, id: &str) -> Result<User> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
        &params![id],
        from_row,
    )?
    .ok_or(StoreError::not_found("user"))
}

impl Store {
    pub fn create_user(&self, u: NewUser) -> Result<User> {
        self.write(|tx| {
            tx.execute("INSERT INTO users (id, first_name, last_name, email, username, secret, tags, metadata, profile_picture, role, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)", &params![
                    u.id, u.first_name, u.last_name, u.email, u.username, u.secret, u.tags.0, u.metadata.0,
                    u.profile_picture, u.role.as_str(), u.status.as_str(), crate::now_micros()
                ])
            .map_err(unique_violation)?;
            tx.query_row(&format!("SELECT {COLUMNS} FROM users WHERE id = ?1"), &params![u.id], from_row)
        })
    }

    /// Revokes a token family (every token issued from one login and its refreshes) until
    /// `expires_at` (seconds since the epoch), after which no token of it can be valid anyway;
    /// drops the records that outlived theirs.
    pub fn revoke_token_family(&self, user: &str, family: &str, expires_at: i64, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM revoked_token_families WHERE expires_at < ?1",
                &params![now],
            )?;
            let later = tx
                .dialect()
                .greatest("revoked_token_families.expires_at", "excluded.expires_at");
            tx.execute(
                &format!(
                    "INSERT INTO revoked_token_families (family, user_id, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (family) DO UPDATE SET expires_at = {later}"
                ),
                &params![family, user, expires_at],
            )?;
            Ok(())
        })
    }

    /// Whether a token family was revoked.
    pub fn token_family_revoked(&self, family: &str) -> Result<bool> {
        family_revoked(&self.conn()?, family)
    }

    /// The user a token names, and whether its family (if any) was revoked: what every
    /// authenticated request checks, on one pooled connection.
    pub fn token_user(&self, id: &str, family: &str) -> Result<(User, bool)> {
        let c = self.conn()?;
        let revoked = !family.is_empty() && family_revoked(&c, family)?;
        Ok((user_on(&c, id)?, revoked))
    }

    pub fn user(&self, id: &str) -> Result<User> {
        user_on(&self.conn()?, id)
    }

    /// Finds a user by username or e-mail (case-insensitive).
    pub fn user_by_identity(&self, identity: &str) -> Result<Option<User>> {
        let c = self.conn()?;
        let d = c.dialect();
        let sql = format!(
            "SELECT {COLUMNS} FROM users WHERE {} OR {} LIMIT 1",
            d.eq_nocase("username", "?1"),
            d.eq_nocase("email", "?1")
        );
        c.query_opt(&sql, &params![identity], from_row)
    }

    pub fn count_users(&self) -> Result<u64> {
        let c = self.conn()?;
        Ok(c.query_row("SELECT COUNT(*) FROM users", &[], |r| r.get::<i64>(0))? as u64)
    }

    pub fn update_user(&self, id: &str, p: UserPatch, by: &str) -> Result<User> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE users SET
                        first_name = COALESCE(?2, first_name),
                        last_name = COALESCE(?3, last_name),
                        metadata = COALESCE(?4, metadata),
                        tags = COALESCE(?5, tags),
                        profile_picture = COALESCE(?6, profile_picture),
                        email = COALESCE(?7, email),
                        username = COALESCE(?8, username),
                        role = COALESCE(?9, role),
                        status = COALESCE(?10, status),
                        updated_at = ?11, updated_by = ?12
                     WHERE id = ?1",
                    &params![
                        id,
                        p.first_name,
                        p.last_name,
                        p.metadata.map(|m| m.0),
                        p.tags.map(|t| t.0),
                        p.profile_picture,
                        p.email,
                        p.username,
                        p.role.map(Role::as_str),
                        p.status.map(Status::as_str),
                        crate::now_micros(),
                        by
                    ],
                )
                .map_err(unique_violation)?;
            if n == 0 {
                return Err(StoreError::not_found("user"));
            }
            tx.query_row(
                &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
                &params![id],
                from_row,
            )
        })
    }

    /// Replaces the password hash and bumps the secret epoch, which invalidates every
    /// refresh or reset token issued before. `expected_epoch`, when given, makes the change
    /// conditional (a reset token is single-use).
    pub fn set_user_secret(&self, id: &str, secret: &str, expected_epoch: Option<i64>) -> Result<User> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE users SET secret = ?2, secret_epoch = secret_epoch + 1, updated_at = ?3, updated_by = ?1
                 WHERE id = ?1 AND (CAST(?4 AS BIGINT) IS NULL OR secret_epoch = ?4)",
                &params![id, secret, crate::now_micros(), expected_epoch],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("user"));
            }
            tx.query_row(
                &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
                &params![id],
                from_row,
            )
        })
    }

    pub fn delete_user(&self, id: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM users WHERE id = ?1", &params![id])?;
            if n == 0 {
                return Err(StoreError::not_found("user"));
            }
            Ok(())
        })
    }

    pub fn list_users(&self, q: &UserQuery) -> Result<Page<User>> {
        let d = self.dialect();
        let mut f = Filter::new(d);
        let name = format!(
            "({} OR {} OR {} OR {})",
            d.eq_nocase("username", "?"),
            d.eq_nocase("first_name", "?"),
            d.eq_nocase("last_name", "?"),
            d.eq_nocase("(first_name || ' ' || last_name)", "?")
        );
        q.filter.apply_with_name(&mut f, "", &name);
        let text = |f: &mut Filter, col: &str, v: &Option<String>| {
            if let Some(v) = v {
                if q.partial {
                    f.push(d.contains_nocase(col, "?"), v.clone());
                } else {
                    f.push(d.eq_nocase(col, "?"), v.clone());
                }
            }
        };
        text(&mut f, "first_name", &q.first_name);
        text(&mut f, "last_name", &q.last_name);
        text(&mut f, "email", &q.email);
        text(&mut f, "username", &q.username);
        if let Some(v) = &q.identity {
            let clause = format!("({} OR {})", d.eq_nocase("email", "?"), d.eq_nocase("username", "?"));
            f.push(clause, v.clone());
        }
        if let Some(r) = q.role {
            f.push("role = ?", r.as_str().to_string());
        }
        let c = self.conn()?;
        f.page(
            &c,
            "users",
            COLUMNS,
            &q.page.sql(f.dialect(), "first_name", ""),
            &q.page,
            from_row,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    #[test]
    fn revoked_token_families_are_remembered_until_they_expire() {
        let (_dir, s) = store();
        assert!(!s.token_family_revoked("f1").expect("read"));
        s.revoke_token_family("u", "f1", 100, 50).expect("revoke");
        s.revoke_token_family("u", "f1", 90, 50)
            .expect("again: the later expiry stays");
        assert!(s.token_family_revoked("f1").expect("read"));
        s.revoke_token_family("u", "f2", 300, 101)
            .expect("a later revocation prunes f1");
        assert!(!s.token_family_revoked("f1").expect("read"));
        assert!(s.token_family_revoked("f2").expect("read"));
    }

    fn new(name: &str) -> NewUser {
        NewUser {
            id: format!("id-{name}"),
            first_name: name.into(),
            last_name: "Doe".into(),
            email: format!("{name}@example.com"),
            username: name.into(),
            secret: "hash".into(),
            tags: JsonText("[\"a\"]".into()),
            metadata: JsonText("{\"k\":\"v\",\"n\":1}".into()),
            profile_picture: String::new(),
            role: Role::User,
            status: Status::Enabled,
        }
    }

    #[test]
    fn duplicate_email_or_username_conflicts() {
        let (_d, s) = store();
        s.create_user(new("jane")).expect("create");
        let mut dup = new("jane");
        dup.id = "other".into();
        dup.username = "other".into();
        match s.create_user(dup) {
            Err(StoreError::Conflict(m)) => assert!(m.contains("email"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut dup = new("JANE");
        dup.id = "other2".into();
        dup.email = "x@example.com".into();
        assert!(matches!(s.create_user(dup), Err(StoreError::Conflict(_))));
    }

    #[test]
    fn list_filters_by_tag_metadata_and_text() {
        let (_d, s) = store();
        s.create_user(new("ann")).expect("c");
        let mut b = new("bob");
        b.tags = JsonText("[\"b\"]".into());
        b.metadata = JsonText("{\"k\":\"w\"}".into());
        s.create_user(b).expect("c");
        let q = UserQuery {
            filter: EntityFilter {
                tag: Some("a".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(s.list_users(&q).expect("l").total, 1);
        let q = UserQuery {
            filter: EntityFilter {
                metadata: Some(JsonText("{\"k\":\"w\"}".into())),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = s.list_users(&q).expect("l");
        assert_eq!(p.total, 1);
        assert_eq!(p.items[0].username, "bob");
        let q = UserQuery {
            filter: EntityFilter {
                metadata: Some(JsonText("{\"n\":1}".into())),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(s.list_users(&q).expect("l").items[0].username, "ann");
        let q = UserQuery {
            username: Some("O".into()),
            partial: true,
            ..Default::default()
        };
        assert_eq!(s.list_users(&q).expect("l").total, 1);
    }

    #[test]
    fn secret_change_bumps_epoch_and_is_conditional() {
        let (_d, s) = store();
        let u = s.create_user(new("cy")).expect("c");
        let u2 = s.set_user_secret(&u.id, "h2", Some(u.secret_epoch)).expect("set");
        assert_eq!(u2.secret_epoch, u.secret_epoch + 1);
        assert!(matches!(
            s.set_user_secret(&u.id, "h3", Some(u.secret_epoch)),
            Err(StoreError::NotFound(_))
        ));
    }
}
