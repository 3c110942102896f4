//! What an update changes: checked against the catalog (plan changes
//! allowed, maintenance_info, parameter schema, context updates), and applied
//! to the stored instance once the plugin succeeded.

use serde_json::Value;

use crate::catalog::CatalogSnapshot;
use crate::lifecycle::StoredChanges;
use crate::model::{Instance, Refusal, ServiceOffering};

use super::UpdateRequest;
use super::validation::{check_maintenance_version, resolve_plan, validate_parameters};

/// Parameters after an update: new top-level keys replace old ones, the rest
/// stay (OSB leaves subset semantics to the broker).
fn merge_parameters(current: Option<&Value>, changes: Option<&Value>) -> Option<Value> {
    match (current, changes) {
        (Some(Value::Object(current)), Some(Value::Object(changes))) => {
            let mut merged = current.clone();
            merged.extend(
                changes
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone())),
            );
            Some(Value::Object(merged))
        }
        (current, None) => current.cloned(),
        (_, Some(changes)) => Some(changes.clone()),
    }
}

pub(super) fn apply_changes(instance: &mut Instance, changes: &StoredChanges) {
    if let Some(plan_id) = &changes.plan_id {
        instance.plan_id = plan_id.clone();
    }
    if changes.parameters.is_some() {
        instance.parameters =
            merge_parameters(instance.parameters.as_ref(), changes.parameters.as_ref());
    }
    if let Some(context) = &changes.context {
        instance.context = Some(context.clone());
    }
    if let Some(version) = &changes.maintenance_version {
        instance.maintenance_version = Some(version.clone());
    }
}

/// Checks an update against the catalog and works out what really changes.
pub(super) fn plan_changes(
    catalog: &CatalogSnapshot,
    offering: &ServiceOffering,
    instance: &Instance,
    request: &UpdateRequest,
) -> Result<StoredChanges, Refusal> {
    let new_plan_id = request
        .plan_id
        .as_ref()
        .filter(|plan| **plan != instance.plan_id);
    let current_plan = catalog.plan(&instance.service_id, &instance.plan_id);
    let target_plan = match new_plan_id {
        Some(plan_id) => {
            let (_, target) = resolve_plan(catalog, &instance.service_id, plan_id)?;
            let updateable = current_plan
                .and_then(|plan| plan.plan_updateable)
                .unwrap_or(offering.plan_updateable);
            if !updateable {
                return Err(Refusal::Unprocessable(format!(
                    "plan changes are not supported for service {:?}",
                    offering.name
                )));
            }
            Some(target)
        }
        None => current_plan,
    };
    let Some(target_plan) = target_plan else {
        return Err(Refusal::Unprocessable(format!(
            "the instance's plan {:?} is no longer in the catalog; choose a new plan",
            instance.plan_id
        )));
    };
    let maintenance_version = match &request.maintenance_version {
        Some(version) => {
            check_maintenance_version(target_plan, Some(version))?;
            Some(version.clone()).filter(|v| instance.maintenance_version.as_ref() != Some(v))
        }
        None => None,
    };
    let schema = target_plan
        .schemas
        .as_ref()
        .and_then(|s| s.service_instance.as_ref())
        .and_then(|s| s.update.as_ref());
    validate_parameters(schema.map(|s| &s.parameters), request.parameters.as_ref())?;
    let context = request
        .context
        .clone()
        .filter(|context| instance.context.as_ref() != Some(context));
    if context.is_some()
        && new_plan_id.is_none()
        && request.parameters.is_none()
        && !offering.allow_context_updates
    {
        // The platform may not send context-only updates to this offering;
        // accept and record nothing rather than fail an instance rename.
        return Ok(StoredChanges::default());
    }
    Ok(StoredChanges {
        plan_id: new_plan_id.cloned(),
        parameters: request.parameters.clone(),
        context,
        maintenance_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parameters_merge_key_by_key() {
        let merged = merge_parameters(
            Some(&json!({"a": 1, "b": 2})),
            Some(&json!({"b": 3, "c": 4})),
        );
        assert_eq!(merged, Some(json!({"a": 1, "b": 3, "c": 4})));
        assert_eq!(
            merge_parameters(Some(&json!({"a": 1})), None),
            Some(json!({"a": 1}))
        );
        assert_eq!(
            merge_parameters(None, Some(&json!({"a": 1}))),
            Some(json!({"a": 1}))
        );
    }
}
