//! Building and running jack-upload.

use std::net::SocketAddr;

use jack_proto::upload::v1::upload_service_server::UploadServiceServer;
use jack_runtime::db::Database;
use jack_runtime::{CancellationToken, grpc};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::grpc::UploadApi;
use crate::store::Store;

/// The same SQL serves SQLite and PostgreSQL.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A bound, migrated upload service, ready to serve.
pub struct UploadServer {
    listener: TcpListener,
    store: Store,
    settings: Settings,
}

impl UploadServer {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = grpc::bind("the upload gRPC API", settings.grpc_addr).await?;
        let db = Database::open(&settings.database_url, &MIGRATIONS, &MIGRATIONS).await?;
        Ok(Self { listener, store: Store::new(db), settings })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "upload service listening");
        let api = UploadApi::new(self.store.clone(), &self.settings);
        let router = grpc::server()
            .add_service(grpc::health("jack.upload.v1.UploadService").await)
            .add_service(UploadServiceServer::new(api));
        let result = grpc::serve(router, self.listener, shutdown).await;
        self.store.close().await;
        result
    }
}
