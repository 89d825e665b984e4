//! Which conversation replica's relay publishes messages: exactly one at a time.
//!
//! Every replica commits to the same database and every relay could read the same rows from
//! the shared cursor; two publishing relays sent every message twice (twice the delivery and
//! edge traffic, and a staff subscriber saw each event twice). The replica that holds a lock
//! is the leader: on PostgreSQL a session advisory lock, held by a connection of its own
//! (the server releases it when that session ends: the replica died or lost the database);
//! on SQLite an exclusive `flock` of a file beside the database (released when the process
//! ends). The others try again every second, so a leader that dies is replaced within about
//! that long, and the new one resumes from the stored cursor (what the old one published
//! after its last stored cursor is published again: edges drop seqs they already sent).
//! A replica that cannot tell whether it still holds the lock (its lock connection failed)
//! stops publishing at once.

use std::time::Duration;

use jack_runtime::CancellationToken;
use tokio::sync::watch;

/// How often a follower tries to become the leader, and a leader checks it still is.
const EVERY: Duration = Duration::from_secs(1);
/// The advisory lock's key: the same for every replica of one database.
const LOCK_KEY: i64 = 0x6a61_636b_7265_6c61; // "jackrela"

/// Starts competing for leadership; the receiver says whether this replica leads now.
pub fn start(database_url: &str, shutdown: CancellationToken) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let url = database_url.to_owned();
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            match Lock::try_take(&url).await {
                Ok(Some(mut lock)) => {
                    tracing::info!("this replica's relay publishes (it holds the relay lock)");
                    tx.send_replace(true);
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(EVERY) => {}
                            _ = shutdown.cancelled() => break,
                        }
                        if let Err(err) = lock.check().await {
                            tracing::warn!(error = %err, "relay lock lost; this replica stops publishing");
                            break;
                        }
                    }
                    tx.send_replace(false);
                    lock.release().await;
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "cannot try the relay lock; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    });
    rx
}

/// A held relay lock.
enum Lock {
    Postgres(sqlx::AnyConnection),
    Sqlite(std::fs::File),
}

impl Lock {
    /// The lock, if no other replica holds it.
    async fn try_take(url: &str) -> anyhow::Result<Option<Self>> {
        use sqlx::Connection as _;
        if url.starts_with("postgres") {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(url).await?;
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut conn).await?;
            if taken { Ok(Some(Self::Postgres(conn))) } else {
                let _ = conn.close().await;
                Ok(None)
            }
        } else {
            let path = sqlite_lock_path(url);
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => Ok(Some(Self::Sqlite(file))),
                Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
                Err(err) => Err(anyhow::anyhow!("cannot lock {}: {err}", path.display())),
            }
        }
    }

    /// Whether it is still held: the lock's session answers.
    async fn check(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Postgres(conn) => {
                let query = sqlx::query("SELECT 1").execute(&mut *conn);
                tokio::time::timeout(EVERY, query).await.map_err(|_| anyhow::anyhow!("the lock's connection did not answer in time"))??;
                Ok(())
            }
            Self::Sqlite(_) => Ok(()),
        }
    }

    async fn release(self) {
        match self {
            Self::Postgres(mut conn) => {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut conn).await;
                let _ = sqlx::Connection::close(conn).await;
            }
            Self::Sqlite(file) => drop(file),
        }
    }
}

/// The lock file beside a SQLite database (`sqlite:data/conversation.db` →
/// `data/conversation.db.relay-lock`).
fn sqlite_lock_path(url: &str) -> std::path::PathBuf {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    std::path::PathBuf::from(format!("{path}.relay-lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_replica_at_a_time_holds_the_sqlite_lock_and_another_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("conversation.db").display());
        let (first_stop, second_stop) = (CancellationToken::new(), CancellationToken::new());
        let mut first = start(&url, first_stop.clone());
        tokio::time::timeout(Duration::from_secs(10), first.wait_for(|lead| *lead)).await.unwrap().unwrap();
        let mut second = start(&url, second_stop.clone());
        tokio::time::sleep(EVERY * 2).await;
        assert!(!*second.borrow(), "the lock is held: the second replica follows");
        first_stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), second.wait_for(|lead| *lead)).await.expect("the second replica takes over").unwrap();
        second_stop.cancel();
    }

    #[test]
    fn the_lock_file_sits_beside_the_database() {
        assert_eq!(sqlite_lock_path("sqlite:data/conversation.db"), std::path::PathBuf::from("data/conversation.db.relay-lock"));
        assert_eq!(sqlite_lock_path("sqlite:///tmp/c.db?mode=rwc"), std::path::PathBuf::from("/tmp/c.db.relay-lock"));
    }
}
