//! The relay: hands committed events to delivery until delivery accepts them.
//!
//! Messages are their own outbox: the relay publishes them in `position` order after its
//! stored cursor, and moves the cursor only once delivery answered. Other durable events
//! (read receipts) come from the outbox table, deleted once published. The relay wakes when
//! a transaction commits (and polls once a second, for rows another replica of this service
//! wrote). After a crash it resends from the stored cursor; edges drop seqs they already
//! sent, so a resend is harmless. Typing is ephemeral: it rides along best effort.

use std::sync::Arc;
use std::time::Duration;

use jack_proto::delivery::v1 as events;
use jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;
use jack_runtime::grpc::Traced;
use jack_runtime::CancellationToken;
use tokio::sync::{Notify, mpsc};

use crate::store::{Store, event_for};

const BATCH: u32 = 500;
/// How often, at most, the relay stores its cursor while busy.
const CURSOR_EVERY: Duration = Duration::from_millis(500);
const EPHEMERAL_QUEUE: usize = 4096;

/// What the API uses to reach the relay.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    wake: Arc<Notify>,
    ephemeral: mpsc::Sender<events::Event>,
}

impl RelayHandle {
    /// Something was committed to the outbox.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Publishes an event that is not stored (typing); dropped when delivery is behind.
    pub fn publish_ephemeral(&self, event: events::Event) {
        if self.ephemeral.try_send(event).is_err() {
            tracing::debug!("ephemeral event dropped: relay queue full");
        }
    }
}

pub struct Relay {
    store: Store,
    clients: Vec<DeliveryServiceClient<Traced>>,
    wake: Arc<Notify>,
    ephemeral: mpsc::Receiver<events::Event>,
}

impl Relay {
    pub fn new(store: Store, clients: Vec<DeliveryServiceClient<Traced>>) -> (Self, RelayHandle) {
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(EPHEMERAL_QUEUE);
        let handle = RelayHandle { wake: wake.clone(), ephemeral: tx };
        (Self { store, clients, wake, ephemeral: rx }, handle)
    }

    /// Runs until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut cursor = loop {
            match self.store.relay_cursor().await {
                Ok(cursor) => break cursor,
                Err(err) => {
                    tracing::warn!(error = %err, "relay cursor unreadable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        };
        let mut target = 0usize;
        let mut stored_at = std::time::Instant::now();
        let mut unstored: Option<i64> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut batch = Vec::new();
            while batch.len() < 256 {
                match self.ephemeral.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            let ephemeral = batch.len();
            let messages = match self.store.messages_after_position(cursor, &[], None, BATCH).await {
                Ok((messages, _)) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "message read failed");
                    Vec::new()
                }
            };
            let message_cursor = messages.last().map(|(p, _)| *p);
            batch.extend(messages.into_iter().map(|(_, m)| {
                let (conversation, hotel, guest) = (m.conversation_id.clone(), m.hotel_id.clone(), m.guest_id.clone());
                event_for(&conversation, &hotel, &guest, events::event::Kind::Message(m))
            }));
            let rows = match self.store.outbox(BATCH).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox read failed");
                    Vec::new()
                }
            };
            let last_position = rows.last().map(|(p, _)| *p);
            batch.extend(rows.into_iter().map(|(_, e)| e));
            if batch.is_empty() {
                // Idle: store the cursor now rather than leave it behind.
                if let Some(position) = unstored.take() {
                    if self.store.set_relay_cursor(position).await.is_err() {
                        unstored = Some(position);
                    }
                    stored_at = std::time::Instant::now();
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    Some(event) = self.ephemeral.recv() => self.publish_best_effort(&mut target, event).await,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            match self.publish(&mut target, batch).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    if let Some(position) = message_cursor {
                        cursor = position;
                        // Stored at most every CURSOR_EVERY: each store is a commit that the
                        // message writer would wait for. After a crash the relay resends at
                        // most that much again, which edges drop.
                        if stored_at.elapsed() >= CURSOR_EVERY {
                            stored_at = std::time::Instant::now();
                            if let Err(err) = self.store.set_relay_cursor(position).await {
                                tracing::warn!(error = %err, "relay cursor not stored");
                            }
                        } else {
                            unstored = Some(position);
                        }
                    }
                    if let Some(position) = last_position
                        && let Err(err) = self.store.outbox_done(position).await {
                            tracing::warn!(error = %err, "outbox cleanup failed");
                        }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), ephemeral, "publish to delivery failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Publishes to one delivery replica; on failure the next attempt goes to the next one.
    async fn publish(&self, target: &mut usize, events: Vec<events::Event>) -> Result<(), jack_proto::tonic::Status> {
        let mut client = self.clients[*target % self.clients.len()].clone();
        let result = client.publish(events::PublishRequest { events }).await;
        if result.is_err() {
            *target = target.wrapping_add(1);
        }
        result.map(drop)
    }

    async fn publish_best_effort(&self, target: &mut usize, event: events::Event) {
        if let Err(status) = self.publish(target, vec![event]).await {
            tracing::debug!(code = ?status.code(), "ephemeral event not delivered");
        }
    }
}
