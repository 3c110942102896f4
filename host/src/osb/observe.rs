//! Per-request observability: a tracing span carrying the platform's
//! request identity, Prometheus counters and latency histograms labelled
//! by route template (never by id, so label cardinality stays bounded), and
//! the request identity echoed on every answer (OSB: SHOULD). Also the
//! store-backed gauges, computed when `/metrics` is scraped.

use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use futures_util::future::BoxFuture;
use metrics::{Counter, Histogram};
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::guard::REQUEST_IDENTITY;
use crate::lifecycle::OperationPhase;
use crate::state::StateStore;

/// The metric handles of each kind of request seen, resolved on its first
/// occurrence: building a metric key for every request (label strings,
/// hashing, the recorder's registry lookup) cost more than serving the
/// catalog. A few dozen kinds at most (route templates x methods x the
/// statuses the broker answers), so a scan is enough.
#[derive(Default)]
pub struct RequestMetrics {
    kinds: RwLock<Vec<RequestKind>>,
}

struct RequestKind {
    endpoint: Box<str>,
    method: &'static str,
    status: StatusCode,
    requests: Counter,
    duration: Histogram,
}

impl RequestKind {
    fn is(&self, endpoint: &str, method: &str, status: StatusCode) -> bool {
        self.status == status && self.method == method && *self.endpoint == *endpoint
    }

    fn record(&self, elapsed: Duration) {
        self.requests.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

impl RequestMetrics {
    fn record(&self, endpoint: &str, method: &'static str, status: StatusCode, elapsed: Duration) {
        // The lock guards only this cache; a panic elsewhere cannot leave
        // it half-written, so a poisoned lock is still usable.
        let kinds = self.kinds.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(kind) = kinds.iter().find(|kind| kind.is(endpoint, method, status)) {
            kind.record(elapsed);
            return;
        }
        drop(kinds);
        let mut kinds = self.kinds.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(kind) = kinds.iter().find(|kind| kind.is(endpoint, method, status)) {
            kind.record(elapsed);
            return;
        }
        let kind = RequestKind {
            endpoint: endpoint.into(),
            method,
            status,
            requests: metrics::counter!(
                "osb_requests_total",
                "endpoint" => endpoint.to_owned(),
                "method" => method,
                "status" => status.as_str().to_owned()
            ),
            duration: metrics::histogram!(
                "osb_request_duration_seconds",
                "endpoint" => endpoint.to_owned(),
                "method" => method
            ),
        };
        kind.record(elapsed);
        kinds.push(kind);
    }
}

/// The method as a label; methods outside RFC 9110 share one, so a client
/// inventing methods cannot grow the metrics without bound.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::POST, "POST"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

/// Observes every request: see the module documentation. A tower service
/// rather than `middleware::from_fn`, which boxes and clones the rest of the
/// stack for every request.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<RequestMetrics>,
    quiet_routes: Arc<[&'static str]>,
}

impl ObserveLayer {
    /// `quiet_routes` are polled often and answered without a plugin call
    /// (the catalog, the probes), so their span is at debug level: at the
    /// default level it is never built, and building it (the formatted
    /// fields, the registry entry) was the largest cost of a catalog request
    /// after HTTP itself. Their rare warnings say what they are about.
    pub fn new(quiet_routes: &[&'static str]) -> Self {
        Self {
            metrics: Arc::default(),
            quiet_routes: quiet_routes.into(),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            quiet_routes: self.quiet_routes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
    quiet_routes: Arc<[&'static str]>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let matched = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        let identity = request.headers().get(&REQUEST_IDENTITY).cloned();
        let endpoint = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
        let span = if self.quiet_routes.contains(&endpoint) {
            tracing::debug_span!(
                "request",
                %method,
                %endpoint,
                request_identity = tracing::field::Empty
            )
        } else {
            tracing::info_span!(
                "request",
                %method,
                %endpoint,
                request_identity = tracing::field::Empty
            )
        };
        if let Some(identity) = identity.as_ref().and_then(|value| value.to_str().ok()) {
            span.record("request_identity", tracing::field::display(identity));
        }
        let started = Instant::now();
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let mut response = async {
                let response = answer.await?;
                tracing::debug!(
                    status = response.status().as_u16(),
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "answered"
                );
                Ok(response)
            }
            .instrument(span)
            .await?;
            let endpoint = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
            metrics.record(endpoint, method, response.status(), started.elapsed());
            if let Some(identity) = identity {
                response.headers_mut().insert(REQUEST_IDENTITY, identity);
            }
            Ok(response)
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(b"BREW").expect("a valid token");
        assert_eq!(method_label(&invented), "other");
    }

    #[test]
    fn each_kind_of_request_resolves_its_handles_once() {
        let metrics = RequestMetrics::default();
        for status in [StatusCode::OK, StatusCode::OK, StatusCode::UNAUTHORIZED] {
            metrics.record("/v2/catalog", "GET", status, Duration::ZERO);
        }
        metrics.record("/healthz", "GET", StatusCode::OK, Duration::ZERO);
        let kinds = metrics.kinds.read().expect("not poisoned");
        assert_eq!(kinds.len(), 3);
    }
}
