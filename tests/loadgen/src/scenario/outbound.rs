//! outbound and reconnect: a responder-like client sends through `ConversationService` to
//! connected guests at a fixed rate (open loop), and every guest checks it received its
//! messages exactly once, in order. `reconnect` additionally drops every guest's connection
//! at once in the middle of the traffic; they resume with `lastSeq`.
//!
//! Each message says which one it is and when it was scheduled (`out K T`), so a guest can
//! measure send→received latency and spot a loss, a duplicate or a reordering by itself.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use jack_proto::conversation::v1 as conv;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Identity, Target};
use crate::report::{self, Report};
use crate::scenario::chat::Traffic;
use crate::verify::{self, Verdict};

#[derive(Debug, Clone, clap::Args)]
pub struct OutboundArgs {
    #[command(flatten)]
    pub traffic: Traffic,
    /// ConversationService of the target (where the responder sends).
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    pub conversation: String,
    /// A file holding the responder's gRPC token (`jack up` makes one:
    /// `DATA/credentials/responder.token`); none for a target that checks no callers.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

struct Shared {
    start: Instant,
    latency: Mutex<Histogram<u64>>,
    /// Scheduled time → `SendMessage` answered (the message committed): the part of the
    /// latency before the relay, delivery and the edge.
    committed: Mutex<Histogram<u64>>,
    reconnect: Mutex<Histogram<u64>>,
    received: AtomicU64,
    reconnect_failures: AtomicU64,
    reconnect_retries: AtomicU64,
    /// Why reconnect attempts failed, with how often.
    retry_reasons: Mutex<BTreeMap<String, u64>>,
}

pub async fn run(outbound: &OutboundArgs, drop_midway: bool) -> anyhow::Result<Report> {
    let args = &outbound.traffic;
    let title = if drop_midway { "reconnect" } else { "outbound" };
    let (target, connections, connect_time) = args.connect_all(title).await?;
    if connections.iter().any(|(_, id, _)| id.conversation_id.is_none() || id.visitor_token.is_none()) {
        anyhow::bail!("{title} needs a target that speaks protocol v1 (conversationId and visitorToken in identified)");
    }
    let cpu = super::CpuMeter::start(args.target_pid, target.addr.port());
    let shared = Arc::new(Shared {
        start: Instant::now(),
        latency: Mutex::new(report::histogram()),
        committed: Mutex::new(report::histogram()),
        reconnect: Mutex::new(report::histogram()),
        received: AtomicU64::new(0),
        reconnect_failures: AtomicU64::new(0),
        reconnect_retries: AtomicU64::new(0),
        retry_reasons: Mutex::default(),
    });
    let (epoch_tx, epoch_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conversations = Vec::new();
    let mut tasks = Vec::new();
    for (ws, identity, source) in connections {
        conversations.push(identity.conversation_id.clone().unwrap_or_default());
        let task = tokio::spawn(receive(
            target.clone(),
            source,
            identity,
            ws,
            shared.clone(),
            epoch_rx.clone(),
            stop_rx.clone(),
        ));
        tasks.push(task);
    }

    let send_errors = Arc::new(AtomicU64::new(0));
    let total = args.rate * args.duration;
    let n = conversations.len() as u64;
    // The responder gets a thread and runtime of its own, as a real responder is a process of
    // its own: while 10,000 guests reconnect, this process's runtime is busy with them, and
    // sends sharing it measured the load generator's own queue instead of the target's
    // answer.
    let credentials = match &outbound.token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read --token-file {}: {e}", path.display()))?;
            jack_runtime::grpc::Credentials::bearer(&token)?
        }
        None => jack_runtime::grpc::Credentials::none(),
    };
    let responder = Responder {
        credentials,
        url: outbound.conversation.clone(),
        conversations,
        rate: args.rate,
        total,
        drop_at: drop_midway.then(|| Duration::from_secs(args.duration) / 2),
        epoch: epoch_tx,
        errors: send_errors.clone(),
        shared: shared.clone(),
    };
    let responder = std::thread::Builder::new().name("responder".into()).spawn(move || -> anyhow::Result<()> {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(responder.run())
    })?;
    tokio::task::spawn_blocking(move || responder.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the responder thread panicked"))??;
    // Wait until everything sent has arrived (or a grace period passed).
    let grace = Instant::now() + Duration::from_secs(20);
    while shared.received.load(Ordering::Relaxed) + send_errors.load(Ordering::Relaxed) < total
        && Instant::now() < grace
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu.stop();
    stop_tx.send_replace(true);

    let mut verdict = Verdict::default();
    for (g, task) in tasks.into_iter().enumerate() {
        let got = task.await.unwrap_or_default();
        let expected_count = total / n + u64::from((g as u64) < total % n);
        let expected: Vec<String> = (0..expected_count).map(|k| k.to_string()).collect();
        let seen: Vec<String> = got.iter().map(|k| k.to_string()).collect();
        verdict.merge(verify::compare(&expected, &seen));
    }
    let mut report = Report::new(title);
    report.add("target", args.url.clone());
    report.add("clients", args.clients as u64);
    report.add("connect_identify_per_sec", (args.clients as f64 / connect_time.as_secs_f64()).round());
    report.add("offered_rate_per_sec", args.rate);
    report.add("sent", total);
    report.add("send_errors", send_errors.load(Ordering::Relaxed));
    report.add("received", shared.received.load(Ordering::Relaxed));
    report.latency("send_to_received_latency", &shared.latency.lock().expect("lock"));
    report.latency("send_to_committed_latency", &shared.committed.lock().expect("lock"));
    cpu.report(&mut report, total, "message");
    if drop_midway {
        report.latency("reconnect_to_identified", &shared.reconnect.lock().expect("lock"));
        report.add("reconnect_failures", shared.reconnect_failures.load(Ordering::Relaxed));
        report.add("reconnect_retries", shared.reconnect_retries.load(Ordering::Relaxed));
        report.add("reconnect_retry_reasons", json!(*shared.retry_reasons.lock().expect("lock")));
        let hist = shared.reconnect.lock().expect("lock");
        report
            .add("all_live_again_after_s", if hist.is_empty() { Value::Null } else { json!(hist.max() as f64 / 1e6) });
    }
    report.add("exactly_once", verdict.to_json());
    Ok(report)
}

/// The responder: sends to the guests' conversations round-robin at a fixed rate (open loop),
/// and at `drop_at` tells every guest to drop its connection.
struct Responder {
    url: String,
    credentials: jack_runtime::grpc::Credentials,
    conversations: Vec<String>,
    rate: u64,
    total: u64,
    drop_at: Option<Duration>,
    epoch: watch::Sender<u64>,
    errors: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Responder {
    /// Returns once every send has been answered (or failed).
    async fn run(self) -> anyhow::Result<()> {
        let client = ConversationServiceClient::new(jack_runtime::grpc::channel(
            &self.url,
            Duration::from_secs(10),
            &self.credentials,
        )?);
        let n = self.conversations.len() as u64;
        let send_start = Instant::now();
        let mut scheduled = 0u64;
        let mut dropped = false;
        let mut sends = tokio::task::JoinSet::new();
        let mut ticks = crate::scenario::schedule(send_start, self.rate, self.total);
        while let Some(due) = ticks.recv().await {
            if !dropped && self.drop_at.is_some_and(|at| send_start.elapsed() >= at) {
                dropped = true;
                self.epoch.send_replace(1);
            }
            while scheduled < due {
                let at = send_start + Duration::from_secs_f64(scheduled as f64 / self.rate as f64);
                let offset_us = at.duration_since(self.shared.start).as_micros();
                let (conversation_id, k) = (self.conversations[(scheduled % n) as usize].clone(), scheduled / n);
                let (mut client, errors, shared) = (client.clone(), self.errors.clone(), self.shared.clone());
                sends.spawn(async move {
                    let request = conv::SendMessageRequest {
                        conversation_id,
                        role: conv::Role::Assistant as i32,
                        content: format!("out {k} {offset_us}"),
                        ..Default::default()
                    };
                    match client.send_message(request).await {
                        Ok(_) => {
                            let now_us = shared.start.elapsed().as_micros() as u64;
                            let _ = shared
                                .committed
                                .lock()
                                .expect("lock")
                                .record(now_us.saturating_sub(offset_us as u64).max(1));
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                scheduled += 1;
            }
            while sends.try_join_next().is_some() {}
        }
        while sends.join_next().await.is_some() {}
        Ok(())
    }
}

/// Parses `out K T` and records latency; returns K.
fn receipt(message: &Value, shared: &Shared, live: bool) -> Option<u64> {
    let content = message["content"].as_str()?;
    let mut parts = content.strip_prefix("out ")?.split(' ');
    let k: u64 = parts.next()?.parse().ok()?;
    let offset_us: u64 = parts.next()?.parse().ok()?;
    if live {
        let now_us = shared.start.elapsed().as_micros() as u64;
        let _ = shared.latency.lock().expect("lock").record(now_us.saturating_sub(offset_us).max(1));
    }
    shared.received.fetch_add(1, Ordering::Relaxed);
    Some(k)
}

async fn receive(
    target: Target,
    source: Option<IpAddr>,
    identity: Identity,
    mut ws: client::Ws,
    shared: Arc<Shared>,
    mut epoch: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) -> Vec<u64> {
    let mut got = Vec::new();
    let mut last_seq = 0i64;
    loop {
        tokio::select! {
            frame = ws.next() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    if matches!(frame, Some(Ok(_))) { continue; }
                    return got; // the connection is gone; what was missed shows as lost
                };
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                if frame["type"] == "message" && frame["role"] == "assistant" {
                    last_seq = last_seq.max(frame["seq"].as_i64().unwrap_or(0));
                    got.extend(receipt(&frame, &shared, true));
                }
            }
            // (Once the responder is done, its sender is gone and this branch is off.)
            Ok(()) = epoch.changed() => {
                // Drop the connection abruptly and resume where this guest left off.
                drop(ws);
                let dropped = Instant::now();
                let identify = json!({"type": "identify", "visitorId": identity.visitor_id, "visitorToken": identity.visitor_token, "lastSeq": last_seq});
                // As a widget does: retry with backoff and jitter until it is back.
                let mut backoff = Duration::from_millis(100);
                let resumed = loop {
                    match client::connect_and_identify(&target, source, identify.clone()).await {
                        Ok(resumed) => break Some(resumed),
                        Err(err) if dropped.elapsed() < Duration::from_secs(60) => {
                            shared.reconnect_retries.fetch_add(1, Ordering::Relaxed);
                            *shared.retry_reasons.lock().expect("lock").entry(format!("{err:#}")).or_default() += 1;
                            let jitter = Duration::from_millis(u64::from(jack_runtime::ids::random_hex().as_bytes()[0]) % 100);
                            tokio::time::sleep(backoff + jitter).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                        Err(_) => break None,
                    }
                };
                match resumed {
                    Some((new_ws, _, before)) => {
                        let _ = shared.reconnect.lock().expect("lock").record(dropped.elapsed().as_micros() as u64);
                        for frame in before {
                            let messages = if frame["type"] == "history" { frame["messages"].as_array().cloned().unwrap_or_default() } else { vec![frame] };
                            for m in messages.iter().filter(|m| m["role"] == "assistant") {
                                last_seq = last_seq.max(m["seq"].as_i64().unwrap_or(0));
                                got.extend(receipt(m, &shared, false));
                            }
                        }
                        ws = new_ws;
                    }
                    None => {
                        shared.reconnect_failures.fetch_add(1, Ordering::Relaxed);
                        return got;
                    }
                }
            }
            _ = stop.changed() => return got,
        }
    }
}
