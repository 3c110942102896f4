//! The baseline: a bare axum server doing what the broker does minus the
//! broker. The catalog handler returns the broker's own catalog bytes; the
//! write handlers make the broker's state writes, through the broker's own
//! [`StateStore`] (the same SQLite file layout, WAL, `synchronous=FULL`,
//! credentials sealed with AES-GCM), with no plugin, no OSB checks, no
//! idempotency decisions and no middleware. What the broker spends beyond
//! this is the price of Wasm and of OSB.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};
use wasm_broker::config::StateConfig;
use wasm_broker::lifecycle::{OperationPhase, OperationRecord, ResourceStatus};
use wasm_broker::model::{Binding, BindingResult, Instance, OperationKind};
use wasm_broker::state::{BindingRecord, InstanceRecord, StateError, StateStore, Transition};

#[derive(Clone)]
struct Bare {
    store: StateStore,
    catalog: Bytes,
    operations: Arc<AtomicU64>,
}

impl Bare {
    /// An operation record as the broker starts one.
    fn start(&self, kind: OperationKind, fingerprint: String) -> OperationRecord {
        OperationRecord {
            // The broker's ids are 32 hex digits too.
            id: format!("{:032x}", self.operations.fetch_add(1, Ordering::Relaxed)),
            kind,
            phase: OperationPhase::Calling,
            plugin_operation: None,
            description: None,
            instance_usable: None,
            update_repeatable: None,
            changes: None,
            request_fingerprint: fingerprint,
        }
    }
}

/// Serves until killed.
pub async fn serve(
    listen: SocketAddr,
    state_path: PathBuf,
    catalog_path: PathBuf,
) -> anyhow::Result<()> {
    let catalog = Bytes::from(
        std::fs::read(&catalog_path)
            .with_context(|| format!("reading {}", catalog_path.display()))?,
    );
    let config = StateConfig {
        path: state_path,
        encryption_key: Some(crate::servers::encryption_key().into()),
        ..StateConfig::default()
    };
    let store = StateStore::open(&config)
        .await
        .context("opening the baseline's state store")?;
    let bare = Bare {
        store,
        catalog,
        operations: Arc::new(AtomicU64::new(1)),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/v2/catalog", get(serve_catalog))
        .route(
            "/v2/service_instances/{instance_id}",
            put(provision).delete(deprovision),
        )
        .route(
            "/v2/service_instances/{instance_id}/last_operation",
            get(last_operation),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}",
            put(bind).get(fetch_binding).delete(unbind),
        )
        .with_state(bare);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    axum::serve(listener, app)
        .await
        .context("serving the baseline")
}

/// A store failure, as a 500.
struct Failed(StateError);

impl From<StateError> for Failed {
    fn from(error: StateError) -> Self {
        Self(error)
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0.to_string()).into_response()
    }
}

fn json_answer(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn empty_answer(status: StatusCode) -> Response {
    json_answer(status, b"{}".to_vec())
}

fn text_field(body: &Value, name: &str) -> Option<String> {
    body.get(name).and_then(Value::as_str).map(str::to_owned)
}

async fn serve_catalog(State(bare): State<Bare>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        bare.catalog.clone(),
    )
        .into_response()
}

/// The broker's two writes: the record with its operation `Calling`, then,
/// after the (here absent) plugin call, `Ready` and `Succeeded`.
async fn provision(
    State(bare): State<Bare>,
    Path(instance_id): Path<String>,
    body: Bytes,
) -> Result<Response, Failed> {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return Ok(empty_answer(StatusCode::BAD_REQUEST));
    };
    let instance = Instance {
        id: instance_id.clone(),
        service_id: text_field(&body, "service_id").unwrap_or_default(),
        plan_id: text_field(&body, "plan_id").unwrap_or_default(),
        parameters: body.get("parameters").cloned(),
        context: body.get("context").cloned(),
        organization_guid: text_field(&body, "organization_guid"),
        space_guid: text_field(&body, "space_guid"),
        maintenance_version: None,
        plugin_version: "1.0.0".to_owned(),
    };
    let record = InstanceRecord {
        instance,
        status: ResourceStatus::Creating,
        dashboard_url: None,
        metadata: None,
        operation: Some(bare.start(OperationKind::Provision, body.to_string())),
    };
    bare.store
        .transition_instance(&instance_id, |_| Transition::Write(record, ()))
        .await?;
    finish_instance(&bare.store, &instance_id, ResourceStatus::Ready).await?;
    Ok(empty_answer(StatusCode::CREATED))
}

/// The broker's writes and read: the deprovision operation with the look
/// for leftover bindings in its step, then the tombstone.
async fn deprovision(
    State(bare): State<Bare>,
    Path(instance_id): Path<String>,
) -> Result<Response, Failed> {
    let operation = bare.start(OperationKind::Deprovision, String::new());
    let found = bare
        .store
        .transition_instance_and_bindings(&instance_id, |existing, _leftovers| {
            match existing.filter(|r| r.status != ResourceStatus::Deleted) {
                Some(mut record) => {
                    record.operation = Some(operation);
                    Transition::Write(record, true)
                }
                None => Transition::Keep(false),
            }
        })
        .await?;
    if !found {
        return Ok(empty_answer(StatusCode::GONE));
    }
    finish_instance(&bare.store, &instance_id, ResourceStatus::Deleted).await?;
    Ok(empty_answer(StatusCode::OK))
}

async fn finish_instance(
    store: &StateStore,
    instance_id: &str,
    status: ResourceStatus,
) -> Result<(), StateError> {
    store
        .transition_instance(instance_id, |existing| match existing {
            Some(mut record) => {
                record.status = status;
                if let Some(operation) = record.operation.as_mut() {
                    operation.phase = OperationPhase::Succeeded;
                }
                Transition::Write(record, ())
            }
            None => Transition::Keep(()),
        })
        .await
}

async fn last_operation(
    State(bare): State<Bare>,
    Path(instance_id): Path<String>,
) -> Result<Response, Failed> {
    let Some(record) = bare.store.instance(&instance_id).await? else {
        return Ok(empty_answer(StatusCode::NOT_FOUND));
    };
    let state = match record.operation.map(|op| op.phase) {
        Some(OperationPhase::Succeeded) => "succeeded",
        Some(OperationPhase::Failed) => "failed",
        _ => "in progress",
    };
    Ok(json_answer(
        StatusCode::OK,
        json!({ "state": state }).to_string().into_bytes(),
    ))
}

/// What the no-op plugin's bind answers.
fn fixed_credentials() -> BindingResult {
    BindingResult {
        credentials: Some(json!({"username": "fixture", "password": "fixture"})),
        ..BindingResult::default()
    }
}

/// The broker's two binding writes; the second seals the credentials.
async fn bind(
    State(bare): State<Bare>,
    Path((instance_id, binding_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Failed> {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return Ok(empty_answer(StatusCode::BAD_REQUEST));
    };
    let binding = Binding {
        id: binding_id.clone(),
        instance_id: instance_id.clone(),
        service_id: text_field(&body, "service_id").unwrap_or_default(),
        plan_id: text_field(&body, "plan_id").unwrap_or_default(),
        app_guid: text_field(&body, "app_guid"),
        bind_resource: body.get("bind_resource").cloned(),
        context: body.get("context").cloned(),
        parameters: body.get("parameters").cloned(),
        predecessor_binding_id: None,
    };
    let record = BindingRecord {
        binding,
        status: ResourceStatus::Creating,
        result: None,
        operation: Some(bare.start(OperationKind::Bind, body.to_string())),
    };
    let created = bare
        .store
        .transition_binding(&binding_id, &instance_id, |instance, _| match instance {
            Some(_) => Transition::Write(record, true),
            None => Transition::Keep(false),
        })
        .await?;
    if !created {
        return Ok(empty_answer(StatusCode::NOT_FOUND));
    }
    let result = fixed_credentials();
    let answer = serde_json::to_vec(&result).unwrap_or_default();
    finish_binding(
        &bare.store,
        &binding_id,
        &instance_id,
        ResourceStatus::Ready,
        Some(result),
    )
    .await?;
    Ok(json_answer(StatusCode::CREATED, answer))
}

async fn fetch_binding(
    State(bare): State<Bare>,
    Path((_, binding_id)): Path<(String, String)>,
) -> Result<Response, Failed> {
    match bare.store.binding(&binding_id).await? {
        Some(record) => {
            let body = serde_json::to_vec(&record.result.unwrap_or_default()).unwrap_or_default();
            Ok(json_answer(StatusCode::OK, body))
        }
        None => Ok(empty_answer(StatusCode::NOT_FOUND)),
    }
}

async fn unbind(
    State(bare): State<Bare>,
    Path((instance_id, binding_id)): Path<(String, String)>,
) -> Result<Response, Failed> {
    let operation = bare.start(OperationKind::Unbind, String::new());
    let found = bare
        .store
        .transition_binding(&binding_id, &instance_id, |_, existing| {
            match existing.filter(|r| r.status != ResourceStatus::Deleted) {
                Some(mut record) => {
                    record.operation = Some(operation);
                    Transition::Write(record, true)
                }
                None => Transition::Keep(false),
            }
        })
        .await?;
    if !found {
        return Ok(empty_answer(StatusCode::GONE));
    }
    finish_binding(
        &bare.store,
        &binding_id,
        &instance_id,
        ResourceStatus::Deleted,
        None,
    )
    .await?;
    Ok(empty_answer(StatusCode::OK))
}

async fn finish_binding(
    store: &StateStore,
    binding_id: &str,
    instance_id: &str,
    status: ResourceStatus,
    result: Option<BindingResult>,
) -> Result<(), StateError> {
    store
        .transition_binding(binding_id, instance_id, |_, existing| match existing {
            Some(mut record) => {
                record.status = status;
                record.result = result;
                if let Some(operation) = record.operation.as_mut() {
                    operation.phase = OperationPhase::Succeeded;
                }
                Transition::Write(record, ())
            }
            None => Transition::Keep(()),
        })
        .await
}
