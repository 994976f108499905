//! The audit log (issue 9): every operator action (login, failed login,
//! start, end, logout, drain), every grant and release of a VPNNAT address,
//! every installation and failure notice — who, when, what, from where.
//!
//! Append-only: rows are only ever inserted; triggers of migration 2 make
//! the database itself refuse `UPDATE` and `DELETE` on the table. Callers
//! never put a secret in it (no password, PSK, Secret(ID2), session token):
//! the row types carry only names, numbers and addresses.

use rusqlite::params;

use super::{from_u64, to_u64, Result, Storage};

/// One audit event to append.
#[derive(Debug, Clone, Default)]
pub struct NewAudit<'a> {
    pub at: u64,
    /// `operator#N` (N: which configured password hash), `operator:NAME`
    /// (a named account), `router:ID`,
    /// `cli:USER`, `centerd`.
    pub actor: &'a str,
    /// `login`, `login_failed`, `logout`, `start`, `end`, `grant`,
    /// `release`, `vpn_end`, `install`, `failure`, `drain`, `undrain`,
    /// `limit` (an operator's time limit), `expire` (ended by its limit),
    /// `operator_add`, `operator_disable`, `operator_enable`, `operator_role`
    /// (accounts, `crate::accounts::manage`), `login_refused` (a disabled account).
    pub action: &'a str,
    pub terminal_id: Option<&'a str>,
    pub acceptance_number: Option<u64>,
    pub detail: &'a str,
    /// Where the action came from (the peer's address, or `local`).
    pub peer: &'a str,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRow {
    pub id: u64,
    pub at: u64,
    pub actor: String,
    pub action: String,
    pub terminal_id: Option<String>,
    pub acceptance_number: Option<u64>,
    pub detail: String,
    pub peer: String,
}

/// Which rows to read; every field narrows, `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub terminal_id: Option<String>,
    pub acceptance_number: Option<u64>,
    /// Only rows at or after this Unix time.
    pub since: Option<u64>,
    /// Only rows at or before this Unix time.
    pub until: Option<u64>,
    /// Newest first, at most this many.
    pub limit: u32,
}

impl AuditRow {
    /// The CSV header matching [`AuditRow::csv_line`].
    pub const CSV_HEADER: &'static str = "id,at,actor,action,terminal_id,acceptance_number,detail,peer";

    /// One RFC 4180 CSV line (no line break). Fields that a spreadsheet
    /// would run as a formula (leading `=`, `+`, `-`, `@`) get a leading `'`.
    pub fn csv_line(&self) -> String {
        [
            self.id.to_string(),
            self.at.to_string(),
            csv_field(&self.actor),
            csv_field(&self.action),
            csv_field(self.terminal_id.as_deref().unwrap_or("")),
            self.acceptance_number.map(|n| n.to_string()).unwrap_or_default(),
            csv_field(&self.detail),
            csv_field(&self.peer),
        ]
        .join(",")
    }
}

fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Inserts one row on `conn` (inside the caller's transaction, so the
/// event commits with what it records).
pub(super) fn insert_in(conn: &rusqlite::Connection, e: &NewAudit<'_>) -> Result<u64> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, terminal_id, acceptance_number, detail, peer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        from_u64(e.at),
        e.actor,
        e.action,
        e.terminal_id,
        e.acceptance_number.map(from_u64),
        e.detail,
        e.peer
    ])?;
    to_u64(conn.last_insert_rowid())
}

impl Storage {
    /// Appends one event; returns its id.
    pub fn append_audit(&mut self, e: &NewAudit<'_>) -> Result<u64> {
        insert_in(&self.conn, e)
    }

    /// Appends several events in one transaction.
    pub fn append_audits(&mut self, events: &[NewAudit<'_>]) -> Result<()> {
        let tx = self.tx()?;
        for e in events {
            insert_in(&tx, e)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Events matching `f`, newest first.
    pub fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, at, actor, action, terminal_id, acceptance_number, detail, peer FROM audit
             WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2)
               AND (?3 IS NULL OR terminal_id = ?3) AND (?4 IS NULL OR acceptance_number = ?4)
               AND (?5 IS NULL OR at >= ?5) AND (?6 IS NULL OR at <= ?6)
             ORDER BY id DESC LIMIT ?7",
        )?;
        let rows = st.query_map(
            params![
                f.actor,
                f.action,
                f.terminal_id,
                f.acceptance_number.map(from_u64),
                f.since.map(from_u64),
                f.until.map(from_u64),
                f.limit
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, actor, action, terminal_id, n, detail, peer) = row?;
            out.push(AuditRow {
                id: to_u64(id)?,
                at: to_u64(at)?,
                actor,
                action,
                terminal_id,
                acceptance_number: n.map(to_u64).transpose()?,
                detail,
                peer,
            });
        }
        Ok(out)
    }

    /// A session for `operator` (the label written to the audit log).
    pub fn add_operator_session(&mut self, token_hash: &str, expires_at: u64, operator: &str) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO sessions (token_hash, expires_at, operator) VALUES (?1, ?2, ?3)")?
            .execute(params![token_hash, from_u64(expires_at), operator])?;
        Ok(())
    }

    /// The operator of a live session, if it is one.
    pub fn session_operator(&self, token_hash: &str, now: u64) -> Result<Option<String>> {
        use rusqlite::OptionalExtension as _;
        Ok(self
            .conn
            .prepare_cached("SELECT operator FROM sessions WHERE token_hash = ?1 AND expires_at >= ?2")?
            .query_row(params![token_hash, from_u64(now)], |r| r.get(0))
            .optional()?)
    }
}

impl Storage {
    /// The VPNNAT address of `terminal_name` of `terminal_id` while an open
    /// (not ended) request names it — what `HOSTNAME.TERMINALID.<domain>`
    /// resolves to. Both compare case-insensitively (DNS names do).
    pub fn live_grant_address(&self, terminal_id: &str, terminal_name: &str) -> Result<Option<std::net::Ipv4Addr>> {
        use rusqlite::OptionalExtension as _;
        const LIVE: &str = "AND EXISTS (SELECT 1 FROM request_terminals rt JOIN requests r
                     ON r.acceptance_number = rt.acceptance_number
                     WHERE rt.terminal_id = p.terminal_id AND rt.terminal_name = p.terminal_name
                       AND r.state != 'ended') LIMIT 1";
        // The exact spelling first (the unique index), then any case.
        for cmp in ["", " COLLATE NOCASE"] {
            let sql = format!(
                "SELECT p.addr FROM pool_allocated p
                 WHERE p.terminal_id = ?1{cmp} AND p.terminal_name = ?2{cmp} {LIVE}"
            );
            let a: Option<i64> = self
                .conn
                .prepare_cached(&sql)?
                .query_row(params![terminal_id, terminal_name], |r| r.get(0))
                .optional()?;
            if let Some(a) = a {
                return Ok(Some(super::i64_to_ip(a)?));
            }
        }
        Ok(None)
    }

    /// The router's server-part address while it has an open request
    /// (`router.TERMINALID.<domain>`).
    pub fn live_router_address(&self, terminal_id: &str) -> Result<Option<std::net::Ipv4Addr>> {
        use rusqlite::OptionalExtension as _;
        let a: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT t.server_part_vpnnat FROM terminals t
                 WHERE t.terminal_id = ?1 COLLATE NOCASE
                   AND EXISTS (SELECT 1 FROM requests r WHERE r.terminal_id = t.terminal_id AND r.state != 'ended')
                 LIMIT 1",
            )?
            .query_row(params![terminal_id], |r| r.get(0))
            .optional()?;
        a.map(super::i64_to_ip).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(at: u64, actor: &'a str, action: &'a str, tid: Option<&'a str>) -> NewAudit<'a> {
        NewAudit {
            at,
            actor,
            action,
            terminal_id: tid,
            acceptance_number: None,
            detail: "d",
            peer: "192.0.2.1",
        }
    }

    #[test]
    fn append_filter_and_refuse_changes() {
        let mut s = Storage::open_in_memory().unwrap();
        s.append_audit(&ev(10, "operator#1", "login", None)).unwrap();
        s.append_audit(&ev(20, "router:r1", "install", Some("r1"))).unwrap();
        s.append_audit(&ev(30, "router:r2", "install", Some("r2"))).unwrap();
        s.append_audit(&ev(40, "operator#1", "end", Some("r1"))).unwrap();
        let all = s
            .audit_log(&AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(all.iter().map(|r| r.at).collect::<Vec<_>>(), vec![40, 30, 20, 10]);
        let r1 = s
            .audit_log(&AuditFilter {
                terminal_id: Some("r1".into()),
                limit: 100,
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(
            r1.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
            vec!["end", "install"]
        );
        let window = s
            .audit_log(&AuditFilter {
                action: Some("install".into()),
                since: Some(25),
                until: Some(35),
                limit: 100,
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(window.len(), 1);
        assert_eq!(window[0].terminal_id.as_deref(), Some("r2"));
        // Append-only, enforced by the database.
        assert!(s.conn.execute("UPDATE audit SET actor = 'x'", []).is_err());
        assert!(s.conn.execute("DELETE FROM audit", []).is_err());
        assert_eq!(
            s.audit_log(&AuditFilter {
                limit: 100,
                ..AuditFilter::default()
            })
            .unwrap(),
            all
        );
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let r = AuditRow {
            id: 1,
            at: 2,
            actor: "router:a".into(),
            action: "failure".into(),
            terminal_id: Some("a".into()),
            acceptance_number: None,
            detail: "=HYPERLINK(\"x\"), more".into(),
            peer: "192.0.2.1".into(),
        };
        assert_eq!(
            r.csv_line(),
            "1,2,router:a,failure,a,,\"'=HYPERLINK(\"\"x\"\"), more\",192.0.2.1"
        );
    }

    #[test]
    fn sessions_remember_their_operator() {
        let mut s = Storage::open_in_memory().unwrap();
        s.add_operator_session("h", 100, "operator#2").unwrap();
        assert_eq!(s.session_operator("h", 50).unwrap().as_deref(), Some("operator#2"));
        assert_eq!(s.session_operator("h", 101).unwrap(), None);
        assert!(s.session_valid("h", 50).unwrap());
    }
}
