//! The distributed shape as a platform team runs it: each service its own process on
//! PostgreSQL, with two conversation replicas, two delivery replicas and two edges. Under
//! SIGKILL of one replica of each while guests and a responder keep talking, nothing
//! committed is lost, no guest is shown a message twice, and a staff subscription on the
//! surviving delivery replica sees every message, once.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jack_e2e::{Guest, free_port, http, json_body};
use jack_proto::conversation::v1 as conv;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use jack_proto::delivery::v1 as events;
use jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;
use jack_runtime::grpc::{self, Credentials};
use serde_json::{Value, json};

/// How long a client keeps retrying through a failover before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);
const HOTEL: &str = "hotel_replicas";
const GUESTS: usize = 4;
const ROUNDS: usize = 12;

/// Running processes by name (`conversation-1`, …), each with the variables it was given.
struct Deployment {
    children: Vec<(String, Child)>,
}

impl Deployment {
    fn start(&mut self, name: &str, service: &str, env: &[(String, String)]) {
        let child = Command::new(env!("CARGO_BIN_EXE_jack"))
            .args(["run", service])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a service");
        self.children.push((name.to_owned(), child));
    }

    /// SIGKILL: no drain, no goodbye.
    fn kill(&mut self, name: &str) {
        let at = self.children.iter().position(|(n, _)| n == name).expect("running");
        let (_, mut child) = self.children.remove(at);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A guest whose widget goes on through failures: it reconnects to the next edge, resumes
/// from the last seq it has, and resends an unacknowledged message with the same id.
struct Visitor {
    edges: Vec<String>,
    next_edge: usize,
    visitor_id: String,
    token: Option<String>,
    conversation_id: String,
    socket: Option<Guest>,
    /// seq → message id, of what the guest has: shown (`message`, `history`) or acked.
    has: BTreeMap<i64, String>,
    /// How many times each seq was shown.
    shown: HashMap<i64, u32>,
    contents: BTreeMap<i64, String>,
}

impl Visitor {
    fn new(edges: Vec<String>, first_edge: usize, visitor_id: String) -> Self {
        Self {
            edges,
            next_edge: first_edge,
            visitor_id,
            token: None,
            conversation_id: String::new(),
            socket: None,
            has: BTreeMap::new(),
            shown: HashMap::new(),
            contents: BTreeMap::new(),
        }
    }

    fn note(&mut self, frame: &Value) {
        let mut show = |m: &Value| {
            let seq = m["seq"].as_i64().expect("a message has a seq");
            *self.shown.entry(seq).or_default() += 1;
            self.has.insert(seq, m["messageId"].as_str().unwrap().to_owned());
            self.contents.insert(seq, m["content"].as_str().unwrap_or_default().to_owned());
        };
        match frame["type"].as_str() {
            Some("message") => show(frame),
            Some("history") => frame["messages"].as_array().into_iter().flatten().for_each(show),
            _ => {}
        }
    }

    /// The highest seq up to which the guest has every message, as the widget resumes: an
    /// acknowledged message of its own may be ahead of one not yet shown.
    fn resume_after(&self) -> i64 {
        let mut last = 0;
        while self.has.contains_key(&(last + 1)) {
            last += 1;
        }
        last
    }

    /// An identified socket, reconnecting (to the next edge after a failure) until one is.
    async fn socket(&mut self) -> &mut Guest {
        let started = Instant::now();
        while self.socket.is_none() {
            assert!(started.elapsed() < PATIENCE, "{} could not reconnect", self.visitor_id);
            let edge = self.edges[self.next_edge % self.edges.len()].clone();
            let url = format!("ws://{edge}/ws/chat?hotelId={HOTEL}");
            if let Some(mut guest) = Guest::try_connect(&url, Duration::from_secs(2)).await {
                let mut identify = json!({"type": "identify", "visitorId": self.visitor_id});
                if let Some(token) = &self.token {
                    identify["visitorToken"] = json!(token);
                    identify["lastSeq"] = json!(self.resume_after());
                }
                if guest.try_send(identify).await {
                    while let Some(frame) = guest.try_next(Duration::from_secs(5)).await {
                        self.note(&frame);
                        if frame["type"] == "identified" {
                            self.token = frame["visitorToken"].as_str().map(str::to_owned);
                            self.conversation_id = frame["conversationId"].as_str().unwrap().to_owned();
                            self.socket = Some(guest);
                            break;
                        }
                        if frame["type"] == "error" {
                            break;
                        }
                    }
                }
            }
            if self.socket.is_none() {
                self.next_edge += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.socket.as_mut().unwrap()
    }

    /// Sends a message until it is acknowledged; returns its seq.
    async fn say(&mut self, client_message_id: &str, content: &str) -> i64 {
        let started = Instant::now();
        let frame = json!({"type": "message", "clientMessageId": client_message_id, "content": content});
        loop {
            assert!(started.elapsed() < PATIENCE, "{client_message_id} was never acknowledged");
            let socket = self.socket().await;
            let mut answer = None;
            if socket.try_send(frame.clone()).await {
                loop {
                    let Some(next) = self.socket.as_mut().unwrap().try_next(Duration::from_secs(5)).await else {
                        break;
                    };
                    self.note(&next);
                    if next["clientMessageId"] == client_message_id
                        && (next["type"] == "message_ack" || next["type"] == "error")
                    {
                        answer = Some(next);
                        break;
                    }
                }
            }
            match answer {
                Some(ack) if ack["type"] == "message_ack" => {
                    let seq = ack["seq"].as_i64().unwrap();
                    self.has.insert(seq, ack["messageId"].as_str().unwrap().to_owned());
                    self.contents.insert(seq, content.to_owned());
                    return seq;
                }
                Some(error) => {
                    assert_eq!(error["retryable"], true, "only retryable errors while replicas fail over: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => {
                    // The connection ended: the next edge, from the last seq.
                    self.socket = None;
                    self.next_edge += 1;
                }
            }
        }
    }

    /// Reads until the guest has every seq up to `last`.
    async fn catch_up(&mut self, last: i64) {
        let started = Instant::now();
        while self.has.keys().next_back().copied().unwrap_or(0) < last || self.has.len() < last as usize {
            assert!(
                started.elapsed() < PATIENCE,
                "{} has {:?}, not 1..={last}",
                self.visitor_id,
                self.has.keys().collect::<Vec<_>>()
            );
            // Every edge left is up by now: what is missing must arrive live.
            let socket = self.socket().await;
            if let Some(frame) = socket.try_next(Duration::from_secs(1)).await {
                self.note(&frame);
            }
        }
    }
}

#[tokio::test]
async fn replicas_under_sigkill_lose_nothing_and_show_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let databases = jack_e2e::postgres_databases().await;
    let vars = databases.clone();
    let credentials = jack::stack::credentials(dir.path()).unwrap();
    let file = |name: &str| credentials.join(name).display().to_string();
    let token = |role: &str| {
        Credentials::bearer(&std::fs::read_to_string(credentials.join(format!("{role}.token"))).unwrap()).unwrap()
    };
    let [guest, upload, upload_http, conversation_1, conversation_2, delivery_1, delivery_2] =
        [(); 7].map(|()| free_port());
    let [edge_1, edge_1_grpc, edge_2, edge_2_grpc] = [(); 4].map(|()| free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let conversations = format!("{},{}", url(conversation_1), url(conversation_2));
    let deliveries = format!("{},{}", url(delivery_1), url(delivery_2));
    let mut base: Vec<(String, String)> = databases;
    base.extend(
        [
            ("GRPC_CALLERS_FILE", file("callers.json")),
            ("EDGE_GRPC_TOKEN_FILE", file("edge.token")),
            ("CONVERSATION_GRPC_TOKEN_FILE", file("conversation.token")),
            ("GUEST_GRPC_ADDR", format!("127.0.0.1:{guest}")),
            ("UPLOAD_GRPC_ADDR", format!("127.0.0.1:{upload}")),
            ("UPLOAD_HTTP_ADDR", format!("127.0.0.1:{upload_http}")),
            ("UPLOAD_DIR", dir.path().join("uploads").display().to_string()),
            ("CONVERSATION_DELIVERY_URLS", deliveries.clone()),
            ("CONVERSATION_UPLOAD_URL", url(upload)),
            ("EDGE_GUEST_URL", url(guest)),
            ("EDGE_CONVERSATION_URL", conversations.clone()),
            ("EDGE_UPLOAD_URL", url(upload)),
            ("EDGE_DELIVERY_URLS", deliveries),
            ("EDGE_METRICS_ADDR", "off".into()),
            ("WEBSOCKET_HOST", "127.0.0.1".into()),
            ("RUST_LOG", "error".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let with = |extra: &[(&str, String)]| {
        let mut env = base.clone();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    };
    let mut deployment = Deployment { children: Vec::new() };
    deployment.start("delivery-1", "delivery", &with(&[("DELIVERY_GRPC_ADDR", format!("127.0.0.1:{delivery_1}"))]));
    deployment.start("delivery-2", "delivery", &with(&[("DELIVERY_GRPC_ADDR", format!("127.0.0.1:{delivery_2}"))]));
    deployment.start("guest", "guest", &base);
    deployment.start("upload", "upload", &base);
    deployment.start(
        "conversation-1",
        "conversation",
        &with(&[("CONVERSATION_GRPC_ADDR", format!("127.0.0.1:{conversation_1}"))]),
    );
    // The first replica takes the relay's lock (PostgreSQL migrations, then the lock) before
    // the second starts: it is the one killed below.
    let mut responder = ConversationServiceClient::new(
        grpc::channel_to(&[url(conversation_1), url(conversation_2)], Duration::from_secs(5), &token("responder"))
            .unwrap(),
    );
    wait_until(|| async {
        responder
            .clone()
            .get_conversation(conv::GetConversationRequest { conversation_id: "cnv_none".into() })
            .await
            .is_err_and(|s| s.code() == tonic::Code::NotFound)
    })
    .await;
    wait_until(|| async { jack_e2e::relay_lock_holders(&vars).await == 1 }).await;
    deployment.start(
        "conversation-2",
        "conversation",
        &with(&[("CONVERSATION_GRPC_ADDR", format!("127.0.0.1:{conversation_2}"))]),
    );
    for (name, ws, grpc) in [("edge-1", edge_1, edge_1_grpc), ("edge-2", edge_2, edge_2_grpc)] {
        deployment.start(
            name,
            "edge",
            &with(&[
                ("WEBSOCKET_PORT", ws.to_string()),
                ("EDGE_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
                ("EDGE_ID", name.to_owned()),
            ]),
        );
    }
    for ws in [edge_1, edge_2] {
        let base = format!("http://127.0.0.1:{ws}");
        wait_until(|| async {
            let (status, body) = if tokio::net::TcpStream::connect(("127.0.0.1", ws)).await.is_ok() {
                http(&base, "GET", "/health/websocket", &[], "").await
            } else {
                (0, String::new())
            };
            status == 200 && json_body(&body)["deliveryStreamsUp"] == 2
        })
        .await;
    }

    // A staff dashboard on the delivery replica that stays up.
    let mut staff = DeliveryServiceClient::new(
        grpc::channel(&url(delivery_2), Duration::from_secs(5), &token("dashboard")).unwrap(),
    );
    let filter = events::SubscribeRequest { hotel_id: Some(HOTEL.into()), messages: true, ..Default::default() };
    let mut subscription = staff.subscribe(filter).await.unwrap().into_inner();
    let dashboard_saw: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let dashboard = tokio::spawn({
        let saw = dashboard_saw.clone();
        async move {
            while let Ok(Some(event)) = subscription.message().await {
                if let Some(events::event::Kind::Message(m)) = event.kind {
                    *saw.lock().unwrap().entry(m.message_id).or_default() += 1;
                }
            }
        }
    });

    let edges = vec![format!("127.0.0.1:{edge_1}"), format!("127.0.0.1:{edge_2}")];
    let mut visitors: Vec<Visitor> =
        (0..GUESTS).map(|i| Visitor::new(edges.clone(), i, format!("v_replica_{i}"))).collect();
    for visitor in &mut visitors {
        visitor.socket().await;
    }
    // The responder answers every conversation, round after round, retrying each answer
    // under its client message id until conversation takes it.
    let conversation_ids: Vec<String> = visitors.iter().map(|v| v.conversation_id.clone()).collect();
    let answered = tokio::spawn(async move {
        let mut sent = 0;
        for round in 0..ROUNDS {
            for conversation_id in &conversation_ids {
                let request = conv::SendMessageRequest {
                    conversation_id: conversation_id.clone(),
                    role: conv::Role::Assistant as i32,
                    content: format!("answer {round}"),
                    client_message_id: Some(format!("answer-{round}")),
                    ..Default::default()
                };
                let started = Instant::now();
                while let Err(status) = responder.send_message(request.clone()).await {
                    assert!(started.elapsed() < PATIENCE, "the responder's answer was never taken: {status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        sent
    });

    for round in 0..ROUNDS {
        match round {
            3 => deployment.kill("delivery-1"),
            6 => {
                deployment.kill("conversation-1");
                // The lock's session ends with the process; the other replica takes it.
                wait_until(|| async { jack_e2e::relay_lock_holders(&vars).await == 1 }).await;
            }
            9 => deployment.kill("edge-1"),
            _ => {}
        }
        for (i, visitor) in visitors.iter_mut().enumerate() {
            visitor.say(&format!("g{i}-{round}"), &format!("question {round}")).await;
        }
    }
    let answers = answered.await.unwrap();
    assert_eq!(answers, GUESTS * ROUNDS);

    // Every guest has its whole conversation, each message shown at most once, and exactly
    // what conversation stored.
    let mut stored_ids = Vec::new();
    for visitor in &mut visitors {
        let request = conv::ListMessagesRequest {
            conversation_id: visitor.conversation_id.clone(),
            limit: 200,
            ..Default::default()
        };
        let stored = ConversationServiceClient::new(
            grpc::channel(&url(conversation_2), Duration::from_secs(5), &token("responder")).unwrap(),
        )
        .list_messages(request)
        .await
        .unwrap()
        .into_inner()
        .messages;
        assert_eq!(stored.len(), 2 * ROUNDS, "each question and answer stored once");
        visitor.catch_up(stored.len() as i64).await;
        for m in &stored {
            assert_eq!(visitor.has.get(&m.seq), Some(&m.message_id), "{} has seq {}", visitor.visitor_id, m.seq);
        }
        let twice: Vec<_> = visitor.shown.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{} was shown these seqs more than once: {twice:?}", visitor.visitor_id);
        let questions: Vec<_> = visitor.contents.values().filter(|c| c.starts_with("question")).cloned().collect();
        let answers: Vec<_> = visitor.contents.values().filter(|c| c.starts_with("answer")).cloned().collect();
        assert_eq!(questions, (0..ROUNDS).map(|r| format!("question {r}")).collect::<Vec<_>>(), "questions in order");
        assert_eq!(answers, (0..ROUNDS).map(|r| format!("answer {r}")).collect::<Vec<_>>(), "answers in order");
        stored_ids.extend(stored.into_iter().map(|m| m.message_id));
    }

    // The dashboard saw all of them, each once.
    wait_until(|| async { dashboard_saw.lock().unwrap().len() >= stored_ids.len() }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let saw = dashboard_saw.lock().unwrap().clone();
    let missing: Vec<_> = stored_ids.iter().filter(|id| !saw.contains_key(*id)).collect();
    assert!(missing.is_empty(), "the dashboard missed {missing:?}");
    let twice: Vec<_> = saw.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "the dashboard saw these twice: {twice:?}");
    assert_eq!(saw.len(), stored_ids.len());
    dashboard.abort();
}

/// Polls `check` until it holds, failing the test after `PATIENCE`.
async fn wait_until<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < PATIENCE, "the deployment never got there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
