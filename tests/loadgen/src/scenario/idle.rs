//! idle: hold N identified guests and measure what they cost the process under test.
//!
//! A process may hold at most 20,000 descriptors here, so the clients are split over worker
//! processes (this same binary, `idle-worker`). The parent measures the target's resident
//! memory before and after, holds the connections (long enough to span server pings), then
//! asks the workers how many are still open.

use std::time::{Duration, Instant};

use anyhow::Context as _;
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
    /// Guests connected first (not counted in the marginal figure): the cost of the rest,
    /// measured after them, is what one more guest costs once caches and tables are warm.
    #[arg(long, default_value_t = 1000)]
    pub warmup: usize,
    /// The process under test (default: whoever listens on the URL's port).
    #[arg(long)]
    pub target_pid: Option<u32>,
    #[arg(long, default_value = "127.0.0.1-127.0.0.8")]
    pub sources: String,
    /// Hold guests that were each sent this many messages of history: one visitor sends
    /// them first, then every guest is a tab of that visitor resuming from the start (what
    /// a returning guest costs once idle, rather than a new one).
    #[arg(long, default_value_t = 0)]
    pub history: usize,
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
    /// Identify as tabs of this visitor (`VISITOR_ID TOKEN`) resuming from the start.
    #[arg(long, num_args = 2, value_names = ["VISITOR_ID", "TOKEN"])]
    pub resume: Option<Vec<String>>,
}

/// A worker: connects, prints `READY {...}`, holds until a line on stdin, prints `DONE {...}`.
pub async fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let sources = client::parse_sources(&args.sources)?;
    let resume = args.resume.as_ref().map(|r| (r[0].clone(), r[1].clone()));
    let connected = connect_many(&target, &sources, args.clients, &args.prefix, resume.as_ref()).await?;
    let alive = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(connected.guests.len() as u64));
    let ready = json!({"connected": connected.guests.len(), "failed": connected.failures, "error": connected.first_error, "seconds": connected.took.as_secs_f64()});
    for (mut ws, _, _) in connected.guests {
        let alive = alive.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            // Reading answers the server's pings; the loop ends when the server drops us.
            while let Some(Ok(_)) = ws.next().await {}
            alive.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    println!("READY {ready}");
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
    println!("DONE {}", json!({"alive": alive.load(std::sync::atomic::Ordering::Relaxed)}));
    Ok(())
}

async fn read_tagged(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    tag: &str,
) -> anyhow::Result<Value> {
    while let Some(line) = lines.next_line().await? {
        if let Some(json) = line.strip_prefix(tag) {
            return Ok(serde_json::from_str(json.trim())?);
        }
    }
    anyhow::bail!("worker ended before {tag}")
}

type Worker = (tokio::process::Child, tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>);

/// Starts worker processes holding `clients` guests between them and waits until all are
/// identified; returns the workers and how many guests they hold.
async fn spawn_workers(
    args: &IdleArgs,
    clients: usize,
    processes: usize,
    prefix: &str,
    resume: Option<&(String, String)>,
) -> anyhow::Result<(Vec<Worker>, u64, u64, Option<String>)> {
    let mut workers = Vec::new();
    for w in 0..processes {
        let share = clients / processes + usize::from(w < clients % processes);
        let mut command = Command::new(std::env::current_exe()?);
        command.args([
            "idle-worker",
            "--url",
            &args.url,
            "--clients",
            &share.to_string(),
            "--prefix",
            &format!("{prefix}-{w}"),
            "--sources",
            &args.sources,
        ]);
        if let Some((visitor, token)) = resume {
            command.args(["--resume", visitor, token]);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        workers.push((child, lines));
    }
    let (mut connected, mut failed, mut error) = (0, 0, None);
    for (_, lines) in &mut workers {
        let ready = read_tagged(lines, "READY").await?;
        connected += ready["connected"].as_u64().unwrap_or(0);
        failed += ready["failed"].as_u64().unwrap_or(0);
        if error.is_none() {
            error = ready["error"].as_str().map(str::to_owned);
        }
    }
    Ok((workers, connected, failed, error))
}

fn per_connection(before: Option<u64>, after: Option<u64>, connections: u64) -> Value {
    match (before, after) {
        (Some(b), Some(a)) => json!((a.saturating_sub(b) as f64 / connections.max(1) as f64 * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

/// One visitor sends `count` messages (paced under the edge's rate limit, each acknowledged)
/// and leaves; returns its id and token, and the bytes of content sent.
async fn visitor_with_history(target: &Target, count: usize, run_id: &str) -> anyhow::Result<((String, String), u64)> {
    let (mut ws, identity, _) =
        client::connect_and_identify(target, None, client::identify_frame(&format!("history-{run_id}"))).await?;
    let token = identity.visitor_token.clone().context("identified without a visitor token")?;
    let content = "x".repeat(180);
    let mut bytes = 0;
    for i in 0..count {
        let text = format!("history {i} {content}");
        bytes += text.len() as u64;
        client::send(&mut ws, &json!({"type": "message", "clientMessageId": format!("h{i}"), "content": text})).await?;
        loop {
            let frame = client::recv(&mut ws).await?;
            match frame["type"].as_str() {
                Some("message_ack") => break,
                Some("error") => anyhow::bail!("a history message was refused: {frame}"),
                _ => {}
            }
        }
        // Under the edge's 20 frames a second.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    Ok(((identity.visitor_id, token), bytes))
}

pub async fn run(args: &IdleArgs) -> anyhow::Result<Report> {
    let target = Target::parse(&args.url)?;
    let pid = args.target_pid.or_else(|| procfs::pid_listening_on(target.addr.port()));
    let rss = || pid.and_then(|p| procfs::rss_kib(p).ok());
    let run_id = jack_runtime::ids::random_hex();
    let (resume, history_bytes) = if args.history > 0 {
        let (resume, bytes) = visitor_with_history(&target, args.history, &run_id[..8]).await?;
        (Some(resume), bytes)
    } else {
        (None, 0)
    };
    let warmup = args.warmup.min(args.clients / 2);
    let rest = args.clients - warmup;
    let per_process = 9000;
    let rss_before = rss();
    let (mut workers, warm, warm_failed, warm_error) = if warmup > 0 {
        spawn_workers(args, warmup, warmup.div_ceil(per_process), &format!("warm-{}", &run_id[..8]), resume.as_ref())
            .await?
    } else {
        (Vec::new(), 0, 0, None)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_warm = rss();
    let cpu = super::CpuMeter::start(pid, target.addr.port());
    let started = Instant::now();
    let processes = args.processes.unwrap_or(rest.div_ceil(per_process)).max(1);
    let (main, connected, failed, error) =
        spawn_workers(args, rest, processes, &format!("idle-{}", &run_id[..8]), resume.as_ref()).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    // What the target spent connecting and identifying the guests after the warm-up.
    let cpu = cpu.stop();
    workers.extend(main);
    // Let the target settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let mut alive = 0;
    for (child, lines) in &mut workers {
        child.stdin.as_mut().expect("piped").write_all(b"stop\n").await?;
        alive += read_tagged(lines, "DONE").await?["alive"].as_u64().unwrap_or(0);
    }
    let held = warm + connected;
    let mut report = Report::new("idle");
    report.add("target", args.url.clone());
    report.add("client_processes", workers.len() as u64);
    report.add("connections_held", held);
    report.add("connect_identify_per_sec", (connected as f64 / connect_secs).round());
    report.add("connect_failures", warm_failed + failed);
    report.add("first_connect_error", warm_error.or(error).map_or(Value::Null, Value::from));
    report.add("rss_before_kib", rss_before.map_or(Value::Null, Value::from));
    report.add("rss_after_warmup_kib", rss_warm.map_or(Value::Null, Value::from));
    report.add("rss_after_kib", rss_after.map_or(Value::Null, Value::from));
    report.add("kib_per_connection_from_cold", per_connection(rss_before, rss_after, held));
    report.add("kib_per_connection_marginal", per_connection(rss_warm, rss_after, connected));
    cpu.report(&mut report, connected, "connect");
    if args.history > 0 {
        report.add("history_messages_each", args.history as u64);
        report.add("history_content_bytes", history_bytes);
    }
    report.add("hold_seconds", args.hold);
    report.add("alive_after_hold", alive);
    Ok(report)
}
