//! The life of one plugin call: a fresh store with the plugin's limits,
//! instantiation from the plugin's pre-linked `InstancePre`, the call under
//! its CPU deadline (epoch interruption) and a wall-clock safety net, and the
//! translation of every way it can go wrong into a cause an operator
//! understands. The store is dropped after every call.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{ComponentNamedList, Lift, Lower};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::call_metrics::CallInProgress;
use super::engine::{MIB, PluginEngine};
use super::guest_output::{GuestOutput, Stream};
use super::limiter::CallLimiter;
use super::{CallError, CallState};
use crate::capabilities::{CallContext, CallHosts, PluginGrants};
use crate::config::CallLimits;
use crate::contract::{ServicePlugin, ServicePluginPre};
use crate::limits::LogBudget;
use crate::limits::{CallDeadline, DeadlineExceeded};
use crate::model::Refusal;
use crate::printable::printable;

/// The wall-clock safety net fires this long after the CPU deadline, so a
/// guest that computes too long is reported as such by the epoch check, and
/// the net only catches a call stuck waiting on a host call.
const WAIT_GRACE: Duration = Duration::from_millis(100);

impl PluginEngine {
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
            tracing::warn!(plugin = plugin.name, operation, cause = %printable(&cause), "plugin call failed");
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

        // Before a slot: a plugin over its share waits here, not in the
        // slot queue every plugin shares.
        let _quota = self
            .quotas
            .admit(plugin.name, &limits, deadline)
            .await
            .map_err(|reason| {
                tracing::warn!(plugin = plugin.name, operation, %reason, "plugin call refused");
                metrics::counter!("plugin_calls_refused_total", "plugin" => plugin.name.to_owned())
                    .increment(1);
                CallError::Refused(Refusal::ConcurrencyError(reason))
            })?;
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
        let log_budget = Arc::new(LogBudget::new(
            limits.max_log_bytes_per_call,
            limits.max_log_lines_per_call,
        ));
        let stdout = GuestOutput::new(name.clone(), Stream::Stdout, log_budget.clone());
        let stderr = GuestOutput::new(name, Stream::Stderr, log_budget.clone());
        let memory_exhausted = Arc::new(AtomicBool::new(false));
        let memory_limit =
            usize::try_from(limits.memory_limit_mb.saturating_mul(MIB)).unwrap_or(usize::MAX);
        // One instant for the guest (epoch interruption) and for every host
        // call it waits on.
        let cpu_deadline = Instant::now() + deadline;
        let state = CallState::new(
            sandbox_wasi(stdout.clone(), stderr.clone()),
            CallLimiter::new(memory_limit, memory_exhausted.clone()),
            CallHosts::for_call(&CallContext {
                grants: plugin.grants,
                backends: &self.backends,
                request_identity,
                deadline: CallDeadline::after(deadline),
                log_budget: &log_budget,
                limits: &limits,
            }),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Every tick past the first the guest yields to other tasks, so a
        // busy plugin cannot starve the executor; past the deadline it is
        // interrupted with a trap.
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
    pub pre: &'a ServicePluginPre<CallState>,
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
    if let Some(exceeded) = error.downcast_ref::<DeadlineExceeded>() {
        return ("deadline", exceeded.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CallLimits {
        CallLimits {
            memory_limit_mb: 64,
            call_timeout_ms: 10_000,
            max_host_call_bytes: 1024,
            ..crate::config::RuntimeConfig::default().limits_for(&Default::default())
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
        let late = wasmtime::Error::new(DeadlineExceeded {
            timeout_ms: 2000,
            capability: "sql",
        });
        assert_eq!(
            failure_cause(&late, &limits(), false, None),
            (
                "deadline",
                "did not finish within its deadline of 2000 ms (a sql host call was still waiting)"
                    .to_owned()
            )
        );
        let host = wasmtime::format_err!("resource table full");
        assert_eq!(
            failure_cause(&host, &limits(), false, None),
            ("error", "failed: resource table full".to_owned())
        );
    }
}
