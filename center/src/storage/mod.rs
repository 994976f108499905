//! The center's databases (PROTOCOL.md, "Databases"): the only code that
//! touches SQL.
//!
//! # Why it looks like this
//! - SQLite in WAL mode, one connection per [`Storage`]. Every multi-step
//!   change runs in one `BEGIN IMMEDIATE` transaction, so two `centerd`
//!   processes sharing the file serialize their writers and never see each
//!   other's half-done work. Nothing about allocation lives in memory: a
//!   later PostgreSQL backend needs the same statements, not a redesign.
//! - Schema changes are numbered migrations recorded in `PRAGMA
//!   user_version`; each runs in its own transaction.
//!
//! # The VPNNAT pool
//! Two tables: `pool_free(start PRIMARY KEY, end)` holds the free space as
//! disjoint inclusive ranges, and `pool_allocated(addr PRIMARY KEY, ...)` the
//! addresses handed out. A fresh /8 pool is *one* row in `pool_free`, not
//! sixteen million.
//! - assign: the lowest free range is the first row of the primary-key
//!   B-tree (`ORDER BY start LIMIT 1`); its first address is taken and the
//!   range shrinks by one (or disappears). O(log n) in the number of ranges.
//! - release: the address's neighbours are the range ending just below it
//!   (predecessor by `start`, one index probe) and the range starting just
//!   above it (exact key lookup); the address is merged into either, both, or
//!   becomes a new one-address range. O(log n).
//! - an address is never handed out twice: `pool_allocated.addr` is the
//!   primary key, so even a logic error would abort the transaction instead
//!   of granting an address twice, and the free list is only changed in the
//!   same transaction as the allocated table.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use thiserror::Error;

mod audit;
mod gateways;
mod initiation;
mod nonces;
mod operators;
mod pool;
mod reinstall;
mod requests;
mod sessions;
mod terminals;
mod totp;
mod traffic;

pub use audit::{AuditFilter, AuditRow, NewAudit};
pub use gateways::{GatewaySpec, GatewayUsage, LostTunnel, SlotRow, TunnelState};
pub use initiation::InitiationRow;
pub use nonces::{DbNonceStore, NONCE_PRINCIPAL_LIMIT};
pub use operators::{OperatorRow, SessionOwner};
pub use pool::{pool_bounds, PoolUsage};
pub use reinstall::{ReinstallRow, UNPROVEN_ACTIONS};
pub use requests::OpenLimit;
pub use requests::{NewRequest, Released, RequestGrant, RequestRow, RequestState};
pub use terminals::{FailureRow, InstallRecord, TerminalRow};
pub use totp::{SessionStage, TotpRow};

/// The extension terminal names under which a router's server-part and
/// router-part VPNNAT addresses are kept (PROTOCOL.md 1; judgment 2 of 6
/// never releases them); shared with routerd through the proto crate.
pub use vpnnat_proto::types::{is_router_own_part, ROUTER_PART_NAME, SERVER_PART_NAME};

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the VPNNAT pool {pool} is exhausted")]
    PoolExhausted { pool: String },
    #[error("the database holds pool {stored} but the configuration says {configured}; migrate the database first")]
    PoolMismatch { stored: String, configured: String },
    #[error("the pool {0} has no usable host address")]
    PoolEmpty(String),
    #[error("{what} {key} exists already")]
    Exists { what: &'static str, key: String },
    #[error("no {what} {key}")]
    NotFound { what: &'static str, key: String },
    #[error("request {number} is {state} and cannot be {action}")]
    BadTransition {
        number: u64,
        state: RequestState,
        action: &'static str,
    },
    #[error("gateway {gateway} has no free tunnel slot")]
    GatewayFull { gateway: String },
    #[error("router {terminal} already has {limit} open requests")]
    TooManyOpen { terminal: String, limit: u32 },
    #[error("{0}")]
    Limit(crate::limits::LimitError),
    #[error("database content is inconsistent: {0}")]
    Corrupt(String),
    #[error("the database schema is version {found}, newer than this centerd knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Versioned schema; entry i brings the schema from version i to i + 1.
const MIGRATIONS: &[&str] = &[
    // 1: the databases of PROTOCOL.md plus nonces and operator sessions.
    r#"
    CREATE TABLE terminals (
        terminal_id TEXT PRIMARY KEY,
        psk_hex TEXT NOT NULL,
        secret_id2_hex TEXT NOT NULL,
        maintenance_password_hash TEXT NOT NULL,
        server_part_vpnnat INTEGER NOT NULL UNIQUE,
        router_part_vpnnat INTEGER NOT NULL UNIQUE,
        installed_at INTEGER NOT NULL
    );
    CREATE TABLE pool_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cidr TEXT NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE TABLE pool_free (
        start INTEGER PRIMARY KEY,
        end INTEGER NOT NULL,
        CHECK (end >= start)
    );
    CREATE TABLE pool_allocated (
        addr INTEGER PRIMARY KEY,
        terminal_id TEXT NOT NULL,
        terminal_name TEXT NOT NULL,
        assigned_at INTEGER NOT NULL,
        UNIQUE (terminal_id, terminal_name)
    );
    CREATE TABLE requests (
        acceptance_number INTEGER PRIMARY KEY AUTOINCREMENT,
        terminal_id TEXT NOT NULL,
        router_ip TEXT NOT NULL,
        claimant_name TEXT NOT NULL,
        claimant_level TEXT NOT NULL CHECK (claimant_level IN ('general', 'administrator')),
        phone TEXT NOT NULL,
        urgency TEXT NOT NULL,
        content TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('waiting', 'in_progress', 'ended')),
        started_at INTEGER,
        ended_at INTEGER
    );
    CREATE INDEX requests_by_terminal_state ON requests (terminal_id, state);
    CREATE TABLE request_terminals (
        acceptance_number INTEGER NOT NULL REFERENCES requests (acceptance_number),
        terminal_id TEXT NOT NULL,
        terminal_name TEXT NOT NULL,
        vpnnat INTEGER NOT NULL,
        table_name TEXT NOT NULL,
        PRIMARY KEY (acceptance_number, terminal_name)
    );
    CREATE INDEX request_terminals_by_name ON request_terminals (terminal_id, terminal_name);
    CREATE TABLE gateways (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        global_ip TEXT NOT NULL,
        draining INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE gateway_slots (
        gateway TEXT NOT NULL REFERENCES gateways (name),
        slot INTEGER NOT NULL,
        terminal_id TEXT UNIQUE,
        tunnel_state TEXT NOT NULL DEFAULT 'down' CHECK (tunnel_state IN ('up', 'connecting', 'down')),
        changed_at INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (gateway, slot)
    );
    CREATE INDEX gateway_slots_free ON gateway_slots (gateway, slot) WHERE terminal_id IS NULL;
    CREATE TABLE failures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        terminal_id TEXT NOT NULL,
        code TEXT NOT NULL,
        detail TEXT NOT NULL,
        received_at INTEGER NOT NULL
    );
    CREATE INDEX failures_by_terminal ON failures (terminal_id, id);
    CREATE TABLE nonces (
        principal TEXT NOT NULL,
        nonce BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (principal, nonce)
    ) WITHOUT ROWID;
    CREATE INDEX nonces_by_expiry ON nonces (expires_at);
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 2: the audit log (append-only: triggers refuse UPDATE and DELETE) and
    // which operator a session belongs to.
    r#"
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        terminal_id TEXT,
        acceptance_number INTEGER,
        detail TEXT NOT NULL,
        peer TEXT NOT NULL
    );
    CREATE INDEX audit_by_terminal ON audit (terminal_id, id);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    ALTER TABLE sessions ADD COLUMN operator TEXT NOT NULL DEFAULT '';
    "#,
    // 3: gateway liveness from centerd's heartbeat (a down gateway gets no
    // new slots; when it changed, in ms, for the operator and the tests'
    // detection time).
    r#"
    ALTER TABLE gateways ADD COLUMN alive INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE gateways ADD COLUMN alive_changed_ms INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: each router's tunnel initiation mode as last decided, with why
    // (issue 17: routers behind NAT dial out).
    r#"
    CREATE TABLE tunnel_initiation (
        terminal_id TEXT PRIMARY KEY,
        mode TEXT NOT NULL CHECK (mode IN ('gateway', 'router')),
        reason TEXT NOT NULL,
        seen_ip TEXT,
        decided_at INTEGER NOT NULL
    );
    "#,
    // 5: re-installations waiting for an operator's approval (issue 18,
    // item 5: Secret(ID) alone no longer replaces an installed router).
    r#"
    CREATE TABLE reinstall_requests (
        terminal_id TEXT PRIMARY KEY,
        requested_at INTEGER NOT NULL,
        peer TEXT NOT NULL,
        approved_by TEXT,
        approved_at INTEGER
    );
    "#,
    // 6: each router's own maintenance password (issue 18, item 3), kept
    // like the PSK so an authorised operator can be shown it. NULL: the
    // router was installed before and has the shared configured password.
    // (maintenance_password_hash is no longer written: '' from now on.)
    //
    // And, for item 5, the installation's confirmation: an installation is
    // confirmed once the router used its new Secret(ID2). Until then (the
    // answer may have been lost, or the router crashed before saving it) a
    // re-installation may prove the previous Secret(ID2) instead, or
    // nothing at all if there was none (a first installation). Existing
    // rows are routers in service: confirmed.
    r#"
    ALTER TABLE terminals ADD COLUMN maintenance_password TEXT;
    ALTER TABLE terminals ADD COLUMN previous_secret_id2_hex TEXT;
    ALTER TABLE terminals ADD COLUMN confirmed INTEGER NOT NULL DEFAULT 1;
    "#,
    // 7: time limits on grants (issue 19, item 8): each request's end
    // time (set at creation from `[center] max_grant_lifetime_secs`, moved
    // by an operator) and who moved it. NULL: a request from before, only
    // the configured maximum applies (`crate::limits::effective_end`).
    // Two ADD COLUMNs in the migration's own transaction: all or nothing.
    r#"
    ALTER TABLE requests ADD COLUMN expires_at INTEGER;
    ALTER TABLE requests ADD COLUMN limit_set_by TEXT;
    "#,
    // 8: the idle timeout (issue 19, item 8): when each router's tunnel
    // last carried a packet, as its gateway reports it (Unix seconds, 0:
    // none yet). Only grows; a row is evidence, no row: unknown.
    r#"
    CREATE TABLE tunnel_traffic (
        terminal_id TEXT PRIMARY KEY,
        last_use INTEGER NOT NULL
    );
    "#,
    // 9: named operator accounts with roles (issue 20, item 1), and which
    // account a session belongs to (NULL: a shared-password session of
    // `operators.password_hashes`). The role is read from the account at
    // every request, so a changed role or a disabled account takes effect
    // at the session's next request.
    r#"
    CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
        disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
        created_at INTEGER NOT NULL
    );
    ALTER TABLE sessions ADD COLUMN account TEXT;
    "#,
    // 10: the second factor (issue 20, item 2): each enrolled account's
    // TOTP secret (base32; a credential, never shown again) and the last
    // step a code was accepted for (replay: that step and earlier ones
    // are refused); its recovery codes as SHA-256 (single use); and the
    // stage of a session: 'full', or half logged in after the password
    // ('code': its TOTP code is next; 'enrol': it must enrol first, with
    // the secret on offer in `pending_totp`). Existing sessions are full.
    r#"
    CREATE TABLE operator_totp (
        name TEXT PRIMARY KEY REFERENCES operators (name) ON DELETE CASCADE,
        secret TEXT NOT NULL,
        last_step INTEGER,
        enrolled_at INTEGER NOT NULL
    );
    CREATE TABLE operator_recovery (
        name TEXT NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
        code_hash TEXT NOT NULL,
        used_at INTEGER,
        PRIMARY KEY (name, code_hash)
    );
    ALTER TABLE sessions ADD COLUMN stage TEXT NOT NULL DEFAULT 'full' CHECK (stage IN ('full', 'code', 'enrol'));
    ALTER TABLE sessions ADD COLUMN pending_totp TEXT;
    "#,
    // 11: why an operator ended a request (issue 20, item 6; validated by
    // `crate::end_reason`). NULL: ended before, by a time limit, by the
    // site owner, or from the CLI without a reason.
    r#"
    ALTER TABLE requests ADD COLUMN end_reason TEXT;
    "#,
];

/// The database.
#[derive(Debug)]
pub struct Storage {
    conn: Connection,
    /// When expired nonces were last purged (Unix seconds).
    last_nonce_purge: std::cell::Cell<u64>,
}

fn ip_to_i64(ip: Ipv4Addr) -> i64 {
    i64::from(u32::from(ip))
}

fn i64_to_ip(v: i64) -> Result<Ipv4Addr> {
    u32::try_from(v)
        .map(Ipv4Addr::from)
        .map_err(|_| StorageError::Corrupt(format!("address value {v}")))
}

fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("negative value {v}")))
}

fn from_u64(v: u64) -> i64 {
    // Times and counters stay far below 2^63; saturate rather than wrap.
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Storage {
    /// Opens (creating if needed) the database file and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::init(conn, true)
    }

    /// A private in-memory database (tests, `check-config`).
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, false)
    }

    fn init(conn: Connection, wal: bool) -> Result<Self> {
        // Another centerd may hold the write lock for a moment; wait for it
        // rather than failing the request.
        conn.busy_timeout(Duration::from_secs(5))?;
        if wal {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // WAL + NORMAL: durable across process crashes, and a power cut
            // loses at most the last transactions, never consistency.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every statement of the request path stays compiled (the default
        // cache of 16 was smaller than the number of hot statements, so
        // they were re-parsed on every use).
        conn.set_prepared_statement_cache_capacity(256);
        // 16 MiB of page cache per connection (default 2 MiB): the terminals
        // and slots of 10,000 routers stay in memory instead of being read
        // back from the file on every command.
        conn.pragma_update(None, "cache_size", -16_384)?;
        let mut s = Storage {
            conn,
            last_nonce_purge: std::cell::Cell::new(0),
        };
        s.migrate()?;
        Ok(s)
    }

    /// The schema version this build knows.
    pub fn schema_version_known() -> i64 {
        i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<()> {
        loop {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Read inside the write transaction: two processes starting at
            // once must not both run the same migration.
            let v: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let known = Self::schema_version_known();
            if v > known {
                return Err(StorageError::SchemaTooNew { found: v, known });
            }
            let Some(sql) = usize::try_from(v).ok().and_then(|i| MIGRATIONS.get(i)) else {
                tx.commit()?;
                return Ok(());
            };
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", v.saturating_add(1))?;
            tx.commit()?;
            log::info!("database schema migrated to version {}", v.saturating_add(1));
        }
    }

    fn tx(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Every row of every table except `skip`, as text in a stable order
    /// (the hostile-input tests compare it before and after a refused
    /// request: "no state change" means byte-equal).
    pub fn dump(&self, skip: &[&str]) -> Result<String> {
        let tables: Vec<String> = self
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        let mut out = String::new();
        for t in tables.iter().filter(|t| !skip.contains(&t.as_str())) {
            out.push_str(&format!("== {t}\n"));
            let mut stmt = self.conn.prepare(&format!("SELECT * FROM \"{t}\""))?;
            let n = stmt.column_count();
            let mut rows: Vec<String> = stmt
                .query_map([], |r| {
                    (0..n)
                        .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map(|v| v.join("|"))
                })?
                .collect::<std::result::Result<_, _>>()?;
            rows.sort();
            for r in rows {
                out.push_str(&r);
                out.push('\n');
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod operators_tests;
