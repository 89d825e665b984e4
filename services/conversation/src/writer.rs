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
    /// Starts the writing task; it ends when every `Writer` handle is dropped.
    pub fn start(store: Store, on_commit: impl Fn(Handoff) + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, rx, on_commit));
        Self { queue: tx }
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
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (items, replies): (Vec<_>, Vec<_>) = batch.drain(..).map(|(m, owner, reply)| ((m, owner), reply)).unzip();
        let started = std::time::Instant::now();
        let outcome = store.add_messages(items).await;
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
    }
}
