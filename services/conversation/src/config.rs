//! Settings of jack-conversation.

use std::net::SocketAddr;
use std::time::Duration;

use jack_runtime::callers::AuthSettings;
use jack_runtime::grpc::Credentials;
use jack_runtime::settings::{Env, SettingsError};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `CONVERSATION_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `CONVERSATION_DATABASE_URL`: `sqlite:PATH` or `postgres://…`.
    pub database_url: String,
    /// `CONVERSATION_DELIVERY_URLS`: the delivery replicas, as URLs (a host name stands for
    /// every replica it resolves to, found again as they come and go); events go to one that
    /// answers, and a copy to each other for its staff subscriptions.
    pub delivery_urls: Vec<String>,
    /// `CONVERSATION_UPLOAD_URL`: the upload service, which says which attachment ids a
    /// butler's message may carry (and what they are); one or more URLs, as the edge's.
    pub upload_url: Vec<String>,
    /// `CONVERSATION_PUBLISH_TIMEOUT_MS`: deadline of one publish to delivery.
    pub publish_timeout: Duration,
    /// `CONVERSATION_EMPTY_TTL` (1 day, in seconds): a conversation without a single message is
    /// forgotten this long after it was opened (a guest who comes back gets a new one).
    pub empty_ttl: Duration,
    /// `CONVERSATION_WATCH_HEARTBEAT_MS` (15 s): how long a caught-up WatchMessages stream
    /// stays silent before it sends a heartbeat (a response with the cursor, no message).
    pub watch_heartbeat: Duration,
    /// `GRPC_CALLERS_FILE` / `GRPC_AUTH`: who may call the gRPC API.
    pub grpc_auth: AuthSettings,
    /// `GRPC_TLS_*`: TLS of the gRPC listener (and of the calls this service makes).
    pub grpc_tls: jack_runtime::grpc::Tls,
    /// `CONVERSATION_GRPC_TOKEN` (or `CONVERSATION_GRPC_TOKEN_FILE`): the relay's token for
    /// publishing to delivery (role `conversation`).
    pub credentials: Credentials,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let grpc_auth = AuthSettings::from_env(env)?;
        Ok(Self {
            credentials: grpc_auth.credentials(env, "CONVERSATION_GRPC_TOKEN")?,
            grpc_auth,
            grpc_tls: jack_runtime::grpc::Tls::from_env(env)?,
            grpc_addr: env.socket_addr("CONVERSATION_GRPC_ADDR", "127.0.0.1:50052")?,
            database_url: env.string("CONVERSATION_DATABASE_URL", "sqlite:data/conversation.db"),
            delivery_urls: env.urls("CONVERSATION_DELIVERY_URLS", "http://127.0.0.1:50053")?,
            upload_url: env.urls("CONVERSATION_UPLOAD_URL", "http://127.0.0.1:50054")?,
            publish_timeout: env.millis("CONVERSATION_PUBLISH_TIMEOUT_MS", 2000, 10)?,
            watch_heartbeat: env.millis("CONVERSATION_WATCH_HEARTBEAT_MS", 15_000, 100)?,
            empty_ttl: Duration::from_secs(env.number("CONVERSATION_EMPTY_TTL", 24 * 3600, 1, 400 * 24 * 3600)?),
        })
    }
}
