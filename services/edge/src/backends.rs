//! The edge's gRPC clients, and how a backend's answer becomes what the guest sees.
//!
//! Every call, and every batch on the guest-message stream, carries the edge's deadline
//! (`EDGE_BACKEND_TIMEOUT_MS`); a backend that is down or slow becomes a retryable `UNAVAILABLE`
//! error frame, never a hang.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jack_frames::ErrorCode;
use jack_frames::server::Error as ErrorFrame;
use jack_proto::conversation::v1 as conv;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use jack_proto::guest::v1 as guest_pb;
use jack_proto::guest::v1::guest_service_client::GuestServiceClient;
use jack_proto::tonic::{Code, Status, Streaming};
use jack_proto::upload::v1::upload_service_client::UploadServiceClient;
use jack_runtime::grpc;
use jack_runtime::grpc::Traced;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::Settings;

#[derive(Debug, Clone)]
pub struct Backends {
    pub guest: GuestServiceClient<Traced>,
    pub conversation: ConversationServiceClient<Traced>,
    pub upload: UploadServiceClient<Traced>,
    /// Guest messages of all sessions, batched onto an AddGuestMessageBatches stream.
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
        let credentials = &settings.credentials;
        let streams = ConversationServiceClient::new(grpc::stream_channel_to(&settings.conversation_url, credentials)?);
        Ok(Self {
            guest: GuestServiceClient::new(grpc::channel_to(&settings.guest_url, deadline, credentials)?),
            guest_messages: GuestMessages::start(streams, deadline),
            conversation: ConversationServiceClient::new(grpc::channel_to(
                &settings.conversation_url,
                deadline,
                credentials,
            )?),
            upload: UploadServiceClient::new(grpc::channel_to(&settings.upload_url, deadline, credentials)?),
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

type Reply = oneshot::Sender<Result<conv::AddMessageResponse, Status>>;
type Pending = (conv::AddGuestMessageRequest, Reply);

/// The most guest messages in one batch, and how many batches may be unanswered at once.
/// Few batches: the conversation service commits one batch at a time anyway, so a batch
/// beyond a few only waits there, and every message that found room went alone: with many
/// batches in flight nearly every batch carried one message, at a higher CPU cost a message
/// and the same ack latency (tests/loadgen/RESULTS.md).
const GUEST_BATCH: usize = 64;
const BATCHES_IN_FLIGHT: usize = 8;

/// Batches the guest messages of every session of this edge and sends them to conversation
/// over one long-lived `AddGuestMessageBatches` stream (a unary call per batch cost an HTTP/2
/// stream, its headers and a task on both ends). While batches are unanswered, what other
/// sessions send queues for the next one, so under load a batch carries many messages; an
/// idle edge sends a message at once, alone. Each message still gets its own answer, exactly
/// as a single AddGuestMessage call would give it; a batch not answered within the edge's
/// backend deadline from when it is sent fails with a retryable error.
#[derive(Debug, Clone)]
pub struct GuestMessages {
    queue: mpsc::Sender<Pending>,
}

impl GuestMessages {
    fn start(client: ConversationServiceClient<Traced>, deadline: Duration) -> Self {
        let (tx, rx) = mpsc::channel(GUEST_BATCH * 16);
        tokio::spawn(batch_guest_messages(client, deadline, rx));
        Self { queue: tx }
    }

    pub async fn add(&self, request: conv::AddGuestMessageRequest) -> Result<conv::AddMessageResponse, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).await.map_err(|_| Status::unavailable("edge shutting down"))?;
        answer.await.map_err(|_| Status::unavailable("edge shutting down"))?
    }
}

/// Opens a stream for the first batch and keeps it until it breaks or a batch misses its
/// deadline; the next batch opens another. A conversation service that is down fails each
/// batch at once. Whatever fails the stream, its unanswered batches get a retryable
/// `UNAVAILABLE` (never the stream's own status: an `INVALID_ARGUMENT` ending it says nothing
/// about each message), and their guests resend with the same `clientMessageId`, stored once.
async fn batch_guest_messages(
    mut client: ConversationServiceClient<Traced>,
    deadline: Duration,
    mut queue: mpsc::Receiver<Pending>,
) {
    let mut batch = Vec::with_capacity(GUEST_BATCH);
    let mut next_id = 0u64;
    while queue.recv_many(&mut batch, GUEST_BATCH).await > 0 {
        let (requests, outgoing) = mpsc::channel(BATCHES_IN_FLIGHT);
        let mut link =
            Link { requests, in_flight: VecDeque::with_capacity(BATCHES_IN_FLIGHT), next_id: &mut next_id, deadline };
        // The first batch goes with the stream's headers (into a new channel: it has room).
        link.send(&mut batch);
        let opened =
            tokio::time::timeout(deadline, client.add_guest_message_batches(ReceiverStream::new(outgoing))).await;
        match opened {
            Ok(Ok(response)) => link.run(response.into_inner(), &mut queue, &mut batch).await,
            Ok(Err(status)) => link.fail_all(&format!("the stream did not open: {status}")),
            Err(_) => link.fail_all("the stream did not open in time"),
        }
    }
}

/// One open stream and the batches on it that are not answered yet, oldest first.
struct Link<'a> {
    requests: mpsc::Sender<conv::GuestMessageBatch>,
    in_flight: VecDeque<InFlight>,
    next_id: &'a mut u64,
    deadline: Duration,
}

struct InFlight {
    id: u64,
    due: tokio::time::Instant,
    replies: Vec<Reply>,
}

impl Link<'_> {
    /// Sends what is in `batch` as one batch; `false` when the stream cannot take it (closed:
    /// the stream broke).
    fn send(&mut self, batch: &mut Vec<Pending>) -> bool {
        let (messages, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        *self.next_id += 1;
        let id = *self.next_id;
        self.in_flight.push_back(InFlight { id, due: tokio::time::Instant::now() + self.deadline, replies });
        // Never full while the stream lives: only unanswered batches can still be waiting in
        // the channel (a batch is answered only once sent), at most BATCHES_IN_FLIGHT of them.
        self.requests.try_send(conv::GuestMessageBatch { batch_id: id, messages }).is_ok()
    }

    /// Answers batches as their results come and sends new ones while there is room, until
    /// the stream breaks or a batch misses its deadline (then every unanswered batch fails,
    /// and dropping the stream makes conversation drop what it had not read of it) or the
    /// edge shuts down.
    async fn run(
        mut self,
        mut results: Streaming<conv::GuestMessageResults>,
        queue: &mut mpsc::Receiver<Pending>,
        batch: &mut Vec<Pending>,
    ) {
        let timer = tokio::time::sleep(self.deadline);
        tokio::pin!(timer);
        loop {
            if let Some(oldest) = self.in_flight.front()
                && oldest.due != timer.deadline()
            {
                timer.as_mut().reset(oldest.due);
            }
            tokio::select! {
                biased;
                answer = results.message() => match answer {
                    Ok(Some(answer)) => self.answer(answer),
                    Ok(None) => return self.fail_all("conversation ended the stream"),
                    Err(status) => return self.fail_all(&format!("the stream broke: {status}")),
                },
                // A stream that let a batch miss its deadline is not waited on any longer: what
                // it still holds would be committed after its guests were told to resend.
                () = &mut timer, if !self.in_flight.is_empty() => return self.fail_all("conversation did not answer in time"),
                received = queue.recv_many(batch, GUEST_BATCH), if self.in_flight.len() < BATCHES_IN_FLIGHT => {
                    if received == 0 {
                        return self.fail_all("edge shutting down");
                    }
                    if !self.send(batch) {
                        return self.fail_all("the stream is closed");
                    }
                }
            }
        }
    }

    fn answer(&mut self, answer: conv::GuestMessageResults) {
        let Some(at) = self.in_flight.iter().position(|b| b.id == answer.batch_id) else { return };
        let Some(answered) = self.in_flight.remove(at) else { return };
        let mut results = answer.results.into_iter();
        for reply in answered.replies {
            let result = match results.next().and_then(|r| r.result) {
                Some(conv::add_guest_message_result::Result::Added(added)) => Ok(added),
                Some(conv::add_guest_message_result::Result::Failure(f)) => {
                    Err(Status::new(Code::from_i32(f.code), f.message))
                }
                None => Err(Status::internal("missing result")),
            };
            let _ = reply.send(result);
        }
    }

    /// Fails every unanswered batch with a retryable `UNAVAILABLE` that says why (the session
    /// logs it with the error frame).
    fn fail_all(self, why: &str) {
        let status = Status::unavailable(format!("guest messages: {why}"));
        for reply in self.in_flight.into_iter().flat_map(|batch| batch.replies) {
            let _ = reply.send(Err(status.clone()));
        }
    }
}

/// The `error` frame for a failed backend call. Causes stay in the logs.
pub fn error_frame(status: &Status, client_message_id: Option<String>) -> ErrorFrame {
    let (code, message) = match status.code() {
        Code::InvalidArgument => (ErrorCode::InvalidFrame, status.message().to_owned()),
        Code::AlreadyExists => {
            (ErrorCode::DuplicateMessageId, "clientMessageId was already used for a different message".to_owned())
        }
        Code::ResourceExhausted => (ErrorCode::RateLimited, "too many requests; retry later".to_owned()),
        Code::NotFound | Code::OutOfRange => (ErrorCode::InvalidFrame, status.message().to_owned()),
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
            && at.elapsed() < self.ttl
        {
            return Some(policy.clone());
        }
        let request = guest_pb::GetHotelPolicyRequest { hotel_id: hotel_id.to_owned() };
        match backends.guest.clone().get_hotel_policy(request).await {
            Ok(response) => {
                let p = response.into_inner();
                let policy = HotelPolicy {
                    registry_enabled: p.registry_enabled,
                    known: p.known,
                    allowed_origins: p.allowed_origins,
                };
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
