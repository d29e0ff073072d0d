//! The session store: queues, moves between nodes, fencing.

use super::*;

fn session(key: &str, owner: Option<(&str, &str)>) -> SessionRow {
    SessionRow {
        key: key.into(),
        owner: owner.map(|(d, c)| (d.into(), c.into())),
        expiry_s: 3600,
        disconnected_at_ms: Some(5),
        state: vec![1, 2, 3],
        inbound: vec![],
    }
}

#[test]
fn queue_in_order_acks_remove_rows_and_bodies_and_ids_are_not_reused() {
    let (_d, s) = crate::testutil::store();
    s.sessions_apply(&[
        SessionWrite::Put(session("a", None)),
        SessionWrite::Put(session("b", None)),
        SessionWrite::Message {
            id: 7,
            body: b"seven".to_vec(),
            targets: vec![("a".into(), vec![1]), ("b".into(), vec![2]), ("gone".into(), vec![3])],
        },
        SessionWrite::Message {
            id: 9,
            body: b"nine".to_vec(),
            targets: vec![("a".into(), vec![1])],
        },
        SessionWrite::Mark {
            key: "a".into(),
            msg: 7,
            state: 2,
            pkid: 44,
        },
    ])
    .expect("apply");
    let snap = s.sessions_load().expect("load");
    assert_eq!(snap.sessions.len(), 2);
    let got: Vec<(&str, u64, u8, u16, &[u8])> = snap
        .queued
        .iter()
        .map(|q| (q.session.as_str(), q.msg, q.state, q.pkid, q.body.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a", 7, 2, 44, &b"seven"[..]),
            ("a", 9, 0, 0, &b"nine"[..]),
            ("b", 7, 0, 0, &b"seven"[..])
        ]
    );
    assert_eq!(snap.max_msg, 9);
    s.sessions_apply(&[
        SessionWrite::Ack {
            key: "a".into(),
            msg: 7,
        },
        SessionWrite::Ack {
            key: "a".into(),
            msg: 9,
        },
    ])
    .expect("ack");
    assert_eq!(s.sessions_counts().expect("counts"), (2, 1));
    s.sessions_apply(&[SessionWrite::Delete("b".into())]).expect("delete");
    let snap = s.sessions_load().expect("load");
    assert!(snap.queued.is_empty());
    assert_eq!(snap.sessions.len(), 1);
    assert_eq!(snap.max_msg, 9, "ids stay reserved after every body is gone");
    let c = s.conn().expect("conn");
    let bodies: i64 = c
        .query_row("SELECT COUNT(*) FROM session_bodies", &[], |r| r.get(0))
        .expect("count");
    assert_eq!(bodies, 0);
}

/// A second store on the same database (another node).
fn another(held: &crate::testutil::Held) -> Store {
    match held {
        crate::testutil::Held::Dir(d) => {
            Store::open(&d.path().join("t.db"), &crate::StoreConfig::default()).expect("open")
        }
        crate::testutil::Held::Pg(db) => {
            Store::open_url(&db.store_url(), &crate::StoreConfig::default()).expect("open")
        }
    }
}

fn message(id: u64, body: &str, key: &str) -> SessionWrite {
    SessionWrite::Message {
        id,
        body: body.as_bytes().to_vec(),
        targets: vec![(key.into(), vec![1])],
    }
}

#[test]
fn a_session_moves_with_the_newest_claim_and_its_old_node_cannot_write_it() {
    let (held, a) = crate::testutil::store();
    let b = another(&held);
    a.set_node("na");
    b.set_node("nb");
    // b numbers itself first: its ids sort before a's, yet its entries come after.
    let b_base = b.sessions_load().expect("load b").max_msg;
    let a_base = a.sessions_load().expect("load a").max_msg;
    assert_ne!(a_base >> ID_BITS, b_base >> ID_BITS, "one id range per node");
    assert!(b_base < a_base);
    a.claim_session("k").expect("claim a");
    a.sessions_apply(&[
        SessionWrite::Put(session("k", None)),
        message(a_base + 1, "one", "k"),
        message(a_base + 2, "two", "k"),
        SessionWrite::Mark {
            key: "k".into(),
            msg: a_base + 1,
            state: 2,
            pkid: 5,
        },
    ])
    .expect("a writes");
    assert!(
        b.session_adopt("k").expect("adopt").is_none(),
        "not b's claim: nothing moves"
    );
    b.claim_session("k").expect("claim b");
    let snap = b.session_adopt("k").expect("adopt").expect("moved");
    assert_eq!(snap.sessions.len(), 1);
    let got: Vec<(u64, u8, u16, &[u8])> = snap
        .queued
        .iter()
        .map(|q| (q.msg, q.state, q.pkid, q.body.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![(a_base + 1, 2, 5, &b"one"[..]), (a_base + 2, 0, 0, &b"two"[..])]
    );
    b.sessions_apply(&[message(b_base + 1, "three", "k")])
        .expect("b writes");
    // a's late writes: its record is not recreated, nothing of b's goes; a message a's
    // publishers send for the session is queued where the session is now.
    let fenced = a.session_writes_fenced();
    a.sessions_apply(&[
        SessionWrite::Put(session("k", None)),
        SessionWrite::Ack {
            key: "k".into(),
            msg: a_base + 2,
        },
        SessionWrite::Delete("k".into()),
        message(a_base + 3, "late", "k"),
    ])
    .expect("a's late writes");
    assert_eq!(
        a.session_writes_fenced(),
        fenced + 2,
        "the record write and the delete were refused"
    );
    assert!(
        a.sessions_load().expect("load a").sessions.is_empty(),
        "a holds nothing"
    );
    let snap = b.sessions_load().expect("load b");
    let bodies: Vec<&[u8]> = snap.queued.iter().map(|q| q.body.as_slice()).collect();
    if matches!(held, crate::testutil::Held::Pg(_)) {
        // (Clusters run on PostgreSQL only; SQLite reads a queue in id order.)
        assert_eq!(
            bodies,
            vec![&b"one"[..], &b"two"[..], &b"three"[..], &b"late"[..]],
            "in the order queued"
        );
    } else {
        assert_eq!(bodies.len(), 4);
    }
    assert_eq!(snap.max_msg, b_base + 1, "b's ids continue in b's range");
    // Acknowledged on b: the bodies a wrote go too.
    b.sessions_apply(&[
        SessionWrite::Ack {
            key: "k".into(),
            msg: a_base + 1,
        },
        SessionWrite::Ack {
            key: "k".into(),
            msg: a_base + 2,
        },
    ])
    .expect("acks");
    let c = b.conn().expect("conn");
    let bodies: i64 = c
        .query_row("SELECT COUNT(*) FROM session_bodies", &[], |r| r.get(0))
        .expect("count");
    assert_eq!(bodies, 2, "only three's and late's bodies are left");
}

#[test]
fn sessions_of_missing_clients_are_dropped_at_load() {
    let (_d, s) = crate::testutil::store();
    s.sessions_apply(&[
        SessionWrite::Put(session("x", Some(("no-domain", "no-client")))),
        SessionWrite::Put(session("anon", None)),
        SessionWrite::Message {
            id: 1,
            body: b"m".to_vec(),
            targets: vec![("x".into(), vec![])],
        },
    ])
    .expect("apply");
    let snap = s.sessions_load().expect("load");
    assert_eq!(snap.dropped, 1);
    assert_eq!(snap.sessions.len(), 1);
    assert_eq!(snap.sessions[0].key, "anon");
    assert!(snap.queued.is_empty());
}
