//! The plugin runtime: loads WebAssembly components that implement the
//! `wasm-broker:plugin` contract and calls them, each call in a fresh,
//! limited instance. Knows components, nothing of HTTP.
//!
//! - [`crate::contract`]: the contract as generated Rust, shared with the capabilities.
//! - `engine`: the wasmtime engine, its pooling allocator and linker.
//! - `call`: the life of one call: store, limits, deadline, faults.
//! - `call_metrics`, `limiter`: a call's metrics and its resource limiter.
//! - `compile_cache`: compiled plugin code kept on disk.
//! - `loader`: the plugin directory -> validated plugins; `plugin_set`:
//!   merged into the set served, with the retired ones (`retired`: kept for
//!   the instances they left).
//! - `guest_output`: a plugin's stdout and stderr, into the host log.
//! - `watcher`: hot reload of the plugin directory; `live_config`: of
//!   broker.toml (file changes and SIGHUP).
//! - `convert`: model <-> WIT.

mod call;
mod call_metrics;
mod call_quota;
mod compile_cache;
mod compiler;
mod convert;
mod engine;
mod guest_output;
mod limiter;
mod live_config;
mod loader;
mod plugin_set;
mod retired;
mod status;
#[cfg(test)]
mod tests;
mod watcher;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use wasmtime::component::{ComponentNamedList, Lift, Lower, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::call::Export;
pub use self::compiler::{run_worker, use_compile_worker};
use self::convert::InvalidAnswer;
pub use self::engine::EngineSettings;
use self::engine::PluginEngine;
use self::limiter::CallLimiter;
use self::live_config::LiveSettings;
pub use self::live_config::{Applied, ConfigWatch, ReloadError, Trigger};
use self::loader::{LoadedPlugin, Loader};
use self::plugin_set::PluginSet;
pub use self::status::{PluginState, PluginStatus};
use crate::capabilities::connections::{ConnectionError, Connections};
use crate::capabilities::{CallHosts, CapabilityView, SharedBackends};
use crate::catalog::CatalogSnapshot;
use crate::config::Config;
use crate::contract::wasm_broker::plugin::types as wit;
use crate::model::{
    BindOutcome, Binding, BindingResult, DeletionOutcome, Instance, InstanceChanges,
    InstanceDetails, InstanceOutcome, OperationKind, OperationStatus, Refusal, RequestInfo,
};

/// Why a plugin call did not produce an answer from the plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with a typed OSB refusal.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No loaded plugin serves this service id (it was removed, or never loaded).
    #[error("no plugin serves service {service_id}")]
    NoPlugin { service_id: String },
    /// The plugin trapped, panicked, ran out of memory or time, or answered
    /// something malformed. The instance was dropped.
    #[error("plugin {plugin} failed: {cause}")]
    Fault { plugin: String, cause: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot read plugin directory {path}: {source}")]
    PluginDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Connections(#[from] ConnectionError),
}

/// While retired plugins are kept, their instances are counted again this
/// often (and at every reload), so one is released soon after its last
/// instance is deprovisioned.
const RETIRED_SWEEP: Duration = Duration::from_secs(30);

/// The data of one call's store: an empty WASI context and one host per
/// capability, built fresh for the call and dropped with it.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: CallLimiter,
    hosts: CallHosts,
}

impl CallState {
    fn new(wasi: WasiCtx, limiter: CallLimiter, hosts: CallHosts) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter,
            hosts,
        }
    }
}

impl CapabilityView for CallState {
    fn hosts(&mut self) -> &mut CallHosts {
        &mut self.hosts
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Loads and calls plugins. Cheap to share: callers hold an `Arc`.
pub struct PluginRuntime {
    loader: Arc<Loader>,
    plugins: Arc<ArcSwap<PluginSet>>,
    /// Hot reload; `None` when the directory cannot be watched (logged).
    watcher: Option<(notify::RecommendedWatcher, tokio::task::JoinHandle<()>)>,
    /// Releases retired plugins whose instances are gone.
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.watcher {
            task.abort();
        }
        self.sweeper.abort();
    }
}

impl PluginRuntime {
    /// Builds the engine, loads every plugin in `config.runtime.plugin_dir`
    /// and starts watching the directory for changes. Connections to the
    /// backends in `[connections]` open lazily, on first use.
    pub async fn start(
        config: &Config,
        state: crate::state::StateStore,
    ) -> Result<Arc<Self>, RuntimeError> {
        let runtime = Self::new(config, state)?;
        runtime.load().await?;
        Ok(runtime)
    }

    /// Builds the engine and starts watching the plugin directory, without
    /// loading it: until [`Self::load`] finishes the catalog is empty and
    /// says it is loading (`CatalogSnapshot::is_loading`), so `serve` can
    /// listen (and answer its probes) while plugins compile.
    pub fn new(
        config: &Config,
        state: crate::state::StateStore,
    ) -> Result<Arc<Self>, RuntimeError> {
        let live = LiveSettings {
            config: config.clone(),
            connections: Arc::new(Connections::from_config(&config.connections)?),
            generation: 0,
        };
        let backends = SharedBackends { state };
        let loader = Arc::new(Loader::new(
            PluginEngine::new(config, backends)?,
            config.clone(),
            live,
        ));
        let plugins = Arc::new(ArcSwap::from_pointee(PluginSet::empty()));
        // Watching starts before the first scan, so a file that changes
        // meanwhile is not missed (a reload waits for the scan's turn).
        let watcher = match watcher::watch(loader.clone(), plugins.clone()) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(
                    dir = %loader.plugin_dir().display(),
                    %error,
                    "cannot watch the plugin directory; changes take effect only after a restart"
                );
                None
            }
        };
        let sweeper = tokio::spawn({
            let (loader, plugins) = (loader.clone(), plugins.clone());
            async move {
                loop {
                    tokio::time::sleep(RETIRED_SWEEP).await;
                    if plugins.load().has_retired() {
                        watcher::reload(&loader, &plugins).await;
                    }
                }
            }
        });
        Ok(Arc::new(Self {
            loader,
            plugins,
            watcher,
            sweeper,
        }))
    }

    /// The first scan of the plugin directory: compiles (or takes from the
    /// cache) and admits every plugin, then serves them.
    pub async fn load(&self) -> Result<(), RuntimeError> {
        let started = std::time::Instant::now();
        let _turn = self.loader.reload_turn().await;
        let initial = self.loader.scan(&self.plugins.load_full()).await?;
        let count = |wanted: fn(&PluginStatus) -> bool| {
            initial
                .statuses()
                .iter()
                .filter(|status| wanted(status))
                .count()
        };
        tracing::info!(
            dir = %self.loader.plugin_dir().display(),
            serving = count(|status| status.info.is_some() && status.retired_instances.is_none()),
            refused = count(|status| status.info.is_none() && status.retired_instances.is_none()),
            retired = count(|status| status.retired_instances.is_some()),
            services = initial.catalog().catalog.services.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "plugins loaded"
        );
        self.prune_compile_cache(&initial).await;
        self.plugins.store(Arc::new(initial));
        Ok(())
    }

    /// After the first scan, removes the compiled code of plugin versions
    /// this start does not use and nobody loaded for a week
    /// (`compile_cache::prune`).
    async fn prune_compile_cache(&self, loaded: &PluginSet) {
        let engine = self.loader.engine().engine().clone();
        let cache_dir = self.loader.engine().cache_dir().to_owned();
        let in_use = loaded.digests();
        let pruned = tokio::task::spawn_blocking(move || {
            compile_cache::prune(
                &engine,
                &cache_dir,
                &in_use,
                compile_cache::UNUSED_RETENTION,
            )
        })
        .await;
        match pruned {
            Ok(pruned) if pruned.files > 0 => tracing::info!(
                files = pruned.files,
                mb = pruned.bytes / 1_000_000,
                "removed compiled code of plugin versions no longer in use"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning the compile cache failed"),
        }
    }

    /// Applies broker.toml at `path` whenever it changes or the process
    /// gets SIGHUP, until the returned watch is dropped (`live_config`).
    pub fn watch_config(&self, path: PathBuf) -> ConfigWatch {
        live_config::watch(self.loader.clone(), self.plugins.clone(), path)
    }

    /// Reads, validates and applies broker.toml at `path` now, as a change
    /// of the file (or SIGHUP) would.
    pub async fn apply_config(
        &self,
        path: &std::path::Path,
        trigger: Trigger,
    ) -> Result<Applied, ReloadError> {
        live_config::apply(&self.loader, &self.plugins, path, trigger).await
    }

    /// The merged catalog of all loaded plugins (cheap: an `Arc` clone).
    pub fn catalog(&self) -> Arc<CatalogSnapshot> {
        self.plugins.load().catalog().clone()
    }

    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.plugins.load().statuses().to_vec()
    }

    /// The plugin serving `service_id`, from the set current now.
    fn serving(&self, service_id: &str) -> Result<Arc<LoadedPlugin>, CallError> {
        self.plugins
            .load()
            .serving(service_id)
            .cloned()
            .ok_or_else(|| CallError::NoPlugin {
                service_id: service_id.to_owned(),
            })
    }

    pub async fn provision(
        &self,
        instance: &Instance,
        info: &RequestInfo,
    ) -> Result<InstanceOutcome, CallError> {
        let (wit_instance, wit_info) = (convert::instance(instance), convert::request_info(info));
        self.dispatch(
            &instance.service_id,
            Export::Provision,
            info.request_identity.as_deref(),
            (&wit_instance, &wit_info),
            convert::instance_outcome,
        )
        .await
    }

    /// `provision` with its deadline cut to `timeout` (when shorter than the
    /// plugin's own): `plugins test` stops a provision half way this way, to
    /// check that a deprovision then cleans up what it left.
    pub async fn provision_within(
        &self,
        instance: &Instance,
        info: &RequestInfo,
        timeout: Duration,
    ) -> Result<InstanceOutcome, CallError> {
        let (wit_instance, wit_info) = (convert::instance(instance), convert::request_info(info));
        self.dispatch_within(
            &instance.service_id,
            Export::Provision,
            info.request_identity.as_deref(),
            (&wit_instance, &wit_info),
            convert::instance_outcome,
            Some(timeout),
        )
        .await
    }

    pub async fn update(
        &self,
        instance: &Instance,
        changes: &InstanceChanges,
        info: &RequestInfo,
    ) -> Result<InstanceOutcome, CallError> {
        let wit_instance = convert::instance(instance);
        let (changes, wit_info) = (
            convert::instance_changes(changes),
            convert::request_info(info),
        );
        self.dispatch(
            &instance.service_id,
            Export::Update,
            info.request_identity.as_deref(),
            (&wit_instance, &changes, &wit_info),
            convert::instance_outcome,
        )
        .await
    }

    pub async fn deprovision(
        &self,
        instance: &Instance,
        info: &RequestInfo,
    ) -> Result<DeletionOutcome, CallError> {
        let (wit_instance, wit_info) = (convert::instance(instance), convert::request_info(info));
        self.dispatch(
            &instance.service_id,
            Export::Deprovision,
            info.request_identity.as_deref(),
            (&wit_instance, &wit_info),
            convert::deletion_outcome,
        )
        .await
    }

    pub async fn bind(
        &self,
        instance: &Instance,
        binding: &Binding,
        info: &RequestInfo,
    ) -> Result<BindOutcome, CallError> {
        let (wit_instance, binding) = (convert::instance(instance), convert::binding(binding));
        let wit_info = convert::request_info(info);
        self.dispatch(
            &instance.service_id,
            Export::Bind,
            info.request_identity.as_deref(),
            (&wit_instance, &binding, &wit_info),
            convert::bind_outcome,
        )
        .await
    }

    pub async fn unbind(
        &self,
        instance: &Instance,
        binding: &Binding,
        info: &RequestInfo,
    ) -> Result<DeletionOutcome, CallError> {
        let (wit_instance, binding) = (convert::instance(instance), convert::binding(binding));
        let wit_info = convert::request_info(info);
        self.dispatch(
            &instance.service_id,
            Export::Unbind,
            info.request_identity.as_deref(),
            (&wit_instance, &binding, &wit_info),
            convert::deletion_outcome,
        )
        .await
    }

    pub async fn last_operation(
        &self,
        instance: &Instance,
        kind: OperationKind,
        operation: Option<&str>,
    ) -> Result<OperationStatus, CallError> {
        let wit_instance = convert::instance(instance);
        self.dispatch(
            &instance.service_id,
            Export::LastOperation,
            None,
            (&wit_instance, convert::operation_kind(kind), operation),
            |status| Ok(convert::operation_status(status)),
        )
        .await
    }

    pub async fn last_binding_operation(
        &self,
        instance: &Instance,
        binding: &Binding,
        kind: OperationKind,
        operation: Option<&str>,
    ) -> Result<OperationStatus, CallError> {
        let (wit_instance, binding) = (convert::instance(instance), convert::binding(binding));
        self.dispatch(
            &instance.service_id,
            Export::LastBindingOperation,
            None,
            (
                &wit_instance,
                &binding,
                convert::operation_kind(kind),
                operation,
            ),
            |status| Ok(convert::operation_status(status)),
        )
        .await
    }

    pub async fn get_instance(&self, instance: &Instance) -> Result<InstanceDetails, CallError> {
        let wit_instance = convert::instance(instance);
        self.dispatch(
            &instance.service_id,
            Export::GetInstance,
            None,
            (&wit_instance,),
            convert::instance_details,
        )
        .await
    }

    pub async fn get_binding(
        &self,
        instance: &Instance,
        binding: &Binding,
    ) -> Result<BindingResult, CallError> {
        let (wit_instance, binding) = (convert::instance(instance), convert::binding(binding));
        self.dispatch(
            &instance.service_id,
            Export::GetBinding,
            None,
            (&wit_instance, &binding),
            convert::binding_result,
        )
        .await
    }

    /// Calls `export` of the plugin serving `service_id` (the version
    /// current now: the call keeps it even if a reload swaps in another
    /// meanwhile) and turns its answer into the model.
    async fn dispatch<Params, Answer, T>(
        &self,
        service_id: &str,
        export: Export,
        request_identity: Option<&str>,
        params: Params,
        into_model: impl FnOnce(Answer) -> Result<T, InvalidAnswer>,
    ) -> Result<T, CallError>
    where
        Params: ComponentNamedList + Lower + Send + Sync,
        Answer: Lift + Send + Sync + 'static,
    {
        self.dispatch_within(
            service_id,
            export,
            request_identity,
            params,
            into_model,
            None,
        )
        .await
    }

    /// [`Self::dispatch`], the call's deadline cut to `timeout` if given and
    /// shorter than the plugin's `call_timeout_ms`.
    async fn dispatch_within<Params, Answer, T>(
        &self,
        service_id: &str,
        export: Export,
        request_identity: Option<&str>,
        params: Params,
        into_model: impl FnOnce(Answer) -> Result<T, InvalidAnswer>,
        timeout: Option<Duration>,
    ) -> Result<T, CallError>
    where
        Params: ComponentNamedList + Lower + Send + Sync,
        Answer: Lift + Send + Sync + 'static,
    {
        let plugin = self.serving(service_id)?;
        let mut target = plugin.target();
        if let Some(timeout) = timeout {
            let cut_ms = u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            target.limits.call_timeout_ms = target.limits.call_timeout_ms.min(cut_ms);
        }
        let answer = self
            .engine()
            .call_export(&target, export, request_identity, params)
            .await?;
        accept(&plugin, answer, into_model)
    }

    fn engine(&self) -> &PluginEngine {
        self.loader.engine()
    }
}

/// A plugin's answer in model form: its refusal as [`CallError::Refused`],
/// an answer the platform must not see as a fault.
fn accept<T, U>(
    plugin: &LoadedPlugin,
    answer: Result<T, wit::BrokerError>,
    into_model: impl FnOnce(T) -> Result<U, InvalidAnswer>,
) -> Result<U, CallError> {
    let answer = answer.map_err(|error| CallError::Refused(convert::refusal(error)))?;
    into_model(answer).map_err(|invalid| {
        tracing::warn!(plugin = %plugin.name, cause = %invalid, "plugin answered something malformed");
        CallError::Fault { plugin: plugin.name.clone(), cause: invalid.to_string() }
    })
}
