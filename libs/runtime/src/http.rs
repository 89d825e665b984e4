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
//! What a handler may take (the body, the whole request) is each service's own choice, as
//! layers on its router.

use std::io;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_io_timeout::TimeoutStream;
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
pub async fn serve<L, C>(mut listener: L, app: Router, limits: Limits, shutdown: CancellationToken, info: impl Fn(&L::Io, &L::Addr) -> C) -> io::Result<()>
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
        let mut io = TimeoutStream::new(io);
        io.set_write_timeout(Some(limits.write_stall));
        let connection = http.serve_connection(TokioIo::new(Box::pin(io)), service).with_upgrades();
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
        let app = Router::new().route("/", get(|| async { "hello" })).route("/big", get(|| async { vec![b'x'; 64 << 20] }));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, app, limits, shutdown.clone(), |_, addr| *addr));
        (addr, shutdown)
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(PATIENCE, socket.read_to_end(&mut got)).await.expect("the server closes the connection").ok();
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
