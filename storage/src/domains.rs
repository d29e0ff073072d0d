//! Domains (tenants) and their members. A member holds one relation per domain.

use crate::db::{params, Db, Row};
use crate::users::User;
use crate::Change;
use crate::{
    conflict, status_from_sql, EntityFilter, Filter, JsonText, Page, PageReq, Result, Status, Store, StoreError,
};

/// A user's relation to a domain, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Relation {
    Admin,
    Editor,
    Viewer,
}

impl Relation {
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Admin => "admin",
            Relation::Editor => "editor",
            Relation::Viewer => "viewer",
        }
    }
    pub fn parse(s: &str) -> Option<Relation> {
        match s {
            "admin" | "administrator" => Some(Relation::Admin),
            "editor" => Some(Relation::Editor),
            "viewer" | "member" => Some(Relation::Viewer),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Domain {
    pub id: String,
    pub name: String,
    pub route: String,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub status: Status,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub updated_by: Option<String>,
}

pub struct NewDomain {
    pub id: String,
    pub name: String,
    pub route: String,
    pub tags: JsonText,
    pub metadata: JsonText,
}

#[derive(Default)]
pub struct DomainPatch {
    pub name: Option<String>,
    pub tags: Option<JsonText>,
    pub metadata: Option<JsonText>,
    pub status: Option<Status>,
}

#[derive(Default)]
pub struct DomainQuery {
    pub page: PageReq,
    pub filter: EntityFilter,
    /// Only domains this user is a member of; `None` lists all (super-admin).
    pub member: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DomainMember {
    pub user: User,
    pub relation: Relation,
}

const COLUMNS: &str = "id, name, route, tags, metadata, status, created_by, created_at, updated_at, updated_by";

fn from_row(r: &Row) -> Result<Domain> {
    Ok(Domain {
        id: r.get(0)?,
        name: r.get(1)?,
        route: r.get(2)?,
        tags: JsonText(r.get(3)?),
        metadata: JsonText(r.get(4)?),
        status: status_from_sql(&r.get::<String>(5)?),
        created_by: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        updated_by: r.get(9)?,
    })
}

impl Store {
    /// Creates a domain and makes `creator` its admin, in one transaction.
    pub fn create_domain(&self, d: NewDomain, creator: &str) -> Result<Domain> {
        self.write(|tx| {
            let now = crate::now_micros();
            tx.execute(
                "INSERT INTO domains (id, name, route, tags, metadata, status, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'enabled', ?6, ?7)",
                &params![d.id, d.name, d.route, d.tags.0, d.metadata.0, creator, now],
            )
            .map_err(|e| conflict(e, "domain route already in use"))?;
            tx.execute(
                "INSERT INTO domain_members (domain_id, user_id, relation, created_at) VALUES (?1, ?2, 'admin', ?3)",
                &params![d.id, creator, now],
            )?;
            tx.query_row(
                &format!("SELECT {COLUMNS} FROM domains WHERE id = ?1"),
                &params![d.id],
                from_row,
            )
        })
    }

    pub fn domain(&self, id: &str) -> Result<Domain> {
        let c = self.conn()?;
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM domains WHERE id = ?1"),
            &params![id],
            from_row,
        )?
        .ok_or(StoreError::not_found("domain"))
    }

    /// Updates a domain; a status change is announced (`DomainEnabled`, `DomainDisabled`,
    /// `DomainFrozen`).
    pub fn update_domain(&self, id: &str, p: DomainPatch, by: &str) -> Result<Domain> {
        self.write_announcing(|tx, changes| {
            let domain_id = id.to_string();
            match p.status {
                Some(Status::Enabled) => changes.push(Change::DomainEnabled { domain_id }),
                Some(Status::Disabled) => changes.push(Change::DomainDisabled { domain_id }),
                Some(Status::Frozen) => changes.push(Change::DomainFrozen { domain_id }),
                None => {}
            }
            let n = tx.execute(
                "UPDATE domains SET name = COALESCE(?2, name), tags = COALESCE(?3, tags),
                    metadata = COALESCE(?4, metadata), status = COALESCE(?5, status),
                    updated_at = ?6, updated_by = ?7
                 WHERE id = ?1",
                &params![
                    id,
                    p.name,
                    p.tags.map(|t| t.0),
                    p.metadata.map(|m| m.0),
                    p.status.map(Status::as_str),
                    crate::now_micros(),
                    by
                ],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("domain"));
            }
            tx.query_row(
                &format!("SELECT {COLUMNS} FROM domains WHERE id = ?1"),
                &params![id],
                from_row,
            )
        })
    }

    pub fn list_domains(&self, q: &DomainQuery) -> Result<Page<Domain>> {
        let mut f = Filter::new(self.dialect());
        q.filter.apply(&mut f, "");
        if let Some(u) = &q.member {
            f.push(
                "id IN (SELECT domain_id FROM domain_members WHERE user_id = ?)",
                u.clone(),
            );
        }
        let c = self.conn()?;
        f.page(
            &c,
            "domains",
            COLUMNS,
            &q.page.sql(f.dialect(), "name", ""),
            &q.page,
            from_row,
        )
    }

    /// Whether `admin` is an admin of a domain `user` is a member of.
    pub fn administers_member(&self, admin: &str, user: &str) -> Result<bool> {
        let c = self.conn()?;
        c.query_row(
            "SELECT EXISTS (SELECT 1 FROM domain_members a JOIN domain_members b ON b.domain_id = a.domain_id
               JOIN domains d ON d.id = a.domain_id
             WHERE a.user_id = ?1 AND a.relation = 'admin' AND b.user_id = ?2 AND d.status = 'enabled')",
            &params![admin, user],
            |r| r.get(0),
        )
    }

    /// The relation of `user` to `domain`, if any.
    pub fn relation(&self, domain: &str, user: &str) -> Result<Option<Relation>> {
        let c = self.conn()?;
        let r: Option<String> = c.query_opt(
            "SELECT relation FROM domain_members WHERE domain_id = ?1 AND user_id = ?2",
            &params![domain, user],
            |r| r.get(0),
        )?;
        Ok(r.and_then(|s| Relation::parse(&s)))
    }

    /// Gives every user in `users` the relation `rel` in `domain`; all or none (an unknown
    /// user id is `NotFound` and nothing changes). Demoting the domain's last admin is a
    /// `Conflict`, as removing it is: the domain would have nobody to manage it.
    pub fn assign_members(&self, domain: &str, users: &[String], rel: Relation) -> Result<()> {
        self.write(|tx| {
            let now = crate::now_micros();
            for u in users {
                let exists: Option<i64> =
                    tx.query_opt("SELECT 1 FROM users WHERE id = ?1", &params![u], |r| r.get(0))?;
                if exists.is_none() {
                    return Err(StoreError::not_found("user"));
                }
                tx.execute(
                    "INSERT INTO domain_members (domain_id, user_id, relation, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(domain_id, user_id) DO UPDATE SET relation = excluded.relation",
                    &params![domain, u, rel.as_str(), now],
                )?;
            }
            if rel != Relation::Admin {
                let admins: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM domain_members WHERE domain_id = ?1 AND relation = 'admin'",
                    &params![domain],
                    |r| r.get(0),
                )?;
                if admins == 0 {
                    return Err(StoreError::Conflict("cannot demote the last admin of a domain".into()));
                }
            }
            Ok(())
        })
    }

    /// Removes a member. Refuses to remove the last admin, which would orphan the domain.
    pub fn unassign_member(&self, domain: &str, user: &str) -> Result<()> {
        self.write(|tx| {
            let rel: Option<String> = tx.query_opt(
                "SELECT relation FROM domain_members WHERE domain_id = ?1 AND user_id = ?2",
                &params![domain, user],
                |r| r.get(0),
            )?;
            match rel.as_deref() {
                None => return Err(StoreError::not_found("member")),
                Some("admin") => {
                    let admins: i64 = tx.query_row(
                        "SELECT COUNT(*) FROM domain_members WHERE domain_id = ?1 AND relation = 'admin'",
                        &params![domain],
                        |r| r.get(0),
                    )?;
                    if admins <= 1 {
                        return Err(StoreError::Conflict("cannot remove the last admin of a domain".into()));
                    }
                }
                Some(_) => {}
            }
            tx.execute(
                "DELETE FROM domain_members WHERE domain_id = ?1 AND user_id = ?2",
                &params![domain, user],
            )?;
            Ok(())
        })
    }

    pub fn list_members(&self, domain: &str, page: &PageReq) -> Result<Page<DomainMember>> {
        let c = self.conn()?;
        let mut f = Filter::new(self.dialect());
        f.push("m.domain_id = ?", domain.to_string());
        let tail = format!(
            " ORDER BY m.created_at, {}{}",
            self.dialect().rowid("u."),
            page.window()
        );
        let columns = format!("{}, m.relation", crate::users::COLUMNS_U);
        f.page(
            &c,
            "domain_members m JOIN users u ON u.id = m.user_id",
            &columns,
            &tail,
            page,
            |r| {
                let user = crate::users::from_row_pub(r)?;
                let relation = r.parsed(15, Relation::parse)?;
                Ok(DomainMember { user, relation })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{store, user};

    #[test]
    fn creator_is_admin_and_last_admin_stays() {
        let (_d, s) = store();
        let a = user(&s, "a");
        let b = user(&s, "b");
        let d = s
            .create_domain(
                NewDomain {
                    id: "d1".into(),
                    name: "D".into(),
                    route: "d".into(),
                    tags: JsonText::empty_array(),
                    metadata: JsonText::empty_object(),
                },
                &a,
            )
            .expect("domain");
        assert_eq!(s.relation(&d.id, &a).expect("r"), Some(Relation::Admin));
        assert!(matches!(s.unassign_member(&d.id, &a), Err(StoreError::Conflict(_))));
        // Nor can the last admin be demoted, alone or together with others; nothing changes.
        for users in [vec![a.clone()], vec![b.clone(), a.clone()]] {
            assert!(matches!(
                s.assign_members(&d.id, &users, Relation::Viewer),
                Err(StoreError::Conflict(_))
            ));
        }
        assert_eq!(s.relation(&d.id, &a).expect("r"), Some(Relation::Admin));
        assert_eq!(s.relation(&d.id, &b).expect("r"), None);
        s.assign_members(&d.id, std::slice::from_ref(&b), Relation::Viewer)
            .expect("assign");
        assert_eq!(s.list_members(&d.id, &PageReq::default()).expect("m").total, 2);
        assert!(matches!(
            s.assign_members(&d.id, &[b.clone(), "ghost".into()], Relation::Editor),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.relation(&d.id, &b).expect("r"), Some(Relation::Viewer));
        let q = DomainQuery {
            member: Some(b.clone()),
            ..Default::default()
        };
        assert_eq!(s.list_domains(&q).expect("l").total, 1);
    }
}
