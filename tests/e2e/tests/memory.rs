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
        reader.send(json!({"type": "identify", "visitorId": "v_long_history", "visitorToken": token, "lastSeq": 0})).await;
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
                Some("history") => seqs.extend(frame["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap())),
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
