//! Group commit for a service's small writes on SQLite (see [`Database::write_grouped`]).
//!
//! SQLite has one writer, and with `synchronous = FULL` each commit waits for the disk to
//! sync its WAL: written one at a time, small writes (a new guest's row, a new conversation)
//! go no faster than one disk sync each, and a storm of new visitors queues behind them.
//! Here one task takes every write that queued up while the previous transaction was
//! committing into the next one, so that a sync serves them all.

use std::future::Future;
use std::pin::Pin;

use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::Database;

/// The future of a grouped write, borrowing the connection it runs on.
pub type WriteFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// At most this many writes share a transaction: a write waits for the whole group's
/// statements before its commit.
const MAX_GROUP: usize = 128;
const QUEUE: usize = 4096;

/// A write waiting for its commit, its type erased so that one queue takes every kind.
trait Job: Send {
    /// Runs the write on `conn` and keeps its result; false when it failed.
    fn run<'c>(&'c mut self, conn: &'c mut AnyConnection) -> Pin<Box<dyn Future<Output = bool> + Send + 'c>>;
    /// Answers the caller: the write's result once its transaction `committed`, or why not.
    fn finish(self: Box<Self>, committed: Result<(), sqlx::Error>);
}

struct Pending<T, F> {
    write: F,
    result: Option<Result<T, sqlx::Error>>,
    reply: oneshot::Sender<Result<T, sqlx::Error>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: for<'c> Fn(&'c mut AnyConnection) -> WriteFuture<'c, T> + Send,
{
    fn run<'c>(&'c mut self, conn: &'c mut AnyConnection) -> Pin<Box<dyn Future<Output = bool> + Send + 'c>> {
        Box::pin(async move {
            let result = (self.write)(conn).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn finish(self: Box<Self>, committed: Result<(), sqlx::Error>) {
        let answer = match (committed, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(err), _) => Err(err),
            (Ok(()), None) => Err(sqlx::Error::Protocol("a grouped write was committed without being run".into())),
        };
        let _ = self.reply.send(answer);
    }
}

/// The queue of a database's grouped writes; the task that commits them ends when every
/// handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct Groups {
    queue: mpsc::Sender<Box<dyn Job>>,
}

impl Groups {
    pub(super) fn start(write: AnyPool) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(commit_groups(write, rx));
        Self { queue }
    }
}

impl Database {
    /// Runs `write` in a transaction of its own on PostgreSQL (which syncs concurrent
    /// commits together by itself); on SQLite in a transaction shared with the writes queued
    /// while the previous one committed. Either way the write's statements commit together
    /// or not at all, and its result is returned once they are durable.
    ///
    /// A write that fails fails alone: its group is rolled back and each of its writes runs
    /// again in a transaction of its own — which is why `write` is `Fn` (it may run twice,
    /// and must not count on its first run having happened).
    pub async fn write_grouped<T, F>(&self, write: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut AnyConnection) -> WriteFuture<'c, T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let mut job: Box<dyn Job> = Box::new(Pending { write, result: None, reply });
        match &self.groups {
            Some(groups) => {
                if let Err(mpsc::error::SendError(job)) = groups.queue.send(job).await {
                    job.finish(Err(sqlx::Error::PoolClosed));
                }
            }
            None => {
                let committed = alone(&self.write, &mut *job).await;
                job.finish(committed);
            }
        }
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn commit_groups(write: AnyPool, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        if jobs.len() > 1 {
            match together(&write, &mut jobs).await {
                Ok(()) => {
                    for job in jobs.drain(..) {
                        job.finish(Ok(()));
                    }
                    continue;
                }
                Err(err) => {
                    tracing::debug!(error = %err, size = jobs.len(), "a group of writes failed; each runs alone")
                }
            }
        }
        for mut job in jobs.drain(..) {
            let committed = alone(&write, &mut *job).await;
            job.finish(committed);
        }
    }
}

/// Runs every job in one transaction and commits it; rolls it back at the first failure.
async fn together(write: &AnyPool, jobs: &mut [Box<dyn Job>]) -> Result<(), sqlx::Error> {
    let mut tx = write.begin().await?;
    for job in jobs.iter_mut() {
        if !job.run(&mut tx).await {
            tx.rollback().await?;
            return Err(sqlx::Error::Protocol("a write of the group failed".into()));
        }
    }
    tx.commit().await
}

/// Runs one job in a transaction of its own. `Ok` when its transaction is settled: committed,
/// or rolled back after the job's own failure, which it then answers with.
async fn alone(write: &AnyPool, job: &mut dyn Job) -> Result<(), sqlx::Error> {
    let mut tx = write.begin().await?;
    if job.run(&mut tx).await { tx.commit().await } else { tx.rollback().await }
}

#[cfg(test)]
mod tests {
    use sqlx::migrate::Migrator;

    use super::*;

    async fn table() -> (Database, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("group.db").display());
        let db = Database::open(&url, &Migrator::DEFAULT, &Migrator::DEFAULT).await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)").execute(&db.write).await.unwrap();
        (db, dir)
    }

    /// Inserts rows `ids` in one write; answers how many rows it saw in the table after.
    async fn insert(db: &Database, ids: Vec<i64>) -> Result<i64, sqlx::Error> {
        db.write_grouped(move |conn| {
            let ids = ids.clone();
            Box::pin(async move {
                for id in ids {
                    sqlx::query("INSERT INTO t (id, body) VALUES ($1, 'x')").bind(id).execute(&mut *conn).await?;
                }
                sqlx::query_scalar("SELECT COUNT(*) FROM t").fetch_one(&mut *conn).await
            })
        })
        .await
    }

    async fn stored(db: &Database) -> Vec<i64> {
        sqlx::query_scalar("SELECT id FROM t ORDER BY id").fetch_all(&db.read).await.unwrap()
    }

    /// Writes that queue up while the write connection is busy share a transaction; one of
    /// them fails (its row is taken) and must fail alone: every other write is stored and
    /// answered, and the failed one left nothing behind, not even its first row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone_and_the_rest_of_its_group_is_stored() {
        let (db, _dir) = table().await;
        insert(&db, vec![7]).await.unwrap();
        let busy = db.write.acquire().await.unwrap();
        let writes: Vec<_> = (0..60)
            .map(|i| {
                let db = db.clone();
                // Write 30 inserts row 1000 and then the taken row 7.
                let ids = if i == 30 { vec![1000, 7] } else { vec![100 + i] };
                tokio::spawn(async move { insert(&db, ids).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(busy);
        for (i, write) in writes.into_iter().enumerate() {
            match write.await.unwrap() {
                Ok(seen) => assert!(i != 30 && seen >= 2, "write {i} succeeded, seeing {seen} rows"),
                Err(sqlx::Error::Database(e)) if i == 30 => assert!(e.is_unique_violation(), "{e}"),
                other => panic!("write {i}: {other:?}"),
            }
        }
        let expected: Vec<i64> = std::iter::once(7).chain((100..160).filter(|id| *id != 130)).collect();
        assert_eq!(stored(&db).await, expected);
        db.close().await;
    }

    /// A write alone is atomic too, and the next one is not affected by its failure.
    #[tokio::test]
    async fn a_write_alone_commits_whole_or_not_at_all() {
        let (db, _dir) = table().await;
        assert_eq!(insert(&db, vec![1, 2]).await.unwrap(), 2);
        assert!(insert(&db, vec![3, 1]).await.is_err());
        assert_eq!(insert(&db, vec![4]).await.unwrap(), 3);
        assert_eq!(stored(&db).await, vec![1, 2, 4]);
        db.close().await;
    }

    /// A write after the database closed gets an error, not a hang.
    #[tokio::test]
    async fn a_write_after_close_is_refused() {
        let (db, _dir) = table().await;
        db.close().await;
        let refused = tokio::time::timeout(std::time::Duration::from_secs(10), insert(&db, vec![1])).await;
        assert!(matches!(refused, Ok(Err(_))), "{refused:?}");
    }
}
