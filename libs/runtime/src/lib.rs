//! What every Jack service shares, so that each starts, stops and is configured the same way.
//!
//! - [`settings`]: typed settings read from the environment, with one-line errors.
//! - [`telemetry`]: `tracing` to stderr (`RUST_LOG`) and, when `OTEL_*` asks for it, OTLP.
//! - [`shutdown`]: SIGTERM and SIGINT mean the same graceful drain.
//! - [`housekeeping`]: periodic jobs, such as forgetting records nobody will come back for.
//! - [`grpc`]: server and client setup with the deadlines and keep-alives we want everywhere.
//! - [`callers`]: who may call which gRPC method, checked on every request.
//! - [`http`]: serving a public HTTP listener with header-read and write-stall limits.
//! - [`db`]: opening a SQLite file or a PostgreSQL database through sqlx and migrating it;
//!   group commit for small writes.
//! - [`trace_context`]: W3C trace context carried across gRPC calls.
//! - [`ids`] and [`time`]: identifiers and timestamps in one format across services.

pub mod callers;
pub mod db;
pub mod grpc;
pub mod housekeeping;
pub mod http;
pub mod ids;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod trace_context;

pub use tokio_util::sync::CancellationToken;

/// Turns Nagle's algorithm off on an accepted HTTP connection (for axum's
/// `listener.tap_io(jack_runtime::no_delay)`): a small answer or frame must not wait for the
/// peer's delayed ACK, about 40 ms. (gRPC listeners get the same in [`grpc::serve`].)
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(error = %err, "TCP_NODELAY not set");
    }
}

/// mimalloc instead of the system allocator: the message path allocates and frees many
/// small buffers across threads, where glibc's malloc took a large share of the CPU.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them on its
/// segments, and a huge page counts whole in the process's memory however little of it is
/// used: with tens of thousands of mostly idle connections that was a sixth of `jack up`'s
/// memory. Called by [`telemetry::init`], the first thing every service does.
fn no_transparent_huge_pages() {
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("could not turn transparent huge pages off: {err}");
    }
}
