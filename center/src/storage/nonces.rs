//! Nonces of the replay guard, shared by every centerd on the database.

use rusqlite::{params, Connection};
use vpnnat_proto::auth::{Nonce, NonceStore, NonceStoreError};

use super::{from_u64, to_u64, Result, Storage};

/// At most this many live nonces per principal (a router or gateway that
/// sends more than this within the replay window is rate limited).
pub const NONCE_PRINCIPAL_LIMIT: u64 = 10_000;

/// [`NonceStore`] backed by the `nonces` table: the insert is one atomic
/// `INSERT ... ON CONFLICT DO NOTHING`, so two centerd processes sharing the
/// database cannot both accept the same nonce.
#[derive(Debug)]
pub struct DbNonceStore<'a> {
    conn: &'a Connection,
    last_purge: &'a std::cell::Cell<u64>,
}

impl NonceStore for DbNonceStore<'_> {
    fn insert_if_absent(&mut self, principal: &str, nonce: &Nonce, expires_at: u64) -> Result<bool, NonceStoreError> {
        let backend = |e: rusqlite::Error| NonceStoreError::Backend(e.to_string());
        let live: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM nonces WHERE principal = ?1")
            .and_then(|mut st| st.query_row([principal], |r| r.get(0)))
            .map_err(backend)?;
        if u64::try_from(live).unwrap_or(u64::MAX) >= NONCE_PRINCIPAL_LIMIT {
            return Err(NonceStoreError::PrincipalQuota {
                limit: usize::try_from(NONCE_PRINCIPAL_LIMIT).unwrap_or(usize::MAX),
            });
        }
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO nonces (principal, nonce, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (principal, nonce) DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![principal, &nonce.as_bytes()[..], from_u64(expires_at)]))
            .map_err(backend)?;
        Ok(n == 1)
    }

    fn purge_expired(&mut self, now: u64) -> Result<(), NonceStoreError> {
        // At most once a second: a nonce kept a second past its expiry is
        // harmless (its timestamp is stale by then anyway), a DELETE per
        // request is not free.
        if self.last_purge.get() == now {
            return Ok(());
        }
        self.last_purge.set(now);
        self.conn
            .prepare_cached("DELETE FROM nonces WHERE expires_at < ?1")
            .and_then(|mut st| st.execute([from_u64(now)]))
            .map_err(|e| NonceStoreError::Backend(e.to_string()))?;
        Ok(())
    }
}

impl Storage {
    /// Number of live nonces (tests, diagnostics).
    pub fn nonce_count(&self) -> Result<u64> {
        to_u64(
            self.conn
                .prepare_cached("SELECT COUNT(*) FROM nonces")?
                .query_row([], |r| r.get(0))?,
        )
    }

    /// A [`NonceStore`] over this database.
    pub fn nonce_store(&self) -> DbNonceStore<'_> {
        DbNonceStore {
            conn: &self.conn,
            last_purge: &self.last_nonce_purge,
        }
    }
}
