//! `jack-edge`: the only public face of Jack web chat.
//!
//! A guest's browser holds a WebSocket here (protocol v1, `jack-frames`); everything durable
//! happens behind gRPC. The edge holds no durable state, so any edge may die at any time.
//!
//! - [`config`]: the documented variables (`WEBSOCKET_*`, `WIDGET_*`) and where the backends are.
//! - [`backends`]: gRPC clients of guest, conversation and upload, with deadlines, and how
//!   their failures become protocol error codes.
//! - [`hub`]: which local sessions serve which conversation, and the bidirectional streams
//!   to every delivery replica that feed them (re-opened with backoff when they break).
//! - [`session`]: one connection's protocol state machine — identify, resume by `lastSeq`,
//!   messages and acks, exactly-once in-order delivery by `seq`.
//! - [`gate`]: how many connections are set up at once (the rest wait in the accept queue).
//! - [`peer`]: who a connection comes from (behind trusted proxies too) and what one address
//!   may do: connections, connects a second, new visitors a minute.
//! - [`ws`]: the upgrade (origin, limits, hotel id) and the per-connection loop (pings,
//!   size limits, shutdown).
//! - [`http`]: health, metrics, the widget bundle, the demo page and the upload-URL API.
//! - [`metrics`]: the edge's four core Prometheus metrics.
//! - [`startup`]: binds and runs it all; the one way the binary, launcher and tests start it.

pub mod backends;
pub mod config;
pub mod context;
pub mod convert;
pub mod gate;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod peer;
pub mod session;
pub mod startup;
pub mod ws;

pub use config::Settings;
pub use startup::EdgeServer;
