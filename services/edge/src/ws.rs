//! The WebSocket endpoint: the upgrade checks and the per-connection loop.
//!
//! Before the upgrade: origin (HTTP 403) and connection count (HTTP 503). After it: the hotel
//! id (close 4000 when missing, 4004 when a registry is configured and the hotel is not in
//! it), then `connected`. The loop reads frames, writes answers and live events, pings every
//! `WEBSOCKET_PING_INTERVAL` and drops a peer that stayed silent for a whole interval, closes
//! with 1009 on a frame beyond `EDGE_MAX_FRAME_SIZE`, 1007 on a text frame that is not UTF-8,
//! 1002 on a protocol violation, 4008 when no identify succeeded within
//! `EDGE_IDENTIFY_TIMEOUT_MS` (checked at each ping), and 1001 on shutdown. A peer that stops reading is dropped by
//! the listener's write-stall limit (`EDGE_WRITE_TIMEOUT_MS`, see `jack_runtime::http`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use jack_frames::{ServerFrame, close, server as frames};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::Instrument as _;

use crate::context::Edge;
use crate::gate::Slot;
use crate::hub::Mailbox;
use crate::peer::{Peer, client_ip};
use crate::session::Session;

/// How long a close frame may take to go out (a peer that stopped reading gets none).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Per-connection read buffer, sized for tens of thousands of mostly idle connections (it
/// grows for a larger frame). tungstenite's default is 128 KiB.
const READ_BUFFER: usize = 256;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Hotel ids: 1 to 128 printable ASCII characters without spaces (as the guest service has them).
fn valid_hotel_id(hotel_id: &str) -> bool {
    hotel_id.len() <= 128 && hotel_id.bytes().all(|b| b.is_ascii_graphic())
}

fn hotel_id_of(query: Option<&str>) -> Option<String> {
    let query = query?;
    url_params(query).into_iter().find(|(k, _)| k == "hotelId").map(|(_, v)| v).filter(|v| !v.is_empty())
}

fn url_params(query: &str) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&format!("/?{query}").parse().unwrap_or_default())
        .map(|q| q.0)
        .unwrap_or_default()
}

/// `GET {WEBSOCKET_PATH}`: checks, then upgrades.
pub async fn upgrade(State(edge): State<Arc<Edge>>, mut request: Request) -> Response {
    let headers = request.headers();
    let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let (Some(key), true, true) = (key, is_upgrade, version_ok) else {
        return plain(StatusCode::UPGRADE_REQUIRED, "expected a WebSocket upgrade (version 13)");
    };
    // One address may hold only so many connections, and open them only so fast.
    let peer =
        request.extensions().get::<ConnectInfo<Peer>>().map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.addr.ip());
    let client = client_ip(peer, headers, &edge.settings.trusted_proxies);
    let counted = match edge.per_address.connect(client) {
        Ok(counted) => counted,
        Err(wait) => {
            tracing::debug!(%client, "connection refused: too many from this address");
            let retry = HeaderValue::from(wait.seconds());
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry)],
                "Too many connections from this address",
            )
                .into_response();
        }
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let hotel_id = hotel_id_of(request.uri().query());

    let hotel_ok = hotel_id.as_deref().is_none_or(valid_hotel_id);
    // The hotel's own allowed origins (from the registry) win over the global list.
    let policy = match &hotel_id {
        Some(hotel) if hotel_ok => edge.policies.get(&edge.backends, hotel).await,
        _ => None,
    };
    let allowed = match &policy {
        Some(p) if !p.allowed_origins.is_empty() => &p.allowed_origins,
        _ => &edge.settings.allowed_origins,
    };
    if !allowed.is_empty() && !origin.as_ref().is_some_and(|o| allowed.iter().any(|a| a == o)) {
        tracing::warn!(
            origin = origin.as_deref().unwrap_or("(none)"),
            "rejected WebSocket connection from unauthorized origin"
        );
        return plain(StatusCode::FORBIDDEN, "Origin not allowed");
    }
    // Count the connection now, so concurrent upgrades cannot overshoot the limit.
    let max = edge.settings.max_connections;
    if edge.connections.fetch_add(1, Ordering::AcqRel) >= max {
        edge.connections.fetch_sub(1, Ordering::AcqRel);
        return plain(StatusCode::SERVICE_UNAVAILABLE, "Too many connections");
    }
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        edge.connections.fetch_sub(1, Ordering::AcqRel);
        return plain(StatusCode::UPGRADE_REQUIRED, "connection cannot be upgraded");
    };
    let close_with = match (&hotel_id, &policy) {
        (None, _) => Some((close::MISSING_HOTEL_ID, "Missing hotel ID")),
        (Some(_), _) if !hotel_ok => Some((close::INVALID_HOTEL_ID, "Invalid hotel ID")),
        (Some(_), Some(p)) if p.registry_enabled && !p.known => Some((close::UNKNOWN_HOTEL, "Unknown hotel ID")),
        _ => None,
    };
    let registered = policy.as_ref().is_some_and(|p| p.known);
    let task_edge = edge.clone();
    let slot = crate::gate::slot_of(&request);
    tokio::spawn(async move {
        // Whatever happens to the socket, its slot and its place among its address's
        // connections are given back when this task ends.
        let _release = Release(slot.clone());
        let _counted = counted;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                task_edge.connections.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(task_edge.settings.max_frame_size * 4)
            .max_message_size(Some(task_edge.settings.max_frame_size))
            .max_frame_size(Some(task_edge.settings.max_frame_size));
        // This task lives as long as the connection, and its future is as large as the
        // largest thing it ever waits on: what is waited on once (setting the socket up,
        // refusing it) is boxed, so that the task keeps only the connection loop's state.
        let ws = Box::pin(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))).await;
        match (close_with, hotel_id) {
            (None, Some(hotel_id)) => {
                Connection::open(task_edge.clone(), ws, hotel_id, client, slot).serve(registered).await
            }
            (Some((code, reason)), _) => Box::pin(refuse(ws, code, reason)).await,
            (None, None) => {}
        }
        task_edge.connections.fetch_sub(1, Ordering::AcqRel);
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is a valid header"),
    );
    response
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Gives a connection's slot among those being set up back when dropped.
struct Release(Option<Slot>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(slot) = &self.0 {
            slot.release();
        }
    }
}

async fn refuse(mut ws: Ws, code: u16, reason: &'static str) {
    close_with(&mut ws, code, reason).await;
    // Wait briefly for the client's close reply so the close handshake completes.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// Sends a close frame and waits for the peer to close its side, giving up after
/// [`CLOSE_TIMEOUT`].
async fn close_with(ws: &mut Ws, code: u16, reason: &'static str) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        ws.close(Some(frame)).await.map_err(std::io::Error::other)?;
        // What the peer is still sending (the rest of a frame too large, say) is read and
        // dropped until it closes too, within the same time: a socket closed with unread input
        // is reset, and a reset can destroy the close frame before the peer reads it.
        let socket = ws.get_mut();
        socket.shutdown().await?;
        let mut sink = [0u8; 4096];
        while socket.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Writes the frames to the socket in one write.
///
/// They are encoded here (with tungstenite's own frame encoder) and written past tungstenite,
/// into a buffer that lives only as long as this write: tungstenite's write buffer keeps the
/// capacity of the largest frame it ever held for the life of the connection, so one page of
/// history (tens of KiB) would have stayed with every idle guest who was ever sent one.
/// What tungstenite itself writes (pongs, pings, close frames) is flushed first, so nothing
/// interleaves; the connection loop never reads while it writes. A peer that stops reading
/// fails the write after the listener's write-stall limit.
async fn write_all(ws: &mut Ws, frames: &mut Vec<ServerFrame>) -> Result<(), tungstenite::Error> {
    ws.flush().await?;
    let mut bytes = Vec::new();
    for json in frames.drain(..).map(|frame| frame.to_json()) {
        Frame::message(json, OpCode::Data(Data::Text), true).format(&mut bytes)?;
    }
    let socket = ws.get_mut();
    socket.write_all(&bytes).await?;
    socket.flush().await?;
    Ok(())
}

/// An accepted guest connection. Tens of thousands of them sit idle at once, so everything
/// they keep lives in this one allocation, and the task that serves one holds only a pointer
/// to it and the futures it waits on. (An async fn keeps its arguments twice — as passed
/// and as locals — so passing the socket and session by value made every idle
/// connection's task about 2 KiB.)
struct Connection {
    edge: Arc<Edge>,
    ws: Ws,
    session: Session,
    mailbox: Arc<Mailbox>,
    out: Vec<ServerFrame>,
    ping: tokio::time::Interval,
    heard_since_ping: bool,
    started: Instant,
    /// Held until the first frame is handled (see [`crate::gate`]).
    slot: Option<Slot>,
    /// When, within the drain at shutdown, this connection is closed (see [`Edge::closes_at`]).
    turn: u16,
}

impl Connection {
    fn open(edge: Arc<Edge>, ws: Ws, hotel_id: String, client: IpAddr, slot: Option<Slot>) -> Box<Self> {
        let session_id = format!("ws_{}", jack_runtime::ids::random_hex());
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let (session, mailbox) = Session::new(edge.clone(), session_id, hotel_id, client, id);
        let out = vec![session.connected_frame()];
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + edge.settings.ping_interval,
            edge.settings.ping_interval,
        );
        // A tick missed while pages were written comes once, not in a burst.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let turn = rand::random();
        Box::new(Self {
            edge,
            ws,
            session,
            mailbox,
            out,
            ping,
            heard_since_ping: true,
            started: Instant::now(),
            slot,
            turn,
        })
    }

    /// The connection loop: reads frames, writes answers and live events, pings.
    async fn serve(mut self: Box<Self>, registered: bool) {
        let gauge = self.edge.metrics.connection_opened(
            &self.session.hotel_id,
            registered,
            self.edge.settings.metrics_max_hotels,
        );
        tracing::debug!(session_id = %self.session.session_id, hotel_id = %self.session.hotel_id, "webchat connection established");
        let reason = self.run().await;
        self.session.close();
        drop(gauge);
        self.edge
            .metrics
            .connection_duration
            .with_label_values(&[reason])
            .observe(self.started.elapsed().as_secs_f64());
        tracing::debug!(session_id = %self.session.session_id, reason, "webchat connection closed");
    }

    /// Runs until the connection ends; returns why.
    async fn run(&mut self) -> &'static str {
        // Waits before retrying a catch-up that failed; exists only while one is pending.
        let mut retry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        // The butler's typing shown to this guest; exists only while it is shown.
        let mut typing: Option<Box<TypingShown>> = None;
        loop {
            if self.out.iter().any(|f| matches!(f, ServerFrame::Typing(_))) {
                TypingShown::update(&mut typing, &self.out, self.edge.settings.typing_ttl);
            }
            if Session::wants_urls(&self.out) {
                Box::pin(self.session.sign_attachments(&mut self.out)).await;
            }
            // Boxed, and only when there is something to write: a write's state (its timer,
            // the frame on its way) would otherwise be part of every idle connection's task.
            if !self.out.is_empty()
                && let Err(err) = Box::pin(write_all(&mut self.ws, &mut self.out)).await
            {
                tracing::debug!(session_id = %self.session.session_id, error = %err, "write failed");
                return "write_error";
            }
            // Frames are large and an idle connection has none to write: keep no room for them.
            self.out = Vec::new();
            if self.session.expired {
                Box::pin(close_with(&mut self.ws, close::SESSION_EXPIRED, "Session expired; identify again")).await;
                return "session_expired";
            }
            if self.session.is_following() {
                // The next page of a replay or catch-up, now that the last one is written (the
                // guest is reading: that counts as hearing from it).
                self.heard_since_ping = true;
                if self.edge.closes_at(self.turn).is_some_and(|at| Instant::now() >= at) {
                    Box::pin(close_with(&mut self.ws, close::GOING_AWAY, "Server shutting down")).await;
                    return "shutdown";
                }
                Box::pin(self.session.next_page(&mut self.out)).await;
                continue;
            }
            match (self.session.catch_up_pending, retry.is_some()) {
                (true, false) => retry = Some(Box::pin(tokio::time::sleep(Duration::from_secs(1)))),
                (false, true) => retry = None,
                _ => {}
            }
            tokio::select! {
                incoming = self.ws.next() => {
                    self.heard_since_ping = true;
                    match incoming {
                        Some(Ok(Message::Text(text))) => {
                            // One span per frame: the backend calls it makes continue its trace.
                            let span = tracing::info_span!("ws.frame", session = %self.session.session_id, hotel = %self.session.hotel_id);
                            // Boxed: the connection's own future stays small while it is idle;
                            // the handler's (larger) state exists only while a frame is handled.
                            Box::pin(self.session.on_text(text.as_str(), &mut self.out).instrument(span)).await;
                        }
                        Some(Ok(Message::Binary(_))) => self.session.on_binary(&mut self.out),
                        Some(Ok(Message::Close(_))) | None => return "client_close",
                        Some(Ok(_)) => {} // ping (answered by tungstenite), pong, raw frame
                        Some(Err(tungstenite::Error::Capacity(_))) => {
                            Box::pin(close_with(&mut self.ws, close::MESSAGE_TOO_BIG, "Frame too large")).await;
                            return "message_too_big";
                        }
                        Some(Err(tungstenite::Error::Utf8(_))) => {
                            Box::pin(close_with(&mut self.ws, close::INVALID_PAYLOAD, "Text frame is not UTF-8")).await;
                            return "invalid_payload";
                        }
                        Some(Err(tungstenite::Error::Protocol(err))) => {
                            tracing::debug!(session_id = %self.session.session_id, error = %err, "protocol violation");
                            Box::pin(close_with(&mut self.ws, close::PROTOCOL_ERROR, "Protocol error")).await;
                            return "protocol_error";
                        }
                        Some(Err(err)) => {
                            tracing::debug!(session_id = %self.session.session_id, error = %err, "read failed");
                            return "error";
                        }
                    }
                    // Its first frame handled, the connection is set up (see `crate::gate`).
                    if let Some(slot) = self.slot.take() {
                        slot.release();
                    }
                }
                _ = self.mailbox.wake.notified() => Box::pin(self.session.on_mail(&mut self.out)).await,
                _ = async { typing.as_mut().expect("typing is shown").timer.as_mut().await }, if typing.is_some() => {
                    // A responder that stopped renewing its typing (it crashed, or forgot):
                    // the guest is told it stopped, rather than seeing "typing…" for good.
                    TypingShown::expire(&mut typing, &mut self.out);
                }
                _ = async { retry.as_mut().expect("a retry is pending").await }, if retry.is_some() => {
                    retry = None;
                    Box::pin(self.session.catch_up(&mut self.out)).await;
                }
                _ = self.ping.tick() => {
                    // A connection still not identified this long after it opened (checked at
                    // each ping: no timer of its own) goes.
                    if !self.session.is_identified() && self.started.elapsed() >= self.edge.settings.identify_timeout {
                        Box::pin(close_with(&mut self.ws, close::IDENTIFY_TIMEOUT, "Not identified in time")).await;
                        return "identify_timeout";
                    }
                    if !self.heard_since_ping {
                        return "ping_timeout";
                    }
                    self.heard_since_ping = false;
                    if Box::pin(self.ws.send(Message::Ping(Default::default()))).await.is_err() {
                        return "write_error";
                    }
                }
                _ = self.edge.turn_to_close(self.turn) => {
                    Box::pin(close_with(&mut self.ws, close::GOING_AWAY, "Server shutting down")).await;
                    return "shutdown";
                }
            }
        }
    }
}

/// The butler sides whose typing this guest is shown, each until when, unless renewed
/// (`EDGE_TYPING_TTL_MS`); and a timer for the soonest.
struct TypingShown {
    until: [(frames::Role, Option<tokio::time::Instant>); 2],
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl TypingShown {
    /// Notes the typing frames about to be written: `true` (re)starts that side's time, `false`
    /// ends it.
    fn update(shown: &mut Option<Box<Self>>, out: &[ServerFrame], ttl: Duration) {
        let now = tokio::time::Instant::now();
        let mut until =
            shown.as_ref().map_or([(frames::Role::Assistant, None), (frames::Role::Staff, None)], |s| s.until);
        for frame in out {
            if let ServerFrame::Typing(t) = frame
                && let Some(side) = until.iter_mut().find(|(role, _)| *role == t.role)
            {
                side.1 = t.is_typing.then_some(now + ttl);
            }
        }
        *shown = until
            .iter()
            .filter_map(|(_, at)| *at)
            .min()
            .map(|soonest| Box::new(Self { until, timer: Box::pin(tokio::time::sleep_until(soonest)) }));
    }

    /// Ends the typing whose time is up.
    fn expire(shown: &mut Option<Box<Self>>, out: &mut Vec<ServerFrame>) {
        let Some(s) = shown.as_mut() else { return };
        let now = tokio::time::Instant::now();
        for (role, at) in s.until.iter_mut() {
            if at.is_some_and(|at| at <= now) {
                *at = None;
                out.push(ServerFrame::Typing(frames::Typing { is_typing: false, role: *role }));
            }
        }
        match s.until.iter().filter_map(|(_, at)| *at).min() {
            Some(soonest) => s.timer.as_mut().reset(soonest),
            None => *shown = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotel_id_from_query() {
        assert_eq!(hotel_id_of(Some("hotelId=hotel_123")).as_deref(), Some("hotel_123"));
        assert_eq!(hotel_id_of(Some("a=1&hotelId=h%20x")).as_deref(), Some("h x"));
        assert_eq!(hotel_id_of(Some("hotelId=")), None);
        assert_eq!(hotel_id_of(None), None);
    }
}
