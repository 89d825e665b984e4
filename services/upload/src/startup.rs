//! Building and running jack-upload.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use jack_proto::upload::v1::upload_service_server::UploadServiceServer;
use jack_runtime::db::Database;
use jack_runtime::{CancellationToken, grpc};
use tokio::net::TcpListener;

use crate::config::{Backend, Settings};
use crate::downloads::Downloads;
use crate::grpc::UploadApi;
use crate::http::HttpState;
use crate::signing::Signer;
use crate::storage::{LocalDisk, S3Store, Storage};
use crate::store::Store;

/// The same SQL serves SQLite and PostgreSQL.
pub(crate) static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A bound, migrated upload service with its storage open, ready to serve.
pub struct UploadServer {
    listener: TcpListener,
    http: TcpListener,
    store: Store,
    storage: Storage,
    downloads: Downloads,
    settings: Settings,
    auth: jack_runtime::callers::Authenticate,
}

impl UploadServer {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth = settings.grpc_auth.layer()?;
        let listener = grpc::bind("the upload gRPC API", settings.grpc_addr).await?;
        let http = grpc::bind("the upload HTTP endpoint (UPLOAD_HTTP_ADDR)", settings.http_addr).await?;
        let db = Database::open(&settings.database_url, &MIGRATIONS, &MIGRATIONS).await?;
        let store = Store::new(db);
        let secret = match &settings.signing_secret {
            Some(secret) => secret.clone(),
            None => store.secret("url_signing").await?,
        };
        let signer = Signer::new(&secret);
        let public_url =
            settings.public_url.clone().unwrap_or_else(|| format!("http://{}", http.local_addr().expect("bound")));
        let downloads = Downloads::new(signer.clone(), public_url.clone(), settings.download_ttl);
        let storage = match &settings.backend {
            Backend::Local { dir } => {
                let disk = LocalDisk::open(dir.clone(), public_url, signer)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot use {} for files (UPLOAD_DIR): {e}", dir.display()))?;
                Storage::Local(disk)
            }
            Backend::S3(s3) => Storage::S3(S3Store::connect(s3).await),
        };
        Ok(Self { listener, http, store, storage, downloads, settings, auth })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where browsers upload to (the local backend).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("a bound listener has an address")
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), http = %self.http_addr(), "upload service listening");
        let api = UploadApi::new(self.store.clone(), self.storage.clone(), self.downloads.clone(), &self.settings);
        let disk = match &self.storage {
            Storage::Local(disk) => Some(Arc::new(disk.clone())),
            Storage::S3(_) => None,
        };
        let state = HttpState {
            disk,
            downloads: self.downloads,
            store: self.store.clone(),
            storage: self.storage.clone(),
            downloads_in_flight: Arc::new(tokio::sync::Semaphore::new(self.settings.max_downloads)),
            receiving: crate::http::Receiving::new(self.settings.max_uploads),
            body_timeout: self.settings.body_timeout,
        };
        // No Nagle: a small answer (an upload's result, a thumbnail) must not wait for the
        // browser's delayed ACK, as on the edge's listener.
        let listener = jack_runtime::http::PerPeer::new(
            self.http.tap_io(jack_runtime::no_delay),
            self.settings.max_connections_per_ip,
            self.settings.trusted_proxies.clone(),
        );
        let limits = jack_runtime::http::Limits {
            header_read: self.settings.header_timeout,
            write_stall: self.settings.write_timeout,
        };
        let app = crate::http::router(state);
        let http = tokio::spawn(jack_runtime::http::serve(listener, app, limits, shutdown.clone(), |_, addr| *addr));
        let janitor = tokio::spawn(crate::janitor::run(
            self.store.clone(),
            self.storage.clone(),
            self.settings.url_ttl,
            self.settings.body_timeout,
            shutdown.clone(),
        ));
        let store = self.store.clone();
        let ready = move || {
            let store = store.clone();
            async move { store.answers().await }
        };
        let router = grpc::server(self.auth, &self.settings.grpc_tls)?
            .add_service(grpc::health("jack.upload.v1.UploadService", shutdown.clone(), ready).await)
            .add_service(grpc::reflection())
            .add_service(grpc::reflection_v1alpha())
            .add_service(UploadServiceServer::new(api));
        let result = grpc::serve(router, self.listener, shutdown).await;
        if let Ok(Err(err)) = http.await {
            tracing::warn!(error = %err, "upload HTTP listener failed");
        }
        let _ = janitor.await;
        self.store.close().await;
        result
    }
}
