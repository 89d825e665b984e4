//! The customer's acceptance tests of protocol v1, against the real services.

use jack_e2e::{Guest, TestStack};
use serde_json::json;

#[tokio::test]
async fn should_accept_valid_connections() {
    let stack = TestStack::start().await;
    let guest = Guest::connect(&stack.ws_url("hotel_123")).await;
    assert!(guest.session_id.starts_with("ws_"));
}

#[tokio::test]
async fn should_reject_connections_without_hotel_id() {
    let stack = TestStack::start().await;
    let url = stack.ws_url("x").replace("?hotelId=x", "");
    let close = Guest::open(&url).await.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    assert_eq!(close.reason.as_str(), "Missing hotel ID");
}

#[tokio::test]
async fn should_handle_full_conversation_flow() {
    let stack = TestStack::start().await;
    let mut ws = stack.guest("test_hotel").await;
    let identified = ws.identify(json!({"visitorId": "test_visitor", "name": "Test Guest"})).await;
    assert!(identified["guestId"].as_str().is_some_and(|g| !g.is_empty()));
    let ack = ws.say("msg_1", "I need extra towels").await;
    assert_eq!(ack["type"], "message_ack");
    assert_eq!(ack["clientMessageId"], "msg_1");
    assert!(ack["messageId"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(ack["seq"], 1);
}
