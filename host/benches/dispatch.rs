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
use wasm_broker::config::{Config, StateConfig};
use wasm_broker::model::OperationKind;
use wasm_broker::runtime::PluginRuntime;
use wasm_broker::state::StateStore;

#[path = "support/dispatch_subjects.rs"]
mod dispatch_subjects;
use dispatch_subjects::{
    ECHO_PLAN_ID, ECHO_SERVICE_ID, NOOP_PLAN_ID, NOOP_SERVICE_ID, instance,
    native_echo_get_instance, native_last_operation,
};

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
