//! Processes die at the wrong moment: no committed message is lost or duplicated.

use jack_e2e::{Svc, TestStack};
use serde_json::{Value, json};

fn butler_contents(messages: &[Value]) -> Vec<String> {
    messages.iter().filter(|m| m["role"] == "assistant").map(|m| m["content"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn killing_and_restarting_delivery_loses_no_committed_message() {
    let mut stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let conversation_id = guest.identify(json!({"visitorId": "v_delivery_dies"})).await["conversationId"].as_str().unwrap().to_owned();
    stack.assistant_says(&conversation_id, "before").await;
    guest.until(|f| f["content"] == "before").await;

    stack.stop(Svc::Delivery).await;
    // Committed while delivery is down: they wait in conversation's outbox.
    for i in 1..=3 {
        stack.assistant_says(&conversation_id, &format!("during {i}")).await;
    }
    // The guest can still talk: conversation stores and acks without delivery.
    let ack = guest.say("g1", "are you there?").await;
    assert_eq!(ack["type"], "message_ack");

    stack.restart(Svc::Delivery).await;
    stack.wait_delivery_streams(1).await;
    stack.assistant_says(&conversation_id, "after").await;
    guest.until(|f| f["content"] == "after").await;
    assert_eq!(butler_contents(&guest.seen_messages()), ["during 1", "during 2", "during 3"]);
}

#[tokio::test]
async fn killing_and_restarting_conversation_loses_no_committed_message() {
    let mut stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_conversation_dies"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let first = guest.say("k1", "one").await;

    stack.stop(Svc::Conversation).await;
    // A backend that is down: a retryable error, at once, and the socket stays open.
    let refused = guest.say("k2", "two").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "UNAVAILABLE");
    assert_eq!(refused["retryable"], true);

    stack.restart(Svc::Conversation).await;
    // The widget resends the unacked message with the same id once it can.
    let ack = guest.say("k2", "two").await;
    assert_eq!(ack["type"], "message_ack");
    assert_eq!(ack["seq"], first["seq"].as_i64().unwrap() + 1);
    stack.assistant_says(&conversation_id, "still here").await;
    guest.until(|f| f["content"] == "still here").await;
    assert!(guest.seen_messages().iter().all(|m| m["role"] == "assistant"), "no echo of its own messages: {:?}", guest.seen);
}

#[tokio::test]
async fn a_guest_whose_edge_restarts_resumes_exactly_once() {
    let mut stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_edge_dies"})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    stack.assistant_says(&conversation_id, "one").await;
    let one = guest.until(|f| f["content"] == "one").await;

    stack.stop(Svc::Edge).await;
    let close = guest.closed().await.expect("edge says goodbye");
    assert_eq!(u16::from(close.code), 1001);
    stack.assistant_says(&conversation_id, "two").await;
    stack.assistant_says(&conversation_id, "three").await;
    stack.restart(Svc::Edge).await;
    stack.wait_delivery_streams(1).await;

    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_edge_dies", "visitorToken": token, "lastSeq": one["seq"]})).await;
    stack.assistant_says(&conversation_id, "four").await;
    guest.until(|f| f["content"] == "four").await;
    assert_eq!(butler_contents(&guest.seen_messages()), ["two", "three"]);
}
