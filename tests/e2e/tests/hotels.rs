//! The hotel registry: where hotels are registered, unknown hotels are refused and each
//! hotel's own allowed origins apply.

use jack_e2e::{Guest, Role, TestStack, upgrade_status};
use jack_proto::guest::v1::{GetHotelPolicyRequest, IdentifyRequest, UpsertHotelRequest};

#[tokio::test]
async fn registered_hotels_have_their_own_origins_and_unknown_hotels_are_closed_with_4004() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hotels.json");
    std::fs::write(&file, r#"[{"hotelId": "grand_hotel", "name": "The Grand", "allowedOrigins": ["https://grand.example"], "identitySecret": "s3cret"}]"#).unwrap();
    let stack = TestStack::start_with(&[("GUEST_HOTELS_FILE", file.to_str().unwrap())]).await;

    let close = Guest::open(&stack.ws_url("no_such_hotel")).await.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4004);

    let path = "/ws/chat?hotelId=grand_hotel";
    assert_eq!(upgrade_status(&stack.http_base(), path, "https://evil.example").await, 403);
    assert_eq!(upgrade_status(&stack.http_base(), path, "https://grand.example").await, 101);
}

#[tokio::test]
async fn the_guest_service_serves_every_hotel_until_one_is_registered_then_only_registered_ones() {
    let stack = TestStack::start().await;
    let (mut guests, mut edge) = (stack.guests(Role::Admin), stack.guests(Role::Edge));
    let identify =
        |hotel_id: &str| IdentifyRequest { hotel_id: hotel_id.into(), channel: "webchat".into(), ..Default::default() };
    let policy = |hotel_id: &str| GetHotelPolicyRequest { hotel_id: hotel_id.into() };

    // No registry: any hotel id is served (protocol v1's original behaviour).
    let open = guests.get_hotel_policy(policy("any_hotel")).await.unwrap().into_inner();
    assert!(!open.registry_enabled && !open.known);
    edge.identify(identify("any_hotel")).await.expect("served without a registry");

    // One hotel registered: it is known and served; every other hotel id is refused.
    let hotel = UpsertHotelRequest {
        hotel_id: "grand_hotel".into(),
        name: "The Grand".into(),
        allowed_origins: vec!["https://grand.example".into()],
        identity_secret: None,
    };
    guests.upsert_hotel(hotel).await.unwrap();
    let known = guests.get_hotel_policy(policy("grand_hotel")).await.unwrap().into_inner();
    assert!(known.registry_enabled && known.known);
    assert_eq!(known.allowed_origins, vec!["https://grand.example".to_owned()]);
    let unknown = guests.get_hotel_policy(policy("any_hotel")).await.unwrap().into_inner();
    assert!(unknown.registry_enabled && !unknown.known);
    assert!(unknown.allowed_origins.is_empty());
    edge.identify(identify("grand_hotel")).await.expect("a registered hotel is served");
    let refused = edge.identify(identify("any_hotel")).await.expect_err("an unregistered hotel is refused");
    assert_eq!(refused.code(), jack_proto::tonic::Code::NotFound);
    assert_eq!(refused.message(), "unknown hotel");
}

#[tokio::test]
async fn a_bad_hotels_file_stops_start_up_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hotels.json");
    std::fs::write(&file, r#"[{"hotelId": "has space"}]"#).unwrap();
    let env = jack_runtime::settings::Env::from_pairs([
        ("GUEST_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("GUEST_DATABASE_URL", format!("sqlite:{}", dir.path().join("g.db").display())),
        ("GUEST_HOTELS_FILE", file.display().to_string()),
        ("GRPC_AUTH", "off".to_owned()),
    ]);
    let settings = jack_guest::Settings::from_env(&env).unwrap();
    let err = jack_guest::GuestServer::build(settings).await.err().expect("refused");
    let line = format!("{err:#}");
    assert!(line.contains("GUEST_HOTELS_FILE") && line.contains("hotelId"), "{line}");
    assert!(!line.contains('\n'));
}
