//! `jack-conversation`: the source of truth for conversations and messages.
//!
//! - [`domain`]: the rules for messages — limits, roles, rich parts. No I/O.
//! - [`store`]: conversations, messages (with their per-conversation `seq` and global
//!   `position`) and the outbox, on SQLite or PostgreSQL.
//! - [`writer`]: group commit — concurrent messages share one transaction.
//! - [`relay`]: hands outbox rows (and ephemeral typing) to delivery until it accepts them.
//! - [`leader`]: which replica's relay publishes, one at a time.
//! - [`grpc`]: `ConversationService`, including the `WatchMessages` feed.
//! - [`config`] and [`startup`]: settings and the one way to start the service.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod leader;
pub mod relay;
pub mod startup;
pub mod store;
pub mod writer;

pub use config::Settings;
pub use startup::ConversationServer;
