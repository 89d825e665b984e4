//! `jack`: the launcher. `jack up` runs the embedded default — all five services in one
//! process, each on its own gRPC port and talking gRPC to the others, with SQLite files under
//! one data folder — plus a demo concierge that answers guests through the public
//! `ConversationService` API, as the AI team's responder would.
//!
//! - [`stack`]: starts (and, for tests, stops and restarts) each service.
//! - [`concierge`]: the demo responder.

pub mod concierge;
pub mod stack;

pub use stack::{Service, Stack};
