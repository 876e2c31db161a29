//! Client sessions: a client's locks outlive a cut in its link.
//!
//! A client names its session (a random token) first on every connection. When a
//! connection ends, the locks of its session stay for `linger`; a new connection of the
//! same session takes them over. A client that does not come back loses them then.

use crate::locks::LockTable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub struct Sessions {
    /// Token -> the connection that has the session now (open, or closed and keeping its
    /// locks for `linger`).
    map: Arc<Mutex<HashMap<u128, u64>>>,
    locks: Arc<LockTable>,
    linger: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    pub fn new(locks: Arc<LockTable>, linger: Duration) -> Sessions {
        Sessions {
            map: Arc::default(),
            locks,
            linger,
        }
    }

    /// Ties connection `conn` to session `token`: the locks of the session's previous
    /// connection are now `conn`'s. Returns that previous connection, which the caller ends
    /// if it is still open (its link was cut silently).
    pub fn join(&self, conn: u64, token: u128) -> Option<u64> {
        // Under the map's lock, as a leaving connection decides there what its locks do.
        let mut map = lock(&self.map);
        let old = map.insert(token, conn).filter(|old| *old != conn)?;
        let moved = self.locks.adopt(old, conn);
        drop(map);
        if moved > 0 {
            tracing::info!(conn, "a client came back for its {moved} lock(s)");
        }
        Some(old)
    }

    /// The connection that has session `token` now.
    pub fn conn_of(&self, token: u128) -> Option<u64> {
        lock(&self.map).get(&token).copied()
    }

    /// Connection `conn` (of session `token`, if it named one) ended: its locks go, unless
    /// it still has its session and holds some; those wait `linger` for the client to come
    /// back on a new connection. (Spawns on the current runtime.)
    pub fn leave(&self, conn: u64, token: Option<u128>) {
        let mut map = lock(&self.map);
        let Some(token) = token.filter(|t| map.get(t) == Some(&conn)) else {
            self.locks.release_conn(conn);
            return;
        };
        if !self.locks.holds(conn) {
            map.remove(&token);
            self.locks.release_conn(conn);
            return;
        }
        self.locks.close_conn(conn);
        drop(map);
        let (map, locks, linger) = (self.map.clone(), self.locks.clone(), self.linger);
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            let mut m = lock(&map);
            if m.get(&token) == Some(&conn) {
                m.remove(&token);
                locks.release_conn(conn);
                tracing::info!(conn, "a client did not come back: its locks go");
            }
        });
    }
}
