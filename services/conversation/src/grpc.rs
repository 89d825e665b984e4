//! `ConversationService` over gRPC.

use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use jack_proto::conversation::v1 as pb;
use jack_proto::conversation::v1::conversation_service_server::ConversationService;
use jack_proto::delivery::v1 as events;
use jack_proto::tonic::{self, Request, Response, Status, Streaming};
use jack_runtime::CancellationToken;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use jack_proto::upload::v1::upload_service_client::UploadServiceClient;

use crate::domain;
use crate::error::ConversationError;
use crate::relay::RelayHandle;
use crate::store::{Added, Store, event_for};
use crate::writer::Writer;

const WATCH_BATCH: u32 = 256;
/// The most guest messages one batch of AddGuestMessageBatches may carry.
const MAX_GUEST_BATCH: usize = 512;
/// How many batches of one AddGuestMessageBatches stream may be under way at once.
const BATCHES_IN_FLIGHT: usize = 16;
/// How often a watcher looks for messages committed by another replica of this service.
const WATCH_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct ConversationApi {
    store: Store,
    writer: Writer,
    relay: RelayHandle,
    /// Bumped after every commit, waking WatchMessages streams.
    committed: watch::Sender<u64>,
    shutdown: CancellationToken,
    /// How long a caught-up watch stays silent before it sends a heartbeat.
    watch_heartbeat: Duration,
    /// The upload service, which says which attachments a butler's message may carry.
    upload: Option<UploadServiceClient<jack_runtime::grpc::Traced>>,
}

/// Wakes the relay (an outbox row was written) and the WatchMessages streams after a commit.
fn announce(relay: &RelayHandle, committed: &watch::Sender<u64>) {
    relay.wake();
    committed.send_modify(|n| *n = n.wrapping_add(1));
}

/// Whether the caller may act as `role`: only the edge speaks for guests; a responder acts as
/// the assistant and a dashboard as staff. (Without caller checks, `GRPC_AUTH=off`, anyone.)
fn may_act_as<T>(request: &Request<T>, role: pb::Role) -> Result<(), Status> {
    use jack_runtime::callers::{Role as Caller, require};
    match role {
        pb::Role::Guest => require(request, &[Caller::Edge], "act as the guest"),
        pb::Role::Assistant => require(request, &[Caller::Responder], "act as the assistant"),
        pb::Role::Staff => require(request, &[Caller::Dashboard], "act as staff"),
        pb::Role::Unspecified => Ok(()),
    }
}

fn required(what: &str, value: &str) -> Result<(), ConversationError> {
    if value.is_empty() || value.len() > 128 {
        return Err(ConversationError::InvalidArgument(format!("{what} must be 1 to 128 characters")));
    }
    Ok(())
}

impl ConversationApi {
    pub fn new(store: Store, relay: RelayHandle, shutdown: CancellationToken) -> std::io::Result<Self> {
        let committed = watch::Sender::new(0u64);
        let writer = {
            let (relay, committed) = (relay.clone(), committed.clone());
            Writer::start(store.clone(), move |batch| {
                // The relay gets the new messages themselves: no need to read them back.
                relay.messages_committed(batch);
                committed.send_modify(|n| *n = n.wrapping_add(1));
            })?
        };
        Ok(Self { store, writer, relay, committed, shutdown, watch_heartbeat: Duration::from_secs(15), upload: None })
    }

    /// For a caller limited to some hotels: the conversation must be one of theirs (another
    /// hotel's looks exactly like one that does not exist).
    async fn in_scope<T>(&self, request: &Request<T>, conversation_id: &str) -> Result<(), Status> {
        let Some(caller) = jack_runtime::callers::caller(request).filter(|c| c.hotels.is_some()) else { return Ok(()) };
        let conversation = self.conversation_of(conversation_id, None).await?;
        if caller.serves(&conversation.hotel_id) { Ok(()) } else { Err(ConversationError::ConversationNotFound.into()) }
    }

    /// Checks the attachments of butler messages with this upload service.
    pub fn with_upload(mut self, upload: UploadServiceClient<jack_runtime::grpc::Traced>) -> Self {
        self.upload = Some(upload);
        self
    }

    /// A butler message's attachments as the upload service has them: each must be a file
    /// stored for this conversation; its name, type and size are the stored ones, whatever
    /// the request said.
    async fn butler_attachments(
        &self,
        conversation_id: &str,
        refs: Vec<pb::AttachmentRef>,
    ) -> Result<Vec<pb::AttachmentRef>, Status> {
        if refs.is_empty() {
            return Ok(refs);
        }
        let Some(upload) = &self.upload else {
            return Err(Status::failed_precondition(
                "attachments cannot be checked: no upload service (CONVERSATION_UPLOAD_URL)",
            ));
        };
        let conversation = self.conversation_of(conversation_id, None).await?;
        let request = jack_proto::upload::v1::ResolveAttachmentsRequest {
            hotel_id: conversation.hotel_id,
            guest_id: String::new(),
            attachment_ids: refs.iter().map(|r| r.attachment_id.clone()).collect(),
            conversation_id: conversation.conversation_id,
        };
        let resolved = upload.clone().resolve_attachments(request).await?.into_inner();
        if let Some(problem) = resolved.problems.first() {
            return Err(Status::not_found(problem.message.clone()));
        }
        refs.into_iter()
            .map(|r| {
                let stored = resolved.attachments.iter().find(|a| a.attachment_id == r.attachment_id);
                let stored = stored.ok_or_else(|| {
                    Status::not_found(format!("attachment {} not found in this conversation", r.attachment_id))
                })?;
                Ok(pb::AttachmentRef {
                    attachment_id: r.attachment_id,
                    filename: Some(stored.filename.clone()),
                    content_type: Some(stored.content_type.clone()),
                    size: Some(stored.size),
                })
            })
            .collect()
    }

    /// Sets how long a caught-up watch stays silent before it sends a heartbeat.
    pub fn with_watch_heartbeat(mut self, every: Duration) -> Self {
        self.watch_heartbeat = every;
        self
    }

    fn committed(&self) {
        announce(&self.relay, &self.committed);
    }

    async fn conversation_of(
        &self,
        conversation_id: &str,
        guest_id: Option<&str>,
    ) -> Result<pb::Conversation, ConversationError> {
        required("conversation_id", conversation_id)?;
        let conversation =
            self.store.conversation(conversation_id).await?.ok_or(ConversationError::ConversationNotFound)?;
        // Another guest's conversation looks exactly like one that does not exist.
        if guest_id.is_some_and(|g| g != conversation.guest_id) {
            return Err(ConversationError::ConversationNotFound);
        }
        Ok(conversation)
    }

    /// One guest message: checked, then committed through the writer.
    async fn add_guest(&self, req: pb::AddGuestMessageRequest) -> Result<pb::AddMessageResponse, ConversationError> {
        required("conversation_id", &req.conversation_id)?;
        required("guest_id", &req.guest_id)?;
        domain::check_guest_message(&req)?;
        let kind = match pb::MessageKind::try_from(req.kind).unwrap_or_default() {
            pb::MessageKind::Postback => pb::MessageKind::Postback,
            _ => pb::MessageKind::Text,
        };
        let message = pb::Message {
            conversation_id: req.conversation_id,
            role: pb::Role::Guest as i32,
            kind: kind as i32,
            content: req.content,
            client_message_id: Some(req.client_message_id),
            payload: req.payload,
            attachments: req.attachments,
            reply_to_message_id: req.reply_to_message_id,
            ..Default::default()
        };
        let added = self.writer.add(message, Some(req.guest_id)).await?;
        Ok(Self::stored(added))
    }

    /// A batch of guest messages, each answered on its own. All of them queue for the writer
    /// at once, so they share its next transactions. A batch over [`MAX_GUEST_BATCH`] is
    /// refused whole, each of its messages with `INVALID_ARGUMENT`.
    async fn add_guest_batch(&self, batch: pb::GuestMessageBatch) -> pb::GuestMessageResults {
        let failure = |status: Status| {
            pb::add_guest_message_result::Result::Failure(pb::Failure {
                code: status.code() as i32,
                message: status.message().to_owned(),
            })
        };
        let results = if batch.messages.len() > MAX_GUEST_BATCH {
            let refused = Status::invalid_argument(format!("at most {MAX_GUEST_BATCH} messages per batch"));
            batch
                .messages
                .iter()
                .map(|_| pb::AddGuestMessageResult { result: Some(failure(refused.clone())) })
                .collect()
        } else {
            let results = futures_util::future::join_all(batch.messages.into_iter().map(|m| self.add_guest(m))).await;
            let result = |r: Result<pb::AddMessageResponse, ConversationError>| match r {
                Ok(added) => pb::add_guest_message_result::Result::Added(added),
                Err(err) => failure(Status::from(err)),
            };
            results.into_iter().map(|r| pb::AddGuestMessageResult { result: Some(result(r)) }).collect()
        };
        pb::GuestMessageResults { batch_id: batch.batch_id, results }
    }

    fn stored(added: Added) -> pb::AddMessageResponse {
        match added {
            Added::New(message) => pb::AddMessageResponse { message: Some(message), duplicate: false },
            Added::Duplicate(message) => pb::AddMessageResponse { message: Some(message), duplicate: true },
        }
    }
}

#[tonic::async_trait]
impl ConversationService for ConversationApi {
    async fn get_active_conversation(
        &self,
        request: Request<pb::GetActiveConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        jack_runtime::callers::require_hotel(&request, &request.get_ref().hotel_id)?;
        let req = request.into_inner();
        required("hotel_id", &req.hotel_id)?;
        required("guest_id", &req.guest_id)?;
        let channel = if req.channel.is_empty() { "webchat" } else { req.channel.as_str() };
        let found = self.store.active_conversation(&req.hotel_id, &req.guest_id, channel, req.create).await?;
        Ok(Response::new(found.ok_or(ConversationError::ConversationNotFound)?))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        self.in_scope(&request, &request.get_ref().conversation_id).await?;
        Ok(Response::new(self.conversation_of(&request.into_inner().conversation_id, None).await?))
    }

    async fn add_guest_message(
        &self,
        request: Request<pb::AddGuestMessageRequest>,
    ) -> Result<Response<pb::AddMessageResponse>, Status> {
        Ok(Response::new(self.add_guest(request.into_inner()).await?))
    }

    type AddGuestMessageBatchesStream = ReceiverStream<Result<pb::GuestMessageResults, Status>>;

    async fn add_guest_message_batches(
        &self,
        request: Request<Streaming<pb::GuestMessageBatch>>,
    ) -> Result<Response<Self::AddGuestMessageBatchesStream>, Status> {
        let mut batches = request.into_inner();
        let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        let api = self.clone();
        tokio::spawn(async move {
            // Every batch read is answered, also at shutdown; beyond BATCHES_IN_FLIGHT
            // unanswered ones the stream is not read (the sender waits on HTTP/2 flow control).
            let mut working = FuturesUnordered::new();
            let mut reading = true;
            loop {
                tokio::select! {
                    Some(results) = working.next() => {
                        if tx.send(Ok(results)).await.is_err() {
                            return; // the edge is gone: what it sent is committed all the same
                        }
                    }
                    batch = batches.message(), if reading && working.len() < BATCHES_IN_FLIGHT => match batch {
                        Ok(Some(batch)) => working.push(api.add_guest_batch(batch)),
                        Ok(None) => reading = false,
                        Err(status) => {
                            tracing::warn!(code = ?status.code(), message = status.message(), "guest message stream broke");
                            reading = false;
                        }
                    },
                    _ = api.shutdown.cancelled(), if reading => reading = false,
                    else => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::AddMessageResponse>, Status> {
        let role = domain::check_butler_message(request.get_ref())?;
        may_act_as(&request, role)?;
        self.in_scope(&request, &request.get_ref().conversation_id).await?;
        let mut req = request.into_inner();
        required("conversation_id", &req.conversation_id)?;
        req.attachments = self.butler_attachments(&req.conversation_id, std::mem::take(&mut req.attachments)).await?;
        let message = pb::Message {
            conversation_id: req.conversation_id,
            role: role as i32,
            kind: pb::MessageKind::Text as i32,
            content: req.content,
            client_message_id: req.client_message_id,
            quick_replies: req.quick_replies,
            buttons: req.buttons,
            cards: req.cards,
            attachments: req.attachments,
            ..Default::default()
        };
        let added = self.writer.add(message, None).await?;
        Ok(Response::new(Self::stored(added)))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        self.in_scope(&request, &request.get_ref().conversation_id).await?;
        let req = request.into_inner();
        required("conversation_id", &req.conversation_id)?;
        if req.after_seq.is_some() && req.before_seq.is_some() {
            return Err(Status::invalid_argument("give after_seq or before_seq, not both"));
        }
        if req.after_seq.is_some_and(|s| s < 0) || req.before_seq.is_some_and(|s| s < 0) {
            return Err(Status::invalid_argument("seq must not be negative"));
        }
        let limit = domain::page_size(req.limit);
        let page = self
            .store
            .page(&req.conversation_id, req.after_seq, req.before_seq, limit, req.max_bytes.map(|b| b as usize))
            .await?;
        // Another guest's conversation looks exactly like one that does not exist.
        let page = page
            .filter(|p| req.guest_id.as_deref().is_none_or(|g| g == p.guest_id))
            .ok_or(ConversationError::ConversationNotFound)?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page.messages,
            has_more: page.has_more,
            last_seq: page.last_seq,
        }))
    }

    async fn set_typing(
        &self,
        request: Request<pb::SetTypingRequest>,
    ) -> Result<Response<pb::SetTypingResponse>, Status> {
        let role = pb::Role::try_from(request.get_ref().role).ok().filter(|r| *r != pb::Role::Unspecified);
        let role = role.ok_or_else(|| Status::invalid_argument("role must be set"))?;
        may_act_as(&request, role)?;
        self.in_scope(&request, &request.get_ref().conversation_id).await?;
        let req = request.into_inner();
        let c = self.conversation_of(&req.conversation_id, None).await?;
        let typing = events::Typing { role: role as i32, is_typing: req.is_typing };
        self.relay.publish_ephemeral(event_for(
            &c.conversation_id,
            &c.hotel_id,
            &c.guest_id,
            events::event::Kind::Typing(typing),
        ));
        Ok(Response::new(pb::SetTypingResponse {}))
    }

    async fn mark_read(&self, request: Request<pb::MarkReadRequest>) -> Result<Response<pb::MarkReadResponse>, Status> {
        let role = pb::Role::try_from(request.get_ref().role).ok().filter(|r| *r != pb::Role::Unspecified);
        let role = role.ok_or_else(|| Status::invalid_argument("role must be set"))?;
        may_act_as(&request, role)?;
        self.in_scope(&request, &request.get_ref().conversation_id).await?;
        let req = request.into_inner();
        if req.up_to_seq < 0 {
            return Err(Status::invalid_argument("up_to_seq must not be negative"));
        }
        let conversation = self.conversation_of(&req.conversation_id, req.guest_id.as_deref()).await?;
        if req.up_to_seq > conversation.last_seq {
            return Err(Status::out_of_range(format!(
                "up_to_seq {} is past the conversation's last message ({})",
                req.up_to_seq, conversation.last_seq
            )));
        }
        let up_to_seq = self.store.mark_read(&conversation, role, req.up_to_seq).await?;
        self.committed();
        Ok(Response::new(pb::MarkReadResponse { up_to_seq }))
    }

    type WatchMessagesStream = ReceiverStream<Result<pb::WatchMessagesResponse, Status>>;

    async fn watch_messages(
        &self,
        request: Request<pb::WatchMessagesRequest>,
    ) -> Result<Response<Self::WatchMessagesStream>, Status> {
        // A caller limited to some hotels watches one of them.
        let hotel_id = jack_runtime::callers::scoped_hotel(&request, request.get_ref().hotel_id.as_deref())?;
        let mut req = request.into_inner();
        req.hotel_id = hotel_id;
        if req.after_cursor < 0 {
            return Err(Status::invalid_argument("after_cursor must not be negative"));
        }
        let roles = req.roles.clone();
        if roles.iter().any(|r| pb::Role::try_from(*r).is_err()) {
            return Err(Status::invalid_argument("unknown role in roles"));
        }
        // A cursor past the end of the log is not one this log gave out (another database, a
        // restore from an older backup): waiting there would be silence for good.
        let end = self.store.last_position().await?;
        if req.after_cursor > end {
            return Err(Status::out_of_range(format!(
                "after_cursor {} is past the end of the message log ({end}): resume from a cursor this service gave, or 0",
                req.after_cursor
            )));
        }
        let (tx, rx) = mpsc::channel(WATCH_BATCH as usize);
        let store = self.store.clone();
        let mut changes = self.committed.subscribe();
        let shutdown = self.shutdown.clone();
        let heartbeat_every = self.watch_heartbeat;
        tokio::spawn(async move {
            let mut cursor = req.after_cursor;
            // A response without a message says "caught up to `cursor`": once when the watch
            // first catches up, then whenever it has been silent for `heartbeat_every`.
            let (mut caught_up, mut last_sent) = (false, tokio::time::Instant::now());
            loop {
                changes.borrow_and_update();
                let (batch, scanned) =
                    match store.messages_after_position(cursor, &roles, req.hotel_id.as_deref(), WATCH_BATCH).await {
                        Ok(found) => found,
                        Err(err) => {
                            let _ = tx.send(Err(Status::from(err))).await;
                            return;
                        }
                    };
                for (position, message) in batch {
                    if tx
                        .send(Ok(pb::WatchMessagesResponse { cursor: position, message: Some(message) }))
                        .await
                        .is_err()
                    {
                        return; // the watcher is gone
                    }
                    last_sent = tokio::time::Instant::now();
                }
                match scanned {
                    Some(last) => cursor = last,
                    None => {
                        if !caught_up || last_sent.elapsed() >= heartbeat_every {
                            if tx.send(Ok(pb::WatchMessagesResponse { cursor, message: None })).await.is_err() {
                                return;
                            }
                            (caught_up, last_sent) = (true, tokio::time::Instant::now());
                        }
                        tokio::select! {
                            _ = changes.changed() => {}
                            _ = tokio::time::sleep(WATCH_POLL) => {}
                            _ = tx.closed() => return,
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
