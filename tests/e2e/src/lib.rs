//! The test harness: the real services on ephemeral loopback ports with SQLite files in a
//! temporary folder, and clients that speak the real protocols (WebSocket, gRPC, HTTP).
//!
//! Nothing here sleeps to let things happen: helpers wait for the awaited frame or state,
//! with a timeout that fails the test.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use jack::{Service, Stack};
use jack_proto::conversation::v1 as conv;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;
use jack_proto::guest::v1::guest_service_client::GuestServiceClient;
use jack_runtime::CancellationToken;
pub use jack_runtime::callers::Role;
use jack_runtime::grpc::{Credentials, Traced};
use jack_runtime::settings::Env;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use jack::Service as Svc;

/// How long any awaited event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A free loopback port below the kernel's ephemeral range (32768 and up on Linux), so that no
/// outgoing connection takes it as its source port while a service that is to bind it is down.
pub fn free_port() -> u16 {
    loop {
        let port =
            20_000 + (u32::from_str_radix(&jack_runtime::ids::random_hex()[..4], 16).expect("hex") % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct TestStack {
    pub stack: Stack,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestStack {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts every service with these extra variables.
    pub async fn start_with(vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut env = Env::from_pairs(vars.iter().copied());
        for name in
            ["GUEST_GRPC_ADDR", "CONVERSATION_GRPC_ADDR", "DELIVERY_GRPC_ADDR", "UPLOAD_GRPC_ADDR", "EDGE_GRPC_ADDR"]
        {
            env = env.with_default(name, "127.0.0.1:0");
        }
        env = env
            .with_default("UPLOAD_HTTP_ADDR", "127.0.0.1:0")
            .with_default("EDGE_METRICS_ADDR", "127.0.0.1:0")
            .with_default("WEBSOCKET_HOST", "127.0.0.1")
            .with_default("WEBSOCKET_PORT", "0")
            .with_default("EDGE_BACKEND_TIMEOUT_MS", "2000");
        let shutdown = CancellationToken::new();
        let stack = Stack::start(env, dir.path(), shutdown.clone()).await.expect("stack starts");
        let this = Self { stack, shutdown, _dir: dir };
        this.wait_delivery_streams(1).await;
        this
    }

    /// The stack's data folder (SQLite files, `uploads/`).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn http_base(&self) -> String {
        format!("http://{}", self.stack.addr(Service::Edge))
    }

    /// The edge's metrics listener (`EDGE_METRICS_ADDR`).
    pub fn metrics_base(&self) -> String {
        format!("http://{}", self.stack.edge_metrics_addr().expect("the edge serves metrics"))
    }

    pub fn ws_url(&self, hotel: &str) -> String {
        format!("ws://{}/ws/chat?hotelId={hotel}", self.stack.addr(Service::Edge))
    }

    /// The credentials of a caller with `role` (the stack made a token for each).
    pub fn credentials(&self, role: Role) -> Credentials {
        self.stack.credentials(role)
    }

    /// ConversationService as an AI responder calls it.
    pub fn conversation(&self) -> ConversationServiceClient<Traced> {
        self.conversation_as(Role::Responder)
    }

    /// ConversationService as a caller with `role`.
    pub fn conversation_as(&self, role: Role) -> ConversationServiceClient<Traced> {
        ConversationServiceClient::new(
            jack_runtime::grpc::channel(&self.stack.url(Service::Conversation), WAIT, &self.credentials(role)).unwrap(),
        )
    }

    /// UploadService as an AI responder calls it.
    pub fn upload(&self) -> jack_proto::upload::v1::upload_service_client::UploadServiceClient<Traced> {
        self.upload_as(Role::Responder)
    }

    /// UploadService as a caller with `role`.
    pub fn upload_as(&self, role: Role) -> jack_proto::upload::v1::upload_service_client::UploadServiceClient<Traced> {
        jack_proto::upload::v1::upload_service_client::UploadServiceClient::new(
            jack_runtime::grpc::channel(&self.stack.url(Service::Upload), WAIT, &self.credentials(role)).unwrap(),
        )
    }

    /// DeliveryService as a staff dashboard calls it.
    pub fn delivery(&self) -> DeliveryServiceClient<Traced> {
        self.delivery_as(Role::Dashboard)
    }

    /// DeliveryService as a caller with `role`.
    pub fn delivery_as(&self, role: Role) -> DeliveryServiceClient<Traced> {
        DeliveryServiceClient::new(
            jack_runtime::grpc::stream_channel(&self.stack.url(Service::Delivery), &self.credentials(role)).unwrap(),
        )
    }

    /// GuestService as a caller with `role` (`Edge` for identify, `Admin` for the registry).
    pub fn guests(&self, role: Role) -> GuestServiceClient<Traced> {
        GuestServiceClient::new(
            jack_runtime::grpc::channel(&self.stack.url(Service::Guest), WAIT, &self.credentials(role)).unwrap(),
        )
    }

    /// Waits until the edge has this many delivery streams up (as its health check says:
    /// no credentials needed, whatever callers the stack was given).
    pub async fn wait_delivery_streams(&self, up: u32) {
        let base = self.http_base();
        let check = async {
            loop {
                let (_, body) = http(&base, "GET", "/health/websocket", &[], "").await;
                if json_body(&body)["deliveryStreamsUp"] == up {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(WAIT, check).await.expect("edge delivery streams come up");
    }

    /// A connected guest (the `connected` frame already read).
    pub async fn guest(&self, hotel: &str) -> Guest {
        Guest::connect(&self.ws_url(hotel)).await
    }

    /// An assistant message through ConversationService, as the AI responder sends it.
    pub async fn assistant_says(&self, conversation_id: &str, content: &str) -> conv::Message {
        let request = conv::SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            role: conv::Role::Assistant as i32,
            content: content.to_owned(),
            ..Default::default()
        };
        self.conversation().send_message(request).await.expect("send_message").into_inner().message.unwrap()
    }

    pub async fn stop(&mut self, service: Service) {
        self.stack.stop_service(service).await.expect("service stops");
    }

    pub async fn restart(&mut self, service: Service) {
        self.stack.start_service(service).await.expect("service restarts");
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A guest's WebSocket, as a widget would hold it.
pub struct Guest {
    ws: Socket,
    pub session_id: String,
    /// Frames read while waiting for another one, in order.
    pub seen: Vec<Value>,
}

impl Guest {
    /// Opens the socket without reading anything.
    pub async fn open(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Self { ws, session_id: String::new(), seen: Vec::new() }
    }

    /// Opens the socket with extra request headers (as a reverse proxy would add them); the
    /// HTTP status when the upgrade is refused.
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Self, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = url.into_client_request().expect("a WebSocket URL");
        for (name, value) in headers {
            request
                .headers_mut()
                .append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.expect("connect in time") {
            Ok((ws, _)) => Ok(Self { ws, session_id: String::new(), seen: Vec::new() }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(other) => panic!("connect: {other}"),
        }
    }

    /// Opens the socket with a small receive buffer, as a client that reads slowly (or not at
    /// all) has: what the server sends beyond it waits on the server's side.
    pub async fn open_slow_reader(url: &str) -> Self {
        let addr = url.strip_prefix("ws://").and_then(|rest| rest.split('/').next()).expect("a ws:// URL");
        let addr: std::net::SocketAddr =
            tokio::net::lookup_host(addr).await.expect("resolve").next().expect("an address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)))
            .await
            .expect("handshake in time")
            .expect("handshake");
        Self { ws, session_id: String::new(), seen: Vec::new() }
    }

    /// Connects and reads `connected`, or `None` when that fails within `wait` (the server is
    /// down, or closes at once): for clients that go on through failures.
    pub async fn try_connect(url: &str, wait: Duration) -> Option<Self> {
        let (ws, _) = tokio::time::timeout(wait, tokio_tungstenite::connect_async(url)).await.ok()?.ok()?;
        let mut guest = Self { ws, session_id: String::new(), seen: Vec::new() };
        let connected = guest.try_next(wait).await?;
        guest.session_id = connected["sessionId"].as_str()?.to_owned();
        Some(guest)
    }

    /// The next text frame, or `None` when the connection ends or nothing comes within `wait`.
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await.ok()?? {
                Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends a frame; false when the connection is gone.
    pub async fn try_send(&mut self, frame: Value) -> bool {
        self.ws.send(Message::text(frame.to_string())).await.is_ok()
    }

    pub async fn connect(url: &str) -> Self {
        let mut guest = Self::open(url).await;
        let connected = guest.next().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        guest.session_id = connected["sessionId"].as_str().expect("sessionId").to_owned();
        guest
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.expect("send");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.expect("send");
    }

    /// Sends a frame as a broken or hostile client would (any opcode, any payload).
    pub async fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let frame = Frame::message(payload.to_vec(), opcode, true);
        self.ws.send(Message::Frame(frame)).await.expect("send");
    }

    /// The next text frame.
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("read");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).expect("frames are JSON"),
                Message::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next frame of this type; other frames are kept in `seen`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.until(|f| f["type"] == kind).await
    }

    pub async fn until(&mut self, mut wanted: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let frame = self.next().await;
            if wanted(&frame) {
                return frame;
            }
            self.seen.push(frame);
        }
    }

    /// Identifies and returns `identified` (frames before it, such as `history`, go to `seen`).
    pub async fn identify(&mut self, fields: Value) -> Value {
        let mut frame = json!({"type": "identify"});
        frame.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        self.send(frame).await;
        self.expect("identified").await
    }

    /// Sends a chat message and returns its `message_ack`.
    pub async fn say(&mut self, client_message_id: &str, content: &str) -> Value {
        self.send(json!({"type": "message", "clientMessageId": client_message_id, "content": content})).await;
        self.until(|f| {
            (f["type"] == "message_ack" || f["type"] == "error") && f["clientMessageId"] == client_message_id
        })
        .await
    }

    /// Reads until `count` butler (assistant) messages have arrived; their contents, in order.
    pub async fn butler_contents(&mut self, count: usize) -> Vec<String> {
        let contents = |guest: &Self| {
            guest
                .seen_messages()
                .into_iter()
                .filter(|m| m["role"] == "assistant")
                .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        };
        while contents(self).len() < count {
            let frame = self.next().await;
            self.seen.push(frame);
        }
        contents(self)
    }

    /// Messages (`message` frames and history entries) in `seen`, in arrival order.
    pub fn seen_messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for frame in &self.seen {
            match frame["type"].as_str() {
                Some("message") => out.push(frame.clone()),
                Some("history") => out.extend(frame["messages"].as_array().cloned().unwrap_or_default()),
                _ => {}
            }
        }
        out
    }

    /// Waits for the server to close the connection and returns its close frame.
    pub async fn closed(mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads until the server closes the connection: the text frames that came first, and
    /// the close frame.
    pub async fn frames_until_closed(mut self) -> (Vec<Value>, Option<CloseFrame>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Text(text))) => {
                    frames.push(serde_json::from_str(text.as_str()).expect("frames are JSON"))
                }
                Some(Ok(Message::Close(frame))) => return (frames, frame),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (frames, None),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A plain HTTP/1.1 request over a real socket: (status, headers and body as text).
pub async fn http(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    request(method, &format!("{base}{path}"), headers, body.as_bytes()).await
}

/// An HTTP/1.1 request to a full `http://host:port/path?query` URL with a binary body. The
/// `Content-Length` is the body's unless `headers` give one (to send what a liar sends).
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let (status, response) = raw_request(method, url, headers, body).await;
    (status, String::from_utf8_lossy(&response).into_owned())
}

/// A GET of a full URL: (status, head as text, body as bytes).
pub async fn fetch(url: &str) -> (u16, String, Vec<u8>) {
    let (status, response) = raw_request("GET", url, &[], b"").await;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |at| at + 4);
    (status, String::from_utf8_lossy(&response[..split]).into_owned(), response[split..].to_vec())
}

async fn raw_request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer and close before reading everything a liar sends.
    let _ = stream.write_all(&bytes).await;
    // Read to the end, except after a 101: an upgraded connection stays open.
    let mut response = Vec::new();
    let reading = async {
        let mut buf = [0u8; 8192];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(n) => n,
                Err(_) if !response.is_empty() => return,
                Err(e) => panic!("read: {e}"),
            };
            response.extend_from_slice(&buf[..n]);
            let switched = response.starts_with(b"HTTP/1.1 101") && response.windows(4).any(|w| w == b"\r\n\r\n");
            if n == 0 || switched {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, reading).await.expect("response in time");
    let line = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    let status =
        line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line in {line:?}"));
    (status, response)
}

/// The JSON body of an HTTP response from [`http`].
pub fn json_body(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// The HTTP status of a WebSocket upgrade request for `path` from `origin` (101 when it is
/// accepted), read off the raw response before any WebSocket traffic.
pub async fn upgrade_status(base: &str, path: &str, origin: &str) -> u16 {
    let headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Origin", origin),
    ];
    http(base, "GET", path, &headers, "").await.0
}

/// A fresh PostgreSQL database for each service, as `*_DATABASE_URL` variables for
/// [`TestStack::start_with`]. Uses `JACK_TEST_POSTGRES_URL` (default: the machine's server,
/// trust auth).
pub async fn postgres_databases() -> Vec<(String, String)> {
    let admin = std::env::var("JACK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("PostgreSQL is reachable (set JACK_TEST_POSTGRES_URL)");
    // Databases of earlier runs are dropped here: those made over an hour ago (their name
    // says when). A younger one may belong to a test running now, which may have closed all
    // its connections for a moment (one that takes its database away, say).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("a clock after 1970").as_secs();
    let old: Vec<String> = sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE 'jack_test_%'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    for name in old {
        let made = name
            .strip_prefix("jack_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if made.is_none_or(|made| made + 3600 < now) {
            let _ =
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&mut conn).await;
        }
    }
    let run = jack_runtime::ids::random_hex();
    let mut vars = Vec::new();
    for service in ["guest", "conversation", "upload"] {
        let name = format!("jack_test_{now}_{}_{service}", &run[..8]);
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
        vars.push((format!("{}_DATABASE_URL", service.to_uppercase()), format!("{base}/{name}")));
    }
    vars
}

/// How many sessions hold the conversation relay's advisory lock (see
/// `jack_conversation::leader`) on the conversation database of `vars` (as
/// [`postgres_databases`] gives them).
pub async fn relay_lock_holders(vars: &[(String, String)]) -> i64 {
    let url = &vars.iter().find(|(k, _)| k == "CONVERSATION_DATABASE_URL").expect("a conversation database").1;
    let database = url.rsplit_once('/').expect("a database URL").1.split('?').next().unwrap_or_default();
    let admin = std::env::var("JACK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.expect("PostgreSQL is reachable");
    // A bigint advisory key shows as its high half in classid and its low half in objid.
    let query = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '{database}' \
         AND ((l.classid::text::bigint << 32) | l.objid::text::bigint) = {}",
        jack_conversation::leader::LOCK_KEY
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(query)).fetch_one(&mut admin).await.expect("pg_locks")
}
