//! Building and running jack-edge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt as _;
use jack_proto::edge::v1 as pb;
use jack_proto::edge::v1::edge_service_server::{EdgeService, EdgeServiceServer};
use jack_proto::tonic::{self, Request, Response, Status};
use jack_runtime::{CancellationToken, grpc};
use tokio::net::TcpListener;

use crate::backends::{Backends, HotelPolicies};
use crate::config::Settings;
use crate::context::Edge;
use crate::gate::{self, Gated, Slotted};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::peer::{AddressLimits, Peer, PerAddress};

/// How long hotel policies are cached.
const POLICY_TTL: Duration = Duration::from_secs(30);

/// Descriptors kept for everything that is not a guest connection (gRPC channels, files,
/// the other services when they share the process under `jack up`).
const FD_RESERVE: usize = 256;

/// The soft "Max open files" limit from /proc/self/limits.
fn open_files_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// A bound edge, ready to serve.
pub struct EdgeServer {
    http: TcpListener,
    grpc: TcpListener,
    /// `EDGE_METRICS_ADDR`, unless it is off.
    metrics: Option<TcpListener>,
    settings: Settings,
    auth: jack_runtime::callers::Authenticate,
}

impl EdgeServer {
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        // Past the descriptor limit, accepting fails (and the listener backs off) instead of
        // answering a clean 503: keep the connection limit below it.
        if let Some(limit) = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| open_files_limit(&l)) {
            let usable = limit.saturating_sub(FD_RESERVE).max(1);
            if settings.max_connections > usable {
                tracing::warn!(
                    configured = settings.max_connections,
                    usable,
                    "WEBSOCKET_MAX_CONNECTIONS is above what the open-files limit allows; using the lower figure"
                );
                settings.max_connections = usable;
            }
        }
        let auth = settings.grpc_auth.layer()?;
        let http = grpc::bind("the WebSocket listener (WEBSOCKET_PORT)", settings.http_addr).await?;
        let grpc = grpc::bind("the edge gRPC API", settings.grpc_addr).await?;
        let metrics = match settings.metrics_addr {
            Some(addr) => Some(grpc::bind("the edge's metrics listener (EDGE_METRICS_ADDR)", addr).await?),
            None => None,
        };
        Ok(Self { http, grpc, metrics, settings, auth })
    }

    /// The HTTP/WebSocket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("a bound listener has an address")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("a bound listener has an address")
    }

    /// Where `GET /metrics` is served for Prometheus (`EDGE_METRICS_ADDR`), unless it is off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let backends = Backends::connect(&self.settings)?;
        let hub = Hub::new(self.settings.edge_id.clone());
        // The delivery streams outlive the listener: connections still open during the drain
        // get their live messages until their turn to close.
        let links_stop = CancellationToken::new();
        let links =
            hub.start(grpc::members(&self.settings.delivery_urls, &self.settings.credentials)?, links_stop.clone());
        let per_address = Arc::new(PerAddress::new(AddressLimits {
            max_connections: self.settings.max_connections_per_ip,
            connects_per_second: self.settings.connects_per_ip,
            new_visitors_per_minute: self.settings.new_visitors_per_ip,
            messages_per_second: self.settings.messages_per_ip,
            api_calls_per_second: self.settings.api_calls_per_ip,
        }));
        let edge = Arc::new(Edge {
            per_address,
            settings: self.settings,
            backends,
            hub,
            metrics: Metrics::new(),
            policies: HotelPolicies::new(POLICY_TTL),
            upload_types: std::sync::RwLock::new(None),
            connections: AtomicUsize::new(0),
            started: Instant::now(),
            shutdown: shutdown.clone(),
            shutdown_at: std::sync::OnceLock::new(),
        });
        tracing::info!(%addr, path = %edge.settings.ws_path, "edge listening");
        let status = grpc::server(self.auth, &edge.settings.grpc_tls)?
            .add_service(
                grpc::health("jack.edge.v1.EdgeService", shutdown.clone(), {
                    let edge = edge.clone();
                    move || std::future::ready(edge.ready())
                })
                .await,
            )
            .add_service(grpc::reflection())
            .add_service(grpc::reflection_v1alpha())
            .add_service(EdgeServiceServer::new(StatusApi { edge: edge.clone() }));
        let grpc_task = tokio::spawn(grpc::serve(status, self.grpc, shutdown.clone()));
        let limits_task = tokio::spawn(follow_upload_limits(edge.clone(), shutdown.clone()));
        // Forgets, now and then, the addresses whose rate limits are back to full.
        let swept = edge.clone();
        let sweep_task =
            tokio::spawn(jack_runtime::housekeeping::every(Duration::from_secs(60), shutdown.clone(), move || {
                swept.per_address.sweep();
                std::future::ready(())
            }));
        let http_limits = jack_runtime::http::Limits {
            header_read: edge.settings.header_timeout,
            write_stall: edge.settings.write_timeout,
        };
        let metrics_task = self.metrics.map(|listener| {
            let serving = jack_runtime::http::serve(
                listener,
                crate::http::metrics_router(edge.clone()),
                http_limits,
                shutdown.clone(),
                |_, addr| *addr,
            );
            tokio::spawn(serving)
        });
        let app = crate::http::router(edge.clone());
        // No Nagle: an ack or a live message must not wait for the guest's delayed ACK.
        // One address holds only so many connections, counted as they are accepted (a trusted
        // proxy's are counted by client, at the upgrade, see `crate::peer`).
        let per_peer = jack_runtime::http::PerPeer::new(
            self.http.tap_io(jack_runtime::no_delay),
            edge.settings.max_connections_per_ip,
            edge.settings.trusted_proxies.clone(),
        );
        let listener =
            Gated::new(per_peer, gate::HANDSHAKES_IN_FLIGHT, gate::HANDSHAKE_SLOT_FOR, gate::HANDSHAKE_SLOT_WAIT);
        let peer = |io: &Slotted<_>, addr: &SocketAddr| Peer { addr: *addr, slot: io.slot() };
        let result = jack_runtime::http::serve(listener, app, http_limits, shutdown.clone(), peer).await;
        let _ = grpc_task.await;
        let _ = limits_task.await;
        let _ = sweep_task.await;
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        // Connections close with 1001 over the drain; give the last a moment to send theirs.
        let deadline = Instant::now() + edge.settings.drain + Duration::from_secs(5);
        while edge.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        links_stop.cancel();
        let _ = links.await;
        result.map_err(Into::into)
    }
}

/// Keeps `upload_types` current: asked at start (again every few seconds until upload
/// answers), then every minute.
async fn follow_upload_limits(edge: Arc<Edge>, shutdown: CancellationToken) {
    loop {
        let wait = match edge.backends.upload.clone().get_limits(jack_proto::upload::v1::GetLimitsRequest {}).await {
            Ok(limits) => {
                *edge.upload_types.write().expect("upload types") = Some(limits.into_inner().allowed_types);
                Duration::from_secs(60)
            }
            Err(_) => Duration::from_secs(2),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

struct StatusApi {
    edge: Arc<Edge>,
}

#[tonic::async_trait]
impl EdgeService for StatusApi {
    async fn get_status(&self, _request: Request<pb::GetStatusRequest>) -> Result<Response<pb::EdgeStatus>, Status> {
        let (streams, up) = self.edge.hub.links();
        Ok(Response::new(pb::EdgeStatus {
            edge_id: self.edge.settings.edge_id.clone(),
            connections: self.edge.connections.load(Ordering::Relaxed) as u64,
            sessions: self.edge.hub.sessions() as u64,
            delivery_streams: streams as u32,
            delivery_streams_up: up as u32,
            uptime_seconds: self.edge.started.elapsed().as_secs(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
        assert_eq!(open_files_limit(limits), Some(20000));
        assert_eq!(open_files_limit("Max open files            unlimited            unlimited            files"), None);
    }
}
