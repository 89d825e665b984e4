//! What one address on the internet can try against the public listeners, and what it gets:
//! connections that send nothing or trickle, WebSockets that never identify or send what is
//! not protocol v1. Each is closed or refused with a clear code, and costs the edge nothing
//! lasting.

use std::time::Duration;

use jack_e2e::{Data, OpCode, TestStack, WAIT, http, json_body};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Reads until the server closes the connection; whether it did within [`WAIT`].
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut sink)).await.is_ok()
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_on_both_public_listeners() {
    let stack = TestStack::start_with(&[("EDGE_HEADER_TIMEOUT_MS", "300"), ("UPLOAD_HEADER_TIMEOUT_MS", "300")]).await;
    for addr in [stack.stack.addr(jack_e2e::Svc::Edge), stack.stack.upload_http_addr()] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut silent).await, "{addr}: a silent connection is closed");
    }
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    let stack = TestStack::start_with(&[("EDGE_HEADER_TIMEOUT_MS", "500")]).await;
    let mut socket = TcpStream::connect(stack.stack.addr(jack_e2e::Svc::Edge)).await.unwrap();
    let trickle = async {
        for byte in b"GET /ws/chat?hotelId=hotel_1 HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
            if socket.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(tokio::time::timeout(WAIT, trickle).await.is_ok(), "the edge hangs up on a slowloris request");
}

#[tokio::test]
async fn a_websocket_that_never_identifies_is_closed_with_4008() {
    let stack = TestStack::start_with(&[("EDGE_IDENTIFY_TIMEOUT_MS", "300")]).await;
    let guest = stack.guest("hotel_1").await;
    let close = guest.closed().await.expect("a close frame");
    assert_eq!((u16::from(close.code), close.reason.as_str()), (4008, "Not identified in time"));
    // An identified guest stays.
    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_in_time"})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(guest.say("still", "still here").await["type"], "message_ack");
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    guest.send_frame(OpCode::Data(Data::Text), b"{\"type\":\"typing\",\"isTyping\":\xff}").await;
    let close = guest.closed().await.expect("a close frame, not a dropped connection");
    assert_eq!(u16::from(close.code), 1007);
}

#[tokio::test]
async fn binary_frames_spend_from_the_rate_limit_like_any_frame() {
    let stack = TestStack::start_with(&[("EDGE_RATE_LIMIT", "5")]).await;
    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_binary"})).await;
    for _ in 0..40 {
        guest.send_frame(OpCode::Data(Data::Binary), &[0u8; 64]).await;
    }
    let answer = guest.say("after_binary", "hello").await;
    assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some("RATE_LIMITED")), "{answer}");
    let errors = guest.seen.iter().filter(|f| f["code"] == "INVALID_JSON").count();
    assert!(errors <= 10, "beyond the burst, binary frames go unanswered: {errors} answers");
}

#[tokio::test]
async fn oversized_or_slow_http_requests_are_refused() {
    let stack = TestStack::start_with(&[("EDGE_REQUEST_TIMEOUT_MS", "500")]).await;
    let mut guest = stack.guest("hotel_1").await;
    let token = guest.identify(json!({"visitorId": "v_http"})).await["visitorToken"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {token}");
    // A body far beyond what the JSON endpoints take.
    let big = format!(r#"{{"filename":"a.png","contentType":"image/png","size":10,"pad":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, _) = http(&stack.http_base(), "POST", "/chat/upload-url", &[("Authorization", &auth)], &big).await;
    assert_eq!(status, 413);
    // A body that never comes.
    let (status, response) = http(&stack.http_base(), "POST", "/chat/upload-url", &[("Authorization", &auth), ("Content-Length", "100")], "{").await;
    assert_eq!(status, 408, "{}", json_body(&response));
}
