//! Group commit: one task writes messages, taking every request that queued up while the
//! previous transaction was committing into the next one. Under load many messages share one
//! commit (one disk sync); when idle a message is committed alone, at once.

use jack_proto::conversation::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::error::ConversationError;
use crate::relay::Handoff;
use crate::store::{Added, Store};

/// At most this many messages share one transaction (one INSERT statement's worth).
const MAX_BATCH: usize = 128;
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Added, ConversationError>>;

#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<(pb::Message, Option<String>, Reply)>,
}

impl Writer {
    /// Starts the writer on a thread of its own; it ends when every `Writer` handle is
    /// dropped.
    ///
    /// Every message waits for this one task, so it does not share the service's runtime:
    /// there, each time SQLite's thread woke it, the wake-up queued behind every other task
    /// (under `jack up`, thousands of WebSocket sessions and HTTP/2 connections), and at the
    /// chat ceiling a full batch took twice as long as one a few messages smaller. On its own
    /// thread the operating system runs it as soon as it is woken.
    pub fn start(store: Store, on_commit: impl Fn(Handoff) + Send + 'static) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new()
            .name("message-writer".into())
            .spawn(move || runtime.block_on(run(store, rx, on_commit)))?;
        Ok(Self { queue: tx })
    }

    /// Commits a message (see [`Store::add_messages`]).
    pub async fn add(&self, message: pb::Message, owner: Option<String>) -> Result<Added, ConversationError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((message, owner, reply)).await.map_err(|_| ConversationError::ShuttingDown)?;
        answer.await.map_err(|_| ConversationError::ShuttingDown)?
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<(pb::Message, Option<String>, Reply)>, on_commit: impl Fn(Handoff)) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The last position taken by this writer's batches, while they follow each other.
    let mut chain: Option<i64> = None;
    // The write connection, kept while batches follow each other.
    let mut held = None;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (items, replies): (Vec<_>, Vec<_>) = batch.drain(..).map(|(m, owner, reply)| ((m, owner), reply)).unzip();
        let started = std::time::Instant::now();
        let outcome = store.add_messages_holding(items, &mut held).await;
        tracing::debug!(size = replies.len(), micros = started.elapsed().as_micros() as u64, "message batch");
        match outcome {
            Ok(committed) => {
                if !committed.messages.is_empty() {
                    let after = match (chain, committed.span) {
                        (Some(last), Some((first, _))) if first == last + 1 => Some(last),
                        _ => None,
                    };
                    chain = committed.span.map(|(_, through)| through);
                    on_commit(Handoff { messages: committed.messages, after, through: chain });
                }
                for (reply, result) in replies.into_iter().zip(committed.results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                // What a failed transaction did to the positions is not known.
                chain = None;
                tracing::error!(error = %err, size = replies.len(), "message batch failed");
                for reply in replies {
                    let _ = reply.send(Err(ConversationError::Unavailable));
                }
            }
        }
        if rx.is_empty() {
            // Nothing follows: give the connection back for the service's other writes.
            held = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{guest_message, sqlite_store};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_lets_other_writes_in_while_messages_keep_coming() {
        let (store, _dir) = sqlite_store().await;
        let c = store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap().conversation_id;
        let writer = Writer::start(store.clone(), |_| {}).unwrap();
        // Guests keep the writer busy, batch after batch, so it keeps its connection…
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for s in 0..16 {
            let (writer, c, stop) = (writer.clone(), c.clone(), stop.clone());
            senders.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (m, owner) = guest_message(&c, &format!("s{s}-{sent}"), "busy");
                    writer.add(m, owner).await.unwrap();
                    sent += 1;
                }
                sent
            }));
        }
        // …and meanwhile new guests still get their conversations (a write of their own).
        for g in 0..20 {
            let created = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                store.active_conversation("h", &format!("other-{g}"), "webchat", true),
            )
            .await;
            assert!(matches!(created, Ok(Ok(Some(_)))), "a new conversation waited behind the message writer");
        }
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for s in senders {
            total += s.await.unwrap();
        }
        // Every message the writer acknowledged is stored once, numbered without a gap.
        let (stored, more) = store.list_messages(&c, Some(0), None, 10_000).await.unwrap();
        assert!(!more);
        assert_eq!(stored.len() as u64, total);
        assert!(stored.iter().enumerate().all(|(i, m)| m.seq == i as i64 + 1));
    }
}
