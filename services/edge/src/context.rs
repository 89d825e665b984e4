//! What every connection and HTTP handler of one edge shares.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use jack_runtime::CancellationToken;

use crate::backends::{Backends, HotelPolicies};
use crate::config::Settings;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::peer::PerAddress;

#[derive(Debug)]
pub struct Edge {
    pub settings: Settings,
    pub backends: Backends,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    pub policies: HotelPolicies,
    /// What one address may do (see [`crate::peer`]).
    pub per_address: Arc<PerAddress>,
    /// What guests may upload, as the upload service last said (None until it has).
    pub upload_types: std::sync::RwLock<Option<Vec<String>>>,
    /// Open WebSocket connections (counted from the upgrade on).
    pub connections: AtomicUsize,
    pub started: Instant,
    /// Cancelled when the edge shuts down: connections close with 1001, spread over the
    /// drain (`EDGE_DRAIN_MS`).
    pub shutdown: CancellationToken,
    /// When shutdown began (set by the first to see it).
    pub shutdown_at: std::sync::OnceLock<Instant>,
}

impl Edge {
    /// Ready for new guests: not shutting down, and at least one delivery stream up (without
    /// one, guests would get no live messages). Readiness of the edge's gRPC health.
    pub fn ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.hub.links().1 > 0
    }

    /// During shutdown, when a connection whose `turn` was drawn at random is closed: spread
    /// evenly over the drain, so that the other edges take this one's guests back gradually
    /// rather than all in the same instant (the widget adds its own backoff and jitter).
    /// `None` while the edge is not shutting down.
    pub fn closes_at(&self, turn: u16) -> Option<Instant> {
        if !self.shutdown.is_cancelled() {
            return None;
        }
        let began = *self.shutdown_at.get_or_init(Instant::now);
        Some(began + self.settings.drain.mul_f64(f64::from(turn) / 65_536.0))
    }

    /// Resolves when it is this connection's turn to be closed ([`Edge::closes_at`]).
    pub async fn turn_to_close(&self, turn: u16) {
        self.shutdown.cancelled().await;
        if let Some(at) = self.closes_at(turn) {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}
