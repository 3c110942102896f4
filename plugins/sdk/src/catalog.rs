//! Building the catalog: constructors with the defaults a plugin built on
//! this SDK can honour, and parameter schemas.

use serde_json::{Value, json};

use crate::{Catalog, MaintenanceInfo, PluginInfo, Schemas, ServiceOffering, ServicePlan};

/// The JSON Schema version of [`parameters_schema`]; OSB requires every
/// schema to declare one and platforms support draft-04 and later.
pub const JSON_SCHEMA_DRAFT_07: &str = "http://json-schema.org/draft-07/schema#";

/// A schema for a parameters object with the given `properties` and no
/// others: a typo in a parameter name is a 400, not silently ignored.
pub fn parameters_schema(properties: Value) -> Value {
    json!({
        "$schema": JSON_SCHEMA_DRAFT_07,
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    })
}

impl PluginInfo {
    /// The plugin's name (`[a-z0-9-]+`, the `.wasm` file's stem), version
    /// and description, as `describe` returns them.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
        }
    }
}

impl Catalog {
    /// A catalog of `services`.
    pub fn new(services: Vec<ServiceOffering>) -> Self {
        Self { services }
    }
}

impl ServiceOffering {
    /// A bindable offering whose instances and bindings can be fetched
    /// (the SDK's default `get_instance` answers from the host's record, and
    /// the host stores every bind result) and that accepts context-only
    /// updates (the default `update` accepts them). Plans are not
    /// updateable unless [`Self::plan_updateable`] says so.
    pub fn new(id: &str, name: &str, description: &str, plans: Vec<ServicePlan>) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            tags: Vec::new(),
            requires: Vec::new(),
            bindable: true,
            instances_retrievable: true,
            bindings_retrievable: true,
            allow_context_updates: true,
            plan_updateable: false,
            metadata: None,
            dashboard_client: None,
            plans,
        }
    }

    /// Tags the platform shows and filters by (`["mysql", "relational"]`).
    #[must_use]
    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|&tag| tag.to_owned()).collect();
        self
    }

    /// OSB offering metadata, e.g. `{"displayName": "MariaDB"}`.
    #[must_use]
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata.to_string());
        self
    }

    /// Whether instances may change plan (default: no).
    #[must_use]
    pub fn plan_updateable(mut self, updateable: bool) -> Self {
        self.plan_updateable = updateable;
        self
    }
}

impl ServicePlan {
    /// A free plan inheriting `bindable` and `plan_updateable` from its
    /// offering, without schemas or maintenance info.
    pub fn new(id: &str, name: &str, description: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            metadata: None,
            free: true,
            bindable: None,
            plan_updateable: None,
            binding_rotatable: false,
            schemas: None,
            maximum_polling_duration: None,
            maintenance_info: None,
        }
    }

    /// OSB plan metadata, e.g. `{"bullets": ["..."]}`.
    #[must_use]
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata.to_string());
        self
    }

    /// Instances of this plan run maintenance version `version` (SemVer);
    /// the platform offers an upgrade when it changes.
    #[must_use]
    pub fn maintenance_version(mut self, version: &str, description: &str) -> Self {
        self.maintenance_info = Some(MaintenanceInfo {
            version: version.to_owned(),
            description: Some(description.to_owned()),
        });
        self
    }

    /// Bindings may be rotated: a bind naming a predecessor creates new
    /// credentials while the old ones stay valid.
    #[must_use]
    pub fn binding_rotatable(mut self) -> Self {
        self.binding_rotatable = true;
        self
    }

    /// JSON Schemas of the provision and update parameters.
    #[must_use]
    pub fn instance_schemas(mut self, create: Value, update: Option<Value>) -> Self {
        let schemas = self.schemas.get_or_insert(Schemas {
            instance_create: None,
            instance_update: None,
            binding_create: None,
        });
        schemas.instance_create = Some(create.to_string());
        schemas.instance_update = update.map(|schema| schema.to_string());
        self
    }

    /// JSON Schema of the bind parameters.
    #[must_use]
    pub fn binding_schema(mut self, create: Value) -> Self {
        let schemas = self.schemas.get_or_insert(Schemas {
            instance_create: None,
            instance_update: None,
            binding_create: None,
        });
        schemas.binding_create = Some(create.to_string());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_declare_their_version_and_refuse_other_properties() {
        let schema = parameters_schema(json!({"size": {"type": "integer"}}));
        assert_eq!(schema["$schema"], JSON_SCHEMA_DRAFT_07);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["size"]["type"], "integer");
    }

    #[test]
    fn plan_builders_fill_the_fields() {
        let plan = ServicePlan::new("id", "small", "Small")
            .maintenance_version("1.2.3", "new build")
            .binding_rotatable()
            .instance_schemas(parameters_schema(json!({})), None)
            .binding_schema(parameters_schema(json!({"days": {"type": "integer"}})));
        assert_eq!(
            plan.maintenance_info
                .as_ref()
                .map(|info| info.version.as_str()),
            Some("1.2.3")
        );
        assert!(plan.binding_rotatable);
        let schemas = plan.schemas.expect("schemas");
        let create: Value =
            serde_json::from_str(schemas.instance_create.as_deref().expect("create"))
                .expect("json");
        assert_eq!(create["type"], "object");
        assert_eq!(schemas.instance_update, None);
        let binding: Value =
            serde_json::from_str(schemas.binding_create.as_deref().expect("binding"))
                .expect("json");
        assert_eq!(binding["properties"]["days"]["type"], "integer");
    }
}
