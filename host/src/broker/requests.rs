//! What the HTTP layer hands the core, already decoded and with mandatory
//! fields checked for presence. Still unchecked against the catalog.

use serde_json::Value;

use crate::model::{BindingResult, MaintenanceInfo, RequestInfo};

#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub instance_id: String,
    pub service_id: String,
    pub plan_id: String,
    pub organization_guid: Option<String>,
    pub space_guid: Option<String>,
    pub context: Option<Value>,
    pub parameters: Option<Value>,
    pub maintenance_version: Option<String>,
    pub info: RequestInfo,
}

#[derive(Debug, Clone)]
pub struct UpdateRequest {
    pub instance_id: String,
    pub service_id: String,
    pub plan_id: Option<String>,
    pub parameters: Option<Value>,
    pub context: Option<Value>,
    pub maintenance_version: Option<String>,
    pub info: RequestInfo,
}

#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub instance_id: String,
    pub service_id: String,
    pub plan_id: String,
    pub info: RequestInfo,
}

#[derive(Debug, Clone)]
pub struct BindRequest {
    pub instance_id: String,
    pub binding_id: String,
    pub service_id: String,
    pub plan_id: String,
    pub app_guid: Option<String>,
    pub bind_resource: Option<Value>,
    pub context: Option<Value>,
    pub parameters: Option<Value>,
    pub predecessor_binding_id: Option<String>,
    pub info: RequestInfo,
}

#[derive(Debug, Clone)]
pub struct UnbindRequest {
    pub instance_id: String,
    pub binding_id: String,
    pub service_id: String,
    pub plan_id: String,
    pub info: RequestInfo,
}

/// A `last_operation` poll. `operation` is only a hint: the Go conformance
/// suite sends literal kind names, so the latest operation is always the one
/// reported.
#[derive(Debug, Clone)]
pub struct PollRequest {
    pub instance_id: String,
    pub binding_id: Option<String>,
}

/// What a fetch of an instance answers (`GET /v2/service_instances/:id`).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedInstance {
    pub service_id: String,
    pub plan_id: String,
    pub dashboard_url: Option<String>,
    pub parameters: Option<Value>,
    pub maintenance_info: Option<MaintenanceInfo>,
    pub metadata: Option<Value>,
}

/// What a fetch of a binding answers (`GET .../service_bindings/:id`).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedBinding {
    pub result: BindingResult,
    pub parameters: Option<Value>,
}
