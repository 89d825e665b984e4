//! Settings of jack-upload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jack_runtime::callers::AuthSettings;
use jack_runtime::settings::{Env, SettingsError};

use crate::store::Quota;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `UPLOAD_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `UPLOAD_HTTP_ADDR`: where browsers upload to (the local backend) and download from.
    pub http_addr: SocketAddr,
    /// `UPLOAD_PUBLIC_URL`: how browsers reach `http_addr` (default: its own address).
    pub public_url: Option<String>,
    /// `UPLOAD_DATABASE_URL`: `sqlite:PATH` or `postgres://…`.
    pub database_url: String,
    /// `WIDGET_MAX_FILE_SIZE` (the widget's setting): the largest attachment, in bytes.
    pub max_file_size: u64,
    /// `UPLOAD_ALLOWED_TYPES`: content types guests may upload.
    pub allowed_types: Vec<String>,
    /// `UPLOAD_URL_TTL`: how long an upload URL works, in seconds.
    pub url_ttl: Duration,
    /// `UPLOAD_DOWNLOAD_TTL`: how long a download URL works, in seconds.
    pub download_ttl: Duration,
    /// `UPLOAD_SIGNING_SECRET`: signs local upload and download URLs (default: generated
    /// once and kept in the database, so every replica shares it).
    pub signing_secret: Option<String>,
    /// Where files are kept.
    pub backend: Backend,
    /// `UPLOAD_HEADER_TIMEOUT_MS` (10000): a request's head must arrive whole within this, from
    /// the connection's start (or the previous answer on a kept-alive connection).
    pub header_timeout: Duration,
    /// `UPLOAD_WRITE_TIMEOUT_MS` (30000): a download (or any answer) that makes no progress for
    /// this long (a browser that stopped reading) is dropped.
    pub write_timeout: Duration,
    /// `UPLOAD_BODY_TIMEOUT_MS` (30000): an upload that sends no data for this long is refused
    /// with 408.
    pub body_timeout: Duration,
    /// `UPLOAD_MAX_DOWNLOADS` (64): downloads sent at once; more get 503 with `Retry-After`.
    pub max_downloads: usize,
    /// `UPLOAD_MAX_UPLOADS` (64): uploads received at once on the local backend; more get 503
    /// with `Retry-After`.
    pub max_uploads: usize,
    /// `UPLOAD_PREVIEW_MAX_BYTES` (64 MiB): the most decoding an image for its preview may
    /// allocate; a larger image (say over 21 megapixels of 8-bit RGB) gets no preview.
    pub preview_max_bytes: u64,
    /// What may wait to be sent (asked for, maybe uploaded, not yet in a message):
    /// `UPLOAD_MAX_PENDING_FILES` (20) and `UPLOAD_MAX_PENDING_BYTES` (50 MiB) per guest,
    /// `UPLOAD_MAX_PENDING_BYTES_PER_ADDRESS` (200 MiB) per client address,
    /// `UPLOAD_MAX_PENDING_BYTES_PER_HOTEL` (2 GiB) per hotel; beyond, RESOURCE_EXHAUSTED.
    pub quota: Quota,
    /// `UPLOAD_MAX_CONNECTIONS_PER_IP` (32): connections one address may hold on the HTTP
    /// listener (0: no limit); more are answered 429 and closed as they are accepted.
    pub max_connections_per_ip: usize,
    /// `UPLOAD_TRUSTED_PROXIES`: reverse proxies (addresses or CIDRs) whose connections the
    /// per-address limit does not count (they carry many clients).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `GRPC_CALLERS_FILE` / `GRPC_AUTH`: who may call the gRPC API.
    pub grpc_auth: AuthSettings,
    /// `GRPC_TLS_*`: TLS of the gRPC listener (and of the calls this service makes).
    pub grpc_tls: jack_runtime::grpc::Tls,
}

#[derive(Debug, Clone)]
pub enum Backend {
    /// `UPLOAD_STORAGE=local` (the default): files under `UPLOAD_DIR`.
    Local { dir: PathBuf },
    /// `UPLOAD_STORAGE=s3`: any S3-compatible store.
    S3(S3Settings),
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `UPLOAD_S3_BUCKET` (required).
    pub bucket: String,
    /// `UPLOAD_S3_ENDPOINT`: e.g. `http://minio:9000` (default: AWS).
    pub endpoint: Option<String>,
    /// `UPLOAD_S3_PUBLIC_ENDPOINT`: how browsers reach the store, when it differs from how this
    /// service does (`http://minio:9000` inside, `https://files.hotel-chat.example` outside);
    /// upload URLs are signed for it.
    pub public_endpoint: Option<String>,
    /// `UPLOAD_S3_REGION` (default: `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// `UPLOAD_S3_PATH_STYLE`: `http://host/bucket/key` addresses, as MinIO and most
    /// self-hosted stores want (default: true when an endpoint is set).
    pub path_style: bool,
    /// `UPLOAD_S3_PREFIX`: a folder inside the bucket for all of Jack's objects.
    pub prefix: String,
    /// `UPLOAD_S3_ACCESS_KEY_ID` and `UPLOAD_S3_SECRET_ACCESS_KEY`: static credentials for
    /// this store only (default: the standard AWS chain).
    pub credentials: Option<(String, String)>,
}

pub const DEFAULT_TYPES: &str = "image/png,image/jpeg,image/gif,image/webp,application/pdf";

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let allowed_types = env.list_or("UPLOAD_ALLOWED_TYPES", DEFAULT_TYPES);
        let backend = match env.string("UPLOAD_STORAGE", "local").as_str() {
            "local" => Backend::Local { dir: PathBuf::from(env.string("UPLOAD_DIR", "data/uploads")) },
            "s3" => {
                let bucket = env.string("UPLOAD_S3_BUCKET", "");
                if bucket.is_empty() {
                    return Err(SettingsError::new("UPLOAD_S3_BUCKET", "", "required when UPLOAD_STORAGE=s3"));
                }
                let endpoint = env.get("UPLOAD_S3_ENDPOINT").filter(|e| !e.is_empty()).map(str::to_owned);
                if let Some(e) = &endpoint {
                    env.url("UPLOAD_S3_ENDPOINT", e)?;
                }
                let public_endpoint = env.get("UPLOAD_S3_PUBLIC_ENDPOINT").filter(|e| !e.is_empty()).map(str::to_owned);
                if let Some(e) = &public_endpoint {
                    env.url("UPLOAD_S3_PUBLIC_ENDPOINT", e)?;
                }
                let path_style = env.parse("UPLOAD_S3_PATH_STYLE", endpoint.is_some())?;
                let prefix = env.string("UPLOAD_S3_PREFIX", "").trim_matches('/').to_owned();
                let region = env.get("UPLOAD_S3_REGION").filter(|r| !r.is_empty()).map(str::to_owned);
                let credentials = match (env.get("UPLOAD_S3_ACCESS_KEY_ID"), env.get("UPLOAD_S3_SECRET_ACCESS_KEY")) {
                    (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                        Some((id.to_owned(), secret.to_owned()))
                    }
                    (None, None) => None,
                    _ => {
                        return Err(SettingsError::new(
                            "UPLOAD_S3_ACCESS_KEY_ID",
                            "…",
                            "set both UPLOAD_S3_ACCESS_KEY_ID and UPLOAD_S3_SECRET_ACCESS_KEY, or neither",
                        ));
                    }
                };
                Backend::S3(S3Settings { bucket, endpoint, public_endpoint, region, path_style, prefix, credentials })
            }
            other => return Err(SettingsError::new("UPLOAD_STORAGE", other, "expected local or s3")),
        };
        let public_url = match env.get("UPLOAD_PUBLIC_URL").filter(|u| !u.is_empty()) {
            Some(u) => Some(env.url("UPLOAD_PUBLIC_URL", u)?.trim_end_matches('/').to_owned()),
            None => None,
        };
        let signing_secret = env.get("UPLOAD_SIGNING_SECRET").filter(|s| !s.is_empty()).map(str::to_owned);
        if let Some(secret) = &signing_secret
            && secret.len() < 32
        {
            return Err(SettingsError::new("UPLOAD_SIGNING_SECRET", "…", "must be at least 32 characters"));
        }
        Ok(Self {
            grpc_auth: AuthSettings::from_env(env)?,
            grpc_tls: jack_runtime::grpc::Tls::from_env(env)?,
            grpc_addr: env.socket_addr("UPLOAD_GRPC_ADDR", "127.0.0.1:50054")?,
            http_addr: env.socket_addr("UPLOAD_HTTP_ADDR", "127.0.0.1:3002")?,
            public_url,
            database_url: env.string("UPLOAD_DATABASE_URL", "sqlite:data/upload.db"),
            max_file_size: env.number("WIDGET_MAX_FILE_SIZE", 5_242_880, 1, 1 << 34)?,
            allowed_types: allowed_types.into_iter().map(|t| t.to_ascii_lowercase()).collect(),
            url_ttl: Duration::from_secs(env.number("UPLOAD_URL_TTL", 300, 1, 7 * 24 * 3600)?),
            download_ttl: Duration::from_secs(env.number("UPLOAD_DOWNLOAD_TTL", 3600, 1, 7 * 24 * 3600)?),
            signing_secret,
            backend,
            header_timeout: env.millis("UPLOAD_HEADER_TIMEOUT_MS", 10_000, 100)?,
            write_timeout: env.millis("UPLOAD_WRITE_TIMEOUT_MS", 30_000, 100)?,
            body_timeout: env.millis("UPLOAD_BODY_TIMEOUT_MS", 30_000, 100)?,
            max_downloads: env.number("UPLOAD_MAX_DOWNLOADS", 64, 1, 100_000)? as usize,
            max_uploads: env.number("UPLOAD_MAX_UPLOADS", 64, 1, 100_000)? as usize,
            preview_max_bytes: env.number("UPLOAD_PREVIEW_MAX_BYTES", 64 << 20, 1 << 20, 1 << 34)?,
            quota: Quota {
                files_per_guest: env.number("UPLOAD_MAX_PENDING_FILES", 20, 1, 1_000_000)?,
                bytes_per_guest: env.number("UPLOAD_MAX_PENDING_BYTES", 50 << 20, 1, 1 << 44)?,
                bytes_per_address: env.number("UPLOAD_MAX_PENDING_BYTES_PER_ADDRESS", 200 << 20, 1, 1 << 48)?,
                bytes_per_hotel: env.number("UPLOAD_MAX_PENDING_BYTES_PER_HOTEL", 2 << 30, 1, 1 << 50)?,
            },
            max_connections_per_ip: env.number("UPLOAD_MAX_CONNECTIONS_PER_IP", 32, 0, 10_000_000)? as usize,
            trusted_proxies: env.cidrs("UPLOAD_TRUSTED_PROXIES")?,
        })
    }
}
