//! Serving a public HTTP listener (the edge's, the upload service's) with the limits every
//! connection from the internet needs, which `axum::serve` does not set:
//!
//! - the request head must arrive whole within [`Limits::header_read`] — from the moment the
//!   connection is accepted, and again between the requests of a kept-alive connection — so a
//!   connection that sends nothing, or a header byte now and then, is closed;
//! - a write that makes no progress for [`Limits::write_stall`] fails the connection (a peer
//!   that stopped reading cannot hold a response, a download or a WebSocket's frames in memory
//!   for ever). The limit stays with the socket after a WebSocket upgrade.
//!
//! - one peer address may hold only so many connections at once ([`PerPeer`]): past the cap a
//!   new connection is answered 429 and closed as soon as it is accepted, before it costs
//!   anything but the accept, so one address cannot use up the descriptors even with
//!   connections that send nothing.
//!
//! What a handler may take (the body, the whole request) is each service's own choice, as
//! layers on its router.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer as _;

/// The limits of a public listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole request head must arrive within this; also how long a kept-alive connection
    /// may wait for its next request.
    pub header_read: Duration,
    /// A write that makes no progress for this long ends the connection.
    pub write_stall: Duration,
}

/// How long shutdown waits for requests being answered (WebSockets end on their own signal).
const GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on every connection `listener` accepts until `shutdown`, then lets requests
/// in progress finish for a moment. `info` makes each connection's `ConnectInfo` (the peer's
/// address, or whatever the listener knows about it), as axum's
/// `into_make_service_with_connect_info` would.
pub async fn serve<L, C>(
    mut listener: L,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    info: impl Fn(&L::Io, &L::Addr) -> C,
) -> io::Result<()>
where
    L: Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    let connections = TaskTracker::new();
    loop {
        let (io, addr) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let service = TowerToHyperService::new(axum::Extension(ConnectInfo(info(&io, &addr))).layer(app.clone()));
        let io = WriteStall { io, limit: limits.write_stall, waiting: None };
        let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = shutdown.cancelled() => {
                    // An idle connection closes at once; one mid-request finishes it first.
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(GRACE, connection.as_mut()).await {
                        Ok(ended) => ended,
                        Err(_) => return,
                    }
                }
            };
            if let Err(err) = ended {
                tracing::debug!(error = %err, timeout = err.is_timeout(), "http connection ended");
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(GRACE, connections.wait()).await;
    Ok(())
}

/// A connection whose writes fail once one has waited `limit` without making progress (the
/// peer stopped reading). The timer exists only while a write waits: an idle connection, of
/// which an edge holds tens of thousands, keeps no timer for it.
pub struct WriteStall<T> {
    io: T,
    limit: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteStall<T> {
    /// Passes a write's outcome on, starting the timer when it must wait and failing it when
    /// it has waited too long.
    fn watch<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.waiting = None;
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

/// The address per-address limits count by: an IPv4 address, or an IPv6 /64 (the network one
/// subscriber gets: a client with one has 2^64 addresses to spread over).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// What a connection over its address's cap is told before it is closed.
const TOO_MANY: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Open connections per address.
type OpenPerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A listener that lets each peer address hold at most `max` connections at once (0: no cap).
/// Peers in `exempt` (trusted reverse proxies, which carry many clients) are not counted.
pub struct PerPeer<L> {
    inner: L,
    max: usize,
    exempt: Vec<IpNet>,
    open: OpenPerAddress,
}

impl<L> PerPeer<L> {
    pub fn new(inner: L, max: usize, exempt: Vec<IpNet>) -> Self {
        Self { inner, max, exempt, open: Arc::default() }
    }
}

impl<L: Listener<Io = TcpStream, Addr = SocketAddr>> Listener for PerPeer<L> {
    type Io = Counted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            if self.max == 0 || self.exempt.iter().any(|net| net.contains(&addr.ip())) {
                return (Counted { io, counted: None }, addr);
            }
            let key = address_key(addr.ip());
            let mut open = self.open.lock().expect("per-peer lock");
            let count = open.entry(key).or_default();
            if *count < self.max {
                *count += 1;
                drop(open);
                return (Counted { io, counted: Some((self.open.clone(), key)) }, addr);
            }
            drop(open);
            tracing::debug!(peer = %addr, "connection refused: its address holds too many");
            // A fresh socket takes this much at once; what does not fit is not waited for.
            let _ = io.try_write(TOO_MANY);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection counted against its peer's address until it is dropped.
pub struct Counted<T> {
    io: T,
    counted: Option<(OpenPerAddress, IpAddr)>,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        if let Some((open, key)) = &self.counted {
            let mut open = open.lock().expect("per-peer lock");
            if let Some(count) = open.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    const PATIENCE: Duration = Duration::from_secs(10);

    async fn server(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app =
            Router::new().route("/", get(|| async { "hello" })).route("/big", get(|| async { vec![b'x'; 64 << 20] }));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, app, limits, shutdown.clone(), |_, addr| *addr));
        (addr, shutdown)
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(PATIENCE, socket.read_to_end(&mut got))
            .await
            .expect("the server closes the connection")
            .ok();
        got
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (addr, _stop) = server(Limits { header_read: Duration::from_millis(300), write_stall: PATIENCE }).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        assert!(until_closed(&mut socket).await.is_empty());
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_cut_off() {
        let (addr, _stop) = server(Limits { header_read: Duration::from_millis(500), write_stall: PATIENCE }).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let trickle = async {
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                if socket.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(PATIENCE, trickle).await.expect("the server hangs up on the trickle");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_may_idle_only_so_long() {
        let (addr, _stop) = server(Limits { header_read: Duration::from_millis(300), write_stall: PATIENCE }).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let answer = until_closed(&mut socket).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    }

    #[tokio::test]
    async fn one_address_holds_only_so_many_connections() {
        use axum::serve::ListenerExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/", get(|| async { "hello" }));
        let limits = Limits { header_read: PATIENCE, write_stall: PATIENCE };
        let capped = PerPeer::new(listener.tap_io(|_| {}), 2, Vec::new());
        tokio::spawn(serve(capped, app, limits, CancellationToken::new(), |_, addr| *addr));
        let held = [TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(until_closed(&mut third).await.starts_with(b"HTTP/1.1 429"), "the third is refused at once");
        drop(held);
        // The places come back with the connections (their closing is seen a moment later).
        let answered = tokio::time::timeout(PATIENCE, async {
            loop {
                let mut socket = TcpStream::connect(addr).await.unwrap();
                socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
                if until_closed(&mut socket).await.starts_with(b"HTTP/1.1 200") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(answered.is_ok());
        // A trusted proxy's connections are not counted.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/", get(|| async { "hello" }));
        let proxy = PerPeer::new(listener.tap_io(|_| {}), 1, vec!["127.0.0.1/32".parse().unwrap()]);
        tokio::spawn(serve(proxy, app, limits, CancellationToken::new(), |_, addr| *addr));
        let _held = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        assert!(until_closed(&mut second).await.starts_with(b"HTTP/1.1 200"));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_key(ip("2001:db8:1:2:aaaa::1")), address_key(ip("2001:db8:1:2:bbbb::9")));
        assert_ne!(address_key(ip("2001:db8:1:2::1")), address_key(ip("2001:db8:1:3::1")));
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(address_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_is_dropped() {
        let (addr, _stop) = server(Limits { header_read: PATIENCE, write_stall: Duration::from_millis(300) }).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // Read nothing until the server has given up on its write, then drain what it sent:
        // far less than the 64 MiB answer (what the socket buffers held).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let got = until_closed(&mut socket).await;
        assert!(got.len() < 32 << 20, "{} bytes", got.len());
    }
}
