//! The W3C trace context of a job: made from the submitting span, carried in
//! [`switchyard_schemas::JobEnvelope::traceparent`], continued by the worker's span. Each
//! function returns at once when no spans are exported ([`crate::traces_exported`]).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACEPARENT: &str = "traceparent";

/// `span`'s context as a `traceparent` value (`00-<trace id>-<span id>-<flags>`).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !crate::traces_exported() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote span `traceparent` names (a job envelope's, an HTTP
/// request's header); an absent or malformed value leaves `span` a root.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| crate::traces_exported()) else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "cannot continue the trace");
    }
}

/// The trace id of a `traceparent` value (32 hex digits), for logs and tests.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    parts.next().filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}
