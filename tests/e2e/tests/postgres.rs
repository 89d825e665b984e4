//! The same spine on PostgreSQL (the scale-out storage): each service gets its own database.
//! Uses `JACK_TEST_POSTGRES_URL` (default: the machine's server, trust auth).

use jack_e2e::{Role, TestStack, WAIT};
use jack_proto::conversation::v1 as conv;
use jack_proto::guest::v1 as guest_pb;
use serde_json::json;

#[tokio::test]
async fn the_spine_runs_on_postgresql() {
    let vars = jack_e2e::postgres_databases().await;
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let stack = TestStack::start_with(&pairs).await;

    let mut guest = stack.guest("hotel_pg").await;
    let identified = guest.identify(json!({"visitorId": "v_pg", "name": "Pat", "email": "pat@example.com"})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let first = guest.say("pg1", "I need extra towels").await;
    assert_eq!(first["seq"], 1);
    let again = guest.say("pg1", "I need extra towels").await;
    assert_eq!(again["messageId"], first["messageId"]);
    stack.assistant_says(&conversation_id, "On their way").await;
    guest.until(|f| f["content"] == "On their way").await;
    guest.close().await;

    stack.assistant_says(&conversation_id, "Anything else?").await;
    let mut guest = stack.guest("hotel_pg").await;
    guest.identify(json!({"visitorId": "v_pg", "visitorToken": token, "lastSeq": 2})).await;
    let replayed = guest.seen_messages();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0]["content"], "Anything else?");

    let mut watch = stack
        .conversation()
        .watch_messages(conv::WatchMessagesRequest { after_cursor: 0, roles: vec![conv::Role::Guest as i32], hotel_id: Some("hotel_pg".into()) })
        .await
        .unwrap()
        .into_inner();
    let event = tokio::time::timeout(jack_e2e::WAIT, watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(event.message.unwrap().content, "I need extra towels", "the message before the caught-up heartbeat");

    // The hotel registry: once a hotel is registered, only registered hotels are served.
    let (mut guests, mut edge) = (stack.guests(Role::Admin), stack.guests(Role::Edge));
    let hotel = guest_pb::UpsertHotelRequest { hotel_id: "hotel_pg".into(), name: "PG Hotel".into(), allowed_origins: vec!["https://pg.example".into()], identity_secret: None };
    guests.upsert_hotel(hotel).await.unwrap();
    let known = guests.get_hotel_policy(guest_pb::GetHotelPolicyRequest { hotel_id: "hotel_pg".into() }).await.unwrap().into_inner();
    assert!(known.registry_enabled && known.known);
    assert_eq!(known.allowed_origins, vec!["https://pg.example".to_owned()]);
    let identify = |hotel_id: &str| guest_pb::IdentifyRequest { hotel_id: hotel_id.into(), channel: "webchat".into(), ..Default::default() };
    edge.identify(identify("hotel_pg")).await.expect("a registered hotel is served");
    let refused = edge.identify(identify("other_hotel")).await.expect_err("an unregistered hotel is refused");
    assert_eq!(refused.code(), jack_proto::tonic::Code::NotFound);
}

#[tokio::test]
async fn visitors_who_only_look_are_forgotten_on_postgresql_too() {
    let mut vars = jack_e2e::postgres_databases().await;
    vars.extend([("GUEST_SILENT_VISITOR_TTL".to_owned(), "1".to_owned()), ("CONVERSATION_EMPTY_TTL".to_owned(), "1".to_owned())]);
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let stack = TestStack::start_with(&pairs).await;
    let mut guests = stack.guests(Role::Admin);
    let mut conversations = stack.conversation();
    let mut writer = stack.guest("hotel_pg").await;
    let wrote = writer.identify(json!({})).await;
    writer.say("w1", "hello").await;
    let mut looker = stack.guest("hotel_pg").await;
    let looked = looker.identify(json!({})).await;
    let id = |v: &serde_json::Value, field: &str| v[field].as_str().unwrap().to_owned();
    let forgotten = tokio::time::timeout(WAIT, async {
        while guests.get_guest(guest_pb::GetGuestRequest { guest_id: id(&looked, "guestId") }).await.is_ok()
            || conversations.get_conversation(conv::GetConversationRequest { conversation_id: id(&looked, "conversationId") }).await.is_ok()
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(forgotten.is_ok());
    assert!(guests.get_guest(guest_pb::GetGuestRequest { guest_id: id(&wrote, "guestId") }).await.is_ok());
    assert!(conversations.get_conversation(conv::GetConversationRequest { conversation_id: id(&wrote, "conversationId") }).await.is_ok());
}
