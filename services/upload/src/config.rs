//! Settings of jack-upload.

use std::net::SocketAddr;

use jack_runtime::settings::{Env, SettingsError};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `UPLOAD_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `UPLOAD_DATABASE_URL`: `sqlite:PATH` or `postgres://…`.
    pub database_url: String,
    /// `WIDGET_MAX_FILE_SIZE` (the spec's name): the largest attachment, in bytes.
    pub max_file_size: u64,
    /// `UPLOAD_ALLOWED_TYPES`: content types guests may upload.
    pub allowed_types: Vec<String>,
}

pub const DEFAULT_TYPES: &str = "image/png,image/jpeg,image/gif,image/webp,application/pdf";

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let allowed_types = env.list_or("UPLOAD_ALLOWED_TYPES", DEFAULT_TYPES);
        Ok(Self {
            grpc_addr: env.socket_addr("UPLOAD_GRPC_ADDR", "127.0.0.1:50054")?,
            database_url: env.string("UPLOAD_DATABASE_URL", "sqlite:data/upload.db"),
            max_file_size: env.number("WIDGET_MAX_FILE_SIZE", 5_242_880, 1, 1 << 40)?,
            allowed_types: allowed_types.into_iter().map(|t| t.to_ascii_lowercase()).collect(),
        })
    }
}
