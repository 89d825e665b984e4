//! Building and running jack-guest.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use jack_proto::guest::v1::guest_service_server::GuestServiceServer;
use jack_runtime::db::Database;
use jack_runtime::{CancellationToken, grpc, housekeeping, time};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::domain::TokenSigner;
use crate::grpc::GuestApi;
use crate::store::{HotelRecord, Store};

/// The same SQL serves SQLite and PostgreSQL.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A bound, migrated guest service, ready to serve.
pub struct GuestServer {
    listener: TcpListener,
    db: Database,
    api: GuestApi,
    store: Store,
    silent_visitor_ttl: Duration,
    auth: jack_runtime::callers::Authenticate,
    tls: jack_runtime::grpc::Tls,
}

/// Guests forgotten by one statement (a sweep runs statements until fewer are left).
const FORGET_BATCH: u64 = 1_000;

/// One entry of `GUEST_HOTELS_FILE`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HotelEntry {
    hotel_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    allowed_origins: Vec<String>,
    identity_secret: Option<String>,
}

impl GuestServer {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth = settings.grpc_auth.layer()?;
        let listener = grpc::bind("the guest gRPC API", settings.grpc_addr).await?;
        let db = Database::open(&settings.database_url, &MIGRATIONS, &MIGRATIONS).await?;
        let store = Store::new(db.clone());
        let secret = match settings.token_secret {
            Some(secret) => secret,
            None => store.secret("visitor_token").await?,
        };
        if let Some(path) = &settings.hotels_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read GUEST_HOTELS_FILE {}", path.display()))?;
            let hotels: Vec<HotelEntry> =
                serde_json::from_str(&text).with_context(|| format!("invalid GUEST_HOTELS_FILE {}", path.display()))?;
            for h in hotels {
                crate::domain::check_id("hotelId", &h.hotel_id)
                    .map_err(|e| anyhow::anyhow!("invalid GUEST_HOTELS_FILE {}: {e}", path.display()))?;
                let record = HotelRecord {
                    hotel_id: h.hotel_id,
                    name: h.name,
                    allowed_origins: h.allowed_origins,
                    identity_secret: h.identity_secret,
                };
                store.upsert_hotel(&record, time::now_ms()).await?;
            }
        }
        let api = GuestApi::new(store.clone(), TokenSigner::new(&secret), settings.token_ttl);
        Ok(Self {
            listener,
            db,
            api,
            store,
            silent_visitor_ttl: settings.silent_visitor_ttl,
            auth,
            tls: settings.grpc_tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "guest service listening");
        let db = self.db.clone();
        let ready = move || {
            let db = db.clone();
            async move { db.answers().await }
        };
        let router = grpc::server(self.auth, &self.tls)?
            .add_service(grpc::health("jack.guest.v1.GuestService", shutdown.clone(), ready).await)
            .add_service(grpc::reflection())
            .add_service(grpc::reflection_v1alpha())
            .add_service(GuestServiceServer::new(self.api));
        // Anonymous visitors who never sent anything are forgotten after a while.
        let (store, ttl) = (self.store, self.silent_visitor_ttl);
        let forgetting =
            tokio::spawn(housekeeping::every(housekeeping::sweep_period(ttl), shutdown.clone(), move || {
                let (store, cutoff) = (store.clone(), time::now_ms() - ttl.as_millis() as i64);
                async move {
                    housekeeping::forget_in_batches("silent visitors", FORGET_BATCH, |limit| {
                        store.forget_silent(cutoff, limit)
                    })
                    .await
                }
            }));
        let result = grpc::serve(router, self.listener, shutdown).await;
        let _ = forgetting.await;
        self.db.close().await;
        result
    }
}
