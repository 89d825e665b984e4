//! The edge's four core metrics, by their names, in Prometheus text format at `GET /metrics`.
//!
//! Every label set is bounded: `hotelId` is a registered hotel's id, or one of at most
//! `EDGE_METRICS_MAX_HOTELS` others at a time (then `other hotels`), and a hotel's series goes once
//! its last connection closes — anyone can open a connection with any hotel id, and a label
//! value is a series kept for as long as it exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The `hotelId` of connections beyond the hotels that have a label of their own (with a
/// space, which no hotel id has).
pub const OTHER_HOTELS: &str = "other hotels";

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `webchat_connections_active{hotelId}` (see [`Metrics::connection_opened`]).
    hotels: Arc<HotelGauges>,
    /// `webchat_messages_total{direction, type}`: inbound guest messages (text, attachment,
    /// quick_reply) and outbound butler messages pushed to guests.
    pub messages_total: IntCounterVec,
    /// `webchat_connection_duration_seconds{disconnectReason}`.
    pub connection_duration: HistogramVec,
    /// `webchat_message_latency_ms{direction}`: inbound = frame received → ack sent;
    /// outbound = message committed → pushed to the guest's socket.
    pub message_latency: HistogramVec,
}

/// `webchat_connections_active{hotelId}` and which hotels have a label of their own.
struct HotelGauges {
    gauges: IntGaugeVec,
    labelled: Mutex<Labelled>,
}

#[derive(Debug, Default)]
struct Labelled {
    /// Connections per hotel that has a label of its own, and whether it is registered.
    connections: HashMap<Box<str>, (usize, bool)>,
    /// How many of those hotels are not registered.
    unregistered: usize,
}

/// One open connection in `webchat_connections_active`; counted out when dropped. Small: every
/// connection holds one for as long as it is open.
pub struct ConnectionGauge {
    hotels: Arc<HotelGauges>,
    label: Box<str>,
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        let mut labelled = self.hotels.labelled.lock().expect("metrics lock");
        self.hotels.gauges.with_label_values(&[&*self.label]).dec();
        if let Some((count, registered)) = labelled.connections.get_mut(&self.label) {
            *count -= 1;
            if *count == 0 {
                let registered = *registered;
                labelled.connections.remove(&self.label);
                labelled.unregistered -= usize::from(!registered);
                let _ = self.hotels.gauges.remove_label_values(&[&*self.label]);
            }
        }
    }
}

impl Metrics {
    /// Counts a connection to `hotel_id` in `webchat_connections_active`: under the hotel's
    /// own id when it is registered or when fewer than `max_unregistered` unregistered hotels
    /// have connections, else under [`OTHER_HOTELS`].
    pub fn connection_opened(&self, hotel_id: &str, registered: bool, max_unregistered: usize) -> ConnectionGauge {
        let mut labelled = self.hotels.labelled.lock().expect("metrics lock");
        let room = registered || labelled.unregistered < max_unregistered;
        let label: Box<str> = match labelled.connections.get_mut(hotel_id) {
            Some((count, _)) => {
                *count += 1;
                hotel_id.into()
            }
            None if room => {
                labelled.connections.insert(hotel_id.into(), (1, registered));
                labelled.unregistered += usize::from(!registered);
                hotel_id.into()
            }
            None => OTHER_HOTELS.into(),
        };
        self.hotels.gauges.with_label_values(&[&*label]).inc();
        drop(labelled);
        ConnectionGauge { hotels: self.hotels.clone(), label }
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let connections_active =
            IntGaugeVec::new(Opts::new("webchat_connections_active", "Open guest WebSocket connections"), &["hotelId"])
                .expect("valid metric");
        let messages_total = IntCounterVec::new(
            Opts::new("webchat_messages_total", "Chat messages through the edge"),
            &["direction", "type"],
        )
        .expect("valid metric");
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
        let hotels = Arc::new(HotelGauges { gauges: connections_active, labelled: Mutex::default() });
        Self { registry, hotels, messages_total, connection_duration, message_latency }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotel_labels_are_bounded_and_go_with_their_last_connection() {
        let metrics = Metrics::new();
        let a = metrics.connection_opened("hotel_a", false, 2);
        let b = metrics.connection_opened("hotel_b", false, 2);
        let c = metrics.connection_opened("hotel_c", false, 2);
        let registered = metrics.connection_opened("hotel_r", true, 2);
        let text = metrics.render();
        for line in [
            r#"{hotelId="hotel_a"} 1"#,
            r#"{hotelId="hotel_b"} 1"#,
            r#"{hotelId="other hotels"} 1"#,
            r#"{hotelId="hotel_r"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("hotel_c"), "{text}");
        drop(a);
        let text = metrics.render();
        assert!(!text.contains("hotel_a"), "the series goes with its last connection: {text}");
        // Its place is free for the next hotel.
        let d = metrics.connection_opened("hotel_d", false, 2);
        assert!(metrics.render().contains(r#"{hotelId="hotel_d"} 1"#));
        drop((b, c, d, registered));
        let text = metrics.render();
        assert!(text.contains(r#"{hotelId="other hotels"} 0"#) && !text.contains("hotel_"), "{text}");
    }
}
