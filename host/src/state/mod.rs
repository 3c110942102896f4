//! Durable broker state: instances, bindings (with their credentials) and
//! the operations on them, in embedded SQLite. Every state change the
//! broker acknowledges to the platform is committed here first.
//!
//! Credentials are stored encrypted (see [`crate::secrets`]) and never
//! without a key: with none configured, the store opens only if it holds no
//! credentials, and refuses to create bindings.

mod tables;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::config::StateConfig;
use crate::model::{Binding, BindingResult, Instance, InstanceChanges, OperationKind};
use crate::secrets::{EncryptionKey, KeyId, Keyring, SecretsError};

use tables::ResourceKind;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Reads run in parallel (WAL readers never wait for the writer); writes
/// take SQLite's single write lock one at a time anyway.
const MAX_CONNECTIONS: u32 = 8;

/// How long a writer waits for another process holding the write lock (an
/// operator's `sqlite3` shell, a backup) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Credentials re-encrypted per transaction by a key rotation: small enough
/// that a broker serving meanwhile waits only briefly for the write lock.
const ROTATION_BATCH: i64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("state store migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("state store holds a corrupt record for {id}: {cause}")]
    Corrupt { id: String, cause: String },
    #[error("state store cannot encode the record for {id}: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
    #[error("cannot create state directory {path}: {source}")]
    Directory {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A key in the configuration is malformed, or a binding was to be
    /// created without a key to protect its credentials.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    // The causes below are part of the message, not a `source`, so that
    // error reports print them once.
    #[error(
        "the state store holds service binding credentials ({count}), but no encryption key is \
         configured: set {key_env} (or [state] encryption_key) to the key they were stored with"
    )]
    CredentialsWithoutKey { count: i64, key_env: String },
    #[error(
        "the state store holds service binding credentials ({count}) that it cannot decrypt: {cause}"
    )]
    CredentialsUnreadable { count: i64, cause: SecretsError },
    #[error("cannot use the credentials of service binding {id}: {cause}")]
    Credentials { id: String, cause: SecretsError },
}

/// Where a resource (instance or binding) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(rename_all = "snake_case")]
pub enum ResourceStatus {
    /// Provision/bind started and has not succeeded yet.
    Creating,
    /// Usable.
    Ready,
    /// Creation failed; the platform will send a delete (orphan mitigation),
    /// which must still reach the plugin to clean up half-made resources.
    Failed,
    /// Deleted; kept as a tombstone so `last_operation` can still report the
    /// deletion's success. A new create may reuse the id.
    Deleted,
}

/// Phase of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(rename_all = "snake_case")]
pub enum OperationPhase {
    /// A synchronous plugin call is under way. Found at startup, it means the
    /// broker died mid-call: it becomes `Failed`.
    Calling,
    /// The plugin accepted the work asynchronously; polled via last_operation.
    InProgress,
    Succeeded,
    Failed,
}

/// The latest operation on a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// The id the platform sees (`operation` in 202 bodies).
    pub id: String,
    pub kind: OperationKind,
    pub phase: OperationPhase,
    /// The plugin's own token from `accepted`, passed back when polling.
    pub plugin_operation: Option<String>,
    pub description: Option<String>,
    pub instance_usable: Option<bool>,
    pub update_repeatable: Option<bool>,
    /// For an update: what to apply to the instance when it succeeds.
    pub changes: Option<StoredChanges>,
    /// Fingerprint of the request that started it, so a re-sent identical
    /// request gets the same answer.
    pub request_fingerprint: String,
}

/// `InstanceChanges` in storable form.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StoredChanges {
    pub plan_id: Option<String>,
    pub parameters: Option<serde_json::Value>,
    pub context: Option<serde_json::Value>,
    pub maintenance_version: Option<String>,
}

impl From<&InstanceChanges> for StoredChanges {
    fn from(changes: &InstanceChanges) -> Self {
        Self {
            plan_id: changes.plan_id.clone(),
            parameters: changes.parameters.clone(),
            context: changes.context.clone(),
            maintenance_version: changes.maintenance_version.clone(),
        }
    }
}

impl From<&StoredChanges> for InstanceChanges {
    fn from(changes: &StoredChanges) -> Self {
        Self {
            plan_id: changes.plan_id.clone(),
            parameters: changes.parameters.clone(),
            context: changes.context.clone(),
            maintenance_version: changes.maintenance_version.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub instance: Instance,
    pub status: ResourceStatus,
    pub dashboard_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub operation: Option<OperationRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingRecord {
    pub binding: Binding,
    pub status: ResourceStatus,
    /// What the platform got (credentials included). Stored in a column of
    /// its own so that encryption at rest can wrap exactly this.
    pub result: Option<BindingResult>,
    pub operation: Option<OperationRecord>,
}

/// What a transition closure decided.
pub enum Transition<T, R> {
    /// Leave the stored record as it is.
    Keep(R),
    /// Store this record (insert or replace).
    Write(T, R),
}

#[derive(Clone)]
pub struct StateStore {
    pool: SqlitePool,
    keyring: Arc<Keyring>,
    /// Writers of this process queue here, in order, instead of in SQLite's
    /// busy handler, which polls with sleeps of up to 100 ms and lets an
    /// unlucky writer starve past the busy timeout under load. `BEGIN
    /// IMMEDIATE` still guards against writers outside this process.
    write_gate: Arc<Mutex<()>>,
}

/// An open write transaction and this process's turn to write. Field order
/// matters: the transaction ends (rollback on drop) before the turn passes.
struct WriteTransaction<'a> {
    transaction: Transaction<'static, Sqlite>,
    _turn: MutexGuard<'a, ()>,
}

impl StateStore {
    /// Opens (creating if needed) the store and runs migrations, with the
    /// encryption keys of `config`. Fails if the store holds credentials
    /// those keys cannot decrypt.
    pub async fn open(config: &StateConfig) -> Result<Self, StateError> {
        let keyring = Keyring::from_config(config)?;
        match keyring.current_key_id() {
            Some(key_id) => tracing::info!(%key_id, "credentials are encrypted at rest"),
            None => tracing::warn!(
                "no encryption key is configured ({} or [state] encryption_key): binds are refused, \
                 since credentials are never stored unencrypted",
                keyring.key_env()
            ),
        }
        Self::open_with_keys(config, keyring).await
    }

    /// Re-encrypts every stored credential not yet encrypted with `new_key`,
    /// reading with the keys of `config`. Each batch commits on its own, so
    /// a rotation cut short resumes when run again, and a broker serving
    /// meanwhile is held up only briefly. Returns how many were re-encrypted.
    pub async fn rotate_encryption_key(
        config: &StateConfig,
        new_key: EncryptionKey,
    ) -> Result<u64, StateError> {
        let keyring = Keyring::from_config(config)?.rotating_to(new_key);
        let store = Self::open_with_keys(config, keyring).await?;
        let rotated = store.reencrypt_credentials().await;
        store.close().await;
        rotated
    }

    async fn open_with_keys(config: &StateConfig, keyring: Keyring) -> Result<Self, StateError> {
        if let Some(directory) = config
            .path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
        {
            tokio::fs::create_dir_all(directory)
                .await
                .map_err(|source| StateError::Directory {
                    path: directory.to_owned(),
                    source,
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(&config.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode, NORMAL syncs only at checkpoints: a kill -9 loses
            // nothing, but a power loss or kernel crash can drop the latest
            // commits. Those are answers the platform already has (201 with
            // credentials, 202 with an operation id); forgetting them leaves
            // databases and users nobody will ever delete. FULL syncs the
            // WAL at every commit, and a commit is what we acknowledge.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        MIGRATIONS.run(&pool).await?;
        let store = Self {
            pool,
            keyring: Arc::new(keyring),
            write_gate: Arc::new(Mutex::new(())),
        };
        store.check_credentials_readable().await?;
        Ok(store)
    }

    /// Refuses a store holding credentials that no configured key decrypts:
    /// serving it would fail every fetch and unbind of those bindings.
    /// Damaged values are left to be reported when their binding is read.
    async fn check_credentials_readable(&self) -> Result<(), StateError> {
        let mut connection = self.pool.acquire().await?;
        let headers = tables::count_results_by_header(&mut connection).await?;
        let count: i64 = headers.iter().map(|(_, count)| count).sum();
        if count > 0 && self.keyring.is_empty() {
            return Err(StateError::CredentialsWithoutKey {
                count,
                key_env: self.keyring.key_env().to_owned(),
            });
        }
        for (header, count) in headers {
            let Ok(key_id) = crate::secrets::sealed_key_id(&header) else {
                continue;
            };
            if let Err(cause) = self.keyring.key_for(key_id) {
                return Err(StateError::CredentialsUnreadable { count, cause });
            }
        }
        Ok(())
    }

    async fn reencrypt_credentials(&self) -> Result<u64, StateError> {
        let target: KeyId = self.keyring.require_current()?.id();
        let mut rotated = 0;
        loop {
            let mut write = self.begin_write().await?;
            let batch = tables::read_results_not_sealed_with(
                &mut write.transaction,
                target,
                ROTATION_BATCH,
            )
            .await?;
            if batch.is_empty() {
                return Ok(rotated);
            }
            for (id, sealed) in &batch {
                let resealed = tables::reseal_result(&self.keyring, id, sealed)?;
                tables::replace_result(&mut write.transaction, id, &resealed).await?;
            }
            write.transaction.commit().await?;
            rotated += batch.len() as u64;
        }
    }

    /// Waits for the connections to finish and closes them, so the WAL is
    /// checkpointed into the database file at shutdown.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StateError> {
        let mut connection = self.pool.acquire().await?;
        tables::read_instance(&mut connection, id).await
    }

    /// Reads the instance, lets `decide` choose, and writes its choice, all
    /// in one write transaction: concurrent transitions of the same id are
    /// serialized, so check-then-act races cannot happen.
    pub async fn transition_instance<R>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<InstanceRecord>) -> Transition<InstanceRecord, R> + Send,
    ) -> Result<R, StateError> {
        let mut write = self.begin_write().await?;
        let current = tables::read_instance(&mut write.transaction, id).await?;
        let before = tables::OperationMark::of(
            current
                .as_ref()
                .and_then(|record| record.operation.as_ref()),
        );
        match decide(current) {
            Transition::Keep(answer) => {
                write.transaction.rollback().await?;
                Ok(answer)
            }
            Transition::Write(record, answer) => {
                debug_assert_eq!(
                    record.instance.id, id,
                    "a transition must not move a record to another id"
                );
                tables::write_instance(&mut write.transaction, &record).await?;
                tables::append_history(
                    &mut write.transaction,
                    ResourceKind::Instance,
                    id,
                    &before,
                    &record.operation,
                )
                .await?;
                write.transaction.commit().await?;
                Ok(answer)
            }
        }
    }

    pub async fn binding(&self, id: &str) -> Result<Option<BindingRecord>, StateError> {
        let mut connection = self.pool.acquire().await?;
        tables::read_binding(&mut connection, &self.keyring, id).await
    }

    /// Like `transition_instance` for a binding; `decide` also sees the
    /// binding's instance, read in the same transaction.
    pub async fn transition_binding<R>(
        &self,
        id: &str,
        instance_id: &str,
        decide: impl FnOnce(
            Option<InstanceRecord>,
            Option<BindingRecord>,
        ) -> Transition<BindingRecord, R>
        + Send,
    ) -> Result<R, StateError> {
        let mut write = self.begin_write().await?;
        let instance = tables::read_instance(&mut write.transaction, instance_id).await?;
        let current = tables::read_binding(&mut write.transaction, &self.keyring, id).await?;
        let before = tables::OperationMark::of(
            current
                .as_ref()
                .and_then(|record| record.operation.as_ref()),
        );
        match decide(instance, current) {
            Transition::Keep(answer) => {
                write.transaction.rollback().await?;
                Ok(answer)
            }
            Transition::Write(record, answer) => {
                debug_assert_eq!(
                    record.binding.id, id,
                    "a transition must not move a record to another id"
                );
                // Refused before the plugin runs: it would answer with
                // credentials the store cannot keep, leaving a user in the
                // backend that no record knows of.
                if record.status == ResourceStatus::Creating {
                    self.keyring.require_current()?;
                }
                tables::write_binding(&mut write.transaction, &self.keyring, &record).await?;
                tables::append_history(
                    &mut write.transaction,
                    ResourceKind::Binding,
                    id,
                    &before,
                    &record.operation,
                )
                .await?;
                write.transaction.commit().await?;
                Ok(answer)
            }
        }
    }

    /// Bindings of an instance that are not deleted, oldest first.
    pub async fn live_bindings(&self, instance_id: &str) -> Result<Vec<BindingRecord>, StateError> {
        let mut connection = self.pool.acquire().await?;
        tables::read_live_bindings(&mut connection, &self.keyring, instance_id).await
    }

    /// At startup: every operation still `Calling` was cut short by a crash;
    /// mark it `Failed` with `description` (creations become `Failed`
    /// resources, other kinds leave the resource as it was). Returns how
    /// many were marked.
    pub async fn fail_interrupted_operations(&self, description: &str) -> Result<u64, StateError> {
        let mut write = self.begin_write().await?;
        let mut marked = 0;
        for mut record in
            tables::read_instances_in_phase(&mut write.transaction, OperationPhase::Calling).await?
        {
            let before = tables::OperationMark::of(record.operation.as_ref());
            if let Some(operation) = record.operation.as_mut() {
                fail_interrupted(operation, &mut record.status, description);
                tables::write_instance(&mut write.transaction, &record).await?;
                let id = &record.instance.id;
                tables::append_history(
                    &mut write.transaction,
                    ResourceKind::Instance,
                    id,
                    &before,
                    &record.operation,
                )
                .await?;
                marked += 1;
            }
        }
        for mut record in tables::read_bindings_in_phase(
            &mut write.transaction,
            &self.keyring,
            OperationPhase::Calling,
        )
        .await?
        {
            let before = tables::OperationMark::of(record.operation.as_ref());
            if let Some(operation) = record.operation.as_mut() {
                fail_interrupted(operation, &mut record.status, description);
                tables::write_binding(&mut write.transaction, &self.keyring, &record).await?;
                let id = &record.binding.id;
                tables::append_history(
                    &mut write.transaction,
                    ResourceKind::Binding,
                    id,
                    &before,
                    &record.operation,
                )
                .await?;
                marked += 1;
            }
        }
        write.transaction.commit().await?;
        Ok(marked)
    }

    /// The plugin's private key-value store (`kv` capability).
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let value =
            sqlx::query_scalar("SELECT value FROM plugin_kv WHERE plugin = ?1 AND key = ?2")
                .bind(plugin)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(value)
    }

    pub async fn kv_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StateError> {
        let _turn = self.write_gate.lock().await;
        sqlx::query(
            "INSERT INTO plugin_kv (plugin, key, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value",
        )
        .bind(plugin)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StateError> {
        let _turn = self.write_gate.lock().await;
        sqlx::query("DELETE FROM plugin_kv WHERE plugin = ?1 AND key = ?2")
            .bind(plugin)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keys of `plugin` starting with `prefix`, in byte order.
    pub async fn kv_list_keys(
        &self,
        plugin: &str,
        prefix: &str,
    ) -> Result<Vec<String>, StateError> {
        // A range on the primary key rather than LIKE/GLOB: no wildcard
        // escaping, and SQLite walks only the matching keys.
        let keys = match prefix_successor(prefix) {
            Some(end) => {
                sqlx::query_scalar(tables::KV_KEYS_IN_RANGE)
                    .bind(plugin)
                    .bind(prefix)
                    .bind(end)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_scalar(tables::KV_KEYS_FROM)
                    .bind(plugin)
                    .bind(prefix)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(keys)
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StateError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Takes this process's turn to write, then SQLite's write lock: `BEGIN
    /// IMMEDIATE` locks at the start, so what a transaction reads cannot
    /// change before it writes (a deferred one would find out only at its
    /// first write, too late for the decision already taken).
    async fn begin_write(&self) -> Result<WriteTransaction<'_>, StateError> {
        let turn = self.write_gate.lock().await;
        let transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTransaction {
            transaction,
            _turn: turn,
        })
    }
}

/// The end of a crash-interrupted call. A creation that never finished left
/// at most half-made resources, which the platform's orphan mitigation
/// (a delete of a `Failed` resource) cleans up; an interrupted update or
/// deletion leaves the resource as it was.
fn fail_interrupted(
    operation: &mut OperationRecord,
    status: &mut ResourceStatus,
    description: &str,
) {
    if matches!(
        operation.kind,
        OperationKind::Provision | OperationKind::Bind
    ) {
        *status = ResourceStatus::Failed;
    }
    operation.phase = OperationPhase::Failed;
    operation.description = Some(description.to_owned());
}

/// The smallest string above every string that starts with `prefix`, or
/// `None` when there is none (empty prefix, or only `char::MAX`s). UTF-8
/// byte order, which SQLite's BINARY collation uses, is code point order,
/// so bumping the last code point that can be bumped is exact.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}
