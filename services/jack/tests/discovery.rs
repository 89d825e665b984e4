//! Delivery replicas found by a name, as a Kubernetes headless Service or a compose service
//! with replicas gives them: scaling delivery is a replica count. The edge and conversation
//! run in a mount namespace of their own whose `/etc/hosts` the test rewrites, so that
//! `delivery.jack.test` resolves to the replicas the test says, through the system's own
//! resolver. A replica that joins gets the edge's stream and the relay's events (a staff
//! subscription on it sees every message); one killed leaves, and guests see every message
//! once, in order, throughout.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jack_e2e::{Guest, free_port, http, json_body};
use jack_proto::delivery::v1 as events;
use jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;
use jack_runtime::grpc::{self, Credentials};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);
const HOTEL: &str = "hotel_discovery";
const NAME: &str = "delivery.jack.test";

/// Whether this machine lets the test give a process its own `/etc/hosts` (a mount
/// namespace: root, or a user namespace).
fn namespaces_work(hosts: &Path) -> bool {
    Command::new("unshare")
        .args(["--mount", "sh", "-c", "mount --bind \"$0\" /etc/hosts && getent hosts delivery.jack.test"])
        .arg(hosts)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `/etc/hosts` for the processes in the namespace: `localhost`, and the name for each of
/// `replicas`. Written in place: the bind mount holds this file, not its name.
fn write_hosts(path: &Path, replicas: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for addr in replicas {
        text.push_str(&format!("{addr} {NAME}\n"));
    }
    std::fs::write(path, text).unwrap();
}

struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    /// `jack run SERVICE`; with `hosts`, in a mount namespace that sees that file as
    /// `/etc/hosts`.
    fn start(&mut self, name: &str, service: &str, env: &[(String, String)], hosts: Option<&Path>) {
        let jack = env!("CARGO_BIN_EXE_jack");
        let mut command = match hosts {
            Some(hosts) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""]).arg(hosts).arg(jack);
                c
            }
            None => Command::new(jack),
        };
        let child = command
            .args(["run", service])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a service");
        self.children.push((name.to_owned(), child));
    }

    fn kill(&mut self, name: &str) {
        let at = self.children.iter().position(|(n, _)| n == name).expect("running");
        let (_, mut child) = self.children.remove(at);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The edge's `/health/websocket`, or `Null` while it does not answer.
async fn edge_health(base: &str, port: u16) -> Value {
    if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        return Value::Null;
    }
    let (status, body) = http(base, "GET", "/health/websocket", &[], "").await;
    if status == 0 { Value::Null } else { json_body(&body) }
}

/// Reads the second tab until it has been shown `contents`; fails on anything shown twice
/// or out of order.
async fn shown_in_order(tab: &mut Guest, contents: &[String]) {
    loop {
        let shown: Vec<Value> = tab.seen_messages();
        let seqs: Vec<i64> = shown.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "shown twice or out of order: {seqs:?}");
        let texts: Vec<String> = shown.iter().map(|m| m["content"].as_str().unwrap_or_default().to_owned()).collect();
        if texts.len() >= contents.len() {
            assert_eq!(texts, contents);
            return;
        }
        let frame = tab.next().await;
        tab.seen.push(frame);
    }
}

/// The first tab says message `n`, acknowledged; `said` keeps what was said, in order.
async fn say(first: &mut Guest, said: &mut Vec<String>, n: usize) {
    let content = format!("towels, please ({n})");
    let ack = first.say(&format!("m{n}"), &content).await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    said.push(content);
}

#[tokio::test]
async fn delivery_replicas_are_found_by_name_as_they_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, &["127.0.0.2"]);
    if !namespaces_work(&hosts) {
        // CI runs as root; elsewhere the test says why it did not run.
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs `unshare --mount` (root) to give services their own /etc/hosts"
        );
        eprintln!("skipped: `unshare --mount` is not permitted here (run as root to test DNS discovery)");
        return;
    }
    let credentials = jack::stack::credentials(dir.path()).unwrap();
    let file = |name: &str| credentials.join(name).display().to_string();
    let dashboard =
        Credentials::bearer(&std::fs::read_to_string(credentials.join("dashboard.token")).unwrap()).unwrap();
    let [guest, conversation, upload, upload_http, delivery, edge, edge_grpc] = [(); 7].map(|()| free_port());
    let db = |name: &str| format!("sqlite:{}", dir.path().join(format!("{name}.db")).display());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let by_name = format!("http://{NAME}:{delivery}");
    let env: Vec<(String, String)> = [
        ("GRPC_CALLERS_FILE", file("callers.json")),
        ("EDGE_GRPC_TOKEN_FILE", file("edge.token")),
        ("CONVERSATION_GRPC_TOKEN_FILE", file("conversation.token")),
        ("GUEST_GRPC_ADDR", format!("127.0.0.1:{guest}")),
        ("GUEST_DATABASE_URL", db("guest")),
        ("CONVERSATION_GRPC_ADDR", format!("127.0.0.1:{conversation}")),
        ("CONVERSATION_DATABASE_URL", db("conversation")),
        ("CONVERSATION_DELIVERY_URLS", by_name.clone()),
        ("CONVERSATION_UPLOAD_URL", url(upload)),
        ("UPLOAD_GRPC_ADDR", format!("127.0.0.1:{upload}")),
        ("UPLOAD_DATABASE_URL", db("upload")),
        ("UPLOAD_HTTP_ADDR", format!("127.0.0.1:{upload_http}")),
        ("UPLOAD_DIR", dir.path().join("uploads").display().to_string()),
        ("WEBSOCKET_HOST", "127.0.0.1".into()),
        ("WEBSOCKET_PORT", edge.to_string()),
        ("EDGE_GRPC_ADDR", format!("127.0.0.1:{edge_grpc}")),
        ("EDGE_METRICS_ADDR", "off".into()),
        ("EDGE_GUEST_URL", url(guest)),
        ("EDGE_CONVERSATION_URL", url(conversation)),
        ("EDGE_UPLOAD_URL", url(upload)),
        ("EDGE_DELIVERY_URLS", by_name),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let delivery_at = |addr: &str| {
        let mut env = env.clone();
        env.push(("DELIVERY_GRPC_ADDR".into(), format!("{addr}:{delivery}")));
        env
    };
    let mut processes = Processes { children: Vec::new() };
    processes.start("delivery-1", "delivery", &delivery_at("127.0.0.2"), None);
    processes.start("guest", "guest", &env, None);
    processes.start("upload", "upload", &env, None);
    processes.start("conversation", "conversation", &env, Some(&hosts));
    processes.start("edge", "edge", &env, Some(&hosts));
    let base = format!("http://127.0.0.1:{edge}");
    let streams = |total: u64| {
        let base = base.clone();
        move || {
            let base = base.clone();
            async move {
                let health = edge_health(&base, edge).await;
                health["status"] == "healthy"
                    && health["deliveryStreams"] == total
                    && health["deliveryStreamsUp"] == total
            }
        }
    };
    wait_until("the edge streams to the one replica its name gives", streams(1)).await;

    // Two tabs of one guest: what one says, the other is shown live through delivery.
    let ws = format!("ws://127.0.0.1:{edge}/ws/chat?hotelId={HOTEL}");
    let mut first = Guest::connect(&ws).await;
    let identified = first.identify(json!({"visitorId": "v_discovery"})).await;
    let mut second = Guest::connect(&ws).await;
    second
        .identify(
            json!({"visitorId": "v_discovery", "visitorToken": identified["visitorToken"], "resumeConversation": true}),
        )
        .await;
    let mut said = Vec::new();
    say(&mut first, &mut said, 0).await;
    shown_in_order(&mut second, &said).await;

    // Scaling up is a replica count: a second replica starts and the name gives it too.
    processes.start("delivery-2", "delivery", &delivery_at("127.0.0.3"), None);
    write_hosts(&hosts, &["127.0.0.2", "127.0.0.3"]);
    // A staff dashboard on the new replica as soon as it listens, whichever replica the relay
    // publishes to: the replica answers once the relay has found it too, and from then on it
    // has every event.
    wait_until("the new replica listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.3", delivery)).await.is_ok()
    })
    .await;
    let mut staff = DeliveryServiceClient::new(
        grpc::channel(&format!("http://127.0.0.3:{delivery}"), Duration::from_secs(5), &dashboard).unwrap(),
    );
    let filter = events::SubscribeRequest { hotel_id: Some(HOTEL.into()), messages: true, ..Default::default() };
    let mut subscription = staff.subscribe(filter).await.unwrap().into_inner();
    let from = said.len();
    for n in 1..=3 {
        say(&mut first, &mut said, n).await;
    }
    shown_in_order(&mut second, &said).await;
    wait_until("the edge streams to both replicas", streams(2)).await;

    // The first replica dies and leaves: the edge counts only the replica there is, and
    // messages go on, each shown once.
    processes.kill("delivery-1");
    for n in 4..=6 {
        say(&mut first, &mut said, n).await;
    }
    shown_in_order(&mut second, &said).await;
    wait_until("the edge streams to the one replica left, healthy", streams(1)).await;
    say(&mut first, &mut said, 7).await;
    shown_in_order(&mut second, &said).await;

    // The dashboard on the replica that joined saw every message from then on, once.
    let mut staff_saw = Vec::new();
    while staff_saw.len() < said.len() - from {
        let event = tokio::time::timeout(PATIENCE, subscription.message())
            .await
            .unwrap_or_else(|_| panic!("the dashboard saw only {staff_saw:?}"))
            .unwrap()
            .expect("the subscription stays open");
        staff_saw.extend(message_content(event));
    }
    assert_eq!(staff_saw, said[from..], "the dashboard on the new replica sees each message once, in order");
}

fn message_content(event: events::Event) -> Option<String> {
    match event.kind {
        Some(events::event::Kind::Message(m)) => Some(m.content),
        _ => None,
    }
}
