//! The load scenarios, one module each (outbound and reconnect share one).

pub mod chat;
pub mod echo;
pub mod idle;
pub mod outbound;

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// The shortest gap between two ticks of a schedule: at higher rates a tick hands out several
/// messages, so that the ticking thread does not wake tens of thousands of times a second on
/// the cores it shares with the system under test.
const MIN_TICK: Duration = Duration::from_micros(250);

/// The open-loop schedule: message `k` is due at `start + k / rate`, whatever happens. Each
/// tick says how many messages are due by now (a running total up to `total`).
///
/// The ticks come from a thread of their own sleeping to each due time: tokio's timer wakes
/// on millisecond boundaries, so with it every message went out up to 2 ms after its due time
/// — 1.0–1.3 ms on average — and latency, which counts from the due time, included that.
pub fn schedule(start: Instant, rate: u64, total: u64) -> mpsc::UnboundedReceiver<u64> {
    let (tx, rx) = mpsc::unbounded_channel();
    let rate = rate.max(1) as f64;
    std::thread::Builder::new()
        .name("schedule".into())
        .spawn(move || {
            let mut due = 0u64;
            let mut last = start;
            while due < total {
                let next = (start + Duration::from_secs_f64(due as f64 / rate)).max(last + MIN_TICK);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                last = Instant::now();
                // Every message whose due time has come: k / rate <= elapsed.
                due = ((last.duration_since(start).as_secs_f64() * rate) as u64 + 1).clamp(due + 1, total);
                if tx.send(due).is_err() {
                    return;
                }
            }
        })
        .expect("a thread for the schedule");
    rx
}
