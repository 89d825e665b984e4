//! Housekeeping: what a service runs now and then beside its requests, such as forgetting
//! records nobody will come back for.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `job` every `period` (the first time after one period) until `shutdown`.
pub async fn every<F, Fut>(period: Duration, shutdown: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => job().await,
            () = shutdown.cancelled() => return,
        }
    }
}

/// How often to look for what to forget when things are kept for `kept_for`: a tenth of
/// that, between a tenth of a second and ten minutes.
pub fn sweep_period(kept_for: Duration) -> Duration {
    (kept_for / 10).clamp(Duration::from_millis(100), Duration::from_secs(600))
}

/// Forgets in batches — `delete(limit)` deletes at most `limit` and says how many — until a
/// batch comes back short, so that one statement never holds the database long; logs what
/// was forgotten as `what`.
pub async fn forget_in_batches<F, Fut, E>(what: &'static str, batch: u64, mut delete: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<u64, E>>,
    E: Display,
{
    let mut forgotten = 0;
    loop {
        match delete(batch).await {
            Ok(n) => {
                forgotten += n;
                if n < batch {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, what, "forgetting failed");
                break;
            }
        }
    }
    if forgotten > 0 {
        tracing::info!(forgotten, what, "forgotten");
    }
}
