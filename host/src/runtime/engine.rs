//! The wasmtime engine and the life of one plugin call: a fresh store with
//! its limits, instantiation from the plugin's pre-linked `InstancePre`, the
//! call, and the translation of every way it can go wrong into a cause an
//! operator understands. The store is dropped after every call.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use metrics::{Gauge, Histogram};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, ComponentNamedList, Lift, Linker, Lower};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::guest_output::{GuestOutput, Stream};
use super::{CallError, CallState, RuntimeError};
use crate::capabilities::{self, CallContext, CallHosts, PluginGrants, SharedBackends};
use crate::config::{CallLimits, Config};
use crate::contract::ServicePlugin;

/// How often the epoch advances. Deadlines are checked, and long-running
/// guests yield to other tasks, at this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The wall-clock safety net fires this long after the CPU deadline, so a
/// guest that computes too long is reported as such by the epoch check, and
/// the net only catches a call stuck waiting on a host call.
const WAIT_GRACE: Duration = Duration::from_millis(100);

const MIB: u64 = 1 << 20;

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
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<CallState>,
    cache_dir: PathBuf,
    backends: SharedBackends,
    /// One permit per pooling-allocator slot: a burst of calls beyond the
    /// pool waits for a slot instead of failing to instantiate.
    slots: Arc<Semaphore>,
    metrics: CallMetrics,
}

/// The largest linear memory any plugin may have: the pool's slots must fit it.
fn largest_memory_limit(config: &Config) -> u64 {
    let overrides = config
        .plugins
        .values()
        .filter_map(|plugin| plugin.limits.memory_limit_mb);
    let largest_mb = overrides.fold(config.runtime.memory_limit_mb, u64::max);
    largest_mb.saturating_mul(MIB).clamp(MIB, MAX_MEMORY_BYTES)
}

fn engine_config(config: &Config) -> wasmtime::Config {
    let max_instances = config.runtime.max_concurrent_instances.max(1);
    let largest_memory = largest_memory_limit(config);
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
        .memory_reservation(largest_memory);

    let mut pool = PoolingAllocationConfig::new();
    // A fresh instance per call is only cheap when its memory, tables and
    // stack come from a pool instead of mmap/munmap each time (about half
    // the instantiation cost, see DESIGN.md).
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
        let engine = Engine::new(&engine_config(config))
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
        let slots =
            usize::try_from(config.runtime.max_concurrent_instances.max(1)).unwrap_or(usize::MAX);
        Ok(Self {
            engine,
            linker,
            cache_dir: config.runtime.cache_dir.clone(),
            backends,
            slots: Arc::new(Semaphore::new(slots)),
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

    /// Runs `call` on a fresh instance of `plugin` with its limits, and
    /// drops the instance afterwards whatever happened. The generated
    /// bindings check the signature of every export at each instantiation:
    /// right for loading a plugin, wasteful for calling one
    /// ([`Self::call_export`]).
    pub async fn call<R, F, Fut>(
        &self,
        plugin: &CallTarget<'_>,
        operation: &'static str,
        request_identity: Option<&str>,
        call: F,
    ) -> Result<R, CallError>
    where
        F: FnOnce(ServicePlugin, Store<CallState>) -> Fut,
        Fut: Future<Output = wasmtime::Result<R>>,
    {
        self.run(
            plugin,
            operation,
            request_identity,
            |mut store| async move {
                let guest = plugin.pre.instantiate_async(&mut store).await?;
                call(guest, store).await
            },
        )
        .await
    }

    /// Calls the `broker` export `export` with `params` on a fresh instance
    /// of a loaded plugin, checking the signature of that one function only
    /// (checking all of them was a third of the cost of a no-op call).
    pub async fn call_export<Params, Answer>(
        &self,
        plugin: &CallTarget<'_>,
        export: Export,
        request_identity: Option<&str>,
        params: Params,
    ) -> Result<Answer, CallError>
    where
        Params: ComponentNamedList + Lower + Send + Sync,
        Answer: Lift + Send + Sync + 'static,
    {
        let instance_pre = plugin.pre.instance_pre();
        self.run(
            plugin,
            export.label(),
            request_identity,
            |mut store| async move {
                let component = instance_pre.component();
                let function = component
                    .get_export_index(None, BROKER_INTERFACE)
                    .and_then(|interface| {
                        component.get_export_index(Some(&interface), export.wit_name())
                    })
                    .ok_or_else(|| {
                        wasmtime::format_err!(
                            "exports no {BROKER_INTERFACE} function {}",
                            export.wit_name()
                        )
                    })?;
                let instance = instance_pre.instantiate_async(&mut store).await?;
                let typed = instance.get_typed_func::<Params, (Answer,)>(&mut store, &function)?;
                let (answer,) = typed.call_async(&mut store, params).await?;
                Ok(answer)
            },
        )
        .await
    }

    /// Builds the call's store with `plugin`'s limits, runs `run` on it
    /// and translates whatever went wrong into a fault.
    async fn run<R, F, Fut>(
        &self,
        plugin: &CallTarget<'_>,
        operation: &'static str,
        request_identity: Option<&str>,
        run: F,
    ) -> Result<R, CallError>
    where
        F: FnOnce(Store<CallState>) -> Fut,
        Fut: Future<Output = wasmtime::Result<R>>,
    {
        let limits = plugin.limits;
        let deadline = Duration::from_millis(limits.call_timeout_ms);
        let started = Instant::now();
        let metrics = self.metrics.of(plugin.name, operation);
        let _in_progress = CallInProgress::start(metrics.in_progress);
        let fault = |kind: &'static str, cause: String| {
            tracing::warn!(plugin = plugin.name, operation, %cause, "plugin call failed");
            metrics::counter!(
                "plugin_faults_total",
                "plugin" => plugin.name.to_owned(),
                "operation" => operation,
                "kind" => kind
            )
            .increment(1);
            CallError::Fault {
                plugin: plugin.name.to_owned(),
                cause,
            }
        };

        let _slot = match tokio::time::timeout(deadline, self.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => {
                return Err(fault(
                    "shutdown",
                    "the plugin runtime is shutting down".to_owned(),
                ));
            }
            Err(_elapsed) => {
                return Err(fault(
                    "no_slot",
                    format!(
                        "found no free instance slot within {} ms; raise [runtime] max_concurrent_instances",
                        limits.call_timeout_ms
                    ),
                ));
            }
        };

        let name: Arc<str> = Arc::from(plugin.name);
        let stdout = GuestOutput::new(name.clone(), Stream::Stdout);
        let stderr = GuestOutput::new(name, Stream::Stderr);
        let memory_exhausted = Arc::new(AtomicBool::new(false));
        let memory_limit =
            usize::try_from(limits.memory_limit_mb.saturating_mul(MIB)).unwrap_or(usize::MAX);
        let state = CallState::new(
            sandbox_wasi(stdout.clone(), stderr.clone()),
            CallLimiter::new(memory_limit, memory_exhausted.clone()),
            CallHosts::for_call(&CallContext {
                grants: plugin.grants,
                backends: &self.backends,
                request_identity,
            }),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Every tick past the first the guest yields to other tasks, so a
        // busy plugin cannot starve the executor; past the deadline it is
        // interrupted with a trap.
        let cpu_deadline = Instant::now() + deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= cpu_deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });

        let outcome = tokio::time::timeout(deadline + WAIT_GRACE, run(store)).await;
        stdout.finish();
        let panic = stderr.finish();
        metrics.duration.record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                let (kind, cause) = failure_cause(
                    &error,
                    &limits,
                    memory_exhausted.load(Ordering::Relaxed),
                    panic,
                );
                Err(fault(kind, cause))
            }
            Err(_elapsed) => Err(fault(
                "deadline",
                format!(
                    "did not finish within its deadline of {} ms (it was waiting on a host call)",
                    limits.call_timeout_ms
                ),
            )),
        }
    }
}

/// Counts a call in `plugin_calls_in_progress{plugin, operation}` (waiting
/// for a slot included) for as long as it lives, however the call ends.
struct CallInProgress(Gauge);

impl CallInProgress {
    fn start(gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

/// The metric handles of each plugin and operation, resolved on the first
/// call: building a metric key for every call (label strings, hashing, the
/// recorder's registry lookup) is an allocation-heavy detour on a path
/// that is otherwise a few microseconds of wasmtime.
#[derive(Default)]
struct CallMetrics {
    by_plugin: RwLock<HashMap<Box<str>, Vec<OperationMetrics>>>,
}

#[derive(Clone)]
struct OperationMetrics {
    operation: &'static str,
    duration: Histogram,
    in_progress: Gauge,
}

impl CallMetrics {
    fn of(&self, plugin: &str, operation: &'static str) -> OperationMetrics {
        let find = |by_plugin: &HashMap<Box<str>, Vec<OperationMetrics>>| {
            by_plugin
                .get(plugin)?
                .iter()
                .find(|known| known.operation == operation)
                .cloned()
        };
        // The locks guard only this cache: nothing can leave it half-written,
        // so a poisoned lock is still usable.
        if let Some(known) = find(
            &self
                .by_plugin
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        ) {
            return known;
        }
        let mut by_plugin = self
            .by_plugin
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = find(&by_plugin) {
            return known;
        }
        let resolved = OperationMetrics {
            operation,
            duration: metrics::histogram!(
                "plugin_call_duration_seconds",
                "plugin" => plugin.to_owned(),
                "operation" => operation
            ),
            in_progress: metrics::gauge!(
                "plugin_calls_in_progress",
                "plugin" => plugin.to_owned(),
                "operation" => operation
            ),
        };
        by_plugin
            .entry(plugin.into())
            .or_default()
            .push(resolved.clone());
        resolved
    }
}

impl Drop for CallInProgress {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The interface a plugin exports, as the generated bindings look it up.
const BROKER_INTERFACE: &str = "wasm-broker:plugin/broker@0.1.0";

/// The functions of the `broker` interface the runtime calls once a plugin
/// is loaded (`describe` and `catalog` are called while loading it).
#[derive(Debug, Clone, Copy)]
pub enum Export {
    Provision,
    Update,
    Deprovision,
    Bind,
    Unbind,
    LastOperation,
    LastBindingOperation,
    GetInstance,
    GetBinding,
}

impl Export {
    /// As the WIT contract names it.
    fn wit_name(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Update => "update",
            Self::Deprovision => "deprovision",
            Self::Bind => "bind",
            Self::Unbind => "unbind",
            Self::LastOperation => "last-operation",
            Self::LastBindingOperation => "last-binding-operation",
            Self::GetInstance => "get-instance",
            Self::GetBinding => "get-binding",
        }
    }

    /// As metrics and logs name it.
    fn label(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Update => "update",
            Self::Deprovision => "deprovision",
            Self::Bind => "bind",
            Self::Unbind => "unbind",
            Self::LastOperation => "last_operation",
            Self::LastBindingOperation => "last_binding_operation",
            Self::GetInstance => "get_instance",
            Self::GetBinding => "get_binding",
        }
    }
}

/// What a plugin call needs to know about the plugin.
pub struct CallTarget<'a> {
    pub name: &'a str,
    pub pre: &'a crate::contract::ServicePluginPre<CallState>,
    pub grants: &'a PluginGrants,
    pub limits: CallLimits,
}

/// Why a call failed: a metrics label, and the words the platform and the
/// operator see.
fn failure_cause(
    error: &wasmtime::Error,
    limits: &CallLimits,
    memory_exhausted: bool,
    panic: Option<String>,
) -> (&'static str, String) {
    if memory_exhausted {
        return (
            "out_of_memory",
            format!("ran out of memory (limit {} MiB)", limits.memory_limit_mb),
        );
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => (
            "deadline",
            format!("exceeded its CPU deadline of {} ms", limits.call_timeout_ms),
        ),
        Some(trap) => match panic {
            Some(panic) => ("panic", panic),
            None => {
                let text = trap.to_string();
                (
                    "trap",
                    format!(
                        "trapped: {}",
                        text.strip_prefix("wasm trap: ").unwrap_or(&text)
                    ),
                )
            }
        },
        None => ("error", format!("failed: {error:#}")),
    }
}

/// WASI with nothing in it: no files, no environment, no arguments, no
/// network, stdin closed. Output goes to the host log.
fn sandbox_wasi(stdout: GuestOutput, stderr: GuestOutput) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(stdout)
        .stderr(stderr)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
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

/// [`StoreLimits`] that also remembers whether it refused memory, so an
/// allocation failure (which a Rust guest turns into an abort trap) is
/// reported as what it is.
pub struct CallLimiter {
    limits: StoreLimits,
    memory_limit: usize,
    memory_exhausted: Arc<AtomicBool>,
}

impl CallLimiter {
    fn new(memory_limit: usize, memory_exhausted: Arc<AtomicBool>) -> Self {
        Self {
            limits: StoreLimitsBuilder::new().memory_size(memory_limit).build(),
            memory_limit,
            memory_exhausted,
        }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed && desired > self.memory_limit {
            self.memory_exhausted.store(true, Ordering::Relaxed);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Compiles `wasm`, or loads the code compiled for it earlier by this same
/// engine configuration. `digest` is the sha256 of `wasm` in hex. Blocking:
/// compiling takes tens of milliseconds to seconds.
pub fn compile_cached(
    engine: &Engine,
    cache_dir: &Path,
    wasm: &[u8],
    digest: &str,
) -> Result<Component, String> {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let artifact = cache_dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
    if artifact.is_file() {
        // SAFETY: the broker wrote this file itself (below) from
        // `precompile_component` of an engine with the same compatibility
        // hash; the cache directory belongs to the broker like its binary.
        // wasmtime still checks the header and refuses a mismatch.
        match unsafe { Component::deserialize_file(engine, &artifact) } {
            Ok(component) => return Ok(component),
            Err(error) => {
                tracing::warn!(artifact = %artifact.display(), error = %format!("{error:#}"), "cannot use cached plugin code; recompiling")
            }
        }
    }
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|error| format!("is not a valid component: {error:#}"))?;
    if let Err(error) = write_atomically(cache_dir, &artifact, &compiled) {
        tracing::warn!(cache_dir = %cache_dir.display(), %error, "cannot cache compiled plugin code; the next start compiles again");
    }
    // SAFETY: `compiled` was produced by `precompile_component` of this very
    // engine a moment ago.
    unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|error| format!("cannot load its compiled code: {error:#}"))
}

/// A reader never sees a half-written artifact: the bytes go to a temporary
/// file that is renamed into place.
fn write_atomically(directory: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        // Best effort: a stray temporary file is only wasted disk space.
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CallLimits {
        CallLimits {
            memory_limit_mb: 64,
            call_timeout_ms: 10_000,
            max_host_call_bytes: 1024,
        }
    }

    #[test]
    fn causes_name_what_went_wrong() {
        let interrupt = wasmtime::Error::from(Trap::Interrupt);
        assert_eq!(
            failure_cause(&interrupt, &limits(), false, None),
            (
                "deadline",
                "exceeded its CPU deadline of 10000 ms".to_owned()
            )
        );
        let unreachable = wasmtime::Error::from(Trap::UnreachableCodeReached);
        assert_eq!(
            failure_cause(&unreachable, &limits(), true, None),
            (
                "out_of_memory",
                "ran out of memory (limit 64 MiB)".to_owned()
            )
        );
        assert_eq!(
            failure_cause(
                &unreachable,
                &limits(),
                false,
                Some("panicked at src/lib.rs:1:1: boom".to_owned())
            ),
            ("panic", "panicked at src/lib.rs:1:1: boom".to_owned())
        );
        assert_eq!(
            failure_cause(&unreachable, &limits(), false, None),
            (
                "trap",
                "trapped: wasm `unreachable` instruction executed".to_owned()
            )
        );
        let host = wasmtime::format_err!("resource table full");
        assert_eq!(
            failure_cause(&host, &limits(), false, None),
            ("error", "failed: resource table full".to_owned())
        );
    }

    #[test]
    fn metric_handles_are_resolved_once_per_plugin_and_operation() {
        let metrics = CallMetrics::default();
        for (plugin, operation) in [
            ("mysql", "provision"),
            ("mysql", "provision"),
            ("mysql", "bind"),
            ("redis", "provision"),
        ] {
            assert_eq!(metrics.of(plugin, operation).operation, operation);
        }
        let by_plugin = metrics.by_plugin.read().expect("not poisoned");
        assert_eq!(by_plugin.len(), 2);
        assert_eq!(by_plugin["mysql"].len(), 2);
        assert_eq!(by_plugin["redis"].len(), 1);
    }

    #[test]
    fn the_limiter_remembers_refusing_memory() {
        let exhausted = Arc::new(AtomicBool::new(false));
        let mut limiter = CallLimiter::new(1024, exhausted.clone());
        assert!(limiter.memory_growing(0, 1024, None).expect("no trap"));
        assert!(!exhausted.load(Ordering::Relaxed));
        assert!(!limiter.memory_growing(0, 100, Some(50)).expect("no trap"));
        assert!(
            !exhausted.load(Ordering::Relaxed),
            "the guest's own maximum is not our limit"
        );
        assert!(!limiter.memory_growing(1024, 2048, None).expect("no trap"));
        assert!(exhausted.load(Ordering::Relaxed));
    }

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
    fn the_default_pool_fits_in_the_address_space() {
        let config: Config = toml::from_str("").expect("parses");
        Engine::new(&engine_config(&config)).expect("the pool reserves its slots");
    }

    #[test]
    fn artifacts_are_written_whole() {
        let directory = tempfile::tempdir().expect("temp dir");
        let nested = directory.path().join("compiled");
        let path = nested.join("a.cwasm");
        write_atomically(&nested, &path, b"code").expect("written");
        assert_eq!(std::fs::read(&path).expect("readable"), b"code");
        assert_eq!(
            std::fs::read_dir(&nested).expect("listable").count(),
            1,
            "no temporary file is left"
        );
    }
}
