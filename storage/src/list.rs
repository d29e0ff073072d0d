//! The one list shape: the filter every entity list shares ([`EntityFilter`]), the page
//! ([`PageReq`] in, [`Page`] out), the scope of tenant lists and the `WHERE` builder. Every
//! list query of the store counts and pages through [`Filter::page`].

use crate::db::{Db, Dialect, Row, ToValue, Value};
use crate::{JsonText, Result};

/// Status filter for list queries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatusFilter {
    #[default]
    Enabled,
    Disabled,
    All,
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<StatusFilter> {
        match s {
            "enabled" => Some(StatusFilter::Enabled),
            "disabled" => Some(StatusFilter::Disabled),
            "all" => Some(StatusFilter::All),
            _ => None,
        }
    }
    pub(crate) fn sql(self, column: &str) -> Option<String> {
        match self {
            StatusFilter::Enabled => Some(format!("{column} = 'enabled'")),
            StatusFilter::Disabled => Some(format!("{column} = 'disabled'")),
            StatusFilter::All => None,
        }
    }
}

/// Sort order of list queries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    Name,
    #[default]
    CreatedAt,
    UpdatedAt,
}

impl Order {
    pub fn parse(s: &str) -> Option<Order> {
        match s {
            "name" => Some(Order::Name),
            "created_at" => Some(Order::CreatedAt),
            "updated_at" => Some(Order::UpdatedAt),
            _ => None,
        }
    }
    pub(crate) fn column(self, name_column: &str) -> String {
        match self {
            Order::Name => name_column.to_string(),
            Order::CreatedAt => "created_at".into(),
            Order::UpdatedAt => "COALESCE(updated_at, created_at)".into(),
        }
    }
}

/// Offset/limit, order and direction of a list query.
#[derive(Clone, Copy, Debug)]
pub struct PageReq {
    pub offset: u64,
    pub limit: u64,
    pub order: Order,
    pub descending: bool,
}

impl Default for PageReq {
    fn default() -> Self {
        PageReq {
            offset: 0,
            limit: 10,
            order: Order::CreatedAt,
            descending: false,
        }
    }
}

impl PageReq {
    /// ` ORDER BY … LIMIT … OFFSET …` ordering on `name_column` (for [`Order::Name`], by code
    /// point), with the insertion order of the table aliased `alias` breaking ties so pages
    /// never overlap.
    pub(crate) fn sql(&self, d: Dialect, name_column: &str, alias: &str) -> String {
        let dir = if self.descending { "DESC" } else { "ASC" };
        let key = match self.order {
            Order::Name => d.text_order(name_column),
            o => o.column(name_column),
        };
        format!(" ORDER BY {key} {dir}, {} {dir}{}", d.rowid(alias), self.window())
    }
    /// ` LIMIT … OFFSET …` alone, for lists with a fixed order.
    pub(crate) fn window(&self) -> String {
        format!(
            " LIMIT {} OFFSET {}",
            self.limit.min(i64::MAX as u64),
            self.offset.min(i64::MAX as u64)
        )
    }
}

/// The filter shared by the lists of clients, channels, groups, domains and users: status,
/// name (a case-insensitive substring; users give it their own meaning), a tag, metadata.
#[derive(Clone, Debug, Default)]
pub struct EntityFilter {
    pub status: StatusFilter,
    pub name: Option<String>,
    pub tag: Option<String>,
    pub metadata: Option<JsonText>,
}

impl EntityFilter {
    /// Adds the filter on the table aliased `alias` (`"c."`, or `""` for none), the name
    /// matched as a substring of `{alias}name`.
    pub(crate) fn apply(&self, f: &mut Filter, alias: &str) {
        let name = f.dialect().contains_nocase(&format!("{alias}name"), "?");
        self.apply_with_name(f, alias, &name);
    }
    /// [`EntityFilter::apply`] with the name matched by `name_clause` (every `?` in it is the
    /// name).
    pub(crate) fn apply_with_name(&self, f: &mut Filter, alias: &str, name_clause: &str) {
        f.status(self.status, &format!("{alias}status"));
        if let Some(n) = &self.name {
            f.push(name_clause, n.clone());
        }
        f.tag(&format!("{alias}tags"), &self.tag);
        f.metadata(&format!("{alias}metadata"), &self.metadata);
    }
}

/// A page and the shared filter: the whole query of lists with nothing more to filter on.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub page: PageReq,
    pub filter: EntityFilter,
}

/// One page of a list query and the total number of matches.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub items: Vec<T>,
}

/// Which domains a list covers: one domain, or every enabled domain a user is a member of.
#[derive(Clone, Debug)]
pub enum Scope {
    Domain(String),
    MemberOf(String),
}

impl From<&str> for Scope {
    fn from(d: &str) -> Scope {
        Scope::Domain(d.to_string())
    }
}

impl From<&String> for Scope {
    fn from(d: &String) -> Scope {
        Scope::Domain(d.clone())
    }
}

impl Scope {
    /// Restricts `column` (a domain id) to the scope.
    pub(crate) fn filter(self, f: &mut Filter, column: &str) {
        match self {
            Scope::Domain(d) => f.push(format!("{column} = ?"), d),
            Scope::MemberOf(u) => f.push(
                format!(
                    "{column} IN (SELECT m.domain_id FROM domain_members m JOIN domains dm ON dm.id = m.domain_id
                     WHERE m.user_id = ? AND dm.status = 'enabled')"
                ),
                u,
            ),
        }
    }
}

/// Builds `WHERE` clauses with positional parameters without string-pasting values, in one
/// backend's dialect.
pub(crate) struct Filter {
    dialect: Dialect,
    clauses: Vec<String>,
    params: Vec<Value>,
}

impl Filter {
    pub(crate) fn new(dialect: Dialect) -> Filter {
        Filter {
            dialect,
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }
    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }
    /// Adds `clause`, every `?` in it standing for `value` (so a clause holds no numbered
    /// parameters of its own).
    pub(crate) fn push(&mut self, clause: impl Into<String>, value: impl ToValue) {
        self.clauses
            .push(clause.into().replace('?', &format!("?{}", self.params.len() + 1)));
        self.params.push(value.to_value());
    }
    /// The number the next pushed parameter will have (`?N`), to reuse it elsewhere in a query.
    pub(crate) fn next_index(&self) -> usize {
        self.params.len() + 1
    }
    pub(crate) fn raw(&mut self, clause: impl Into<String>) {
        self.clauses.push(clause.into());
    }
    pub(crate) fn status(&mut self, s: StatusFilter, column: &str) {
        if let Some(c) = s.sql(column) {
            self.raw(c);
        }
    }
    /// Rows whose `column` holds a JSON object containing every key/value of `want`.
    pub(crate) fn metadata(&mut self, column: &str, want: &Option<JsonText>) {
        if let Some(m) = want {
            let clause = self.dialect.json_has_all(column, "?");
            self.push(clause, m.0.clone());
        }
    }
    /// Rows whose JSON array `column` contains `tag`.
    pub(crate) fn tag(&mut self, column: &str, tag: &Option<String>) {
        if let Some(t) = tag {
            let clause = self.dialect.json_array_has(column, "?");
            self.push(clause, t.clone());
        }
    }
    pub(crate) fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
    /// Counts the rows of `from` passing the filter and reads the page of them `tail` (an
    /// ORDER BY and a window) selects, each row as `columns` mapped by `map`. Row errors are
    /// errors of the whole list.
    pub(crate) fn page<T>(
        &self,
        c: &impl Db,
        from: &str,
        columns: &str,
        tail: &str,
        page: &PageReq,
        map: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Page<T>> {
        let w = self.where_sql();
        let total: i64 = c.query_row(&format!("SELECT COUNT(*) FROM {from}{w}"), &self.params, |r| r.get(0))?;
        let items = c.query_map(&format!("SELECT {columns} FROM {from}{w}{tail}"), &self.params, map)?;
        Ok(Page {
            total: total.max(0) as u64,
            offset: page.offset,
            limit: page.limit,
            items,
        })
    }
    pub(crate) fn values(&self) -> &[Value] {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;
    use crate::{
        ChannelQuery, ClientQuery, DomainQuery, NewChannel, NewClient, NewDomain, NewGroup, Relation, Status, Store,
    };

    fn labelled(tag: &str, key: &str) -> (JsonText, JsonText) {
        (
            JsonText(format!("[\"{tag}\"]")),
            JsonText(format!("{{\"{key}\":\"v\"}}")),
        )
    }

    /// Two of each entity: "Alpha one" (tag a, metadata {"k":"v"}, enabled) and "beta"
    /// (tag b, metadata {"j":"v"}, disabled).
    fn fill(s: &Store) {
        crate::testutil::user(s, "u");
        for (n, (name, tag, key, status)) in [
            ("Alpha one", "a", "k", Status::Enabled),
            ("beta", "b", "j", Status::Disabled),
        ]
        .into_iter()
        .enumerate()
        {
            let (tags, metadata) = labelled(tag, key);
            let d = s
                .create_domain(
                    NewDomain {
                        id: format!("d{n}"),
                        name: name.into(),
                        route: format!("r{n}"),
                        tags: tags.clone(),
                        metadata: metadata.clone(),
                    },
                    "u",
                )
                .expect("domain");
            if status == Status::Disabled {
                s.update_domain(
                    &d.id,
                    crate::DomainPatch {
                        status: Some(status),
                        ..Default::default()
                    },
                    "u",
                )
                .expect("disable");
            }
            s.create_clients(
                "d0",
                &[NewClient {
                    id: format!("c{n}"),
                    name: name.into(),
                    identity: String::new(),
                    secret: format!("s{n}"),
                    tags: tags.clone(),
                    metadata: metadata.clone(),
                    status,
                }],
            )
            .expect("client");
            s.create_channels(
                "d0",
                &[NewChannel {
                    id: format!("h{n}"),
                    name: name.into(),
                    description: String::new(),
                    parent_group_id: None,
                    tags: tags.clone(),
                    metadata: metadata.clone(),
                    status,
                }],
            )
            .expect("channel");
            s.create_group(
                "d0",
                NewGroup {
                    id: format!("g{n}"),
                    parent_id: None,
                    name: name.into(),
                    description: String::new(),
                    tags,
                    metadata,
                    status,
                },
            )
            .expect("group");
        }
    }

    /// Ids of each entity list under one filter: clients, channels, groups, domains.
    fn listed(s: &Store, filter: EntityFilter) -> [Vec<String>; 4] {
        let page = PageReq::default();
        let clients = s
            .list_clients(
                "d0",
                &ClientQuery {
                    page,
                    filter: filter.clone(),
                    channel: None,
                    connected: None,
                },
            )
            .expect("clients");
        let channels = s
            .list_channels(
                "d0",
                &ChannelQuery {
                    page,
                    filter: filter.clone(),
                    client: None,
                },
            )
            .expect("channels");
        let groups = s
            .list_groups(
                "d0",
                &ListQuery {
                    page,
                    filter: filter.clone(),
                },
            )
            .expect("groups");
        let domains = s
            .list_domains(&DomainQuery {
                page,
                filter,
                member: None,
            })
            .expect("domains");
        let ids = |v: Vec<String>| v.into_iter().map(|i| i[1..].to_string()).collect();
        [
            ids(clients.items.into_iter().map(|c| c.id).collect()),
            ids(channels.items.into_iter().map(|c| c.id).collect()),
            ids(groups.items.into_iter().map(|c| c.id).collect()),
            ids(domains.items.into_iter().map(|c| c.id).collect()),
        ]
    }

    #[test]
    fn one_entity_filter_means_the_same_on_every_list() {
        let (_d, s) = store();
        fill(&s);
        let all = |f: EntityFilter| listed(&s, f);
        let each = |v: &[&str]| {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            [v.clone(), v.clone(), v.clone(), v]
        };
        assert_eq!(all(EntityFilter::default()), each(&["0"]), "enabled by default");
        let every = |f: EntityFilter| EntityFilter {
            status: StatusFilter::All,
            ..f
        };
        assert_eq!(all(every(EntityFilter::default())), each(&["0", "1"]));
        assert_eq!(
            all(EntityFilter {
                status: StatusFilter::Disabled,
                ..Default::default()
            }),
            each(&["1"])
        );
        let named = every(EntityFilter {
            name: Some("PHA O".into()),
            ..Default::default()
        });
        assert_eq!(all(named), each(&["0"]), "name: case-insensitive substring");
        let tagged = every(EntityFilter {
            tag: Some("b".into()),
            ..Default::default()
        });
        assert_eq!(all(tagged), each(&["1"]));
        let meta = every(EntityFilter {
            metadata: Some(JsonText("{\"j\":\"v\"}".into())),
            ..Default::default()
        });
        assert_eq!(all(meta), each(&["1"]));
        let none = every(EntityFilter {
            name: Some("alpha".into()),
            tag: Some("b".into()),
            ..Default::default()
        });
        assert_eq!(all(none), each(&[]), "filters combine with AND");
    }

    #[test]
    fn a_page_counts_every_match_and_holds_its_window() {
        let (_d, s) = store();
        fill(&s);
        let p = s
            .list_clients(
                "d0",
                &ClientQuery {
                    page: PageReq {
                        offset: 1,
                        limit: 1,
                        order: Order::Name,
                        descending: false,
                    },
                    filter: EntityFilter {
                        status: StatusFilter::All,
                        ..Default::default()
                    },
                    channel: None,
                    connected: None,
                },
            )
            .expect("page");
        assert_eq!((p.total, p.offset, p.limit), (2, 1, 1));
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].name, "beta", "ordered by name: Alpha one, beta");
    }

    /// A row the store cannot read fails the list instead of vanishing from it.
    #[test]
    fn a_bad_row_fails_the_list() {
        let (_d, s) = store();
        fill(&s);
        let u = crate::testutil::user(&s, "u1");
        s.assign_members("d0", std::slice::from_ref(&u), Relation::Viewer)
            .expect("member");
        assert_eq!(
            s.list_members("d0", &PageReq::default()).expect("members").total,
            2,
            "creator and u1"
        );
        s.conn()
            .expect("conn")
            .execute("UPDATE domain_members SET relation = 'emperor'", &[])
            .expect("corrupt");
        assert!(matches!(
            s.list_members("d0", &PageReq::default()),
            Err(crate::StoreError::Corrupt(_))
        ));
    }
}
