//! Settings of jack-delivery.

use std::net::SocketAddr;

use jack_runtime::callers::AuthSettings;
use jack_runtime::settings::{Env, SettingsError};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `DELIVERY_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `DELIVERY_EDGE_QUEUE`: batches queued per edge stream before that edge counts as too
    /// slow and its stream is closed (it reconnects and catches up from conversation).
    pub edge_queue: usize,
    /// `DELIVERY_SUBSCRIBER_QUEUE`: events queued per staff subscription before it is closed.
    pub subscriber_queue: usize,
    /// `GRPC_CALLERS_FILE` / `GRPC_AUTH`: who may call the gRPC API.
    pub grpc_auth: AuthSettings,
    /// `GRPC_TLS_*`: TLS of the gRPC listener (and of the calls this service makes).
    pub grpc_tls: jack_runtime::grpc::Tls,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            grpc_addr: env.socket_addr("DELIVERY_GRPC_ADDR", "127.0.0.1:50053")?,
            edge_queue: env.number("DELIVERY_EDGE_QUEUE", 4096, 1, 1 << 20)? as usize,
            subscriber_queue: env.number("DELIVERY_SUBSCRIBER_QUEUE", 1024, 1, 1 << 20)? as usize,
            grpc_auth: AuthSettings::from_env(env)?,
            grpc_tls: jack_runtime::grpc::Tls::from_env(env)?,
        })
    }
}
