//! What one address on the internet can try against the public listeners, and what it gets:
//! connections that send nothing or trickle, WebSockets that never identify or send what is
//! not protocol v1. Each is closed or refused with a clear code, and costs the edge nothing
//! lasting.

use std::time::Duration;

use jack_e2e::{Data, OpCode, TestStack, WAIT, http, json_body};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Reads until the server closes the connection; whether it did within [`WAIT`].
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut sink)).await.is_ok()
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_on_both_public_listeners() {
    let stack = TestStack::start_with(&[("EDGE_HEADER_TIMEOUT_MS", "300"), ("UPLOAD_HEADER_TIMEOUT_MS", "300")]).await;
    for addr in [stack.stack.addr(jack_e2e::Svc::Edge), stack.stack.upload_http_addr()] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut silent).await, "{addr}: a silent connection is closed");
    }
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    let stack = TestStack::start_with(&[("EDGE_HEADER_TIMEOUT_MS", "500")]).await;
    let mut socket = TcpStream::connect(stack.stack.addr(jack_e2e::Svc::Edge)).await.unwrap();
    let trickle = async {
        for byte in
            b"GET /ws/chat?hotelId=hotel_1 HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a'))
        {
            if socket.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(tokio::time::timeout(WAIT, trickle).await.is_ok(), "the edge hangs up on a slowloris request");
}

#[tokio::test]
async fn a_websocket_that_never_identifies_is_closed_with_4008() {
    let stack = TestStack::start_with(&[("EDGE_IDENTIFY_TIMEOUT_MS", "300"), ("WEBSOCKET_PING_INTERVAL", "200")]).await;
    let silent = stack.guest("hotel_1").await;
    let mut identified = stack.guest("hotel_1").await;
    identified.identify(json!({"visitorId": "v_in_time"})).await;
    // The identified guest reads meanwhile (answering pings); nothing comes for it.
    let close = tokio::select! {
        close = silent.closed() => close.expect("a close frame"),
        frame = identified.next() => panic!("the identified guest got {frame}"),
    };
    assert_eq!((u16::from(close.code), close.reason.as_str()), (4008, "Not identified in time"));
    assert_eq!(identified.say("still", "still here").await["type"], "message_ack");
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    guest.send_frame(OpCode::Data(Data::Text), b"{\"type\":\"typing\",\"isTyping\":\xff}").await;
    let close = guest.closed().await.expect("a close frame, not a dropped connection");
    assert_eq!(u16::from(close.code), 1007);
}

#[tokio::test]
async fn binary_frames_spend_from_the_rate_limit_like_any_frame() {
    let stack = TestStack::start_with(&[("EDGE_RATE_LIMIT", "5")]).await;
    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_binary"})).await;
    for _ in 0..40 {
        guest.send_frame(OpCode::Data(Data::Binary), &[0u8; 64]).await;
    }
    let answer = guest.say("after_binary", "hello").await;
    assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some("RATE_LIMITED")), "{answer}");
    let errors = guest.seen.iter().filter(|f| f["code"] == "INVALID_JSON").count();
    assert!(errors <= 10, "beyond the burst, binary frames go unanswered: {errors} answers");
}

#[tokio::test]
async fn oversized_or_slow_http_requests_are_refused() {
    let stack = TestStack::start_with(&[("EDGE_REQUEST_TIMEOUT_MS", "500")]).await;
    let mut guest = stack.guest("hotel_1").await;
    let token = guest.identify(json!({"visitorId": "v_http"})).await["visitorToken"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {token}");
    // A body far beyond what the JSON endpoints take.
    let big =
        format!(r#"{{"filename":"a.png","contentType":"image/png","size":10,"pad":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, _) = http(&stack.http_base(), "POST", "/chat/upload-url", &[("Authorization", &auth)], &big).await;
    assert_eq!(status, 413);
    // A body that never comes.
    let (status, response) = http(
        &stack.http_base(),
        "POST",
        "/chat/upload-url",
        &[("Authorization", &auth), ("Content-Length", "100")],
        "{",
    )
    .await;
    assert_eq!(status, 408, "{}", json_body(&response));
}

#[tokio::test]
async fn hotel_ids_are_bounded_and_so_are_the_metrics_they_label() {
    let stack = TestStack::start_with(&[("EDGE_METRICS_MAX_HOTELS", "3"), ("EDGE_CONNECTS_PER_IP", "0")]).await;
    // An id no hotel could have is refused with its own close code.
    let long = "h".repeat(60_000);
    for bad in [long.as_str(), "two%20words"] {
        let guest = jack_e2e::Guest::open(&stack.ws_url(bad)).await;
        let close = guest.closed().await.expect("a close frame");
        assert_eq!((u16::from(close.code), close.reason.as_str()), (4001, "Invalid hotel ID"));
    }
    // Connections to a hundred made-up hotels add three series and `other`, not a hundred.
    let mut guests = Vec::new();
    for i in 0..100 {
        guests.push(stack.guest(&format!("random_{i}")).await);
    }
    let metrics = |stack: &TestStack| {
        let base = stack.metrics_base();
        async move { http(&base, "GET", "/metrics", &[], "").await.1 }
    };
    let text = metrics(&stack).await;
    let series = text.lines().filter(|l| l.starts_with("webchat_connections_active{")).collect::<Vec<_>>();
    assert_eq!(series.len(), 4, "{series:?}");
    assert!(text.contains(r#"webchat_connections_active{hotelId="other hotels"} 97"#), "{series:?}");
    assert!(!text.contains(&long[..100]));
    // They go when their connections do.
    for guest in guests {
        guest.close().await;
    }
    let gone = tokio::time::timeout(WAIT, async {
        loop {
            if !metrics(&stack).await.contains("random_") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the series of hotels without connections are removed");
}

#[tokio::test]
async fn the_public_port_shows_metrics_only_to_a_bearer_of_the_metrics_token() {
    let stack = TestStack::start().await;
    assert_eq!(http(&stack.http_base(), "GET", "/metrics", &[], "").await.0, 404);
    assert_eq!(http(&stack.metrics_base(), "GET", "/metrics", &[], "").await.0, 200);
    let token = "a-metrics-token-for-the-scraper";
    let stack = TestStack::start_with(&[("EDGE_METRICS_TOKEN", token)]).await;
    let _guest = stack.guest("hotel_1").await;
    assert_eq!(http(&stack.http_base(), "GET", "/metrics", &[], "").await.0, 401);
    assert_eq!(
        http(&stack.http_base(), "GET", "/metrics", &[("Authorization", "Bearer not-the-token-at-all")], "").await.0,
        401
    );
    let (status, text) =
        http(&stack.http_base(), "GET", "/metrics", &[("Authorization", &format!("Bearer {token}"))], "").await;
    assert_eq!(status, 200);
    assert!(text.contains("webchat_connections_active"), "{text}");
}

#[tokio::test]
async fn one_address_may_hold_and_open_only_so_many_connections() {
    let stack = TestStack::start_with(&[("EDGE_MAX_CONNECTIONS_PER_IP", "5"), ("EDGE_CONNECTS_PER_IP", "1000")]).await;
    let url = stack.ws_url("hotel_1");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(jack_e2e::Guest::open_with_headers(&url, &[]).await.expect("within the limit"));
    }
    assert_eq!(jack_e2e::Guest::open_with_headers(&url, &[]).await.err(), Some(429));
    // A place comes back when a connection closes.
    held.pop().unwrap().close().await;
    let back = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(guest) = jack_e2e::Guest::open_with_headers(&url, &[]).await {
                return guest;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the closed connection's place is free again");
    // X-Forwarded-For is the client's own say-so unless a trusted proxy wrote it.
    assert_eq!(jack_e2e::Guest::open_with_headers(&url, &[("X-Forwarded-For", "198.51.100.7")]).await.err(), Some(429));

    // Opened too fast: refused with when to come back.
    let stack = TestStack::start_with(&[("EDGE_CONNECTS_PER_IP", "1")]).await;
    let url = stack.ws_url("hotel_1");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(jack_e2e::Guest::open_with_headers(&url, &[]).await.map(|_| 101).unwrap_or_else(|s| s));
    }
    // A burst of five seconds' worth, and one more a second meanwhile.
    let opened = statuses.iter().filter(|s| **s == 101).count();
    assert!((5..=8).contains(&opened), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 101 || *s == 429), "{statuses:?}");
    let head = http(
        &stack.http_base(),
        "GET",
        "/ws/chat?hotelId=hotel_1",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    )
    .await;
    assert_eq!(head.0, 429);
    assert!(head.1.to_ascii_lowercase().contains("retry-after: 1"), "{}", head.1);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_address_has_its_own_limits() {
    let stack =
        TestStack::start_with(&[("EDGE_MAX_CONNECTIONS_PER_IP", "2"), ("EDGE_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let url = stack.ws_url("hotel_1");
    let from = |client: &'static str| [("X-Forwarded-For", client)];
    let mut held = Vec::new();
    for client in ["198.51.100.7", "198.51.100.7", "203.0.113.9", "203.0.113.9"] {
        held.push(jack_e2e::Guest::open_with_headers(&url, &from(client)).await.expect("each client within its limit"));
    }
    assert_eq!(jack_e2e::Guest::open_with_headers(&url, &from("198.51.100.7")).await.err(), Some(429));
    // An address the client put in front of the proxy's own entry is not believed.
    assert_eq!(
        jack_e2e::Guest::open_with_headers(&url, &[("X-Forwarded-For", "192.0.2.1, 203.0.113.9")]).await.err(),
        Some(429)
    );
    assert!(jack_e2e::Guest::open_with_headers(&url, &from("192.0.2.1")).await.is_ok());
}

#[tokio::test]
async fn a_storm_of_identifies_from_one_address_creates_only_so_many_visitors() {
    let stack = TestStack::start_with(&[("EDGE_NEW_VISITORS_PER_IP", "5")]).await;
    // A returning guest, from before the storm.
    let mut regular = stack.guest("hotel_1").await;
    let known = regular.identify(json!({"visitorId": "vis_0123456789abcdef0123456789abcdef"})).await;
    regular.close().await;

    // Twenty connections identify again and again, as new visitors and with made-up tokens.
    let mut guests = Vec::new();
    for _ in 0..20 {
        guests.push(stack.guest("hotel_1").await);
    }
    let mut created = std::collections::HashSet::new();
    let mut refused = 0;
    for round in 0..3 {
        for guest in &mut guests {
            let frame = if round == 1 {
                json!({"type": "identify", "visitorId": "v_x", "visitorToken": "made.up"})
            } else {
                json!({"type": "identify"})
            };
            guest.send(frame).await;
            let answer = guest.until(|f| f["type"] == "identified" || f["type"] == "error").await;
            match answer["type"].as_str() {
                Some("identified") => {
                    created.insert(answer["guestId"].as_str().unwrap().to_owned());
                }
                _ => {
                    assert_eq!(
                        (answer["code"].as_str(), answer["retryable"].as_bool()),
                        (Some("RATE_LIMITED"), Some(true)),
                        "{answer}"
                    );
                    assert!(answer["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0 && ms <= 60_000), "{answer}");
                    refused += 1;
                }
            }
        }
    }
    // Five new visitors a minute: one went to the regular guest (and one more may have come due
    // while the test ran).
    assert!(
        (4..=5).contains(&created.len()) && created.len() + refused == 60,
        "{} created, {refused} refused",
        created.len()
    );
    // The returning guest is not a new visitor: its token lets it in during the storm.
    let mut back = stack.guest("hotel_1").await;
    let again = back.identify(json!({"visitorId": known["visitorId"], "visitorToken": known["visitorToken"]})).await;
    assert_eq!(again["guestId"], known["guestId"]);
}

#[tokio::test]
async fn visitors_who_only_look_are_forgotten_and_an_idle_tab_starts_afresh() {
    use jack_proto::conversation::v1 as conv;
    use jack_proto::guest::v1 as guest_pb;
    let stack = TestStack::start_with(&[("GUEST_SILENT_VISITOR_TTL", "3"), ("CONVERSATION_EMPTY_TTL", "3")]).await;
    let mut guests = stack.guests(jack_e2e::Role::Admin);
    let mut conversations = stack.conversation();

    let mut writer = stack.guest("hotel_1").await;
    let wrote = writer.identify(json!({})).await;
    assert_eq!(writer.say("w1", "hello").await["type"], "message_ack");
    let mut idle = stack.guest("hotel_1").await;
    let silent = idle.identify(json!({})).await;
    // A storm of visitors who only look.
    let mut lookers = vec![silent.clone()];
    for _ in 0..10 {
        let mut guest = stack.guest("hotel_1").await;
        lookers.push(guest.identify(json!({})).await);
        guest.close().await;
    }

    // A while later nothing of them is kept.
    let id = |v: &serde_json::Value, field: &str| v[field].as_str().unwrap().to_owned();
    let forgotten = tokio::time::timeout(WAIT, async {
        for looker in &lookers {
            while guests.get_guest(guest_pb::GetGuestRequest { guest_id: id(looker, "guestId") }).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            while conversations
                .get_conversation(conv::GetConversationRequest { conversation_id: id(looker, "conversationId") })
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    assert!(forgotten.is_ok(), "guests who never wrote, and their empty conversations, are forgotten");
    // The guest who wrote is kept, with its conversation.
    assert!(guests.get_guest(guest_pb::GetGuestRequest { guest_id: id(&wrote, "guestId") }).await.is_ok());
    assert!(
        conversations
            .get_conversation(conv::GetConversationRequest { conversation_id: id(&wrote, "conversationId") })
            .await
            .is_ok()
    );

    // The idle tab writes at last: its session has expired, and the guest starts afresh.
    idle.send(json!({"type": "message", "clientMessageId": "late", "content": "anyone there?"})).await;
    let close = idle.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4010);
    let mut back = stack.guest("hotel_1").await;
    let again = back
        .identify(json!({"visitorId": silent["visitorId"], "visitorToken": silent["visitorToken"], "lastSeq": 0}))
        .await;
    assert_ne!(again["guestId"], silent["guestId"]);
    let ack = back.say("late", "anyone there?").await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("message_ack"), Some(1)), "{ack}");
}

#[tokio::test]
async fn connections_over_an_addresss_cap_are_refused_as_they_are_accepted() {
    let stack = TestStack::start_with(&[("EDGE_MAX_CONNECTIONS_PER_IP", "3")]).await;
    let addr = stack.stack.addr(jack_e2e::Svc::Edge);
    // Connections that send nothing hold the address's places...
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // ...and the next is told at once, before it sends anything.
    let mut over = TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, over.read_to_end(&mut answer)).await.expect("answered and closed at once").unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 429"), "{}", String::from_utf8_lossy(&answer));
    drop(silent);
    let back = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(guest) = jack_e2e::Guest::open_with_headers(&stack.ws_url("hotel_1"), &[]).await {
                return guest;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the places come back with the connections");
}

#[tokio::test]
async fn one_address_may_send_only_so_many_messages_and_api_calls() {
    let stack = TestStack::start_with(&[
        ("EDGE_MESSAGES_PER_IP", "1"),
        ("EDGE_API_CALLS_PER_IP", "1"),
        ("EDGE_RATE_LIMIT", "1000"),
    ])
    .await;
    // Two guests behind one address share its budget: five seconds' worth, then one a second.
    let mut a = stack.guest("hotel_1").await;
    let token = a.identify(json!({"visitorId": "v_a"})).await["visitorToken"].as_str().unwrap().to_owned();
    let mut b = stack.guest("hotel_1").await;
    b.identify(json!({"visitorId": "v_b"})).await;
    let mut answers = Vec::new();
    for i in 0..6 {
        let guest = if i % 2 == 0 { &mut a } else { &mut b };
        answers.push(guest.say(&format!("m{i}"), "hello").await);
    }
    let refused: Vec<_> = answers.iter().filter(|f| f["type"] == "error").collect();
    assert!(!refused.is_empty() && answers.iter().filter(|f| f["type"] == "message_ack").count() >= 5, "{answers:?}");
    for e in &refused {
        assert_eq!((e["code"].as_str(), e["retryable"].as_bool()), (Some("RATE_LIMITED"), Some(true)), "{e}");
        assert!(e["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0), "{e}");
    }
    // The HTTP API likewise.
    let auth = format!("Bearer {token}");
    let ask = r#"{"filename":"a.png","contentType":"image/png","size":10}"#;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(http(&stack.http_base(), "POST", "/chat/upload-url", &[("Authorization", &auth)], ask).await.0);
    }
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 5 && statuses.contains(&429), "{statuses:?}");
}
