//! `jack-delivery`: the real-time router between conversation and the edges.
//!
//! - [`router`]: who listens to what — which edge streams serve which conversations, and
//!   which staff subscriptions want which events. Soft state, in memory only.
//! - [`grpc`]: `DeliveryService` — the edges' bidirectional streams, `Publish` from
//!   conversation, `Subscribe` for staff dashboards.
//! - [`config`] and [`startup`]: settings and the one way to start the service.
//!
//! Delivery never stores anything: after a restart the edges re-open their streams and
//! re-attach their sessions, and fetch from conversation whatever they missed meanwhile.

pub mod config;
pub mod grpc;
pub mod router;
pub mod startup;

pub use config::Settings;
pub use startup::DeliveryServer;
