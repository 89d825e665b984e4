//! Delivery semantics: butler messages reach guests live and after reconnects, exactly once
//! and in order; tabs stay in sync; resends are stored once.

use jack_e2e::{Guest, TestStack};
use jack_proto::conversation::v1 as conv;
use serde_json::{Value, json};

fn contents(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["content"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test]
async fn assistant_message_reaches_the_connected_guest() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_live"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let sent = stack.assistant_says(&conversation_id, "Your towels are on the way").await;
    let message = guest.expect("message").await;
    assert_eq!(message["content"], "Your towels are on the way");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["messageId"], sent.message_id.as_str());
    assert_eq!(message["seq"], sent.seq);
    assert_eq!(message["conversationId"], conversation_id.as_str());
}

#[tokio::test]
async fn rich_messages_keep_their_quick_replies_buttons_and_cards() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let conversation_id =
        guest.identify(json!({"visitorId": "v_rich"})).await["conversationId"].as_str().unwrap().to_owned();
    let request = conv::SendMessageRequest {
        conversation_id,
        role: conv::Role::Assistant as i32,
        content: "Here are some restaurants nearby:".into(),
        quick_replies: vec![conv::QuickReply { label: "Room Service".into(), payload: "room_service".into() }],
        buttons: vec![conv::Button {
            r#type: "url".into(),
            label: "View Menu".into(),
            payload: None,
            url: Some("https://hotel.com/menu".into()),
        }],
        cards: vec![conv::Card {
            title: "Sushi Garden".into(),
            subtitle: Some("10 min walk".into()),
            image_url: Some("https://hotel.com/sushi.jpg".into()),
            buttons: vec![conv::Button {
                r#type: "postback".into(),
                label: "Book Table".into(),
                payload: Some("book_sushi".into()),
                url: None,
            }],
        }],
        ..Default::default()
    };
    stack.conversation().send_message(request).await.unwrap();
    let m = guest.expect("message").await;
    assert_eq!(m["quickReplies"], json!([{"label": "Room Service", "payload": "room_service"}]));
    assert_eq!(m["buttons"], json!([{"type": "url", "label": "View Menu", "url": "https://hotel.com/menu"}]));
    assert_eq!(m["cards"][0]["title"], "Sushi Garden");
    assert_eq!(m["cards"][0]["imageUrl"], "https://hotel.com/sushi.jpg");
    assert_eq!(m["cards"][0]["buttons"][0]["payload"], "book_sushi");

    // A tap on the quick reply is a postback, acknowledged like a message.
    guest.send(json!({"type": "postback", "clientMessageId": "tap_1", "payload": "room_service", "label": "Room Service", "messageId": m["messageId"]})).await;
    let ack = guest.until(|f| f["type"] == "message_ack").await;
    assert_eq!(ack["clientMessageId"], "tap_1");
    assert_eq!(ack["seq"], 2);
}

#[tokio::test]
async fn an_offline_guest_gets_missed_messages_once_in_order_after_reconnecting() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_offline"})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let ack = guest.say("c1", "Is breakfast included?").await;
    let last_seq = ack["seq"].as_i64().unwrap();
    guest.close().await;

    for i in 1..=5 {
        stack.assistant_says(&conversation_id, &format!("answer {i}")).await;
    }

    let mut guest = stack.guest("hotel_1").await;
    let identified = guest
        .identify(
            json!({"visitorId": "v_offline", "visitorToken": token, "resumeConversation": true, "lastSeq": last_seq}),
        )
        .await;
    assert_eq!(identified["conversationId"], conversation_id.as_str());
    // A live message after the replay proves the replay is over and nothing else follows.
    stack.assistant_says(&conversation_id, "live after resume").await;
    guest.until(|f| f["type"] == "message" && f["content"] == "live after resume").await;
    let got = guest.seen_messages();
    assert_eq!(contents(&got), ["answer 1", "answer 2", "answer 3", "answer 4", "answer 5"]);
    let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn a_resent_unacked_message_is_stored_once() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_resend"})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    let first = guest.say("same_id", "I need extra towels").await;
    guest.close().await;

    // The widget never saw the ack (say the socket died): it resends after reconnecting.
    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_resend", "visitorToken": token})).await;
    let again = guest.say("same_id", "I need extra towels").await;
    assert_eq!(again["type"], "message_ack");
    assert_eq!(again["messageId"], first["messageId"]);
    assert_eq!(again["seq"], first["seq"]);

    // The same id with other content is refused, not stored.
    let conflict = guest.say("same_id", "Something else").await;
    assert_eq!(conflict["type"], "error");
    assert_eq!(conflict["code"], "DUPLICATE_MESSAGE_ID");
    assert_eq!(conflict["retryable"], false);

    let conversation_id = first["conversationId"].as_str().unwrap().to_owned();
    let list = stack
        .conversation()
        .list_messages(conv::ListMessagesRequest { conversation_id, after_seq: Some(0), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.messages.len(), 1);
    assert_eq!(list.messages[0].content, "I need extra towels");
}

#[tokio::test]
async fn two_tabs_of_one_visitor_both_see_every_message() {
    let stack = TestStack::start().await;
    let mut tab1 = stack.guest("hotel_1").await;
    let identified = tab1.identify(json!({"visitorId": "v_tabs"})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let mut tab2 = stack.guest("hotel_1").await;
    let identified2 = tab2.identify(json!({"visitorId": "v_tabs", "visitorToken": token})).await;
    assert_eq!(identified2["conversationId"], conversation_id.as_str());

    let ack = tab1.say("t1", "From tab one").await;
    let echo = tab2.expect("message").await;
    assert_eq!(echo["role"], "guest");
    assert_eq!(echo["content"], "From tab one");
    assert_eq!(echo["messageId"], ack["messageId"]);
    assert_eq!(echo["clientMessageId"], "t1");

    stack.assistant_says(&conversation_id, "Hello both").await;
    for tab in [&mut tab1, &mut tab2] {
        let m = tab.expect("message").await;
        assert_eq!(m["content"], "Hello both");
    }
    // The sender's own tab got an ack, not an echo of its own message.
    assert!(tab1.seen_messages().iter().all(|m| m["content"] != "From tab one"));
}

#[tokio::test]
async fn load_history_pages_backwards() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let conversation_id =
        guest.identify(json!({"visitorId": "v_pages"})).await["conversationId"].as_str().unwrap().to_owned();
    for i in 1..=7 {
        stack.assistant_says(&conversation_id, &format!("m{i}")).await;
    }
    guest.send(json!({"type": "load_history", "beforeSeq": 6, "limit": 3})).await;
    let page = guest.expect("history").await;
    assert_eq!(contents(page["messages"].as_array().unwrap()), ["m3", "m4", "m5"]);
    assert_eq!(page["hasMore"], true);
    guest.send(json!({"type": "load_history", "beforeSeq": 3, "limit": 3})).await;
    let page = guest.expect("history").await;
    assert_eq!(contents(page["messages"].as_array().unwrap()), ["m1", "m2"]);
    assert_eq!(page["hasMore"], false);
}

#[tokio::test]
async fn a_history_larger_than_64_kib_arrives_whole_and_the_frames_after_it_too() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_long_history"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    let long: Vec<String> = (0..24).map(|i| format!("{i:02} {}", "x".repeat(3_500))).collect();
    for text in &long {
        stack.assistant_says(&conversation_id, text).await;
    }
    // A second tab resumes from the start: one history frame of ~85 KB (a 64-bit length).
    let mut tab = Guest::connect(&stack.ws_url("hotel_1")).await;
    tab.identify(json!({"visitorId": "v_long_history", "visitorToken": token, "lastSeq": 0})).await;
    let history: Vec<&Value> = tab.seen.iter().filter(|f| f["type"] == "history").collect();
    assert_eq!(history.len(), 1);
    assert_eq!(contents(history[0]["messages"].as_array().unwrap()), long);
    // The connection carries on: a live message and an acknowledgement after it.
    stack.assistant_says(&conversation_id, "after the long page").await;
    assert_eq!(tab.expect("message").await["content"], "after the long page");
    let ack = tab.say("tab-1", "thanks").await;
    assert_eq!(ack["seq"], 26);
}

#[tokio::test]
async fn a_resuming_guest_without_last_seq_gets_the_latest_page() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_latest"})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    guest.say("a", "first").await;
    guest.close().await;
    let mut guest = Guest::connect(&stack.ws_url("hotel_1")).await;
    guest.identify(json!({"visitorId": "v_latest", "visitorToken": token, "resumeConversation": true})).await;
    let history: Vec<&Value> = guest.seen.iter().filter(|f| f["type"] == "history").collect();
    assert_eq!(history.len(), 1);
    assert_eq!(contents(history[0]["messages"].as_array().unwrap()), ["first"]);
    assert_eq!(history[0]["messages"][0]["clientMessageId"], "a");
}

/// A guest of hotel_1 identified as `visitor`, with its conversation id and guest id.
async fn identified(stack: &TestStack, visitor: &str) -> (Guest, String, String) {
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": visitor})).await;
    let (conversation_id, guest_id) =
        (identified["conversationId"].as_str().unwrap().to_owned(), identified["guestId"].as_str().unwrap().to_owned());
    (guest, conversation_id, guest_id)
}

/// A text message from `guest_id` into `conversation_id`, as the edge sends it to conversation.
fn text(conversation_id: &str, guest_id: &str, client_message_id: &str, content: &str) -> conv::AddGuestMessageRequest {
    conv::AddGuestMessageRequest {
        conversation_id: conversation_id.to_owned(),
        guest_id: guest_id.to_owned(),
        client_message_id: client_message_id.to_owned(),
        kind: conv::MessageKind::Text as i32,
        content: content.to_owned(),
        ..Default::default()
    }
}

/// The edge's batches of guest messages: each answered with its own id, a result per message
/// in order, as AddGuestMessage would answer it — also the last ones, sent as the edge closes
/// its side of the stream.
#[tokio::test]
async fn a_batch_of_guest_messages_answers_each_message_on_its_own() {
    let stack = TestStack::start().await;
    let (_guest, conversation_id, guest_id) = identified(&stack, "v_batch").await;
    let message = |client_id: &str, content: &str, guest_id: &str| text(&conversation_id, guest_id, client_id, content);
    let batches = vec![
        conv::GuestMessageBatch {
            batch_id: 7,
            messages: vec![
                message("b1", "first", &guest_id),
                message("b2", "   ", &guest_id),
                message("b3", "not yours", "gst_someone_else"),
            ],
        },
        conv::GuestMessageBatch {
            batch_id: 8,
            messages: vec![message("b4", "second", &guest_id), message("b1", "first", &guest_id)],
        },
    ];
    let mut answers = stack
        .conversation_as(jack_e2e::Role::Edge)
        .add_guest_message_batches(futures_util::stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut outcome = std::collections::BTreeMap::new();
    while let Some(answer) = answers.message().await.expect("the stream ends cleanly") {
        let results: Vec<String> = answer
            .results
            .iter()
            .map(|r| match &r.result {
                Some(conv::add_guest_message_result::Result::Added(a)) => {
                    format!("seq {}{}", a.message.as_ref().unwrap().seq, if a.duplicate { " again" } else { "" })
                }
                Some(conv::add_guest_message_result::Result::Failure(f)) => format!("code {}", f.code),
                None => "none".into(),
            })
            .collect();
        outcome.insert(answer.batch_id, results);
    }
    let (invalid, not_found) =
        (jack_proto::tonic::Code::InvalidArgument as i32, jack_proto::tonic::Code::NotFound as i32);
    assert_eq!(outcome[&7], ["seq 1".to_owned(), format!("code {invalid}"), format!("code {not_found}")]);
    assert_eq!(outcome[&8], ["seq 2", "seq 1 again"]);
    assert_eq!(outcome.len(), 2);
}

/// A batch over the limit is refused whole — each of its messages with INVALID_ARGUMENT,
/// nothing of it stored — and the stream goes on: the next batch is stored.
#[tokio::test]
async fn a_batch_of_guest_messages_over_the_limit_is_refused_and_the_stream_goes_on() {
    let stack = TestStack::start().await;
    let (_guest, conversation_id, guest_id) = identified(&stack, "v_big_batch").await;
    let message = |client_id: String| text(&conversation_id, &guest_id, &client_id, "hello");
    let batches = [
        conv::GuestMessageBatch { batch_id: 1, messages: (0..513).map(|i| message(format!("big{i}"))).collect() },
        conv::GuestMessageBatch { batch_id: 2, messages: vec![message("after".into())] },
    ];
    let mut answers = stack
        .conversation_as(jack_e2e::Role::Edge)
        .add_guest_message_batches(futures_util::stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut by_batch = std::collections::BTreeMap::new();
    while let Some(answer) = answers.message().await.expect("the stream ends cleanly") {
        by_batch.insert(answer.batch_id, answer.results);
    }
    let refused = &by_batch[&1];
    assert_eq!(refused.len(), 513, "a result for every message");
    for result in refused {
        let Some(conv::add_guest_message_result::Result::Failure(f)) = &result.result else {
            panic!("refused: {result:?}")
        };
        assert_eq!(f.code, jack_proto::tonic::Code::InvalidArgument as i32);
        assert!(f.message.contains("512"), "{f:?}");
    }
    let Some(conv::add_guest_message_result::Result::Added(added)) = &by_batch[&2][0].result else {
        panic!("stored: {:?}", by_batch[&2])
    };
    assert_eq!(added.message.as_ref().unwrap().seq, 1);
    let list = stack
        .conversation()
        .list_messages(conv::ListMessagesRequest { conversation_id, after_seq: Some(0), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let stored: Vec<_> = list.messages.iter().map(|m| m.client_message_id.as_deref().unwrap_or_default()).collect();
    assert_eq!(stored, ["after"], "nothing of the refused batch is stored");
}

/// `ListMessages` answers a conversation's pages with its last seq, and only to its own guest:
/// another guest's conversation, like one that does not exist, is NOT_FOUND.
#[tokio::test]
async fn history_is_listed_for_the_conversations_own_guest_only() {
    let stack = TestStack::start().await;
    let (mut guest, conversation_id, guest_id) = identified(&stack, "v_owner").await;
    let mut other = stack.guest("hotel_1").await;
    let other_id = other.identify(json!({"visitorId": "v_other"})).await["guestId"].as_str().unwrap().to_owned();
    let list = |guest_id: Option<&str>, after_seq: Option<i64>, before_seq: Option<i64>, limit: u32| {
        let request = conv::ListMessagesRequest {
            conversation_id: conversation_id.clone(),
            after_seq,
            before_seq,
            limit,
            guest_id: guest_id.map(str::to_owned),
            max_bytes: None,
        };
        let mut client = stack.conversation();
        async move { client.list_messages(request).await }
    };

    let empty = list(Some(&guest_id), Some(0), None, 10).await.unwrap().into_inner();
    assert_eq!(
        (empty.messages.len(), empty.has_more, empty.last_seq),
        (0, false, 0),
        "a new conversation has no history"
    );
    for n in 1..=3 {
        guest.say(&format!("c{n}"), &format!("message {n}")).await;
    }
    let page = list(Some(&guest_id), Some(1), None, 1).await.unwrap().into_inner();
    assert_eq!((contents_of(&page.messages), page.has_more, page.last_seq), (vec!["message 2".to_owned()], true, 3));
    let older = list(Some(&guest_id), None, Some(3), 10).await.unwrap().into_inner();
    assert_eq!(
        (contents_of(&older.messages), older.has_more),
        (vec!["message 1".to_owned(), "message 2".to_owned()], false)
    );
    let past_the_end = list(None, Some(3), None, 10).await.unwrap().into_inner();
    assert_eq!(
        (past_the_end.messages.len(), past_the_end.last_seq),
        (0, 3),
        "after the last message: none, and the last seq"
    );

    let stolen = list(Some(&other_id), Some(0), None, 10).await.expect_err("another guest's history");
    assert_eq!(stolen.code(), jack_proto::tonic::Code::NotFound);
    let request =
        conv::ListMessagesRequest { conversation_id: "cnv_nope".into(), after_seq: Some(0), ..Default::default() };
    let unknown = stack.conversation().list_messages(request).await.expect_err("no such conversation");
    assert_eq!(unknown.code(), jack_proto::tonic::Code::NotFound);
}

fn contents_of(messages: &[conv::Message]) -> Vec<String> {
    messages.iter().map(|m| m.content.clone()).collect()
}

/// Delivery's publish stream answers each request in order with how many of its events
/// reached a live session (and the guest sees them); an event without a conversation or a
/// kind ends the stream with INVALID_ARGUMENT — as the unary Publish refuses it.
#[tokio::test]
async fn the_publish_stream_answers_each_request_and_ends_at_an_invalid_event() {
    use jack_proto::delivery::v1 as events;
    let stack = TestStack::start().await;
    let (mut guest, conversation_id, guest_id) = identified(&stack, "v_publish").await;
    let typing = |conversation_id: &str, is_typing: bool| events::Event {
        conversation_id: conversation_id.to_owned(),
        hotel_id: "hotel_1".into(),
        guest_id: guest_id.clone(),
        kind: Some(events::event::Kind::Typing(events::Typing { role: conv::Role::Staff as i32, is_typing })),
        ..Default::default()
    };
    let invalid = events::Event { kind: None, ..typing(&conversation_id, true) };
    let refused = stack
        .delivery_as(jack_e2e::Role::Conversation)
        .publish(events::PublishRequest { events: vec![invalid.clone()], ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), jack_proto::tonic::Code::InvalidArgument);

    let requests = vec![
        events::PublishRequest {
            events: vec![typing(&conversation_id, true), typing("cnv_nobody_listens", true)],
            ..Default::default()
        },
        events::PublishRequest { events: vec![typing(&conversation_id, false)], ..Default::default() },
        events::PublishRequest { events: vec![invalid], ..Default::default() },
        events::PublishRequest { events: vec![typing(&conversation_id, true)], ..Default::default() },
    ];
    let mut answers = stack
        .delivery_as(jack_e2e::Role::Conversation)
        .publish_stream(futures_util::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().map(|a| a.routed), Some(1), "one of two events had a live session");
    assert_eq!(answers.message().await.unwrap().map(|a| a.routed), Some(1));
    let ended = answers.message().await.expect_err("an invalid event ends the stream");
    assert_eq!(ended.code(), jack_proto::tonic::Code::InvalidArgument);
    // A marker published after the stream ended: nothing of the request after the invalid one
    // reaches the guest before it.
    let marker = events::Event {
        kind: Some(events::event::Kind::Typing(events::Typing { role: conv::Role::Assistant as i32, is_typing: true })),
        ..typing(&conversation_id, true)
    };
    stack
        .delivery_as(jack_e2e::Role::Conversation)
        .publish(events::PublishRequest { events: vec![marker], ..Default::default() })
        .await
        .unwrap();
    guest.until(|f| f["type"] == "typing" && f["role"] == "assistant").await;
    let staff_typing: Vec<bool> = guest
        .seen
        .iter()
        .filter(|f| f["type"] == "typing" && f["role"] == "staff")
        .map(|f| f["isTyping"].as_bool().unwrap())
        .collect();
    assert_eq!(staff_typing, [true, false], "each request's events in order, and nothing after the invalid one");
}

/// A staff subscription that stops reading is closed with RESOURCE_EXHAUSTED and how to catch
/// up, after the events its queue held: a dashboard can tell it from a stream that ended.
#[tokio::test]
async fn a_subscription_that_falls_behind_ends_with_resource_exhausted() {
    use jack_proto::delivery::v1 as events;
    use jack_proto::tonic::Code;
    let stack = TestStack::start_with(&[("DELIVERY_SUBSCRIBER_QUEUE", "16")]).await;
    let mut dashboard = stack.delivery();
    let filter = events::SubscribeRequest { typing: true, ..Default::default() };
    let mut subscription = dashboard.subscribe(filter).await.unwrap().into_inner();
    // More typing events than the queue and the HTTP/2 windows between them hold, while the
    // dashboard reads nothing.
    let typing = |i: u32| events::Event {
        conversation_id: format!("cnv_{i:06}"),
        hotel_id: "hotel_1".into(),
        guest_id: "gst_behind".into(),
        kind: Some(events::event::Kind::Typing(events::Typing { role: conv::Role::Assistant as i32, is_typing: true })),
        ..Default::default()
    };
    let mut publisher = stack.delivery_as(jack_e2e::Role::Conversation);
    let published = 20_000u32;
    for batch in (0..published).collect::<Vec<_>>().chunks(500) {
        publisher
            .publish(events::PublishRequest {
                events: batch.iter().map(|i| typing(*i)).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut received = 0u32;
    let ended = loop {
        match tokio::time::timeout(jack_e2e::WAIT, subscription.message()).await.expect("the stream goes on or ends") {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended with OK after {received} of {published} events"),
            Err(status) => break status,
        }
    };
    assert!(received < published, "{received}");
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(
        ended.message().contains("subscribe again") && ended.message().contains("ListMessages"),
        "{}",
        ended.message()
    );

    // Asking for an empty hotel or conversation is a mistake, not a subscription to nothing.
    for filter in [
        events::SubscribeRequest { hotel_id: Some(String::new()), ..Default::default() },
        events::SubscribeRequest { conversation_id: Some(String::new()), ..Default::default() },
    ] {
        let refused = dashboard.subscribe(filter).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
}

/// A responder's retry is the same message only if everything in it is the same: a retry that
/// changes only the quick replies, buttons or cards under the same client message id is
/// another message, refused as ALREADY_EXISTS, never answered with the stored one.
#[tokio::test]
async fn a_changed_retry_under_the_same_client_message_id_is_already_exists() {
    let stack = TestStack::start().await;
    let (_guest, conversation_id, _) = identified(&stack, "v_retry").await;
    let mut responder = stack.conversation();
    let reply = |label: &str| conv::SendMessageRequest {
        conversation_id: conversation_id.clone(),
        role: conv::Role::Assistant as i32,
        content: "What time suits you?".into(),
        quick_replies: vec![conv::QuickReply { label: label.into(), payload: label.to_lowercase() }],
        client_message_id: Some("reply:time".into()),
        ..Default::default()
    };
    let first = responder.send_message(reply("Morning")).await.unwrap().into_inner();
    let again = responder.send_message(reply("Morning")).await.unwrap().into_inner();
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(again.message.unwrap().seq, first.message.unwrap().seq);
    let changed = responder.send_message(reply("Evening")).await.expect_err("another message under the same id");
    assert_eq!(changed.code(), jack_proto::tonic::Code::AlreadyExists, "{changed:?}");
    let buttons = conv::SendMessageRequest {
        buttons: vec![conv::Button {
            r#type: "postback".into(),
            label: "Now".into(),
            payload: Some("now".into()),
            url: None,
        }],
        ..reply("Morning")
    };
    assert_eq!(
        responder.send_message(buttons).await.expect_err("refused").code(),
        jack_proto::tonic::Code::AlreadyExists
    );
}

/// Two delivery replicas: the relay publishes each batch to one, for the edges, and copies it
/// to the other, so that a staff subscription on either sees every event, once; when the
/// replica the relay publishes to stops, the other serves the edges and its subscriptions.
#[tokio::test]
async fn a_staff_subscription_on_any_delivery_replica_sees_every_event_once() {
    use std::collections::HashMap;

    use jack_proto::delivery::v1 as events;
    use jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;

    /// Messages by id, and the guest's typing, as one subscription saw them.
    #[derive(Default, Debug)]
    struct Seen {
        messages: HashMap<String, u32>,
        positions: Vec<i64>,
        guest_typing: u32,
    }
    async fn read_until(subscription: &mut tonic::Streaming<events::Event>, seen: &mut Seen, messages: usize) {
        while seen.messages.len() < messages {
            let event = tokio::time::timeout(jack_e2e::WAIT, subscription.message())
                .await
                .expect("events in time")
                .unwrap()
                .expect("the subscription goes on");
            match event.kind {
                Some(events::event::Kind::Message(m)) => {
                    *seen.messages.entry(m.message_id).or_default() += 1;
                    seen.positions.push(event.position);
                }
                Some(events::event::Kind::Typing(t)) if t.role == conv::Role::Guest as i32 => seen.guest_typing += 1,
                _ => {}
            }
        }
    }

    let (first, second) = (jack_e2e::free_port(), jack_e2e::free_port());
    let urls = format!("http://127.0.0.1:{first},http://127.0.0.1:{second}");
    let first_addr = format!("127.0.0.1:{first}");
    let mut stack = TestStack::start_with(&[
        ("DELIVERY_GRPC_ADDR", &first_addr),
        ("CONVERSATION_DELIVERY_URLS", &urls),
        ("EDGE_DELIVERY_URLS", &urls),
    ])
    .await;
    let env = stack.stack.env().clone().with("DELIVERY_GRPC_ADDR", format!("127.0.0.1:{second}"));
    let replica = jack_delivery::DeliveryServer::build(jack_delivery::Settings::from_env(&env).unwrap()).await.unwrap();
    let replica_stop = jack_runtime::CancellationToken::new();
    let replica_task = tokio::spawn(replica.run(replica_stop.clone()));
    stack.wait_delivery_streams(2).await;

    let staff = stack.credentials(jack_e2e::Role::Dashboard);
    let filter = events::SubscribeRequest {
        hotel_id: Some("hotel_1".into()),
        messages: true,
        typing: true,
        ..Default::default()
    };
    let mut subscriptions = Vec::new();
    for port in [first, second] {
        let mut client = DeliveryServiceClient::new(
            jack_runtime::grpc::channel(&format!("http://127.0.0.1:{port}"), jack_e2e::WAIT, &staff).unwrap(),
        );
        subscriptions.push(client.subscribe(filter.clone()).await.unwrap().into_inner());
    }
    let mut seen = [Seen::default(), Seen::default()];

    let (mut guest, conversation_id, _) = identified(&stack, "v_two_deliveries").await;
    guest.send(json!({"type": "typing", "isTyping": true})).await;
    for n in 0..5 {
        guest.say(&format!("g{n}"), &format!("question {n}")).await;
        stack.assistant_says(&conversation_id, &format!("answer {n}")).await;
    }
    for (subscription, seen) in subscriptions.iter_mut().zip(seen.iter_mut()) {
        read_until(subscription, seen, 10).await;
    }
    for seen in &seen {
        assert!(seen.messages.values().all(|n| *n == 1), "each message once: {seen:?}");
        assert!(seen.positions.iter().all(|p| *p > 0), "messages carry their log position: {seen:?}");
        assert_eq!(seen.guest_typing, 1, "the guest's typing reaches both replicas' subscribers");
    }

    // The replica the relay publishes to stops: the other takes the edges' traffic too, and
    // its subscription goes on, without a gap or a repeat.
    stack.stop(jack_e2e::Svc::Delivery).await;
    for n in 5..10 {
        guest.say(&format!("g{n}"), &format!("question {n}")).await;
        stack.assistant_says(&conversation_id, &format!("answer {n}")).await;
    }
    read_until(&mut subscriptions[1], &mut seen[1], 20).await;
    let late = tokio::time::timeout(std::time::Duration::from_secs(1), subscriptions[1].message()).await;
    assert!(late.is_err(), "nothing more after the twenty messages: {late:?}");
    assert!(seen[1].messages.values().all(|n| *n == 1), "each message once: {:?}", seen[1]);
    assert_eq!(guest.butler_contents(10).await, (0..10).map(|n| format!("answer {n}")).collect::<Vec<_>>());
    replica_stop.cancel();
    replica_task.await.unwrap().unwrap();
}
