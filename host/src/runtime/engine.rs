//! The wasmtime engine every plugin runs on: its configuration (component
//! model, epoch interruption, the pooling allocator sized from broker.toml),
//! the linker with WASI and every capability, and the epoch ticker that
//! drives call deadlines. A call's life is in `call`, the compiled-code
//! cache in `compile_cache`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::Linker;
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use super::call_metrics::CallMetrics;
use super::call_quota::CallQuotas;
use super::{CallState, RuntimeError};
use crate::capabilities::{self, SharedBackends};
use crate::config::{Compiler, Config};

/// How often the epoch advances. Deadlines are checked, and long-running
/// guests yield to other tasks, at this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// broker.toml gives memory limits in MiB.
pub(super) const MIB: u64 = 1 << 20;

/// Memory a pooling slot keeps resident between calls, per linear memory
/// and per table: the pages a typical call writes (its stack, data and a
/// small heap), so the next call on the slot does not fault them in again.
/// It bounds the RSS a warm slot holds at its instance's high-water mark
/// within this limit.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// A 32-bit linear memory cannot be larger; a bigger configured limit means
/// "no limit but the architecture's".
const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// The engine, the linker with every host capability, and the compile cache.
/// The fields a call needs are visible to `call`, which runs the calls.
pub struct PluginEngine {
    pub(super) engine: Engine,
    pub(super) settings: EngineSettings,
    linker: Linker<CallState>,
    cache_dir: PathBuf,
    pub(super) backends: SharedBackends,
    /// One permit per pooling-allocator slot: a burst of calls beyond the
    /// pool waits for a slot instead of failing to instantiate.
    pub(super) slots: Arc<Semaphore>,
    /// Each plugin's concurrent calls, and the guest memory budget, taken
    /// before a slot.
    pub(super) quotas: CallQuotas,
    pub(super) metrics: CallMetrics,
}

/// The largest linear memory any plugin may have: the pool's slots must fit it.
pub(super) fn largest_memory_limit(config: &Config) -> u64 {
    let overrides = config
        .plugins
        .values()
        .filter_map(|plugin| plugin.limits.memory_limit_mb);
    let largest_mb = overrides.fold(config.runtime.memory_limit_mb, u64::max);
    largest_mb.saturating_mul(MIB).clamp(MIB, MAX_MEMORY_BYTES)
}

/// What the engine is built from. A compile worker (`compiler.rs`) builds
/// its engine from the same settings, so the code it writes has the
/// compatibility hash this engine's cache names and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    pub compiler: Compiler,
    /// The largest linear memory a plugin may have, in bytes.
    pub largest_memory: u64,
    pub max_instances: u32,
    /// What a compile worker may allocate, in MiB (`[runtime]
    /// compile_memory_mb`). Not part of the engine: code compiled under
    /// any cap is the same. Here because a worker is given these settings.
    pub compile_memory_mb: u64,
}

impl EngineSettings {
    pub fn of(config: &Config) -> Self {
        Self {
            compiler: config.runtime.compiler,
            largest_memory: largest_memory_limit(config),
            max_instances: config.runtime.max_concurrent_instances.max(1),
            compile_memory_mb: config.runtime.compile_memory_mb,
        }
    }
}

/// An engine of `settings` for compiling only (a compile worker's). It has
/// no instance pool: it instantiates nothing, and the pool's tables and
/// stacks are writable mappings (some 670 MiB at 256 slots) that would
/// count against the worker's memory cap. The pool is no part of the code's
/// compatibility (wasmtime checks the target, flags, tunables and
/// features), so the broker's pooled engine loads what this one writes.
pub fn compiling_engine(settings: &EngineSettings) -> Result<Engine, String> {
    Engine::new(&code_config(settings)).map_err(|error| format!("{error:#}"))
}

/// What the compiled code depends on: the compiler, and the checks it
/// compiles in.
fn code_config(settings: &EngineSettings) -> wasmtime::Config {
    let mut wasm = wasmtime::Config::new();
    wasm.wasm_component_model(true)
        // A plugin that loops without calling the host must still be stopped:
        // epoch checks cost far less than fuel and need no per-call tuning.
        .epoch_interruption(true)
        // Each memory slot reserves only what the largest plugin limit
        // allows (64 MiB by default) instead of wasmtime's 4 GiB, so the pool
        // stays at a few GiB of address space even with hundreds of slots.
        // The price is explicit bounds checks, negligible for plugins that
        // mostly wait on the network. The default guard region stays: it lets
        // the compiler fold constant offsets into one check.
        .memory_reservation(settings.largest_memory);
    wasm.strategy(match settings.compiler {
        Compiler::Cranelift => Strategy::Cranelift,
        Compiler::Winch => Strategy::Winch,
    });
    wasm
}

/// The serving engine's: the code's, with the instance pool.
fn engine_config(settings: &EngineSettings) -> wasmtime::Config {
    let EngineSettings {
        largest_memory,
        max_instances,
        ..
    } = *settings;
    let mut wasm = code_config(settings);
    let mut pool = PoolingAllocationConfig::new();
    // A fresh instance per call is only cheap when its memory, tables and
    // stack come from a pool instead of mmap/munmap each time (about half
    // the instantiation cost).
    pool
        // Every call holds one component instance: this is the number of
        // calls running at once, across all plugins.
        .total_component_instances(max_instances)
        // A Rust wasip2 component instantiates a handful of core modules
        // (the program, the WASI adapter, shims); a composed one more.
        // Core instances reserve no address space, so be generous.
        .max_core_instances_per_component(32)
        .total_core_instances(max_instances.saturating_mul(8))
        // Memories are what costs address space (one reservation each).
        // One per component is typical; twice that leaves room for a
        // component that composes a second module with its own memory.
        .max_memories_per_component(4)
        .total_memories(max_instances.saturating_mul(2))
        // Tables cost 8 bytes per element of address space; Rust components
        // have a main table plus small shim tables.
        .max_tables_per_component(8)
        .total_tables(max_instances.saturating_mul(4))
        // Async calls run on fiber stacks, one per instance in flight.
        .total_stacks(max_instances)
        // The store limiter enforces each plugin's own limit; the slot only
        // has to fit the largest of them.
        .max_memory_size(usize::try_from(largest_memory).unwrap_or(usize::MAX));
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        // By default a freed slot's memory is handed back to the kernel
        // (madvise), so the next call on it page-faults every page it touches
        // afresh: that was half the cost of a no-op call. With PAGEMAP_SCAN
        // (Linux 6.7+) wasmtime finds the pages the guest wrote and resets
        // just those in place, up to this many bytes; a call that wrote more
        // has the rest handed back as before. Without it, keeping memory
        // resident would mean zeroing this many bytes after every call.
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES);
    }
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    wasm
}

impl PluginEngine {
    /// Starts the epoch ticker thread, which stops when the engine is dropped.
    pub fn new(config: &Config, backends: SharedBackends) -> Result<Self, RuntimeError> {
        let settings = EngineSettings::of(config);
        let engine = Engine::new(&engine_config(&settings))
            .map_err(|error| RuntimeError::Engine(format!("{error:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| capabilities::add_all_to_linker(&mut linker))
            .map_err(|error| {
                RuntimeError::Engine(format!("cannot link host capabilities: {error:#}"))
            })?;
        spawn_epoch_ticker(&engine).map_err(|error| {
            RuntimeError::Engine(format!("cannot start the epoch ticker: {error}"))
        })?;
        let slots = usize::try_from(settings.max_instances).unwrap_or(usize::MAX);
        Ok(Self {
            engine,
            settings,
            linker,
            cache_dir: config.runtime.cache_dir.clone(),
            backends,
            slots: Arc::new(Semaphore::new(slots)),
            quotas: CallQuotas::new(config.runtime.max_total_memory_mb),
            metrics: CallMetrics::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<CallState> {
        &self.linker
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }
}

/// The epoch advances on its own OS thread, not a tokio task: plugins run
/// on the tokio workers, and when every worker is busy in a looping plugin a
/// ticker task would never be polled, so no deadline would ever fire (seen
/// with two looping calls on a two-core machine).
fn spawn_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    // A weak reference, so the ticker never keeps a dropped engine alive.
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_slots_fit_the_largest_plugin_limit() {
        let config: Config =
            toml::from_str("[runtime]\nmemory_limit_mb = 64\n[plugins.big]\nmemory_limit_mb = 256")
                .expect("parses");
        assert_eq!(largest_memory_limit(&config), 256 * MIB);
        let config: Config = toml::from_str("[runtime]\nmemory_limit_mb = 100000").expect("parses");
        assert_eq!(largest_memory_limit(&config), MAX_MEMORY_BYTES);
    }

    #[test]
    fn the_serving_engine_loads_what_a_compile_worker_engine_wrote() {
        let config: Config = toml::from_str("").expect("parses");
        let settings = EngineSettings::of(&config);
        let worker = compiling_engine(&settings).expect("the worker's engine");
        // A component with nothing in it: valid, and quick to compile.
        let code = worker
            .precompile_component(b"\0asm\x0d\x00\x01\x00")
            .expect("compiles");
        let serving = Engine::new(&engine_config(&settings)).expect("the pool");
        // SAFETY: `code` was just compiled above by an engine of these
        // settings; the test is that wasmtime's compatibility check accepts
        // it without the pool.
        let loaded = unsafe { wasmtime::component::Component::deserialize(&serving, &code) };
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }

    #[test]
    fn the_default_pool_fits_in_the_address_space() {
        let config: Config = toml::from_str("").expect("parses");
        Engine::new(&engine_config(&EngineSettings::of(&config)))
            .expect("the pool reserves its slots");
    }
}
