//! Numbered schema migrations. SQLite tracks its version in `PRAGMA user_version`;
//! PostgreSQL in the `schema_version` table, and starts from the schema of version
//! `PG_BASELINE` at once (later versions carry a text for each backend). Each migration runs
//! in its own transaction together with the version bump, so a crash leaves the previous
//! version intact; on PostgreSQL under an advisory lock, so nodes starting together migrate
//! once.

use crate::{Result, StoreError};
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: identity: settings, users, domains and domain membership.
    r#"
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        first_name TEXT NOT NULL DEFAULT '',
        last_name TEXT NOT NULL DEFAULT '',
        email TEXT NOT NULL,
        username TEXT NOT NULL,
        secret TEXT NOT NULL,
        secret_epoch INTEGER NOT NULL DEFAULT 0,
        tags TEXT NOT NULL DEFAULT '[]',
        metadata TEXT NOT NULL DEFAULT '{}',
        profile_picture TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL DEFAULT 'user',
        status TEXT NOT NULL DEFAULT 'enabled',
        created_at INTEGER NOT NULL,
        updated_at INTEGER,
        updated_by TEXT
    );
    CREATE UNIQUE INDEX users_email ON users(email COLLATE NOCASE);
    CREATE UNIQUE INDEX users_username ON users(username COLLATE NOCASE);
    CREATE TABLE domains (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        route TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        metadata TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'enabled',
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER,
        updated_by TEXT
    );
    CREATE UNIQUE INDEX domains_route ON domains(route);
    CREATE TABLE domain_members (
        domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        relation TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (domain_id, user_id)
    );
    CREATE INDEX domain_members_user ON domain_members(user_id);
    "#,
    // 2: the device registry: clients, channels, their connections, groups and group members.
    r#"
    CREATE TABLE groups (
        id TEXT PRIMARY KEY,
        domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        parent_id TEXT REFERENCES groups(id),
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]',
        metadata TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'enabled',
        created_at INTEGER NOT NULL,
        updated_at INTEGER,
        updated_by TEXT
    );
    CREATE INDEX groups_domain ON groups(domain_id, created_at);
    CREATE INDEX groups_parent ON groups(parent_id);
    CREATE TABLE group_members (
        group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        actions TEXT NOT NULL DEFAULT '[]',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (group_id, user_id)
    );
    CREATE INDEX group_members_user ON group_members(user_id);
    CREATE TABLE clients (
        id TEXT NOT NULL,
        domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        name TEXT NOT NULL DEFAULT '',
        identity TEXT NOT NULL DEFAULT '',
        secret TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        metadata TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'enabled',
        created_at INTEGER NOT NULL,
        updated_at INTEGER,
        updated_by TEXT,
        PRIMARY KEY (domain_id, id)
    );
    CREATE UNIQUE INDEX clients_secret ON clients(domain_id, secret);
    CREATE INDEX clients_id ON clients(id);
    CREATE INDEX clients_secret_any ON clients(secret);
    CREATE INDEX clients_domain_created ON clients(domain_id, created_at);
    CREATE TABLE channels (
        id TEXT PRIMARY KEY,
        domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        name TEXT NOT NULL DEFAULT '',
        parent_group_id TEXT REFERENCES groups(id) ON DELETE SET NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        metadata TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'enabled',
        created_at INTEGER NOT NULL,
        updated_at INTEGER,
        updated_by TEXT
    );
    CREATE UNIQUE INDEX channels_domain_id ON channels(domain_id, id);
    CREATE INDEX channels_domain_created ON channels(domain_id, created_at);
    CREATE INDEX channels_parent ON channels(parent_group_id);
    CREATE TABLE connections (
        domain_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('publish', 'subscribe')),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (domain_id, client_id, channel_id, type),
        FOREIGN KEY (domain_id, client_id) REFERENCES clients(domain_id, id) ON DELETE CASCADE,
        FOREIGN KEY (domain_id, channel_id) REFERENCES channels(domain_id, id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE INDEX connections_channel ON connections(domain_id, channel_id, client_id);
    "#,
    // 3: the message store. Times are Unix seconds (REAL, sub-second precision).
    r#"
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        domain_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        subtopic TEXT NOT NULL DEFAULT '',
        publisher TEXT NOT NULL,
        protocol TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        unit TEXT NOT NULL DEFAULT '',
        time REAL NOT NULL,
        update_time REAL,
        value REAL,
        string_value TEXT,
        bool_value INTEGER,
        data_value TEXT,
        sum REAL,
        format TEXT NOT NULL DEFAULT 'senml',
        payload BLOB
    );
    CREATE INDEX messages_channel_time ON messages(channel, time);
    CREATE INDEX messages_channel_name_time ON messages(channel, name, time);
    CREATE INDEX messages_channel_publisher_time ON messages(channel, publisher, time);
    "#,
    // 4: client certificates (serial, owner, expiry, revocation; never the private key).
    r#"
    CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        domain_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        expire INTEGER NOT NULL,
        revoked_at INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX certs_client ON certs(domain_id, client_id);
    "#,
    // 5: MQTT retained messages (one per topic; raw MQTT 5 properties kept as they came).
    r#"
    CREATE TABLE retained (
        topic TEXT PRIMARY KEY,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        props BLOB NOT NULL,
        expires_at_ms INTEGER NOT NULL
    );
    "#,
    // 6: a certificate binds to the client record it was issued for (its creation time), not
    // to a reusable id; certificates of clients already deleted are revoked.
    r#"
    ALTER TABLE certs ADD COLUMN client_created_at INTEGER;
    UPDATE certs SET client_created_at = (
        SELECT c.created_at FROM clients c WHERE c.domain_id = certs.domain_id AND c.id = certs.client_id
    );
    UPDATE certs SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER)
        WHERE revoked_at IS NULL AND client_created_at IS NULL;
    "#,
    // 7: persistent MQTT sessions (opaque state encoded by the broker), the messages queued for
    // them (one body per message, one queue row per session it waits for, removed on
    // acknowledgement).
    r#"
    CREATE TABLE session_records (
        key TEXT PRIMARY KEY,
        domain_id TEXT,
        client_id TEXT,
        expiry_s INTEGER NOT NULL,
        disconnected_at_ms INTEGER,
        state BLOB NOT NULL,
        inbound BLOB NOT NULL DEFAULT x''
    );
    CREATE INDEX session_records_client ON session_records(domain_id, client_id);
    CREATE TABLE session_bodies (
        id INTEGER PRIMARY KEY,
        body BLOB NOT NULL
    );
    CREATE TABLE session_queue (
        session TEXT NOT NULL,
        msg INTEGER NOT NULL,
        meta BLOB NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        pkid INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (session, msg)
    ) WITHOUT ROWID;
    CREATE INDEX session_queue_msg ON session_queue(msg);
    "#,
    // 8: a channel's description (the API page shows it on every channel view).
    r#"ALTER TABLE channels ADD COLUMN description TEXT NOT NULL DEFAULT '';"#,
    // 9: token families revoked by logout, kept until their last refresh token expires.
    r#"
    CREATE TABLE revoked_token_families (
        family TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX revoked_token_families_expiry ON revoked_token_families (expires_at);
    "#,
    // 10: device presence: a client's last connect and disconnect, its last remote address
    // and transport, and its live MQTT sessions.
    r#"
    ALTER TABLE clients ADD COLUMN connected_at INTEGER;
    ALTER TABLE clients ADD COLUMN disconnected_at INTEGER;
    ALTER TABLE clients ADD COLUMN remote_addr TEXT;
    ALTER TABLE clients ADD COLUMN protocol TEXT;
    CREATE TABLE client_sessions (
        domain_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        mqtt_client_id TEXT NOT NULL,
        remote_addr TEXT NOT NULL,
        protocol TEXT NOT NULL,
        connected_at INTEGER NOT NULL,
        PRIMARY KEY (domain_id, client_id, mqtt_client_id),
        FOREIGN KEY (domain_id, client_id) REFERENCES clients(domain_id, id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    "#,
    // 11: the outbox of announced changes (sequence never reused, so readers can resume).
    r#"
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX outbox_at ON outbox(at);
    "#,
    // 12: cluster mode. The nodes and their heartbeats; what the store keeps per node
    // (persistent sessions, their queues, presence) names its node ('' outside a cluster).
    r#"
    CREATE TABLE cluster_nodes (
        id TEXT PRIMARY KEY,
        incarnation TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
    );
    ALTER TABLE session_records ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX session_records_node ON session_records(node_id, key);
    ALTER TABLE session_bodies ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX session_bodies_node ON session_bodies(node_id, id);
    ALTER TABLE session_queue ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX session_queue_node ON session_queue(node_id, session, msg);
    ALTER TABLE client_sessions ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE client_sessions ADD COLUMN claim INTEGER NOT NULL DEFAULT 0;
    "#,
    // 13: sessions that move between nodes. Who owns each persistent session (the newest
    // claim wins; the others' writes are refused), and a number per node that makes queued
    // message ids unique across the cluster (the node's number in the top bits), so that a
    // session's queue can move with it. Outside a cluster the node is '' and its number 0.
    r#"
    CREATE TABLE session_owners (
        key TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        fence INTEGER NOT NULL
    );
    CREATE TABLE node_numbers (
        node_id TEXT PRIMARY KEY,
        n INTEGER NOT NULL UNIQUE
    );
    INSERT INTO node_numbers (node_id, n) VALUES ('', 0);
    "#,
];

/// The schema version this binary writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// The version PostgreSQL's schema starts at, created whole by [`PG_SCHEMA`].
const PG_BASELINE: i64 = 11;

/// PostgreSQL migrations after the baseline, in order (`PG_BASELINE + 1` first).
const PG_MIGRATIONS: &[&str] = &[
    // 12: cluster mode (see the SQLite migration 12); keys that are per node here.
    r#"
    CREATE TABLE cluster_nodes (
        id TEXT PRIMARY KEY,
        incarnation TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
    );
    ALTER TABLE session_records ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE session_records DROP CONSTRAINT session_records_pkey;
    ALTER TABLE session_records ADD PRIMARY KEY (node_id, key);
    ALTER TABLE session_bodies ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE session_bodies DROP CONSTRAINT session_bodies_pkey;
    ALTER TABLE session_bodies ADD PRIMARY KEY (node_id, id);
    ALTER TABLE session_queue ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE session_queue DROP CONSTRAINT session_queue_pkey;
    ALTER TABLE session_queue ADD PRIMARY KEY (node_id, session, msg);
    ALTER TABLE client_sessions ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE client_sessions ADD COLUMN claim BIGINT NOT NULL DEFAULT 0;
    "#,
    // 13: sessions that move between nodes (see the SQLite migration 13). The nodes that
    // already hold sessions get their numbers, and their message ids move into their range.
    r#"
    CREATE TABLE session_owners (
        key TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        fence BIGINT NOT NULL
    );
    CREATE TABLE node_numbers (
        node_id TEXT PRIMARY KEY,
        n BIGINT NOT NULL UNIQUE
    );
    INSERT INTO node_numbers (node_id, n) VALUES ('', 0);
    INSERT INTO node_numbers (node_id, n)
        SELECT node_id, row_number() OVER (ORDER BY node_id) FROM (
            SELECT node_id FROM session_records WHERE node_id <> ''
            UNION SELECT node_id FROM session_bodies WHERE node_id <> ''
            UNION SELECT node_id FROM session_queue WHERE node_id <> ''
        ) held;
    UPDATE session_bodies b SET id = b.id + (nn.n << 43)
        FROM node_numbers nn WHERE nn.node_id = b.node_id AND nn.n > 0;
    UPDATE session_queue q SET msg = q.msg + (nn.n << 43)
        FROM node_numbers nn WHERE nn.node_id = q.node_id AND nn.n > 0;
    UPDATE settings s SET value = CAST(CAST(s.value AS BIGINT) + (nn.n << 43) AS TEXT)
        FROM node_numbers nn WHERE s.key = 'session_msg_high:' || nn.node_id AND nn.n > 0;
    CREATE INDEX session_bodies_id ON session_bodies(id);
    -- A queue is read in insertion order (ids of several nodes do not sort in time); the
    -- rows already queued keep their id order.
    ALTER TABLE session_queue ADD COLUMN seq BIGINT GENERATED BY DEFAULT AS IDENTITY;
    UPDATE session_queue q SET seq = o.rn FROM (
        SELECT node_id, session, msg, row_number() OVER (ORDER BY node_id, session, msg) AS rn
        FROM session_queue
    ) o WHERE o.node_id = q.node_id AND o.session = q.session AND o.msg = q.msg;
    SELECT setval(pg_get_serial_sequence('session_queue', 'seq'), COALESCE(MAX(seq), 0) + 1, false)
        FROM session_queue;
    "#,
];

/// The schema of version [`PG_BASELINE`] on PostgreSQL: SQLite's tables with BIGINT for
/// INTEGER, DOUBLE PRECISION for REAL and BYTEA for BLOB; a `seq` identity column where
/// lists break ties on SQLite's `rowid`; ASCII case-folding expression indexes for NOCASE.
const PG_SCHEMA: &str = r#"
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL,
    username TEXT NOT NULL,
    secret TEXT NOT NULL,
    secret_epoch BIGINT NOT NULL DEFAULT 0,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    profile_picture TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL DEFAULT 'user',
    status TEXT NOT NULL DEFAULT 'enabled',
    created_at BIGINT NOT NULL,
    updated_at BIGINT,
    updated_by TEXT
);
CREATE UNIQUE INDEX users_email ON users (translate(email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'));
CREATE UNIQUE INDEX users_username ON users (translate(username, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'));
CREATE TABLE domains (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    route TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'enabled',
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT,
    updated_by TEXT
);
CREATE UNIQUE INDEX domains_route ON domains(route);
CREATE TABLE domain_members (
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    relation TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (domain_id, user_id)
);
CREATE INDEX domain_members_user ON domain_members(user_id);
CREATE TABLE groups (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    parent_id TEXT REFERENCES groups(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'enabled',
    created_at BIGINT NOT NULL,
    updated_at BIGINT,
    updated_by TEXT
);
CREATE INDEX groups_domain ON groups(domain_id, created_at);
CREATE INDEX groups_parent ON groups(parent_id);
CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    actions TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members(user_id);
CREATE TABLE clients (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    id TEXT NOT NULL,
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    identity TEXT NOT NULL DEFAULT '',
    secret TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'enabled',
    created_at BIGINT NOT NULL,
    updated_at BIGINT,
    updated_by TEXT,
    connected_at BIGINT,
    disconnected_at BIGINT,
    remote_addr TEXT,
    protocol TEXT,
    PRIMARY KEY (domain_id, id)
);
CREATE UNIQUE INDEX clients_secret ON clients(domain_id, secret);
CREATE INDEX clients_id ON clients(id);
CREATE INDEX clients_secret_any ON clients(secret);
CREATE INDEX clients_domain_created ON clients(domain_id, created_at);
CREATE TABLE channels (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    parent_group_id TEXT REFERENCES groups(id) ON DELETE SET NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'enabled',
    created_at BIGINT NOT NULL,
    updated_at BIGINT,
    updated_by TEXT,
    description TEXT NOT NULL DEFAULT '',
    CONSTRAINT channels_domain_id UNIQUE (domain_id, id)
);
CREATE INDEX channels_domain_created ON channels(domain_id, created_at);
CREATE INDEX channels_parent ON channels(parent_group_id);
CREATE TABLE connections (
    domain_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('publish', 'subscribe')),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (domain_id, client_id, channel_id, type),
    FOREIGN KEY (domain_id, client_id) REFERENCES clients(domain_id, id) ON DELETE CASCADE,
    FOREIGN KEY (domain_id, channel_id) REFERENCES channels(domain_id, id) ON DELETE CASCADE
);
CREATE INDEX connections_channel ON connections(domain_id, channel_id, client_id);
CREATE TABLE messages (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    domain_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    subtopic TEXT NOT NULL DEFAULT '',
    publisher TEXT NOT NULL,
    protocol TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    unit TEXT NOT NULL DEFAULT '',
    time DOUBLE PRECISION NOT NULL,
    update_time DOUBLE PRECISION,
    value DOUBLE PRECISION,
    string_value TEXT,
    bool_value BIGINT,
    data_value TEXT,
    sum DOUBLE PRECISION,
    format TEXT NOT NULL DEFAULT 'senml',
    payload BYTEA
);
CREATE INDEX messages_channel_time ON messages(channel, time);
CREATE INDEX messages_channel_name_time ON messages(channel, name, time);
CREATE INDEX messages_channel_publisher_time ON messages(channel, publisher, time);
CREATE TABLE certs (
    serial TEXT PRIMARY KEY,
    domain_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    expire BIGINT NOT NULL,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL,
    client_created_at BIGINT
);
CREATE INDEX certs_client ON certs(domain_id, client_id);
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BYTEA NOT NULL,
    qos BIGINT NOT NULL,
    props BYTEA NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE TABLE session_records (
    key TEXT PRIMARY KEY,
    domain_id TEXT,
    client_id TEXT,
    expiry_s BIGINT NOT NULL,
    disconnected_at_ms BIGINT,
    state BYTEA NOT NULL,
    inbound BYTEA NOT NULL DEFAULT ''::bytea
);
CREATE INDEX session_records_client ON session_records(domain_id, client_id);
CREATE TABLE session_bodies (
    id BIGINT PRIMARY KEY,
    body BYTEA NOT NULL
);
CREATE TABLE session_queue (
    session TEXT NOT NULL,
    msg BIGINT NOT NULL,
    meta BYTEA NOT NULL,
    state BIGINT NOT NULL DEFAULT 0,
    pkid BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (session, msg)
);
CREATE INDEX session_queue_msg ON session_queue(msg);
CREATE TABLE revoked_token_families (
    family TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_token_families_expiry ON revoked_token_families (expires_at);
CREATE TABLE client_sessions (
    domain_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    mqtt_client_id TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    protocol TEXT NOT NULL,
    connected_at BIGINT NOT NULL,
    PRIMARY KEY (domain_id, client_id, mqtt_client_id),
    FOREIGN KEY (domain_id, client_id) REFERENCES clients(domain_id, id) ON DELETE CASCADE
);
CREATE TABLE outbox (
    seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX outbox_at ON outbox(at);
"#;

pub(crate) fn apply_sqlite(c: &mut Connection) -> Result<()> {
    let e = crate::db::sqlite::error;
    let current: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(e)?;
    if current > LATEST {
        return Err(StoreError::TooNew {
            found: current,
            supported: LATEST,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .map_err(e)?;
        tx.execute_batch(sql).map_err(e)?;
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))
            .map_err(e)?;
        tx.commit().map_err(e)?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// The schema version of a PostgreSQL database, 0 for an empty one.
pub(crate) fn pg_version(tx: &mut crate::db::pg::Tx<'_>) -> Result<i64> {
    tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let rows = tx.rows("SELECT max(version) FROM schema_version", &[])?;
    Ok(rows
        .first()
        .and_then(|r| r.get::<Option<i64>>(0).ok().flatten())
        .unwrap_or(0))
}

pub(crate) fn apply_pg(c: &mut crate::db::pg::PgConn) -> Result<()> {
    let mut tx = c.begin_locked(crate::db::pg::MIGRATE_LOCK)?;
    let current = pg_version(&mut tx)?;
    if current > LATEST {
        return Err(StoreError::TooNew {
            found: current,
            supported: LATEST,
        });
    }
    if current == 0 {
        tx.batch(PG_SCHEMA)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            &[crate::db::Value::Int(PG_BASELINE)],
        )?;
        tracing::info!(version = PG_BASELINE, "created the PostgreSQL schema");
    }
    let current = current.max(PG_BASELINE);
    for (i, sql) in PG_MIGRATIONS.iter().enumerate() {
        let version = PG_BASELINE + 1 + i as i64;
        if version <= current {
            continue;
        }
        tx.batch(sql)?;
        tx.execute(
            "UPDATE schema_version SET version = ?1",
            &[crate::db::Value::Int(version)],
        )?;
        tracing::info!(version, "applied database migration");
    }
    tx.commit()
}
