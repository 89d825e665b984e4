//! chat: N guests send messages at a total rate R, open loop (the schedule does not slow
//! down when the server does). Reports achieved throughput and `message_ack` latency measured
//! from each message's scheduled time, then verifies the stored history (protocol v1).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Identity, Target};
use crate::report::{self, Report};
use crate::verify::{self, Verdict};

/// Who connects where, and how much traffic flows (shared by the traffic scenarios).
#[derive(Debug, Clone, clap::Args)]
pub struct Traffic {
    /// WebSocket URL of the target, e.g. ws://127.0.0.1:3001/ws/chat?hotelId=bench
    #[arg(long, default_value = "ws://127.0.0.1:3001/ws/chat?hotelId=bench")]
    pub url: String,
    /// Guests connected.
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// Messages per second, all guests together (open loop).
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Source addresses to spread connections over.
    #[arg(long, default_value = "127.0.0.1-127.0.0.8")]
    pub sources: String,
    /// The process under test, for its CPU time during the run (default: whoever listens on
    /// the URL's port, when it is on this machine).
    #[arg(long)]
    pub target_pid: Option<u32>,
}

impl Traffic {
    /// Connects and identifies every guest (`name` prefixes their visitor ids); a traffic
    /// scenario needs them all, so any failure ends the run.
    pub async fn connect_all(
        &self,
        name: &str,
    ) -> anyhow::Result<(Target, Vec<(client::Ws, Identity, Option<std::net::IpAddr>)>, Duration)> {
        let target = Target::parse(&self.url)?;
        let sources = client::parse_sources(&self.sources)?;
        let prefix = format!("{name}-{}", &jack_runtime::ids::random_hex()[..8]);
        let connected = connect_many(&target, &sources, self.clients, &prefix, None).await?;
        if let Some(err) = &connected.first_error {
            anyhow::bail!("{} of {} guests could not connect: {err}", connected.failures, self.clients);
        }
        Ok((target, connected.guests, connected.took))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub traffic: Traffic,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Skip the exactly-once check of stored history.
    #[arg(long)]
    pub no_verify: bool,
}

struct Guest {
    identity: Identity,
    source: Option<std::net::IpAddr>,
    tx: mpsc::UnboundedSender<(u64, Instant)>,
    task: tokio::task::JoinHandle<GuestOutcome>,
}

#[derive(Default)]
struct GuestOutcome {
    /// (message number, messageId) in the order sent, for acked messages.
    acked: Vec<(u64, String)>,
    errors: HashMap<String, u64>,
    unacked: u64,
    last_ack: Option<Instant>,
}

/// Guests that connected and identified, and those that did not.
pub struct Connected {
    pub guests: Vec<(client::Ws, Identity, Option<std::net::IpAddr>)>,
    pub failures: usize,
    pub first_error: Option<String>,
    pub took: Duration,
}

/// Connects and identifies `count` guests, 256 at a time: fresh visitors named after
/// `prefix`, or, with `resume` (a visitor id and token), tabs of that one visitor that ask for
/// its whole history.
pub async fn connect_many(
    target: &Target,
    sources: &[std::net::IpAddr],
    count: usize,
    prefix: &str,
    resume: Option<&(String, String)>,
) -> anyhow::Result<Connected> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (target, gate) = (target.clone(), gate.clone());
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let identify = match resume {
            Some((visitor, token)) => {
                json!({"type": "identify", "visitorId": visitor, "visitorToken": token, "lastSeq": 0})
            }
            None => client::identify_frame(&format!("{prefix}-{i}")),
        };
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            client::connect_and_identify(&target, source, identify).await.map(|(ws, id, _)| (ws, id, source))
        }));
    }
    let mut connected =
        Connected { guests: Vec::with_capacity(count), failures: 0, first_error: None, took: Duration::ZERO };
    for task in tasks {
        match task.await? {
            Ok(guest) => connected.guests.push(guest),
            Err(err) => {
                connected.failures += 1;
                connected.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
    connected.took = started.elapsed();
    Ok(connected)
}

pub async fn run(chat: &ChatArgs, title: &str) -> anyhow::Result<Report> {
    let args = &chat.traffic;
    let (target, connections, connect_time) = args.connect_all("chat").await?;
    let latency = Arc::new(Mutex::new(report::histogram()));
    let content: String = "x".repeat(chat.size.saturating_sub(8));

    let mut guests = Vec::with_capacity(connections.len());
    for (ws, identity, source) in connections {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(guest_loop(ws, rx, latency.clone(), content.clone()));
        guests.push(Guest { identity, source, tx, task });
    }

    // The open-loop schedule: message k is due at start + k / rate, whatever happens.
    let cpu = super::CpuMeter::start(args.target_pid, target.addr.port());
    let start = Instant::now();
    let total = args.rate * args.duration;
    let mut scheduled = 0u64;
    let mut ticks = super::schedule(start, args.rate, total);
    while let Some(due) = ticks.recv().await {
        while scheduled < due {
            let at = start + Duration::from_secs_f64(scheduled as f64 / args.rate as f64);
            let guest = &guests[(scheduled % guests.len() as u64) as usize];
            let _ = guest.tx.send((scheduled, at));
            scheduled += 1;
        }
    }
    let mut outcomes = Vec::with_capacity(guests.len());
    let mut identities = Vec::with_capacity(guests.len());
    for guest in guests {
        drop(guest.tx);
        identities.push((guest.identity, guest.source));
        outcomes.push(guest.task.await.unwrap_or_default());
    }

    let acked: u64 = outcomes.iter().map(|o| o.acked.len() as u64).sum();
    let unacked: u64 = outcomes.iter().map(|o| o.unacked).sum();
    let mut errors: HashMap<String, u64> = HashMap::new();
    for o in &outcomes {
        for (code, n) in &o.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    // From the first message due to the last answer: the CPU the run's messages cost.
    let cpu = cpu.stop();
    let last_ack = outcomes.iter().filter_map(|o| o.last_ack).max().unwrap_or(start);
    let elapsed = last_ack.duration_since(start).as_secs_f64().max(args.duration as f64);

    let mut report = Report::new(title);
    report.add("target", args.url.clone());
    report.add("clients", args.clients as u64);
    report.add("connect_identify_per_sec", (args.clients as f64 / connect_time.as_secs_f64()).round());
    report.add("offered_rate_per_sec", args.rate);
    report.add("scheduled", scheduled);
    report.add("acked", acked);
    report.add("acked_per_sec", (acked as f64 / elapsed).round());
    report.add("unacked", unacked);
    report.add("errors", json!(errors));
    report.latency("ack_latency", &latency.lock().expect("latency lock"));
    cpu.report(&mut report, acked, "message");

    let v1 = identities.first().is_some_and(|(i, _)| i.protocol == Some(1) && i.visitor_token.is_some());
    if !chat.no_verify && v1 {
        let mut verdict = Verdict::default();
        let gate = Arc::new(Semaphore::new(64));
        let mut checks = Vec::new();
        for ((identity, source), outcome) in identities.into_iter().zip(outcomes) {
            let (target, gate) = (target.clone(), gate.clone());
            let ids: Vec<String> = outcome.acked.into_iter().map(|(_, id)| id).collect();
            checks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                verify::stored_history(&target, source, &identity, &ids).await
            }));
        }
        for check in checks {
            verdict.merge(check.await.unwrap_or(Verdict { failed_checks: 1, ..Default::default() }));
        }
        report.add("exactly_once", verdict.to_json());
    } else {
        report.add("exactly_once", "not checked (target does not speak protocol v1, or --no-verify)");
    }
    Ok(report)
}

/// The fields of a server frame the chat client reads, borrowed from the frame's text where
/// it can be (the client shares the machine with the server it measures, so it parses no
/// more than it needs).
#[derive(serde::Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "clientMessageId", default, borrow)]
    client_message_id: Option<Cow<'a, str>>,
    #[serde(rename = "messageId", default)]
    message_id: Option<String>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

/// One guest: sends what the schedule gives it, matches acks to sends. Message `n` goes out
/// with the client message id `m{n}`.
async fn guest_loop(
    mut ws: client::Ws,
    mut commands: mpsc::UnboundedReceiver<(u64, Instant)>,
    latency: Arc<Mutex<Histogram<u64>>>,
    content: String,
) -> GuestOutcome {
    let mut outcome = GuestOutcome::default();
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let mut open = true;
    // Armed once the schedule ends: how long to wait for the last acks.
    let grace = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(grace);
    loop {
        if !open && pending.is_empty() {
            break;
        }
        tokio::select! {
            command = commands.recv(), if open => match command {
                Some((n, at)) => {
                    // The content is the message number and filler: nothing to escape.
                    let frame = format!(r#"{{"type":"message","clientMessageId":"m{n}","content":"{n:08}{content}"}}"#);
                    if ws.send(Message::text(frame)).await.is_err() {
                        *outcome.errors.entry("SEND_FAILED".into()).or_default() += 1;
                        break;
                    }
                    pending.insert(n, at);
                }
                None => {
                    open = false;
                    grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(15));
                }
            },
            frame = ws.next() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    if matches!(frame, Some(Ok(_))) { continue; }
                    *outcome.errors.entry("CONNECTION_LOST".into()).or_default() += 1;
                    break;
                };
                let Ok(reply) = serde_json::from_str::<Reply<'_>>(text.as_str()) else { continue };
                let n = reply.client_message_id.as_deref().and_then(|id| id.strip_prefix('m')?.parse::<u64>().ok());
                match reply.kind.as_ref() {
                    "message_ack" => {
                        if let Some((n, at)) = n.and_then(|n| Some((n, pending.remove(&n)?))) {
                            let now = Instant::now();
                            let _ = latency.lock().expect("latency lock").record(now.duration_since(at).as_micros() as u64);
                            outcome.acked.push((n, reply.message_id.unwrap_or_default()));
                            outcome.last_ack = Some(now);
                        }
                    }
                    "error" => {
                        if let Some(n) = n {
                            pending.remove(&n);
                        }
                        *outcome.errors.entry(reply.code.as_deref().unwrap_or("ERROR").to_owned()).or_default() += 1;
                    }
                    _ => {}
                }
            }
            () = &mut grace, if !open => break,
        }
    }
    outcome.unacked = pending.len() as u64;
    outcome.acked.sort_by_key(|(n, _)| *n);
    outcome
}
