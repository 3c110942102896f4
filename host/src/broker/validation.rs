//! Requests checked against the catalog: the service and plan exist, the
//! maintenance_info version is the plan's, and parameters satisfy the plan's
//! JSON Schema. OSB wants a 400 (422 for maintenance_info) naming the problem.

use serde_json::Value;

use crate::catalog::CatalogSnapshot;
use crate::model::{Refusal, ServiceOffering, ServicePlan};

/// The offering and plan a request names, or 400 naming what is unknown.
pub(super) fn resolve_plan<'c>(
    catalog: &'c CatalogSnapshot,
    service_id: &str,
    plan_id: &str,
) -> Result<(&'c ServiceOffering, &'c ServicePlan), Refusal> {
    let offering = offered_service(catalog, service_id)?;
    let plan = catalog.plan(service_id, plan_id).ok_or_else(|| {
        Refusal::BadRequest(format!(
            "plan_id {plan_id:?} is not a plan of service {service_id:?}"
        ))
    })?;
    Ok((offering, plan))
}

/// The offering `service_id` names if the catalog offers it, or 400. A
/// retired plugin's service is named as such: its instances can still be
/// unbound and deprovisioned, but nothing new is made from it.
pub(super) fn offered_service<'c>(
    catalog: &'c CatalogSnapshot,
    service_id: &str,
) -> Result<&'c ServiceOffering, Refusal> {
    catalog
        .service(service_id)
        .ok_or_else(|| match catalog.retired_service(service_id) {
            Some(retired) => Refusal::BadRequest(format!(
                "service_id {service_id:?} ({}) is not in the catalog: its plugin was retired; \
             existing instances can still be fetched, unbound and deprovisioned, \
             but not provisioned, updated or bound",
                retired.name
            )),
            None => Refusal::BadRequest(format!("service_id {service_id:?} is not in the catalog")),
        })
}

/// OSB: a requested maintenance_info version must equal the plan's.
pub(super) fn check_maintenance_version(
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
pub fn validate_parameters(
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
