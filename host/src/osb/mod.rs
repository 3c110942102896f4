//! The OSB v2.17 HTTP layer (axum). Decodes and checks requests, hands them
//! to the broker core, encodes answers with the status codes the spec
//! demands. Knows nothing of wasmtime.

pub mod admin;
mod bindings;
mod error;
mod extract;
mod guard;
mod instances;
pub mod listener;
mod observe;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceBuilder;

pub use error::ApiError;
pub use guard::GuardConfig;

use crate::broker::Broker;
use crate::model::RequestInfo;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    /// Renders the Prometheus exposition for `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The broker's credentials, which the admin routes check too.
    pub guard: Arc<GuardConfig>,
}

const CATALOG: &str = "/v2/catalog";
const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";
const METRICS: &str = "/metrics";

/// The whole HTTP surface: OSB routes behind auth and version checks, and
/// the unauthenticated probes (which expose no secrets).
pub fn router(
    broker: Arc<Broker>,
    guard: GuardConfig,
    max_body_bytes: usize,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Router {
    let guard = Arc::new(guard);
    let state = AppState {
        broker,
        metrics,
        guard: guard.clone(),
    };
    let osb = Router::new()
        .route(CATALOG, get(catalog))
        .route(
            "/v2/service_instances/{instance_id}",
            get(instances::fetch)
                .put(instances::provision)
                .patch(instances::update)
                .delete(instances::deprovision),
        )
        .route(
            "/v2/service_instances/{instance_id}/last_operation",
            get(instances::last_operation),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}",
            get(bindings::fetch)
                .put(bindings::bind)
                .delete(bindings::unbind),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation",
            get(bindings::last_operation),
        )
        .fallback(not_found)
        .route_layer(guard::GuardLayer::new(guard, {
            let broker = state.broker.clone();
            Arc::new(move || broker.catalog().is_loading())
        }));
    Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .route(METRICS, get(prometheus))
        .route(admin::PLUGINS, get(admin::plugins))
        .merge(osb)
        // One layer call: each wraps every route in one more boxed service
        // that axum clones for every request.
        .layer(
            ServiceBuilder::new()
                .layer(observe::ObserveLayer::new(&[
                    CATALOG, HEALTHZ, READYZ, METRICS,
                ]))
                .layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such OSB endpoint")
}

/// Served from bytes serialized once per catalog change, with an ETag so a
/// platform can revalidate cheaply. Takes the request rather than a
/// `HeaderMap`, which axum would copy.
async fn catalog(State(state): State<AppState>, request: Request) -> Response {
    let snapshot = state.broker.catalog();
    let etag = HeaderValue::from_str(&snapshot.etag).ok();
    let unchanged = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .zip(etag.as_ref())
        .is_some_and(|(sent, current)| sent == current);
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            snapshot.json.clone(),
        )
            .into_response()
    };
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the plugins are loaded, the state store answers and at least
/// one plugin serves. A refused plugin (a bad file, an id or name another
/// plugin owns) makes it answer 200 `degraded: ...`, naming it: the others
/// serve, and every replica sees the same directory, so taking them out of
/// the load balancer would stop the whole broker. `plugin_refused` in
/// `/metrics` is the signal to alert on.
async fn readyz(State(state): State<AppState>) -> Response {
    let catalog = state.broker.catalog();
    if catalog.is_loading() {
        return (StatusCode::SERVICE_UNAVAILABLE, "loading plugins").into_response();
    }
    if let Err(error) = state.broker.records().ping().await {
        // The cause (host, database, user names) is for the log, not for
        // whoever can reach this unauthenticated probe.
        tracing::warn!(%error, "readiness: the state store does not answer");
        return (StatusCode::SERVICE_UNAVAILABLE, "state store unreachable").into_response();
    }
    // Retired plugins alone still count: taken out of service, the broker
    // could not unbind or deprovision their instances.
    if !catalog.serves_anything() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no plugin loaded").into_response();
    }
    if !catalog.refused().is_empty() {
        return format!("degraded: plugin refused: {}", catalog.refused().join(", "))
            .into_response();
    }
    "ready".into_response()
}

/// Prometheus text exposition; names and counts only, no secrets.
async fn prometheus(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            observe::record_store_gauges(state.broker.records()).await;
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// The request facts a plugin may see.
fn request_info(headers: &HeaderMap, accepts_incomplete: bool) -> Result<RequestInfo, ApiError> {
    Ok(RequestInfo {
        originating_identity: guard::originating_identity(headers)?,
        request_identity: guard::request_identity(headers),
        api_version: guard::api_version(headers),
        accepts_incomplete,
    })
}

/// Runs a broker operation to completion even if the platform hangs up:
/// axum drops a handler's future when the client disconnects, and an
/// operation cut short between its plugin call and its final state write
/// would leave the resource locked as "in progress".
async fn detached<T: Send + 'static>(
    operation: impl std::future::Future<Output = Result<T, crate::broker::BrokerError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(operation).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => {
            tracing::error!(%error, "a broker operation panicked");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the broker failed unexpectedly",
            ))
        }
    }
}

/// `{}`: OSB's body for a 200 with nothing to say (clients decode JSON).
fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}
