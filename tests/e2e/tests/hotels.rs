//! The hotel registry: where hotels are registered, unknown hotels are refused and each
//! hotel's own allowed origins apply.

use jack_e2e::{Guest, TestStack, upgrade_status};

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
async fn a_bad_hotels_file_stops_start_up_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hotels.json");
    std::fs::write(&file, r#"[{"hotelId": "has space"}]"#).unwrap();
    let env = jack_runtime::settings::Env::from_pairs([
        ("GUEST_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("GUEST_DATABASE_URL", format!("sqlite:{}", dir.path().join("g.db").display())),
        ("GUEST_HOTELS_FILE", file.display().to_string()),
    ]);
    let settings = jack_guest::Settings::from_env(&env).unwrap();
    let err = jack_guest::GuestServer::build(settings).await.err().expect("refused");
    let line = format!("{err:#}");
    assert!(line.contains("GUEST_HOTELS_FILE") && line.contains("hotelId"), "{line}");
    assert!(!line.contains('\n'));
}
