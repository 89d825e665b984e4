//! gRPC plumbing shared by every service: binding, serving with shutdown and caller
//! authentication, health, and client channels that carry a deadline and the caller's
//! credentials on every call.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server};
use tower::layer::util::{Identity, Stack};

use crate::callers::Authenticate;
use crate::trace_context;

/// The credentials a client presents on every call (`authorization: Bearer …`), or none.
#[derive(Debug, Clone, Default)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    /// A bearer token, as a callers file knows it (see [`crate::callers`]).
    pub fn bearer(token: &str) -> anyhow::Result<Self> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| anyhow::anyhow!("a gRPC token must be printable ASCII"))?;
        Ok(Self(Some(value)))
    }

    /// No credentials (for a service that checks none: `GRPC_AUTH=off`).
    pub fn none() -> Self {
        Self(None)
    }
}

/// What a client adds to every call: the current span's trace context and its credentials.
#[derive(Debug, Clone)]
pub struct Outgoing(Credentials);

impl tonic::service::Interceptor for Outgoing {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        trace_context::inject(request)
    }
}

/// A client channel that carries the caller's trace context and credentials on every call.
pub type Traced = InterceptedService<Channel, Outgoing>;

fn traced(channel: Channel, credentials: &Credentials) -> Traced {
    InterceptedService::new(channel, Outgoing(credentials.clone()))
}

/// A server with caller authentication, and what it becomes with services added.
pub type Builder = Server<Stack<Authenticate, Identity>>;
pub type Router = tonic::transport::server::Router<Stack<Authenticate, Identity>>;

/// The deadline of a unary call when the caller sets none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// The accept queue asked for by [`bind`]; the kernel caps it at `net.core.somaxconn`
/// (4096 by default on Linux).
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Binds a listener, with an error that names what failed to bind.
///
/// Its accept queue is as long as the kernel allows, not tokio's 128: when thousands of
/// guests reconnect at once (an edge restart, a hotel's Wi-Fi coming back), the handshakes
/// the queue cannot hold are dropped and each such guest waits for its SYN to be sent again,
/// a second or more later.
pub async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let listen = || {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted service can bind while old connections
        // to its port are still in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("failed to bind {what} on {addr}"))
}

/// A server builder with our transport settings: no Nagle, HTTP/2 keep-alives so dead peers
/// are noticed, and every request checked by `auth` before it reaches a service.
pub fn server(auth: Authenticate) -> Builder {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .trace_fn(trace_context::server_span)
        .layer(auth)
}

/// A gRPC health service reporting `name` as serving (and the empty name, for probes).
pub async fn health(name: &str) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    service
}

/// Serves a router on a bound listener until `shutdown` is cancelled.
///
/// The accepted connections get `TCP_NODELAY` here: the builder's own setting applies only to
/// listeners tonic binds itself. Without it a small response or stream message written
/// behind an unacknowledged one waited for the peer's delayed ACK, about 40 ms.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
    Ok(())
}

/// A lazily connecting channel to another service. Unary calls time out after `deadline`;
/// a service that is down fails fast with `Unavailable` instead of hanging.
pub fn channel(url: &str, deadline: Duration, credentials: &Credentials) -> anyhow::Result<Traced> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2).min(deadline))
        .timeout(deadline)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(traced(endpoint.connect_lazy(), credentials))
}

/// A channel for long-lived streams: no per-call timeout, keep-alives to notice a dead peer.
pub fn stream_channel(url: &str, credentials: &Credentials) -> anyhow::Result<Traced> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(traced(endpoint.connect_lazy(), credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accept queue the kernel gave a listening socket (`ss` shows it as Send-Q).
    fn backlog_of(addr: SocketAddr) -> u32 {
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{}", addr.port())])
            .output()
            .expect("`ss` (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next().unwrap_or_else(|| panic!("ss lists no listener on {addr}: {text:?}"));
        line.split_whitespace().nth(2).and_then(|q| q.parse().ok()).unwrap_or_else(|| panic!("no Send-Q in {line:?}"))
    }

    #[tokio::test]
    async fn listeners_take_as_many_pending_connections_as_the_kernel_allows() {
        let listener = bind("a test listener", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
        assert_eq!(backlog_of(listener.local_addr().unwrap()), LISTEN_BACKLOG.min(somaxconn));
    }

    #[tokio::test]
    async fn binding_a_taken_port_names_what_failed() {
        let taken = bind("a test listener", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind("the edge gRPC API", addr).await.unwrap_err();
        assert_eq!(err.to_string(), format!("failed to bind the edge gRPC API on {addr}"));
    }
}
