//! The broker core: everything OSB demands that is not HTTP and not the
//! plugin's business. Request validation against the catalog, idempotency
//! (same id and attributes answer the same, different attributes conflict),
//! per-resource concurrency control, and durable operation records: every
//! state change is committed before the platform hears of it.
//!
//! Plugin calls happen outside store transactions; the store's operation
//! record (phase `Calling` / `InProgress`) is the lock that keeps a second
//! request for the same resource out meanwhile.

mod bindings;
mod instances;
mod operations;
mod requests;

use std::sync::Arc;

use serde_json::Value;

pub use requests::{
    BindRequest, DeleteRequest, FetchedBinding, FetchedInstance, PollRequest, ProvisionRequest,
    UnbindRequest, UpdateRequest,
};

use crate::catalog::CatalogSnapshot;
use crate::model::{Refusal, ServiceOffering, ServicePlan};
use crate::runtime::{CallError, PluginRuntime};
use crate::state::{StateError, StateStore};

/// Why the broker could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// An OSB refusal, from the core or the plugin (4xx).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The plugin failed (trap, timeout, out of memory, malformed answer) or
    /// is missing: the platform sees a 500 with this description.
    #[error("{0}")]
    Plugin(String),
    /// The state store failed: 500.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Refused(refusal) => Failure::Refused(refusal),
            other => Failure::Plugin(other.to_string()),
        }
    }
}

/// How a create (provision or bind) was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Created<T> {
    /// Created by this request (201).
    New(T),
    /// Already existed with identical attributes (200).
    Existing(T),
    /// Running asynchronously (202).
    Accepted(AcceptedReply),
}

/// How an update or a delete was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed<T> {
    /// Done (200).
    Done(T),
    /// Running asynchronously (202).
    Accepted(AcceptedReply),
}

/// A 202 body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AcceptedReply {
    pub operation: String,
    pub dashboard_url: Option<String>,
}

/// The broker core: catalog and plugins from the runtime, records in the store.
pub struct Broker {
    runtime: Arc<PluginRuntime>,
    store: StateStore,
}

impl Broker {
    pub fn new(runtime: Arc<PluginRuntime>, store: StateStore) -> Self {
        Self { runtime, store }
    }

    pub fn catalog(&self) -> Arc<CatalogSnapshot> {
        self.runtime.catalog()
    }

    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }
}

/// The offering and plan a request names, or 400 naming what is unknown.
fn resolve_plan<'c>(
    catalog: &'c CatalogSnapshot,
    service_id: &str,
    plan_id: &str,
) -> Result<(&'c ServiceOffering, &'c ServicePlan), Refusal> {
    let offering = catalog.service(service_id).ok_or_else(|| {
        Refusal::BadRequest(format!("service_id {service_id:?} is not in the catalog"))
    })?;
    let plan = catalog.plan(service_id, plan_id).ok_or_else(|| {
        Refusal::BadRequest(format!(
            "plan_id {plan_id:?} is not a plan of service {service_id:?}"
        ))
    })?;
    Ok((offering, plan))
}

/// OSB: a requested maintenance_info version must equal the plan's.
fn check_maintenance_version(
    plan: &ServicePlan,
    requested: Option<&str>,
) -> Result<(), Refusal> {
    let Some(requested) = requested else {
        return Ok(());
    };
    match &plan.maintenance_info {
        Some(info) if info.version == requested => Ok(()),
        Some(info) => Err(Refusal::MaintenanceInfoConflict(format!(
            "maintenance_info.version {requested:?} does not match plan {:?}, which is at {:?}",
            plan.name, info.version
        ))),
        None => Err(Refusal::MaintenanceInfoConflict(format!(
            "maintenance_info.version {requested:?} was sent, but plan {:?} has no maintenance_info",
            plan.name
        ))),
    }
}

/// Validates `parameters` against a plan's JSON Schema; 400 naming every
/// offending field.
fn validate_parameters(
    schema: Option<&Value>,
    parameters: Option<&Value>,
) -> Result<(), Refusal> {
    if let Some(parameters) = parameters
        && !parameters.is_object()
    {
        return Err(Refusal::BadRequest(
            "parameters must be a JSON object".to_owned(),
        ));
    }
    let (Some(schema), Some(parameters)) = (schema, parameters) else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema).map_err(|error| {
        Refusal::Internal(format!("the plan's parameter schema is invalid: {error}"))
    })?;
    let problems: Vec<String> = validator
        .iter_errors(parameters)
        .map(|error| {
            let path = error.instance_path.to_string();
            let field = if path.is_empty() {
                "parameters".to_owned()
            } else {
                format!("parameters{path}")
            };
            format!("{field}: {error}")
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Refusal::BadRequest(problems.join("; ")))
    }
}

/// A fresh operation id: what the platform sees in 202 bodies and polls with.
fn new_operation_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Request attributes as a JSON value, so identical requests compare equal
/// whatever the key order of their parameters.
fn fingerprint(attributes: &Value) -> String {
    attributes.to_string()
}

fn same_fingerprint(stored: &str, attributes: &Value) -> bool {
    serde_json::from_str::<Value>(stored).is_ok_and(|stored| &stored == attributes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_key_order() {
        let stored = fingerprint(&json!({"a": 1, "b": {"x": 1, "y": 2}}));
        assert!(same_fingerprint(
            &stored,
            &json!({"b": {"y": 2, "x": 1}, "a": 1})
        ));
        assert!(!same_fingerprint(
            &stored,
            &json!({"a": 2, "b": {"x": 1, "y": 2}})
        ));
    }

    #[test]
    fn parameters_are_checked_against_the_schema() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"charset": {"enum": ["utf8mb4", "latin1"]}},
            "additionalProperties": false
        });
        assert!(validate_parameters(Some(&schema), Some(&json!({"charset": "latin1"}))).is_ok());
        let error =
            validate_parameters(Some(&schema), Some(&json!({"charset": "klingon"}))).unwrap_err();
        assert!(
            matches!(&error, Refusal::BadRequest(text) if text.contains("parameters/charset")),
            "{error:?}"
        );
        let error = validate_parameters(None, Some(&json!([1]))).unwrap_err();
        assert!(matches!(error, Refusal::BadRequest(_)));
    }

    #[test]
    fn operation_ids_are_unique() {
        assert_ne!(new_operation_id(), new_operation_id());
    }
}
