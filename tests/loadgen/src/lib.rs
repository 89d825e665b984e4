//! `jack-loadgen`: drives Jack web chat over real sockets and prints figures anyone can
//! reproduce with one command. See README.md ("Performance") for the commands and results.
//!
//! Scenarios (`scenario`): `idle`, `chat`, `outbound`, `reconnect`, `echo`. `idle` and `chat`
//! need only protocol v1's core frames, so they can drive any server that speaks protocol v1;
//! the exactly-once checks (`verify`) use protocol v1's extras where the server offers them.
//! `client` holds the connection helpers, `report` the output, `procfs` the memory readings.

pub mod client;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod verify;
