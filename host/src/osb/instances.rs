//! `/v2/service_instances/:instance_id` and its `last_operation`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::broker::{
    AcceptedReply, Changed, Created, DeleteRequest, PollRequest, ProvisionRequest, UpdateRequest,
};
use crate::model::{InstanceResult, MaintenanceInfo};

use super::extract::{OsbJson, OsbPath, OsbQuery, object, optional, parse_flag, required};
use super::{ApiError, AppState, detached, empty_object, request_info};

#[derive(Deserialize)]
pub struct MaintenanceInfoBody {
    version: Option<String>,
}

#[derive(Deserialize)]
pub struct ProvisionBody {
    service_id: Option<String>,
    plan_id: Option<String>,
    organization_guid: Option<String>,
    space_guid: Option<String>,
    context: Option<Value>,
    parameters: Option<Value>,
    maintenance_info: Option<MaintenanceInfoBody>,
}

#[derive(Deserialize)]
pub struct UpdateBody {
    service_id: Option<String>,
    /// Only checked for shape: the broker knows the previous values itself.
    previous_values: Option<Value>,
    plan_id: Option<String>,
    context: Option<Value>,
    parameters: Option<Value>,
    maintenance_info: Option<MaintenanceInfoBody>,
}

#[derive(Deserialize)]
pub struct AsyncQuery {
    pub(super) accepts_incomplete: Option<String>,
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    pub(super) service_id: Option<String>,
    pub(super) plan_id: Option<String>,
    pub(super) accepts_incomplete: Option<String>,
}

/// Hints only: `service_id`, `plan_id`, `operation` are not needed to find
/// the operation, but must be non-empty when sent.
#[derive(Deserialize)]
pub struct PollQuery {
    service_id: Option<String>,
    plan_id: Option<String>,
    operation: Option<String>,
}

#[derive(Serialize)]
struct InstanceBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    dashboard_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
}

#[derive(Serialize)]
pub(super) struct AcceptedBody {
    operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dashboard_url: Option<String>,
}

pub(super) fn accepted(reply: AcceptedReply) -> Response {
    let body = AcceptedBody {
        operation: reply.operation,
        dashboard_url: reply.dashboard_url,
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

fn instance_body(result: InstanceResult) -> InstanceBody {
    InstanceBody {
        dashboard_url: result.dashboard_url,
        metadata: result.metadata,
    }
}

fn maintenance_version(info: Option<MaintenanceInfoBody>) -> Option<String> {
    info.and_then(|info| info.version)
        .filter(|version| !version.is_empty())
}

pub(super) fn check_poll_hints(query: &PollQuery) -> Result<(), ApiError> {
    for (name, value) in [
        ("service_id", &query.service_id),
        ("plan_id", &query.plan_id),
        ("operation", &query.operation),
    ] {
        if value.as_deref() == Some("") {
            return Err(ApiError::bad_request(format!(
                "{name} must not be empty when sent"
            )));
        }
    }
    Ok(())
}

pub async fn provision(
    State(state): State<AppState>,
    OsbPath(instance_id): OsbPath<String>,
    OsbQuery(query): OsbQuery<AsyncQuery>,
    headers: HeaderMap,
    OsbJson(body): OsbJson<ProvisionBody>,
) -> Result<Response, ApiError> {
    let accepts_incomplete = parse_flag("accepts_incomplete", query.accepts_incomplete.as_deref())?;
    let request = ProvisionRequest {
        instance_id,
        service_id: required("service_id", body.service_id)?,
        plan_id: required("plan_id", body.plan_id)?,
        organization_guid: Some(required("organization_guid", body.organization_guid)?),
        space_guid: Some(required("space_guid", body.space_guid)?),
        context: object("context", body.context)?,
        parameters: object("parameters", body.parameters)?,
        maintenance_version: maintenance_version(body.maintenance_info),
        info: request_info(&headers, accepts_incomplete)?,
    };
    let broker = state.broker.clone();
    let outcome = detached(async move { broker.provision(request).await }).await?;
    Ok(match outcome {
        Created::New(result) => (StatusCode::CREATED, Json(instance_body(result))).into_response(),
        Created::Existing(result) => (StatusCode::OK, Json(instance_body(result))).into_response(),
        Created::Accepted(reply) => accepted(reply),
    })
}

pub async fn update(
    State(state): State<AppState>,
    OsbPath(instance_id): OsbPath<String>,
    OsbQuery(query): OsbQuery<AsyncQuery>,
    headers: HeaderMap,
    OsbJson(body): OsbJson<UpdateBody>,
) -> Result<Response, ApiError> {
    let accepts_incomplete = parse_flag("accepts_incomplete", query.accepts_incomplete.as_deref())?;
    object("previous_values", body.previous_values)?;
    let request = UpdateRequest {
        instance_id,
        service_id: required("service_id", body.service_id)?,
        plan_id: optional(body.plan_id),
        parameters: object("parameters", body.parameters)?,
        context: object("context", body.context)?,
        maintenance_version: maintenance_version(body.maintenance_info),
        info: request_info(&headers, accepts_incomplete)?,
    };
    let broker = state.broker.clone();
    let outcome = detached(async move { broker.update(request).await }).await?;
    Ok(match outcome {
        Changed::Done(result) => (StatusCode::OK, Json(instance_body(result))).into_response(),
        Changed::Accepted(reply) => accepted(reply),
    })
}

pub async fn deprovision(
    State(state): State<AppState>,
    OsbPath(instance_id): OsbPath<String>,
    OsbQuery(query): OsbQuery<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let accepts_incomplete = parse_flag("accepts_incomplete", query.accepts_incomplete.as_deref())?;
    let request = DeleteRequest {
        instance_id,
        service_id: required("service_id", query.service_id)?,
        plan_id: required("plan_id", query.plan_id)?,
        info: request_info(&headers, accepts_incomplete)?,
    };
    let broker = state.broker.clone();
    let outcome = detached(async move { broker.deprovision(request).await }).await?;
    Ok(match outcome {
        Changed::Done(()) => (StatusCode::OK, Json(empty_object())).into_response(),
        Changed::Accepted(reply) => accepted(reply),
    })
}

/// `GET /v2/service_instances/:id` body.
#[derive(Serialize)]
struct FetchedInstanceBody {
    service_id: String,
    plan_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dashboard_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maintenance_info: Option<MaintenanceInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
}

pub async fn fetch(
    State(state): State<AppState>,
    OsbPath(instance_id): OsbPath<String>,
) -> Result<Response, ApiError> {
    let instance = state.broker.fetch_instance(&instance_id).await?;
    let body = FetchedInstanceBody {
        service_id: instance.service_id,
        plan_id: instance.plan_id,
        dashboard_url: instance.dashboard_url,
        parameters: instance.parameters,
        maintenance_info: instance.maintenance_info,
        metadata: instance.metadata,
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

pub async fn last_operation(
    State(state): State<AppState>,
    OsbPath(instance_id): OsbPath<String>,
    OsbQuery(query): OsbQuery<PollQuery>,
) -> Result<Response, ApiError> {
    check_poll_hints(&query)?;
    let status = {
        let broker = state.broker.clone();
        detached(async move {
            broker
                .instance_last_operation(PollRequest {
                    instance_id,
                    binding_id: None,
                })
                .await
        })
        .await?
    };
    Ok((StatusCode::OK, Json(status)).into_response())
}
