//! The relay: hands committed events to delivery until delivery accepts them.
//!
//! Messages are their own outbox: the relay publishes them in `position` order after its
//! cursor, and moves the cursor only once delivery answered. The writer hands the relay each
//! batch it committed, with positions, so in the common case nothing is read back from the
//! database; the relay reads from its cursor instead whenever what it was handed does not
//! follow on from the cursor (at start, after a failed publish, when the handed queue
//! overflowed, when another replica of this service wrote in between) and once a second
//! (rows another replica wrote). Other durable events (read receipts) come from the outbox
//! table, deleted once published. After a crash it resends from the stored cursor; edges
//! drop seqs they already sent, so a resend is harmless. Typing is ephemeral: it rides along
//! best effort.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jack_proto::conversation::v1 as conv;
use jack_proto::delivery::v1 as events;
use jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;
use jack_runtime::grpc::Traced;
use jack_runtime::CancellationToken;
use tokio::sync::{Notify, mpsc};

use crate::store::{Store, event_for};

const BATCH: u32 = 500;
/// How often, at most, the relay stores its cursor while busy.
const CURSOR_EVERY: Duration = Duration::from_millis(500);
/// How often the relay looks for rows it was not handed (another replica's) while idle.
const POLL_EVERY: Duration = Duration::from_secs(1);
const EPHEMERAL_QUEUE: usize = 4096;
/// Committed messages the relay may hold in memory; beyond that it reads them back instead.
const HANDED_MAX: usize = 8192;

/// What the writer hands over: committed messages with their positions, in commit order.
#[derive(Debug, Default)]
struct Handed {
    messages: VecDeque<(i64, conv::Message)>,
    /// Some were dropped (the queue was full): read from the cursor.
    overflowed: bool,
}

/// What the API uses to reach the relay.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    wake: Arc<Notify>,
    ephemeral: mpsc::Sender<events::Event>,
    handed: Arc<Mutex<Handed>>,
    outbox_written: Arc<AtomicBool>,
}

impl RelayHandle {
    /// Something was committed to the outbox table.
    pub fn wake(&self) {
        self.outbox_written.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Messages were committed (with their positions, in commit order).
    pub fn messages_committed(&self, messages: Vec<(i64, conv::Message)>) {
        {
            let mut handed = self.handed.lock().expect("relay queue lock");
            if handed.messages.len() + messages.len() > HANDED_MAX {
                handed.overflowed = true;
            } else {
                handed.messages.extend(messages);
            }
        }
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
    handed: Arc<Mutex<Handed>>,
    outbox_written: Arc<AtomicBool>,
}

impl Relay {
    pub fn new(store: Store, clients: Vec<DeliveryServiceClient<Traced>>) -> (Self, RelayHandle) {
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(EPHEMERAL_QUEUE);
        let handed = Arc::new(Mutex::new(Handed::default()));
        // The outbox may hold rows from before a restart.
        let outbox_written = Arc::new(AtomicBool::new(true));
        let handle = RelayHandle { wake: wake.clone(), ephemeral: tx, handed: handed.clone(), outbox_written: outbox_written.clone() };
        (Self { store, clients, wake, ephemeral: rx, handed, outbox_written }, handle)
    }

    /// The messages to publish next, after `cursor`: what the writer handed over when it
    /// follows on from the cursor, else (or when `read` asks) what the database holds.
    async fn next_messages(&self, cursor: i64, read: bool) -> Vec<(i64, conv::Message)> {
        let (handed, overflowed) = {
            let mut h = self.handed.lock().expect("relay queue lock");
            (std::mem::take(&mut h.messages), std::mem::take(&mut h.overflowed))
        };
        let mut fresh: Vec<_> = handed.into_iter().skip_while(|(p, _)| *p <= cursor).collect();
        if !read && !overflowed {
            if fresh.is_empty() {
                return fresh;
            }
            // One writer's commits take positions that follow each other; anything else
            // (another replica's rows in between, a position lost to a rollback) is read.
            let follows_on = fresh[0].0 == cursor + 1 && fresh.windows(2).all(|w| w[1].0 == w[0].0 + 1);
            if follows_on {
                if fresh.len() > BATCH as usize {
                    let rest = fresh.split_off(BATCH as usize);
                    let mut h = self.handed.lock().expect("relay queue lock");
                    for item in rest.into_iter().rev() {
                        h.messages.push_front(item);
                    }
                }
                return fresh;
            }
        }
        match self.store.messages_after_position(cursor, &[], None, BATCH).await {
            Ok((messages, _)) => {
                if messages.len() == BATCH as usize {
                    // There may be more: read again next time.
                    self.handed.lock().expect("relay queue lock").overflowed = true;
                }
                messages
            }
            Err(err) => {
                tracing::warn!(error = %err, "message read failed");
                self.handed.lock().expect("relay queue lock").overflowed = true;
                Vec::new()
            }
        }
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
        // Read from the cursor at first: rows may be waiting from before a restart.
        let mut read = true;
        loop {
            let mut batch = Vec::new();
            while batch.len() < 256 {
                match self.ephemeral.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            let ephemeral = batch.len();
            let messages = self.next_messages(cursor, std::mem::take(&mut read)).await;
            let message_cursor = messages.last().map(|(p, _)| *p);
            batch.extend(messages.into_iter().map(|(_, m)| {
                let (conversation, hotel, guest) = (m.conversation_id.clone(), m.hotel_id.clone(), m.guest_id.clone());
                event_for(&conversation, &hotel, &guest, events::event::Kind::Message(m))
            }));
            let rows = if self.outbox_written.swap(false, Ordering::AcqRel) {
                match self.store.outbox(BATCH).await {
                    Ok(rows) => {
                        if rows.len() == BATCH as usize {
                            self.outbox_written.store(true, Ordering::Release);
                        }
                        rows
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "outbox read failed");
                        self.outbox_written.store(true, Ordering::Release);
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
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
                    _ = tokio::time::sleep(POLL_EVERY) => {
                        // Rows this relay was not handed: another replica's, or the outbox's.
                        read = true;
                        self.outbox_written.store(true, Ordering::Release);
                    }
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
                    // What was taken is published again from the database and the outbox.
                    read = true;
                    if last_position.is_some() {
                        self.outbox_written.store(true, Ordering::Release);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use jack_runtime::db::Database;

    fn message(content: &str) -> conv::Message {
        conv::Message { content: content.into(), ..Default::default() }
    }

    async fn relay() -> (Relay, RelayHandle, Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("c.db").display());
        let store = Store::new(Database::open(&url, &crate::startup::SQLITE, &crate::startup::POSTGRES).await.unwrap());
        let (relay, handle) = Relay::new(store.clone(), Vec::new());
        (relay, handle, store, dir)
    }

    fn contents(messages: &[(i64, conv::Message)]) -> Vec<(i64, &str)> {
        messages.iter().map(|(p, m)| (*p, m.content.as_str())).collect()
    }

    #[tokio::test]
    async fn handed_messages_that_follow_the_cursor_are_published_without_a_read() {
        let (relay, handle, _store, _dir) = relay().await;
        // Not in the database: only the handed copy can produce these.
        handle.messages_committed(vec![(1, message("one")), (2, message("two"))]);
        handle.messages_committed(vec![(3, message("three"))]);
        assert_eq!(contents(&relay.next_messages(0, false).await), [(1, "one"), (2, "two"), (3, "three")]);
        // Already published ones are skipped; nothing new, nothing read.
        handle.messages_committed(vec![(3, message("three")), (4, message("four"))]);
        assert_eq!(contents(&relay.next_messages(3, false).await), [(4, "four")]);
        assert!(relay.next_messages(4, false).await.is_empty());
    }

    #[tokio::test]
    async fn a_gap_an_overflow_or_a_request_reads_from_the_database() {
        let (relay, handle, store, _dir) = relay().await;
        let c = store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap().conversation_id;
        let guest = |id: &str| {
            let m = conv::Message { conversation_id: c.clone(), role: conv::Role::Guest as i32, content: id.into(), client_message_id: Some(id.into()), ..Default::default() };
            (m, None)
        };
        let committed = store.add_messages(vec![guest("a"), guest("b"), guest("c")]).await.unwrap();
        let positions: Vec<i64> = committed.messages.iter().map(|(p, _)| *p).collect();
        // Handed only the last one: the two before it are missing from what was handed.
        handle.messages_committed(committed.messages[2..].to_vec());
        assert_eq!(relay.next_messages(0, false).await.iter().map(|(p, _)| *p).collect::<Vec<_>>(), positions);
        // Asked to read (at start, after a failed publish): the database, whatever was handed.
        handle.messages_committed(vec![(positions[2] + 1, message("not stored"))]);
        assert_eq!(relay.next_messages(positions[0], true).await.iter().map(|(p, _)| *p).collect::<Vec<_>>(), positions[1..]);
        // The queue overflowed: what was handed is incomplete, so read.
        handle.messages_committed((0..HANDED_MAX as i64 + 1).map(|i| (positions[2] + 1 + i, message("lost"))).collect());
        assert!(relay.next_messages(positions[2], false).await.is_empty(), "nothing beyond the last stored message");
    }
}
