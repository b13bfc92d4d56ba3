//! Session-level Postgres advisory locks: fleet-wide mutual exclusion through the ledger's database.
//!
//! A session-level lock lives with its database session: closing the session releases it, and so
//! does Postgres when the holder dies or loses the connection. Both kinds here therefore hold a
//! connection of their own, outside any pool (a pooled connection would outlive its user, lock
//! included):
//!
//! - [`Store::try_lock`] → [`SessionLock`]: take a lock for one piece of work (the rotator's
//!   fleet-wide rotation lock), then [`SessionLock::release`] it;
//! - [`AdvisoryLock`]: a long-lived session that takes a lock once and then only checks that it
//!   still lives ([`AdvisoryLock::ping`]), e.g. the checkers' ledger-writer election.

use sqlx::{Connection as _, PgConnection};

use crate::error::LedgerError;
use crate::store::Store;

/// `pg_try_advisory_lock(key)`: never waits, true when the session holds the lock afterwards.
async fn try_advisory_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// A database session of its own for session-level advisory locks.
///
/// Its methods have no deadline of their own (the session has no `statement_timeout` either):
/// callers bound them, e.g. with `tokio::time::timeout`. Dropping it drops the connection, which
/// ends the session and releases its locks as [`AdvisoryLock::close`] does, only less politely.
#[derive(Debug)]
pub struct AdvisoryLock {
    conn: PgConnection,
    url: String,
}

impl AdvisoryLock {
    /// Open a session to the database at `url` (`postgres://user@host:port/database`).
    pub async fn connect(url: &str) -> Result<AdvisoryLock, LedgerError> {
        let conn = PgConnection::connect(url)
            .await
            .map_err(|e| LedgerError::connect(url, e))?;
        Ok(AdvisoryLock {
            conn,
            url: url.to_owned(),
        })
    }

    /// `pg_try_advisory_lock(key)` without waiting: true when this session holds the lock now,
    /// false when another session does. Taking a lock this session already holds succeeds again
    /// (Postgres counts it); the end of the session releases it whatever the count.
    pub async fn try_take(&mut self, key: i64) -> Result<bool, LedgerError> {
        try_advisory_lock(&mut self.conn, key)
            .await
            .map_err(|e| LedgerError::query(&self.url, e))
    }

    /// `SELECT true`: Ok while the session, and so every lock it holds, lives.
    pub async fn ping(&mut self) -> Result<(), LedgerError> {
        sqlx::query_scalar::<_, bool>("SELECT true")
            .fetch_one(&mut self.conn)
            .await
            .map(|_| ())
            .map_err(|e| LedgerError::query(&self.url, e))
    }

    /// End the session: Postgres releases every lock it held. A failed goodbye still drops the
    /// connection, which ends the session all the same.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// A session-level advisory lock held by this process, on a connection taken out of the
/// [`Store`]'s pool for good. [`SessionLock::release`] closes that session, which releases the
/// lock; if the process dies first, or the lock is dropped, the session ends and Postgres releases
/// it all the same.
#[derive(Debug)]
#[must_use = "dropping the lock releases it at once: keep it while the work runs, then release it"]
pub struct SessionLock {
    session: AdvisoryLock,
    key: i64,
}

impl SessionLock {
    /// The lock's key.
    pub fn key(&self) -> i64 {
        self.key
    }

    /// Release the lock by closing its session.
    pub async fn release(self) {
        self.session.close().await;
    }
}

impl Store {
    /// Try to take the session-level advisory lock `key` without waiting: `Some` when this process
    /// holds it now, `None` when another session does. The lock holds a pooled connection,
    /// detached from the pool (the pool opens another when needed), until
    /// [`SessionLock::release`]. Each step is bounded like the store's statements.
    pub async fn try_lock(&self, key: i64) -> Result<Option<SessionLock>, LedgerError> {
        let mut conn = self.bounded(self.pool().acquire()).await?.detach();
        if self.bounded(try_advisory_lock(&mut conn, key)).await? {
            let session = AdvisoryLock {
                conn,
                url: self.url().to_owned(),
            };
            Ok(Some(SessionLock { session, key }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}
