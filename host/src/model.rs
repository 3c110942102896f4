//! The broker's domain: what a plugin is asked and what it answers, in plain
//! Rust. The HTTP layer translates OSB JSON to and from these types, the
//! runtime translates them to and from the WIT contract; neither knows the
//! other. Where OSB fixes a JSON shape (catalog, binding result, operation
//! state), the serde form here *is* the OSB wire form.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a plugin (or the broker core) refused an operation. Each variant is one
/// OSB status code and, where the spec defines one, one `error` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AsyncRequired(String),
    #[error("{0}")]
    ConcurrencyError(String),
    #[error("{0}")]
    RequiresApp(String),
    #[error("{0}")]
    MaintenanceInfoConflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Internal(String),
}

/// Name and version a plugin reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// `GET /v2/catalog` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Catalog {
    pub services: Vec<ServiceOffering>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceOffering {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    pub bindable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub instances_retrievable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub bindings_retrievable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_context_updates: bool,
    #[serde(default)]
    pub plan_updateable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_client: Option<DashboardClient>,
    pub plans: Vec<ServicePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardClient {
    pub id: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    pub free: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_updateable: Option<bool>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub binding_rotatable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schemas: Option<Schemas>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_polling_duration: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_info: Option<MaintenanceInfo>,
}

/// OSB plan `schemas` object, nested the way the spec nests it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Schemas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_instance: Option<InstanceSchemas>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_binding: Option<BindingSchemas>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct InstanceSchemas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<ParametersSchema>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<ParametersSchema>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BindingSchemas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<ParametersSchema>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParametersSchema {
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `X-Broker-API-Originating-Identity`, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginatingIdentity {
    pub platform: String,
    pub value: Value,
}

/// Facts about the request that a plugin may use.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestInfo {
    pub originating_identity: Option<OriginatingIdentity>,
    pub request_identity: Option<String>,
    pub api_version: String,
    pub accepts_incomplete: bool,
}

/// A service instance as the broker stores it and hands it to its plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub service_id: String,
    pub plan_id: String,
    pub parameters: Option<Value>,
    pub context: Option<Value>,
    pub organization_guid: Option<String>,
    pub space_guid: Option<String>,
    pub maintenance_version: Option<String>,
    pub plugin_version: String,
}

/// What an update asks to change; `None` leaves it as it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceChanges {
    pub plan_id: Option<String>,
    pub parameters: Option<Value>,
    pub context: Option<Value>,
    pub maintenance_version: Option<String>,
}

/// A service binding as the broker stores it and hands it to its plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub id: String,
    pub instance_id: String,
    pub service_id: String,
    pub plan_id: String,
    pub app_guid: Option<String>,
    pub bind_resource: Option<Value>,
    pub context: Option<Value>,
    pub parameters: Option<Value>,
    pub predecessor_binding_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InstanceResult {
    pub dashboard_url: Option<String>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InstanceDetails {
    pub dashboard_url: Option<String>,
    pub parameters: Option<Value>,
    pub metadata: Option<Value>,
}

/// The plugin started the work and finishes it later.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Accepted {
    pub operation: Option<String>,
    pub dashboard_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InstanceOutcome {
    Done(InstanceResult),
    Accepted(Accepted),
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeletionOutcome {
    Done,
    Accepted(Accepted),
}

#[derive(Debug, Clone, PartialEq)]
pub enum BindOutcome {
    Done(BindingResult),
    Accepted(Accepted),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointProtocol {
    Tcp,
    Udp,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub ports: Vec<String>,
    pub protocol: EndpointProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountMode {
    #[serde(rename = "r")]
    ReadOnly,
    #[serde(rename = "rw")]
    ReadWrite,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeDevice {
    pub volume_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_config: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub driver: String,
    pub container_dir: String,
    pub mode: MountMode,
    pub device_type: String,
    pub device: VolumeDevice,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BindingMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
}

/// What a bind hands to the application, in OSB wire form.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BindingResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BindingMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_service_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    Provision,
    Update,
    Deprovision,
    Bind,
    Unbind,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Update => "update",
            Self::Deprovision => "deprovision",
            Self::Bind => "bind",
            Self::Unbind => "unbind",
        }
    }
}

/// OSB `last_operation` state, serialized exactly as the spec spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationState {
    #[serde(rename = "in progress")]
    InProgress,
    #[serde(rename = "succeeded")]
    Succeeded,
    #[serde(rename = "failed")]
    Failed,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in progress",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// A `last_operation` answer, in OSB wire form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationStatus {
    pub state: OperationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_usable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_repeatable: Option<bool>,
}
