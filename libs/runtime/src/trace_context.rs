//! W3C trace context across gRPC calls, so that one guest message is one trace from the edge
//! through conversation to delivery. Clients inject the current span's context into the
//! request metadata; servers open a span per request whose parent is the caller's.

use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Request, Status};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(&value)) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A client interceptor: carries the current span's context to the callee.
pub fn inject(mut request: Request<()>) -> Result<Request<()>, Status> {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut MetadataInjector(request.metadata_mut())));
    Ok(request)
}

/// A server's span for one request, continuing the caller's trace.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let span = tracing::info_span!("grpc", path = %request.uri().path());
    let _ = span.set_parent(parent);
    span
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn a_call_continues_the_callers_trace() {
        global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let caller = tracing::info_span!("caller");
            let trace_id = caller.context().span().span_context().trace_id();
            let request = caller.in_scope(|| inject(Request::new(()))).unwrap();
            let traceparent =
                request.metadata().get("traceparent").expect("traceparent sent").to_str().unwrap().to_owned();
            assert!(traceparent.contains(&trace_id.to_string()), "{traceparent}");

            let incoming = http::Request::builder().header("traceparent", traceparent).body(()).unwrap();
            let server = server_span(&incoming);
            assert_eq!(server.context().span().span_context().trace_id(), trace_id);
        });
    }
}
