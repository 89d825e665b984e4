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
    /// Cancelled when the edge shuts down: connections close with 1001.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}
