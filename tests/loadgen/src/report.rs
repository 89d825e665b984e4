//! Results: a two-column table for people, JSON for tools.

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

#[derive(Debug, Default)]
pub struct Report {
    title: String,
    rows: Vec<(String, Value)>,
}

impl Report {
    pub fn new(title: &str) -> Self {
        Self { title: title.to_owned(), rows: Vec::new() }
    }

    pub fn add(&mut self, name: &str, value: impl Into<Value>) {
        self.rows.push((name.to_owned(), value.into()));
    }

    /// p50/p95/p99/max of a latency histogram recorded in microseconds, in milliseconds.
    pub fn latency(&mut self, name: &str, histogram: &Histogram<u64>) {
        let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
        if histogram.is_empty() {
            self.add(name, Value::Null);
            return;
        }
        self.add(
            name,
            json!({
                "p50_ms": ms(histogram.value_at_quantile(0.50)),
                "p95_ms": ms(histogram.value_at_quantile(0.95)),
                "p99_ms": ms(histogram.value_at_quantile(0.99)),
                "max_ms": ms(histogram.max()),
                "count": histogram.len(),
            }),
        );
    }

    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("scenario".into(), Value::String(self.title.clone()));
        for (name, value) in &self.rows {
            map.insert(name.clone(), value.clone());
        }
        Value::Object(map)
    }

    pub fn print(&self, json_out: bool) {
        if json_out {
            println!("{}", self.to_json());
            return;
        }
        println!("{}", self.title);
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, value) in &self.rows {
            let shown = match value {
                Value::String(s) => s.clone(),
                Value::Object(o) => o.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("  "),
                other => other.to_string(),
            };
            println!("  {name:<width$}  {shown}");
        }
    }
}

/// A latency histogram in microseconds, up to one minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
