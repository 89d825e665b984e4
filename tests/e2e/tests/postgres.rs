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
        .watch_messages(conv::WatchMessagesRequest {
            after_cursor: 0,
            roles: vec![conv::Role::Guest as i32],
            hotel_id: Some("hotel_pg".into()),
        })
        .await
        .unwrap()
        .into_inner();
    let event = tokio::time::timeout(jack_e2e::WAIT, watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(event.message.unwrap().content, "I need extra towels", "the message before the caught-up heartbeat");

    // The hotel registry: once a hotel is registered, only registered hotels are served.
    let (mut guests, mut edge) = (stack.guests(Role::Admin), stack.guests(Role::Edge));
    let hotel = guest_pb::UpsertHotelRequest {
        hotel_id: "hotel_pg".into(),
        name: "PG Hotel".into(),
        allowed_origins: vec!["https://pg.example".into()],
        identity_secret: None,
    };
    guests.upsert_hotel(hotel).await.unwrap();
    let known = guests
        .get_hotel_policy(guest_pb::GetHotelPolicyRequest { hotel_id: "hotel_pg".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(known.registry_enabled && known.known);
    assert_eq!(known.allowed_origins, vec!["https://pg.example".to_owned()]);
    let identify = |hotel_id: &str| guest_pb::IdentifyRequest {
        hotel_id: hotel_id.into(),
        channel: "webchat".into(),
        ..Default::default()
    };
    edge.identify(identify("hotel_pg")).await.expect("a registered hotel is served");
    let refused = edge.identify(identify("other_hotel")).await.expect_err("an unregistered hotel is refused");
    assert_eq!(refused.code(), jack_proto::tonic::Code::NotFound);
}

#[tokio::test]
async fn visitors_who_only_look_are_forgotten_on_postgresql_too() {
    let mut vars = jack_e2e::postgres_databases().await;
    vars.extend([
        ("GUEST_SILENT_VISITOR_TTL".to_owned(), "1".to_owned()),
        ("CONVERSATION_EMPTY_TTL".to_owned(), "1".to_owned()),
    ]);
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
            || conversations
                .get_conversation(conv::GetConversationRequest { conversation_id: id(&looked, "conversationId") })
                .await
                .is_ok()
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(forgotten.is_ok());
    assert!(guests.get_guest(guest_pb::GetGuestRequest { guest_id: id(&wrote, "guestId") }).await.is_ok());
    assert!(
        conversations
            .get_conversation(conv::GetConversationRequest { conversation_id: id(&wrote, "conversationId") })
            .await
            .is_ok()
    );
}

/// Two conversation replicas on one database: exactly one relay publishes, so a staff
/// subscriber sees every message once, whichever replica stored it; when the publishing
/// replica stops, the other takes over and nothing is lost or shown twice.
#[tokio::test]
async fn two_conversation_replicas_publish_each_message_once_and_one_takes_over() {
    use std::collections::HashMap;

    use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
    use jack_proto::delivery::v1 as events;

    let vars = jack_e2e::postgres_databases().await;
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut stack = TestStack::start_with(&pairs).await;
    // A second replica of the conversation service: same database, same delivery.
    let env = stack
        .stack
        .env()
        .clone()
        .with("CONVERSATION_GRPC_ADDR", "127.0.0.1:0")
        .with("CONVERSATION_DELIVERY_URLS", stack.stack.url(jack_e2e::Svc::Delivery))
        .with("CONVERSATION_UPLOAD_URL", stack.stack.url(jack_e2e::Svc::Upload));
    let second = jack_conversation::ConversationServer::build(jack_conversation::Settings::from_env(&env).unwrap())
        .await
        .unwrap();
    let second_url = format!("http://{}", second.local_addr());
    let second_stop = jack_runtime::CancellationToken::new();
    let second_task = tokio::spawn(second.run(second_stop.clone()));
    let mut second_client = ConversationServiceClient::new(
        jack_runtime::grpc::channel(&second_url, WAIT, &stack.credentials(Role::Responder)).unwrap(),
    );

    let filter =
        events::SubscribeRequest { hotel_id: Some("hotel_replicas".into()), messages: true, ..Default::default() };
    let mut staff = stack.delivery().subscribe(filter).await.unwrap().into_inner();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let collect = async |staff: &mut tonic::Streaming<events::Event>,
                         seen: &mut HashMap<String, u32>,
                         distinct: usize| {
        while seen.len() < distinct {
            let event = tokio::time::timeout(WAIT, staff.message()).await.expect("events in time").unwrap().unwrap();
            if let Some(events::event::Kind::Message(m)) = event.kind {
                *seen.entry(m.message_id).or_default() += 1;
            }
        }
    };

    // Guest messages through the edge (stored by the first replica), butler messages through
    // the second: each reaches the subscriber once.
    let mut guest = stack.guest("hotel_replicas").await;
    let identified = guest.identify(json!({"visitorId": "v_replicas"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let say = |n: u32| conv::SendMessageRequest {
        conversation_id: conversation_id.clone(),
        role: conv::Role::Assistant as i32,
        content: format!("answer {n}"),
        client_message_id: Some(format!("a{n}")),
        ..Default::default()
    };
    for n in 0..5 {
        guest.say(&format!("g{n}"), &format!("question {n}")).await;
        second_client.send_message(say(n)).await.unwrap();
    }
    collect(&mut staff, &mut seen, 10).await;
    // Long enough for a second publisher's poll to have sent everything again.
    let late = tokio::time::timeout(std::time::Duration::from_secs(3), staff.message()).await;
    assert!(late.is_err(), "nothing more after the ten messages: {late:?}");
    assert!(seen.values().all(|n| *n == 1), "each message once: {seen:?}");
    assert_eq!(jack_e2e::relay_lock_holders(&vars).await, 1, "one replica holds the relay lock");

    // While the leader is kept busy (typing through it all the time), a read receipt stored
    // by the other replica still reaches the guest.
    let busy = tokio::spawn({
        let mut leader = stack.conversation_as(Role::Responder);
        let conversation_id = conversation_id.clone();
        async move {
            loop {
                let typing = conv::SetTypingRequest {
                    conversation_id: conversation_id.clone(),
                    role: conv::Role::Assistant as i32,
                    is_typing: true,
                };
                let _ = leader.set_typing(typing).await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    });
    let read = conv::MarkReadRequest {
        conversation_id: conversation_id.clone(),
        role: conv::Role::Assistant as i32,
        up_to_seq: 9,
        ..Default::default()
    };
    second_client.mark_read(read).await.unwrap();
    let receipt = guest.until(|f| f["type"] == "read").await;
    assert_eq!(receipt["upToSeq"], 9);
    busy.abort();

    // The first replica (which took the relay lock first) stops; the second takes over.
    stack.stop(jack_e2e::Svc::Conversation).await;
    let started = std::time::Instant::now();
    while jack_e2e::relay_lock_holders(&vars).await != 1 {
        assert!(started.elapsed() < WAIT, "the second replica takes the relay lock");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for n in 5..8 {
        second_client.send_message(say(n)).await.unwrap();
    }
    collect(&mut staff, &mut seen, 13).await;
    assert!(seen.values().all(|n| *n == 1), "each message once: {seen:?}");
    // The guest saw every answer once, in order.
    assert_eq!(guest.butler_contents(8).await, (0..8).map(|n| format!("answer {n}")).collect::<Vec<_>>());
    second_stop.cancel();
    second_task.await.unwrap().unwrap();
}

/// Readiness follows the database: a guest service whose PostgreSQL stops taking connections
/// reads NOT_SERVING (a balancer stops sending it work) and SERVING again once the database is
/// back; liveness (the empty service name) stays SERVING throughout, so nothing restarts it.
#[tokio::test]
async fn readiness_follows_the_database_and_liveness_does_not() {
    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let vars = jack_e2e::postgres_databases().await;
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let stack = TestStack::start_with(&pairs).await;
    let guest_db =
        vars.iter().find(|(k, _)| k == "GUEST_DATABASE_URL").unwrap().1.rsplit_once('/').unwrap().1.to_owned();
    let mut health = HealthClient::new(
        jack_runtime::grpc::channel(
            &stack.stack.url(jack_e2e::Svc::Guest),
            WAIT,
            &jack_runtime::grpc::Credentials::none(),
        )
        .unwrap(),
    );
    let status = async |health: &mut HealthClient<jack_runtime::grpc::Traced>, service: &str| {
        health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status
    };
    let wait_for = async |health: &mut HealthClient<jack_runtime::grpc::Traced>, wanted: ServingStatus| {
        let started = std::time::Instant::now();
        while status(health, "jack.guest.v1.GuestService").await != wanted as i32 {
            assert!(started.elapsed() < WAIT * 2, "readiness never became {wanted:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    wait_for(&mut health, ServingStatus::Serving).await;

    let admin = std::env::var("JACK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    let sql = |text: String| sqlx::query(sqlx::AssertSqlSafe(text));
    sql(format!("ALTER DATABASE {guest_db} WITH ALLOW_CONNECTIONS false")).execute(&mut admin).await.unwrap();
    sql(format!("SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE datname = '{guest_db}'"))
        .execute(&mut admin)
        .await
        .unwrap();
    wait_for(&mut health, ServingStatus::NotServing).await;
    assert_eq!(status(&mut health, "").await, ServingStatus::Serving as i32, "liveness does not follow the database");

    sql(format!("ALTER DATABASE {guest_db} WITH ALLOW_CONNECTIONS true")).execute(&mut admin).await.unwrap();
    wait_for(&mut health, ServingStatus::Serving).await;
}

/// A managed PostgreSQL wants TLS (`sslmode=require`): every service reaches it so. (The
/// machine's server offers TLS; `pg_stat_ssl` says whether a session uses it.)
#[tokio::test]
async fn the_services_reach_postgresql_over_tls_when_the_url_asks() {
    let vars: Vec<(String, String)> =
        jack_e2e::postgres_databases().await.into_iter().map(|(k, v)| (k, format!("{v}?sslmode=require"))).collect();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let stack = TestStack::start_with(&pairs).await;
    let mut guest = stack.guest("hotel_tls").await;
    guest.identify(json!({"visitorId": "v_tls"})).await;
    assert_eq!(guest.say("t1", "over TLS").await["type"], "message_ack");

    let (_, conversation_url) = vars.iter().find(|(k, _)| k == "CONVERSATION_DATABASE_URL").unwrap();
    let database = conversation_url.rsplit_once('/').unwrap().1.split('?').next().unwrap().to_owned();
    let admin = std::env::var("JACK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    let query = format!(
        "SELECT count(*) FILTER (WHERE NOT s.ssl) AS plain, count(*) AS total FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.datname = '{database}'"
    );
    let row: (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(query)).fetch_one(&mut admin).await.unwrap();
    assert!(row.1 > 0, "the conversation service holds connections");
    assert_eq!(row.0, 0, "every one of them over TLS");
}
