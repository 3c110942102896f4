//! Per-request observability: a tracing span carrying the platform's
//! request identity, and Prometheus counters and latency histograms labelled
//! by route template (never by id, so label cardinality stays bounded).
//! Also the store-backed gauges, computed when `/metrics` is scraped.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use super::guard::REQUEST_IDENTITY;
use crate::state::{OperationPhase, StateStore};

pub async fn observe(request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let identity = request
        .headers()
        .get(REQUEST_IDENTITY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!("request", %method, %endpoint, request_identity = %identity);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        )
    });
    metrics::counter!(
        "osb_requests_total",
        "endpoint" => endpoint.clone(),
        "method" => method.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("osb_request_duration_seconds", "endpoint" => endpoint, "method" => method)
        .record(elapsed.as_secs_f64());
    response
}

/// Sets `osb_operations_in_progress{resource, phase}`: the operations the
/// store holds as under way, `calling` (a plugin call running now) or
/// `in_progress` (asynchronous, awaiting the platform's polls). It counts
/// for every broker sharing the store, so replicas report the same value.
/// Two indexed counts per scrape.
pub async fn record_store_gauges(store: &StateStore) {
    let counts = match store.count_running_operations().await {
        Ok(counts) => counts,
        Err(error) => {
            tracing::warn!(%error, "cannot count the operations under way for /metrics");
            return;
        }
    };
    for running in counts {
        let phase = match running.phase {
            OperationPhase::Calling => "calling",
            OperationPhase::InProgress => "in_progress",
            OperationPhase::Succeeded => "succeeded",
            OperationPhase::Failed => "failed",
        };
        metrics::gauge!(
            "osb_operations_in_progress",
            "resource" => running.resource,
            "phase" => phase
        )
        .set(running.count as f64);
    }
}
