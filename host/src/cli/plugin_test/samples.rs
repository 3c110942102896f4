//! Sample inputs from a plan's parameter schemas: what the schema itself
//! offers (its `examples`, its `default`, its properties' defaults or first
//! examples), checked against the schema with the broker's own validation,
//! then used as the parameters of the lifecycle calls. Nothing is made up:
//! a schema that offers no sample is skipped, with a note.

use serde_json::{Map, Value};

use wasm_broker::broker::validate_parameters;
use wasm_broker::model::ServicePlan;

use super::report::Outcome;

/// The parameters the lifecycle checks send for one plan.
#[derive(Debug, Default, Clone)]
pub struct PlanInputs {
    /// A valid sample of the instance-create schema, if it offers one.
    pub provision: Option<Value>,
    /// Valid instance-create parameters that differ from `provision`: one
    /// property's other `enum` value.
    pub other_provision: Option<Value>,
    /// A valid sample of the binding-create schema, if it offers one.
    pub bind: Option<Value>,
}

/// Checks every sample of the plan's three schemas. The outcome fails if a
/// sample the schema itself offers does not validate against it.
pub fn check_plan(plan: &ServicePlan) -> (Outcome, PlanInputs) {
    let schemas = plan.schemas.clone().unwrap_or_default();
    let instance = schemas.service_instance.unwrap_or_default();
    let binding = schemas
        .service_binding
        .and_then(|binding| binding.create)
        .map(|schema| schema.parameters);
    let parts = [
        (
            "instance create",
            instance.create.map(|schema| schema.parameters),
        ),
        (
            "instance update",
            instance.update.map(|schema| schema.parameters),
        ),
        ("binding create", binding),
    ];
    let mut notes = Vec::new();
    let mut invalid = Vec::new();
    let mut valid_samples = 0;
    let mut inputs = PlanInputs::default();
    for (which, schema) in &parts {
        let Some(schema) = schema else {
            notes.push(format!("{which}: no schema"));
            continue;
        };
        let samples = samples_of(schema);
        if samples.is_empty() {
            notes.push(format!("{which}: no examples or defaults (skipped)"));
            continue;
        }
        let mut first_valid = None;
        for (source, sample) in &samples {
            match validate_parameters(Some(schema), Some(sample)) {
                Ok(()) => {
                    valid_samples += 1;
                    first_valid.get_or_insert_with(|| sample.clone());
                }
                Err(refusal) => invalid.push(format!("{which}, {source} {sample}: {refusal}")),
            }
        }
        notes.push(format!("{which}: {} sample(s)", samples.len()));
        match *which {
            "instance create" => {
                inputs.other_provision = first_valid
                    .as_ref()
                    .and_then(|sample| enum_alternative(schema, sample))
                    .filter(|other| validate_parameters(Some(schema), Some(other)).is_ok());
                inputs.provision = first_valid;
            }
            "binding create" => inputs.bind = first_valid,
            _ => {}
        }
    }
    let outcome = if !invalid.is_empty() {
        Outcome::Fail(format!(
            "samples the schemas offer do not validate: {}",
            invalid.join("; ")
        ))
    } else if valid_samples == 0 {
        Outcome::Skip(notes.join("; "))
    } else {
        Outcome::Pass(notes.join("; "))
    };
    (outcome, inputs)
}

/// Each top-level `examples` item, the top-level `default`, and one object
/// of the properties' `default`s (else their first `examples` item), each
/// named by where it came from.
fn samples_of(schema: &Value) -> Vec<(String, Value)> {
    let mut samples = Vec::new();
    if let Some(examples) = schema.get("examples").and_then(Value::as_array) {
        for (index, example) in examples.iter().enumerate() {
            samples.push((format!("examples[{index}]"), example.clone()));
        }
    }
    if let Some(default) = schema.get("default") {
        samples.push(("default".to_owned(), default.clone()));
    }
    let from_properties: Map<String, Value> = schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, property)| {
            let value = property.get("default").cloned().or_else(|| {
                property
                    .get("examples")
                    .and_then(Value::as_array)
                    .and_then(|examples| examples.first().cloned())
            })?;
            Some((name.clone(), value))
        })
        .collect();
    if !from_properties.is_empty() {
        samples.push((
            "the properties' defaults and examples".to_owned(),
            Value::Object(from_properties),
        ));
    }
    samples
}

/// `sample` with one property set to another value of its `enum`, if the
/// schema has such a property.
fn enum_alternative(schema: &Value, sample: &Value) -> Option<Value> {
    let properties = schema.get("properties")?.as_object()?;
    properties.iter().find_map(|(name, property)| {
        let choices = property.get("enum")?.as_array()?;
        let current = sample.get(name);
        let other = choices.iter().find(|choice| Some(*choice) != current)?;
        let mut changed = sample.as_object()?.clone();
        changed.insert(name.clone(), other.clone());
        Some(Value::Object(changed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(properties: Value) -> Value {
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        })
    }

    #[test]
    fn samples_come_from_the_schema_only() {
        let with_default = schema(json!({
            "charset": {"type": "string", "enum": ["utf8mb4", "latin1"], "default": "utf8mb4"},
            "size": {"type": "integer", "examples": [3, 4]},
            "free": {"type": "string"},
        }));
        let samples = samples_of(&with_default);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].1, json!({"charset": "utf8mb4", "size": 3}));
        assert!(samples_of(&schema(json!({"free": {"type": "string"}}))).is_empty());
        let top = json!({"type": "object", "examples": [{"a": 1}], "default": {}});
        assert_eq!(samples_of(&top).len(), 2);
    }

    #[test]
    fn an_enum_gives_a_different_valid_input() {
        let with_enum = schema(json!({"charset": {"enum": ["utf8mb4", "latin1"]}}));
        assert_eq!(
            enum_alternative(&with_enum, &json!({"charset": "utf8mb4"})),
            Some(json!({"charset": "latin1"}))
        );
        assert_eq!(
            enum_alternative(&schema(json!({"n": {}})), &json!({})),
            None
        );
    }
}
