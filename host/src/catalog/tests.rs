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

#[test]
fn retired_offerings_describe_instances_but_are_not_served() {
    let serving = contribution(
        "mysql",
        vec![offering("s1", "mysql", vec![plan("p1", "small")])],
    );
    let plain = CatalogSnapshot::build(std::slice::from_ref(&serving));
    let gone = offering("s2", "redis", vec![plan("p2", "small")]);
    let snapshot = CatalogSnapshot::build(&[serving]).with_retired([&gone]);
    assert_eq!(snapshot.etag, plain.etag, "the served catalog is unchanged");
    assert!(snapshot.service("s2").is_none(), "not offered");
    assert_eq!(
        snapshot.retired_service("s2").map(|o| o.name.as_str()),
        Some("redis")
    );
    assert!(snapshot.service_of_instance("s2").is_some());
    assert!(snapshot.service_of_instance("s1").is_some());
    assert_eq!(
        snapshot
            .plan_of_instance("s2", "p2")
            .map(|p| p.name.as_str()),
        Some("small")
    );
    assert!(snapshot.plan_of_instance("s2", "p1").is_none());
    assert!(snapshot.retired_service("s1").is_none());
}
