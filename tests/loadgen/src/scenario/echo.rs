//! echo: the transport ceiling. A bare tokio-tungstenite server that answers protocol v1's
//! frames without doing anything (no storage, no gRPC): `connected` on open, `identified` on
//! `identify`, `message_ack` on `message`. The chat scenario's client drives it, in its own
//! process as the real target would be, so the other figures can be read as a fraction of it.
//!
//! With `--durable DIR` the server also keeps what it acknowledges: each `message` frame is
//! appended to a log file and acknowledged only once a sync (`fdatasync`) has put it on the
//! disk, every frame that arrived during one sync sharing the next (group commit, on a thread
//! of its own). That is the ceiling of this machine for *durable* acknowledged messages over
//! WebSocket — no database, no services — for reading the chat figures against.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::report::Report;
use crate::scenario::chat::{self, ChatArgs};

static NEXT: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub chat: ChatArgs,
    /// Acknowledge a message only once it is synced to a log file in this folder (group
    /// commit): the durable ceiling instead of the transport's. Give a folder on the disk the
    /// product keeps its data on (`jack up --data`), not one in memory.
    #[arg(long, value_name = "DIR")]
    pub durable: Option<PathBuf>,
}

/// Serves until the process is killed, keeping acknowledged messages in `log` if given.
/// Prints `listening ADDR` first.
pub async fn serve(listen: &str, log: Option<&Path>) -> anyhow::Result<()> {
    let log = log.map(Log::open).transpose()?;
    // The product's own bind: the accept queue as long as the kernel allows (tokio's 128
    // dropped handshakes while 1,000 clients connected at once).
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--listen {listen:?}: no address"))?;
    let listener = jack_runtime::grpc::bind("the echo server", addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let log = log.clone();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(crate::client::config())).await
            else {
                return;
            };
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            match log {
                None => answer_at_once(ws, n).await,
                Some(log) => answer_once_kept(ws, n, log).await,
            }
        });
    }
}

type ServerWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn connected(n: u64) -> Value {
    json!({"type": "connected", "sessionId": format!("echo_{n}"), "timestamp": jack_runtime::time::now_rfc3339()})
}

/// The answer to a client frame, if it gets one; `seq` counts the connection's messages.
fn answer(n: u64, seq: &mut u64, frame: &Value) -> Option<Value> {
    match frame["type"].as_str() {
        Some("identify") => Some(json!({"type": "identified", "guestId": format!("echo_guest_{n}")})),
        Some("message") => {
            *seq += 1;
            Some(
                json!({"type": "message_ack", "clientMessageId": frame["clientMessageId"], "messageId": format!("echo_{n}_{seq}"), "timestamp": jack_runtime::time::now_rfc3339()}),
            )
        }
        _ => None,
    }
}

/// The bare echo: one task reads a frame and writes its answer.
async fn answer_at_once(mut ws: ServerWs, n: u64) {
    if ws.send(Message::text(connected(n).to_string())).await.is_err() {
        return;
    }
    let mut seq = 0u64;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
        let Some(answer) = answer(n, &mut seq, &frame) else { continue };
        if ws.send(Message::text(answer.to_string())).await.is_err() {
            return;
        }
    }
}

/// The durable echo: a message's ack waits for its frame to be synced to the log, while the
/// connection goes on reading; answers leave in the order their frames came.
async fn answer_once_kept(ws: ServerWs, n: u64, log: Log) {
    let (mut sink, mut stream) = ws.split();
    let (answers, mut outbox) = mpsc::unbounded_channel::<(Value, Option<oneshot::Receiver<()>>)>();
    let writer = tokio::spawn(async move {
        while let Some((answer, kept)) = outbox.recv().await {
            if let Some(kept) = kept
                && kept.await.is_err()
            {
                return;
            }
            if sink.send(Message::text(answer.to_string())).await.is_err() {
                return;
            }
        }
    });
    let _ = answers.send((connected(n), None));
    let mut seq = 0u64;
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
        let Some(answer) = answer(n, &mut seq, &frame) else { continue };
        let kept = (frame["type"] == "message").then(|| log.append(text.as_str()));
        if answers.send((answer, kept)).is_err() {
            break;
        }
    }
    drop(answers);
    let _ = writer.await;
}

/// An append-only log with group commit: one thread writes every frame queued during the
/// previous sync, syncs, then tells each frame's connection.
#[derive(Clone)]
struct Log {
    queue: mpsc::UnboundedSender<(String, oneshot::Sender<()>)>,
}

impl Log {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (queue, mut rx) = mpsc::unbounded_channel::<(String, oneshot::Sender<()>)>();
        std::thread::Builder::new().name("echo-log".into()).spawn(move || {
            let (mut batch, mut bytes) = (Vec::new(), Vec::new());
            while rx.blocking_recv_many(&mut batch, 4096) > 0 {
                for (frame, _) in &batch {
                    bytes.extend_from_slice(frame.as_bytes());
                    bytes.push(b'\n');
                }
                if let Err(err) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
                    eprintln!("echo log: {err}");
                    return;
                }
                bytes.clear();
                for (_, kept) in batch.drain(..) {
                    let _ = kept.send(());
                }
            }
        })?;
        Ok(Self { queue })
    }

    /// Queues a frame; the answer comes once it is on the disk.
    fn append(&self, frame: &str) -> oneshot::Receiver<()> {
        let (kept, answer) = oneshot::channel();
        let _ = self.queue.send((frame.to_owned(), kept));
        answer
    }
}

/// Starts the echo server as a child process and runs the chat scenario against it.
pub async fn run(args: &EchoArgs) -> anyhow::Result<Report> {
    let mut server = tokio::process::Command::new(std::env::current_exe()?);
    server.args(["echo-server", "--listen", "127.0.0.1:0"]);
    let log =
        args.durable.as_ref().map(|dir| dir.join(format!("jack-echo-{}.log", &jack_runtime::ids::random_hex()[..8])));
    if let Some(log) = &log {
        server.arg("--log").arg(log);
    }
    let mut child = server.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    let addr =
        first.strip_prefix("listening ").ok_or_else(|| anyhow::anyhow!("echo server did not start: {first:?}"))?;
    let mut chat_args = args.chat.clone();
    chat_args.traffic.url = format!("ws://{addr}/ws/chat?hotelId=echo");
    chat_args.no_verify = true;
    let title = if log.is_some() {
        "durable echo baseline (tokio-tungstenite server, group-committed log)"
    } else {
        "echo baseline (bare tokio-tungstenite server)"
    };
    let report = chat::run(&chat_args, title).await;
    child.kill().await?;
    if let Some(log) = &log {
        std::fs::remove_file(log)?;
    }
    let mut report = report?;
    report.add(
        "server",
        if log.is_some() {
            "jack-loadgen echo-server --log (child process)"
        } else {
            "jack-loadgen echo-server (child process)"
        },
    );
    Ok(report)
}
