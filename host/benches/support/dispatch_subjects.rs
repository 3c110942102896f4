//! What both dispatch measurements call: the fixture plugins' offerings, the
//! instance they are called with, and native Rust doing what each plugin
//! does. Shared by `host/benches/dispatch.rs` (criterion) and
//! `bench/src/dispatch.rs` (percentiles for the bench table), so the two
//! always compare the same work.

use serde_json::{Value, json};
use wasm_broker::model::{
    Instance, InstanceDetails, OperationKind, OperationState, OperationStatus,
};

/// tests/fixtures/bench_noop's offering when its config sets no ids.
pub const NOOP_SERVICE_ID: &str = "14365273-3119-43d7-871c-24a0cf2ec3b0";
pub const NOOP_PLAN_ID: &str = "6415f556-95b7-4673-b0a8-a7d09dd18c4c";
/// tests/fixtures/echo.
pub const ECHO_SERVICE_ID: &str = "d4a7f4e4-3344-44c5-a9e0-e71290823c71";
pub const ECHO_PLAN_ID: &str = "d887ddca-3b57-43fb-ba6b-a2ca0416f942";

pub fn instance(service_id: &str, plan_id: &str) -> Instance {
    Instance {
        id: "dispatch-bench".to_owned(),
        service_id: service_id.to_owned(),
        plan_id: plan_id.to_owned(),
        parameters: Some(json!({"size": "small"})),
        context: Some(json!({"platform": "cloudfoundry"})),
        organization_guid: Some("org-guid-bench".to_owned()),
        space_guid: Some("space-guid-bench".to_owned()),
        maintenance_version: None,
        plugin_version: "1.0.0".to_owned(),
    }
}

/// What bench_noop's `last_operation` does.
pub fn native_last_operation(_: &Instance, _: OperationKind, _: Option<&str>) -> OperationStatus {
    OperationStatus {
        state: OperationState::Succeeded,
        description: None,
        instance_usable: None,
        update_repeatable: None,
    }
}

/// What echo's `get_instance` does: the instance record as metadata.
pub fn native_echo_get_instance(instance: &Instance) -> InstanceDetails {
    let record = json!({
        "id": instance.id,
        "service_id": instance.service_id,
        "plan_id": instance.plan_id,
        "parameters": instance.parameters,
        "context": instance.context,
        "organization_guid": instance.organization_guid,
        "space_guid": instance.space_guid,
        "maintenance_version": instance.maintenance_version,
        "plugin_version": instance.plugin_version,
    });
    let attributes: Value = json!({"served_by": "1.0.0", "instance": record});
    InstanceDetails {
        dashboard_url: None,
        parameters: instance.parameters.clone(),
        metadata: Some(json!({"attributes": attributes})),
    }
}
