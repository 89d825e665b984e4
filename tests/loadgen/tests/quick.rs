//! The benchmark's correctness checks, small and quick, against the real stack: nothing
//! acknowledged is lost, duplicated or reordered; no timing is asserted.

use jack::{Service, Stack};
use jack_loadgen::scenario::{chat, outbound};
use jack_runtime::CancellationToken;
use jack_runtime::settings::Env;
use serde_json::Value;

async fn stack(dir: &std::path::Path) -> (Stack, CancellationToken) {
    // Every simulated guest comes from one address: the per-address limits are off, as for
    // the benchmarks.
    let mut env = Env::from_pairs([
        ("WEBSOCKET_HOST", "127.0.0.1"),
        ("WEBSOCKET_PORT", "0"),
        ("RUST_LOG", "warn"),
        ("EDGE_MAX_CONNECTIONS_PER_IP", "0"),
        ("EDGE_CONNECTS_PER_IP", "0"),
        ("EDGE_NEW_VISITORS_PER_IP", "0"),
    ]);
    for name in [
        "GUEST_GRPC_ADDR",
        "CONVERSATION_GRPC_ADDR",
        "DELIVERY_GRPC_ADDR",
        "UPLOAD_GRPC_ADDR",
        "UPLOAD_HTTP_ADDR",
        "EDGE_GRPC_ADDR",
        "EDGE_METRICS_ADDR",
    ] {
        env = env.with(name, "127.0.0.1:0");
    }
    let shutdown = CancellationToken::new();
    (Stack::start(env, dir, shutdown.clone()).await.unwrap(), shutdown)
}

fn clean(report: &Value) {
    let v = &report["exactly_once"];
    assert_eq!(
        (v["lost"].as_u64(), v["duplicated"].as_u64(), v["out_of_order"].as_u64(), v["failed_checks"].as_u64()),
        (Some(0), Some(0), Some(0), Some(0)),
        "{report}"
    );
    assert!(v["messages"].as_u64().unwrap() > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_outbound_and_reconnect_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (stack, shutdown) = stack(dir.path()).await;
    let url = format!("ws://{}/ws/chat?hotelId=bench", stack.addr(Service::Edge));

    let traffic = |clients, duration, sources: &str| chat::Traffic {
        url: url.clone(),
        clients,
        rate: 200,
        duration,
        sources: sources.into(),
        target_pid: None,
    };
    let args = chat::ChatArgs { traffic: traffic(20, 2, "127.0.0.1-127.0.0.4"), size: 64, no_verify: false };
    let report = chat::run(&args, "chat").await.unwrap().to_json();
    assert_eq!(report["acked"], report["scheduled"], "{report}");
    clean(&report);
    // The target (this process: the stack runs in it) is found by its port and measured.
    assert_eq!(report["target_pid"], std::process::id(), "{report}");
    assert!(report["target_cpu_us_per_message"].as_f64().is_some_and(|us| us > 0.0), "{report}");

    let args = outbound::OutboundArgs {
        traffic: traffic(20, 2, "127.0.0.1"),
        conversation: stack.url(Service::Conversation),
        token_file: Some(dir.path().join("credentials/responder.token")),
    };
    let report = outbound::run(&args, false).await.unwrap().to_json();
    assert_eq!(report["received"], report["sent"], "{report}");
    assert_eq!(report["send_to_committed_latency"]["count"], report["sent"], "every send answered and timed: {report}");
    clean(&report);

    let args = outbound::OutboundArgs { traffic: traffic(50, 3, "127.0.0.1"), ..args };
    let report = outbound::run(&args, true).await.unwrap().to_json();
    assert_eq!(report["reconnect_failures"], 0, "{report}");
    clean(&report);
    shutdown.cancel();
}

/// The durable echo baseline acknowledges a message only once its frame is in the log file.
#[tokio::test]
async fn the_durable_echo_acknowledges_only_what_its_log_holds() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::AsyncBufReadExt as _;
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("echo.log");
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_jack-loadgen"))
        .args(["echo-server", "--listen", "127.0.0.1:0", "--log"])
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let addr = first.strip_prefix("listening ").unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/chat?hotelId=echo")).await.unwrap();
    let Message::Text(connected) = ws.next().await.unwrap().unwrap() else { panic!("no connected frame") };
    assert!(connected.as_str().contains(r#""type":"connected""#), "{connected}");
    ws.send(Message::text(r#"{"type":"identify","visitorId":"v1"}"#)).await.unwrap();
    for i in 0..3 {
        ws.send(Message::text(format!(r#"{{"type":"message","content":"towels {i}","clientMessageId":"c{i}"}}"#)))
            .await
            .unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < 3 {
        let Message::Text(text) = ws.next().await.unwrap().unwrap() else { continue };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        if frame["type"] == "message_ack" {
            let client_id = frame["clientMessageId"].as_str().unwrap().to_owned();
            // Read when the ack arrives: the frame is already in the file.
            let kept = std::fs::read_to_string(&log).unwrap();
            assert!(
                kept.contains(&format!(r#""clientMessageId":"{client_id}""#)),
                "acked {client_id} but the log holds {kept:?}"
            );
            acked.push(client_id);
        }
    }
    assert_eq!(acked, ["c0", "c1", "c2"]);
}
