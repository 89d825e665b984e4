//! Each service as its own process, killed with SIGKILL at the wrong moment: no committed
//! message is lost, none is duplicated.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jack_e2e::{Guest, WAIT, free_port, http, json_body};
use jack_proto::conversation::v1 as conv;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use serde_json::{Value, json};

struct Processes {
    env: Vec<(String, String)>,
    children: Vec<(&'static str, Child)>,
    edge: String,
    conversation: String,
    /// The responder's credentials, for sending as the assistant.
    responder: jack_runtime::grpc::Credentials,
}

impl Processes {
    fn new(dir: &std::path::Path) -> Self {
        let [guest, conversation, delivery, upload, upload_http, edge, edge_grpc] = [(); 7].map(|()| free_port());
        let db = |name: &str| format!("sqlite:{}", dir.join(format!("{name}.db")).display());
        // Separate processes authenticate each other as a deployment's would: a callers file
        // every service checks, and the edge's and conversation's own tokens.
        let credentials = jack::stack::credentials(dir).unwrap();
        let file = |name: &str| credentials.join(name).display().to_string();
        let token = std::fs::read_to_string(credentials.join("responder.token")).unwrap();
        let env = vec![
            ("GRPC_CALLERS_FILE", file("callers.json")),
            ("EDGE_GRPC_TOKEN_FILE", file("edge.token")),
            ("CONVERSATION_GRPC_TOKEN_FILE", file("conversation.token")),
            ("GUEST_GRPC_ADDR", format!("127.0.0.1:{guest}")),
            ("GUEST_DATABASE_URL", db("guest")),
            ("CONVERSATION_GRPC_ADDR", format!("127.0.0.1:{conversation}")),
            ("CONVERSATION_DATABASE_URL", db("conversation")),
            ("CONVERSATION_DELIVERY_URLS", format!("http://127.0.0.1:{delivery}")),
            ("CONVERSATION_UPLOAD_URL", format!("http://127.0.0.1:{upload}")),
            ("DELIVERY_GRPC_ADDR", format!("127.0.0.1:{delivery}")),
            ("UPLOAD_GRPC_ADDR", format!("127.0.0.1:{upload}")),
            ("UPLOAD_DATABASE_URL", db("upload")),
            ("UPLOAD_HTTP_ADDR", format!("127.0.0.1:{upload_http}")),
            ("UPLOAD_DIR", dir.join("uploads").display().to_string()),
            ("WEBSOCKET_HOST", "127.0.0.1".into()),
            ("WEBSOCKET_PORT", edge.to_string()),
            ("EDGE_GRPC_ADDR", format!("127.0.0.1:{edge_grpc}")),
            ("EDGE_METRICS_ADDR", "off".into()),
            ("EDGE_GUEST_URL", format!("http://127.0.0.1:{guest}")),
            ("EDGE_CONVERSATION_URL", format!("http://127.0.0.1:{conversation}")),
            ("EDGE_UPLOAD_URL", format!("http://127.0.0.1:{upload}")),
            ("EDGE_DELIVERY_URLS", format!("http://127.0.0.1:{delivery}")),
            ("RUST_LOG", "warn".into()),
        ];
        let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let mut this = Self {
            env,
            children: Vec::new(),
            edge: format!("127.0.0.1:{edge}"),
            conversation: format!("http://127.0.0.1:{conversation}"),
            responder: jack_runtime::grpc::Credentials::bearer(&token).unwrap(),
        };
        for service in ["delivery", "guest", "upload", "conversation", "edge"] {
            this.start(service);
        }
        this
    }

    fn start(&mut self, service: &'static str) {
        let child = Command::new(env!("CARGO_BIN_EXE_jack"))
            .args(["run", service])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a service");
        self.children.push((service, child));
    }

    /// SIGKILL: no drain, no goodbye.
    fn kill(&mut self, service: &str) {
        let at = self.children.iter().position(|(s, _)| *s == service).expect("running");
        let (_, mut child) = self.children.remove(at);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    async fn wait_ready(&self) {
        let base = format!("http://{}", self.edge);
        let ready = async {
            loop {
                if tokio::net::TcpStream::connect(&self.edge).await.is_ok() {
                    let (status, body) = http(&base, "GET", "/health/websocket", &[], "").await;
                    if status == 200 && json_body(&body)["deliveryStreamsUp"] == 1 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        tokio::time::timeout(WAIT, ready).await.expect("services come up");
    }

    async fn conversation(&self) -> ConversationServiceClient<jack_runtime::grpc::Traced> {
        ConversationServiceClient::new(jack_runtime::grpc::channel(&self.conversation, WAIT, &self.responder).unwrap())
    }

    /// Sends through ConversationService, retrying while conversation is still starting.
    async fn assistant_says(&self, conversation_id: &str, content: &str) {
        let request = conv::SendMessageRequest {
            conversation_id: conversation_id.into(),
            role: conv::Role::Assistant as i32,
            content: content.into(),
            client_message_id: Some(format!("test:{content}")),
            ..Default::default()
        };
        let sent = async {
            loop {
                if self.conversation().await.send_message(request.clone()).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        tokio::time::timeout(WAIT, sent).await.expect("conversation answers");
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

fn butler(messages: &[Value]) -> Vec<String> {
    messages.iter().filter(|m| m["role"] == "assistant").map(|m| m["content"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn sigkilled_delivery_and_conversation_lose_no_committed_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Processes::new(dir.path());
    procs.wait_ready().await;

    let mut guest = Guest::connect(&format!("ws://{}/ws/chat?hotelId=hotel_kill", procs.edge)).await;
    let conversation_id =
        guest.identify(json!({"visitorId": "v_kill"})).await["conversationId"].as_str().unwrap().to_owned();
    procs.assistant_says(&conversation_id, "m1").await;
    guest.until(|f| f["content"] == "m1").await;

    // Delivery dies: committed messages wait in conversation's outbox.
    procs.kill("delivery");
    procs.assistant_says(&conversation_id, "m2").await;
    procs.assistant_says(&conversation_id, "m3").await;
    // Conversation dies too, with those events still unpublished.
    procs.kill("conversation");
    let refused = guest.say("g1", "hello?").await;
    assert_eq!((refused["code"].as_str(), refused["retryable"].as_bool()), (Some("UNAVAILABLE"), Some(true)));

    procs.start("conversation");
    procs.assistant_says(&conversation_id, "m4").await;
    procs.start("delivery");
    procs.wait_ready().await;
    procs.assistant_says(&conversation_id, "m5").await;
    guest.until(|f| f["content"] == "m5").await;
    assert_eq!(butler(&guest.seen_messages()), ["m2", "m3", "m4"]);

    // The guest's unacked message, resent with its id, is stored once.
    let ack = guest.say("g1", "hello?").await;
    assert_eq!(ack["type"], "message_ack");
    assert_eq!(ack["seq"], 6);
}
