//! The AI responder's view: WatchMessages is durable and resumable, and the staff dashboard's
//! subscription sees typing and messages.

use std::time::Duration;

use jack_e2e::{TestStack, WAIT};
use jack_proto::conversation::v1 as conv;
use jack_proto::delivery::v1 as events;
use serde_json::json;

#[tokio::test]
async fn watch_messages_resumed_from_a_cursor_replays_what_was_missed() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_watch"})).await;
    guest.say("w1", "first").await;

    let mut client = stack.conversation();
    let request = |after| conv::WatchMessagesRequest { after_cursor: after, roles: vec![conv::Role::Guest as i32], hotel_id: None };
    let mut stream = client.watch_messages(request(0)).await.unwrap().into_inner();
    let first = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.message.as_ref().unwrap().content, "first");
    // Live: the watcher sees a new message as it is committed.
    guest.say("w2", "second").await;
    let second = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.message.as_ref().unwrap().content, "second");
    drop(stream); // the responder goes down

    guest.say("w3", "third").await;
    guest.say("w4", "fourth").await;

    let mut resumed = client.watch_messages(request(second.cursor)).await.unwrap().into_inner();
    let mut got = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(WAIT, resumed.message()).await.unwrap().unwrap().unwrap();
        got.push(event.message.unwrap().content);
    }
    assert_eq!(got, ["third", "fourth"]);
}

#[tokio::test]
async fn the_staff_subscription_sees_a_guest_typing_and_the_butler_reading() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_staff").await;
    let identified = guest.identify(json!({"visitorId": "v_typing"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();

    let filter = events::SubscribeRequest { hotel_id: Some("hotel_staff".into()), typing: true, messages: true, ..Default::default() };
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
    client.set_typing(conv::SetTypingRequest { conversation_id: conversation_id.clone(), role: conv::Role::Assistant as i32, is_typing: true }).await.unwrap();
    let typing = guest.expect("typing").await;
    assert_eq!(typing, json!({"type": "typing", "isTyping": true, "role": "assistant"}));
    let ack = guest.say("r1", "Can I get a late checkout?").await;
    client.mark_read(conv::MarkReadRequest { conversation_id, role: conv::Role::Assistant as i32, up_to_seq: ack["seq"].as_i64().unwrap(), guest_id: None }).await.unwrap();
    let read = guest.expect("read").await;
    assert_eq!(read["upToSeq"], ack["seq"]);
    assert_eq!(read["role"], "assistant");
}
