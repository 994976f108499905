//! Operator sessions (the web UI's login tokens, stored hashed).

use rusqlite::params;

use super::{from_u64, Result, Storage};

impl Storage {
    pub fn add_session(&mut self, token_hash: &str, expires_at: u64) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO sessions (token_hash, expires_at) VALUES (?1, ?2)")?
            .execute(params![token_hash, from_u64(expires_at)])?;
        Ok(())
    }

    pub fn session_valid(&self, token_hash: &str, now: u64) -> Result<bool> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM sessions WHERE token_hash = ?1 AND expires_at >= ?2")?
            .query_row(params![token_hash, from_u64(now)], |r| r.get(0))?;
        Ok(n > 0)
    }

    pub fn delete_session(&mut self, token_hash: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
            .execute([token_hash])?;
        Ok(())
    }

    pub fn purge_sessions(&mut self, now: u64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM sessions WHERE expires_at < ?1")?
            .execute([from_u64(now)])?;
        Ok(())
    }
}
