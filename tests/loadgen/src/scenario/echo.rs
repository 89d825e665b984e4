//! echo: the transport ceiling. A bare tokio-tungstenite server that answers the spec's
//! frames without doing anything (no storage, no gRPC): `connected` on open, `identified` on
//! `identify`, `message_ack` on `message`. The chat scenario's client drives it, in its own
//! process as the real target would be, so the other figures can be read as a fraction of it.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::report::Report;
use crate::scenario::chat::{self, ChatArgs};

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Serves until the process is killed. Prints `listening ADDR` first.
pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(crate::client::config())).await else { return };
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let connected = json!({"type": "connected", "sessionId": format!("echo_{n}"), "timestamp": jack_runtime::time::now_rfc3339()});
            if ws.send(Message::text(connected.to_string())).await.is_err() {
                return;
            }
            let mut seq = 0u64;
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                let answer = match frame["type"].as_str() {
                    Some("identify") => json!({"type": "identified", "guestId": format!("echo_guest_{n}")}),
                    Some("message") => {
                        seq += 1;
                        json!({"type": "message_ack", "clientMessageId": frame["clientMessageId"], "messageId": format!("echo_{n}_{seq}"), "timestamp": jack_runtime::time::now_rfc3339()})
                    }
                    _ => continue,
                };
                if ws.send(Message::text(answer.to_string())).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Starts the echo server as a child process and runs the chat scenario against it.
pub async fn run(args: &ChatArgs) -> anyhow::Result<Report> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["echo-server", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    let addr = first.strip_prefix("listening ").ok_or_else(|| anyhow::anyhow!("echo server did not start: {first:?}"))?;
    let mut chat_args = args.clone();
    chat_args.traffic.url = format!("ws://{addr}/ws/chat?hotelId=echo");
    chat_args.no_verify = true;
    let mut report = chat::run(&chat_args, "echo baseline (bare tokio-tungstenite server)").await?;
    report.add("server", "jack-loadgen echo-server (child process)");
    child.kill().await?;
    Ok(report)
}
