//! The spec's four metrics, by their names, in Prometheus text format at `GET /metrics`.

use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `webchat_connections_active{hotelId}`.
    pub connections_active: IntGaugeVec,
    /// `webchat_messages_total{direction, type}`: inbound guest messages (text, attachment,
    /// quick_reply) and outbound butler messages pushed to guests.
    pub messages_total: IntCounterVec,
    /// `webchat_connection_duration_seconds{disconnectReason}`.
    pub connection_duration: HistogramVec,
    /// `webchat_message_latency_ms{direction}`: inbound = frame received → ack sent;
    /// outbound = message committed → pushed to the guest's socket.
    pub message_latency: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let connections_active = IntGaugeVec::new(Opts::new("webchat_connections_active", "Open guest WebSocket connections"), &["hotelId"]).expect("valid metric");
        let messages_total = IntCounterVec::new(Opts::new("webchat_messages_total", "Chat messages through the edge"), &["direction", "type"]).expect("valid metric");
        let connection_duration = HistogramVec::new(
            HistogramOpts::new("webchat_connection_duration_seconds", "How long guest connections last")
                .buckets(vec![1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0]),
            &["disconnectReason"],
        )
        .expect("valid metric");
        let message_latency = HistogramVec::new(
            HistogramOpts::new("webchat_message_latency_ms", "Message latency through the edge, in milliseconds")
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0]),
            &["direction"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(connections_active.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(messages_total.clone()),
            Box::new(connection_duration.clone()),
            Box::new(message_latency.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self { registry, connections_active, messages_total, connection_duration, message_latency }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
