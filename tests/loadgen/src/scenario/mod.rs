//! The load scenarios, one module each (outbound and reconnect share one).

pub mod chat;
pub mod echo;
pub mod idle;
pub mod outbound;

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::procfs;
use crate::report::Report;

/// The CPU time the process under test spends during a run, read from /proc when it runs on
/// this machine: per message, the figure to compare builds (or servers) by at a fixed rate.
pub struct CpuMeter {
    pid: Option<u32>,
    at_start: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring `pid` (or, when not given, whoever listens on `port` here).
    pub fn start(pid: Option<u32>, port: u16) -> Self {
        let pid = pid.or_else(|| procfs::pid_listening_on(port));
        Self { pid, at_start: pid.and_then(|p| procfs::cpu_seconds(p).ok()) }
    }

    /// What the target has used since the start.
    pub fn stop(self) -> CpuUsed {
        let now = self.pid.and_then(|p| procfs::cpu_seconds(p).ok());
        CpuUsed { pid: self.pid, seconds: now.zip(self.at_start).map(|(now, start)| now - start) }
    }
}

/// The CPU time a [`CpuMeter`] measured; `None` when the target could not be measured (not on
/// this machine, or gone).
pub struct CpuUsed {
    pid: Option<u32>,
    seconds: Option<f64>,
}

impl CpuUsed {
    /// Adds `target_pid`, `target_cpu_s` and `target_cpu_us_per_{what}` (over `count` of them).
    pub fn report(&self, report: &mut Report, count: u64, what: &str) {
        report.add("target_pid", self.pid.map_or(Value::Null, Value::from));
        report.add("target_cpu_s", self.seconds.map_or(Value::Null, |s| Value::from((s * 100.0).round() / 100.0)));
        let each = self.seconds.filter(|_| count > 0).map(|s| (s * 1e6 / count as f64).round());
        report.add(&format!("target_cpu_us_per_{what}"), each.map_or(Value::Null, Value::from));
    }
}

/// The shortest gap between two ticks of a schedule: at higher rates a tick hands out several
/// messages, so that the ticking thread does not wake tens of thousands of times a second on
/// the cores it shares with the system under test.
const MIN_TICK: Duration = Duration::from_micros(250);

/// The open-loop schedule: message `k` is due at `start + k / rate`, whatever happens. Each
/// tick says how many messages are due by now (a running total up to `total`).
///
/// The ticks come from a thread of their own sleeping to each due time: tokio's timer wakes
/// on millisecond boundaries, so with it every message went out up to a millisecond or two
/// after its due time, and latency, which counts from the due time, included that.
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
