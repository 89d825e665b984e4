//! Memory that a slow or hostile client can make the services hold, measured as the peak
//! resident size of this test process (which runs the whole stack): bounded per connection
//! whatever the history and however slowly the client reads. Tests here take turns, so that
//! one's peak is not another's.

use jack_e2e::{Guest, TestStack};
use serde_json::json;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1 << 20;

/// The peak resident size so far (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("a size in kB") * 1024
}

/// Starts a new peak from the current resident size.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("the peak resident size can be reset");
}

#[tokio::test]
async fn guests_who_replay_a_long_history_without_reading_cost_a_page_each() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Stalled readers are dropped after the write timeout; these ones are read on afterwards.
    let stack = TestStack::start_with(&[("EDGE_WRITE_TIMEOUT_MS", "120000")]).await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_long_history"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    // 25 MiB of history: 6,400 answers of 4 KiB.
    let long = "y".repeat(4 * 1024);
    for _ in 0..100 {
        futures_util::future::join_all((0..64).map(|_| stack.assistant_says(&conversation_id, &long))).await;
    }
    guest.close().await;

    reset_peak();
    let before = peak_rss();
    // Ten connections resume from the start, each reading only its first frame (with a small
    // receive buffer, so that what the edge sends beyond it waits on the edge's side).
    let mut readers = Vec::new();
    for _ in 0..10 {
        let mut reader = Guest::open_slow_reader(&stack.ws_url("hotel_1")).await;
        assert_eq!(reader.next().await["type"], "connected");
        reader
            .send(json!({"type": "identify", "visitorId": "v_long_history", "visitorToken": token, "lastSeq": 0}))
            .await;
        assert_eq!(reader.next().await["type"], "history");
        readers.push(reader);
    }
    let grown = peak_rss().saturating_sub(before);
    // Held all at once, ten copies of the history would be 250 MiB and more; a page each is
    // a few MiB (the rest is the allocator's and the database's own).
    assert!(grown < 160 * MIB, "ten stalled replays of 25 MiB grew the process by {} MiB", grown / MIB);

    // One reads on: it sees every message once, in order, then `identified`.
    readers.truncate(1);
    futures_util::future::join_all(readers.into_iter().map(|mut reader| async move {
        let mut seqs: Vec<u64> = Vec::new();
        loop {
            let frame = reader.next().await;
            match frame["type"].as_str() {
                Some("history") => {
                    seqs.extend(frame["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()))
                }
                Some("identified") => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        // The first page was read above.
        let first = seqs.first().copied().unwrap();
        assert_eq!(seqs, (first..=6_400).collect::<Vec<_>>());
    }))
    .await;
}

/// A socket with a small receive buffer that sends `GET path` and reads the status code only.
async fn stalled_get(addr: std::net::SocketAddr, path: &str) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(jack_e2e::WAIT, stream.read_exact(&mut head)).await.expect("a status line in time").unwrap();
    let status = std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap();
    (status, stream)
}

#[tokio::test]
async fn downloads_that_are_never_read_cost_a_chunk_each_and_are_bounded_in_number() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // All two hundred come from one address: the per-address cap is off to show the global one.
    let stack = TestStack::start_with(&[("UPLOAD_MAX_DOWNLOADS", "32"), ("UPLOAD_MAX_CONNECTIONS_PER_IP", "0")]).await;
    let mut guest = stack.guest("hotel_1").await;
    let token = guest.identify(json!({"visitorId": "v_downloads"})).await["visitorToken"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {token}");
    // A 5 MiB PDF, uploaded and sent as a guest would.
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.resize(5 << 20, b'.');
    let ask = json!({"filename": "big.pdf", "contentType": "application/pdf", "size": pdf.len()}).to_string();
    let (_, answer) =
        jack_e2e::http(&stack.http_base(), "POST", "/chat/upload-url", &[("Authorization", &auth)], &ask).await;
    let answer = jack_e2e::json_body(&answer);
    let (status, _) =
        jack_e2e::request("PUT", answer["uploadUrl"].as_str().unwrap(), &[("Content-Type", "application/pdf")], &pdf)
            .await;
    assert_eq!(status, 200);
    let id = answer["attachmentId"].as_str().unwrap().to_owned();
    guest.send(json!({"type": "message", "clientMessageId": "pdf", "content": "", "attachments": [{"id": id}]})).await;
    assert_eq!(guest.expect("message_ack").await["clientMessageId"], "pdf");
    let ask = json!({"attachmentIds": [id]}).to_string();
    let (_, urls) =
        jack_e2e::http(&stack.http_base(), "POST", "/chat/attachment-urls", &[("Authorization", &auth)], &ask).await;
    let url = jack_e2e::json_body(&urls)["downloads"][0]["url"].as_str().unwrap().to_owned();
    let path = &url[url.find("/files/").unwrap()..];

    reset_peak();
    let before = peak_rss();
    // Two hundred GETs of the file that read nothing past the status line.
    let mut sockets = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..200 {
        let (status, socket) = stalled_get(stack.stack.upload_http_addr(), path).await;
        statuses.push(status);
        sockets.push(socket);
    }
    let grown = peak_rss().saturating_sub(before);
    // Read whole, two hundred copies would be 1 GiB.
    assert!(grown < 128 * MIB, "two hundred unread downloads of 5 MiB grew the process by {} MiB", grown / MIB);
    let sent = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(sent, 32, "as many downloads as allowed at once: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "the others are told to retry: {statuses:?}");
    drop(sockets);

    // Once they are gone, a download goes through whole.
    let fetched = tokio::time::timeout(jack_e2e::WAIT, async {
        loop {
            let (status, _, body) = jack_e2e::fetch(&url).await;
            if status == 200 {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the download slots come back");
    assert!(fetched == pdf, "the file, whole ({} bytes)", fetched.len());
}

/// A 16-bit RGBA PNG of zeros, written row by row: a few hundred KB that decode to
/// `width × height × 8` bytes.
fn huge_png(width: u32, height: u32) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Sixteen);
    encoder.set_compression(png::Compression::Fastest);
    let mut writer = encoder.write_header().unwrap();
    let mut rows = writer.stream_writer().unwrap();
    let row = vec![0u8; width as usize * 8];
    for _ in 0..height {
        rows.write_all(&row).unwrap();
    }
    rows.finish().unwrap();
    writer.finish().unwrap();
    out
}

#[tokio::test]
async fn an_image_that_decodes_to_hundreds_of_megabytes_is_kept_without_a_preview() {
    let png = huge_png(3500, 3500);
    let _turn = ONE_AT_A_TIME.lock().await;
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let token = guest.identify(json!({"visitorId": "v_huge_image"})).await["visitorToken"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {token}");
    let ask = json!({"filename": "huge.png", "contentType": "image/png", "size": png.len()}).to_string();
    let (_, answer) =
        jack_e2e::http(&stack.http_base(), "POST", "/chat/upload-url", &[("Authorization", &auth)], &ask).await;
    let answer = jack_e2e::json_body(&answer);
    let (status, _) =
        jack_e2e::request("PUT", answer["uploadUrl"].as_str().unwrap(), &[("Content-Type", "image/png")], &png).await;
    assert_eq!(status, 200);
    let id = answer["attachmentId"].as_str().unwrap().to_owned();

    reset_peak();
    let before = peak_rss();
    guest.send(json!({"type": "message", "clientMessageId": "huge", "content": "", "attachments": [{"id": id}]})).await;
    let ack = guest.until(|f| f["clientMessageId"] == "huge").await;
    let grown = peak_rss().saturating_sub(before);
    assert_eq!(ack["type"], "message_ack", "the file itself is fine: {ack}");
    // Decoded, it would be 98 MB.
    assert!(grown < 48 * MIB, "verifying a {} KB PNG grew the process by {} MiB", png.len() >> 10, grown / MIB);
    let ask = json!({"attachmentIds": [id]}).to_string();
    let (_, urls) =
        jack_e2e::http(&stack.http_base(), "POST", "/chat/attachment-urls", &[("Authorization", &auth)], &ask).await;
    let download = &jack_e2e::json_body(&urls)["downloads"][0];
    assert!(download["url"].is_string() && download["thumbnailUrl"].is_null(), "kept, without a preview: {download}");
}
