//! Plugin dispatch alone, in this process: one call through
//! [`PluginRuntime`] (a fresh store and instance from the plugin's
//! pre-linked component, the call, the answer converted back) against a
//! native Rust function doing what the plugin does. No HTTP, no state.
//!
//! `cargo bench -p wasm-broker --bench dispatch` measures the same calls
//! with criterion; this module times single calls to report percentiles.

use std::convert::Infallible;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use wasm_broker::config::{Config, StateConfig};
use wasm_broker::model::{
    Instance, InstanceDetails, OperationKind, OperationState, OperationStatus,
};
use wasm_broker::runtime::PluginRuntime;
use wasm_broker::state::StateStore;

use crate::load::{Measurement, nanos};
use crate::prepare::Artifacts;

/// The no-op plugin's offering when its config sets no ids.
const NOOP_SERVICE_ID: &str = "14365273-3119-43d7-871c-24a0cf2ec3b0";
const NOOP_PLAN_ID: &str = "6415f556-95b7-4673-b0a8-a7d09dd18c4c";
/// tests/fixtures/echo.
const ECHO_SERVICE_ID: &str = "d4a7f4e4-3344-44c5-a9e0-e71290823c71";
const ECHO_PLAN_ID: &str = "d887ddca-3b57-43fb-ba6b-a2ca0416f942";

const WARMUP_CALLS: usize = 500;

pub struct Dispatch {
    /// `last_operation` of the no-op plugin: nothing but the crossing.
    pub noop_wasm: Measurement,
    pub noop_native: Measurement,
    /// `get_instance` of the echo plugin: the instance as JSON.
    pub echo_wasm: Measurement,
    pub echo_native: Measurement,
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

pub async fn measure(
    artifacts: &Artifacts,
    dir: &Path,
    duration: Duration,
) -> anyhow::Result<Dispatch> {
    let plugin_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugin_dir)?;
    std::fs::copy(&artifacts.noop, plugin_dir.join("noop.wasm"))?;
    std::fs::copy(&artifacts.echo, plugin_dir.join("echo.wasm"))?;
    let mut config = Config::default();
    config.runtime.plugin_dir = plugin_dir;
    config.runtime.cache_dir = dir.join("compiled");
    config.state = StateConfig {
        path: dir.join("state.db"),
        ..StateConfig::default()
    };
    let store = StateStore::open(&config.state)
        .await
        .context("opening the dispatch bench's state store")?;
    let runtime = PluginRuntime::start(&config, store)
        .await
        .context("starting the plugin runtime")?;
    let services = runtime.catalog().catalog.services.len();
    ensure!(
        services == 2,
        "the runtime loaded {services} offerings instead of noop's and echo's"
    );

    let noop = instance(NOOP_SERVICE_ID, NOOP_PLAN_ID);
    let noop_wasm = time_calls(duration, || async {
        runtime
            .last_operation(&noop, OperationKind::Provision, None)
            .await
            .map(|_| ())
    })
    .await?;
    let noop_native = time_calls(duration, || async {
        black_box(native_last_operation(
            black_box(&noop),
            OperationKind::Provision,
            None,
        ));
        Ok::<(), Infallible>(())
    })
    .await?;
    let echo = instance(ECHO_SERVICE_ID, ECHO_PLAN_ID);
    let echo_wasm = time_calls(duration, || async {
        runtime.get_instance(&echo).await.map(|_| ())
    })
    .await?;
    let echo_native = time_calls(duration, || async {
        black_box(native_echo_get_instance(black_box(&echo)));
        Ok::<(), Infallible>(())
    })
    .await?;
    Ok(Dispatch {
        noop_wasm,
        noop_native,
        echo_wasm,
        echo_native,
    })
}

/// Calls `call` one at a time for `duration` after a warm-up, timing each.
async fn time_calls<F, Fut, E>(duration: Duration, call: F) -> anyhow::Result<Measurement>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    for _ in 0..WARMUP_CALLS {
        call().await?;
    }
    let mut latencies_ns = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let call_started = Instant::now();
        call().await?;
        latencies_ns.push(nanos(call_started.elapsed()));
    }
    Ok(Measurement::from_latencies(
        latencies_ns,
        started.elapsed().as_secs_f64(),
    ))
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
