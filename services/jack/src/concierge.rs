//! The demo concierge: a responder that uses only the public `ConversationService` API, the
//! way the AI team's program does. It watches guest messages from a stored cursor (so a
//! restart misses nothing), shows typing, marks messages read and answers with rich
//! messages. Replies carry a client message id derived from the guest message, so answering
//! the same message twice after a crash stores one reply.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jack_proto::conversation::v1 as pb;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use jack_runtime::grpc::Traced;
use jack_runtime::{CancellationToken, grpc};
use tokio::task::JoinSet;

/// Guest messages answered at once.
const IN_FLIGHT: usize = 64;
/// The deadline of each unary call.
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// How long the concierge "types" before answering.
const TYPING_PAUSE: Duration = Duration::from_millis(400);

/// Runs until shutdown, reconnecting when conversation is unreachable.
pub async fn run(
    conversation_url: Vec<String>,
    credentials: grpc::Credentials,
    cursor_file: PathBuf,
    shutdown: CancellationToken,
) {
    // The watch is a long-lived stream; every other call has a deadline. Both go to any
    // replica that answers (one or more URLs, as the edge's).
    let clients = grpc::stream_channel_to(&conversation_url, &credentials)
        .and_then(|s| Ok((s, grpc::channel_to(&conversation_url, CALL_DEADLINE, &credentials)?)));
    let (watcher, caller) = match clients {
        Ok((stream, unary)) => (ConversationServiceClient::new(stream), ConversationServiceClient::new(unary)),
        Err(err) => return tracing::error!(error = %err, "concierge: bad conversation URL"),
    };
    let cursor = Arc::new(Cursor::load(cursor_file));
    while !shutdown.is_cancelled() {
        if let Err(status) = watch(watcher.clone(), caller.clone(), cursor.clone(), &shutdown).await {
            tracing::warn!(code = ?status.code(), "concierge: watch interrupted; resuming from the stored cursor");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

async fn watch(
    mut watcher: ConversationServiceClient<Traced>,
    client: ConversationServiceClient<Traced>,
    cursor: Arc<Cursor>,
    shutdown: &CancellationToken,
) -> Result<(), jack_proto::tonic::Status> {
    let request = pb::WatchMessagesRequest {
        after_cursor: cursor.resume_after(),
        roles: vec![pb::Role::Guest as i32],
        hotel_id: None,
    };
    let mut stream = watcher.watch_messages(request).await?.into_inner();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() >= IN_FLIGHT {
            tasks.join_next().await;
        }
        let next = tokio::select! {
            n = stream.message() => n?,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(event) = next else { return Ok(()) };
        let Some(message) = event.message else { continue };
        cursor.started(event.cursor);
        let (client, cursor) = (client.clone(), cursor.clone());
        tasks.spawn(async move {
            if let Err(status) = answer(client, &message).await {
                tracing::warn!(code = ?status.code(), message_id = %message.message_id, "concierge: could not answer");
            }
            cursor.finished(event.cursor);
        });
    }
}

async fn answer(
    mut client: ConversationServiceClient<Traced>,
    message: &pb::Message,
) -> Result<(), jack_proto::tonic::Status> {
    let conversation_id = message.conversation_id.clone();
    let typing = |is_typing| pb::SetTypingRequest {
        conversation_id: conversation_id.clone(),
        role: pb::Role::Assistant as i32,
        is_typing,
    };
    client
        .mark_read(pb::MarkReadRequest {
            conversation_id: conversation_id.clone(),
            role: pb::Role::Assistant as i32,
            up_to_seq: message.seq,
            guest_id: None,
        })
        .await?;
    client.set_typing(typing(true)).await?;
    tokio::time::sleep(TYPING_PAUSE).await;
    let mut reply = reply_to(message);
    reply.conversation_id = conversation_id.clone();
    reply.role = pb::Role::Assistant as i32;
    reply.client_message_id = Some(format!("concierge:{}", message.message_id));
    let sent = client.send_message(reply).await;
    client.set_typing(typing(false)).await?;
    sent.map(drop)
}

fn quick_replies() -> Vec<pb::QuickReply> {
    [("Room Service", "room_service"), ("Housekeeping", "housekeeping"), ("Concierge", "concierge"), ("Other", "other")]
        .into_iter()
        .map(|(label, payload)| pb::QuickReply { label: label.into(), payload: payload.into() })
        .collect()
}

fn postback(label: &str, payload: &str) -> pb::Button {
    pb::Button { r#type: "postback".into(), label: label.into(), payload: Some(payload.into()), url: None }
}

fn link(label: &str, url: &str) -> pb::Button {
    pb::Button { r#type: "url".into(), label: label.into(), payload: None, url: Some(url.into()) }
}

fn card(title: &str, subtitle: &str, payload: &str) -> pb::Card {
    pb::Card {
        title: title.into(),
        subtitle: Some(subtitle.into()),
        image_url: None,
        buttons: vec![link("View Menu", "https://jack.example/restaurants"), postback("Book Table", payload)],
    }
}

/// What the concierge says to a guest message (conversation, role and id are set by the caller).
pub fn reply_to(message: &pb::Message) -> pb::SendMessageRequest {
    let text = message.content.to_lowercase();
    let payload = message.payload.as_deref().unwrap_or_default();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    let mut reply = pb::SendMessageRequest::default();
    if payload == "housekeeping" || has(&["towel", "housekeeping", "pillow", "clean"]) {
        reply.content = "Of course! I've asked housekeeping to bring **extra towels** to your room. They'll be with you within 15 minutes.".into();
        reply.buttons = vec![postback("Confirm", "confirm_housekeeping"), postback("Add pillows too", "add_pillows")];
    } else if payload == "concierge" || has(&["restaurant", "dinner", "eat", "food nearby", "lunch"]) {
        reply.content = "Here are some restaurants nearby:".into();
        reply.cards = vec![
            card("The Italian Place", "5 min walk • $$$", "book_italian"),
            card("Sushi Garden", "10 min walk • $$", "book_sushi"),
            card("Le Petit Bistro", "8 min walk • $$", "book_bistro"),
        ];
    } else if payload == "room_service" || has(&["room service", "breakfast", "menu", "order"]) {
        reply.content = "Our in-room dining is available around the clock. Would you like to order?".into();
        reply.buttons =
            vec![postback("Order Breakfast", "order_breakfast"), link("View Menu", "https://jack.example/menu")];
    } else if let Some(place) = payload.strip_prefix("book_") {
        reply.content =
            format!("Your table is reserved at **{}** for 8 pm. Enjoy your evening!", restaurant_name(place));
    } else if payload.starts_with("confirm_") || payload == "add_pillows" || payload == "order_breakfast" {
        reply.content = "Done! Is there anything else I can do for you?".into();
        reply.quick_replies = quick_replies();
    } else if message.seq <= 1 || has(&["hello", "hi", "hey", "good morning", "good evening"]) || payload == "other" {
        reply.content = "Hello! I'm Jack, your virtual butler. How can I help you today?".into();
        reply.quick_replies = quick_replies();
    } else {
        reply.content = "Thank you! I've passed this on to our team, and someone will get back to you shortly.".into();
        reply.quick_replies = quick_replies();
    }
    reply
}

fn restaurant_name(key: &str) -> &'static str {
    match key {
        "italian" => "The Italian Place",
        "sushi" => "Sushi Garden",
        _ => "Le Petit Bistro",
    }
}

/// The position the concierge resumes after: below every message still being answered.
struct Cursor {
    file: PathBuf,
    state: Mutex<CursorState>,
}

struct CursorState {
    in_flight: BTreeSet<i64>,
    highest: i64,
}

impl Cursor {
    fn load(file: PathBuf) -> Self {
        let highest = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Self { file, state: Mutex::new(CursorState { in_flight: BTreeSet::new(), highest }) }
    }

    fn resume_after(&self) -> i64 {
        let state = self.state.lock().expect("cursor lock");
        state.in_flight.first().map_or(state.highest, |p| p - 1)
    }

    fn started(&self, position: i64) {
        let mut state = self.state.lock().expect("cursor lock");
        state.in_flight.insert(position);
        state.highest = state.highest.max(position);
    }

    fn finished(&self, position: i64) {
        // Written under the lock, so a slower writer cannot put back an older cursor.
        let mut state = self.state.lock().expect("cursor lock");
        state.in_flight.remove(&position);
        let resume = state.in_flight.first().map_or(state.highest, |p| p - 1);
        let tmp = self.file.with_extension("tmp");
        if std::fs::write(&tmp, resume.to_string()).and_then(|()| std::fs::rename(&tmp, &self.file)).is_err() {
            tracing::warn!(file = %self.file.display(), "concierge: could not store its cursor");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(content: &str, payload: Option<&str>, seq: i64) -> pb::Message {
        pb::Message { content: content.into(), payload: payload.map(Into::into), seq, ..Default::default() }
    }

    #[test]
    fn answers_the_demo_requests() {
        assert_eq!(reply_to(&guest("hi", None, 1)).quick_replies.len(), 4);
        assert_eq!(reply_to(&guest("I need extra towels", None, 1)).buttons.len(), 2);
        assert_eq!(reply_to(&guest("Concierge", Some("concierge"), 3)).cards.len(), 3);
        assert!(reply_to(&guest("Book Table", Some("book_sushi"), 5)).content.contains("Sushi Garden"));
    }
}
