//! The relay: hands committed events to delivery until delivery accepts them.
//!
//! Messages are their own outbox: the relay publishes them in `position` order after its
//! cursor, and moves the cursor only once delivery answered. The writer hands the relay each
//! batch it committed, with the positions the batch took (a [`Handoff`]); while each batch
//! follows on from the last one the relay has covered, nothing is read back from the
//! database. The relay reads from its cursor instead at start, after a failed publish, on a
//! break in the chain (the writer's first batch, a failed batch, another replica's rows in
//! between), when the handed queue overflowed, and once a second (rows another replica
//! wrote). Other durable events (read receipts) come from the outbox table, deleted once
//! published. After a crash it resends from the stored cursor; edges drop seqs they already
//! sent, so a resend is harmless. Typing is ephemeral: it rides along best effort.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jack_proto::conversation::v1 as conv;
use jack_proto::delivery::v1 as events;
use jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;
use jack_proto::tonic::{Status, Streaming};
use jack_runtime::CancellationToken;
use jack_runtime::grpc::{self, Traced};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::store::{Store, event_for};

const BATCH: u32 = 500;
/// How often, at most, the relay's cursor is stored (and once more at shutdown).
const CURSOR_EVERY: Duration = Duration::from_millis(500);
/// How often the relay looks for rows it was not handed (another replica's) while idle.
const POLL_EVERY: Duration = Duration::from_secs(1);
const EPHEMERAL_QUEUE: usize = 4096;
/// Committed messages the relay may hold in memory; beyond that it reads them back instead.
const HANDED_MAX: usize = 8192;

/// One committed batch as the writer hands it over.
#[derive(Debug, Clone, Default)]
pub struct Handoff {
    /// The new messages with their positions, in commit order.
    pub messages: Vec<(i64, conv::Message)>,
    /// The batch took every position after `after` up to `through` (padding rows take
    /// positions too): `after` is the previous batch's `through`. `None` when the writer
    /// cannot vouch for that (its first batch, after a failure, another writer in between).
    pub after: Option<i64>,
    pub through: Option<i64>,
}

#[derive(Debug, Default)]
struct Handed {
    batches: VecDeque<Handoff>,
    count: usize,
    /// Some were dropped (the queue was full): read from the cursor.
    overflowed: bool,
    /// `through` of the latest batch handed (queued or dropped), if any was handed since the
    /// relay last looked.
    latest: Option<Option<i64>>,
}

/// What the API uses to reach the relay.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    wake: Arc<Notify>,
    ephemeral: mpsc::Sender<events::Event>,
    handed: Arc<Mutex<Handed>>,
    outbox_written: Arc<AtomicBool>,
    foreign: Arc<AtomicBool>,
}

impl RelayHandle {
    /// Another replica committed rows (see [`crate::leader::listen`]): read them.
    pub fn foreign_rows(&self) {
        self.outbox_written.store(true, Ordering::Release);
        self.foreign.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Something was committed to the outbox table.
    pub fn wake(&self) {
        self.outbox_written.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// A batch was committed.
    pub fn messages_committed(&self, batch: Handoff) {
        {
            let mut handed = self.handed.lock().expect("relay queue lock");
            handed.latest = Some(batch.through);
            if handed.count + batch.messages.len() > HANDED_MAX {
                handed.overflowed = true;
            } else {
                handed.count += batch.messages.len();
                handed.batches.push_back(batch);
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
    publisher: Publisher,
    wake: Arc<Notify>,
    ephemeral: mpsc::Receiver<events::Event>,
    handed: Arc<Mutex<Handed>>,
    outbox_written: Arc<AtomicBool>,
    /// Another replica committed rows: read from the cursor.
    foreign: Arc<AtomicBool>,
    /// Every position up to this one is published (or was taken by padding): a handed batch
    /// whose `after` is this follows on.
    covered: Option<i64>,
    /// `through` of the latest batch taken from the queue.
    last_taken: Option<i64>,
    /// Whether this replica's relay publishes messages and the outbox now (see
    /// [`crate::leader`]); `None`: always (one replica).
    leader: Option<watch::Receiver<bool>>,
}

impl Relay {
    /// A relay publishing to these delivery replicas (one, then the next after a failure),
    /// each publish answered within `deadline`.
    pub fn new(store: Store, replicas: watch::Receiver<grpc::Members>, deadline: Duration) -> (Self, RelayHandle) {
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(EPHEMERAL_QUEUE);
        let handed = Arc::new(Mutex::new(Handed::default()));
        // The outbox may hold rows from before a restart.
        let outbox_written = Arc::new(AtomicBool::new(true));
        let foreign = Arc::new(AtomicBool::new(false));
        let handle = RelayHandle {
            wake: wake.clone(),
            ephemeral: tx,
            handed: handed.clone(),
            outbox_written: outbox_written.clone(),
            foreign: foreign.clone(),
        };
        let publisher = Publisher::new(replicas, deadline);
        (
            Self {
                store,
                publisher,
                wake,
                ephemeral: rx,
                handed,
                outbox_written,
                foreign,
                covered: None,
                last_taken: None,
                leader: None,
            },
            handle,
        )
    }

    /// Publishes messages and the outbox only while `leader` says this replica leads.
    pub fn with_leadership(mut self, leader: watch::Receiver<bool>) -> Self {
        self.leader = Some(leader);
        self
    }

    fn leads(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| *l.borrow())
    }

    /// While another replica leads: its relay publishes the messages (this replica's too,
    /// read back from the database) and the outbox; typing said to this replica is published
    /// from here. Returns once this replica leads, or at shutdown.
    async fn follow(&mut self, shutdown: &CancellationToken) {
        let Some(mut leader) = self.leader.clone() else { return };
        tracing::debug!("another replica's relay publishes; this one follows");
        loop {
            // What the writer handed over is the leader's to publish, from the database: it
            // is told so at once (and finds it within a second if the notice is lost).
            let committed = {
                let mut h = self.handed.lock().expect("relay queue lock");
                let committed = h.latest.is_some() || !h.batches.is_empty();
                h.batches.clear();
                h.count = 0;
                h.latest = None;
                h.overflowed = true;
                committed
            };
            if committed | self.outbox_written.swap(false, Ordering::AcqRel) {
                self.store.notify_relay().await;
            }
            self.covered = None;
            if *leader.borrow_and_update() {
                return;
            }
            tokio::select! {
                changed = leader.changed() => if changed.is_err() { return },
                Some(event) = self.ephemeral.recv() => self.publisher.best_effort(event).await,
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The messages to publish next, after `cursor`: what the writer handed over while its
    /// batches follow on from what is covered, else (or when `read` asks) what the database
    /// holds after the cursor.
    async fn next_messages(&mut self, cursor: i64, read: bool) -> Vec<(i64, conv::Message)> {
        let (mut batches, overflowed) = {
            let mut h = self.handed.lock().expect("relay queue lock");
            if let Some(latest) = h.latest.take() {
                self.last_taken = latest;
            }
            h.count = 0;
            (std::mem::take(&mut h.batches), std::mem::take(&mut h.overflowed))
        };
        if !read && !overflowed {
            let follows_on = {
                let mut covered = self.covered;
                batches.iter().all(|b| {
                    let linked = b.after.is_some() && b.after == covered;
                    covered = b.through;
                    linked
                })
            };
            if follows_on {
                // At most about BATCH messages in one publish; the rest stay queued, in order.
                let mut out = Vec::new();
                while let Some(batch) = batches.pop_front() {
                    self.covered = batch.through;
                    out.extend(batch.messages.into_iter().filter(|(p, _)| *p > cursor));
                    if out.len() >= BATCH as usize {
                        break;
                    }
                }
                if !batches.is_empty() {
                    let mut h = self.handed.lock().expect("relay queue lock");
                    h.count += batches.iter().map(|b| b.messages.len()).sum::<usize>();
                    while let Some(batch) = batches.pop_back() {
                        h.batches.push_front(batch);
                    }
                }
                return out;
            }
        }
        // Everything handed so far was committed before this read, so a read that reaches
        // the end covers it all.
        self.covered = None;
        match self.store.messages_after_position(cursor, &[], None, BATCH).await {
            Ok((messages, _)) => {
                if messages.len() == BATCH as usize {
                    // There may be more: read again next time.
                    self.handed.lock().expect("relay queue lock").overflowed = true;
                } else {
                    self.covered = self.last_taken;
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

    /// The stored cursor, read again every second until it can be; `None` at shutdown.
    async fn stored_cursor(&self, shutdown: &CancellationToken) -> Option<i64> {
        loop {
            match self.store.relay_cursor().await {
                Ok(cursor) => return Some(cursor),
                Err(err) => {
                    tracing::warn!(error = %err, "relay cursor unreadable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let Some(mut cursor) = self.stored_cursor(&shutdown).await else { return };
        // The cursor is stored by a task of its own (see `keep_cursor`), told of each move.
        let (published, reported) = watch::channel(cursor);
        let keeper = tokio::spawn(keep_cursor(self.store.clone(), reported, shutdown.clone()));
        let mut backoff = Duration::from_millis(50);
        // Read from the cursor at first: rows may be waiting from before a restart.
        let mut read = true;
        // Rows this relay was not handed (another replica's, the outbox's) are looked for at
        // least this often, however busy the relay is.
        let mut next_poll = tokio::time::Instant::now() + POLL_EVERY;
        'relay: loop {
            if !self.leads() {
                self.follow(&shutdown).await;
                if shutdown.is_cancelled() {
                    break 'relay;
                }
                // Leading now: from the cursor the last leader stored.
                let Some(stored) = self.stored_cursor(&shutdown).await else { break 'relay };
                cursor = stored;
                published.send_replace(cursor);
                read = true;
                self.outbox_written.store(true, Ordering::Release);
                continue;
            }
            if self.foreign.swap(false, Ordering::AcqRel) || tokio::time::Instant::now() >= next_poll {
                read = true;
                self.outbox_written.store(true, Ordering::Release);
                next_poll = tokio::time::Instant::now() + POLL_EVERY;
            }
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
            batch.extend(messages.into_iter().map(|(position, m)| {
                let (conversation, hotel, guest) = (m.conversation_id.clone(), m.hotel_id.clone(), m.guest_id.clone());
                events::Event { position, ..event_for(&conversation, &hotel, &guest, events::event::Kind::Message(m)) }
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
                self.publisher.greet().await;
                tokio::select! {
                    _ = self.wake.notified() => {}
                    Some(event) = self.ephemeral.recv() => self.publisher.best_effort(event).await,
                    _ = tokio::time::sleep_until(next_poll) => {}
                    _ = shutdown.cancelled() => break 'relay,
                }
                continue;
            }
            match self.publisher.publish(batch).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    if let Some(position) = message_cursor {
                        cursor = position;
                        // Stored only as far as the copies went too: after a crash, the next
                        // leader resends from there, to the edges and to every replica.
                        published.send_replace(self.publisher.copied_through(position));
                    }
                    if let Some(position) = last_position
                        && let Err(err) = self.store.outbox_done(position).await
                    {
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
                        _ = shutdown.cancelled() => break 'relay,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        // The keeper stores the last cursor and ends once `published` is gone.
        drop(published);
        let _ = keeper.await;
    }
}

/// Publishes to one delivery replica at a time (the same one until it fails, then the next),
/// over a [`Link`]; with several replicas, what one accepted is copied to each of the others
/// for their staff subscriptions ([`Copies`]). The replicas are followed as they come and go
/// ([`grpc::members`]).
struct Publisher {
    replicas: watch::Receiver<grpc::Members>,
    members: grpc::Members,
    /// The replica published to, and the link to it; picked again after a failure.
    target: Option<(String, Link)>,
    /// The replica that failed last: the next pick is the one after it.
    failed: Option<String>,
    deadline: Duration,
    /// One per replica, by name, when there is more than one.
    copies: std::collections::BTreeMap<String, Copies>,
}

impl Publisher {
    fn new(mut replicas: watch::Receiver<grpc::Members>, deadline: Duration) -> Self {
        let members = replicas.borrow_and_update().clone();
        let mut publisher = Self {
            replicas,
            members: grpc::Members::new(),
            target: None,
            failed: None,
            deadline,
            copies: Default::default(),
        };
        publisher.take_members(members);
        publisher
    }

    /// Follows the replicas: a link to one that left is dropped, copies start for one that
    /// joined.
    fn take_members(&mut self, members: grpc::Members) {
        if self.target.as_ref().is_some_and(|(name, _)| !members.contains_key(name)) {
            self.target = None;
        }
        self.copies.retain(|name, _| members.contains_key(name));
        if members.len() > 1 {
            for (name, channel) in &members {
                if !self.copies.contains_key(name) {
                    self.copies.insert(
                        name.clone(),
                        Copies::start(DeliveryServiceClient::new(channel.clone()), self.deadline),
                    );
                }
            }
        } else {
            self.copies.clear();
        }
        self.members = members;
    }

    /// Takes what changed in the replicas, and picks the replica to publish to if there is
    /// none.
    fn pick(&mut self) {
        if self.replicas.has_changed().unwrap_or(false) {
            let members = self.replicas.borrow_and_update().clone();
            self.take_members(members);
        }
        if self.target.is_none() {
            let after = self.failed.as_deref().and_then(|failed| {
                self.members.range::<str, _>((std::ops::Bound::Excluded(failed), std::ops::Bound::Unbounded)).next()
            });
            if let Some((name, channel)) = after.or_else(|| self.members.iter().next()) {
                self.target =
                    Some((name.clone(), Link::new(DeliveryServiceClient::new(channel.clone()), self.deadline)));
            }
        }
    }

    /// Publishes, answered by delivery within the deadline; on failure the next publish goes
    /// to the next replica.
    async fn publish(&mut self, events: Vec<events::Event>) -> Result<(), Status> {
        self.pick();
        let copy = (self.copies.len() > 1 && !events.is_empty()).then(|| events.clone());
        let Some((name, link)) = self.target.as_mut() else {
            return Err(Status::unavailable("no delivery replica is known"));
        };
        let result = link.publish_request(events::PublishRequest { events, ..Default::default() }).await;
        let name = name.clone();
        match (&result, copy) {
            (Ok(()), Some(events)) => {
                let through = events.iter().map(|e| e.position).max().unwrap_or(0);
                for (_, copies) in self.copies.iter().filter(|(replica, _)| **replica != name) {
                    copies.send(events.clone(), through);
                }
            }
            (Ok(()), None) => {}
            (Err(_), _) => {
                self.target = None;
                self.failed = Some(name);
            }
        }
        result
    }

    /// How far the cursor may be stored when delivery accepted everything through `accepted`:
    /// no further than the copies still waiting to go to other replicas (sent or given up on).
    fn copied_through(&self, accepted: i64) -> i64 {
        self.copies
            .values()
            .filter(|c| c.waiting.load(Ordering::Acquire) > 0)
            .map(|c| c.done_through.load(Ordering::Acquire))
            .fold(accepted, i64::min)
    }

    /// Opens the stream to the replica published to, if it is not open: a replica answers
    /// staff subscriptions only once a relay publishes to it (copies open theirs as they
    /// start, see [`send_copies`]).
    async fn greet(&mut self) {
        self.pick();
        if self.target.as_ref().is_some_and(|(_, link)| link.stream.is_none())
            && let Err(status) = self.publish(Vec::new()).await
        {
            tracing::debug!(code = ?status.code(), "delivery does not answer yet");
        }
    }

    async fn best_effort(&mut self, event: events::Event) {
        if let Err(status) = self.publish(vec![event]).await {
            tracing::debug!(code = ?status.code(), "ephemeral event not delivered");
        }
    }
}

/// One `PublishStream` to one delivery replica, opened with the first publish and again after
/// a failure. (A unary call per publish cost an HTTP/2 stream, its headers and a task on both
/// ends, for every few messages.)
struct Link {
    client: DeliveryServiceClient<Traced>,
    deadline: Duration,
    stream: Option<(mpsc::Sender<events::PublishRequest>, Streaming<events::PublishResponse>)>,
}

impl Link {
    fn new(client: DeliveryServiceClient<Traced>, deadline: Duration) -> Self {
        Self { client, deadline, stream: None }
    }

    /// One request, answered within the deadline; on failure the stream is dropped.
    async fn publish_request(&mut self, request: events::PublishRequest) -> Result<(), Status> {
        let answered = tokio::time::timeout(self.deadline, self.send(request)).await;
        let result = answered.unwrap_or_else(|_| Err(Status::deadline_exceeded("delivery did not answer in time")));
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn send(&mut self, request: events::PublishRequest) -> Result<(), Status> {
        let answers = match &mut self.stream {
            Some((requests, answers)) => {
                requests.send(request).await.map_err(|_| Status::unavailable("the publish stream is closed"))?;
                answers
            }
            None => {
                // The first request goes with the stream's headers.
                let (requests, outgoing) = mpsc::channel(1);
                let _ = requests.try_send(request);
                let answers = self.client.clone().publish_stream(ReceiverStream::new(outgoing)).await?.into_inner();
                &mut self.stream.insert((requests, answers)).1
            }
        };
        match answers.message().await? {
            Some(_) => Ok(()),
            None => Err(Status::unavailable("delivery ended the publish stream")),
        }
    }
}

/// Copies of what another delivery replica accepted, for one replica's staff subscriptions
/// (`PublishRequest.subscribers_only`), sent by a task of their own so that a slow or absent
/// replica never holds up the edges. A copy that cannot be sent is not sent again: the next
/// one says so (`copies_lost`), and that replica ends its subscriptions, which catch up from
/// conversation.
struct Copies {
    queue: mpsc::Sender<(Vec<events::Event>, i64)>,
    lost: Arc<AtomicBool>,
    /// Batches queued and not yet sent or given up on.
    waiting: Arc<AtomicUsize>,
    /// The highest message position of the batches sent or given up on.
    done_through: Arc<AtomicI64>,
}

/// Batches of copies waiting for one replica.
const COPIES_QUEUE: usize = 256;

impl Copies {
    fn start(client: DeliveryServiceClient<Traced>, deadline: Duration) -> Self {
        let (queue, queued) = mpsc::channel(COPIES_QUEUE);
        let copies = Self { queue, lost: Arc::default(), waiting: Arc::default(), done_through: Arc::default() };
        tokio::spawn(send_copies(
            Link::new(client, deadline),
            queued,
            copies.lost.clone(),
            copies.waiting.clone(),
            copies.done_through.clone(),
        ));
        copies
    }

    /// Queues a copy of a batch whose messages go up to position `through`.
    fn send(&self, events: Vec<events::Event>, through: i64) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if self.queue.try_send((events, through)).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.lost.store(true, Ordering::Release);
        }
    }
}

/// Sends one replica its copies until the relay ends (or the replica leaves). The stream
/// opens at once, before there is anything to copy: the replica answers staff subscriptions
/// once a relay publishes to it.
async fn send_copies(
    mut link: Link,
    mut queued: mpsc::Receiver<(Vec<events::Event>, i64)>,
    lost: Arc<AtomicBool>,
    waiting: Arc<AtomicUsize>,
    done_through: Arc<AtomicI64>,
) {
    let hello = events::PublishRequest { subscribers_only: true, ..Default::default() };
    let mut greeted = link.publish_request(hello.clone()).await.is_ok();
    let mut failing = false;
    loop {
        let next = if greeted {
            queued.recv().await
        } else {
            tokio::select! {
                next = queued.recv() => next,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    greeted = link.publish_request(hello.clone()).await.is_ok();
                    continue;
                }
            }
        };
        let Some((mut events, mut through)) = next else { return };
        let mut taken = 1;
        while events.len() < BATCH as usize {
            match queued.try_recv() {
                Ok((more, more_through)) => {
                    events.extend(more);
                    through = through.max(more_through);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        let copies_lost = lost.swap(false, Ordering::AcqRel);
        let sent = link.publish_request(events::PublishRequest { events, subscribers_only: true, copies_lost }).await;
        done_through.fetch_max(through, Ordering::AcqRel);
        waiting.fetch_sub(taken, Ordering::AcqRel);
        greeted = sent.is_ok();
        match sent {
            Ok(()) if failing => {
                tracing::info!("copies for a delivery replica's subscriptions go through again");
                failing = false;
            }
            Ok(()) => {}
            Err(status) => {
                lost.store(true, Ordering::Release);
                if !failing {
                    tracing::warn!(code = ?status.code(), message = status.message(), "copies for a delivery replica's subscriptions cannot be sent");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Stores the cursor the relay reports, at most every CURSOR_EVERY (each store is a commit
/// that the message writer waits for; after a crash the relay resends at most that much
/// again, which edges drop), and once more when the relay ends (`published` dropped).
///
/// Off the publishing path: a store waits for the one write connection, which the message
/// writer keeps for up to 20 ms while batches follow each other, then for a disk sync, and
/// while the relay waited with it, nothing committed in the meantime reached guests.
async fn keep_cursor(store: Store, mut published: watch::Receiver<i64>, shutdown: CancellationToken) {
    let mut stored = *published.borrow_and_update();
    loop {
        let open = published.changed().await.is_ok();
        let position = *published.borrow_and_update();
        if position > stored {
            match store.set_relay_cursor(position).await {
                Ok(()) => stored = position,
                Err(err) => {
                    tracing::warn!(error = %err, "relay cursor not stored");
                    // Tried again after CURSOR_EVERY; once shutting down (no wait any more),
                    // only with the relay's last report, not in a loop until then.
                    if !shutdown.is_cancelled() {
                        published.mark_changed();
                    }
                }
            }
        }
        if !open {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(CURSOR_EVERY) => {}
            // Shutting down: store the last cursor as soon as the relay reports it.
            _ = shutdown.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jack_proto::delivery::v1::delivery_service_server::{DeliveryService, DeliveryServiceServer};
    use jack_proto::tonic::{self, Request, Response, Status, Streaming};
    use std::sync::atomic::AtomicUsize;
    use tokio_stream::wrappers::ReceiverStream;

    /// A delivery service that accepts every publish and counts the events — or, `stuck`,
    /// takes publish streams and never answers on them.
    #[derive(Clone, Default)]
    struct Delivery {
        published: Arc<AtomicUsize>,
        streams: Arc<AtomicUsize>,
        stuck: bool,
    }

    #[tonic::async_trait]
    impl DeliveryService for Delivery {
        type EdgeStreamStream = ReceiverStream<Result<events::DeliveryMessage, Status>>;
        type SubscribeStream = ReceiverStream<Result<events::Event, Status>>;

        async fn edge_stream(
            &self,
            _: Request<Streaming<events::EdgeMessage>>,
        ) -> Result<Response<Self::EdgeStreamStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn publish(
            &self,
            request: Request<events::PublishRequest>,
        ) -> Result<Response<events::PublishResponse>, Status> {
            self.published.fetch_add(request.into_inner().events.len(), Ordering::SeqCst);
            Ok(Response::new(events::PublishResponse::default()))
        }

        async fn subscribe(
            &self,
            _: Request<events::SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        type PublishStreamStream =
            std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<events::PublishResponse, Status>> + Send>>;

        async fn publish_stream(
            &self,
            request: Request<Streaming<events::PublishRequest>>,
        ) -> Result<Response<Self::PublishStreamStream>, Status> {
            self.streams.fetch_add(1, Ordering::SeqCst);
            if self.stuck {
                let requests = request.into_inner();
                // Holds the stream open, answering nothing.
                let never = futures_util::stream::once(async move {
                    let _open = requests;
                    std::future::pending::<Result<events::PublishResponse, Status>>().await
                });
                return Ok(Response::new(Box::pin(never)));
            }
            let published = self.published.clone();
            let answers = tokio_stream::StreamExt::map(request.into_inner(), move |request| {
                published.fetch_add(request?.events.len(), Ordering::SeqCst);
                Ok(events::PublishResponse::default())
            });
            Ok(Response::new(Box::pin(answers)))
        }
    }

    async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        for _ in 0..200 {
            if done().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not within 10 s");
    }

    /// Whether `done` holds within 2.5 s.
    async fn soon(done: impl Fn() -> bool) -> bool {
        for _ in 0..50 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done()
    }

    /// A relay running against `delivery` (served on a loopback port, reached as the service
    /// reaches it) with this publish deadline, over a fresh store holding one conversation.
    struct Running {
        store: Store,
        _dir: tempfile::TempDir,
        handle: RelayHandle,
        conversation: String,
        shutdown: CancellationToken,
        relay: tokio::task::JoinHandle<()>,
        serving: CancellationToken,
    }

    impl Running {
        async fn start(delivery: &Delivery, deadline: Duration) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let serving = CancellationToken::new();
            let server =
                jack_runtime::grpc::server(jack_runtime::callers::Authenticate::new(None), &Default::default())
                    .unwrap()
                    .add_service(DeliveryServiceServer::new(delivery.clone()));
            tokio::spawn(jack_runtime::grpc::serve(server, listener, serving.clone()));
            let replicas = jack_runtime::grpc::members(&[url], &jack_runtime::grpc::Credentials::none()).unwrap();
            let (store, _dir) = crate::store::tests::sqlite_store().await;
            let (relay, handle) = Relay::new(store.clone(), replicas, deadline);
            let shutdown = CancellationToken::new();
            let relay = tokio::spawn(relay.run(shutdown.clone()));
            let conversation =
                store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap().conversation_id;
            Self { store, _dir, handle, conversation, shutdown, relay, serving }
        }

        /// Shuts the relay down and waits for it, then stops serving delivery; the store (and
        /// its folder) outlive it, to be looked at.
        async fn stop(self) -> (Store, tempfile::TempDir) {
            self.shutdown.cancel();
            self.relay.await.unwrap();
            self.serving.cancel();
            (self.store, self._dir)
        }
    }

    #[tokio::test]
    async fn the_cursor_is_stored_once_the_relay_is_idle_and_at_shutdown() {
        let delivery = Delivery::default();
        let running = Running::start(&delivery, Duration::from_secs(5)).await;
        let (store, handle, c) = (&running.store, &running.handle, &running.conversation);
        let (mut chain, mut sent) = (None, 0);
        let mut commit = async |n: usize| {
            let items = (0..n).map(|_| {
                sent += 1;
                crate::store::tests::guest_message(c, &format!("c{sent}"), &format!("m{sent}"))
            });
            let items = items.collect();
            let committed = store.add_messages(items).await.unwrap();
            let through = committed.span.map(|(_, t)| t);
            handle.messages_committed(Handoff { messages: committed.messages.clone(), after: chain, through });
            chain = through;
            committed.messages.last().unwrap().0
        };
        // Batch after batch, each published before the next: the relay is idle in between.
        let mut last = 0;
        for round in 1..=5 {
            last = commit(3).await;
            until("published", async || delivery.published.load(Ordering::SeqCst) >= 3 * round).await;
        }
        // Idle: the cursor is stored (no later than CURSOR_EVERY after the last store).
        until("the cursor stored while idle", async || store.relay_cursor().await.unwrap() == last).await;
        // Published, then shut down at once: the cursor is stored on the way out.
        let last = commit(2).await;
        until("published", async || delivery.published.load(Ordering::SeqCst) >= 17).await;
        let (store, _dir) = running.stop().await;
        assert_eq!(store.relay_cursor().await.unwrap(), last);
    }

    /// Storing the cursor waits for the one write connection, which the message writer keeps
    /// while batches follow each other: publishing goes on meanwhile. (It waited with the
    /// store, and every message committed in the meantime reached guests that much later.)
    #[tokio::test]
    async fn publishing_goes_on_while_the_cursor_waits_for_the_write_connection() {
        let delivery = Delivery::default();
        let running = Running::start(&delivery, Duration::from_secs(5)).await;
        let (store, handle, c) = (&running.store, &running.handle, &running.conversation);
        let first = store.add_messages(vec![crate::store::tests::guest_message(c, "c1", "m1")]).await.unwrap();
        let through = first.span.map(|(_, t)| t);
        let writer = store.take_write_connection().await;
        // A store is due with the first publish.
        tokio::time::sleep(CURSOR_EVERY).await;
        handle.messages_committed(Handoff { messages: first.messages.clone(), after: None, through });
        // Taken by the relay (so the next batch follows on from it) and published; each wait
        // well within the 5 s a store waits for the connection before it gives up.
        let taken = || {
            let h = handle.handed.lock().unwrap();
            h.batches.is_empty() && h.latest.is_none()
        };
        let published = || delivery.published.load(Ordering::SeqCst);
        assert!(soon(|| taken() && published() >= 1).await, "the first batch waited for the cursor's store");
        // The writer's next batch, which follows on: published as handed, without a read
        // (it is not in the database).
        let next = through.unwrap() + 1;
        let message = conv::Message { message_id: "msg_next".into(), seq: 2, ..first.messages[0].1.clone() };
        handle.messages_committed(Handoff { messages: vec![(next, message)], after: through, through: Some(next) });
        assert!(soon(|| published() >= 2).await, "the next batch waited for the cursor's store");
        assert_eq!(published(), 2);
        assert_eq!(store.relay_cursor().await.unwrap(), 0, "no store while the writer keeps the connection");
        drop(writer);
        until("the cursor stored once the connection is free", async || store.relay_cursor().await.unwrap() == next)
            .await;
        running.stop().await;
    }

    /// A publish that delivery takes but never answers is given up after the deadline and
    /// tried again on a new stream: one stuck stream must not hold every later event up.
    #[tokio::test]
    async fn a_publish_not_answered_in_time_is_tried_again_on_a_new_stream() {
        let delivery = Delivery { stuck: true, ..Default::default() };
        let running = Running::start(&delivery, Duration::from_millis(100)).await;
        let (store, handle) = (&running.store, &running.handle);
        let committed = store
            .add_messages(vec![crate::store::tests::guest_message(&running.conversation, "c1", "m1")])
            .await
            .unwrap();
        handle.messages_committed(Handoff {
            messages: committed.messages.clone(),
            after: None,
            through: committed.span.map(|(_, t)| t),
        });
        until("a second stream after the first publish's deadline", async || {
            delivery.streams.load(Ordering::SeqCst) >= 2
        })
        .await;
        assert_eq!(store.relay_cursor().await.unwrap(), 0, "nothing was answered: the cursor stays");
        running.stop().await;
    }

    fn message(content: &str) -> conv::Message {
        conv::Message { content: content.into(), ..Default::default() }
    }

    async fn relay() -> (Relay, RelayHandle, Store, tempfile::TempDir) {
        let (store, dir) = crate::store::tests::sqlite_store().await;
        let (relay, handle) =
            Relay::new(store.clone(), watch::channel(jack_runtime::grpc::Members::new()).1, Duration::from_secs(5));
        (relay, handle, store, dir)
    }

    fn contents(messages: &[(i64, conv::Message)]) -> Vec<(i64, &str)> {
        messages.iter().map(|(p, m)| (*p, m.content.as_str())).collect()
    }

    fn handoff(after: Option<i64>, through: Option<i64>, messages: Vec<(i64, conv::Message)>) -> Handoff {
        Handoff { messages, after, through }
    }

    #[tokio::test]
    async fn batches_that_follow_on_are_published_without_a_read() {
        let (mut relay, handle, _store, _dir) = relay().await;
        // The writer's first batch cannot vouch for what came before it: a read (of an empty
        // database here) covers it.
        handle.messages_committed(handoff(None, Some(2), vec![(1, message("one")), (2, message("two"))]));
        assert!(relay.next_messages(0, false).await.is_empty());
        // These are not in the database: only the handed copies can produce them. Padding
        // took positions 4 to 8.
        handle.messages_committed(handoff(Some(2), Some(8), vec![(3, message("three"))]));
        handle.messages_committed(handoff(Some(8), Some(9), vec![(9, message("nine"))]));
        assert_eq!(contents(&relay.next_messages(2, false).await), [(3, "three"), (9, "nine")]);
        handle.messages_committed(handoff(Some(9), Some(10), vec![(10, message("ten"))]));
        assert_eq!(contents(&relay.next_messages(9, false).await), [(10, "ten")]);
        assert!(relay.next_messages(10, false).await.is_empty());
        // A break in the chain (another writer in between): read instead.
        handle.messages_committed(handoff(Some(12), Some(13), vec![(13, message("not stored"))]));
        assert!(relay.next_messages(10, false).await.is_empty());
    }

    #[tokio::test]
    async fn a_break_an_overflow_or_a_request_reads_from_the_database() {
        let (mut relay, handle, store, _dir) = relay().await;
        let c = store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap().conversation_id;
        let guest = |id: &str| {
            let m = conv::Message {
                conversation_id: c.clone(),
                role: conv::Role::Guest as i32,
                content: id.into(),
                client_message_id: Some(id.into()),
                ..Default::default()
            };
            (m, None)
        };
        let committed = store.add_messages(vec![guest("a"), guest("b"), guest("c")]).await.unwrap();
        let positions: Vec<i64> = committed.messages.iter().map(|(p, _)| *p).collect();
        let through = committed.span.map(|(_, t)| t);
        // Handed only the last one, with no link: the database has all three.
        handle.messages_committed(handoff(None, through, committed.messages[2..].to_vec()));
        assert_eq!(relay.next_messages(0, false).await.iter().map(|(p, _)| *p).collect::<Vec<_>>(), positions);
        // Asked to read (at start, after a failed publish): the database, whatever was handed.
        handle.messages_committed(handoff(
            through,
            through.map(|t| t + 1),
            vec![(through.unwrap() + 1, message("not stored"))],
        ));
        assert_eq!(
            relay.next_messages(positions[0], true).await.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            positions[1..]
        );
        // The queue overflowed: what was handed is incomplete, so read.
        let last = through.unwrap() + 1;
        handle.messages_committed(handoff(
            Some(last),
            Some(last + HANDED_MAX as i64 + 1),
            (0..HANDED_MAX as i64 + 1).map(|i| (last + 1 + i, message("lost"))).collect(),
        ));
        assert!(relay.next_messages(positions[2], false).await.is_empty(), "nothing beyond the last stored message");
    }
}
