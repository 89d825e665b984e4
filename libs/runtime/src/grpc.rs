//! gRPC plumbing shared by every service: binding, serving with shutdown, health, and
//! client channels that carry a deadline on every call.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server};

use crate::trace_context;

/// A client channel that carries the caller's trace context on every call.
pub type Traced = InterceptedService<Channel, fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>>;

fn traced(channel: Channel) -> Traced {
    InterceptedService::new(channel, trace_context::inject as fn(_) -> _)
}

/// The deadline of a unary call when the caller sets none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Binds a listener, with an error that names what failed to bind.
pub async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr).await.with_context(|| format!("failed to bind {what} on {addr}"))
}

/// A server builder with our transport settings: no Nagle, HTTP/2 keep-alives so dead peers
/// are noticed, and a generous stream window for the delivery stream.
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .trace_fn(trace_context::server_span)
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
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
    Ok(())
}

/// A lazily connecting channel to another service. Unary calls time out after `deadline`;
/// a service that is down fails fast with `Unavailable` instead of hanging.
pub fn channel(url: &str, deadline: Duration) -> anyhow::Result<Traced> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2).min(deadline))
        .timeout(deadline)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(traced(endpoint.connect_lazy()))
}

/// A channel for long-lived streams: no per-call timeout, keep-alives to notice a dead peer.
pub fn stream_channel(url: &str) -> anyhow::Result<Traced> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(traced(endpoint.connect_lazy()))
}
