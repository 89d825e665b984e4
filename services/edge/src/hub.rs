//! The hub: which local sessions serve which conversation, and the streams to delivery.
//!
//! The edge keeps one bidirectional stream to every delivery replica (any replica may route
//! any event), following the replicas as they come and go ([`grpc::members`]). Over it the edge attaches each identified session's conversation and receives
//! that conversation's events, which the hub hands to the sessions.
//!
//! Two of the delivery rules (ARCHITECTURE.md) live here:
//! - *Subscribe, then replay*: [`Hub::attach`] returns only after every live stream has
//!   acknowledged the attach, so the session's replay from conversation cannot miss a message
//!   committed in between — it arrives live (and is dropped if the replay covered it).
//! - *Catch up after a gap*: when a stream comes back after breaking, the hub re-attaches
//!   every session and, once delivery acknowledged that, tells every session to fetch what it
//!   missed from conversation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jack_proto::delivery::v1 as pb;
use jack_proto::delivery::v1::delivery_service_client::DeliveryServiceClient;
use jack_runtime::{CancellationToken, grpc};
use rand::Rng as _;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// How long a session waits for delivery to acknowledge its attach before going on anyway
/// (the stream is then unhealthy, and its reconnect will trigger a catch-up).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the hub hands a session.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    Event(Arc<pb::Event>),
    /// A delivery stream broke and came back: fetch what may have been missed.
    CatchUp,
}

/// Live events waiting for one session. An idle session's mailbox holds no buffer (tens of
/// thousands of idle guests are the common case); a session that falls more than
/// [`MAILBOX_LIMIT`] events behind is marked as lagging and catches up from conversation.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<SessionEvent>>,
    lagged: AtomicBool,
    /// Woken when something arrives (or the session starts lagging).
    pub wake: Notify,
}

/// Events a session may have waiting before it counts as lagging.
pub const MAILBOX_LIMIT: usize = 256;

impl Mailbox {
    fn push(&self, event: SessionEvent) {
        {
            let mut queue = self.queue.lock().expect("mailbox lock");
            if queue.len() >= MAILBOX_LIMIT {
                queue.clear();
                self.lagged.store(true, Ordering::Relaxed);
            } else {
                queue.push_back(event);
            }
        }
        self.wake.notify_one();
    }

    /// Everything waiting, and whether events were dropped since the last call.
    pub fn take(&self) -> (VecDeque<SessionEvent>, bool) {
        let events = std::mem::take(&mut *self.queue.lock().expect("mailbox lock"));
        (events, self.lagged.swap(false, Ordering::Relaxed))
    }
}

/// The hub's way to reach one session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub mailbox: Arc<Mailbox>,
}

impl SessionHandle {
    fn push(&self, event: SessionEvent) {
        self.mailbox.push(event);
    }
}

#[derive(Debug)]
struct Link {
    /// The replica, for logs.
    name: String,
    /// The current stream's outbound half; `None` while the stream is down.
    out: Mutex<Option<mpsc::UnboundedSender<pb::EdgeMessage>>>,
    /// Attach acknowledgements being waited for, by token.
    pending: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl Link {
    fn sender(&self) -> Option<mpsc::UnboundedSender<pb::EdgeMessage>> {
        self.out.lock().expect("link lock").clone()
    }
}

#[derive(Debug)]
pub struct Hub {
    edge_id: String,
    /// Sessions by conversation; a key is the text its sessions' identities hold.
    sessions: Mutex<HashMap<Arc<str>, Vec<SessionHandle>>>,
    /// One per delivery replica, by its name.
    links: Mutex<std::collections::BTreeMap<String, Arc<Link>>>,
    next_token: AtomicU64,
    session_count: AtomicUsize,
    links_up: AtomicUsize,
}

fn attach_message(conversation_id: &str, token: u64) -> pb::EdgeMessage {
    pb::EdgeMessage {
        kind: Some(pb::edge_message::Kind::Attach(pb::Attach { conversation_id: conversation_id.to_owned(), token })),
    }
}

impl Hub {
    pub fn new(edge_id: String) -> Arc<Self> {
        Arc::new(Self {
            edge_id,
            sessions: Mutex::new(HashMap::new()),
            links: Mutex::default(),
            next_token: AtomicU64::new(1),
            session_count: AtomicUsize::new(0),
            links_up: AtomicUsize::new(0),
        })
    }

    /// Keeps a stream to each of the delivery `replicas` until `shutdown`: a replica that
    /// joins gets a stream (which attaches every session, then has them catch up), one that
    /// leaves has its stream closed and every session catch up. Ends once every stream has.
    pub fn start(
        self: &Arc<Self>,
        mut replicas: watch::Receiver<grpc::Members>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut running: HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)> = HashMap::new();
            loop {
                let members = replicas.borrow_and_update().clone();
                let before = running.len();
                running.retain(|name, (stop, _)| {
                    let stays = members.contains_key(name);
                    if !stays {
                        stop.cancel();
                        hub.links.lock().expect("links lock").remove(name);
                    }
                    stays
                });
                if running.len() < before {
                    // What a replica that left had accepted and not yet sent may never come:
                    // every session fetches what it may have missed.
                    hub.catch_up_all();
                }
                for (name, channel) in members {
                    if running.contains_key(&name) {
                        continue;
                    }
                    let link = Arc::new(Link {
                        name: name.clone(),
                        out: Mutex::new(None),
                        pending: Mutex::new(HashMap::new()),
                    });
                    hub.links.lock().expect("links lock").insert(name.clone(), link.clone());
                    let stop = shutdown.child_token();
                    let task =
                        tokio::spawn(hub.clone().run_link(link, DeliveryServiceClient::new(channel), stop.clone()));
                    running.insert(name, (stop, task));
                }
                tokio::select! {
                    changed = replicas.changed() => if changed.is_err() { break },
                    _ = shutdown.cancelled() => break,
                }
            }
            shutdown.cancelled().await;
            for (_, (_, task)) in running {
                let _ = task.await;
            }
        })
    }

    pub fn sessions(&self) -> usize {
        self.session_count.load(Ordering::Relaxed)
    }

    /// Delivery replicas, and how many of them have a stream up.
    pub fn links(&self) -> (usize, usize) {
        (self.links.lock().expect("links lock").len(), self.links_up.load(Ordering::Relaxed))
    }

    /// The links as they are now.
    fn current_links(&self) -> Vec<Arc<Link>> {
        self.links.lock().expect("links lock").values().cloned().collect()
    }

    /// Registers a session for a conversation's events and waits until every live delivery
    /// stream routes them here. Call before replaying from conversation.
    pub async fn attach(&self, conversation_id: &Arc<str>, session: SessionHandle) {
        // Most conversations have one tab open: room for one (a Vec's first growth makes four).
        self.sessions
            .lock()
            .expect("sessions lock")
            .entry(conversation_id.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(session);
        self.session_count.fetch_add(1, Ordering::Relaxed);
        let mut acks = Vec::new();
        for link in &self.current_links() {
            let Some(out) = link.sender() else { continue };
            let token = self.next_token.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            link.pending.lock().expect("pending lock").insert(token, tx);
            if out.send(attach_message(conversation_id, token)).is_ok() {
                acks.push(rx);
            } else {
                link.pending.lock().expect("pending lock").remove(&token);
            }
        }
        for ack in acks {
            if tokio::time::timeout(ATTACH_TIMEOUT, ack).await.is_err() {
                tracing::warn!(%conversation_id, "delivery did not acknowledge an attach in time");
            }
        }
    }

    /// Forgets a session (its connection closed or it re-identified).
    pub fn detach(&self, conversation_id: &str, session_id: u64) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let Some(list) = sessions.get_mut(conversation_id) else { return };
        let before = list.len();
        list.retain(|s| s.id != session_id);
        if list.len() == before {
            return;
        }
        if list.is_empty() {
            sessions.remove(conversation_id);
        }
        drop(sessions);
        self.session_count.fetch_sub(1, Ordering::Relaxed);
        let detach = pb::EdgeMessage {
            kind: Some(pb::edge_message::Kind::Detach(pb::Detach { conversation_id: conversation_id.to_owned() })),
        };
        for link in &self.current_links() {
            if let Some(out) = link.sender() {
                let _ = out.send(detach.clone());
            }
        }
    }

    /// A guest-side event (typing) for staff subscribers, through every live stream: each
    /// delivery replica has subscribers of its own.
    pub fn publish_guest_event(&self, event: pb::Event) -> bool {
        let message = pb::EdgeMessage { kind: Some(pb::edge_message::Kind::Event(event)) };
        let sent = self
            .current_links()
            .iter()
            .filter_map(|l| l.sender())
            .filter(|out| out.send(message.clone()).is_ok())
            .count();
        sent > 0
    }

    fn route(&self, events: Vec<pb::Event>) {
        let sessions = self.sessions.lock().expect("sessions lock");
        for event in events {
            if let Some(list) = sessions.get(event.conversation_id.as_str()) {
                let event = Arc::new(event);
                for session in list {
                    session.push(SessionEvent::Event(event.clone()));
                }
            }
        }
    }

    fn catch_up_all(&self) {
        let sessions = self.sessions.lock().expect("sessions lock");
        for session in sessions.values().flatten() {
            session.push(SessionEvent::CatchUp);
        }
    }

    /// Keeps a stream open to one delivery replica, re-opening it with backoff and jitter,
    /// until `shutdown` (the edge's, or the replica's leaving).
    async fn run_link(
        self: Arc<Self>,
        link: Arc<Link>,
        client: DeliveryServiceClient<grpc::Traced>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let (out, rx) = mpsc::unbounded_channel();
            let hello = pb::EdgeMessage {
                kind: Some(pb::edge_message::Kind::Hello(pb::Hello { edge_id: self.edge_id.clone() })),
            };
            let _ = out.send(hello);
            *link.out.lock().expect("link lock") = Some(out.clone());
            // Re-attach every session; the last attach's acknowledgement means all are routed.
            let resync = {
                let sessions = self.sessions.lock().expect("sessions lock");
                let mut last = None;
                for (conversation_id, list) in sessions.iter() {
                    for _ in list {
                        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                        let _ = out.send(attach_message(conversation_id, token));
                        last = Some(token);
                    }
                }
                last.map(|token| {
                    let (tx, rx) = oneshot::channel();
                    link.pending.lock().expect("pending lock").insert(token, tx);
                    rx
                })
            };
            let mut call = client.clone();
            let opened = tokio::select! {
                r = call.edge_stream(UnboundedReceiverStream::new(rx)) => r,
                _ = shutdown.cancelled() => break,
            };
            match opened {
                Ok(response) => {
                    self.links_up.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(replica = %link.name, "delivery stream open");
                    backoff = Duration::from_millis(100);
                    if let Some(resync) = resync {
                        let hub = self.clone();
                        tokio::spawn(async move {
                            if resync.await.is_ok() {
                                hub.catch_up_all();
                            }
                        });
                    }
                    let mut inbound = response.into_inner();
                    loop {
                        let next = tokio::select! {
                            m = inbound.message() => m,
                            _ = shutdown.cancelled() => break,
                        };
                        match next {
                            Ok(Some(pb::DeliveryMessage { kind: Some(pb::delivery_message::Kind::Events(batch)) })) => {
                                self.route(batch.events)
                            }
                            Ok(Some(pb::DeliveryMessage { kind: Some(pb::delivery_message::Kind::Attached(ack)) })) => {
                                if let Some(tx) = link.pending.lock().expect("pending lock").remove(&ack.token) {
                                    let _ = tx.send(());
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(replica = %link.name, code = ?status.code(), "delivery stream broke");
                                break;
                            }
                        }
                    }
                    self.links_up.fetch_sub(1, Ordering::Relaxed);
                }
                Err(status) => {
                    tracing::debug!(replica = %link.name, code = ?status.code(), "delivery stream did not open")
                }
            }
            *link.out.lock().expect("link lock") = None;
            link.pending.lock().expect("pending lock").clear();
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
            tokio::select! {
                _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        *link.out.lock().expect("link lock") = None;
    }
}
