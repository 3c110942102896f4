//! What a call must hold before it gets an instance slot: a place among
//! its plugin's concurrent calls (`max_concurrent_calls_per_plugin`, or the
//! plugin's `max_concurrent_calls`) and its memory limit out of the guest
//! memory budget (`[runtime] max_total_memory_mb`). Without them one plugin
//! with hundreds of slow calls took every slot (another plugin's call waited
//! 8 s), and 256 slots of 64 MiB allowed 16 GiB of guest memory on a
//! machine that has far less.
//!
//! A call waits for both at most as long as its deadline, then is refused
//! with a reason: the platform gets 422 `ConcurrencyError` (nothing was done,
//! it may try again), never a half-run call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::CallLimits;

/// The plugins' call caps and the shared memory budget.
pub(super) struct CallQuotas {
    /// Per plugin (file stem): its cap when the semaphore was made, and the
    /// semaphore. A changed cap (broker.toml reload) gets a new semaphore;
    /// calls holding the old one finish on it.
    per_plugin: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    /// One permit per MiB of guest memory.
    memory: Arc<Semaphore>,
    memory_mb: u32,
}

/// Held for the whole call.
pub(super) struct CallPermits {
    _plugin: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
}

impl CallQuotas {
    pub(super) fn new(max_total_memory_mb: u64) -> Self {
        let memory_mb = u32::try_from(max_total_memory_mb)
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            per_plugin: Mutex::new(HashMap::new()),
            memory: Arc::new(Semaphore::new(memory_mb as usize)),
            memory_mb,
        }
    }

    fn plugin_semaphore(&self, plugin: &str, cap: u32) -> Arc<Semaphore> {
        // Only a map of semaphores behind the lock: nothing a panic can break.
        let mut per_plugin = self
            .per_plugin
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match per_plugin.get(plugin) {
            Some((current, semaphore)) if *current == cap => semaphore.clone(),
            _ => {
                let semaphore = Arc::new(Semaphore::new(cap.max(1) as usize));
                per_plugin.insert(plugin.to_owned(), (cap, semaphore.clone()));
                semaphore
            }
        }
    }

    /// Waits at most `wait` for a place among `plugin`'s calls, then for its
    /// memory limit out of the budget; the reason it was refused otherwise.
    pub(super) async fn admit(
        &self,
        plugin: &str,
        limits: &CallLimits,
        wait: Duration,
    ) -> Result<CallPermits, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let cap = limits.max_concurrent_calls;
        let semaphore = self.plugin_semaphore(plugin, cap);
        let plugin_permit = tokio::time::timeout_at(deadline, semaphore.acquire_owned())
            .await
            .map_err(|_| {
                format!(
                    "plugin {plugin} already runs its limit of {cap} concurrent calls \
                     (max_concurrent_calls) and none finished within {} ms; try again later",
                    wait.as_millis()
                )
            })?
            .map_err(|_| "the plugin runtime is shutting down".to_owned())?;
        // A plugin allowed more than the whole budget reserves all of it.
        let reserve = u32::try_from(limits.memory_limit_mb)
            .unwrap_or(u32::MAX)
            .clamp(1, self.memory_mb);
        let memory_permit =
            tokio::time::timeout_at(deadline, self.memory.clone().acquire_many_owned(reserve))
                .await
                .map_err(|_| {
                    format!(
                        "the calls running hold the whole guest memory budget of {} MiB \
                         ([runtime] max_total_memory_mb), and {reserve} MiB did not free up \
                         within {} ms; try again later",
                        self.memory_mb,
                        wait.as_millis()
                    )
                })?
                .map_err(|_| "the plugin runtime is shutting down".to_owned())?;
        Ok(CallPermits {
            _plugin: plugin_permit,
            _memory: memory_permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(memory_limit_mb: u64, max_concurrent_calls: u32) -> CallLimits {
        CallLimits {
            memory_limit_mb,
            max_concurrent_calls,
            ..crate::config::RuntimeConfig::default().limits_for(&Default::default())
        }
    }

    const WAIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_plugin_at_its_cap_waits_then_is_refused_and_others_are_not() {
        let quotas = CallQuotas::new(1024);
        let hog = limits(1, 2);
        let held = [
            quotas.admit("hog", &hog, WAIT).await.expect("first"),
            quotas.admit("hog", &hog, WAIT).await.expect("second"),
        ];
        let refused = quotas.admit("hog", &hog, WAIT).await.err().expect("third");
        assert!(refused.contains("max_concurrent_calls"), "{refused}");
        quotas
            .admit("other", &hog, WAIT)
            .await
            .expect("another plugin has its own cap");
        drop(held);
        quotas
            .admit("hog", &hog, WAIT)
            .await
            .expect("a place freed up");
        // A raised cap (broker.toml reload) applies to the next calls.
        let raised = limits(1, 3);
        let _kept = [
            quotas.admit("hog", &raised, WAIT).await.expect("1"),
            quotas.admit("hog", &raised, WAIT).await.expect("2"),
            quotas.admit("hog", &raised, WAIT).await.expect("3"),
        ];
    }

    #[tokio::test]
    async fn calls_reserve_their_memory_limit_out_of_the_budget() {
        let quotas = CallQuotas::new(256);
        let big = limits(128, 100);
        let first = quotas.admit("a", &big, WAIT).await.expect("128 of 256");
        let _second = quotas.admit("b", &big, WAIT).await.expect("256 of 256");
        let refused = quotas
            .admit("c", &limits(1, 100), WAIT)
            .await
            .err()
            .expect("full");
        assert!(refused.contains("max_total_memory_mb"), "{refused}");
        drop(first);
        quotas
            .admit("c", &limits(1, 100), WAIT)
            .await
            .expect("memory freed up");
        // More than the whole budget waits for all of it, and never forever.
        let huge = quotas.admit("d", &limits(10_000, 100), WAIT).await;
        assert!(huge.is_err(), "half the budget is still held");
    }

    #[test]
    fn quotas_default_safely_override_per_plugin_and_refuse_a_zero_cap() {
        let config: crate::config::Config = toml::from_str(
            "[auth]\nusername='u'\npassword='p'\n[plugins.chatty]\nmax_log_bytes_per_call = 10\n\
             kv_max_keys = 5\nmax_concurrent_calls = 2",
        )
        .expect("parses");
        config.validate().expect("valid");
        let limits = config.runtime.limits_for(&config.plugin("chatty").limits);
        assert_eq!(
            (
                limits.max_log_bytes_per_call,
                limits.kv_max_keys,
                limits.max_concurrent_calls
            ),
            (10, 5, 2)
        );
        let defaults = config.runtime.limits_for(&config.plugin("other").limits);
        assert_eq!(defaults.max_log_bytes_per_call, 1024 * 1024);
        assert_eq!(defaults.kv_max_bytes, 64 * 1024 * 1024);
        assert_eq!(defaults.max_concurrent_calls, 32);
        assert_eq!(config.runtime.max_total_memory_mb, 4096);

        let zero: crate::config::Config = toml::from_str(
            "[auth]\nusername='u'\npassword='p'\n[plugins.x]\nmax_concurrent_calls = 0",
        )
        .expect("parses");
        assert!(zero.validate().is_err(), "a plugin that can never run");
    }
}
