//! The resource limiter of a call's store: the plugin's memory limit, and
//! the memory of having refused memory, so the fault names the cause.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// [`StoreLimits`] that also remembers whether it refused memory, so an
/// allocation failure (which a Rust guest turns into an abort trap) is
/// reported as what it is.
pub struct CallLimiter {
    limits: StoreLimits,
    memory_limit: usize,
    memory_exhausted: Arc<AtomicBool>,
}

impl CallLimiter {
    pub fn new(memory_limit: usize, memory_exhausted: Arc<AtomicBool>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
