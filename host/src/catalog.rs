//! The merged catalog: validation of each plugin's catalog against the OSB
//! rules, merging across plugins, and the lookups the broker core needs.
//! Pure data, no wasmtime.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::{Catalog, PluginInfo, ServiceOffering, ServicePlan};

/// OSB allows only these values in an offering's `requires`.
const ALLOWED_REQUIRES: [&str; 3] = ["syslog_drain", "route_forwarding", "volume_mount"];

/// Largest parameters schema OSB lets a broker publish.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// Why a plugin's catalog cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The catalog breaks OSB rules; every problem found is listed, so a
    /// plugin author fixes them in one round.
    #[error("invalid catalog: {}", problems.join("; "))]
    Invalid { problems: Vec<String> },
    /// An id or name is already served by another plugin.
    #[error("{0}")]
    Clash(String),
}

/// One plugin's contribution to the merged catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginCatalog {
    /// File stem: the name broker.toml uses for the plugin.
    pub plugin: String,
    pub info: PluginInfo,
    pub catalog: Catalog,
}

/// Checks a plugin's own report and catalog against OSB (checklist §3.4).
/// Uniqueness across plugins is [`find_clash`]'s job.
pub fn validate(info: &PluginInfo, catalog: &Catalog) -> Result<(), CatalogError> {
    let mut problems = Vec::new();
    if !is_cli_friendly(&info.name) {
        problems.push(format!("plugin name {:?} must match [a-z0-9-]+", info.name));
    }
    if semver::Version::parse(&info.version).is_err() {
        problems.push(format!(
            "plugin version {:?} is not SemVer 2.0",
            info.version
        ));
    }

    let mut offering_ids = HashSet::new();
    let mut offering_names = HashSet::new();
    let mut plan_ids = HashSet::new();
    for offering in &catalog.services {
        let at = format!("offering {:?}", offering.name);
        check_offering(offering, &at, &mut problems);
        if !offering.id.is_empty() && !offering_ids.insert(offering.id.as_str()) {
            problems.push(format!(
                "{at}: id {:?} is used by another offering",
                offering.id
            ));
        }
        if !offering.name.is_empty() && !offering_names.insert(offering.name.as_str()) {
            problems.push(format!("{at}: the name is used by another offering"));
        }
        let mut plan_names = HashSet::new();
        for plan in &offering.plans {
            let at = format!("{at}, plan {:?}", plan.name);
            check_plan(plan, &at, &mut problems);
            if !plan.id.is_empty() && !plan_ids.insert(plan.id.as_str()) {
                problems.push(format!("{at}: id {:?} is used by another plan", plan.id));
            }
            if !plan.name.is_empty() && !plan_names.insert(plan.name.as_str()) {
                problems.push(format!(
                    "{at}: the name is used by another plan of the offering"
                ));
            }
        }
    }
    // OSB ids are global: an offering and a plan may not share one either.
    let mut shared_ids: Vec<&str> = offering_ids.intersection(&plan_ids).copied().collect();
    shared_ids.sort_unstable();
    for id in shared_ids {
        problems.push(format!("id {id:?} is used by both an offering and a plan"));
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(CatalogError::Invalid { problems })
    }
}

fn check_offering(offering: &ServiceOffering, at: &str, problems: &mut Vec<String>) {
    require_non_empty(&offering.id, at, "id", problems);
    require_non_empty(&offering.description, at, "description", problems);
    if !is_cli_friendly(&offering.name) {
        problems.push(format!("{at}: the name must match [a-z0-9-]+"));
    }
    if offering.plans.is_empty() {
        problems.push(format!("{at}: needs at least one plan"));
    }
    for requirement in &offering.requires {
        if !ALLOWED_REQUIRES.contains(&requirement.as_str()) {
            problems.push(format!(
                "{at}: requires {requirement:?}, but only {} are allowed",
                ALLOWED_REQUIRES.join(", ")
            ));
        }
    }
    check_metadata(offering.metadata.as_ref(), at, problems);
    if let Some(client) = &offering.dashboard_client {
        require_non_empty(&client.id, at, "dashboard_client.id", problems);
        require_non_empty(&client.secret, at, "dashboard_client.secret", problems);
    }
}

fn check_plan(plan: &ServicePlan, at: &str, problems: &mut Vec<String>) {
    require_non_empty(&plan.id, at, "id", problems);
    require_non_empty(&plan.description, at, "description", problems);
    if !is_cli_friendly(&plan.name) {
        problems.push(format!("{at}: the name must match [a-z0-9-]+"));
    }
    check_metadata(plan.metadata.as_ref(), at, problems);
    if let Some(maintenance) = &plan.maintenance_info
        && semver::Version::parse(&maintenance.version).is_err()
    {
        problems.push(format!(
            "{at}: maintenance_info.version {:?} is not SemVer 2.0",
            maintenance.version
        ));
    }
    let Some(schemas) = &plan.schemas else { return };
    let instance = schemas.service_instance.as_ref();
    let binding = schemas.service_binding.as_ref();
    let named = [
        (
            "service_instance.create",
            instance.and_then(|s| s.create.as_ref()),
        ),
        (
            "service_instance.update",
            instance.and_then(|s| s.update.as_ref()),
        ),
        (
            "service_binding.create",
            binding.and_then(|s| s.create.as_ref()),
        ),
    ];
    for (name, schema) in named {
        if let Some(schema) = schema
            && let Err(problem) = check_schema(&schema.parameters)
        {
            problems.push(format!("{at}: schema {name}: {problem}"));
        }
    }
}

fn require_non_empty(value: &str, at: &str, field: &str, problems: &mut Vec<String>) {
    if value.trim().is_empty() {
        problems.push(format!("{at}: {field} must not be empty"));
    }
}

fn check_metadata(metadata: Option<&Value>, at: &str, problems: &mut Vec<String>) {
    if metadata.is_some_and(|metadata| !metadata.is_object()) {
        problems.push(format!("{at}: metadata must be a JSON object"));
    }
}

/// Names pass the OSB conformance suites' `^[a-z0-9-]+$`.
fn is_cli_friendly(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A parameters schema a platform can use: a JSON object declaring its
/// dialect, self-contained (platforms do not fetch external documents), small
/// enough to publish, and one the broker can compile to validate requests.
fn check_schema(schema: &Value) -> Result<(), String> {
    let Some(object) = schema.as_object() else {
        return Err("must be a JSON object".to_owned());
    };
    if !object.contains_key("$schema") {
        return Err("has no \"$schema\"".to_owned());
    }
    if let Some(reference) = external_ref(schema) {
        return Err(format!(
            "has the external $ref {reference:?}; only local references (#...) are allowed"
        ));
    }
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Err(format!(
            "is {size} bytes, more than the {MAX_SCHEMA_BYTES} allowed"
        ));
    }
    jsonschema::validator_for(schema)
        .map_err(|error| format!("is not a valid JSON Schema: {error}"))?;
    Ok(())
}

fn external_ref(value: &Value) -> Option<&str> {
    match value {
        Value::Object(object) => object.iter().find_map(|(key, value)| match value {
            Value::String(reference) if key == "$ref" && !reference.starts_with('#') => {
                Some(reference.as_str())
            }
            _ => external_ref(value),
        }),
        Value::Array(items) => items.iter().find_map(external_ref),
        _ => None,
    }
}

/// The first offering id, plan id or offering name of `candidate` that a
/// plugin in `serving` already uses, as a message naming both plugins.
pub fn find_clash<'a>(
    serving: impl IntoIterator<Item = &'a PluginCatalog>,
    candidate: &PluginCatalog,
) -> Option<CatalogError> {
    for other in serving {
        for theirs in &other.catalog.services {
            for ours in &candidate.catalog.services {
                let clash = if ours.id == theirs.id {
                    Some(format!("offering id {:?}", ours.id))
                } else if ours.name == theirs.name {
                    Some(format!("offering name {:?}", ours.name))
                } else {
                    plan_id_clash(ours, theirs).map(|id| format!("plan id {id:?}"))
                };
                if let Some(what) = clash {
                    return Some(CatalogError::Clash(format!(
                        "plugin {} declares {what}, which plugin {} already serves",
                        candidate.plugin, other.plugin
                    )));
                }
            }
        }
    }
    None
}

/// Ids are global in OSB: a plan id may not repeat any plan or offering id.
fn plan_id_clash<'a>(ours: &'a ServiceOffering, theirs: &ServiceOffering) -> Option<&'a str> {
    let their_ids: HashSet<&str> = std::iter::once(theirs.id.as_str())
        .chain(theirs.plans.iter().map(|plan| plan.id.as_str()))
        .collect();
    ours.plans
        .iter()
        .map(|plan| plan.id.as_str())
        .find(|id| their_ids.contains(id))
        .or_else(|| {
            theirs
                .plans
                .iter()
                .any(|plan| plan.id == ours.id)
                .then_some(ours.id.as_str())
        })
}

/// Where an offering sits in the snapshot.
#[derive(Debug, Clone)]
struct OfferingEntry {
    offering: usize,
    plugin: usize,
    plans: HashMap<String, usize>,
}

/// The catalog as served: the merged offerings, their pre-serialized OSB
/// JSON (so `GET /v2/catalog` costs no serialization) and an ETag.
#[derive(Debug)]
pub struct CatalogSnapshot {
    pub catalog: Catalog,
    /// `{"services": [...]}` exactly as served.
    pub json: bytes::Bytes,
    /// Strong ETag of `json`, quoted.
    pub etag: String,
    /// Serving plugins: file stem and reported info.
    plugins: Vec<(String, PluginInfo)>,
    offerings: HashMap<String, OfferingEntry>,
}

impl Default for CatalogSnapshot {
    fn default() -> Self {
        Self::build(&[])
    }
}

impl CatalogSnapshot {
    /// Merges catalogs that passed [`validate`] and [`find_clash`], in the
    /// given order.
    pub fn build(plugins: &[PluginCatalog]) -> Self {
        let mut catalog = Catalog::default();
        let mut offerings = HashMap::new();
        for (plugin, contribution) in plugins.iter().enumerate() {
            for offering in &contribution.catalog.services {
                let plans = offering
                    .plans
                    .iter()
                    .enumerate()
                    .map(|(index, plan)| (plan.id.clone(), index))
                    .collect();
                let entry = OfferingEntry {
                    offering: catalog.services.len(),
                    plugin,
                    plans,
                };
                offerings.insert(offering.id.clone(), entry);
                catalog.services.push(offering.clone());
            }
        }
        // Serializing plain data with string keys cannot fail; an empty body
        // would still be answered with a matching ETag.
        let json = bytes::Bytes::from(serde_json::to_vec(&catalog).unwrap_or_default());
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&json)));
        let plugins = plugins
            .iter()
            .map(|p| (p.plugin.clone(), p.info.clone()))
            .collect();
        Self {
            catalog,
            json,
            etag,
            plugins,
            offerings,
        }
    }

    pub fn service(&self, service_id: &str) -> Option<&ServiceOffering> {
        let entry = self.offerings.get(service_id)?;
        self.catalog.services.get(entry.offering)
    }

    pub fn plan(&self, service_id: &str, plan_id: &str) -> Option<&ServicePlan> {
        let entry = self.offerings.get(service_id)?;
        let plan = *entry.plans.get(plan_id)?;
        self.catalog.services.get(entry.offering)?.plans.get(plan)
    }

    /// The plugin serving `service_id` (its name and reported info).
    pub fn plugin_of(&self, service_id: &str) -> Option<(&str, &PluginInfo)> {
        let entry = self.offerings.get(service_id)?;
        self.plugins
            .get(entry.plugin)
            .map(|(name, info)| (name.as_str(), info))
    }
}

pub type SharedCatalog = Arc<CatalogSnapshot>;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{InstanceSchemas, MaintenanceInfo, ParametersSchema, Schemas};

    fn info(name: &str) -> PluginInfo {
        PluginInfo {
            name: name.to_owned(),
            version: "1.0.0".to_owned(),
            description: "test".to_owned(),
        }
    }

    fn plan(id: &str, name: &str) -> ServicePlan {
        ServicePlan {
            id: id.to_owned(),
            name: name.to_owned(),
            description: "a plan".to_owned(),
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

    fn offering(id: &str, name: &str, plans: Vec<ServicePlan>) -> ServiceOffering {
        ServiceOffering {
            id: id.to_owned(),
            name: name.to_owned(),
            description: "an offering".to_owned(),
            tags: Vec::new(),
            requires: Vec::new(),
            bindable: true,
            instances_retrievable: false,
            bindings_retrievable: false,
            allow_context_updates: false,
            plan_updateable: false,
            metadata: None,
            dashboard_client: None,
            plans,
        }
    }

    fn catalog(services: Vec<ServiceOffering>) -> Catalog {
        Catalog { services }
    }

    fn problems(catalog: &Catalog) -> String {
        validate(&info("test"), catalog)
            .expect_err("must be refused")
            .to_string()
    }

    fn with_create_schema(schema: Value) -> Catalog {
        let mut plan = plan("p1", "small");
        plan.schemas = Some(Schemas {
            service_instance: Some(InstanceSchemas {
                create: Some(ParametersSchema { parameters: schema }),
                update: None,
            }),
            service_binding: None,
        });
        catalog(vec![offering("s1", "db", vec![plan])])
    }

    #[test]
    fn a_complete_catalog_is_valid() {
        let mut small = plan("p1", "small");
        small.maintenance_info = Some(MaintenanceInfo {
            version: "1.2.3-rc.1+build".to_owned(),
            description: None,
        });
        let mut db = offering("s1", "db", vec![small, plan("p2", "large")]);
        db.requires = vec!["volume_mount".to_owned()];
        db.metadata = Some(json!({"displayName": "DB"}));
        validate(
            &info("mysql"),
            &catalog(vec![db, offering("s2", "cache", vec![plan("p3", "small")])]),
        )
        .expect("valid");
        validate(&info("mysql"), &Catalog::default()).expect("an empty catalog is allowed");
    }

    #[test]
    fn empty_fields_are_refused() {
        let mut empty = offering("", "db", vec![plan("p1", "")]);
        empty.description = " ".to_owned();
        empty.plans[0].description = String::new();
        let message = problems(&catalog(vec![empty]));
        assert!(
            message.contains("offering \"db\": id must not be empty"),
            "{message}"
        );
        assert!(
            message.contains("offering \"db\": description must not be empty"),
            "{message}"
        );
        assert!(
            message.contains("plan \"\": the name must match"),
            "{message}"
        );
        assert!(
            message.contains("plan \"\": description must not be empty"),
            "{message}"
        );
    }

    #[test]
    fn an_offering_needs_a_plan() {
        let message = problems(&catalog(vec![offering("s1", "db", Vec::new())]));
        assert!(message.contains("needs at least one plan"), "{message}");
    }

    #[test]
    fn names_must_be_cli_friendly() {
        let message = problems(&catalog(vec![offering(
            "s1",
            "My DB",
            vec![plan("p1", "Small_1")],
        )]));
        assert!(
            message.contains("offering \"My DB\": the name must match [a-z0-9-]+"),
            "{message}"
        );
        assert!(
            message.contains("plan \"Small_1\": the name must match"),
            "{message}"
        );
    }

    #[test]
    fn ids_must_be_unique_across_offerings_and_plans() {
        let message = problems(&catalog(vec![
            offering("s1", "db", vec![plan("p1", "small")]),
            offering("s1", "cache", vec![plan("p1", "small")]),
        ]));
        assert!(
            message.contains("offering \"cache\": id \"s1\" is used by another offering"),
            "{message}"
        );
        assert!(
            message.contains("plan \"small\": id \"p1\" is used by another plan"),
            "{message}"
        );

        let message = problems(&catalog(vec![
            offering("s1", "db", vec![plan("x", "small")]),
            offering("x", "cache", vec![plan("p2", "small")]),
        ]));
        assert!(
            message.contains("id \"x\" is used by both an offering and a plan"),
            "{message}"
        );
    }

    #[test]
    fn names_must_be_unique() {
        let message = problems(&catalog(vec![
            offering("s1", "db", vec![plan("p1", "small"), plan("p2", "small")]),
            offering("s2", "db", vec![plan("p3", "small")]),
        ]));
        assert!(
            message.contains("offering \"db\": the name is used by another offering"),
            "{message}"
        );
        assert!(
            message.contains("the name is used by another plan of the offering"),
            "{message}"
        );
        // The same plan name in two offerings is fine.
        validate(
            &info("x"),
            &catalog(vec![
                offering("s1", "db", vec![plan("p1", "small")]),
                offering("s2", "cache", vec![plan("p2", "small")]),
            ]),
        )
        .expect("valid");
    }

    #[test]
    fn requires_only_known_values() {
        let mut db = offering("s1", "db", vec![plan("p1", "small")]);
        db.requires = vec!["syslog_drain".to_owned(), "network".to_owned()];
        let message = problems(&catalog(vec![db]));
        assert!(message.contains("requires \"network\""), "{message}");
        assert!(!message.contains("\"syslog_drain\""), "{message}");
    }

    #[test]
    fn maintenance_version_must_be_semver() {
        let mut small = plan("p1", "small");
        small.maintenance_info = Some(MaintenanceInfo {
            version: "1.2".to_owned(),
            description: None,
        });
        let message = problems(&catalog(vec![offering("s1", "db", vec![small])]));
        assert!(
            message.contains("maintenance_info.version \"1.2\" is not SemVer"),
            "{message}"
        );
    }

    #[test]
    fn plugin_info_is_checked() {
        let bad = PluginInfo {
            name: "MySQL".to_owned(),
            version: "one".to_owned(),
            description: String::new(),
        };
        let message = validate(&bad, &Catalog::default())
            .expect_err("refused")
            .to_string();
        assert!(message.contains("plugin name \"MySQL\""), "{message}");
        assert!(
            message.contains("plugin version \"one\" is not SemVer"),
            "{message}"
        );
    }

    #[test]
    fn metadata_must_be_an_object() {
        let mut db = offering("s1", "db", vec![plan("p1", "small")]);
        db.metadata = Some(json!(["x"]));
        let message = problems(&catalog(vec![db]));
        assert!(
            message.contains("metadata must be a JSON object"),
            "{message}"
        );
    }

    #[test]
    fn schema_must_be_an_object_with_dialect() {
        let message = problems(&with_create_schema(json!(true)));
        assert!(
            message.contains("schema service_instance.create: must be a JSON object"),
            "{message}"
        );
        let message = problems(&with_create_schema(json!({"type": "object"})));
        assert!(message.contains("has no \"$schema\""), "{message}");
        validate(
            &info("x"),
            &with_create_schema(json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"size": {"$ref": "#/definitions/size"}},
                "definitions": {"size": {"type": "integer"}}
            })),
        )
        .expect("local references are fine");
    }

    #[test]
    fn schema_may_not_reference_external_documents() {
        let message = problems(&with_create_schema(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "properties": {"a": {"items": [{"$ref": "https://example.com/s.json"}]}}
        })));
        assert!(
            message.contains("external $ref \"https://example.com/s.json\""),
            "{message}"
        );
    }

    #[test]
    fn schema_size_is_limited() {
        let message = problems(&with_create_schema(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "description": "x".repeat(MAX_SCHEMA_BYTES),
        })));
        assert!(message.contains("more than the 65536 allowed"), "{message}");
    }

    #[test]
    fn schema_must_compile() {
        let message = problems(&with_create_schema(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "no-such-type"
        })));
        assert!(message.contains("is not a valid JSON Schema"), "{message}");
    }

    fn contribution(plugin: &str, services: Vec<ServiceOffering>) -> PluginCatalog {
        PluginCatalog {
            plugin: plugin.to_owned(),
            info: info(plugin),
            catalog: catalog(services),
        }
    }

    #[test]
    fn clashes_name_both_plugins() {
        let mysql = contribution(
            "mysql",
            vec![offering("s1", "mysql", vec![plan("p1", "small")])],
        );
        let cases = [
            (
                offering("s1", "other", vec![plan("p9", "small")]),
                "offering id \"s1\"",
            ),
            (
                offering("s2", "mysql", vec![plan("p9", "small")]),
                "offering name \"mysql\"",
            ),
            (
                offering("s2", "other", vec![plan("p1", "small")]),
                "plan id \"p1\"",
            ),
            (
                offering("s2", "other", vec![plan("s1", "small")]),
                "plan id \"s1\"",
            ),
            (
                offering("p1", "other", vec![plan("p9", "small")]),
                "plan id \"p1\"",
            ),
        ];
        for (candidate, what) in cases {
            let clash =
                find_clash([&mysql], &contribution("copy", vec![candidate])).expect("clash found");
            assert_eq!(
                clash.to_string(),
                format!("plugin copy declares {what}, which plugin mysql already serves")
            );
        }
        let postgres = contribution(
            "postgres",
            vec![offering("s2", "postgres", vec![plan("p2", "small")])],
        );
        assert_eq!(find_clash([&mysql], &postgres), None);
    }

    #[test]
    fn snapshot_serves_lookups_and_stable_etag() {
        let mysql = contribution(
            "mysql",
            vec![offering(
                "s1",
                "mysql",
                vec![plan("p1", "small"), plan("p2", "big")],
            )],
        );
        let postgres = contribution(
            "postgres",
            vec![offering("s2", "postgres", vec![plan("p3", "small")])],
        );
        let snapshot = CatalogSnapshot::build(&[mysql.clone(), postgres]);

        assert_eq!(
            snapshot.service("s2").map(|s| s.name.as_str()),
            Some("postgres")
        );
        assert_eq!(
            snapshot.plan("s1", "p2").map(|p| p.name.as_str()),
            Some("big")
        );
        assert_eq!(
            snapshot.plan("s2", "p1"),
            None,
            "a plan of another offering"
        );
        assert_eq!(
            snapshot.plugin_of("s2").map(|(name, _)| name),
            Some("postgres")
        );
        assert_eq!(snapshot.plugin_of("nope"), None);

        let body: Value = serde_json::from_slice(&snapshot.json).expect("json");
        assert_eq!(body["services"][0]["plans"][1]["id"], "p2");
        let digest = hex::encode(Sha256::digest(&snapshot.json));
        assert_eq!(snapshot.etag, format!("\"{digest}\""));
        assert_eq!(
            CatalogSnapshot::build(std::slice::from_ref(&mysql)).etag,
            CatalogSnapshot::build(&[mysql]).etag
        );
        assert_ne!(CatalogSnapshot::default().etag, snapshot.etag);
        assert_eq!(&CatalogSnapshot::default().json[..], br#"{"services":[]}"#);
    }
}
