//! The load scenarios, one module each (outbound and reconnect share one).

pub mod chat;
pub mod echo;
pub mod idle;
pub mod outbound;
