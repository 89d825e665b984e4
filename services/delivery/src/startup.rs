//! Building and running jack-delivery.

use std::net::SocketAddr;
use std::sync::Arc;

use jack_proto::delivery::v1::delivery_service_server::DeliveryServiceServer;
use jack_runtime::{CancellationToken, grpc};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::grpc::DeliveryApi;
use crate::router::Router;

/// A bound delivery service, ready to serve.
pub struct DeliveryServer {
    listener: TcpListener,
    settings: Settings,
    router: Arc<Router>,
    auth: jack_runtime::callers::Authenticate,
}

impl DeliveryServer {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth = settings.grpc_auth.layer()?;
        let listener = grpc::bind("the delivery gRPC API", settings.grpc_addr).await?;
        Ok(Self { listener, settings, router: Arc::default(), auth })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "delivery service listening");
        let api = DeliveryApi::new(
            self.router.clone(),
            self.settings.edge_queue,
            self.settings.subscriber_queue,
            shutdown.clone(),
        );
        let router = grpc::server(self.auth, &self.settings.grpc_tls)?
            // Delivery needs nothing else to route: ready while it serves.
            .add_service(grpc::health("jack.delivery.v1.DeliveryService", shutdown.clone(), || async { true }).await)
            .add_service(grpc::reflection())
            .add_service(grpc::reflection_v1alpha())
            .add_service(DeliveryServiceServer::new(api));
        let clearing = {
            let (table, shutdown) = (self.router.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                table.clear(); // ends every edge and staff stream, so the drain can finish
            })
        };
        let result = grpc::serve(router, self.listener, shutdown).await;
        clearing.abort();
        result
    }
}
