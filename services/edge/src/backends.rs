//! The edge's gRPC clients, and how a backend's answer becomes what the guest sees.
//!
//! Every call carries the edge's deadline (`EDGE_BACKEND_TIMEOUT_MS`); a backend that is down
//! or slow becomes a retryable `UNAVAILABLE` error frame, never a hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jack_frames::ErrorCode;
use jack_frames::server::Error as ErrorFrame;
use jack_proto::conversation::v1 as conv;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use jack_proto::guest::v1 as guest_pb;
use jack_proto::guest::v1::guest_service_client::GuestServiceClient;
use jack_runtime::grpc::Traced;
use jack_proto::tonic::{Code, Status};
use jack_proto::upload::v1::upload_service_client::UploadServiceClient;
use jack_runtime::grpc;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::Settings;

#[derive(Debug, Clone)]
pub struct Backends {
    pub guest: GuestServiceClient<Traced>,
    pub conversation: ConversationServiceClient<Traced>,
    pub upload: UploadServiceClient<Traced>,
    /// Guest messages of all sessions, batched into AddGuestMessages calls.
    pub guest_messages: GuestMessages,
    /// Turns to identify (see [`IDENTIFIES_IN_FLIGHT`]).
    pub identifies: Turns,
}

/// How many identifies may be under way in the backends at once; the rest wait here, for at
/// most [`IDENTIFY_WAIT`]. When a Wi-Fi blip drops thousands of guests at once, they all
/// identify again together: let into the backends at once, they queued there for SQLite's
/// few read connections until calls ran past the backends' deadline, came back as
/// `UNAVAILABLE`, were retried — and the work done for a call that timed out was lost. Queued
/// here, an identify costs nothing while it waits, and every call that starts finishes.
const IDENTIFIES_IN_FLIGHT: usize = 64;
/// Longer than this in the queue and the guest is told to retry: the widget gives up on an
/// answer after 15 s (`ANSWER_TIMEOUT_MS`).
const IDENTIFY_WAIT: Duration = Duration::from_secs(10);

impl Backends {
    /// Clients of every backend (connecting lazily). Call inside the runtime: it starts the
    /// guest-message batcher.
    pub fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let deadline = settings.backend_timeout;
        let conversation = ConversationServiceClient::new(grpc::channel(&settings.conversation_url, deadline)?);
        Ok(Self {
            guest: GuestServiceClient::new(grpc::channel(&settings.guest_url, deadline)?),
            guest_messages: GuestMessages::start(conversation.clone()),
            conversation,
            upload: UploadServiceClient::new(grpc::channel(&settings.upload_url, deadline)?),
            identifies: Turns::new(IDENTIFIES_IN_FLIGHT, IDENTIFY_WAIT),
        })
    }
}

/// A limited number of slots with a queue in front whose wait is bounded.
#[derive(Debug, Clone)]
pub struct Turns {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Turns {
    pub fn new(slots: usize, wait: Duration) -> Self {
        Self { slots: Arc::new(Semaphore::new(slots)), wait }
    }

    /// A slot, held until dropped; `None` when none came free within the wait.
    pub async fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await.ok()?.ok()
    }
}

type Pending = (conv::AddGuestMessageRequest, oneshot::Sender<Result<conv::AddMessageResponse, Status>>);

/// The most guest messages in one call, and how many calls may be on their way at once.
/// Few calls: the conversation service commits one batch at a time anyway, so a call beyond
/// a few only waits there, and every message that found a call free went alone. With 64 in
/// flight, 96 % of the calls at 6,000 messages/s carried one message (1.3 on average) and the
/// process spent ~200 µs of CPU a message; with 8, ~9 a call and ~170 µs, at the same ack
/// latency.
const GUEST_BATCH: usize = 64;
const CALLS_IN_FLIGHT: usize = 8;

/// Batches the guest messages of every session of this edge: while calls are on their way,
/// what other sessions send queues for the next one, so under load one gRPC call carries many
/// messages; an idle edge sends a message at once, alone. Each message still gets its own
/// answer, exactly as a single AddGuestMessage call would give it.
#[derive(Debug, Clone)]
pub struct GuestMessages {
    queue: mpsc::Sender<Pending>,
}

impl GuestMessages {
    fn start(client: ConversationServiceClient<Traced>) -> Self {
        let (tx, rx) = mpsc::channel(GUEST_BATCH * 16);
        tokio::spawn(batch_guest_messages(client, rx));
        Self { queue: tx }
    }

    pub async fn add(&self, request: conv::AddGuestMessageRequest) -> Result<conv::AddMessageResponse, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).await.map_err(|_| Status::unavailable("edge shutting down"))?;
        answer.await.map_err(|_| Status::unavailable("edge shutting down"))?
    }
}

async fn batch_guest_messages(client: ConversationServiceClient<Traced>, mut queue: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let mut batch = Vec::with_capacity(GUEST_BATCH);
    while queue.recv_many(&mut batch, GUEST_BATCH).await > 0 {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        // What queued while waiting for a free call rides along.
        while batch.len() < GUEST_BATCH {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let (messages, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut batch).into_iter().unzip();
        let mut client = client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match client.add_guest_messages(conv::AddGuestMessagesRequest { messages }).await {
                Ok(response) => {
                    let mut results = response.into_inner().results.into_iter();
                    for reply in replies {
                        let answer = match results.next().and_then(|r| r.result) {
                            Some(conv::add_guest_message_result::Result::Added(added)) => Ok(added),
                            Some(conv::add_guest_message_result::Result::Failure(f)) => Err(Status::new(Code::from_i32(f.code), f.message)),
                            None => Err(Status::internal("missing result")),
                        };
                        let _ = reply.send(answer);
                    }
                }
                Err(status) => {
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                }
            }
        });
    }
}

/// The `error` frame for a failed backend call. Causes stay in the logs.
pub fn error_frame(status: &Status, client_message_id: Option<String>) -> ErrorFrame {
    let (code, message) = match status.code() {
        Code::InvalidArgument => (ErrorCode::InvalidFrame, status.message().to_owned()),
        Code::AlreadyExists => (ErrorCode::DuplicateMessageId, "clientMessageId was already used for a different message".to_owned()),
        Code::ResourceExhausted => (ErrorCode::RateLimited, "too many requests; retry later".to_owned()),
        Code::NotFound => (ErrorCode::InvalidFrame, status.message().to_owned()),
        _ => {
            tracing::warn!(code = ?status.code(), message = status.message(), "backend call failed");
            (ErrorCode::Unavailable, "the chat service is temporarily unavailable; retry shortly".to_owned())
        }
    };
    ErrorFrame::new(code, message, client_message_id)
}

/// A hotel's policy as the edge applies it at connect time.
#[derive(Debug, Clone, Default)]
pub struct HotelPolicy {
    pub registry_enabled: bool,
    pub known: bool,
    pub allowed_origins: Vec<String>,
}

/// Caches hotel policies for a short while, so a connect does not always cost a guest call.
#[derive(Debug)]
pub struct HotelPolicies {
    cache: Mutex<HashMap<String, (Instant, HotelPolicy)>>,
    ttl: Duration,
}

const POLICY_CACHE_MAX: usize = 10_000;

impl HotelPolicies {
    pub fn new(ttl: Duration) -> Self {
        Self { cache: Mutex::new(HashMap::new()), ttl }
    }

    /// The hotel's policy; `None` when the guest service cannot say (it is down).
    pub async fn get(&self, backends: &Backends, hotel_id: &str) -> Option<HotelPolicy> {
        if let Some((at, policy)) = self.cache.lock().expect("policy cache").get(hotel_id)
            && at.elapsed() < self.ttl {
                return Some(policy.clone());
            }
        let request = guest_pb::GetHotelPolicyRequest { hotel_id: hotel_id.to_owned() };
        match backends.guest.clone().get_hotel_policy(request).await {
            Ok(response) => {
                let p = response.into_inner();
                let policy = HotelPolicy { registry_enabled: p.registry_enabled, known: p.known, allowed_origins: p.allowed_origins };
                let mut cache = self.cache.lock().expect("policy cache");
                if cache.len() >= POLICY_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hotel_id.to_owned(), (Instant::now(), policy.clone()));
                Some(policy)
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "hotel policy lookup failed; applying the global origin list");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_turn_waits_for_a_free_slot_and_gives_up_after_the_wait() {
        let turns = Turns::new(1, Duration::from_millis(50));
        let first = turns.take().await.expect("a free slot");
        assert!(turns.take().await.is_none(), "the only slot is taken: the second gives up");
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { turns.take().await.is_some() }
        });
        drop(first);
        assert!(waiting.await.unwrap(), "a freed slot goes to the one waiting");
    }
}
