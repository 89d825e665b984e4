//! Every kind of bad input (services/edge/PROTOCOL.md, "Errors") gets its error code, and the connection stays open.

use jack_e2e::{Guest, TestStack, http, json_body, upgrade_status};
use serde_json::json;

/// After an error the same socket still works: a well-formed frame gets its answer.
async fn still_works(guest: &mut Guest, id: &str) {
    let ack = guest.say(id, "still here").await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
}

#[tokio::test]
async fn bad_frames_get_precise_errors_and_the_connection_stays_open() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;

    guest.send(json!({"type": "message", "clientMessageId": "early", "content": "hi"})).await;
    let e = guest.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["clientMessageId"].as_str(), e["retryable"].as_bool()),
        (Some("NOT_IDENTIFIED"), Some("early"), Some(false))
    );

    guest.identify(json!({"visitorId": "v_bad"})).await;

    guest.send_raw("{this is not json").await;
    assert_eq!(guest.expect("error").await["code"], "INVALID_JSON");
    still_works(&mut guest, "ok1").await;

    guest.send(json!({"type": "dance"})).await;
    assert_eq!(guest.expect("error").await["code"], "UNKNOWN_TYPE");
    still_works(&mut guest, "ok2").await;

    guest.send(json!({"type": "message", "content": "no id"})).await;
    let e = guest.expect("error").await;
    assert_eq!(e["code"], "INVALID_FRAME");
    assert!(e["message"].as_str().unwrap().contains("clientMessageId"), "{e}");
    guest.send(json!({"type": "typing", "isTyping": "yes"})).await;
    assert_eq!(guest.expect("error").await["code"], "INVALID_FRAME");
    guest.send(json!({"type": "read", "upToSeq": -1})).await;
    assert_eq!(guest.expect("error").await["code"], "INVALID_FRAME");
    still_works(&mut guest, "ok3").await;

    let big = "x".repeat(4097);
    guest.send(json!({"type": "message", "clientMessageId": "big", "content": big})).await;
    let e = guest.expect("error").await;
    assert_eq!((e["code"].as_str(), e["clientMessageId"].as_str()), (Some("MESSAGE_TOO_LARGE"), Some("big")));
    still_works(&mut guest, "ok4").await;

    // Nothing unbounded reaches a backend: a postback naming a 60,000-character message.
    guest
        .send(json!({"type": "postback", "clientMessageId": "long", "payload": "SPA", "messageId": "m".repeat(60_000)}))
        .await;
    let e = guest.expect("error").await;
    assert_eq!((e["code"].as_str(), e["clientMessageId"].as_str()), (Some("INVALID_FRAME"), Some("long")));
    // Well-formed JSON with a number no field can hold is a bad field, not bad JSON.
    guest.send_raw(r#"{"type":"read","upToSeq":1e400}"#).await;
    assert_eq!(guest.expect("error").await["code"], "INVALID_FRAME");
    still_works(&mut guest, "ok4b").await;

    guest
        .send(json!({"type": "message", "clientMessageId": "att", "content": "", "attachments": [{"id": "att_nope"}]}))
        .await;
    let e = guest.expect("error").await;
    assert_eq!((e["code"].as_str(), e["clientMessageId"].as_str()), (Some("ATTACHMENT_NOT_FOUND"), Some("att")));
    still_works(&mut guest, "ok5").await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_without_closing_the_socket() {
    let stack = TestStack::start_with(&[("EDGE_RATE_LIMIT", "5")]).await;
    // The limit is announced, so that a client can pace itself under it.
    let mut guest = jack_e2e::Guest::open(&stack.ws_url("hotel_1")).await;
    let connected = guest.next().await;
    assert_eq!(
        (connected["type"].as_str(), connected["limits"]["maxFramesPerSecond"].as_u64()),
        (Some("connected"), Some(5))
    );
    guest.identify(json!({"visitorId": "v_flood"})).await;
    for _ in 0..30 {
        guest.send(json!({"type": "typing", "isTyping": true})).await;
    }
    let e = guest.expect("error").await;
    assert_eq!((e["code"].as_str(), e["retryable"].as_bool()), (Some("RATE_LIMITED"), Some(true)));
    // The bucket refills: the connection is usable again.
    let ack = tokio::time::timeout(jack_e2e::WAIT, async {
        loop {
            let a = guest.say("after_flood", "sorry").await;
            if a["type"] == "message_ack" {
                return a;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(ack["clientMessageId"], "after_flood");
}

#[tokio::test]
async fn a_frame_far_beyond_any_limit_closes_with_1009() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    guest.send_raw(&"x".repeat(1 << 20)).await;
    let close = guest.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
}

#[tokio::test]
async fn a_wrong_origin_gets_403_before_the_upgrade() {
    let stack = TestStack::start_with(&[("WIDGET_ALLOWED_ORIGINS", "https://hotel.com,https://www.hotel.com")]).await;
    let path = "/ws/chat?hotelId=hotel_1";
    assert_eq!(upgrade_status(&stack.http_base(), path, "https://evil.example").await, 403);
    assert_eq!(upgrade_status(&stack.http_base(), path, "https://www.hotel.com").await, 101);
}

#[tokio::test]
async fn over_max_connections_gets_503_before_the_upgrade() {
    let stack = TestStack::start_with(&[("WEBSOCKET_MAX_CONNECTIONS", "2")]).await;
    let _a = stack.guest("hotel_1").await;
    let _b = stack.guest("hotel_1").await;
    let refused = tokio_tungstenite::connect_async(stack.ws_url("hotel_1")).await.expect_err("third is refused");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_a_ping_interval() {
    let stack = TestStack::start_with(&[("WEBSOCKET_PING_INTERVAL", "200")]).await;
    // A raw socket that completes the handshake and then never answers anything.
    let addr = stack.http_base().trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = format!(
        "GET /ws/chat?hotelId=hotel_1 HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    // Read (and ignore) whatever comes — handshake, `connected`, pings — until the server hangs up.
    let mut buf = [0u8; 4096];
    let hung_up = tokio::time::timeout(jack_e2e::WAIT, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(hung_up.is_ok(), "the edge should drop a peer that never answers pings");
}

#[tokio::test]
async fn health_and_metrics_report_the_specs_names() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_metrics").await;
    guest.identify(json!({"visitorId": "v_metrics"})).await;
    guest.say("m1", "hello").await;

    let (status, response) = http(&stack.http_base(), "GET", "/health/websocket", &[], "").await;
    assert_eq!(status, 200);
    let health = json_body(&response);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["connections"], 1);
    assert!(health["uptime"].is_u64());

    let (status, metrics) = http(&stack.metrics_base(), "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"webchat_connections_active{hotelId="hotel_metrics"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"webchat_messages_total{direction="inbound",type="text"} 1"#), "{metrics}");
    assert!(metrics.contains("webchat_message_latency_ms_bucket"), "{metrics}");
    guest.close().await;
    // Connection duration is observed when the connection ends.
    let found = tokio::time::timeout(jack_e2e::WAIT, async {
        loop {
            let (_, metrics) = http(&stack.metrics_base(), "GET", "/metrics", &[], "").await;
            if metrics.contains(r#"webchat_connection_duration_seconds_count{disconnectReason="client_close"} 1"#) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "connection duration is recorded");
}

#[tokio::test]
async fn upload_url_needs_a_valid_visitor_token() {
    let stack = TestStack::start().await;
    let body = r#"{"filename":"a.png","contentType":"image/png","size":10}"#;
    let (status, _) =
        http(&stack.http_base(), "POST", "/chat/upload-url", &[("Content-Type", "application/json")], body).await;
    assert_eq!(status, 401);
    let (status, _) =
        http(&stack.http_base(), "POST", "/chat/upload-url", &[("Authorization", "Bearer forged.token")], body).await;
    assert_eq!(status, 401);
}
