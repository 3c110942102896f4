//! The `kv` import: a small durable key-value store private to each plugin,
//! kept in the host's state store under the plugin's file stem, so one
//! plugin can never read another's keys, within the plugin's quota of keys
//! and bytes (`kv_max_keys`, `kv_max_bytes`), so no plugin fills the disk.
//! Values are encrypted at rest with the credentials key (`state::kv`).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::kv::{self as wit, Error};
use crate::limits::{ByteBudget, CallDeadline};
use crate::state::{KvQuota, KvWrite, StateError, StateStore};

/// The `kv` import of one plugin call.
pub struct KvHost {
    state: StateStore,
    plugin: Arc<str>,
    max_host_call_bytes: u64,
    /// When the call ends: a store operation still waiting then traps.
    deadline: CallDeadline,
    quota: KvQuota,
}

impl KvHost {
    pub fn new(
        state: StateStore,
        plugin: Arc<str>,
        max_host_call_bytes: u64,
        quota: KvQuota,
    ) -> Self {
        Self {
            state,
            plugin,
            max_host_call_bytes,
            deadline: CallDeadline::distant(),
            quota,
        }
    }

    fn within_limit(&self, parts: &[(usize, &str)]) -> Result<(), Error> {
        let mut budget = ByteBudget::new(self.max_host_call_bytes);
        parts
            .iter()
            .try_for_each(|(bytes, what)| budget.take(*bytes, what))
            .map_err(Error::LimitExceeded)
    }

    /// The plugin learns that the store failed, not why: the cause (paths,
    /// SQL) is for the operator's log.
    fn failed(&self, operation: &str, error: StateError) -> Error {
        tracing::error!(plugin = %self.plugin, %error, "kv {operation} failed");
        Error::Failed(format!("the host's state store failed during {operation}"))
    }
}

impl wit::Host for KvHost {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        if let Err(error) = self.within_limit(&[(key.len(), "the key")]) {
            return Ok(Err(error));
        }
        let deadline = self.deadline;
        Ok(
            match deadline
                .bound("kv", self.state.kv_get(&self.plugin, &key))
                .await?
            {
                Ok(Some(value)) => self
                    .within_limit(&[(value.len(), "the stored value")])
                    .map(|()| Some(value)),
                Ok(None) => Ok(None),
                Err(error) => Err(self.failed("get", error)),
            },
        )
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        if let Err(error) = self.within_limit(&[
            (key.len(), "the key"),
            (value.len(), "the key with its value"),
        ]) {
            return Ok(Err(error));
        }
        let deadline = self.deadline;
        Ok(
            match deadline
                .bound(
                    "kv",
                    self.state.kv_set(&self.plugin, &key, &value, self.quota),
                )
                .await?
            {
                Ok(KvWrite::Stored) => Ok(()),
                Ok(KvWrite::OverQuota(reason)) => Err(Error::LimitExceeded(reason)),
                Err(error) => Err(self.failed("set", error)),
            },
        )
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), Error>> {
        if let Err(error) = self.within_limit(&[(key.len(), "the key")]) {
            return Ok(Err(error));
        }
        let deadline = self.deadline;
        Ok(deadline
            .bound("kv", self.state.kv_delete(&self.plugin, &key))
            .await?
            .map_err(|error| self.failed("delete", error)))
    }

    async fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, Error>> {
        if let Err(error) = self.within_limit(&[(prefix.len(), "the prefix")]) {
            return Ok(Err(error));
        }
        let deadline = self.deadline;
        Ok(
            match deadline
                .bound("kv", self.state.kv_list_keys(&self.plugin, &prefix))
                .await?
            {
                Ok(keys) => {
                    let parts: Vec<(usize, &str)> = keys
                        .iter()
                        .map(|key| (key.len(), "the list of keys"))
                        .collect();
                    self.within_limit(&parts).map(|()| keys)
                }
                Err(error) => Err(self.failed("list-keys", error)),
            },
        )
    }
}

impl Capability for KvHost {
    fn for_call(call: &CallContext<'_>) -> Self {
        Self {
            deadline: call.deadline,
            ..Self::new(
                call.backends.state.clone(),
                call.plugin().clone(),
                call.max_host_call_bytes(),
                KvQuota {
                    max_keys: call.limits.kv_max_keys,
                    max_bytes: call.limits.kv_max_bytes,
                },
            )
        }
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StateConfig;
    use crate::contract::wasm_broker::plugin::kv::Host;

    const UNLIMITED: KvQuota = KvQuota {
        max_keys: u64::MAX,
        max_bytes: u64::MAX,
    };

    async fn store(directory: &tempfile::TempDir) -> StateStore {
        let config = StateConfig {
            path: directory.path().join("broker.db"),
            encryption_key: Some(crate::secrets::generate_key().expect("a key")),
            ..StateConfig::default()
        };
        StateStore::open(&config).await.expect("state store opens")
    }

    #[tokio::test]
    async fn keys_round_trip_and_stay_private_to_the_plugin() {
        let directory = tempfile::tempdir().expect("temp dir");
        let state = store(&directory).await;
        let mut mysql = KvHost::new(state.clone(), Arc::from("mysql"), 1024, UNLIMITED);
        let mut redis = KvHost::new(state, Arc::from("redis"), 1024, UNLIMITED);

        mysql
            .set("op/1".to_owned(), b"one".to_vec())
            .await
            .expect("no trap")
            .expect("set");
        mysql
            .set("op/2".to_owned(), b"two".to_vec())
            .await
            .expect("no trap")
            .expect("set");
        mysql
            .set("other".to_owned(), b"x".to_vec())
            .await
            .expect("no trap")
            .expect("set");
        redis
            .set("op/9".to_owned(), b"nine".to_vec())
            .await
            .expect("no trap")
            .expect("set");

        assert_eq!(
            mysql.get("op/1".to_owned()).await.expect("no trap"),
            Ok(Some(b"one".to_vec()))
        );
        assert_eq!(
            redis.get("op/1".to_owned()).await.expect("no trap"),
            Ok(None)
        );
        assert_eq!(
            mysql.list_keys("op/".to_owned()).await.expect("no trap"),
            Ok(vec!["op/1".to_owned(), "op/2".to_owned()])
        );

        mysql
            .delete("op/1".to_owned())
            .await
            .expect("no trap")
            .expect("delete");
        assert_eq!(
            mysql.get("op/1".to_owned()).await.expect("no trap"),
            Ok(None)
        );
        assert_eq!(
            redis.list_keys(String::new()).await.expect("no trap"),
            Ok(vec!["op/9".to_owned()])
        );
    }

    #[tokio::test]
    async fn data_over_the_host_call_limit_is_refused() {
        let directory = tempfile::tempdir().expect("temp dir");
        let state = store(&directory).await;
        let mut generous = KvHost::new(state.clone(), Arc::from("p"), 100, UNLIMITED);
        let mut strict = KvHost::new(state, Arc::from("p"), 10, UNLIMITED);

        let refused = strict
            .set("key".to_owned(), vec![0; 8])
            .await
            .expect("no trap");
        assert_eq!(
            refused,
            Err(Error::LimitExceeded(
                "the key with its value exceeds the host-call data limit of 10 bytes".to_owned()
            ))
        );
        assert_eq!(
            strict.get("key".to_owned()).await.expect("no trap"),
            Ok(None),
            "nothing was stored"
        );

        generous
            .set("key".to_owned(), vec![0; 50])
            .await
            .expect("no trap")
            .expect("set");
        let refused = strict.get("key".to_owned()).await.expect("no trap");
        assert!(
            matches!(refused, Err(Error::LimitExceeded(message)) if message.starts_with("the stored value"))
        );
    }

    #[tokio::test]
    async fn a_plugin_cannot_store_past_its_quota() {
        let directory = tempfile::tempdir().expect("temp dir");
        let state = store(&directory).await;
        let quota = KvQuota {
            max_keys: 3,
            max_bytes: 4096,
        };
        let mut flood = KvHost::new(state.clone(), Arc::from("flood"), 1 << 20, quota);
        let mut other = KvHost::new(state, Arc::from("other"), 1 << 20, quota);

        // Keys: three fit, the fourth does not; replacing one still does.
        for index in 0..3 {
            flood
                .set(format!("k{index}"), vec![1; 10])
                .await
                .expect("no trap")
                .expect("within the quota");
        }
        let refused = flood
            .set("k3".to_owned(), vec![1; 10])
            .await
            .expect("no trap");
        assert!(
            matches!(&refused, Err(Error::LimitExceeded(reason)) if reason.contains("kv_max_keys")),
            "{refused:?}"
        );
        flood
            .set("k0".to_owned(), vec![2; 10])
            .await
            .expect("no trap")
            .expect("a replacement adds no key");

        // Bytes: a value that takes the store past the quota stores nothing.
        let refused = flood
            .set("k1".to_owned(), vec![3; 4096])
            .await
            .expect("no trap");
        assert!(
            matches!(&refused, Err(Error::LimitExceeded(reason)) if reason.contains("kv_max_bytes")),
            "{refused:?}"
        );
        assert_eq!(
            flood.get("k1".to_owned()).await.expect("no trap"),
            Ok(Some(vec![1; 10])),
            "the refused value replaced nothing"
        );
        flood
            .delete("k2".to_owned())
            .await
            .expect("no trap")
            .expect("deleting frees a key");
        flood
            .set("k3".to_owned(), vec![1; 10])
            .await
            .expect("no trap")
            .expect("room again");

        // The quota is the plugin's own.
        other
            .set("k9".to_owned(), vec![4; 1000])
            .await
            .expect("no trap")
            .expect("another plugin's quota is untouched");
    }
}
