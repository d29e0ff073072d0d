//! Groups: a hierarchy per domain (a group has at most one parent, no cycles), and their
//! user members.

use crate::db::{params, Db, Row, ToValue};
use crate::entity::{self, record, shared_columns, OWN};
use crate::users::User;
use crate::{Filter, JsonText, ListQuery, Page, PageReq, Result, Status, StatusFilter, Store, StoreError};

#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub domain_id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub description: String,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub status: Status,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub updated_by: Option<String>,
}

/// A group in a hierarchy listing: its level relative to the group asked about (negative for
/// ancestors) and its path from the root, ids joined by `.`.
#[derive(Clone, Debug)]
pub struct GroupNode {
    pub group: Group,
    pub level: i64,
    pub path: String,
}

pub struct NewGroup {
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub description: String,
    pub tags: JsonText,
    pub metadata: JsonText,
    pub status: Status,
}

#[derive(Default)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<JsonText>,
    pub tags: Option<JsonText>,
    pub status: Option<Status>,
}

/// Deepest hierarchy walked by the recursive queries.
pub const MAX_DEPTH: i64 = 64;

/// [`MAX_DEPTH`], for callers outside the crate.
pub fn max_depth() -> i64 {
    MAX_DEPTH
}

const COLUMNS: &str = concat!(shared_columns!("g."), ", g.parent_id, g.description");

fn from_row(r: &Row) -> Result<Group> {
    Ok(record!(
        r,
        Group {
            parent_id: r.get(OWN)?,
            description: r.get(OWN + 1)?,
        }
    ))
}

fn get(c: &impl Db, domain: &str, id: &str) -> Result<Group> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM groups g WHERE g.domain_id = ?1 AND g.id = ?2"),
        &params![domain, id],
        from_row,
    )?
    .ok_or(StoreError::not_found("group"))
}

/// Ids from the root down to `id`.
fn chain(c: &impl Db, domain: &str, id: &str) -> Result<Vec<String>> {
    c.query_map(
        "WITH RECURSIVE up(id, parent_id, depth) AS (
            SELECT id, parent_id, 0 FROM groups WHERE domain_id = ?1 AND id = ?2
            UNION ALL
            SELECT g.id, g.parent_id, up.depth + 1 FROM groups g JOIN up ON g.id = up.parent_id WHERE up.depth < ?3)
         SELECT id FROM up ORDER BY depth DESC",
        &params![domain, id, MAX_DEPTH],
        |r| r.get::<String>(0),
    )
}

/// A row of a tree query: the group's columns, then its level and path.
fn node(r: &Row) -> Result<GroupNode> {
    Ok(GroupNode {
        group: from_row(r)?,
        level: r.get(OWN + 2)?,
        path: r.get(OWN + 3)?,
    })
}

impl Store {
    pub fn create_group(&self, domain: &str, g: NewGroup) -> Result<Group> {
        self.write(|tx| {
            if let Some(p) = &g.parent_id {
                get(tx, domain, p).map_err(|_| StoreError::Invalid("parent group not found in this domain".into()))?;
                if chain(tx, domain, p)?.len() as i64 >= MAX_DEPTH {
                    return Err(StoreError::Invalid(format!("groups nest at most {MAX_DEPTH} deep")));
                }
            }
            let own = [
                ("parent_id", g.parent_id.to_value()),
                ("description", g.description.to_value()),
            ];
            let shared = entity::Shared::new(&g.id, &g.name, &g.tags, &g.metadata, g.status);
            entity::insert(tx, "groups", domain, shared, &own, crate::now_micros())
                .map_err(|e| crate::conflict(e, "group id already exists"))?;
            get(tx, domain, &g.id)
        })
    }

    pub fn group(&self, domain: &str, id: &str) -> Result<Group> {
        get(&self.conn()?, domain, id)
    }

    /// A group by id alone (group ids are generated UUIDs, unique across domains).
    pub fn group_any_domain(&self, id: &str) -> Result<Group> {
        let c = self.conn()?;
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM groups g WHERE g.id = ?1"),
            &params![id],
            from_row,
        )?
        .ok_or(StoreError::not_found("group"))
    }

    /// The group's path from the root, ids joined by `.`.
    pub fn group_path(&self, domain: &str, id: &str) -> Result<String> {
        Ok(chain(&self.conn()?, domain, id)?.join("."))
    }

    pub fn update_group(&self, domain: &str, id: &str, p: GroupPatch, by: &str) -> Result<Group> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE groups SET name = COALESCE(?3, name), description = COALESCE(?4, description),
                    metadata = COALESCE(?5, metadata), tags = COALESCE(?6, tags), status = COALESCE(?7, status),
                    updated_at = ?8, updated_by = ?9
                 WHERE domain_id = ?1 AND id = ?2",
                &params![
                    domain,
                    id,
                    p.name,
                    p.description,
                    p.metadata.map(|m| m.0),
                    p.tags.map(|t| t.0),
                    p.status.map(Status::as_str),
                    crate::now_micros(),
                    by
                ],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("group"));
            }
            get(tx, domain, id)
        })
    }

    /// Moves a group under `parent` (or to the top with `None`). Refuses cycles: the new
    /// parent may be neither the group nor one of its descendants.
    pub fn set_group_parent(&self, domain: &str, id: &str, parent: Option<&str>, by: &str) -> Result<Group> {
        self.write(|tx| {
            get(tx, domain, id)?;
            if let Some(p) = parent {
                get(tx, domain, p).map_err(|_| StoreError::Invalid("parent group not found in this domain".into()))?;
                let ancestors = chain(tx, domain, p)?;
                if ancestors.iter().any(|a| a == id) {
                    return Err(StoreError::Conflict("that parent would make a cycle".into()));
                }
            }
            tx.execute(
                "UPDATE groups SET parent_id = ?3, updated_at = ?4, updated_by = ?5 WHERE domain_id = ?1 AND id = ?2",
                &params![domain, id, parent, crate::now_micros(), by],
            )?;
            get(tx, domain, id)
        })
    }

    /// Deletes a group that has no children (409 otherwise: move or delete them first).
    /// Channels under it lose their parent; memberships go with it.
    pub fn delete_group(&self, domain: &str, id: &str) -> Result<()> {
        self.write(|tx| {
            get(tx, domain, id)?;
            let children: i64 = tx.query_row(
                "SELECT COUNT(*) FROM groups WHERE domain_id = ?1 AND parent_id = ?2",
                &params![domain, id],
                |r| r.get(0),
            )?;
            if children > 0 {
                return Err(StoreError::Conflict(
                    "group has children; delete or move them first".into(),
                ));
            }
            tx.execute(
                "DELETE FROM groups WHERE domain_id = ?1 AND id = ?2",
                &params![domain, id],
            )?;
            Ok(())
        })
    }

    pub fn list_groups(&self, domain: &str, q: &ListQuery) -> Result<Page<Group>> {
        let mut f = Filter::new(self.dialect());
        f.push("g.domain_id = ?", domain.to_string());
        q.filter.apply(&mut f, "g.");
        let c = self.conn()?;
        f.page(
            &c,
            "groups g",
            COLUMNS,
            &q.page.sql(f.dialect(), "g.name", "g."),
            &q.page,
            from_row,
        )
    }

    /// Every group of the domain passing the status filter, with level and path from its
    /// root (for tree listings).
    pub fn group_forest(&self, domain: &str, status: StatusFilter) -> Result<Vec<GroupNode>> {
        let c = self.conn()?;
        let status_sql = status.sql("g.status").map(|s| format!(" AND {s}")).unwrap_or_default();
        c.query_map(
            &format!(
                "WITH RECURSIVE down(id, depth, path) AS (
                SELECT id, 0, id FROM groups WHERE domain_id = ?1 AND parent_id IS NULL
                UNION ALL
                SELECT g.id, down.depth + 1, down.path || '.' || g.id FROM groups g JOIN down ON g.parent_id = down.id
                WHERE down.depth < ?2)
             SELECT {COLUMNS}, down.depth, down.path FROM down JOIN groups g ON g.id = down.id
             WHERE 1 = 1{status_sql} ORDER BY down.depth, g.created_at, {}",
                self.dialect().rowid("g.")
            ),
            &params![domain, MAX_DEPTH],
            node,
        )
    }

    /// The group and its descendants up to `levels` below it (level 0 is the group).
    pub fn group_descendants(&self, domain: &str, id: &str, levels: i64) -> Result<Vec<GroupNode>> {
        let c = self.conn()?;
        get(&c, domain, id)?;
        let root_path = chain(&c, domain, id)?.join(".");
        c.query_map(
            &format!(
                "WITH RECURSIVE down(id, depth, path) AS (
                SELECT id, 0, CAST(?3 AS TEXT) FROM groups WHERE domain_id = ?1 AND id = ?2
                UNION ALL
                SELECT g.id, down.depth + 1, down.path || '.' || g.id FROM groups g JOIN down ON g.parent_id = down.id
                WHERE down.depth < ?4)
             SELECT {COLUMNS}, down.depth, down.path FROM down JOIN groups g ON g.id = down.id
             ORDER BY down.depth, g.created_at, {}",
                self.dialect().rowid("g.")
            ),
            &params![domain, id, root_path, levels.clamp(0, MAX_DEPTH)],
            node,
        )
    }

    /// The group and its ancestors up to `levels` above it (level 0 is the group, parents
    /// negative).
    pub fn group_ancestors(&self, domain: &str, id: &str, levels: i64) -> Result<Vec<GroupNode>> {
        let c = self.conn()?;
        get(&c, domain, id)?;
        let ids = chain(&c, domain, id)?;
        let n = ids.len();
        let mut out = Vec::new();
        for (i, gid) in ids.iter().enumerate().rev() {
            let level = i as i64 - (n as i64 - 1);
            if -level > levels {
                break;
            }
            out.push(GroupNode {
                group: get(&c, domain, gid)?,
                level,
                path: ids[..=i].join("."),
            });
        }
        Ok(out)
    }

    /// Adds (or updates the actions of) a user member of a group. The user must belong to
    /// the group's domain.
    pub fn add_group_member(&self, domain: &str, group: &str, user: &str, actions: &JsonText) -> Result<()> {
        self.write(|tx| {
            get(tx, domain, group)?;
            let member = tx.exists(
                "SELECT 1 FROM domain_members WHERE domain_id = ?1 AND user_id = ?2",
                &params![domain, user],
            )?;
            if !member {
                return Err(StoreError::Invalid("user is not a member of the group's domain".into()));
            }
            tx.execute(
                "INSERT INTO group_members (group_id, user_id, actions, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(group_id, user_id) DO UPDATE SET actions = excluded.actions",
                &params![group, user, actions.0, crate::now_micros()],
            )?;
            Ok(())
        })
    }

    pub fn remove_group_member(&self, domain: &str, group: &str, user: &str) -> Result<()> {
        self.write(|tx| {
            get(tx, domain, group)?;
            let n = tx.execute(
                "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                &params![group, user],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("member"));
            }
            Ok(())
        })
    }

    pub fn list_group_members(&self, domain: &str, group: &str, page: &PageReq) -> Result<Page<User>> {
        let c = self.conn()?;
        get(&c, domain, group)?;
        let mut f = Filter::new(self.dialect());
        f.push("m.group_id = ?", group.to_string());
        let tail = format!(
            " ORDER BY m.created_at, {}{}",
            self.dialect().rowid("u."),
            page.window()
        );
        f.page(
            &c,
            "group_members m JOIN users u ON u.id = m.user_id",
            crate::users::COLUMNS_U,
            &tail,
            page,
            crate::users::from_row_pub,
        )
    }

    /// The groups a user belongs to (in every domain).
    /// The group memberships of `user`; with `admin`, only those in domains where `admin` is
    /// an admin and `user` a member (what a domain admin may see of a member).
    pub fn user_memberships(&self, user: &str, admin: Option<&str>, page: &PageReq) -> Result<Page<Group>> {
        let c = self.conn()?;
        let mut f = Filter::new(self.dialect());
        f.push("m.user_id = ?", user.to_string());
        if let Some(admin) = admin {
            f.push(
                "g.domain_id IN (SELECT a.domain_id FROM domain_members a JOIN domain_members b
                 ON b.domain_id = a.domain_id WHERE a.user_id = ? AND a.relation = 'admin' AND b.user_id = m.user_id)",
                admin.to_string(),
            );
        }
        let tail = format!(
            " ORDER BY m.created_at, {}{}",
            self.dialect().rowid("g."),
            page.window()
        );
        f.page(
            &c,
            "group_members m JOIN groups g ON g.id = m.group_id",
            COLUMNS,
            &tail,
            page,
            from_row,
        )
    }
}
