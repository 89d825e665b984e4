//! `jack-guest`: guests and their visitor identities, per hotel.
//!
//! - [`domain`]: the identity rules — visitor tokens, user hashes, input limits. No I/O.
//! - [`store`]: the `guests`, `hotels` and `service_secrets` tables (SQLite or PostgreSQL).
//! - [`grpc`]: `GuestService` — wire types in, domain rules applied, precise statuses out.
//! - [`config`]: settings from the environment.
//! - [`startup`]: binds, migrates and serves; the one way the binary, the launcher and tests start it.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod startup;
pub mod store;

pub use config::Settings;
pub use startup::GuestServer;
