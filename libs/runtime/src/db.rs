//! Opening a service's database: a SQLite file (the embedded default) or PostgreSQL, through
//! sqlx's `Any` driver so that one store module serves both. Each service brings its own
//! migrations for each engine; SQL in the stores sticks to what both understand.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Executor};

mod group;
pub use group::WriteFuture;

/// Which engine a [`Database`] runs on; a few statements differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A service's database: a pool for reads and one for writes. On SQLite the write pool has a
/// single connection (SQLite has one writer anyway, and this way writers queue in-process
/// instead of spinning on SQLITE_BUSY); on PostgreSQL both are the same pool. Small writes
/// that come in storms (a new guest, a read receipt) go through [`Database::write_grouped`],
/// which on SQLite commits those queued together in one transaction.
#[derive(Debug, Clone)]
pub struct Database {
    pub engine: Engine,
    pub read: AnyPool,
    pub write: AnyPool,
    /// SQLite's group commit for small writes (see [`Database::write_grouped`]).
    groups: Option<group::Groups>,
}

impl Database {
    /// Connects and migrates. `url` is `sqlite:path/to/file.db` or `postgres://…`.
    pub async fn open(url: &str, sqlite: &Migrator, postgres: &Migrator) -> anyhow::Result<Self> {
        Self::open_with_writer_cache(url, sqlite, postgres, DEFAULT_WRITER_CACHE_KIB).await
    }

    /// [`Database::open`] with a larger page cache for the SQLite writer, in KiB, for a
    /// service whose batches touch many pages at once (the conversation service's messages).
    pub async fn open_with_writer_cache(
        url: &str,
        sqlite: &Migrator,
        postgres: &Migrator,
        writer_cache_kib: u32,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Engine::Postgres
        } else {
            anyhow::bail!("unsupported database URL {url:?}: expected sqlite:PATH or postgres://…");
        };
        let db = match engine {
            Engine::Sqlite => {
                let (path, url) = sqlite_url(url)?;
                let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
                let write = sqlite_pool(1, Role::Write { cache_kib: writer_cache_kib })
                    .connect_with(options.clone())
                    .await
                    .with_context(|| format!("failed to open {url}"))?;
                sqlite.run(&write).await.context("failed to migrate the database")?;
                let read = sqlite_pool(4, Role::Read)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("failed to open {url}"))?;
                tokio::spawn(checkpoint_in_background(read.clone(), write.clone(), path));
                let groups = Some(group::Groups::start(write.clone()));
                Self { engine, read, write, groups }
            }
            Engine::Postgres => {
                let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(5))
                    // Each connection keeps its prepared statements for its whole life. With
                    // PostgreSQL's default a statement's plan may be fixed after a few runs
                    // (a "generic" plan), made while a table was still empty: the message
                    // writer's lookup of resends then scanned the whole table as it grew,
                    // tens of milliseconds a batch. Planning each run for the table as it is
                    // costs a fraction of a millisecond.
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::query("SET plan_cache_mode = force_custom_plan").execute(conn).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .context("failed to connect to PostgreSQL")?;
                postgres.run(&pool).await.context("failed to migrate the database")?;
                Self { engine, read: pool.clone(), write: pool, groups: None }
            }
        };
        Ok(db)
    }

    /// A service's named secret (signing keys), made at random on first use and kept in its
    /// `service_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)` table; the first writer
    /// wins, so every replica on one database gets the same one.
    pub async fn secret(&self, name: &str) -> Result<String, sqlx::Error> {
        use sqlx::Row as _;
        let fresh = format!("{}{}", crate::ids::random_hex(), crate::ids::random_hex());
        sqlx::query("INSERT INTO service_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&self.write)
            .await?;
        sqlx::query("SELECT value FROM service_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.write)
            .await?
            .try_get("value")
    }

    /// Whether the database answers a trivial query within a second: what readiness means
    /// for a service that needs its database (see [`crate::grpc::health`]).
    pub async fn answers(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.read);
        matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)))
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Read,
    Write { cache_kib: u32 },
}

/// How often the WAL is copied back into the database file, off the writer's path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// The WAL's size, in frames (pages), from which a round of the background checkpoint
/// finishes on the write connection (see [`checkpoint_in_background`]): 4 MiB of 4 KiB pages.
const FINISH_ON_WRITER_FRAMES: i64 = 1_024;
/// Pages the WAL may grow to before the writer checkpoints by itself, inside a commit: a
/// fallback for when the background checkpoint falls behind. It starts the WAL over every
/// round, but under heavy load a round's WAL grows well past SQLite's default of 1,000 pages,
/// where a smaller limit would make the writer stall inside a commit.
const WRITER_CHECKPOINT_PAGES: u32 = 65_536;
/// The writer's page cache, in KiB, unless the service asks for more: SQLite's default. (A
/// writer keeps every page it wrote up to this, so a larger cache grows with the data.)
const DEFAULT_WRITER_CACHE_KIB: u32 = 2 * 1024;

/// Each reader's page cache, in KiB (SQLite's default is 2 MiB). Readers look up rows here
/// and there (a guest at identify, a page of history), which the operating system's file
/// cache serves about as fast; at SQLite's default, every reader of every database kept its
/// full cache, most of it pages read once.
const READER_CACHE_KIB: u32 = 256;

fn sqlite_pool(size: u32, role: Role) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        // A SQLite connection is a file handle in this process: nothing can break it between
        // uses, and a ping before every use is one more round trip to its thread.
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                // WAL lets readers run beside the writer; FULL makes a commit survive power loss.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                // Temporary data — above all the statement journal, which every page a
                // multi-row INSERT changes inside a transaction is copied to first — in memory
                // rather than in a temporary file: a file costs a write() a page.
                conn.execute("PRAGMA temp_store = MEMORY").await?;
                if role == Role::Read {
                    conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{READER_CACHE_KIB}"))).await?;
                }
                if let Role::Write { cache_kib } = role {
                    // A checkpoint run by the writer happens inside a commit, holding up every
                    // message queued behind it: the background task checkpoints instead, and
                    // copies a page touched by many commits once.
                    conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")))
                        .await?;
                    conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{cache_kib}"))).await?;
                }
                Ok(())
            })
        })
}

/// Copies the WAL back into the database file, mostly beside the writer, so that the writer
/// never has to do it inside a commit. Ends when the pools close.
///
/// A passive checkpoint from a reader never blocks the writer, but under a steady stream of
/// commits it never *finishes*: the writer commits while it copies, so it leaves the pages it
/// wrote to the database file unsynced (SQLite syncs the file only when a checkpoint copies
/// the WAL to its end) and the WAL cannot start over from its beginning. The WAL then grows
/// until the writer's own automatic checkpoint ([`WRITER_CHECKPOINT_PAGES`]) copies the rest
/// and syncs every page written since the last sync, inside a commit: a stall of the writer,
/// again and again under steady load. So each round, once the WAL is large:
/// 1. copies from a reader (the bulk, beside the writer), then syncs the database file from
///    a blocking thread (the slow part, beside the writer); twice, the second time only what
///    was committed during the first;
/// 2. finishes on the write connection, between two of the writer's transactions: copies what
///    was committed meanwhile and syncs those few pages; the next write starts the WAL over.
async fn checkpoint_in_background(read: AnyPool, write: AnyPool, path: PathBuf) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The WAL's size when a round last finished on the writer: the same size at the next
    // round means nothing was written since (any write grows it or starts it over).
    let mut finished_at = -1;
    'rounds: loop {
        tick.tick().await;
        if read.is_closed() || write.is_closed() {
            return;
        }
        // Twice: the second pass copies and syncs only what was committed during the first,
        // so that the writer's part is smaller still.
        for _ in 0..2 {
            match checkpoint(&read).await {
                // Small WALs need no help: they are copied whole whenever the writer pauses.
                // Nor does one that nothing was written to since the last round finished it.
                Ok(frames) if frames >= FINISH_ON_WRITER_FRAMES && frames != finished_at => {}
                Ok(_) => continue 'rounds,
                Err(err) => {
                    if read.is_closed() {
                        return;
                    }
                    tracing::debug!(error = %err, "background checkpoint failed");
                    continue 'rounds;
                }
            }
            if let Err(err) = sync_file(&path).await {
                tracing::debug!(error = %err, path = %path.display(), "syncing the database file failed");
            }
        }
        let started = std::time::Instant::now();
        match checkpoint(&write).await {
            Ok(frames) => {
                finished_at = frames;
                tracing::debug!(frames, micros = started.elapsed().as_micros() as u64, path = %path.display(), "checkpoint finished on the write connection");
            }
            Err(err) => {
                if write.is_closed() {
                    return;
                }
                tracing::debug!(error = %err, "checkpoint on the write connection failed");
            }
        }
    }
}

/// Flushes a file's written pages to the disk, from a blocking thread.
async fn sync_file(path: &Path) -> std::io::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(path)?.sync_data()).await.map_err(std::io::Error::other)?
}

/// Runs a passive checkpoint on a connection of `pool`; returns the WAL's size in frames.
async fn checkpoint(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    let (_busy, frames, _copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(pool).await?;
    Ok(frames)
}

/// Makes sure the file's folder exists and the file is created on first use; returns the
/// file's path and the URL to open it with.
fn sqlite_url(url: &str) -> anyhow::Result<(PathBuf, String)> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" {
        anyhow::bail!("a SQLite database needs a file path, got {url:?}");
    }
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok((PathBuf::from(path), format!("sqlite://{path}?{query}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// The WAL header's checkpoint sequence number, which SQLite raises each time it starts
    /// the WAL over from its beginning.
    fn wal_restarts(db: &Path) -> u32 {
        use std::io::Read as _;
        let mut header = [0u8; 16];
        match std::fs::File::open(db.with_extension("db-wal")).and_then(|mut wal| wal.read_exact(&mut header)) {
            Ok(()) => u32::from_be_bytes([header[12], header[13], header[14], header[15]]),
            Err(_) => 0,
        }
    }

    /// Under commits that never pause, a reader's checkpoint never copies the whole WAL, so
    /// only a checkpoint on the write connection lets SQLite start the WAL over (without it
    /// the writer would do it itself, inside a commit, once the WAL is large).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_while_commits_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let db = Database::open(&format!("sqlite:{}", path.display()), &Migrator::DEFAULT, &Migrator::DEFAULT)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)").execute(&db.write).await.unwrap();
        // Only the background checkpoint may start the WAL over here, not the writer's own.
        sqlx::query("PRAGMA wal_autocheckpoint = 0").execute(&db.write).await.unwrap();
        // Two tasks commit back to back, so that the write connection always has a commit
        // waiting for it; eight rows of 3 KB a commit, so that the WAL grows quickly.
        let stop = Arc::new(AtomicBool::new(false));
        let committers: Vec<_> = (0..2)
            .map(|_| {
                let (write, stop) = (db.write.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut commits = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        sqlx::query("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8) INSERT INTO t (body) SELECT randomblob(3000) FROM n")
                            .execute(&write)
                            .await
                            .unwrap();
                        commits += 1;
                    }
                    commits
                })
            })
            .collect();
        // The first round of checkpoints may find the database idle (after the CREATE TABLE)
        // and copy the whole WAL: start watching once the commits are under way.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = wal_restarts(&path);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while wal_restarts(&path) == before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let restarted = wal_restarts(&path) > before;
        stop.store(true, Ordering::Relaxed);
        let mut commits = 0;
        for committer in committers {
            commits += committer.await.unwrap();
        }
        assert!(restarted, "the WAL was never started over in {commits} commits");
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t").fetch_one(&db.read).await.unwrap();
        assert_eq!(rows, commits * 8, "every committed row is there");
        db.close().await;
    }
}
