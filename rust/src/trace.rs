//! OpenTelemetry traces of predict requests, exported over OTLP/gRPC (`--trace-otlp-endpoint`).
//!
//! Off by default, and then free: every hook on the request path first reads one relaxed atomic and does nothing
//! else. On, an ingress wraps a request in `request(...)`, which takes the W3C `traceparent` the client sent and puts
//! a `RequestTrace` in a task-local; decode, each stage and encode add child records to it (plain timestamps, no
//! OpenTelemetry objects), and when the request is answered (or dropped) the request span and its children are built
//! in one go and handed to the SDK's batch span processor, which exports from its own thread: the request path never
//! waits for the exporter.
//!
//! Span layout (names and attributes are documented in docs/10-operations.md):
//! `rustserve.request` (kind server; parent: the sent `traceparent`) with children `rustserve.decode`,
//! `rustserve.stage.python` / `rustserve.stage.model` (one per stage, in order) and `rustserve.encode`; every span
//! carries `rustserve.servable`, `rustserve.method` and `rustserve.version` once the request is routed.

use crate::error::ServeError;
use crate::metrics::Protocol;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Whether a tracer is installed: the one check the request path makes when tracing is off.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The installed tracer (one per process: the last server that enabled tracing).
static TRACER: RwLock<Option<SdkTracer>> = RwLock::new(None);

tokio::task_local! {
    /// The trace of the request this task is answering.
    static CURRENT: Arc<RequestTrace>;
}

/// How long the exporter may take for one export call before it gives up on it.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// An installed OTLP exporter; owned by the server's runtime, which flushes it on stop.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Builds the OTLP/gRPC exporter for `endpoint` (`http://host:4317`) and installs its tracer for every request of
    /// this process. Call inside the tokio runtime that will carry the exports (the gRPC channel's tasks run there).
    pub fn install(endpoint: &str) -> Result<Exporter, ServeError> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ServeError::Config(format!(
                "the OTLP endpoint must be an http:// or https:// URL, got {endpoint:?}"
            )));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| ServeError::Config(format!("cannot set up the OTLP exporter for {endpoint}: {e}")))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("rustserve");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("rustserve");
        *TRACER.write().unwrap_or_else(PoisonError::into_inner) = Some(tracer);
        ENABLED.store(true, Ordering::Release);
        tracing::info!(endpoint, "exporting OpenTelemetry traces over OTLP/gRPC");
        Ok(Exporter { provider })
    }

    /// Stops tracing new requests and exports what is queued, waiting at most `timeout`.
    pub fn shutdown(self, timeout: Duration) {
        ENABLED.store(false, Ordering::Release);
        TRACER.write().unwrap_or_else(PoisonError::into_inner).take();
        if let Err(err) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!("OpenTelemetry spans not all exported at stop: {err}");
        }
    }
}

/// Whether requests are traced now.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Parses a W3C `traceparent` value (`00-<trace id>-<parent id>-<flags>`); None when absent or malformed, as the
/// W3C spec says (a new trace starts).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    // Version 00 has exactly four fields; later versions may append more, ff is invalid.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The W3C parent a gRPC client sent in its `traceparent` metadata; None when tracing is off (nothing is read).
pub fn grpc_traceparent(metadata: &tonic::metadata::MetadataMap) -> Option<SpanContext> {
    sent_parent(|| metadata.get(TRACEPARENT).and_then(|value| value.to_str().ok()))
}

/// The W3C parent an HTTP client sent in its `traceparent` header; None when tracing is off (nothing is read).
pub fn http_traceparent(headers: &http::HeaderMap) -> Option<SpanContext> {
    sent_parent(|| headers.get(TRACEPARENT).and_then(|value| value.to_str().ok()))
}

const TRACEPARENT: &str = "traceparent";

fn sent_parent<'a>(value: impl FnOnce() -> Option<&'a str>) -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    value().and_then(parse_traceparent)
}

/// Answers `answer` inside a traced request when tracing is on, as a child of `parent` (the client's `traceparent`,
/// see `http_traceparent` / `grpc_traceparent`) or as a new trace.
pub async fn request<F: Future>(protocol: Protocol, parent: Option<SpanContext>, answer: F) -> F::Output {
    if !enabled() {
        return answer.await;
    }
    let trace = Arc::new(RequestTrace {
        parent,
        protocol,
        anchor: (Instant::now(), SystemTime::now()),
        state: Mutex::default(),
    });
    // The guard exports the spans when the request is answered, and also when its future is dropped (client gone).
    let _finish = Finish(trace.clone());
    CURRENT.scope(trace, answer).await
}

/// A clock reading for a child span, only inside a traced request.
#[inline]
pub fn start() -> Option<Instant> {
    if !enabled() {
        return None;
    }
    CURRENT.try_with(|_| Instant::now()).ok()
}

/// Records a child span that began at `started` (from `start`) and ends now.
pub fn record(name: &'static str, started: Option<Instant>, attributes: Vec<KeyValue>) {
    let Some(started) = started else { return };
    let ended = Instant::now();
    let _ = CURRENT.try_with(|trace| {
        trace.lock().children.push(Child {
            name,
            started,
            ended,
            attributes,
        });
    });
}

/// Records a child span from `started` to now, with `attributes` built only inside a traced request.
pub fn record_with(name: &'static str, started: Option<Instant>, attributes: impl FnOnce() -> Vec<KeyValue>) {
    if started.is_some() {
        record(name, started, attributes());
    }
}

/// Names the routed servable, method and version of the traced request (attributes of every span).
pub fn set_target(servable: &str, method: &str, version: u64) {
    if !enabled() {
        return;
    }
    let _ = CURRENT.try_with(|trace| {
        trace.lock().target = vec![
            KeyValue::new("rustserve.servable", servable.to_owned()),
            KeyValue::new("rustserve.method", method.to_owned()),
            KeyValue::new("rustserve.version", i64::try_from(version).unwrap_or(i64::MAX)),
        ];
    });
}

/// Marks the traced request as failed (status error on the request span), with the client's text.
pub fn set_error(message: &str) {
    if !enabled() {
        return;
    }
    let _ = CURRENT.try_with(|trace| trace.lock().error = Some(message.to_owned()));
}

/// The trace of one request: what the request span and its children are built from.
struct RequestTrace {
    parent: Option<SpanContext>,
    protocol: Protocol,
    /// The same moment on the monotonic and the wall clock: children are timed with `Instant`s.
    anchor: (Instant, SystemTime),
    state: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    target: Vec<KeyValue>,
    error: Option<String>,
    children: Vec<Child>,
}

struct Child {
    name: &'static str,
    started: Instant,
    ended: Instant,
    attributes: Vec<KeyValue>,
}

impl RequestTrace {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let (instant, system) = self.anchor;
        system + at.saturating_duration_since(instant)
    }

    /// Builds and ends the request span and its children (the batch span processor only queues them).
    fn finish(&self) {
        let Some(tracer) = TRACER.read().unwrap_or_else(PoisonError::into_inner).clone() else {
            return;
        };
        let ended = SystemTime::now();
        let state = std::mem::take(&mut *self.lock());
        let parent = match &self.parent {
            Some(remote) => Context::new().with_remote_span_context(remote.clone()),
            None => Context::new(),
        };
        let mut attributes = state.target.clone();
        attributes.push(KeyValue::new("rustserve.protocol", self.protocol.label()));
        let mut root = tracer
            .span_builder("rustserve.request")
            .with_kind(SpanKind::Server)
            .with_start_time(self.anchor.1)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        if let Some(error) = &state.error {
            root.set_status(Status::error(error.clone()));
        }
        let cx = parent.with_span(root);
        for child in state.children {
            let mut attributes = state.target.clone();
            attributes.extend(child.attributes);
            let mut span = tracer
                .span_builder(child.name)
                .with_kind(SpanKind::Internal)
                .with_start_time(self.wall(child.started))
                .with_attributes(attributes)
                .start_with_context(&tracer, &cx);
            span.end_with_timestamp(self.wall(child.ended));
        }
        cx.span().end_with_timestamp(ended);
    }
}

/// Ends a request's trace when its future completes or is dropped.
struct Finish(Arc<RequestTrace>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let context = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        let unsampled = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        // A later version may add fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn hooks_do_nothing_when_off() {
        assert!(!enabled());
        assert!(http_traceparent(&http::HeaderMap::new()).is_none());
        let answered = request(Protocol::Other, None, async {
            assert!(start().is_none());
            record_with("rustserve.decode", start(), || panic!("attributes built while off"));
            set_target("s", "m", 1);
            7
        })
        .await;
        assert_eq!(answered, 7);
    }
}
