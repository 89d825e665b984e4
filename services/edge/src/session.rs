//! One connection's protocol state machine (protocol v1, services/edge/PROTOCOL.md).
//!
//! The session turns client frames into backend calls and pushes answers into an output
//! list that the connection loop writes to the socket; it never touches the socket itself.
//!
//! Exactly once, in order: `high` is the highest `seq` this session has passed to its client
//! with nothing missing below it. A live message at or below `high` is dropped; one beyond
//! `high + 1` means something was missed, so the session fetches everything after `high`
//! from conversation first. The session's own messages are acknowledged with `message_ack`
//! and not echoed back to it (other tabs of the visitor get them as `role: guest` messages).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use jack_frames::ErrorCode;
use jack_frames::client::{self, ClientFrame};
use jack_frames::server::{self as frames, ServerFrame};
use jack_proto::conversation::v1 as conv;
use jack_proto::delivery::v1 as events;
use jack_proto::guest::v1 as guest;
use jack_proto::upload::v1 as upload;
use jack_runtime::time::{now_ms, now_rfc3339, rfc3339_ms};

use crate::backends::error_frame;
use crate::context::Edge;
use crate::convert;
use crate::hub::{Mailbox, SessionEvent, SessionHandle};

/// Page size when replaying after `lastSeq` or catching up.
const FOLLOW_PAGE: u32 = 500;
/// The most a page of messages may take as the edge reads it (a page holds at least one
/// message): what one connection holds at a time, however long its history.
const PAGE_BYTES: u32 = 256 * 1024;
/// The latest page shown to a resuming guest who sends no `lastSeq`.
const LATEST_PAGE: u32 = 50;
const MAX_HISTORY_PAGE: u32 = 100;

type Out = Vec<ServerFrame>;

#[derive(Debug, Clone)]
struct Identity {
    guest_id: String,
    /// Shared with the hub's key for this session.
    conversation_id: Arc<str>,
}

/// A token bucket: `rate` frames a second, bursts of twice that.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        Self { tokens: f64::from(rate) * 2.0, rate: f64::from(rate), last: Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next frame is allowed.
    fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

#[derive(Debug)]
pub struct Session {
    pub session_id: String,
    pub hotel_id: String,
    /// The client's address (see [`crate::peer`]), which new visitors are counted against.
    client: IpAddr,
    edge: Arc<Edge>,
    handle: SessionHandle,
    identity: Option<Identity>,
    high: i64,
    /// Seqs of this session's own messages above `high`: skipped when they come back live.
    own: BTreeSet<i64>,
    limit: RateLimit,
    /// A catch-up failed (conversation unreachable) and must be retried.
    pub catch_up_pending: bool,
    /// Whether the identified guest has sent something before (else its first message marks
    /// it kept).
    engaged: bool,
    /// Pages after `high` still to be read, one at a time (boxed: an idle session has none, and
    /// tens of thousands of idle sessions would each keep room for one).
    follow: Option<Box<Follow>>,
    /// The guest or its conversation was forgotten while this session was idle (see
    /// `GUEST_SILENT_VISITOR_TTL`, `CONVERSATION_EMPTY_TTL`): the connection is closed with
    /// 4010, and the client identifies afresh and sends again.
    pub expired: bool,
}

/// Pages of messages after `high` still to be sent. The connection loop reads one, writes it to
/// the socket, and only then reads the next, so that whatever the history and however slowly
/// the guest reads, a session holds at most one page.
#[derive(Debug)]
struct Follow {
    /// Replaying after `lastSeq`: the pages go out as `history` frames (else as live messages).
    replay: bool,
    /// What goes out after the last page (an identify is answered after its history).
    then: Option<frames::Identified>,
}

fn error(code: ErrorCode, message: impl Into<String>, client_message_id: Option<String>) -> ServerFrame {
    ServerFrame::Error(frames::Error::new(code, message, client_message_id))
}

impl Session {
    /// A new session and the mailbox of its live events.
    pub fn new(edge: Arc<Edge>, session_id: String, hotel_id: String, client: IpAddr, id: u64) -> (Self, Arc<Mailbox>) {
        let mailbox = Arc::new(Mailbox::default());
        let handle = SessionHandle { id, mailbox: mailbox.clone() };
        let limit = RateLimit::new(edge.settings.rate_limit);
        let session = Self {
            session_id,
            hotel_id,
            client,
            edge,
            handle,
            identity: None,
            high: 0,
            own: BTreeSet::new(),
            limit,
            catch_up_pending: false,
            engaged: false,
            follow: None,
            expired: false,
        };
        (session, mailbox)
    }

    pub fn connected_frame(&self) -> ServerFrame {
        ServerFrame::Connected(frames::Connected {
            session_id: self.session_id.clone(),
            timestamp: now_rfc3339(),
            protocol: jack_frames::PROTOCOL_VERSION,
            limits: frames::Limits {
                max_message_size: self.edge.settings.max_message_size as u64,
                max_file_size: self.edge.settings.max_file_size,
                allowed_file_types: self.edge.upload_types.read().expect("upload types").clone(),
                max_frames_per_second: self.edge.settings.rate_limit,
            },
        })
    }

    pub fn is_identified(&self) -> bool {
        self.identity.is_some()
    }

    /// Leaves the hub (the connection is closing).
    pub fn close(&mut self) {
        if let Some(identity) = self.identity.take() {
            self.edge.hub.detach(&identity.conversation_id, self.handle.id);
        }
    }

    /// A binary frame: not part of protocol v1. Answered as bad JSON, and, like any frame,
    /// spending from the rate limit (beyond it, dropped unanswered).
    pub fn on_binary(&mut self, out: &mut Out) {
        if self.limit.allow() {
            out.push(error(ErrorCode::InvalidJson, "frames must be JSON text", None));
        }
    }

    /// Handles one text frame from the client.
    pub async fn on_text(&mut self, text: &str, out: &mut Out) {
        let received = Instant::now();
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                // A malformed frame still spends from the rate limit.
                if self.limit.allow() {
                    out.push(error(e.code, e.message, e.client_message_id));
                }
                return;
            }
        };
        if !self.limit.allow() {
            let id = match &frame {
                ClientFrame::Message(m) => Some(m.client_message_id.clone()),
                ClientFrame::Postback(p) => Some(p.client_message_id.clone()),
                _ => None,
            };
            let refusal = frames::Error::new(ErrorCode::RateLimited, "too many frames; slow down and retry", id);
            out.push(ServerFrame::Error(refusal.retry_after(self.limit.wait())));
            return;
        }
        match frame {
            ClientFrame::Identify(identify) => self.identify(identify, out).await,
            ClientFrame::Message(m) => {
                let kind = if m.attachments.is_empty() { "text" } else { "attachment" };
                let request = conv::AddGuestMessageRequest {
                    client_message_id: m.client_message_id,
                    kind: conv::MessageKind::Text as i32,
                    content: m.content,
                    attachments: m
                        .attachments
                        .into_iter()
                        .map(|a| conv::AttachmentRef { attachment_id: a.id, ..Default::default() })
                        .collect(),
                    ..Default::default()
                };
                self.add_message(request, kind, received, out).await;
            }
            ClientFrame::Postback(p) => {
                let content = p.label.clone().filter(|l| !l.trim().is_empty()).unwrap_or_else(|| p.payload.clone());
                let request = conv::AddGuestMessageRequest {
                    client_message_id: p.client_message_id,
                    kind: conv::MessageKind::Postback as i32,
                    content,
                    payload: Some(p.payload),
                    reply_to_message_id: p.message_id,
                    ..Default::default()
                };
                self.add_message(request, "quick_reply", received, out).await;
            }
            ClientFrame::Typing(t) => self.typing(t, out),
            ClientFrame::Read(r) => self.read(r, out).await,
            ClientFrame::LoadHistory(h) => self.load_history(h, out).await,
        }
    }

    async fn identify(&mut self, req: client::Identify, out: &mut Out) {
        let mut request = guest::IdentifyRequest {
            hotel_id: self.hotel_id.clone(),
            channel: "webchat".into(),
            visitor_id: req.visitor_id.clone(),
            visitor_token: req.visitor_token.clone(),
            user_hash: req.user_hash.clone(),
            name: req.name.clone(),
            email: req.email.clone(),
            no_new_visitor: false,
        };
        // A new visitor is a guest record: one address may create only so many. An identify
        // with a proof is a returning guest, unless its proof fails; then the guest service
        // says so instead of creating one, and it counts as new.
        let limited = self.edge.per_address.limits_new_visitors();
        let proof = req.visitor_token.is_some() || req.user_hash.is_some();
        if limited
            && !proof
            && let Some(refusal) = self.refuse_new_visitor()
        {
            return out.push(refusal);
        }
        request.no_new_visitor = limited && proof;
        // Held until the guest is identified: every backend call of an identify.
        let Some(_turn) = self.edge.backends.identifies.take().await else {
            return out.push(error(
                ErrorCode::Unavailable,
                "too many guests are connecting at once; retry shortly",
                None,
            ));
        };
        let mut answer = self.edge.backends.guest.clone().identify(request.clone()).await;
        if request.no_new_visitor
            && answer.as_ref().is_err_and(|s| s.code() == jack_proto::tonic::Code::FailedPrecondition)
        {
            if let Some(refusal) = self.refuse_new_visitor() {
                return out.push(refusal);
            }
            request.no_new_visitor = false;
            answer = self.edge.backends.guest.clone().identify(request).await;
        }
        let identified = match answer {
            Ok(r) => r.into_inner(),
            Err(status) => return out.push(ServerFrame::Error(error_frame(&status, None))),
        };
        let Some(g) = identified.guest else {
            return out.push(error(ErrorCode::Unavailable, "identify failed; retry", None));
        };
        let active = conv::GetActiveConversationRequest {
            hotel_id: g.hotel_id.clone(),
            guest_id: g.guest_id.clone(),
            channel: "webchat".into(),
            create: true,
        };
        let conversation = match self.edge.backends.conversation.clone().get_active_conversation(active).await {
            Ok(r) => r.into_inner(),
            Err(status) => return out.push(ServerFrame::Error(error_frame(&status, None))),
        };
        // Re-identifying on the same connection: leave the old conversation first.
        self.close();
        self.own.clear();
        let conversation_id: Arc<str> = conversation.conversation_id.as_str().into();
        // Subscribe first, then replay: nothing committed in between can be missed.
        self.edge.hub.attach(&conversation_id, self.handle.clone()).await;
        self.identity = Some(Identity { guest_id: g.guest_id.clone(), conversation_id: conversation_id.clone() });
        self.engaged = g.engaged;
        let identified_frame = frames::Identified {
            guest_id: g.guest_id,
            visitor_id: g.visitor_id,
            visitor_token: identified.visitor_token,
            conversation_id: Some(conversation_id.to_string()),
            visitor_token_expires_at: Some(rfc3339_ms(identified.visitor_token_expires_at_ms)),
        };
        // A visitor who could not prove the id it sent starts afresh and sees no history.
        let resume = (req.resume_conversation || req.last_seq.is_some()) && !identified.replaced_visitor;
        let replay = match (resume, req.last_seq.filter(|s| *s >= 0)) {
            (true, Some(last_seq)) => {
                self.high = last_seq.min(conversation.last_seq);
                true
            }
            (true, None) => {
                // The latest page; older ones come with `load_history`.
                let page = match self.list(None, None, LATEST_PAGE).await {
                    Ok(page) => page,
                    Err(status) => {
                        self.close();
                        return out.push(ServerFrame::Error(error_frame(&status, None)));
                    }
                };
                self.high = page.messages.last().map_or(0, |m| m.seq);
                out.push(ServerFrame::History(frames::History {
                    conversation_id: conversation_id.to_string(),
                    messages: page.messages.iter().map(convert::message).collect(),
                    has_more: page.has_more,
                }));
                // The page may predate a message committed while it was read: that goes out live.
                false
            }
            (false, _) => {
                // Anything committed between reading last_seq and attaching goes out live.
                self.high = conversation.last_seq;
                false
            }
        };
        self.follow = Some(Box::new(Follow { replay, then: Some(identified_frame) }));
        self.next_page(out).await;
    }

    async fn list(
        &self,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<conv::ListMessagesResponse, jack_proto::tonic::Status> {
        let identity = self.identity.as_ref().expect("listing needs an identity");
        let request = conv::ListMessagesRequest {
            conversation_id: identity.conversation_id.to_string(),
            after_seq,
            before_seq,
            limit,
            guest_id: Some(identity.guest_id.clone()),
            max_bytes: Some(PAGE_BYTES),
        };
        Ok(self.edge.backends.conversation.clone().list_messages(request).await?.into_inner())
    }

    /// The guest or its conversation is gone: the session ends (see `expired`).
    fn expire(&mut self) {
        tracing::debug!(session_id = %self.session_id, "the guest or its conversation was forgotten");
        self.close();
        self.expired = true;
    }

    /// Counts a new visitor from this client's address; the refusal to send when there are
    /// too many.
    fn refuse_new_visitor(&self) -> Option<ServerFrame> {
        let wait = self.edge.per_address.new_visitor(self.client).err()?;
        let refusal =
            frames::Error::new(ErrorCode::RateLimited, "too many new visitors from this address; retry later", None);
        Some(ServerFrame::Error(refusal.retry_after(wait.0)))
    }

    /// Whether pages after `high` are still to be read (see [`Follow`]).
    pub fn is_following(&self) -> bool {
        self.follow.is_some()
    }

    /// Reads the next page of what follows `high` and passes it on: as `history` when
    /// replaying, else as live messages; after the last page, the answer that waited for it.
    pub async fn next_page(&mut self, out: &mut Out) {
        let Some(replay) = self.follow.as_ref().map(|f| f.replay) else { return };
        let page = match self.list(Some(self.high), None, FOLLOW_PAGE).await {
            Ok(page) => page,
            Err(status) => {
                if self.follow.take().is_some_and(|f| f.then.is_some()) {
                    // An identify that cannot replay fails whole; the client identifies again.
                    self.close();
                    out.push(ServerFrame::Error(error_frame(&status, None)));
                } else {
                    // Retried after a pause (see `catch_up_pending`).
                    self.catch_up_pending = true;
                }
                return;
            }
        };
        if replay {
            if let Some(last) = page.messages.last() {
                self.high = last.seq;
            }
            let conversation_id = self.identity.as_ref().map(|i| i.conversation_id.to_string()).unwrap_or_default();
            out.push(ServerFrame::History(frames::History {
                conversation_id,
                messages: page.messages.iter().map(convert::message).collect(),
                has_more: false,
            }));
        } else {
            for message in &page.messages {
                self.deliver_in_order(message, out);
            }
        }
        if !page.has_more {
            self.catch_up_pending = false;
            if let Some(identified) = self.follow.take().and_then(|f| f.then) {
                out.push(ServerFrame::Identified(identified));
            }
        }
    }

    /// Sends, as live `message` frames, everything after `high` — page by page, each written
    /// before the next is read (a catch-up already under way simply goes on).
    pub async fn catch_up(&mut self, out: &mut Out) {
        if self.identity.is_none() {
            return;
        }
        if self.follow.is_none() {
            self.follow = Some(Box::new(Follow { replay: false, then: None }));
        }
        self.next_page(out).await;
    }

    /// Passes a message whose seq is `high + 1` (or older, dropped) to the client.
    fn deliver_in_order(&mut self, message: &conv::Message, out: &mut Out) {
        if message.seq <= self.high {
            return;
        }
        self.high = message.seq;
        if self.own.remove(&message.seq) {
            return; // this tab sent it and got its ack
        }
        if message.role != conv::Role::Guest as i32 {
            let kind = if !message.attachments.is_empty() {
                "attachment"
            } else if !message.quick_replies.is_empty() {
                "quick_reply"
            } else {
                "text"
            };
            self.edge.metrics.messages_total.with_label_values(&["outbound", kind]).inc();
            let latency = (now_ms() - message.created_at_ms).max(0) as f64;
            self.edge.metrics.message_latency.with_label_values(&["outbound"]).observe(latency);
        }
        out.push(ServerFrame::Message(convert::message(message)));
    }

    /// Whether frames about to be sent carry attachments without download URLs.
    pub fn wants_urls(out: &Out) -> bool {
        attachments(out).any(|a| a.url.is_none())
    }

    /// Gives every attachment in `out` short-lived download URLs (one call for all of them).
    /// Without upload the frames go as they are: the widget asks `/chat/attachment-urls`.
    pub async fn sign_attachments(&mut self, out: &mut Out) {
        let Some(identity) = &self.identity else { return };
        let mut ids: Vec<String> = attachments(out).filter(|a| a.url.is_none()).map(|a| a.id.clone()).collect();
        ids.sort();
        ids.dedup();
        let request =
            upload::SignDownloadsRequest { conversation_id: identity.conversation_id.to_string(), attachment_ids: ids };
        let signed = match self.edge.backends.upload.clone().sign_downloads(request).await {
            Ok(r) => r.into_inner().downloads,
            Err(status) => {
                tracing::debug!(code = ?status.code(), "attachment URLs not signed");
                return;
            }
        };
        for frame in out.iter_mut() {
            let list = match frame {
                ServerFrame::Message(m) => std::slice::from_mut(m),
                ServerFrame::History(h) => h.messages.as_mut_slice(),
                _ => continue,
            };
            for attachment in list.iter_mut().flat_map(|m| m.attachments.iter_mut()) {
                if let Some(d) = signed.iter().find(|d| d.attachment_id == attachment.id) {
                    attachment.url = Some(d.url.clone());
                    attachment.thumbnail_url = d.thumbnail_url.clone();
                    attachment.expires_at = Some(rfc3339_ms(d.expires_at_ms));
                }
            }
        }
    }

    /// Handles a live event from delivery.
    async fn on_event(&mut self, event: SessionEvent, out: &mut Out) {
        let event = match event {
            SessionEvent::CatchUp => return self.catch_up(out).await,
            SessionEvent::Event(event) => event,
        };
        let Some(identity) = &self.identity else { return };
        if *event.conversation_id != *identity.conversation_id {
            return;
        }
        match &event.kind {
            Some(events::event::Kind::Message(message)) => {
                if message.seq > self.high + 1 || self.catch_up_pending {
                    // A gap: something was missed; fetch it all in order.
                    self.catch_up(out).await;
                } else {
                    self.deliver_in_order(message, out);
                }
            }
            Some(events::event::Kind::Typing(t)) if t.role != conv::Role::Guest as i32 => {
                out.push(ServerFrame::Typing(frames::Typing { is_typing: t.is_typing, role: convert::role(t.role) }));
            }
            Some(events::event::Kind::Read(r)) if r.role != conv::Role::Guest as i32 => {
                out.push(ServerFrame::Read(frames::Read {
                    up_to_seq: r.up_to_seq,
                    role: convert::role(r.role),
                    timestamp: rfc3339_ms(event.at_ms),
                }));
            }
            _ => {}
        }
    }

    /// Handles what arrived in the mailbox; after an overflow, catches up from conversation.
    pub async fn on_mail(&mut self, out: &mut Out) {
        let (events, lagged) = self.handle.mailbox.take();
        if lagged {
            return self.catch_up(out).await;
        }
        for event in events {
            self.on_event(event, out).await;
        }
    }

    async fn add_message(
        &mut self,
        mut request: conv::AddGuestMessageRequest,
        kind: &str,
        received: Instant,
        out: &mut Out,
    ) {
        let client_message_id = request.client_message_id.clone();
        let Some(identity) = self.identity.clone() else {
            return out.push(error(ErrorCode::NotIdentified, "Please identify first", Some(client_message_id)));
        };
        if client_message_id.is_empty() {
            return out.push(error(ErrorCode::InvalidFrame, "clientMessageId must not be empty", None));
        }
        if let Err(wait) = self.edge.per_address.message(self.client) {
            let refusal = frames::Error::new(
                ErrorCode::RateLimited,
                "too many messages from this address; retry shortly",
                Some(client_message_id),
            );
            return out.push(ServerFrame::Error(refusal.retry_after(wait.0)));
        }
        if request.content.len() > self.edge.settings.max_message_size {
            let max = self.edge.settings.max_message_size;
            return out.push(error(
                ErrorCode::MessageTooLarge,
                format!("content is over {max} bytes"),
                Some(client_message_id),
            ));
        }
        if !request.attachments.is_empty() {
            let ids = request.attachments.iter().map(|a| a.attachment_id.clone()).collect();
            let resolve = upload::ResolveAttachmentsRequest {
                hotel_id: self.hotel_id.clone(),
                guest_id: identity.guest_id.clone(),
                attachment_ids: ids,
                conversation_id: identity.conversation_id.to_string(),
            };
            match self.edge.backends.upload.clone().resolve_attachments(resolve).await {
                Ok(r) => {
                    let resolved = r.into_inner();
                    if let Some(id) = resolved.missing.first() {
                        // The precise reason where upload gave one: a file that is not what was
                        // declared is ATTACHMENT_INVALID, anything else ATTACHMENT_NOT_FOUND.
                        let problem = resolved.problems.iter().find(|p| &p.attachment_id == id);
                        let invalid = problem.is_some_and(|p| {
                            matches!(p.problem(), upload::Problem::SizeMismatch | upload::Problem::TypeMismatch)
                        });
                        let (code, message) = match problem {
                            Some(p) if invalid => (ErrorCode::AttachmentInvalid, p.message.clone()),
                            Some(p) if !p.message.is_empty() => (ErrorCode::AttachmentNotFound, p.message.clone()),
                            _ => (ErrorCode::AttachmentNotFound, format!("attachment {id} not found")),
                        };
                        return out.push(error(code, message, Some(client_message_id)));
                    }
                    request.attachments = resolved
                        .attachments
                        .into_iter()
                        .map(|a| conv::AttachmentRef {
                            attachment_id: a.attachment_id,
                            filename: Some(a.filename),
                            content_type: Some(a.content_type),
                            size: Some(a.size),
                        })
                        .collect();
                }
                Err(status) => return out.push(ServerFrame::Error(error_frame(&status, Some(client_message_id)))),
            }
        }
        if !self.engaged {
            // The first thing this guest sends: from now on it is kept.
            let engaged = guest::MarkEngagedRequest { guest_id: identity.guest_id.clone() };
            match self.edge.backends.guest.clone().mark_engaged(engaged).await {
                Ok(_) => self.engaged = true,
                Err(status) if status.code() == jack_proto::tonic::Code::NotFound => return self.expire(),
                Err(status) => return out.push(ServerFrame::Error(error_frame(&status, Some(client_message_id)))),
            }
        }
        request.conversation_id = identity.conversation_id.to_string();
        request.guest_id = identity.guest_id.clone();
        let stored = match self.edge.backends.guest_messages.add(request).await {
            Ok(stored) => stored,
            Err(status) if status.code() == jack_proto::tonic::Code::NotFound => return self.expire(),
            Err(status) => return out.push(ServerFrame::Error(error_frame(&status, Some(client_message_id)))),
        };
        let Some(message) = stored.message else {
            return out.push(error(ErrorCode::Unavailable, "message not stored; retry", Some(client_message_id)));
        };
        if message.seq > self.high {
            self.own.insert(message.seq);
        }
        if !stored.duplicate {
            self.edge.metrics.messages_total.with_label_values(&["inbound", kind]).inc();
        }
        out.push(ServerFrame::MessageAck(frames::MessageAck {
            client_message_id,
            message_id: message.message_id,
            seq: message.seq,
            conversation_id: message.conversation_id,
            timestamp: rfc3339_ms(message.created_at_ms),
        }));
        self.edge
            .metrics
            .message_latency
            .with_label_values(&["inbound"])
            .observe(received.elapsed().as_secs_f64() * 1000.0);
    }

    fn typing(&mut self, typing: client::Typing, out: &mut Out) {
        let Some(identity) = &self.identity else {
            return out.push(error(ErrorCode::NotIdentified, "Please identify first", None));
        };
        let event = events::Event {
            conversation_id: identity.conversation_id.to_string(),
            hotel_id: self.hotel_id.clone(),
            guest_id: identity.guest_id.clone(),
            at_ms: now_ms(),
            kind: Some(events::event::Kind::Typing(events::Typing {
                role: conv::Role::Guest as i32,
                is_typing: typing.is_typing,
            })),
            ..Default::default()
        };
        // Typing is ephemeral: with no delivery stream up it is simply not shown.
        self.edge.hub.publish_guest_event(event);
    }

    async fn read(&mut self, read: client::Read, out: &mut Out) {
        let Some(identity) = &self.identity else {
            return out.push(error(ErrorCode::NotIdentified, "Please identify first", None));
        };
        if read.up_to_seq < 0 {
            return out.push(error(ErrorCode::InvalidFrame, "upToSeq must not be negative", None));
        }
        let request = conv::MarkReadRequest {
            conversation_id: identity.conversation_id.to_string(),
            role: conv::Role::Guest as i32,
            up_to_seq: read.up_to_seq,
            guest_id: Some(identity.guest_id.clone()),
        };
        if let Err(status) = self.edge.backends.conversation.clone().mark_read(request).await {
            out.push(ServerFrame::Error(error_frame(&status, None)));
        }
    }

    async fn load_history(&mut self, req: client::LoadHistory, out: &mut Out) {
        let Some(identity) = self.identity.clone() else {
            return out.push(error(ErrorCode::NotIdentified, "Please identify first", None));
        };
        if req.before_seq < 1 {
            return out.push(error(ErrorCode::InvalidFrame, "beforeSeq must be at least 1", None));
        }
        let limit = req.limit.unwrap_or(LATEST_PAGE).clamp(1, MAX_HISTORY_PAGE);
        match self.list(None, Some(req.before_seq), limit).await {
            Ok(page) => out.push(ServerFrame::History(frames::History {
                conversation_id: identity.conversation_id.to_string(),
                messages: page.messages.iter().map(convert::message).collect(),
                has_more: page.has_more,
            })),
            Err(status) => out.push(ServerFrame::Error(error_frame(&status, None))),
        }
    }
}

/// The attachments of the messages in `out`.
fn attachments(out: &Out) -> impl Iterator<Item = &frames::Attachment> {
    out.iter()
        .flat_map(|frame| match frame {
            ServerFrame::Message(m) => std::slice::from_ref(m),
            ServerFrame::History(h) => h.messages.as_slice(),
            _ => &[],
        })
        .flat_map(|m| m.attachments.iter())
}
