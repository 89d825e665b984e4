//! Settings of jack-edge. The documented variables keep their names and defaults.

use std::net::SocketAddr;
use std::time::Duration;

use jack_runtime::callers::AuthSettings;
use jack_runtime::grpc::Credentials;
use jack_runtime::settings::{Env, SettingsError};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `WEBSOCKET_HOST` and `WEBSOCKET_PORT` (3001): the public HTTP/WebSocket listener.
    pub http_addr: SocketAddr,
    /// `WEBSOCKET_PATH` (/ws/chat).
    pub ws_path: String,
    /// `WEBSOCKET_PING_INTERVAL` (30000 ms): server pings; a peer silent for a whole interval
    /// after a ping is dropped.
    pub ping_interval: Duration,
    /// `WEBSOCKET_MAX_CONNECTIONS` (10000): more get HTTP 503 before the upgrade.
    pub max_connections: usize,
    /// `WIDGET_ALLOWED_ORIGINS`: origins allowed to connect; empty allows all.
    pub allowed_origins: Vec<String>,
    /// `WIDGET_MAX_MESSAGE_SIZE` (4096): the largest message content, in bytes.
    pub max_message_size: usize,
    /// `WIDGET_MAX_FILE_SIZE` (5 MiB): announced to the widget in `connected`.
    pub max_file_size: u64,
    /// `EDGE_MAX_FRAME_SIZE`: a frame beyond this closes the connection with 1009
    /// (default: 16 × `WIDGET_MAX_MESSAGE_SIZE`, at least 64 KiB).
    pub max_frame_size: usize,
    /// `EDGE_RATE_LIMIT` (20 frames/s, bursts of twice that): over it, `RATE_LIMITED`.
    pub rate_limit: u32,
    /// `EDGE_TYPING_TTL_MS` (15 s): how long the butler's "typing…" stays shown to a guest
    /// without being renewed; then the edge tells the guest it stopped.
    pub typing_ttl: Duration,
    /// `EDGE_DRAIN_MS` (5000): at shutdown, guests are told to reconnect (close 1001) spread
    /// over this long, so that the other edges take them back gradually; keep it within the
    /// orchestrator's grace period.
    pub drain: Duration,
    /// `EDGE_GRPC_ADDR`: the edge's own status API.
    pub grpc_addr: SocketAddr,
    /// `EDGE_GUEST_URL`, `EDGE_CONVERSATION_URL`, `EDGE_UPLOAD_URL`: the backends, each one or
    /// more URLs (comma-separated) whose host names may stand for several replicas; calls are
    /// balanced over the replicas that answer (see `jack_runtime::grpc::channel_to`).
    pub guest_url: Vec<String>,
    pub conversation_url: Vec<String>,
    pub upload_url: Vec<String>,
    /// `EDGE_DELIVERY_URLS`: the delivery replicas, as URLs; a host name stands for every
    /// replica it resolves to, found again as they come and go. The edge keeps a stream to
    /// each (see `jack_runtime::grpc::members`).
    pub delivery_urls: Vec<String>,
    /// `GRPC_CALLERS_FILE` / `GRPC_AUTH`: who may call the edge's status API.
    pub grpc_auth: AuthSettings,
    /// `GRPC_TLS_*`: TLS of the gRPC listener (and of the calls this service makes).
    pub grpc_tls: jack_runtime::grpc::Tls,
    /// `EDGE_GRPC_TOKEN` (or `EDGE_GRPC_TOKEN_FILE`): the edge's token for calling the
    /// backends (role `edge`).
    pub credentials: Credentials,
    /// `EDGE_BACKEND_TIMEOUT_MS` (3000): the deadline of every backend call, and of each batch of
    /// guest messages on their stream.
    pub backend_timeout: Duration,
    /// `EDGE_ID`: names this edge in delivery's logs (default: random).
    pub edge_id: String,
    /// `EDGE_HEADER_TIMEOUT_MS` (10000): a request's head must arrive whole within this, from
    /// the connection's start (or the previous answer on a kept-alive connection).
    pub header_timeout: Duration,
    /// `EDGE_REQUEST_TIMEOUT_MS` (10000): an HTTP request (not a WebSocket) is answered, or
    /// refused with 408, within this, its body included.
    pub request_timeout: Duration,
    /// `EDGE_WRITE_TIMEOUT_MS` (10000): a write to a connection that makes no progress for this
    /// long (a peer that stopped reading) drops it.
    pub write_timeout: Duration,
    /// `EDGE_IDENTIFY_TIMEOUT_MS` (60000): a WebSocket not identified within this is closed
    /// with 4008 (at the next ping, so within a `WEBSOCKET_PING_INTERVAL` more).
    pub identify_timeout: Duration,
    /// `EDGE_METRICS_ADDR` (127.0.0.1:9091; `off` for none): a listener of its own for
    /// `GET /metrics`, for Prometheus.
    pub metrics_addr: Option<SocketAddr>,
    /// `EDGE_METRICS_TOKEN`: when set, `GET /metrics` on the public port answers requests that
    /// bring it as `Authorization: Bearer …`; when unset, the public port has no `/metrics`.
    pub metrics_token: Option<String>,
    /// `EDGE_METRICS_MAX_HOTELS` (100): unregistered hotels that get a `hotelId` label of their
    /// own at a time; connections to others count under `other hotels`.
    pub metrics_max_hotels: usize,
    /// `EDGE_TRUSTED_PROXIES`: the reverse proxies (addresses or CIDRs) whose `X-Forwarded-For`
    /// names the client; from anyone else the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `EDGE_MAX_CONNECTIONS_PER_IP` (512): connections one address may hold (TCP connections as
    /// they are accepted, WebSockets by client behind a trusted proxy); more get 429.
    pub max_connections_per_ip: usize,
    /// `EDGE_CONNECTS_PER_IP` (50): new WebSockets a second one address may open, in bursts of
    /// five seconds' worth; more get 429 with `Retry-After`.
    pub connects_per_ip: u32,
    /// `EDGE_NEW_VISITORS_PER_IP` (120): new visitors a minute one address may create, in bursts
    /// of a minute's worth; more identifies get `RATE_LIMITED` with `retryAfterMs`.
    pub new_visitors_per_ip: u32,
    /// `EDGE_MESSAGES_PER_IP` (50): guest messages a second from one address, in bursts of five
    /// seconds' worth; more get `RATE_LIMITED` with `retryAfterMs` (the widget resends).
    pub messages_per_ip: u32,
    /// `EDGE_API_CALLS_PER_IP` (10): calls of the HTTP API (upload and download URLs) a second
    /// from one address, in bursts of five seconds' worth; more get 429 with `Retry-After`.
    pub api_calls_per_ip: u32,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let host = env.string("WEBSOCKET_HOST", "0.0.0.0");
        let port = env.number("WEBSOCKET_PORT", 3001, 0, 65535)? as u16;
        let http_addr = format!("{host}:{port}")
            .parse()
            .map_err(|_| SettingsError::new("WEBSOCKET_HOST", &host, "expected an IP address, e.g. 0.0.0.0"))?;
        let ws_path = env.string("WEBSOCKET_PATH", "/ws/chat");
        if !ws_path.starts_with('/')
            || ws_path.contains(char::is_whitespace)
            || ws_path.starts_with("/health")
            || ws_path == "/metrics"
        {
            return Err(SettingsError::new("WEBSOCKET_PATH", &ws_path, "expected a path such as /ws/chat"));
        }
        let max_message_size = env.number("WIDGET_MAX_MESSAGE_SIZE", 4096, 1, 64 * 1024)? as usize;
        let default_frame = (max_message_size * 16).max(64 * 1024) as u64;
        let max_frame_size =
            env.number("EDGE_MAX_FRAME_SIZE", default_frame, max_message_size as u64 + 1024, 16 << 20)? as usize;
        let metrics_token = env.get("EDGE_METRICS_TOKEN").map(str::to_owned);
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(SettingsError::new("EDGE_METRICS_TOKEN", "…", "must be at least 16 characters"));
        }
        let trusted_proxies = env.cidrs("EDGE_TRUSTED_PROXIES")?;
        let grpc_auth = AuthSettings::from_env(env)?;
        let credentials = grpc_auth.credentials(env, "EDGE_GRPC_TOKEN")?;
        let origins = env.list("WIDGET_ALLOWED_ORIGINS");
        for origin in &origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) || origin.ends_with('/') {
                return Err(SettingsError::new(
                    "WIDGET_ALLOWED_ORIGINS",
                    origin,
                    "expected origins like https://hotel.com",
                ));
            }
        }
        Ok(Self {
            http_addr,
            ws_path,
            ping_interval: env.millis("WEBSOCKET_PING_INTERVAL", 30_000, 100)?,
            max_connections: env.number("WEBSOCKET_MAX_CONNECTIONS", 10_000, 1, 10_000_000)? as usize,
            allowed_origins: origins,
            max_message_size,
            max_file_size: env.number("WIDGET_MAX_FILE_SIZE", 5_242_880, 1, 1 << 40)?,
            max_frame_size,
            rate_limit: env.number("EDGE_RATE_LIMIT", 20, 1, 1_000_000)? as u32,
            typing_ttl: env.millis("EDGE_TYPING_TTL_MS", 15_000, 100)?,
            drain: env.millis("EDGE_DRAIN_MS", 5_000, 0)?,
            grpc_addr: env.socket_addr("EDGE_GRPC_ADDR", "127.0.0.1:50055")?,
            guest_url: env.urls("EDGE_GUEST_URL", "http://127.0.0.1:50051")?,
            conversation_url: env.urls("EDGE_CONVERSATION_URL", "http://127.0.0.1:50052")?,
            upload_url: env.urls("EDGE_UPLOAD_URL", "http://127.0.0.1:50054")?,
            delivery_urls: env.urls("EDGE_DELIVERY_URLS", "http://127.0.0.1:50053")?,
            grpc_auth,
            grpc_tls: jack_runtime::grpc::Tls::from_env(env)?,
            credentials,
            backend_timeout: env.millis("EDGE_BACKEND_TIMEOUT_MS", 3000, 10)?,
            edge_id: env.string("EDGE_ID", &format!("edge-{}", &jack_runtime::ids::random_hex()[..8])),
            header_timeout: env.millis("EDGE_HEADER_TIMEOUT_MS", 10_000, 100)?,
            request_timeout: env.millis("EDGE_REQUEST_TIMEOUT_MS", 10_000, 100)?,
            write_timeout: env.millis("EDGE_WRITE_TIMEOUT_MS", 10_000, 100)?,
            identify_timeout: env.millis("EDGE_IDENTIFY_TIMEOUT_MS", 60_000, 100)?,
            metrics_addr: match env.get("EDGE_METRICS_ADDR") {
                Some("off") => None,
                _ => Some(env.socket_addr("EDGE_METRICS_ADDR", "127.0.0.1:9091")?),
            },
            metrics_token,
            metrics_max_hotels: env.number("EDGE_METRICS_MAX_HOTELS", 100, 0, 100_000)? as usize,
            trusted_proxies,
            max_connections_per_ip: env.number("EDGE_MAX_CONNECTIONS_PER_IP", 512, 0, 10_000_000)? as usize,
            connects_per_ip: env.number("EDGE_CONNECTS_PER_IP", 50, 0, 1_000_000)? as u32,
            new_visitors_per_ip: env.number("EDGE_NEW_VISITORS_PER_IP", 120, 0, 1_000_000)? as u32,
            messages_per_ip: env.number("EDGE_MESSAGES_PER_IP", 50, 0, 1_000_000)? as u32,
            api_calls_per_ip: env.number("EDGE_API_CALLS_PER_IP", 10, 0, 1_000_000)? as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults() {
        let s = Settings::from_env(&Env::from_pairs([("GRPC_AUTH", "off")])).unwrap();
        assert_eq!(s.http_addr.port(), 3001);
        assert_eq!(s.ws_path, "/ws/chat");
        assert_eq!(s.ping_interval, Duration::from_secs(30));
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.max_message_size, 4096);
        assert_eq!(s.max_file_size, 5_242_880);
        assert!(s.allowed_origins.is_empty());
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let err = Settings::from_env(&Env::default()).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid GRPC_CALLERS_FILE=\"\": must name the file of the gRPC API's callers"),
            "{err}"
        );
        let err = Settings::from_env(&Env::from_pairs([("GRPC_CALLERS_FILE", "callers.json")])).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid EDGE_GRPC_TOKEN=\"\": must be set (or EDGE_GRPC_TOKEN_FILE)"),
            "{err}"
        );
        let err = Settings::from_env(&Env::from_pairs([("GRPC_AUTH", "off"), ("WEBSOCKET_PING_INTERVAL", "soon")]))
            .unwrap_err();
        assert!(err.to_string().starts_with("invalid WEBSOCKET_PING_INTERVAL=\"soon\""), "{err}");
        let err = Settings::from_env(&Env::from_pairs([("GRPC_AUTH", "off"), ("WIDGET_ALLOWED_ORIGINS", "hotel.com")]))
            .unwrap_err();
        assert!(err.to_string().contains("WIDGET_ALLOWED_ORIGINS"), "{err}");
    }
}
