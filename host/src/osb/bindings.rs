//! `/v2/service_instances/:instance_id/service_bindings/:binding_id` and its
//! `last_operation`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::broker::{BindRequest, Changed, Created, PollRequest, UnbindRequest};
use crate::model::BindingResult;

use super::extract::{OsbJson, OsbPath, OsbQuery, object, optional, parse_flag, required};
use super::instances::{AsyncQuery, DeleteQuery, PollQuery, accepted, check_poll_hints};
use super::{ApiError, AppState, detached, empty_object, request_info};

#[derive(Deserialize)]
pub struct BindBody {
    service_id: Option<String>,
    plan_id: Option<String>,
    app_guid: Option<String>,
    bind_resource: Option<Value>,
    context: Option<Value>,
    parameters: Option<Value>,
    predecessor_binding_id: Option<String>,
}

pub async fn bind(
    State(state): State<AppState>,
    OsbPath((instance_id, binding_id)): OsbPath<(String, String)>,
    OsbQuery(query): OsbQuery<AsyncQuery>,
    headers: HeaderMap,
    OsbJson(body): OsbJson<BindBody>,
) -> Result<Response, ApiError> {
    let accepts_incomplete = parse_flag("accepts_incomplete", query.accepts_incomplete.as_deref())?;
    let bind_resource = object("bind_resource", body.bind_resource)?;
    let resource_app_guid = match bind_resource
        .as_ref()
        .and_then(|resource| resource.get("app_guid"))
    {
        None | Some(Value::Null) => None,
        Some(Value::String(guid)) => Some(guid.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "bind_resource.app_guid must be a string",
            ));
        }
    };
    let app_guid = resource_app_guid
        .or(body.app_guid)
        .filter(|guid| !guid.is_empty());
    let request = BindRequest {
        instance_id,
        binding_id,
        service_id: required("service_id", body.service_id)?,
        plan_id: required("plan_id", body.plan_id)?,
        app_guid,
        bind_resource,
        context: object("context", body.context)?,
        parameters: object("parameters", body.parameters)?,
        predecessor_binding_id: optional(body.predecessor_binding_id),
        info: request_info(&headers, accepts_incomplete)?,
    };
    let broker = state.broker.clone();
    let outcome = detached(async move { broker.bind(request).await }).await?;
    Ok(match outcome {
        Created::New(result) => (StatusCode::CREATED, Json(result)).into_response(),
        Created::Existing(result) => (StatusCode::OK, Json(result)).into_response(),
        Created::Accepted(reply) => accepted(reply),
    })
}

pub async fn unbind(
    State(state): State<AppState>,
    OsbPath((instance_id, binding_id)): OsbPath<(String, String)>,
    OsbQuery(query): OsbQuery<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let accepts_incomplete = parse_flag("accepts_incomplete", query.accepts_incomplete.as_deref())?;
    let request = UnbindRequest {
        instance_id,
        binding_id,
        service_id: required("service_id", query.service_id)?,
        plan_id: required("plan_id", query.plan_id)?,
        info: request_info(&headers, accepts_incomplete)?,
    };
    let broker = state.broker.clone();
    let outcome = detached(async move { broker.unbind(request).await }).await?;
    Ok(match outcome {
        Changed::Done(()) => (StatusCode::OK, Json(empty_object())).into_response(),
        Changed::Accepted(reply) => accepted(reply),
    })
}

pub async fn fetch(
    State(state): State<AppState>,
    OsbPath((instance_id, binding_id)): OsbPath<(String, String)>,
) -> Result<Response, ApiError> {
    let binding = state
        .broker
        .fetch_binding(&instance_id, &binding_id)
        .await?;
    let body = FetchedBindingBody {
        result: binding.result,
        parameters: binding.parameters,
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `GET .../service_bindings/:id` body: the binding result (its serde form
/// is OSB's) and the parameters it was bound with.
#[derive(Serialize)]
struct FetchedBindingBody {
    #[serde(flatten)]
    result: BindingResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

pub async fn last_operation(
    State(state): State<AppState>,
    OsbPath((instance_id, binding_id)): OsbPath<(String, String)>,
    OsbQuery(query): OsbQuery<PollQuery>,
) -> Result<Response, ApiError> {
    check_poll_hints(&query)?;
    let poll = PollRequest {
        instance_id,
        binding_id: Some(binding_id),
    };
    let broker = state.broker.clone();
    let status = detached(async move { broker.binding_last_operation(poll).await }).await?;
    Ok((StatusCode::OK, Json(status)).into_response())
}
