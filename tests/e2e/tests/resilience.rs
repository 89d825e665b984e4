//! Processes die at the wrong moment: no committed message is lost or duplicated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use jack_e2e::{Svc, TestStack, WAIT};
use serde_json::{Value, json};

fn butler_contents(messages: &[Value]) -> Vec<String> {
    messages.iter().filter(|m| m["role"] == "assistant").map(|m| m["content"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn killing_and_restarting_delivery_loses_no_committed_message() {
    let mut stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let conversation_id =
        guest.identify(json!({"visitorId": "v_delivery_dies"})).await["conversationId"].as_str().unwrap().to_owned();
    stack.assistant_says(&conversation_id, "before").await;
    guest.until(|f| f["content"] == "before").await;

    stack.stop(Svc::Delivery).await;
    // Committed while delivery is down: they wait in conversation's outbox.
    for i in 1..=3 {
        stack.assistant_says(&conversation_id, &format!("during {i}")).await;
    }
    // The guest can still talk: conversation stores and acks without delivery.
    let ack = guest.say("g1", "are you there?").await;
    assert_eq!(ack["type"], "message_ack");

    stack.restart(Svc::Delivery).await;
    stack.wait_delivery_streams(1).await;
    stack.assistant_says(&conversation_id, "after").await;
    guest.until(|f| f["content"] == "after").await;
    assert_eq!(butler_contents(&guest.seen_messages()), ["during 1", "during 2", "during 3"]);
}

#[tokio::test]
async fn killing_and_restarting_conversation_loses_no_committed_message() {
    let mut stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_conversation_dies"})).await;
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    let first = guest.say("k1", "one").await;

    stack.stop(Svc::Conversation).await;
    // A backend that is down: a retryable error, at once, and the socket stays open.
    let refused = guest.say("k2", "two").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "UNAVAILABLE");
    assert_eq!(refused["retryable"], true);

    stack.restart(Svc::Conversation).await;
    // The widget resends the unacked message with the same id once it can.
    let ack = guest.say("k2", "two").await;
    assert_eq!(ack["type"], "message_ack");
    assert_eq!(ack["seq"], first["seq"].as_i64().unwrap() + 1);
    stack.assistant_says(&conversation_id, "still here").await;
    guest.until(|f| f["content"] == "still here").await;
    assert!(
        guest.seen_messages().iter().all(|m| m["role"] == "assistant"),
        "no echo of its own messages: {:?}",
        guest.seen
    );
}

#[tokio::test]
async fn a_guest_whose_edge_restarts_resumes_exactly_once() {
    let mut stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let identified = guest.identify(json!({"visitorId": "v_edge_dies"})).await;
    let token = identified["visitorToken"].as_str().unwrap().to_owned();
    let conversation_id = identified["conversationId"].as_str().unwrap().to_owned();
    stack.assistant_says(&conversation_id, "one").await;
    let one = guest.until(|f| f["content"] == "one").await;

    stack.stop(Svc::Edge).await;
    let close = guest.closed().await.expect("edge says goodbye");
    assert_eq!(u16::from(close.code), 1001);
    stack.assistant_says(&conversation_id, "two").await;
    stack.assistant_says(&conversation_id, "three").await;
    stack.restart(Svc::Edge).await;
    stack.wait_delivery_streams(1).await;

    let mut guest = stack.guest("hotel_1").await;
    guest.identify(json!({"visitorId": "v_edge_dies", "visitorToken": token, "lastSeq": one["seq"]})).await;
    stack.assistant_says(&conversation_id, "four").await;
    guest.until(|f| f["content"] == "four").await;
    assert_eq!(butler_contents(&guest.seen_messages()), ["two", "three"]);
}

/// A TCP proxy that can hold its traffic, both ways, with its connections left open: a network
/// path that stops passing packets (the target is set once the stack has bound it).
struct Stall {
    addr: std::net::SocketAddr,
    target: tokio::sync::watch::Sender<Option<std::net::SocketAddr>>,
    held: tokio::sync::watch::Sender<bool>,
    /// Connections accepted so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Stall {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (target, targets) = tokio::sync::watch::channel(None);
        let (held, holds) = tokio::sync::watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (mut targets, holds) = (targets.clone(), holds.clone());
                tokio::spawn(async move {
                    let Ok(to) = targets.wait_for(Option::is_some).await.map(|t| t.unwrap()) else { return };
                    let Ok(outbound) = tokio::net::TcpStream::connect(to).await else { return };
                    let ((from_in, to_in), (from_out, to_out)) = (inbound.into_split(), outbound.into_split());
                    tokio::join!(Self::pass(from_in, to_out, holds.clone()), Self::pass(from_out, to_in, holds));
                });
            }
        });
        Self { addr, target, held, accepted }
    }

    async fn pass(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut held: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut buf = vec![0; 16 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if held.wait_for(|held| !held).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    }
}

/// A conversation service that stops answering (the path to it passes nothing, its connections
/// stay open) costs the guest a retryable error after the edge's deadline, not a hang; once it
/// answers again, the resend is acknowledged and the message is stored once. The edge's own
/// deadline gave up, not a dead connection: it opens no new connection (HTTP/2 keep-alive
/// would have dropped the held one only after 10 s).
#[tokio::test]
async fn a_conversation_service_that_stops_answering_costs_a_retryable_error_and_the_resend_is_stored_once() {
    let stall = Stall::start().await;
    let stack = TestStack::start_with(&[("EDGE_CONVERSATION_URL", &format!("http://{}", stall.addr))]).await;
    stall.target.send_replace(Some(stack.stack.addr(Svc::Conversation)));
    let mut guest = stack.guest("hotel_1").await;
    let conversation_id =
        guest.identify(json!({"visitorId": "v_stalled"})).await["conversationId"].as_str().unwrap().to_owned();
    let first = guest.say("s1", "one").await;
    assert_eq!(first["type"], "message_ack");
    let connections = stall.accepted.load(Ordering::SeqCst);

    stall.held.send_replace(true);
    let refused = guest.say("s2", "two").await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str(), refused["retryable"].as_bool()),
        (Some("error"), Some("UNAVAILABLE"), Some(true)),
        "{refused}"
    );

    stall.held.send_replace(false);
    let ack = guest.say("s2", "two").await;
    assert_eq!(ack["type"], "message_ack", "{ack}");
    assert_eq!(ack["seq"], first["seq"].as_i64().unwrap() + 1);
    let third = guest.say("s3", "three").await;
    assert_eq!(third["seq"], first["seq"].as_i64().unwrap() + 2, "{third}");
    let request =
        jack_proto::conversation::v1::ListMessagesRequest { conversation_id, after_seq: Some(0), ..Default::default() };
    let stored: Vec<String> = stack
        .conversation()
        .list_messages(request)
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .filter(|m| m.role == jack_proto::conversation::v1::Role::Guest as i32)
        .map(|m| m.content)
        .collect();
    assert_eq!(stored, ["one", "two", "three"]);
    assert_eq!(stall.accepted.load(Ordering::SeqCst), connections, "the edge kept its connections to conversation");
}

/// Conversation stops while guests' messages are on their way to it: every message is
/// answered — acknowledged, or refused with a retryable error — and once it is back, every
/// acknowledged message is stored, a resend of every refused one is stored, each exactly once.
#[tokio::test]
async fn conversation_stopping_under_traffic_answers_every_message_and_loses_none() {
    const GUESTS: usize = 20;
    const EACH: usize = 10;
    // Twenty guests behind one address send at once: its message budget is off here.
    let mut stack = TestStack::start_with(&[("EDGE_MESSAGES_PER_IP", "0")]).await;
    let mut guests = Vec::new();
    for g in 0..GUESTS {
        let mut guest = stack.guest("hotel_1").await;
        let conversation_id = guest.identify(json!({"visitorId": format!("v_busy_{g}")})).await["conversationId"]
            .as_str()
            .unwrap()
            .to_owned();
        guests.push((guest, conversation_id));
    }
    // Every guest sends all its messages at once; conversation stops once half of them have
    // and the first answer is back, while the rest of theirs wait at the edge or are on their
    // way (a session passes a guest's next message on once the last one is answered).
    let mut answered = vec![std::collections::HashSet::new(); GUESTS];
    let mut refused = Vec::new();
    let mut note = |g: usize, f: &Value, answered: &mut std::collections::HashSet<String>| {
        if f["type"] == "message_ack" || f["type"] == "error" {
            let id = f["clientMessageId"].as_str().unwrap_or_default().to_owned();
            if f["type"] == "error" {
                assert_eq!((f["code"].as_str(), f["retryable"].as_bool()), (Some("UNAVAILABLE"), Some(true)), "{f}");
                refused.push((g, id.clone()));
            }
            assert!(answered.insert(id), "one answer per message: {f}");
        }
        answered.len()
    };
    for g in 0..GUESTS {
        if g == GUESTS / 2 {
            guests[0].0.until(|f| note(0, f, &mut answered[0]) > 0).await;
            stack.stop(Svc::Conversation).await;
        }
        for k in 0..EACH {
            guests[g]
                .0
                .send(json!({"type": "message", "clientMessageId": format!("m{k}"), "content": format!("m{k}")}))
                .await;
        }
    }
    for (g, (guest, _)) in guests.iter_mut().enumerate() {
        if answered[g].len() < EACH {
            guest.until(|f| note(g, f, &mut answered[g]) == EACH).await;
        }
    }

    stack.restart(Svc::Conversation).await;
    for (g, id) in &refused {
        let ack = guests[*g].0.say(id, id).await;
        assert_eq!(ack["type"], "message_ack", "{ack}");
    }
    for (_, conversation_id) in &guests {
        let request = jack_proto::conversation::v1::ListMessagesRequest {
            conversation_id: conversation_id.clone(),
            after_seq: Some(0),
            ..Default::default()
        };
        let stored = stack.conversation().list_messages(request).await.unwrap().into_inner().messages;
        let mut contents: Vec<String> = stored
            .iter()
            .filter(|m| m.role == jack_proto::conversation::v1::Role::Guest as i32)
            .map(|m| m.content.clone())
            .collect();
        contents.sort_by_key(|c| c[1..].parse::<usize>().unwrap());
        let expected: Vec<String> = (0..EACH).map(|k| format!("m{k}")).collect();
        assert_eq!(contents, expected, "each message stored exactly once");
        let seqs: Vec<i64> = stored.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=stored.len() as i64).collect::<Vec<_>>(), "seqs without gaps");
    }
    eprintln!("{} of {} messages were refused while conversation stopped", refused.len(), GUESTS * EACH);
}

/// While a storm of reconnecting guests keeps the edge's threads busy, a responder's reply is
/// still stored and answered at once (the edge runs on threads of its own in `jack up`, as in
/// a deployment of separate processes), and the guest gets it once the edge has a thread again.
#[tokio::test]
async fn the_responder_is_answered_while_every_edge_thread_is_busy() {
    let stack = TestStack::start().await;
    let mut guest = stack.guest("hotel_1").await;
    let conversation_id =
        guest.identify(json!({"visitorId": "v_edge_busy"})).await["conversationId"].as_str().unwrap().to_owned();

    // Hold every one of the edge's workers until the gate opens.
    let edge = stack.stack.edge_runtime().clone();
    let workers = edge.metrics().num_workers();
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let held = Arc::new(AtomicUsize::new(0));
    for _ in 0..workers {
        let (gate, held) = (gate.clone(), held.clone());
        edge.spawn(async move {
            held.fetch_add(1, Ordering::SeqCst);
            let (open, opened) = &*gate;
            drop(opened.wait_while(open.lock().unwrap(), |open| !*open).unwrap());
        });
    }
    let all_held = async {
        while held.load(Ordering::SeqCst) < workers {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, all_held).await.expect("every edge worker taken");
    // The edge is stuck: a new guest is not even greeted.
    let stuck = tokio::time::timeout(Duration::from_millis(500), stack.guest("hotel_1")).await;
    assert!(stuck.is_err(), "the edge answered while all its threads were held");

    let reply = tokio::time::timeout(WAIT, stack.assistant_says(&conversation_id, "towels are on the way"))
        .await
        .expect("the responder is answered while the edge is busy");
    assert_eq!(reply.content, "towels are on the way");

    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    let received = guest.until(|f| f["type"] == "message" && f["role"] == "assistant").await;
    assert_eq!(received["content"], "towels are on the way");
    assert_eq!(received["seq"], reply.seq);
}

/// An edge that is stopped (SIGTERM) stops taking connections at once, keeps its guests'
/// live messages flowing, and tells them to reconnect (1001) spread over `EDGE_DRAIN_MS`,
/// so that the other edges take them back gradually: after the first guest is told, others
/// are still connected and still get what the butler sends.
#[tokio::test]
async fn a_stopping_edge_closes_its_guests_spread_over_the_drain() {
    let mut stack = TestStack::start_with(&[("EDGE_DRAIN_MS", "3000")]).await;
    let mut guests = Vec::new();
    let mut conversations = Vec::new();
    for i in 0..12 {
        let mut guest = stack.guest("hotel_drain").await;
        let identified = guest.identify(json!({"visitorId": format!("v_drain_{i}")})).await;
        conversations.push(identified["conversationId"].as_str().unwrap().to_owned());
        guests.push(guest);
    }
    let url = stack.ws_url("hotel_drain");
    let conversation = stack.conversation();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let watched: Vec<_> = guests
        .into_iter()
        .map(|guest| {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let outcome = guest.frames_until_closed().await;
                let _ = closed_tx.send(());
                outcome
            })
        })
        .collect();
    let stopping = async {
        stack.stop(Svc::Edge).await;
    };
    let during = async {
        // Once the first guest has been told to go, the others still get live messages.
        closed.recv().await.expect("a guest is closed");
        for id in &conversations {
            let request = jack_proto::conversation::v1::SendMessageRequest {
                conversation_id: id.clone(),
                role: jack_proto::conversation::v1::Role::Assistant as i32,
                content: "Before you go".into(),
                ..Default::default()
            };
            conversation.clone().send_message(request).await.unwrap();
        }
        // New guests go elsewhere.
        jack_e2e::Guest::try_connect(&url, Duration::from_secs(1)).await.is_none()
    };
    let ((), refused) = tokio::join!(stopping, during);
    assert!(refused, "a stopping edge takes no new connection");
    let mut got_live = 0;
    for task in watched {
        let (frames, close) = task.await.unwrap();
        let close = close.expect("a close frame");
        assert_eq!(u16::from(close.code), 1001, "{close:?}");
        got_live += usize::from(frames.iter().any(|f| f["content"] == "Before you go"));
    }
    assert!(got_live > 0, "guests not yet told to go get live messages after the first was: the closes are spread");
}
