//! Translation between the domain model and the WIT contract. Going in,
//! JSON values become text; coming out, every JSON text a plugin returns is
//! parsed and checked, so a malformed answer never reaches the platform.

use serde_json::Value;

use crate::contract::wasm_broker::plugin::types as wit;
use crate::model;

/// OSB limits the `operation` of a 202 answer to this many characters.
const MAX_OPERATION_CHARS: usize = 10_000;

/// A plugin answer the host cannot pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAnswer(String);

fn json_text(value: Option<&Value>) -> Option<String> {
    value.map(Value::to_string)
}

/// `text` parsed, and required to be a JSON object (OSB's shape for every
/// free-form field a plugin returns).
fn json_object(text: Option<String>, field: &str) -> Result<Option<Value>, InvalidAnswer> {
    let Some(text) = text else { return Ok(None) };
    let invalid =
        |problem: String| InvalidAnswer(format!("returned invalid JSON in {field}: {problem}"));
    match serde_json::from_str::<Value>(&text) {
        Ok(value @ Value::Object(_)) => Ok(Some(value)),
        Ok(other) => Err(invalid(format!(
            "expected a JSON object, got {}",
            kind_of(&other)
        ))),
        Err(error) => Err(invalid(error.to_string())),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn instance(instance: &model::Instance) -> wit::Instance {
    wit::Instance {
        id: instance.id.clone(),
        service_id: instance.service_id.clone(),
        plan_id: instance.plan_id.clone(),
        parameters: json_text(instance.parameters.as_ref()),
        context: json_text(instance.context.as_ref()),
        organization_guid: instance.organization_guid.clone(),
        space_guid: instance.space_guid.clone(),
        maintenance_version: instance.maintenance_version.clone(),
        plugin_version: instance.plugin_version.clone(),
    }
}

pub fn instance_changes(changes: &model::InstanceChanges) -> wit::InstanceChanges {
    wit::InstanceChanges {
        plan_id: changes.plan_id.clone(),
        parameters: json_text(changes.parameters.as_ref()),
        context: json_text(changes.context.as_ref()),
        maintenance_version: changes.maintenance_version.clone(),
    }
}

pub fn binding(binding: &model::Binding) -> wit::Binding {
    wit::Binding {
        id: binding.id.clone(),
        instance_id: binding.instance_id.clone(),
        service_id: binding.service_id.clone(),
        plan_id: binding.plan_id.clone(),
        app_guid: binding.app_guid.clone(),
        bind_resource: json_text(binding.bind_resource.as_ref()),
        context: json_text(binding.context.as_ref()),
        parameters: json_text(binding.parameters.as_ref()),
        predecessor_binding_id: binding.predecessor_binding_id.clone(),
    }
}

pub fn request_info(info: &model::RequestInfo) -> wit::RequestInfo {
    wit::RequestInfo {
        originating_identity: info.originating_identity.as_ref().map(|identity| {
            wit::OriginatingIdentity {
                platform: identity.platform.clone(),
                value: identity.value.to_string(),
            }
        }),
        request_identity: info.request_identity.clone(),
        api_version: info.api_version.clone(),
        accepts_incomplete: info.accepts_incomplete,
    }
}

pub fn operation_kind(kind: model::OperationKind) -> wit::OperationKind {
    match kind {
        model::OperationKind::Provision => wit::OperationKind::Provision,
        model::OperationKind::Update => wit::OperationKind::Update,
        model::OperationKind::Deprovision => wit::OperationKind::Deprovision,
        model::OperationKind::Bind => wit::OperationKind::Bind,
        model::OperationKind::Unbind => wit::OperationKind::Unbind,
    }
}

pub fn refusal(error: wit::BrokerError) -> model::Refusal {
    use model::Refusal as Model;
    use wit::BrokerError as Wit;
    match error {
        Wit::BadRequest(text) => Model::BadRequest(text),
        Wit::Conflict(text) => Model::Conflict(text),
        Wit::Gone(text) => Model::Gone(text),
        Wit::NotFound(text) => Model::NotFound(text),
        Wit::AsyncRequired(text) => Model::AsyncRequired(text),
        Wit::ConcurrencyError(text) => Model::ConcurrencyError(text),
        Wit::RequiresApp(text) => Model::RequiresApp(text),
        Wit::MaintenanceInfoConflict(text) => Model::MaintenanceInfoConflict(text),
        Wit::Unprocessable(text) => Model::Unprocessable(text),
        Wit::Internal(text) => Model::Internal(text),
    }
}

pub fn plugin_info(info: wit::PluginInfo) -> model::PluginInfo {
    model::PluginInfo {
        name: info.name,
        version: info.version,
        description: info.description,
    }
}

fn accepted(accepted: wit::Accepted) -> Result<model::Accepted, InvalidAnswer> {
    if let Some(operation) = &accepted.operation {
        let length = operation.chars().count();
        if length > MAX_OPERATION_CHARS {
            return Err(InvalidAnswer(format!(
                "returned an operation of {length} characters; OSB allows at most {MAX_OPERATION_CHARS}"
            )));
        }
    }
    Ok(model::Accepted {
        operation: accepted.operation,
        dashboard_url: accepted.dashboard_url,
    })
}

pub fn instance_outcome(
    outcome: wit::InstanceOutcome,
) -> Result<model::InstanceOutcome, InvalidAnswer> {
    Ok(match outcome {
        wit::InstanceOutcome::Done(result) => model::InstanceOutcome::Done(model::InstanceResult {
            dashboard_url: result.dashboard_url,
            metadata: json_object(result.metadata, "metadata")?,
        }),
        wit::InstanceOutcome::Accepted(answer) => {
            model::InstanceOutcome::Accepted(accepted(answer)?)
        }
    })
}

pub fn deletion_outcome(
    outcome: wit::DeletionOutcome,
) -> Result<model::DeletionOutcome, InvalidAnswer> {
    Ok(match outcome {
        wit::DeletionOutcome::Done => model::DeletionOutcome::Done,
        wit::DeletionOutcome::Accepted(answer) => {
            model::DeletionOutcome::Accepted(accepted(answer)?)
        }
    })
}

pub fn bind_outcome(outcome: wit::BindOutcome) -> Result<model::BindOutcome, InvalidAnswer> {
    Ok(match outcome {
        wit::BindOutcome::Done(result) => model::BindOutcome::Done(binding_result(result)?),
        wit::BindOutcome::Accepted(answer) => model::BindOutcome::Accepted(accepted(answer)?),
    })
}

pub fn binding_result(result: wit::BindingResult) -> Result<model::BindingResult, InvalidAnswer> {
    let volume_mounts = result
        .volume_mounts
        .into_iter()
        .map(|mount| {
            Ok(model::VolumeMount {
                driver: mount.driver,
                container_dir: mount.container_dir,
                mode: match mount.mode {
                    wit::MountMode::ReadOnly => model::MountMode::ReadOnly,
                    wit::MountMode::ReadWrite => model::MountMode::ReadWrite,
                },
                device_type: mount.device_type,
                device: model::VolumeDevice {
                    volume_id: mount.volume_id,
                    mount_config: json_object(mount.mount_config, "volume_mounts.mount_config")?,
                },
            })
        })
        .collect::<Result<_, InvalidAnswer>>()?;
    let endpoints = result
        .endpoints
        .into_iter()
        .map(|endpoint| model::Endpoint {
            host: endpoint.host,
            ports: endpoint.ports,
            protocol: match endpoint.protocol {
                wit::EndpointProtocol::Tcp => model::EndpointProtocol::Tcp,
                wit::EndpointProtocol::Udp => model::EndpointProtocol::Udp,
                wit::EndpointProtocol::All => model::EndpointProtocol::All,
            },
        })
        .collect();
    Ok(model::BindingResult {
        credentials: json_object(result.credentials, "credentials")?,
        metadata: result.metadata.map(|metadata| model::BindingMetadata {
            expires_at: metadata.expires_at,
            renew_before: metadata.renew_before,
        }),
        syslog_drain_url: result.syslog_drain_url,
        route_service_url: result.route_service_url,
        volume_mounts,
        endpoints,
    })
}

pub fn instance_details(
    details: wit::InstanceDetails,
) -> Result<model::InstanceDetails, InvalidAnswer> {
    Ok(model::InstanceDetails {
        dashboard_url: details.dashboard_url,
        parameters: json_object(details.parameters, "parameters")?,
        metadata: json_object(details.metadata, "metadata")?,
    })
}

pub fn operation_status(status: wit::OperationStatus) -> model::OperationStatus {
    model::OperationStatus {
        state: match status.state {
            wit::OperationState::InProgress => model::OperationState::InProgress,
            wit::OperationState::Succeeded => model::OperationState::Succeeded,
            wit::OperationState::Failed => model::OperationState::Failed,
        },
        description: status.description,
        instance_usable: status.instance_usable,
        update_repeatable: status.update_repeatable,
    }
}

/// The plugin's catalog in model form. JSON that does not parse is refused
/// here; whether it has the right shape is `catalog::validate`'s question.
pub fn catalog(catalog: wit::Catalog) -> Result<model::Catalog, InvalidAnswer> {
    let services = catalog
        .services
        .into_iter()
        .map(offering)
        .collect::<Result<_, _>>()?;
    Ok(model::Catalog { services })
}

fn any_json(
    text: Option<String>,
    field: impl FnOnce() -> String,
) -> Result<Option<Value>, InvalidAnswer> {
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|error| InvalidAnswer(format!("invalid JSON in {}: {error}", field())))
    })
    .transpose()
}

fn offering(offering: wit::ServiceOffering) -> Result<model::ServiceOffering, InvalidAnswer> {
    let name = offering.name;
    let plans = offering
        .plans
        .into_iter()
        .map(|p| plan(p, &name))
        .collect::<Result<_, _>>()?;
    Ok(model::ServiceOffering {
        metadata: any_json(offering.metadata, || {
            format!("the metadata of offering {name:?}")
        })?,
        id: offering.id,
        description: offering.description,
        tags: offering.tags,
        requires: offering.requires,
        bindable: offering.bindable,
        instances_retrievable: offering.instances_retrievable,
        bindings_retrievable: offering.bindings_retrievable,
        allow_context_updates: offering.allow_context_updates,
        plan_updateable: offering.plan_updateable,
        dashboard_client: offering
            .dashboard_client
            .map(|client| model::DashboardClient {
                id: client.id,
                secret: client.secret,
                redirect_uri: client.redirect_uri,
            }),
        plans,
        name,
    })
}

fn plan(plan: wit::ServicePlan, offering: &str) -> Result<model::ServicePlan, InvalidAnswer> {
    let at = |what: &str| format!("{what} of offering {offering:?}, plan {:?}", plan.name);
    let schema = |text: Option<String>, which: &str| {
        Ok::<_, InvalidAnswer>(
            any_json(text, || at(&format!("schema {which}")))?
                .map(|parameters| model::ParametersSchema { parameters }),
        )
    };
    let schemas = match plan.schemas {
        None => None,
        Some(schemas) => {
            let create = schema(schemas.instance_create, "service_instance.create")?;
            let update = schema(schemas.instance_update, "service_instance.update")?;
            let bind = schema(schemas.binding_create, "service_binding.create")?;
            Some(model::Schemas {
                service_instance: (create.is_some() || update.is_some())
                    .then_some(model::InstanceSchemas { create, update }),
                service_binding: bind
                    .is_some()
                    .then_some(model::BindingSchemas { create: bind }),
            })
        }
    };
    Ok(model::ServicePlan {
        metadata: any_json(plan.metadata, || at("the metadata"))?,
        schemas,
        id: plan.id,
        name: plan.name,
        description: plan.description,
        free: plan.free,
        bindable: plan.bindable,
        plan_updateable: plan.plan_updateable,
        binding_rotatable: plan.binding_rotatable,
        maximum_polling_duration: plan.maximum_polling_duration,
        maintenance_info: plan.maintenance_info.map(|info| model::MaintenanceInfo {
            version: info.version,
            description: info.description,
        }),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn binding_result_with(credentials: Option<&str>) -> wit::BindingResult {
        wit::BindingResult {
            credentials: credentials.map(str::to_owned),
            metadata: None,
            syslog_drain_url: None,
            route_service_url: None,
            volume_mounts: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn json_values_travel_as_text() {
        let instance = model::Instance {
            id: "i".to_owned(),
            service_id: "s".to_owned(),
            plan_id: "p".to_owned(),
            parameters: Some(json!({"size": 2})),
            context: None,
            organization_guid: Some("org".to_owned()),
            space_guid: None,
            maintenance_version: None,
            plugin_version: "1.0.0".to_owned(),
        };
        let converted = super::instance(&instance);
        assert_eq!(converted.parameters.as_deref(), Some(r#"{"size":2}"#));
        assert_eq!(converted.context, None);
        assert_eq!(converted.organization_guid.as_deref(), Some("org"));

        let info = model::RequestInfo {
            originating_identity: Some(model::OriginatingIdentity {
                platform: "cloudfoundry".to_owned(),
                value: json!({"user_id": "u"}),
            }),
            request_identity: None,
            api_version: "2.17".to_owned(),
            accepts_incomplete: true,
        };
        let converted = request_info(&info);
        assert_eq!(
            converted.originating_identity.map(|i| i.value).as_deref(),
            Some(r#"{"user_id":"u"}"#)
        );
        assert!(converted.accepts_incomplete);
    }

    #[test]
    fn credentials_must_be_a_json_object() {
        let result =
            binding_result(binding_result_with(Some(r#"{"uri":"mysql://x"}"#))).expect("valid");
        assert_eq!(result.credentials, Some(json!({"uri": "mysql://x"})));

        let error = binding_result(binding_result_with(Some("[1]"))).expect_err("an array");
        assert_eq!(
            error.to_string(),
            "returned invalid JSON in credentials: expected a JSON object, got an array"
        );
        let error = binding_result(binding_result_with(Some("{"))).expect_err("truncated");
        assert!(
            error
                .to_string()
                .starts_with("returned invalid JSON in credentials: EOF"),
            "{error}"
        );
    }

    #[test]
    fn instance_answers_are_checked() {
        let done = wit::InstanceOutcome::Done(wit::InstanceResult {
            dashboard_url: Some("https://d".to_owned()),
            metadata: Some(r#"{"labels":{}}"#.to_owned()),
        });
        assert_eq!(
            instance_outcome(done).expect("valid"),
            model::InstanceOutcome::Done(model::InstanceResult {
                dashboard_url: Some("https://d".to_owned()),
                metadata: Some(json!({"labels": {}})),
            })
        );
        let details = wit::InstanceDetails {
            dashboard_url: None,
            parameters: Some("1".to_owned()),
            metadata: None,
        };
        let error = instance_details(details).expect_err("a number");
        assert_eq!(
            error.to_string(),
            "returned invalid JSON in parameters: expected a JSON object, got a number"
        );

        let long = wit::DeletionOutcome::Accepted(wit::Accepted {
            operation: Some("x".repeat(MAX_OPERATION_CHARS + 1)),
            dashboard_url: None,
        });
        assert!(deletion_outcome(long).is_err());
    }

    #[test]
    fn volume_mounts_nest_the_device_as_osb_does() {
        let mut result = binding_result_with(None);
        result.volume_mounts.push(wit::VolumeMount {
            driver: "nfs".to_owned(),
            container_dir: "/data".to_owned(),
            mode: wit::MountMode::ReadWrite,
            device_type: "shared".to_owned(),
            volume_id: "v1".to_owned(),
            mount_config: Some(r#"{"uid":"1"}"#.to_owned()),
        });
        let converted = binding_result(result).expect("valid");
        assert_eq!(
            serde_json::to_value(&converted.volume_mounts).expect("serializes"),
            json!([{
                "driver": "nfs", "container_dir": "/data", "mode": "rw", "device_type": "shared",
                "device": {"volume_id": "v1", "mount_config": {"uid": "1"}}
            }])
        );
    }

    fn wit_plan(schemas: Option<wit::Schemas>) -> wit::ServicePlan {
        wit::ServicePlan {
            id: "p1".to_owned(),
            name: "small".to_owned(),
            description: "d".to_owned(),
            metadata: None,
            free: true,
            bindable: None,
            plan_updateable: None,
            binding_rotatable: false,
            schemas,
            maximum_polling_duration: Some(60),
            maintenance_info: None,
        }
    }

    fn wit_catalog(plan: wit::ServicePlan, metadata: Option<&str>) -> wit::Catalog {
        wit::Catalog {
            services: vec![wit::ServiceOffering {
                id: "s1".to_owned(),
                name: "db".to_owned(),
                description: "d".to_owned(),
                tags: vec!["sql".to_owned()],
                requires: Vec::new(),
                bindable: true,
                instances_retrievable: true,
                bindings_retrievable: false,
                allow_context_updates: false,
                plan_updateable: true,
                metadata: metadata.map(str::to_owned),
                dashboard_client: None,
                plans: vec![plan],
            }],
        }
    }

    #[test]
    fn catalog_schemas_nest_as_osb_does() {
        let schemas = wit::Schemas {
            instance_create: Some(r#"{"$schema":"x"}"#.to_owned()),
            instance_update: None,
            binding_create: None,
        };
        let converted = catalog(wit_catalog(
            wit_plan(Some(schemas)),
            Some(r#"{"displayName":"DB"}"#),
        ))
        .expect("parses");
        assert_eq!(
            serde_json::to_value(&converted).expect("serializes"),
            json!({"services": [{
                "id": "s1", "name": "db", "description": "d", "tags": ["sql"], "bindable": true,
                "instances_retrievable": true, "plan_updateable": true,
                "metadata": {"displayName": "DB"},
                "plans": [{
                    "id": "p1", "name": "small", "description": "d", "free": true,
                    "maximum_polling_duration": 60,
                    "schemas": {"service_instance": {"create": {"parameters": {"$schema": "x"}}}}
                }]
            }]})
        );
    }

    #[test]
    fn catalog_json_that_does_not_parse_names_its_place() {
        let schemas = wit::Schemas {
            instance_create: None,
            instance_update: None,
            binding_create: Some("{nope".to_owned()),
        };
        let error = catalog(wit_catalog(wit_plan(Some(schemas)), None)).expect_err("bad schema");
        assert!(
            error.to_string().starts_with(
                "invalid JSON in schema service_binding.create of offering \"db\", plan \"small\":"
            ),
            "{error}"
        );
        let error = catalog(wit_catalog(wit_plan(None), Some("nope"))).expect_err("bad metadata");
        assert!(
            error
                .to_string()
                .starts_with("invalid JSON in the metadata of offering \"db\":"),
            "{error}"
        );
    }
}
