//! The AI responder's view: WatchMessages is durable and resumable, and the staff dashboard's
//! subscription sees typing and messages.

use std::time::Duration;

use jack_e2e::{TestStack, WAIT};
use jack_proto::conversation::v1 as conv;
use jack_proto::delivery::v1 as events;
use serde_json::json;

/// The next event that carries a message (heartbeats, which carry only the cursor, skipped).
async fn next_message(stream: &mut tonic::Streaming<conv::WatchMessagesResponse>) -> conv::WatchMessagesResponse {
    loop {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream goes on");
        if event.message.is_some() {
            return event;
        }
    }
}

#[tokio::test]
async fn watch_messages_resumed_from_a_cursor_replays_what_was_missed() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_watch"})).await;
    guest.say("w1", "first").await;

    let mut client = stack.conversation();
    let request = |after| conv::WatchMessagesRequest {
        after_cursor: after,
        roles: vec![conv::Role::Guest as i32],
        hotel_id: None,
    };
    let mut stream = client.watch_messages(request(0)).await.unwrap().into_inner();
    let first = next_message(&mut stream).await;
    assert_eq!(first.message.as_ref().unwrap().content, "first");
    // Live: the watcher sees a new message as it is committed.
    guest.say("w2", "second").await;
    let second = next_message(&mut stream).await;
    assert_eq!(second.message.as_ref().unwrap().content, "second");
    drop(stream); // the responder goes down

    guest.say("w3", "third").await;
    guest.say("w4", "fourth").await;

    let mut resumed = client.watch_messages(request(second.cursor)).await.unwrap().into_inner();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next_message(&mut resumed).await.message.unwrap().content);
    }
    assert_eq!(got, ["third", "fourth"]);
}

#[tokio::test]
async fn the_staff_subscription_sees_a_guest_typing_and_the_butler_reading() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_staff").await;
    let identified = guest.identify(json!({"visitorId": "v_typing"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();

    let filter = events::SubscribeRequest {
        hotel_id: Some("hotel_staff".into()),
        typing: true,
        messages: true,
        ..Default::default()
    };
    let mut staff = stack.delivery().subscribe(filter).await.unwrap().into_inner();
    // Subscriptions are live from the moment delivery registers them: keep typing until one
    // arrives rather than guessing when that is.
    let typing = tokio::time::timeout(WAIT, async {
        loop {
            guest.send(json!({"type": "typing", "isTyping": true})).await;
            match tokio::time::timeout(Duration::from_millis(200), staff.message()).await {
                Ok(event) => return event.unwrap().unwrap(),
                Err(_) => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(typing.conversation_id, conversation_id);
    let Some(events::event::Kind::Typing(t)) = typing.kind else { panic!("expected typing, got {typing:?}") };
    assert!(t.is_typing);
    assert_eq!(t.role, conv::Role::Guest as i32);

    // The butler's typing and read receipt reach the guest.
    let mut client = stack.conversation();
    client
        .set_typing(conv::SetTypingRequest {
            conversation_id: conversation_id.clone(),
            role: conv::Role::Assistant as i32,
            is_typing: true,
        })
        .await
        .unwrap();
    let typing = guest.expect("typing").await;
    assert_eq!(typing, json!({"type": "typing", "isTyping": true, "role": "assistant"}));
    let ack = guest.say("r1", "Can I get a late checkout?").await;
    client
        .mark_read(conv::MarkReadRequest {
            conversation_id,
            role: conv::Role::Assistant as i32,
            up_to_seq: ack["seq"].as_i64().unwrap(),
            guest_id: None,
        })
        .await
        .unwrap();
    let read = guest.expect("read").await;
    assert_eq!(read["upToSeq"], ack["seq"]);
    assert_eq!(read["role"], "assistant");
}

/// A watch says when it has caught up, and keeps saying so while the log is quiet, with the
/// cursor to store; a cursor the log never gave out is OUT_OF_RANGE, not silence.
#[tokio::test]
async fn a_caught_up_watch_sends_heartbeats_and_a_cursor_past_the_log_is_out_of_range() {
    let stack = TestStack::start_with(&[("CONVERSATION_WATCH_HEARTBEAT_MS", "300")]).await;
    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_heartbeat"})).await;
    guest.say("h1", "hello").await;
    let mut client = stack.conversation();
    let request = |after| conv::WatchMessagesRequest { after_cursor: after, roles: vec![], hotel_id: None };

    let mut stream = client.watch_messages(request(0)).await.unwrap().into_inner();
    let hello = next_message(&mut stream).await;
    // Caught up: a heartbeat at the message's cursor, then another while nothing happens.
    for _ in 0..2 {
        let beat = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!((beat.cursor, beat.message), (hello.cursor, None));
    }
    // Live messages still come, after which the heartbeats carry the new cursor.
    guest.say("h2", "still there?").await;
    let later = next_message(&mut stream).await;
    assert_eq!(later.message.as_ref().unwrap().content, "still there?");
    let beat = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((beat.cursor, beat.message), (later.cursor, None));

    // The end of the log is a valid place to resume; past it is not.
    client.watch_messages(request(later.cursor)).await.expect("resumes at the end");
    let refused = client.watch_messages(request(1_000_000_000_000_000)).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("past the end of the message log"), "{}", refused.message());

    // A read receipt past the last message is refused too, not answered with nothing.
    let conversation_id = hello.message.unwrap().conversation_id;
    let beyond = conv::MarkReadRequest {
        conversation_id,
        role: conv::Role::Assistant as i32,
        up_to_seq: 1_000_000,
        guest_id: None,
    };
    let refused = client.mark_read(beyond).await.expect_err("refused");
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::OutOfRange, "up_to_seq 1000000 is past the conversation's last message (2)")
    );
}

/// A call whose deadline passes before its answer is ready is answered DEADLINE_EXCEEDED by
/// the server, as gRPC clients expect (not CANCELLED); a retry with the same client message
/// id then stores the message once, whether or not the late call got as far as storing it.
/// The call is made over bare HTTP/2: a client library enforces the deadline itself and
/// would hide what the server answered. (While the database is held by another process, so
/// that the deadline surely passes first.)
#[tokio::test]
async fn a_passed_deadline_is_deadline_exceeded_and_a_retry_stores_once() {
    use http_body_util::BodyExt as _;
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_deadline"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let send = conv::SendMessageRequest {
        conversation_id: conversation_id.clone(),
        role: conv::Role::Assistant as i32,
        content: "Your table is booked.".into(),
        client_message_id: Some("reply:table".into()),
        ..Default::default()
    };
    let token = std::fs::read_to_string(stack.data_dir().join("credentials/responder.token")).unwrap();

    // Another process holds the database's write lock: every SendMessage waits for it, and
    // its deadline passes first.
    sqlx::any::install_default_drivers();
    let url = format!("sqlite:{}", stack.data_dir().join("conversation.db").display());
    let mut blocker = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.unwrap();

    let tcp = tokio::net::TcpStream::connect(stack.stack.addr(jack_e2e::Svc::Conversation)).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let body = prost::Message::encode_to_vec(&send);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    for _ in 0..20 {
        let request = http::Request::post(format!(
            "http://{}/jack.conversation.v1.ConversationService/SendMessage",
            stack.stack.addr(jack_e2e::Svc::Conversation)
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "50m")
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(http_body_util::Full::new(bytes::Bytes::from(framed.clone())))
        .unwrap();
        let response = tokio::time::timeout(WAIT, h2.send_request(request)).await.unwrap().unwrap();
        let headers = response.headers().clone();
        let trailers = response.into_body().collect().await.unwrap().trailers().cloned().unwrap_or_default();
        let status = headers.get("grpc-status").or(trailers.get("grpc-status")).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED, not {status:?} ({headers:?} {trailers:?})");
    }

    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();

    let mut client = stack.conversation();
    client.send_message(send).await.expect("the retry is answered");
    let list = conv::ListMessagesRequest { conversation_id, after_seq: Some(0), limit: 50, ..Default::default() };
    let stored = client.list_messages(list).await.unwrap().into_inner().messages;
    assert_eq!(stored.iter().filter(|m| m.content == "Your table is booked.").count(), 1);
}

/// A responder that shows "typing…" and then goes away (it crashed) does not leave the guest
/// looking at it for good: the edge ends it once it has not been renewed in time.
#[tokio::test]
async fn typing_that_is_not_renewed_ends_on_its_own() {
    let stack = TestStack::start_with(&[("EDGE_TYPING_TTL_MS", "300")]).await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_typing_ttl"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let mut responder = stack.conversation();
    let typing = |is_typing| conv::SetTypingRequest {
        conversation_id: conversation_id.clone(),
        role: conv::Role::Assistant as i32,
        is_typing,
    };

    responder.set_typing(typing(true)).await.unwrap();
    assert_eq!(guest.expect("typing").await, json!({"type": "typing", "isTyping": true, "role": "assistant"}));
    // Nothing renews it: it ends.
    assert_eq!(guest.expect("typing").await, json!({"type": "typing", "isTyping": false, "role": "assistant"}));

    // Ended by the responder itself, it ends once.
    responder.set_typing(typing(true)).await.unwrap();
    assert_eq!(guest.expect("typing").await["isTyping"], true);
    responder.set_typing(typing(false)).await.unwrap();
    assert_eq!(guest.expect("typing").await["isTyping"], false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ack = guest.say("after", "thanks").await;
    assert_eq!(ack["type"], "message_ack");
    assert!(!guest.seen.iter().any(|f| f["type"] == "typing"), "no second end of typing: {:?}", guest.seen);
}
