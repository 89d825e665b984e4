//! Building and running jack-conversation.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use jack_proto::conversation::v1::conversation_service_server::ConversationServiceServer;
use jack_runtime::db::Database;
use jack_runtime::{CancellationToken, grpc, housekeeping, time};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::grpc::ConversationApi;
use crate::relay::Relay;
use crate::store::Store;

pub(crate) static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
pub(crate) static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The SQLite message writer's page cache, in KiB (SQLite's default is 2 MiB). Messages are
/// indexed by conversation, so a busy batch touches a page per active conversation; with
/// too small a cache each of them is read back from the file. Not much larger: a commit
/// after a page split scans the whole cache (SQLite renumbers split pages through a page
/// number past the file's end, and dropping pages past the end walks every hash slot), and
/// with a much larger cache that scan took a noticeable share of the writer thread's time.
const MESSAGE_WRITER_CACHE_KIB: u32 = 8 * 1024;

/// Conversations looked at by one read (a sweep reads until it has seen them all).
const SWEEP_BATCH: u64 = 1_000;

/// Forgets conversations that never got a message, `ttl` after they were opened. Each sweep
/// looks only at conversations opened since the one it last looked at (the first sweep of a
/// process at all of them), so its cost follows how many are opened, not how many there are.
struct EmptyConversations {
    store: Store,
    ttl: Duration,
    /// The last conversation looked at: (opened at, id).
    scanned: (i64, String),
}

impl EmptyConversations {
    async fn sweep(&mut self) {
        let cutoff = time::now_ms() - self.ttl.as_millis() as i64;
        let mut forgotten = 0;
        loop {
            let batch = match self.store.opened_between(&self.scanned, cutoff, SWEEP_BATCH).await {
                Ok(batch) => batch,
                Err(err) => return tracing::warn!(error = %err, "looking for empty conversations failed"),
            };
            let Some((opened, id, _)) = batch.last().cloned() else { break };
            let empty: Vec<String> = batch.into_iter().filter(|(_, _, used)| !used).map(|(_, id, _)| id).collect();
            match self.store.forget_if_empty(&empty).await {
                Ok(n) => forgotten += n,
                // Looked at again next time (one that got a message meanwhile is kept).
                Err(err) => return tracing::warn!(error = %err, "forgetting empty conversations failed"),
            }
            self.scanned = (opened, id);
        }
        if forgotten > 0 {
            tracing::info!(forgotten, "empty conversations forgotten");
        }
    }
}

/// A bound, migrated conversation service, ready to serve.
pub struct ConversationServer {
    listener: TcpListener,
    store: Store,
    settings: Settings,
    auth: jack_runtime::callers::Authenticate,
}

impl ConversationServer {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth = settings.grpc_auth.layer()?;
        let listener = grpc::bind("the conversation gRPC API", settings.grpc_addr).await?;
        let db = Database::open_with_writer_cache(&settings.database_url, &SQLITE, &POSTGRES, MESSAGE_WRITER_CACHE_KIB)
            .await?;
        Ok(Self { listener, store: Store::new(db), settings, auth })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "conversation service listening");
        let replicas = grpc::members(&self.settings.delivery_urls, &self.settings.credentials)?;
        let (relay, handle) = Relay::new(self.store.clone(), replicas, self.settings.publish_timeout);
        // With several replicas on one database, one relay publishes at a time.
        let relay = relay.with_leadership(crate::leader::start(&self.settings.database_url, shutdown.clone()));
        crate::leader::listen(&self.settings.database_url, handle.clone(), shutdown.clone());
        let api = ConversationApi::new(self.store.clone(), handle, shutdown.clone())
            .context("failed to start the message writer")?
            .with_watch_heartbeat(self.settings.watch_heartbeat);
        let upload = grpc::channel_to(
            &self.settings.upload_url,
            self.settings.publish_timeout.max(std::time::Duration::from_secs(2)),
            &self.settings.credentials,
        )?;
        let api = api.with_upload(jack_proto::upload::v1::upload_service_client::UploadServiceClient::new(upload));
        let relay_task = tokio::spawn(relay.run(shutdown.clone()));
        // Conversations that never got a message are forgotten after a while.
        let ttl = self.settings.empty_ttl;
        let janitor = std::sync::Arc::new(tokio::sync::Mutex::new(EmptyConversations {
            store: self.store.clone(),
            ttl,
            scanned: (0, String::new()),
        }));
        let forgetting =
            tokio::spawn(housekeeping::every(housekeeping::sweep_period(ttl), shutdown.clone(), move || {
                let janitor = janitor.clone();
                async move { janitor.lock().await.sweep().await }
            }));
        let store = self.store.clone();
        let ready = move || {
            let store = store.clone();
            async move { store.answers().await }
        };
        let router = grpc::server(self.auth, &self.settings.grpc_tls)?
            .add_service(grpc::health("jack.conversation.v1.ConversationService", shutdown.clone(), ready).await)
            .add_service(grpc::reflection())
            .add_service(grpc::reflection_v1alpha())
            .add_service(ConversationServiceServer::new(api));
        let result = grpc::serve(router, self.listener, shutdown).await;
        let _ = relay_task.await;
        let _ = forgetting.await;
        self.store.close().await;
        result
    }
}
