//! The demo concierge answers through the public ConversationService API.

use jack_e2e::TestStack;
use jack_runtime::CancellationToken;
use serde_json::json;

#[tokio::test]
async fn the_demo_concierge_greets_confirms_towels_and_shows_restaurants() {
    let stack = TestStack::start().await;
    let shutdown = CancellationToken::new();
    let cursor = tempfile::tempdir().unwrap();
    let task = tokio::spawn(jack::concierge::run(
        vec![stack.stack.url(jack_e2e::Svc::Conversation)],
        stack.credentials(jack_e2e::Role::Responder),
        cursor.path().join("cursor"),
        shutdown.clone(),
    ));

    let mut guest = stack.guest("demo_hotel").await;
    guest.identify(json!({"visitorId": "v_demo"})).await;
    let hello = guest.say("d1", "Hello!").await;
    let greeting = guest.until(|f| f["type"] == "message" && f["role"] == "assistant").await;
    // Before answering it marked the message read and showed typing (in either order).
    assert!(
        guest.seen.iter().any(|f| f["type"] == "typing" && f["role"] == "assistant" && f["isTyping"] == true),
        "{:?}",
        guest.seen
    );
    assert!(guest.seen.iter().any(|f| f["type"] == "read" && f["upToSeq"] == hello["seq"]), "{:?}", guest.seen);
    let labels: Vec<&str> =
        greeting["quickReplies"].as_array().unwrap().iter().map(|q| q["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["Room Service", "Housekeeping", "Concierge", "Other"]);

    guest.say("d2", "I need extra towels").await;
    let towels = guest.until(|f| f["type"] == "message" && f["role"] == "assistant").await;
    assert!(towels["content"].as_str().unwrap().contains("towels"));
    assert_eq!(towels["buttons"][0]["type"], "postback");

    guest.send(json!({"type": "postback", "clientMessageId": "d3", "payload": "concierge", "label": "Concierge", "messageId": greeting["messageId"]})).await;
    let carousel = guest.until(|f| f["type"] == "message" && f["role"] == "assistant").await;
    assert_eq!(carousel["cards"].as_array().unwrap().len(), 3);
    assert_eq!(carousel["cards"][0]["title"], "The Italian Place");

    shutdown.cancel();
    task.await.unwrap();
    // The cursor was kept, so a restarted concierge does not answer old messages again.
    let stored: i64 = std::fs::read_to_string(cursor.path().join("cursor")).unwrap().trim().parse().unwrap();
    assert!(stored >= 3, "cursor {stored}");
}
