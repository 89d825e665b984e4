//! Visitor identity: tokens, user hashes, and that no one reads another visitor's history.

use jack_e2e::TestStack;
use jack_proto::guest::v1 as guest_pb;
use jack_proto::guest::v1::guest_service_client::GuestServiceClient;
use serde_json::json;

#[tokio::test]
async fn a_visitor_id_without_its_token_cannot_read_that_visitors_history() {
    let stack = TestStack::start().await;
    let mut owner = stack.guest("hotel_1").await;
    let identified = owner.identify(json!({"visitorId": "v_private", "name": "Ann"})).await;
    owner.say("p1", "My room is 512 and my passport number is X123").await;

    let mut intruder = stack.guest("hotel_1").await;
    let got = intruder.identify(json!({"visitorId": "v_private", "resumeConversation": true, "lastSeq": 0})).await;
    assert_ne!(got["visitorId"], "v_private", "the intruder must be given a new visitor id");
    assert_ne!(got["guestId"], identified["guestId"]);
    assert_ne!(got["conversationId"], identified["conversationId"]);
    assert!(intruder.seen_messages().is_empty(), "no history may leak: {:?}", intruder.seen);

    // A forged or foreign token is no better.
    let mut other = stack.guest("hotel_1").await;
    let other_id = other.identify(json!({"visitorId": "v_other"})).await;
    let mut forger = stack.guest("hotel_1").await;
    let got = forger.identify(json!({"visitorId": "v_private", "visitorToken": other_id["visitorToken"], "resumeConversation": true})).await;
    assert_ne!(got["guestId"], identified["guestId"]);
    assert!(forger.seen_messages().is_empty());

    // The owner, with the token, gets the history back.
    let mut back = stack.guest("hotel_1").await;
    let again = back.identify(json!({"visitorId": "v_private", "visitorToken": identified["visitorToken"], "resumeConversation": true})).await;
    assert_eq!(again["guestId"], identified["guestId"]);
    assert_eq!(back.seen_messages().len(), 1);
}

#[tokio::test]
async fn a_token_from_one_hotel_is_worthless_at_another() {
    let stack = TestStack::start().await;
    let mut a = stack.guest("hotel_a").await;
    let at_a = a.identify(json!({"visitorId": "v_shared"})).await;
    a.say("x", "hello from A").await;
    let mut b = stack.guest("hotel_b").await;
    let at_b = b.identify(json!({"visitorId": "v_shared", "visitorToken": at_a["visitorToken"], "resumeConversation": true})).await;
    assert_ne!(at_b["guestId"], at_a["guestId"]);
    assert!(b.seen_messages().is_empty());
}

#[tokio::test]
async fn a_hotel_issued_user_hash_proves_the_visitor() {
    let stack = TestStack::start().await;
    let mut guests = GuestServiceClient::new(jack_runtime::grpc::channel(&stack.stack.url(jack_e2e::Svc::Guest), jack_e2e::WAIT).unwrap());
    let secret = "hotel-identity-secret";
    guests
        .upsert_hotel(guest_pb::UpsertHotelRequest { hotel_id: "hotel_hash".into(), name: "Hash Hotel".into(), allowed_origins: vec![], identity_secret: Some(secret.into()) })
        .await
        .unwrap();
    let hash = jack_guest::domain::user_hash(secret, "booking-42");

    let mut first = stack.guest("hotel_hash").await;
    let one = first.identify(json!({"visitorId": "booking-42", "userHash": hash})).await;
    first.say("h1", "checking in at 3").await;
    // Another device, no token, but the hotel's hash: same guest, same history.
    let mut second = stack.guest("hotel_hash").await;
    let two = second.identify(json!({"visitorId": "booking-42", "userHash": hash, "resumeConversation": true})).await;
    assert_eq!(two["guestId"], one["guestId"]);
    assert_eq!(second.seen_messages().len(), 1);
    // A wrong hash proves nothing.
    let mut third = stack.guest("hotel_hash").await;
    let three = third.identify(json!({"visitorId": "booking-42", "userHash": "00".repeat(32), "resumeConversation": true})).await;
    assert_ne!(three["guestId"], one["guestId"]);
    assert!(third.seen_messages().is_empty());
}
