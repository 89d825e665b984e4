//! Settings of jack-guest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jack_runtime::callers::AuthSettings;
use jack_runtime::settings::{Env, SettingsError};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `GUEST_GRPC_ADDR`: where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// `GUEST_DATABASE_URL`: `sqlite:PATH` or `postgres://…`.
    pub database_url: String,
    /// `GUEST_TOKEN_SECRET`: signs visitor tokens. When unset, a random secret is created
    /// once and kept in the database, so tokens survive restarts and are shared by replicas.
    pub token_secret: Option<String>,
    /// `GUEST_HOTELS_FILE`: a JSON list of hotels loaded into the registry at start-up.
    pub hotels_file: Option<PathBuf>,
    /// `GUEST_TOKEN_TTL` (30 days, in seconds): how long a visitor token works. Every identify
    /// issues a new one, so a visitor who comes back within this time keeps their conversation.
    pub token_ttl: Duration,
    /// `GUEST_SILENT_VISITOR_TTL` (1 day, in seconds): a guest without a proof who has sent
    /// nothing is forgotten this long after arriving.
    pub silent_visitor_ttl: Duration,
    /// `GRPC_CALLERS_FILE` / `GRPC_AUTH`: who may call the gRPC API.
    pub grpc_auth: AuthSettings,
    /// `GRPC_TLS_*`: TLS of the gRPC listener (and of the calls this service makes).
    pub grpc_tls: jack_runtime::grpc::Tls,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let token_secret = env.get("GUEST_TOKEN_SECRET").map(str::to_owned);
        if let Some(secret) = &token_secret {
            if secret.len() < 32 {
                return Err(SettingsError::new("GUEST_TOKEN_SECRET", "(hidden)", "must be at least 32 characters"));
            }
            if looks_like_a_placeholder(secret) {
                return Err(SettingsError::new(
                    "GUEST_TOKEN_SECRET",
                    "(hidden)",
                    "looks like an example, not a secret: use 32 random characters or more (e.g. `openssl rand -hex 32`), or leave it unset",
                ));
            }
        }
        Ok(Self {
            grpc_addr: env.socket_addr("GUEST_GRPC_ADDR", "127.0.0.1:50051")?,
            database_url: env.string("GUEST_DATABASE_URL", "sqlite:data/guest.db"),
            token_secret,
            hotels_file: env.get("GUEST_HOTELS_FILE").map(PathBuf::from),
            token_ttl: Duration::from_secs(env.number("GUEST_TOKEN_TTL", 30 * 24 * 3600, 1, 400 * 24 * 3600)?),
            silent_visitor_ttl: Duration::from_secs(env.number(
                "GUEST_SILENT_VISITOR_TTL",
                24 * 3600,
                1,
                400 * 24 * 3600,
            )?),
            grpc_auth: AuthSettings::from_env(env)?,
            grpc_tls: jack_runtime::grpc::Tls::from_env(env)?,
        })
    }
}
/// A secret copied from an example: words such as "change me", or too few different
/// characters to be random (a repeated pattern).
fn looks_like_a_placeholder(secret: &str) -> bool {
    let lower = secret.to_ascii_lowercase();
    let words = ["change", "example", "placeholder", "replace", "your"];
    let distinct = secret.chars().collect::<std::collections::HashSet<_>>().len();
    words.iter().any(|w| lower.contains(w)) || distinct < 10
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secret(secret: &str) -> Result<Settings, SettingsError> {
        Settings::from_env(&Env::from_pairs([("GUEST_TOKEN_SECRET", secret), ("GRPC_AUTH", "off")]))
    }

    #[test]
    fn an_example_token_secret_stops_start_up_with_one_line() {
        for example in [
            "change-me-to-a-long-random-secret-of-32-chars-or-more",
            "your-secret-goes-here-at-least-32-characters",
            &"ab".repeat(20),
        ] {
            let err = with_secret(example).expect_err("refused").to_string();
            assert!(err.contains("GUEST_TOKEN_SECRET") && !err.contains('\n'), "{err}");
        }
        assert!(with_secret("short").is_err());
        if let Err(err) = with_secret("9f3c1e7a0b54d28e6f1a9c3b7d05e2f48a6c1d9e3b7f5a20") {
            panic!("a random secret is taken: {err}");
        }
        assert!(
            Settings::from_env(&Env::from_pairs([("GRPC_AUTH", "off")])).is_ok(),
            "unset: made and kept in the database"
        );
    }
}
