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
use wasm_broker::config::{Config, StateConfig};
use wasm_broker::model::OperationKind;
use wasm_broker::runtime::PluginRuntime;
use wasm_broker::state::StateStore;

#[path = "../../host/benches/support/dispatch_subjects.rs"]
mod dispatch_subjects;
use dispatch_subjects::{
    ECHO_PLAN_ID, ECHO_SERVICE_ID, NOOP_PLAN_ID, NOOP_SERVICE_ID, instance,
    native_echo_get_instance, native_last_operation,
};

use crate::load::{Measurement, nanos};
use crate::prepare::Artifacts;

const WARMUP_CALLS: usize = 500;

pub struct Dispatch {
    /// `last_operation` of the no-op plugin: nothing but the crossing.
    pub noop_wasm: Measurement,
    pub noop_native: Measurement,
    /// `get_instance` of the echo plugin: the instance as JSON.
    pub echo_wasm: Measurement,
    pub echo_native: Measurement,
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
