//! Plugin dispatch alone: one call through `PluginRuntime` (a fresh store
//! and instance from the plugin's pre-linked component, the call, the
//! answer converted back) against a native Rust function doing what the
//! plugin does. No HTTP, no state writes.
//!
//! `cargo bench -p wasm-broker --bench dispatch` (after
//! `cd tests/fixtures && cargo build --release`, which builds the plugins
//! it calls). The whole-system figures are in bench/ (`cargo run --release
//! -p wasm-broker-bench`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use wasm_broker::config::{Config, StateConfig};
use wasm_broker::model::{
    Instance, InstanceDetails, OperationKind, OperationState, OperationStatus,
};
use wasm_broker::runtime::PluginRuntime;
use wasm_broker::state::StateStore;

/// tests/fixtures/bench_noop's offering when its config sets no ids.
const NOOP_SERVICE_ID: &str = "14365273-3119-43d7-871c-24a0cf2ec3b0";
const NOOP_PLAN_ID: &str = "6415f556-95b7-4673-b0a8-a7d09dd18c4c";
/// tests/fixtures/echo.
const ECHO_SERVICE_ID: &str = "d4a7f4e4-3344-44c5-a9e0-e71290823c71";
const ECHO_PLAN_ID: &str = "d887ddca-3b57-43fb-ba6b-a2ca0416f942";

fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cd tests/fixtures && cargo build --release`",
        path.display()
    );
    path
}

fn instance(service_id: &str, plan_id: &str) -> Instance {
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
fn native_last_operation(_: &Instance, _: OperationKind, _: Option<&str>) -> OperationStatus {
    OperationStatus {
        state: OperationState::Succeeded,
        description: None,
        instance_usable: None,
        update_repeatable: None,
    }
}

/// What echo's `get_instance` does: the instance record as metadata.
fn native_echo_get_instance(instance: &Instance) -> InstanceDetails {
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

fn dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    std::fs::copy(fixture("bench_noop"), plugin_dir.join("noop.wasm")).expect("copy bench_noop");
    std::fs::copy(fixture("echo"), plugin_dir.join("echo.wasm")).expect("copy echo");
    let mut config = Config::default();
    config.runtime.plugin_dir = plugin_dir;
    config.runtime.cache_dir = dir.path().join("compiled");
    config.state = StateConfig {
        path: dir.path().join("state.db"),
        ..StateConfig::default()
    };
    let plugins: Arc<PluginRuntime> = runtime.block_on(async {
        let store = StateStore::open(&config.state).await.expect("state store");
        PluginRuntime::start(&config, store)
            .await
            .expect("plugin runtime")
    });
    assert_eq!(
        plugins.catalog().catalog.services.len(),
        2,
        "noop and echo must both load"
    );

    let mut group = c.benchmark_group("dispatch");
    let noop = instance(NOOP_SERVICE_ID, NOOP_PLAN_ID);
    group.bench_function("noop_last_operation/wasm", |b| {
        b.to_async(&runtime).iter(|| async {
            plugins
                .last_operation(black_box(&noop), OperationKind::Provision, None)
                .await
                .expect("answered")
        })
    });
    group.bench_function("noop_last_operation/native", |b| {
        b.iter(|| native_last_operation(black_box(&noop), OperationKind::Provision, None))
    });
    let echo = instance(ECHO_SERVICE_ID, ECHO_PLAN_ID);
    group.bench_function("echo_get_instance/wasm", |b| {
        b.to_async(&runtime).iter(|| async {
            plugins
                .get_instance(black_box(&echo))
                .await
                .expect("answered")
        })
    });
    group.bench_function("echo_get_instance/native", |b| {
        b.iter(|| native_echo_get_instance(black_box(&echo)))
    });
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
