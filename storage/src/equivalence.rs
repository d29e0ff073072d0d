//! Both backends give the same answers: one data set loaded into SQLite and into PostgreSQL,
//! then every list filter (status, name, tag, metadata, paging, order) and every reader query
//! (filters, comparators, aggregations, intervals) compared field by field. Runs when
//! `FLUXGATE_TEST_DATABASE_URL` names a PostgreSQL server.

use crate::testdb::TestDatabase;
use crate::*;

fn open_both() -> Option<(tempfile::TempDir, Store, TestDatabase, Store)> {
    let server = crate::testdb::server_url()?;
    let dir = tempfile::tempdir().expect("dir");
    let lite = Store::open(&dir.path().join("eq.db"), &StoreConfig::default()).expect("sqlite");
    let db = TestDatabase::create(&server).expect("database");
    let pg = Store::open_url(&db.store_url(), &StoreConfig::default()).expect("postgres");
    Some((dir, lite, db, pg))
}

const NAMES: &[&str] = &[
    "Alpha",
    "alpha",
    "ALPHA two",
    "beta",
    "Beta",
    "Ånne",
    "anne",
    "Zed",
    "zed",
    "_under",
    "a b",
    "",
];
const TAGS: &[&str] = &[r#"["t1"]"#, r#"["t1","t2"]"#, r#"[1]"#, r#"["1"]"#, "[]", r#"["T1"]"#];
const METADATA: &[&str] = &[
    r#"{"k":"v"}"#,
    r#"{"k":1}"#,
    r#"{"k":"1"}"#,
    r#"{"k":true}"#,
    r#"{"k":1.5,"j":"v"}"#,
    r#"{"n":{"x":1}}"#,
    "{}",
    r#"{"k":"V"}"#,
];

fn fill(s: &Store) {
    crate::testutil::user(s, "owner");
    for (i, n) in NAMES.iter().enumerate() {
        s.create_user(NewUser {
            id: format!("u{i:02}"),
            first_name: n.to_string(),
            last_name: if i % 2 == 0 { "Smith".into() } else { "smith".into() },
            email: format!("User{i}@Example.com"),
            username: format!("{}{i}", n.replace(' ', "_")),
            secret: "h".into(),
            tags: JsonText(TAGS[i % TAGS.len()].into()),
            metadata: JsonText(METADATA[i % METADATA.len()].into()),
            profile_picture: String::new(),
            role: if i == 3 { Role::Admin } else { Role::User },
            status: if i % 4 == 1 { Status::Disabled } else { Status::Enabled },
        })
        .expect("user");
    }
    for d in ["d", "e"] {
        crate::testutil::domain(s, d, "owner");
    }
    s.assign_members("e", &["u01".into(), "u02".into()], Relation::Viewer)
        .expect("members");
    let mut clients = Vec::new();
    let mut channels = Vec::new();
    for i in 0..36 {
        let n = NAMES[i % NAMES.len()];
        let status = if i % 3 == 2 { Status::Disabled } else { Status::Enabled };
        clients.push(NewClient {
            id: format!("c{i:02}"),
            name: n.into(),
            identity: String::new(),
            secret: format!("secret-{i}"),
            tags: JsonText(TAGS[i % TAGS.len()].into()),
            metadata: JsonText(METADATA[i % METADATA.len()].into()),
            status,
        });
        if i < 24 {
            channels.push(NewChannel {
                id: format!("h{i:02}"),
                name: n.into(),
                description: format!("channel {i}"),
                parent_group_id: None,
                tags: JsonText(TAGS[(i + 1) % TAGS.len()].into()),
                metadata: JsonText(METADATA[(i + 3) % METADATA.len()].into()),
                status,
            });
        }
    }
    s.create_clients("d", &clients).expect("clients");
    s.create_channels("d", &channels).expect("channels");
    let pick = |step: usize, of: usize, prefix: &str| -> Vec<String> {
        (0..of).step_by(step).map(|i| format!("{prefix}{i:02}")).collect()
    };
    s.connect("d", &pick(3, 36, "c"), &pick(4, 24, "h"), &[ConnType::Publish])
        .expect("connect");
    s.connect("d", &pick(5, 36, "c"), &pick(6, 24, "h"), &ConnType::BOTH)
        .expect("connect");
    for i in 0..14 {
        s.create_group(
            "d",
            NewGroup {
                id: format!("g{i:02}"),
                parent_id: (i > 3).then(|| format!("g{:02}", i % 4)),
                name: NAMES[i % NAMES.len()].into(),
                description: String::new(),
                tags: JsonText(TAGS[i % TAGS.len()].into()),
                metadata: JsonText(METADATA[i % METADATA.len()].into()),
                status: if i % 5 == 4 { Status::Disabled } else { Status::Enabled },
            },
        )
        .expect("group");
    }
    s.apply_presence(&[PresenceEvent {
        domain_id: "d".into(),
        client_id: "c00".into(),
        mqtt_client_id: "m0".into(),
        remote_addr: "127.0.0.1:1".into(),
        protocol: "mqtt".into(),
        at: 5,
        connected: true,
        claim: 0,
    }])
    .expect("presence");
    let messages: Vec<NewMessage> = (0..3000)
        .map(|i| NewMessage {
            domain_id: "d".into(),
            channel: format!("h{:02}", i % 2),
            subtopic: ["", "room/1", "room/2"][i % 3].into(),
            publisher: format!("c{:02}", i % 4),
            protocol: ["mqtt", "http"][i % 2].into(),
            name: ["temp", "hum", "door", "blob"][i % 4].into(),
            unit: "C".into(),
            // Quarter seconds: exact in binary, as are the half-unit values.
            time: 1_700_000_000.0 + i as f64 / 4.0,
            update_time: (i % 7 == 0).then_some(1.5),
            value: (i % 4 < 2).then_some((i % 50) as f64 / 2.0 - 5.0),
            string_value: (i % 4 == 2).then(|| ["open", "closed", "Opening"][i % 3].to_string()),
            bool_value: (i % 4 == 2).then_some(i % 8 == 2),
            data_value: (i % 4 == 3).then(|| format!("blob-{}", i % 5)),
            sum: (i % 11 == 0).then_some(i as f64),
            format: "senml",
            payload: (i % 13 == 0).then(|| vec![i as u8, 0, 255]),
        })
        .collect();
    s.insert_messages(&messages).expect("messages");
}

fn user_view(u: &User) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|{:?}|{:?}",
        u.id,
        u.first_name,
        u.last_name,
        u.email,
        u.username,
        u.secret,
        u.secret_epoch,
        u.tags.0,
        u.metadata.0,
        u.role,
        u.status
    )
}

fn client_view(c: &Client) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
        c.id,
        c.domain_id,
        c.name,
        c.secret,
        c.tags.0,
        c.metadata.0,
        c.identity,
        c.status,
        c.conn_types,
        c.presence.connected_at,
        c.presence.remote_addr,
        c.presence.protocol,
        c.presence.sessions.0
    )
}

fn channel_view(h: &Channel) -> String {
    format!(
        "{}|{}|{}|{}|{:?}|{}|{}|{:?}|{:?}",
        h.id, h.domain_id, h.name, h.description, h.parent_group_id, h.tags.0, h.metadata.0, h.status, h.conn_types
    )
}

fn group_view(g: &Group) -> String {
    format!(
        "{}|{:?}|{}|{}|{}|{}|{:?}",
        g.id, g.parent_id, g.name, g.tags.0, g.metadata.0, g.description, g.status
    )
}

fn domain_view(d: &Domain) -> String {
    format!(
        "{}|{}|{}|{}|{}|{:?}",
        d.id, d.name, d.route, d.tags.0, d.metadata.0, d.status
    )
}

/// Both answers, mapped by `view`, must be equal (totals and every row in order).
fn same<T>(what: &str, a: Result<Page<T>>, b: Result<Page<T>>, view: impl Fn(&T) -> String) {
    let (a, b) = (a.expect("sqlite"), b.expect("postgres"));
    let (va, vb): (Vec<String>, Vec<String>) =
        (a.items.iter().map(&view).collect(), b.items.iter().map(&view).collect());
    assert_eq!((a.total, &va), (b.total, &vb), "{what}");
}

fn filters() -> Vec<EntityFilter> {
    let mut out = Vec::new();
    for status in [StatusFilter::Enabled, StatusFilter::Disabled, StatusFilter::All] {
        for name in [
            None,
            Some("a"),
            Some("ALPHA"),
            Some("å"),
            Some("nne"),
            Some(" "),
            Some("zz"),
        ] {
            out.push(EntityFilter {
                status,
                name: name.map(String::from),
                ..Default::default()
            });
        }
        for tag in ["t1", "T1", "1", "t2", "none"] {
            out.push(EntityFilter {
                status,
                tag: Some(tag.into()),
                ..Default::default()
            });
        }
        for m in METADATA
            .iter()
            .chain([&r#"{"k":1.0}"#, &r#"{"n":{"x":1.0}}"#, &r#"{"k":"v","j":"v"}"#])
        {
            out.push(EntityFilter {
                status,
                metadata: Some(JsonText(m.to_string())),
                ..Default::default()
            });
        }
    }
    out
}

fn pages() -> Vec<PageReq> {
    let mut out = Vec::new();
    for order in [Order::Name, Order::CreatedAt, Order::UpdatedAt] {
        for descending in [false, true] {
            for (offset, limit) in [(0, 100), (0, 5), (5, 5), (33, 10)] {
                out.push(PageReq {
                    offset,
                    limit,
                    order,
                    descending,
                });
            }
        }
    }
    out
}

#[test]
fn lists_answer_alike_on_both_backends() {
    let Some((_dir, lite, _db, pg)) = open_both() else {
        eprintln!("skipped: no PostgreSQL server (FLUXGATE_TEST_DATABASE_URL)");
        return;
    };
    fill(&lite);
    fill(&pg);
    let all = PageReq {
        limit: 1000,
        ..Default::default()
    };
    for f in filters() {
        let q = ClientQuery {
            page: all,
            filter: f.clone(),
            ..Default::default()
        };
        same(
            &format!("clients {f:?}"),
            lite.list_clients("d", &q),
            pg.list_clients("d", &q),
            client_view,
        );
        let q = ChannelQuery {
            page: all,
            filter: f.clone(),
            ..Default::default()
        };
        same(
            &format!("channels {f:?}"),
            lite.list_channels("d", &q),
            pg.list_channels("d", &q),
            channel_view,
        );
        let q = ListQuery {
            page: all,
            filter: f.clone(),
        };
        same(
            &format!("groups {f:?}"),
            lite.list_groups("d", &q),
            pg.list_groups("d", &q),
            group_view,
        );
        let q = DomainQuery {
            page: all,
            filter: f.clone(),
            ..Default::default()
        };
        same(
            &format!("domains {f:?}"),
            lite.list_domains(&q),
            pg.list_domains(&q),
            domain_view,
        );
        let q = UserQuery {
            page: all,
            filter: f.clone(),
            ..Default::default()
        };
        same(
            &format!("users {f:?}"),
            lite.list_users(&q),
            pg.list_users(&q),
            user_view,
        );
    }
    for page in pages() {
        let every = EntityFilter {
            status: StatusFilter::All,
            ..Default::default()
        };
        for (channel, connected) in [
            (None, None),
            (Some("h00"), None),
            (None, Some(true)),
            (None, Some(false)),
        ] {
            let q = ClientQuery {
                page,
                filter: every.clone(),
                channel: channel.map(String::from),
                connected,
            };
            same(
                &format!("clients {page:?} {channel:?} {connected:?}"),
                lite.list_clients("d", &q),
                pg.list_clients("d", &q),
                client_view,
            );
        }
        for client in [None, Some("c00"), Some("c15")] {
            let q = ChannelQuery {
                page,
                filter: every.clone(),
                client: client.map(String::from),
            };
            same(
                &format!("channels {page:?} {client:?}"),
                lite.list_channels("d", &q),
                pg.list_channels("d", &q),
                channel_view,
            );
        }
        let q = ListQuery {
            page,
            filter: every.clone(),
        };
        same(
            &format!("groups {page:?}"),
            lite.list_groups("d", &q),
            pg.list_groups("d", &q),
            group_view,
        );
        let q = UserQuery {
            page,
            filter: every.clone(),
            ..Default::default()
        };
        same(
            &format!("users {page:?}"),
            lite.list_users(&q),
            pg.list_users(&q),
            user_view,
        );
        same(
            &format!("members {page:?}"),
            lite.list_members("e", &page),
            pg.list_members("e", &page),
            |m| format!("{}|{:?}", user_view(&m.user), m.relation),
        );
    }
    // The user-specific filters: names (equal or partial), e-mail, identity, role.
    for (text, partial) in [
        ("alpha", false),
        ("ALPHA two", false),
        ("smith", false),
        ("al", true),
        ("SMI", true),
        ("å", true),
    ] {
        for field in 0..5 {
            let mut q = UserQuery {
                page: all,
                partial,
                filter: EntityFilter {
                    status: StatusFilter::All,
                    ..Default::default()
                },
                ..Default::default()
            };
            let v = Some(text.to_string());
            match field {
                0 => q.first_name = v,
                1 => q.last_name = v,
                2 => q.email = v,
                3 => q.username = v,
                _ => q.identity = Some("user3@example.COM".into()),
            }
            same(
                &format!("users {text} {field} {partial}"),
                lite.list_users(&q),
                pg.list_users(&q),
                user_view,
            );
        }
    }
    for identity in ["USER0@example.com", "alpha1", "Alpha1", "nobody"] {
        let (a, b) = (lite.user_by_identity(identity), pg.user_by_identity(identity));
        assert_eq!(
            a.expect("sqlite").map(|u| user_view(&u)),
            b.expect("postgres").map(|u| user_view(&u)),
            "{identity}"
        );
    }
    // Group trees.
    for status in [StatusFilter::Enabled, StatusFilter::All] {
        let view = |v: Result<Vec<GroupNode>>| -> Vec<String> {
            v.expect("tree")
                .iter()
                .map(|n| format!("{}|{}|{}", group_view(&n.group), n.level, n.path))
                .collect()
        };
        assert_eq!(view(lite.group_forest("d", status)), view(pg.group_forest("d", status)));
    }
}

#[test]
fn readers_answer_alike_on_both_backends() {
    let Some((_dir, lite, _db, pg)) = open_both() else {
        eprintln!("skipped: no PostgreSQL server (FLUXGATE_TEST_DATABASE_URL)");
        return;
    };
    fill(&lite);
    fill(&pg);
    let mut queries = Vec::new();
    let base = MessageQuery {
        limit: 100,
        ..Default::default()
    };
    queries.push(base.clone());
    for (offset, limit, ascending) in [(0, 7, true), (50, 20, false), (1490, 100, true), (5000, 10, false)] {
        queries.push(MessageQuery {
            offset,
            limit,
            ascending,
            ..base.clone()
        });
    }
    let texts = |f: fn(&mut MessageQuery, String), values: &[&str], out: &mut Vec<MessageQuery>| {
        for v in values {
            let mut q = base.clone();
            f(&mut q, v.to_string());
            out.push(q);
        }
    };
    texts(|q, v| q.subtopic = Some(v), &["", "room/1", "room"], &mut queries);
    texts(|q, v| q.publisher = Some(v), &["c00", "c03", "C00"], &mut queries);
    texts(|q, v| q.protocol = Some(v), &["mqtt", "http"], &mut queries);
    texts(|q, v| q.name = Some(v), &["temp", "door", "Temp"], &mut queries);
    texts(
        |q, v| q.value = Some(ValueFilter::Text(v)),
        &["open", "Open", "pen", "x"],
        &mut queries,
    );
    texts(
        |q, v| q.value = Some(ValueFilter::Data(v)),
        &["blob-1", "blob"],
        &mut queries,
    );
    for b in [true, false] {
        queries.push(MessageQuery {
            value: Some(ValueFilter::Bool(b)),
            ..base.clone()
        });
    }
    for cmp in [Cmp::Eq, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge] {
        for v in [-5.0, 0.0, 2.5, 19.5, 100.0] {
            queries.push(MessageQuery {
                value: Some(ValueFilter::Number(v, cmp)),
                ..base.clone()
            });
        }
    }
    let (from, to) = (1_700_000_000.0, 1_700_000_000.0 + 750.0);
    for (f, t) in [
        (Some(from + 10.0), None),
        (None, Some(from + 20.25)),
        (Some(from + 1.0), Some(from + 2.0)),
    ] {
        queries.push(MessageQuery {
            from: f,
            to: t,
            ..base.clone()
        });
    }
    for agg in [
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Avg,
        Aggregate::Sum,
        Aggregate::Count,
    ] {
        for interval in [1.0, 2.5, 60.0, 10_000.0] {
            for (ascending, name) in [(true, None), (false, Some("temp"))] {
                queries.push(MessageQuery {
                    from: Some(from),
                    to: Some(to),
                    aggregate: Some((agg, interval)),
                    ascending,
                    name: name.map(String::from),
                    limit: 50,
                    offset: if ascending { 0 } else { 3 },
                    ..Default::default()
                });
            }
        }
    }
    for channel in ["h00", "h01", "h09"] {
        for q in &queries {
            let (a, b) = (lite.read_messages(channel, q), pg.read_messages(channel, q));
            assert_eq!(a.expect("sqlite"), b.expect("postgres"), "{channel} {q:?}");
        }
    }
}
