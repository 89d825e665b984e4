//! A limit on the guests' connections being set up at once.
//!
//! When a Wi-Fi blip brings thousands of guests back together, every one of their handshakes,
//! identifies and replays is a task in the edge's run queues, and what is due to the guests
//! who stayed connected — the delivery stream's batches, then each guest's socket — waits
//! behind all of them (tests/loadgen/RESULTS.md has the reconnect storms with and without the
//! limit). So the listener
//! takes a [`Slot`] before each `accept`, and the kernel's accept queue holds the rest of the
//! storm. A connection gives its slot back once its first frame is handled, once a plain HTTP
//! request is answered, when it closes — and after [`HANDSHAKE_SLOT_FOR`] in any case. The
//! limit smooths a storm; it must never be a way to stop the edge: connections that send
//! nothing could hold every slot, so when a slot has to be taken back from a connection that
//! kept it too long, or none comes free within [`HANDSHAKE_SLOT_WAIT`], the edge accepts
//! without waiting for one (as it would without the limit) for [`HANDSHAKE_SLOT_FOR`].

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::Listener;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::peer::Peer;

/// Connections being set up at once (the edge's identify queue lets 64 of them into the
/// backends at a time, so this keeps it fed).
pub const HANDSHAKES_IN_FLIGHT: usize = 256;
/// The longest a connection keeps its slot.
pub const HANDSHAKE_SLOT_FOR: Duration = Duration::from_secs(5);
/// The longest `accept` waits for a slot. In a storm one comes free every fraction of a
/// millisecond; waiting longer means the slots are held by connections that are not moving.
pub const HANDSHAKE_SLOT_WAIT: Duration = Duration::from_millis(250);

type Held = Mutex<Option<OwnedSemaphorePermit>>;

/// A connection's place among those being set up; it travels with the request in
/// `ConnectInfo<Peer>`.
#[derive(Debug, Clone)]
pub struct Slot(Arc<Held>);

impl Slot {
    /// Gives the slot back (once; later calls do nothing).
    pub fn release(&self) {
        self.0.lock().expect("slot lock").take();
    }
}

/// A listener that accepts only while a slot is free.
pub struct Gated<L> {
    inner: L,
    slots: Arc<Semaphore>,
    hold_for: Duration,
    wait: Duration,
    /// Accept without waiting for a slot until then: connections were not giving theirs back.
    open_until: Option<Instant>,
    /// The slots given out, oldest first: all are held as long at most, so this is also the
    /// order in which they expire.
    given: VecDeque<(Instant, Weak<Held>)>,
}

impl<L> Gated<L> {
    pub fn new(inner: L, slots: usize, hold_for: Duration, wait: Duration) -> Self {
        Self { inner, slots: Arc::new(Semaphore::new(slots)), hold_for, wait, open_until: None, given: VecDeque::new() }
    }

    /// Takes back the slots held past their time (and then stops waiting for slots for a
    /// while) and forgets those already given back.
    fn reap(&mut self, now: Instant) {
        let mut expired = false;
        while let Some((deadline, held)) = self.given.front() {
            if let Some(held) = held.upgrade() {
                let mut held = held.lock().expect("slot lock");
                if held.is_some() {
                    if *deadline > now {
                        break;
                    }
                    expired = true;
                    held.take();
                }
            }
            self.given.pop_front();
        }
        if self.given.is_empty() && self.given.capacity() > 4 * HANDSHAKES_IN_FLIGHT {
            // A storm's worth of entries need not stay allocated.
            self.given.shrink_to(HANDSHAKES_IN_FLIGHT);
        }
        if expired {
            self.open(now, "a connection kept its slot too long");
        }
    }

    fn open(&mut self, now: Instant, why: &'static str) {
        if self.open_until.is_none_or(|until| now >= until) {
            tracing::warn!(
                why,
                for_s = self.hold_for.as_secs_f64(),
                "accepting connections without waiting for a slot"
            );
        }
        self.open_until = Some(now + self.hold_for);
    }

    /// A free slot, waiting for one for at most `wait` (and not at all while the gate is
    /// open); `None` when there is none.
    async fn slot(&mut self) -> Option<OwnedSemaphorePermit> {
        let give_up = Instant::now() + self.wait;
        loop {
            let now = Instant::now();
            self.reap(now);
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Some(permit);
            }
            if self.open_until.is_some_and(|until| now < until) {
                return None;
            }
            // Wake when a slot is given back, when the oldest expires, or when it is time to
            // stop waiting.
            let until = self.given.front().map_or(give_up, |(deadline, _)| (*deadline).min(give_up));
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => return permit.ok(),
                _ = tokio::time::sleep_until(until) => {}
            }
            let now = Instant::now();
            if now >= give_up {
                self.reap(now);
                if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                    return Some(permit);
                }
                self.open(now, "no connection slot came free in time");
                return None;
            }
        }
    }
}

impl<L: Listener> Listener for Gated<L> {
    type Io = Slotted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self.slot().await;
        let (io, addr) = self.inner.accept().await;
        let held = Arc::new(Mutex::new(permit));
        if held.lock().expect("slot lock").is_some() {
            self.given.push_back((Instant::now() + self.hold_for, Arc::downgrade(&held)));
        }
        (Slotted { io, slot: Slot(held) }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection with its slot (given back at the latest when it closes).
pub struct Slotted<T> {
    io: T,
    slot: Slot,
}

impl<T> Slotted<T> {
    /// The connection's slot, which travels with its requests in `ConnectInfo<Peer>`.
    pub fn slot(&self) -> Slot {
        self.slot.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Slotted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Slotted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The slot of the connection a request came on, if it was accepted through [`Gated`].
pub fn slot_of(request: &Request) -> Option<Slot> {
    request.extensions().get::<ConnectInfo<Peer>>().map(|info| info.0.slot.clone())
}

/// Middleware: a request that did not become a WebSocket gives its connection's slot back
/// once answered (a WebSocket gives it back after its first frame, `ws`).
pub async fn hand_back(request: Request, next: Next) -> Response {
    let slot = slot_of(&request);
    let response = next.run(request).await;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS
        && let Some(slot) = slot
    {
        slot.release();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    const PATIENCE: Duration = Duration::from_secs(10);

    const LONG: Duration = Duration::from_secs(600);

    async fn gated(slots: usize, hold_for: Duration, wait: Duration) -> (Gated<TcpListener>, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        (Gated::new(listener, slots, hold_for, wait), addr)
    }

    #[tokio::test]
    async fn a_connection_is_accepted_once_a_slot_is_given_back() {
        let (mut gate, addr) = gated(1, LONG, LONG).await;
        let _first_client = TcpStream::connect(addr).await.expect("connect");
        let (first, _) = gate.accept().await;
        let _second_client = TcpStream::connect(addr).await.expect("connect");
        let waiting = tokio::spawn(async move {
            let accepted = gate.accept().await;
            (gate, accepted)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the only slot is held: the second connection waits in the accept queue");
        first.slot.release();
        let (_gate, _second) =
            tokio::time::timeout(PATIENCE, waiting).await.expect("accepted once the slot is back").expect("task");
    }

    #[tokio::test]
    async fn a_closed_connection_gives_its_slot_back() {
        let (mut gate, addr) = gated(1, LONG, LONG).await;
        let _first_client = TcpStream::connect(addr).await.expect("connect");
        let (first, _) = gate.accept().await;
        drop(first);
        let _second_client = TcpStream::connect(addr).await.expect("connect");
        tokio::time::timeout(PATIENCE, gate.accept()).await.expect("the closed connection's slot is free");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_loses_its_slot_in_time() {
        let (mut gate, addr) = gated(2, Duration::from_millis(300), LONG).await;
        let mut silent = Vec::new();
        for _ in 0..2 {
            let client = TcpStream::connect(addr).await.expect("connect");
            silent.push((client, gate.accept().await));
        }
        let _guest = TcpStream::connect(addr).await.expect("connect");
        tokio::time::timeout(PATIENCE, gate.accept()).await.expect("the silent connections' slots expire");
        // Their sockets were open all along: only the slots came back.
        drop(silent);
    }

    fn has_slot<T>(io: &Slotted<T>) -> bool {
        io.slot.0.lock().expect("slot lock").is_some()
    }

    #[tokio::test]
    async fn slots_held_by_stuck_connections_do_not_stop_the_edge() {
        let (mut gate, addr) = gated(1, LONG, Duration::from_millis(100)).await;
        let _stuck_client = TcpStream::connect(addr).await.expect("connect");
        let (stuck, _) = gate.accept().await;
        // The only slot stays held: after the wait, connections are let in without one, and
        // the next ones without waiting again (the wait here is longer than the test's patience).
        let mut clients = vec![TcpStream::connect(addr).await.expect("connect")];
        let (first, _) = tokio::time::timeout(PATIENCE, gate.accept()).await.expect("let in without a slot");
        assert!(!has_slot(&first), "no slot was free");
        gate.wait = LONG;
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            let (io, _) =
                tokio::time::timeout(PATIENCE, gate.accept()).await.expect("let in at once while the gate is open");
            assert!(!has_slot(&io), "no slot was free");
        }
        // A slot given back is taken by the next connection.
        stuck.slot.release();
        clients.push(TcpStream::connect(addr).await.expect("connect"));
        let (io, _) = tokio::time::timeout(PATIENCE, gate.accept()).await.expect("accepted");
        assert!(has_slot(&io), "the free slot is taken");
    }

    #[tokio::test]
    async fn a_trickle_of_silent_connections_opens_the_gate() {
        // Each silent connection's slot expires and would go to the next silent one: the
        // first expiry opens the gate instead, and who comes next does not wait for a slot.
        let (mut gate, addr) = gated(1, Duration::from_millis(300), LONG).await;
        let mut silent = vec![TcpStream::connect(addr).await.expect("connect")];
        let (first, _) = gate.accept().await;
        assert!(has_slot(&first));
        silent.push(TcpStream::connect(addr).await.expect("connect"));
        let (second, _) =
            tokio::time::timeout(PATIENCE, gate.accept()).await.expect("accepted once the first slot expired");
        assert!(has_slot(&second), "the expired slot is free again");
        silent.push(TcpStream::connect(addr).await.expect("connect"));
        let (third, _) = tokio::time::timeout(PATIENCE, gate.accept()).await.expect("accepted");
        assert!(!has_slot(&third), "let in without waiting for the second's slot: the gate is open");
    }

    #[tokio::test]
    async fn an_answered_http_request_gives_its_slot_back() {
        let (gate, addr) = gated(1, LONG, LONG).await;
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(hand_back));
        let limits = jack_runtime::http::Limits { header_read: LONG, write_stall: LONG };
        let peer = |io: &Slotted<_>, addr: &std::net::SocketAddr| Peer { addr: *addr, slot: io.slot() };
        tokio::spawn(jack_runtime::http::serve(gate, app, limits, jack_runtime::CancellationToken::new(), peer));
        let get = |mut stream: TcpStream| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
            let mut answer = vec![0; 256];
            let n = stream.read(&mut answer).await.expect("read");
            assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "answered: {}", String::from_utf8_lossy(&answer[..n]));
            stream
        };
        // The first connection stays open (keep-alive) after its answer.
        let _kept = tokio::time::timeout(PATIENCE, get(TcpStream::connect(addr).await.expect("connect")))
            .await
            .expect("first answered");
        tokio::time::timeout(PATIENCE, get(TcpStream::connect(addr).await.expect("connect")))
            .await
            .expect("the second is let in");
    }
}
