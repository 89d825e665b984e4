//! Visitor identity: tokens, user hashes, and that no one reads another visitor's history.

use jack_e2e::{TestStack, http};
use jack_proto::guest::v1 as guest_pb;
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
    let got = forger
        .identify(
            json!({"visitorId": "v_private", "visitorToken": other_id["visitorToken"], "resumeConversation": true}),
        )
        .await;
    assert_ne!(got["guestId"], identified["guestId"]);
    assert!(forger.seen_messages().is_empty());

    // The owner, with the token, gets the history back.
    let mut back = stack.guest("hotel_1").await;
    let again = back
        .identify(
            json!({"visitorId": "v_private", "visitorToken": identified["visitorToken"], "resumeConversation": true}),
        )
        .await;
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
    let at_b = b
        .identify(json!({"visitorId": "v_shared", "visitorToken": at_a["visitorToken"], "resumeConversation": true}))
        .await;
    assert_ne!(at_b["guestId"], at_a["guestId"]);
    assert!(b.seen_messages().is_empty());
}

#[tokio::test]
async fn a_hotel_issued_user_hash_proves_the_visitor() {
    let stack = TestStack::start().await;
    let mut guests = stack.guests(jack_e2e::Role::Admin);
    let secret = "hotel-identity-secret";
    guests
        .upsert_hotel(guest_pb::UpsertHotelRequest {
            hotel_id: "hotel_hash".into(),
            name: "Hash Hotel".into(),
            allowed_origins: vec![],
            identity_secret: Some(secret.into()),
        })
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
    let three = third
        .identify(json!({"visitorId": "booking-42", "userHash": "00".repeat(32), "resumeConversation": true}))
        .await;
    assert_ne!(three["guestId"], one["guestId"]);
    assert!(third.seen_messages().is_empty());
}

/// A hotel with an identity secret, registered through the API as a hotel's tooling would.
async fn hotel_with_secret(stack: &TestStack, hotel_id: &str, secret: Option<&str>) {
    let mut guests = stack.guests(jack_e2e::Role::Admin);
    let hotel = guest_pb::UpsertHotelRequest {
        hotel_id: hotel_id.into(),
        name: "Proving Hotel".into(),
        allowed_origins: vec![],
        identity_secret: secret.map(str::to_owned),
    };
    guests.upsert_hotel(hotel).await.unwrap();
}

/// The HTTP status `POST /chat/upload-url` answers a bearer of this token (401: not a token).
async fn upload_url_status(stack: &TestStack, token: &str) -> u16 {
    let body = r#"{"filename":"a.png","contentType":"image/png","size":10}"#;
    http(
        &stack.http_base(),
        "POST",
        "/chat/upload-url",
        &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/json")],
        body,
    )
    .await
    .0
}

#[tokio::test]
async fn a_hotels_own_visitor_id_cannot_be_claimed_before_its_guest_arrives() {
    let stack = TestStack::start().await;
    let secret = "hotel-identity-secret-of-the-grand";
    hotel_with_secret(&stack, "hotel_proving", Some(secret)).await;

    // An attacker asks for a booking number without the hotel's proof: it is not bound to them.
    let mut attacker = stack.guest("hotel_proving").await;
    let squat = attacker.identify(json!({"visitorId": "booking-609585"})).await;
    assert_ne!(squat["visitorId"], "booking-609585", "{squat}");
    assert!(squat["visitorId"].as_str().unwrap().starts_with("vis_"), "a fresh anonymous id instead: {squat}");

    // The real guest arrives with the hotel's proof and talks.
    let hash = jack_guest::domain::user_hash(secret, "booking-609585");
    let mut owner = stack.guest("hotel_proving").await;
    let real = owner.identify(json!({"visitorId": "booking-609585", "userHash": hash})).await;
    assert_eq!(real["visitorId"], "booking-609585");
    assert_ne!(real["guestId"], squat["guestId"]);
    owner.say("p1", "my passport is X1234567").await;

    // Whatever the attacker's token is shown with, it reads none of it.
    for visitor in [squat["visitorId"].clone(), json!("booking-609585")] {
        let mut back = stack.guest("hotel_proving").await;
        let again = back.identify(json!({"visitorId": visitor, "visitorToken": squat["visitorToken"], "lastSeq": 0, "resumeConversation": true})).await;
        assert_ne!(again["guestId"], real["guestId"]);
        assert!(
            back.seen_messages().iter().all(|m| !m["content"].as_str().unwrap_or_default().contains("passport")),
            "{:?}",
            back.seen
        );
    }
    // An anonymous visitor's own random id is bound without proof, as before.
    let mut anonymous = stack.guest("hotel_proving").await;
    let own = anonymous.identify(json!({"visitorId": "vis_0123456789abcdef0123456789abcdef"})).await;
    assert_eq!(own["visitorId"], "vis_0123456789abcdef0123456789abcdef");
}

#[tokio::test]
async fn a_proven_login_never_joins_a_record_bound_without_proof() {
    let stack = TestStack::start().await;
    // Before the hotel proves its guests' ids, anyone may bind one (protocol v1's original behaviour).
    hotel_with_secret(&stack, "hotel_later", None).await;
    let mut attacker = stack.guest("hotel_later").await;
    let squat = attacker.identify(json!({"visitorId": "booking-42"})).await;
    assert_eq!(squat["visitorId"], "booking-42");
    let token = squat["visitorToken"].as_str().unwrap().to_owned();
    assert_eq!(upload_url_status(&stack, &token).await, 200);

    // The hotel starts proving ids; its guest logs in with the proof.
    let secret = "the-hotel-now-proves-its-guests-ids";
    hotel_with_secret(&stack, "hotel_later", Some(secret)).await;
    let mut owner = stack.guest("hotel_later").await;
    let real = owner
        .identify(json!({"visitorId": "booking-42", "userHash": jack_guest::domain::user_hash(secret, "booking-42")}))
        .await;
    assert_eq!(real["visitorId"], "booking-42");
    assert_ne!(real["guestId"], squat["guestId"], "the proven guest gets a record of its own");
    assert_ne!(real["conversationId"], squat["conversationId"]);
    owner.say("p1", "my passport is X1234567").await;

    // The squatter's token opens nothing any more: not the id, not the uploads.
    let mut back = stack.guest("hotel_later").await;
    let again = back
        .identify(json!({"visitorId": "booking-42", "visitorToken": token, "lastSeq": 0, "resumeConversation": true}))
        .await;
    assert_ne!(again["guestId"], real["guestId"]);
    assert_ne!(again["guestId"], squat["guestId"]);
    assert!(back.seen_messages().is_empty(), "{:?}", back.seen);
    assert_eq!(upload_url_status(&stack, &token).await, 401);
    // The proven guest comes back on another device with the proof: the same record.
    let mut phone = stack.guest("hotel_later").await;
    let same = phone.identify(json!({"visitorId": "booking-42", "userHash": jack_guest::domain::user_hash(secret, "booking-42"), "lastSeq": 0})).await;
    assert_eq!(same["guestId"], real["guestId"]);
    assert_eq!(phone.seen_messages().len(), 1);
}

#[tokio::test]
async fn visitor_tokens_expire_are_renewed_by_every_identify_and_can_be_revoked() {
    let stack = TestStack::start_with(&[("GUEST_TOKEN_TTL", "2")]).await;
    let mut guest = stack.guest("hotel_1").await;
    let first = guest.identify(json!({"visitorId": "v_expiring"})).await;
    guest.say("e1", "hello").await;
    let token = first["visitorToken"].as_str().unwrap().to_owned();
    assert_eq!(upload_url_status(&stack, &token).await, 200);
    // Identifying again (as the widget does on every connect, and halfway to the expiry while
    // it stays open) brings a token that lasts longer.
    let mut tab = stack.guest("hotel_1").await;
    let renewed = tab.identify(json!({"visitorId": "v_expiring", "visitorToken": token, "lastSeq": 0})).await;
    assert_eq!(renewed["guestId"], first["guestId"]);
    assert_eq!(tab.seen_messages().len(), 1);
    assert!(
        renewed["visitorTokenExpiresAt"].as_str().unwrap() > first["visitorTokenExpiresAt"].as_str().unwrap(),
        "{renewed} {first}"
    );

    // Past its expiry a token opens nothing: the visitor starts afresh.
    let expired = tokio::time::timeout(jack_e2e::WAIT, async {
        while upload_url_status(&stack, &token).await != 401 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(expired.is_ok(), "the token expires");
    let mut late = stack.guest("hotel_1").await;
    let fresh = late.identify(json!({"visitorId": "v_expiring", "visitorToken": token, "lastSeq": 0})).await;
    assert_ne!(fresh["guestId"], first["guestId"]);
    assert!(late.seen_messages().is_empty());

    // Revoking a guest's tokens ends them at once.
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_revoked"})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    assert_eq!(upload_url_status(&stack, &token).await, 200);
    let mut guests = stack.guests(jack_e2e::Role::Admin);
    guests
        .revoke_visitor_tokens(guest_pb::RevokeVisitorTokensRequest {
            guest_id: identified["guestId"].as_str().unwrap().into(),
        })
        .await
        .unwrap();
    assert_eq!(upload_url_status(&stack, &token).await, 401);
    let mut back = stack.guest("hotel_1").await;
    let after = back.identify(json!({"visitorId": "v_revoked", "visitorToken": token})).await;
    assert_ne!(after["guestId"], identified["guestId"]);
}

/// A visitor token of the first format: an HMAC over hotel and visitor id, valid for ever.
fn first_format_token(secret: &str, hotel_id: &str, visitor_id: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = format!("{hotel_id}\n{visitor_id}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(b"jack visitor token v1\n");
    mac.update(payload.as_bytes());
    format!("{}.{}", b64.encode(&payload), b64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn visitors_from_before_keep_their_conversation_with_a_token_of_the_first_format() {
    let secret = "a-token-secret-of-at-least-32-characters";
    let stack = TestStack::start_with(&[("GUEST_TOKEN_SECRET", secret)]).await;
    let mut guest = stack.guest("hotel_1").await;
    let first = guest.identify(json!({"visitorId": "v_from_before"})).await;
    guest.say("b1", "from before").await;
    let old = first_format_token(secret, "hotel_1", "v_from_before");
    assert_eq!(upload_url_status(&stack, &old).await, 200, "it still opens the uploads");

    let mut back = stack.guest("hotel_1").await;
    let again = back.identify(json!({"visitorId": "v_from_before", "visitorToken": old, "lastSeq": 0})).await;
    assert_eq!(again["guestId"], first["guestId"]);
    assert_eq!(back.seen_messages().len(), 1);
    assert_ne!(again["visitorToken"], old.as_str(), "exchanged for a token of today's format");
    // For another visitor, or signed with another secret, it opens nothing.
    let mut other = stack.guest("hotel_1").await;
    let elsewhere = other.identify(json!({"visitorId": "v_someone_else", "visitorToken": old})).await;
    assert_ne!(elsewhere["guestId"], first["guestId"]);
    let forged = first_format_token("another-secret-of-at-least-32-characters", "hotel_1", "v_from_before");
    assert_eq!(upload_url_status(&stack, &forged).await, 401);
    // Once the record's tokens are revoked, the first format opens nothing either.
    let mut guests = stack.guests(jack_e2e::Role::Admin);
    guests
        .revoke_visitor_tokens(guest_pb::RevokeVisitorTokensRequest {
            guest_id: first["guestId"].as_str().unwrap().into(),
        })
        .await
        .unwrap();
    assert_eq!(upload_url_status(&stack, &old).await, 401);
}

#[tokio::test]
async fn proving_a_record_ends_the_tokens_issued_before_the_proof() {
    let stack = TestStack::start().await;
    hotel_with_secret(&stack, "hotel_proves", None).await;
    let mut guest = stack.guest("hotel_proves").await;
    let bound = guest.identify(json!({"visitorId": "booking-77"})).await;
    let before = bound["visitorToken"].as_str().unwrap().to_owned();
    let secret = "the-hotel-proves-its-guests-ids-now";
    hotel_with_secret(&stack, "hotel_proves", Some(secret)).await;
    // The same guest, with its token and the hotel's proof: its own record, verified.
    let mut proven = stack.guest("hotel_proves").await;
    let now = proven.identify(json!({"visitorId": "booking-77", "visitorToken": before, "userHash": jack_guest::domain::user_hash(secret, "booking-77")})).await;
    assert_eq!(now["guestId"], bound["guestId"]);
    // Whoever else held the token from before the proof holds nothing now.
    assert_eq!(upload_url_status(&stack, &before).await, 401);
    assert_eq!(upload_url_status(&stack, now["visitorToken"].as_str().unwrap()).await, 200);
}
