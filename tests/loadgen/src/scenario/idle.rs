//! idle: hold N identified guests and measure what they cost the process under test.
//!
//! A process may hold at most 20,000 descriptors here, so the clients are split over worker
//! processes (this same binary, `idle-worker`). The parent measures the target's resident
//! memory before and after, holds the connections (long enough to span server pings), then
//! asks the workers how many are still open.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

use crate::client::{self, Target};
use crate::procfs;
use crate::report::Report;
use crate::scenario::chat::connect_many;

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[arg(long, default_value = "ws://127.0.0.1:3001/ws/chat?hotelId=bench")]
    pub url: String,
    /// Guests to hold.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Worker processes (default: one per 9,000 guests).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Seconds to hold the connections after all are identified (more than the server's
    /// ping interval shows that pings keep them alive).
    #[arg(long, default_value_t = 35)]
    pub hold: u64,
    /// The process under test (default: whoever listens on the URL's port).
    #[arg(long)]
    pub target_pid: Option<u32>,
    #[arg(long, default_value = "127.0.0.1-127.0.0.8")]
    pub sources: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub clients: usize,
    #[arg(long)]
    pub prefix: String,
    #[arg(long)]
    pub sources: String,
}

/// A worker: connects, prints `READY {...}`, holds until a line on stdin, prints `DONE {...}`.
pub async fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let sources = client::parse_sources(&args.sources)?;
    let (connections, took) = connect_many(&target, &sources, args.clients, &args.prefix).await?;
    let alive = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(connections.len() as u64));
    for (mut ws, _, _) in connections {
        let alive = alive.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            // Reading answers the server's pings; the loop ends when the server drops us.
            while let Some(Ok(_)) = ws.next().await {}
            alive.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    println!("READY {}", json!({"connected": args.clients, "seconds": took.as_secs_f64()}));
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
    println!("DONE {}", json!({"alive": alive.load(std::sync::atomic::Ordering::Relaxed)}));
    Ok(())
}

async fn read_tagged(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>, tag: &str) -> anyhow::Result<Value> {
    while let Some(line) = lines.next_line().await? {
        if let Some(json) = line.strip_prefix(tag) {
            return Ok(serde_json::from_str(json.trim())?);
        }
    }
    anyhow::bail!("worker ended before {tag}")
}

pub async fn run(args: &IdleArgs) -> anyhow::Result<Report> {
    let target = Target::parse(&args.url)?;
    let pid = args.target_pid.or_else(|| procfs::pid_listening_on(target.addr.port()));
    let rss_before = pid.and_then(|p| procfs::rss_kib(p).ok());
    let processes = args.processes.unwrap_or(args.clients.div_ceil(9000)).max(1);
    let run_id = jack_runtime::ids::random_hex();
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..processes {
        let share = args.clients / processes + usize::from(w < args.clients % processes);
        let mut child = Command::new(std::env::current_exe()?)
            .args(["idle-worker", "--url", &args.url, "--clients", &share.to_string(), "--prefix", &format!("idle-{}-{w}", &run_id[..8]), "--sources", &args.sources])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        workers.push((child, lines));
    }
    let mut connected = 0;
    for (_, lines) in &mut workers {
        connected += read_tagged(lines, "READY").await?["connected"].as_u64().unwrap_or(0);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the target settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = pid.and_then(|p| procfs::rss_kib(p).ok());
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let mut alive = 0;
    for (child, lines) in &mut workers {
        child.stdin.as_mut().expect("piped").write_all(b"stop\n").await?;
        alive += read_tagged(lines, "DONE").await?["alive"].as_u64().unwrap_or(0);
    }
    let mut report = Report::new("idle");
    report.add("target", args.url.clone());
    report.add("target_pid", pid.map_or(Value::Null, Value::from));
    report.add("client_processes", processes as u64);
    report.add("connections_held", connected);
    report.add("connect_identify_per_sec", (connected as f64 / connect_secs).round());
    report.add("rss_before_kib", rss_before.map_or(Value::Null, Value::from));
    report.add("rss_after_kib", rss_after.map_or(Value::Null, Value::from));
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        report.add("kib_per_connection", ((a.saturating_sub(b)) as f64 / connected.max(1) as f64 * 100.0).round() / 100.0);
    }
    report.add("hold_seconds", args.hold);
    report.add("alive_after_hold", alive);
    Ok(report)
}
