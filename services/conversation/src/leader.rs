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
//! A replica that cannot tell whether it still holds the lock (its lock connection failed
//! or did not answer its check within a second) stops publishing, within about two seconds.
//! The lock's session ends itself after a few idle seconds (`idle_session_timeout`): a
//! leader whose machine died without closing its connection (no FIN reaches PostgreSQL)
//! frees the lock then, not when TCP gives up hours later — after it has stopped publishing.

use std::time::Duration;

use jack_runtime::CancellationToken;
use tokio::sync::watch;

/// How often a follower tries to become the leader, and a leader checks it still is.
const EVERY: Duration = Duration::from_secs(1);
/// The advisory lock's key: the same for every replica of one database.
pub const LOCK_KEY: i64 = 0x6a61_636b_7265_6c61; // "jackrela"
/// How long the lock's session may sit without a query before PostgreSQL ends it (and frees
/// the lock): a leader checks every [`EVERY`], so only a dead one goes that long.
const IDLE_SESSION_TIMEOUT: &str = "SET idle_session_timeout = '5s'";
/// How long connecting, or giving the lock back, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts competing for leadership; the receiver says whether this replica leads now.
pub fn start(database_url: &str, shutdown: CancellationToken) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let url = database_url.to_owned();
    tokio::spawn(async move {
        // A follower keeps its connection between tries.
        let mut spare = None;
        while !shutdown.is_cancelled() {
            match Lock::try_take(&url, &mut spare).await {
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

/// On PostgreSQL, listens for other replicas' notices that rows were committed
/// ([`crate::store::Store::notify_relay`]) and passes them to this replica's relay, so that a
/// message stored by any replica reaches guests as soon as one stored by the leader. (On
/// SQLite there is one replica; the relay's poll covers any other.) Reconnects when the
/// connection drops; a notice lost meanwhile is found by the relay's poll.
pub fn listen(database_url: &str, relay: crate::relay::RelayHandle, shutdown: CancellationToken) {
    if !database_url.starts_with("postgres") {
        return;
    }
    let url = database_url.to_owned();
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            tokio::select! {
                Err(err) = hear(&url, &relay) => tracing::warn!(error = %err, "relay notices not heard; retrying"),
                _ = shutdown.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    });
}

/// Passes every notice to the relay, until the connection fails.
async fn hear(url: &str, relay: &crate::relay::RelayHandle) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen("jack_relay").await?;
    loop {
        listener.recv().await?;
        relay.foreign_rows();
    }
}

/// A held relay lock.
enum Lock {
    Postgres(sqlx::AnyConnection),
    Sqlite(std::fs::File),
}

impl Lock {
    /// The lock, if no other replica holds it. On PostgreSQL a try that fails leaves its
    /// connection in `spare` for the next.
    async fn try_take(url: &str, spare: &mut Option<sqlx::AnyConnection>) -> anyhow::Result<Option<Self>> {
        use sqlx::Connection as _;
        if url.starts_with("postgres") {
            let mut conn = match spare.take() {
                Some(conn) => conn,
                None => {
                    sqlx::any::install_default_drivers();
                    let connect = sqlx::AnyConnection::connect(url);
                    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                        .await
                        .map_err(|_| anyhow::anyhow!("connecting to PostgreSQL timed out"))??;
                    if let Err(err) = sqlx::query(IDLE_SESSION_TIMEOUT).execute(&mut conn).await {
                        // Before PostgreSQL 14: a dead leader's lock waits for TCP to notice.
                        tracing::debug!(error = %err, "idle_session_timeout not set");
                    }
                    conn
                }
            };
            let taken = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut conn);
            let taken: bool = tokio::time::timeout(EVERY, taken)
                .await
                .map_err(|_| anyhow::anyhow!("PostgreSQL did not answer in time"))??;
            if taken {
                Ok(Some(Self::Postgres(conn)))
            } else {
                *spare = Some(conn);
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
                tokio::time::timeout(EVERY, query)
                    .await
                    .map_err(|_| anyhow::anyhow!("the lock's connection did not answer in time"))??;
                Ok(())
            }
            Self::Sqlite(_) => Ok(()),
        }
    }

    async fn release(self) {
        match self {
            Self::Postgres(mut conn) => {
                // Closing the session frees the lock too; unlocking first says so at once.
                let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut conn);
                if tokio::time::timeout(CONNECT_TIMEOUT, unlock).await.is_ok() {
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::Connection::close(conn)).await;
                }
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
        tokio::time::timeout(Duration::from_secs(10), second.wait_for(|lead| *lead))
            .await
            .expect("the second replica takes over")
            .unwrap();
        second_stop.cancel();
    }

    /// A leader that stops answering without closing its connection (its machine froze or
    /// died): PostgreSQL ends the idle session and another replica takes the lock, without
    /// waiting for TCP to give up.
    #[tokio::test]
    async fn a_silent_leaders_lock_is_freed_after_a_few_idle_seconds() {
        let url = std::env::var("JACK_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let (mut first_spare, mut second_spare) = (None, None);
        let held = Lock::try_take(&url, &mut first_spare).await.unwrap().expect("the lock is free");
        assert!(Lock::try_take(&url, &mut second_spare).await.unwrap().is_none(), "held by the first");
        // The first never checks again: its session goes idle.
        let started = std::time::Instant::now();
        let taken = loop {
            assert!(started.elapsed() < Duration::from_secs(30), "the idle session kept the lock");
            tokio::time::sleep(EVERY).await;
            if let Some(lock) = Lock::try_take(&url, &mut second_spare).await.unwrap() {
                break lock;
            }
        };
        let mut held = held;
        assert!(held.check().await.is_err(), "the silent leader finds out it lost the lock");
        taken.release().await;
    }

    #[test]
    fn the_lock_file_sits_beside_the_database() {
        assert_eq!(
            sqlite_lock_path("sqlite:data/conversation.db"),
            std::path::PathBuf::from("data/conversation.db.relay-lock")
        );
        assert_eq!(sqlite_lock_path("sqlite:///tmp/c.db?mode=rwc"), std::path::PathBuf::from("/tmp/c.db.relay-lock"));
    }
}
