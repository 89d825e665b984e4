//! Every gRPC method authenticates its caller and checks the caller's role, through a real
//! client over a real socket: without credentials or with unknown ones a call is
//! `UNAUTHENTICATED`, in a role the method is not for `PERMISSION_DENIED`; in its role it gets
//! past the check. Health checks need no credentials.

use jack_e2e::{Role, Svc, TestStack, WAIT};
use jack_proto::conversation::v1 as conv;
use jack_runtime::grpc::Credentials;
use tonic::Code;

/// Calls `path` with an empty request as a server-streaming call: whatever the method's shape,
/// the answer's headers (or a refusal) come back at once.
async fn call(url: &str, path: &'static str, credentials: &Credentials) -> Result<(), tonic::Status> {
    let channel = jack_runtime::grpc::stream_channel(url, credentials).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    let mut request = tonic::Request::new(());
    request.set_timeout(WAIT);
    grpc.server_streaming(request, path, codec).await.map(drop)
}

/// Every `rpc` the proto files declare, as `/package.Service/Method`.
fn declared_methods() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/jack");
    let mut methods = Vec::new();
    for service in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(service.unwrap().path().join("v1")).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            let package =
                text.lines().find_map(|l| l.trim().strip_prefix("package ")).unwrap().trim_end_matches(';').to_owned();
            let mut current = None;
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    current = rest.split_whitespace().next().map(str::to_owned);
                } else if let (Some(rest), Some(service)) = (line.strip_prefix("rpc "), &current) {
                    let name = rest.split('(').next().unwrap().trim();
                    methods.push(format!("/{package}.{service}/{name}"));
                }
            }
        }
    }
    methods.sort();
    methods
}

#[tokio::test]
async fn every_method_refuses_unknown_callers_and_callers_in_other_roles() {
    let stack = TestStack::start().await;
    let url_of = |path: &str| match path.split('/').nth(1).unwrap() {
        "jack.guest.v1.GuestService" => stack.stack.url(Svc::Guest),
        "jack.conversation.v1.ConversationService" => stack.stack.url(Svc::Conversation),
        "jack.delivery.v1.DeliveryService" => stack.stack.url(Svc::Delivery),
        "jack.upload.v1.UploadService" => stack.stack.url(Svc::Upload),
        "jack.edge.v1.EdgeService" => stack.stack.edge_grpc_url(),
        other => panic!("a service without a port: {other}"),
    };

    // The rules cover every method the contract declares, and nothing else.
    let mut ruled: Vec<String> = jack_runtime::callers::methods().map(|(path, _)| path.to_owned()).collect();
    ruled.sort();
    assert_eq!(ruled, declared_methods());

    let stranger = Credentials::bearer("a-token-nobody-issued").unwrap();
    for (path, roles) in jack_runtime::callers::methods() {
        let url = url_of(path);
        let without = call(&url, path, &Credentials::none()).await.unwrap_err();
        assert_eq!(without.code(), Code::Unauthenticated, "{path} without credentials: {without:?}");
        let unknown = call(&url, path, &stranger).await.unwrap_err();
        assert_eq!(unknown.code(), Code::Unauthenticated, "{path} with unknown credentials: {unknown:?}");
        for role in Role::ALL {
            let outcome = call(&url, path, &stack.credentials(role)).await;
            if roles.contains(&role) {
                // Past the check: whatever the method answers an empty request (a visitor
                // token check may itself answer UNAUTHENTICATED, for the visitor's token).
                let refused = outcome
                    .as_ref()
                    .err()
                    .is_some_and(|s| s.message().contains("credentials") || s.message().contains("may not call"));
                assert!(!refused, "{path} as {role}: {outcome:?}");
            } else {
                assert_eq!(
                    outcome.as_ref().err().map(|s| s.code()),
                    Some(Code::PermissionDenied),
                    "{path} as {role}: {outcome:?}"
                );
                let message = outcome.unwrap_err().message().to_owned();
                assert!(message.contains(role.as_str()) && message.contains(path), "{message}");
            }
        }
    }

    // Probes need no credentials.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        jack_runtime::grpc::channel(&stack.stack.url(Svc::Guest), WAIT, &Credentials::none()).unwrap(),
    );
    let served =
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(served.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
}

#[tokio::test]
async fn each_caller_speaks_only_for_its_own_side() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_roles").await;
    let identified = guest.identify(serde_json::json!({})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let ack = guest.say("c1", "Is breakfast included?").await;
    let seq = ack["seq"].as_i64().unwrap();
    let send = |role: conv::Role| conv::SendMessageRequest {
        conversation_id: conversation_id.clone(),
        role: role as i32,
        content: "Yes, from 7 to 10.".into(),
        ..Default::default()
    };
    let read = |role: conv::Role| conv::MarkReadRequest {
        conversation_id: conversation_id.clone(),
        role: role as i32,
        up_to_seq: seq,
        guest_id: None,
    };
    let (mut responder, mut dashboard) =
        (stack.conversation_as(Role::Responder), stack.conversation_as(Role::Dashboard));

    // A responder answers as the assistant, a dashboard as staff; not the other way round.
    let refused = responder.send_message(send(conv::Role::Staff)).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::PermissionDenied, "jack up responder (role responder) may not act as staff")
    );
    assert_eq!(dashboard.send_message(send(conv::Role::Assistant)).await.unwrap_err().code(), Code::PermissionDenied);
    responder.send_message(send(conv::Role::Assistant)).await.unwrap();
    dashboard.send_message(send(conv::Role::Staff)).await.unwrap();

    // Only the edge marks what the guest has read, or shows the guest typing.
    let faked = responder.mark_read(read(conv::Role::Guest)).await.unwrap_err();
    assert_eq!(
        (faked.code(), faked.message()),
        (Code::PermissionDenied, "jack up responder (role responder) may not act as the guest")
    );
    let typing = conv::SetTypingRequest {
        conversation_id: conversation_id.clone(),
        role: conv::Role::Guest as i32,
        is_typing: true,
    };
    assert_eq!(dashboard.set_typing(typing).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(responder.mark_read(read(conv::Role::Assistant)).await.unwrap().into_inner().up_to_seq, seq);

    // The guest sees the two answers that were allowed, as who sent them.
    let (first, second) = (guest.expect("message").await, guest.expect("message").await);
    assert_eq!([&first["role"], &second["role"]], ["assistant", "staff"]);
}

/// Server reflection answers on every service without credentials (it tells nothing about
/// hotels or guests): a tool such as grpcurl lists the services and fetches their contracts
/// without the proto files.
#[tokio::test]
async fn reflection_lists_the_services_without_the_protos() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let stack = TestStack::start().await;
    for (service, url) in [
        ("jack.guest.v1.GuestService", stack.stack.url(Svc::Guest)),
        ("jack.conversation.v1.ConversationService", stack.stack.url(Svc::Conversation)),
        ("jack.delivery.v1.DeliveryService", stack.stack.url(Svc::Delivery)),
        ("jack.upload.v1.UploadService", stack.stack.url(Svc::Upload)),
        ("jack.edge.v1.EdgeService", stack.stack.edge_grpc_url()),
    ] {
        let mut client =
            ServerReflectionClient::new(jack_runtime::grpc::stream_channel(&url, &Credentials::none()).unwrap());
        let asks =
            [MessageRequest::ListServices(String::new()), MessageRequest::FileContainingSymbol(service.to_owned())]
                .map(|ask| ServerReflectionRequest { host: String::new(), message_request: Some(ask) });
        let mut answers = client.server_reflection_info(futures_util::stream::iter(asks)).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("{service}: no list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&service.to_owned()) && names.contains(&"grpc.health.v1.Health".to_owned()),
            "{service}: {names:?}"
        );
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("{service}: no file")
        };
        let file =
            <prost_types::FileDescriptorProto as prost::Message>::decode(&files.file_descriptor_proto[0][..]).unwrap();
        assert!(
            file.service.iter().any(|s| service.ends_with(&format!(".{}", s.name()))),
            "{service}: {:?}",
            file.name()
        );
    }
}

/// A caller limited to one hotel (that hotel's own AI team, front desk or tooling) acts only
/// there: it watches and answers that hotel's guests, and another hotel's conversations and
/// guests look to it like ones that do not exist.
#[tokio::test]
async fn a_caller_limited_to_a_hotel_sees_and_touches_only_that_hotel() {
    use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
    use jack_proto::delivery::v1 as events;
    use jack_proto::guest::v1 as guest_pb;
    use jack_runtime::callers::CallerEntry;

    // The stack's own callers, and three of the Grand's.
    let dir = tempfile::tempdir().unwrap();
    let own = jack::stack::credentials(dir.path()).unwrap();
    let mut callers: Vec<CallerEntry> =
        serde_json::from_str(&std::fs::read_to_string(own.join("callers.json")).unwrap()).unwrap();
    let grand = ["hotel_grand"];
    callers.push(CallerEntry::new("grand ai", Role::Responder, "grand-ai-token-0123456789abcdef").for_hotels(&grand));
    callers
        .push(CallerEntry::new("grand desk", Role::Dashboard, "grand-desk-token-0123456789abcdef").for_hotels(&grand));
    callers
        .push(CallerEntry::new("grand tooling", Role::Admin, "grand-admin-token-0123456789abcdef").for_hotels(&grand));
    let file = dir.path().join("callers.json");
    std::fs::write(&file, serde_json::to_string(&callers).unwrap()).unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let stack = TestStack::start_with(&[
        ("GRPC_CALLERS_FILE", &path(&file)),
        ("EDGE_GRPC_TOKEN_FILE", &path(&own.join("edge.token"))),
        ("CONVERSATION_GRPC_TOKEN_FILE", &path(&own.join("conversation.token"))),
    ])
    .await;
    let as_caller = |token: &str| Credentials::bearer(token).unwrap();

    let mut here = stack.guest("hotel_grand").await;
    let ours = here.identify(serde_json::json!({})).await;
    here.say("g1", "A table for two tonight?").await;
    let mut there = stack.guest("hotel_other").await;
    let theirs = there.identify(serde_json::json!({})).await;
    there.say("o1", "My room number is 1204").await;
    let (ours_conversation, theirs_conversation) =
        (ours["conversationId"].as_str().unwrap().to_owned(), theirs["conversationId"].as_str().unwrap().to_owned());

    let mut ai = ConversationServiceClient::new(
        jack_runtime::grpc::channel(
            &stack.stack.url(Svc::Conversation),
            WAIT,
            &as_caller("grand-ai-token-0123456789abcdef"),
        )
        .unwrap(),
    );
    // Watching, it sees its hotel's messages only (its one hotel, without naming it).
    let mut watch = ai
        .watch_messages(conv::WatchMessagesRequest { after_cursor: 0, roles: vec![], hotel_id: None })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, watch.message()).await.unwrap().unwrap().unwrap();
        let Some(message) = event.message else { break }; // caught up
        seen.push(message.content);
    }
    assert_eq!(seen, ["A table for two tonight?"]);
    let other = conv::WatchMessagesRequest { after_cursor: 0, roles: vec![], hotel_id: Some("hotel_other".into()) };
    assert_eq!(ai.watch_messages(other).await.unwrap_err().code(), Code::PermissionDenied);
    // It answers its guests; another hotel's conversation does not exist for it.
    let answer = |conversation_id: &str| conv::SendMessageRequest {
        conversation_id: conversation_id.to_owned(),
        role: conv::Role::Assistant as i32,
        content: "Booked for 8 pm.".into(),
        ..Default::default()
    };
    ai.send_message(answer(&ours_conversation)).await.unwrap();
    assert_eq!(ai.send_message(answer(&theirs_conversation)).await.unwrap_err().code(), Code::NotFound);
    let list = conv::ListMessagesRequest {
        conversation_id: theirs_conversation.clone(),
        after_seq: Some(0),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ai.list_messages(list).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(here.expect("message").await["content"], "Booked for 8 pm.");

    // Its front desk subscribes to its hotel only.
    let mut desk = jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient::new(
        jack_runtime::grpc::stream_channel(
            &stack.stack.url(Svc::Delivery),
            &as_caller("grand-desk-token-0123456789abcdef"),
        )
        .unwrap(),
    );
    let elsewhere = events::SubscribeRequest { hotel_id: Some("hotel_other".into()), ..Default::default() };
    assert_eq!(desk.subscribe(elsewhere).await.unwrap_err().code(), Code::PermissionDenied);
    desk.subscribe(events::SubscribeRequest::default()).await.expect("its own hotel, without naming it");

    // Its tooling manages its hotel and its guests, not another's.
    let mut tooling = guest_pb::guest_service_client::GuestServiceClient::new(
        jack_runtime::grpc::channel(
            &stack.stack.url(Svc::Guest),
            WAIT,
            &as_caller("grand-admin-token-0123456789abcdef"),
        )
        .unwrap(),
    );
    let hotel = |hotel_id: &str| guest_pb::UpsertHotelRequest {
        hotel_id: hotel_id.into(),
        name: "A hotel".into(),
        allowed_origins: vec![],
        identity_secret: None,
    };
    assert_eq!(tooling.upsert_hotel(hotel("hotel_other")).await.unwrap_err().code(), Code::PermissionDenied);
    let guest_id = |identified: &serde_json::Value| identified["guestId"].as_str().unwrap().to_owned();
    tooling.get_guest(guest_pb::GetGuestRequest { guest_id: guest_id(&ours) }).await.expect("its own guest");
    assert_eq!(
        tooling.get_guest(guest_pb::GetGuestRequest { guest_id: guest_id(&theirs) }).await.unwrap_err().code(),
        Code::NotFound
    );
    let revoke = guest_pb::RevokeVisitorTokensRequest { guest_id: guest_id(&theirs) };
    assert_eq!(tooling.revoke_visitor_tokens(revoke).await.unwrap_err().code(), Code::NotFound);
    // The other hotel's guest was left alone: still connected and served.
    assert_eq!(there.say("o2", "Still there?").await["type"], "message_ack");
}
