//! Durable broker state: instances, bindings (with their credentials) and
//! the operations on them, in embedded SQLite or in PostgreSQL. Every state
//! change the broker acknowledges to the platform is committed here first.
//!
//! Both backends run the same statements (`$N` placeholders), through
//! sqlx's `Any` driver, except SQLite's transitions: those run through the
//! batch writer (`writer`, rusqlite, binding `$N` by name). Writes are
//! serialized across every process on the store: SQLite's single writer
//! (`BEGIN IMMEDIATE`), a transaction-scoped advisory lock on PostgreSQL.
//! So replicas (broker processes) sharing a PostgreSQL store decide
//! check-then-act transitions one at a time, as one broker would.
//!
//! Credentials are stored encrypted (see [`crate::secrets`]) and never
//! without a key: with none configured, the store opens only if it holds no
//! credentials, and refuses to create bindings.
//!
//! This file is the store itself: opening either backend, the write
//! transaction, and reading and transitioning instances and bindings. The
//! rest of [`StateStore`] lives beside it, one job per file:
//! - `batch`: group commit, the write gate through which concurrent
//!   transitions share one transaction and one durable commit;
//! - `step`: one transition's reads and writes in a batch, on either
//!   backend; `writer`: SQLite's batch writer, whose statements run on the
//!   step's own thread;
//! - `kv`: the plugins' private key-value store (`kv` capability);
//! - `replicas`: serving as one replica among several, and failing the
//!   operations a crashed broker left under way;
//! - `keys`: the encryption keys of the stored credentials (checked at
//!   open, rotated by `wasm-broker rotate-key`);
//! - [`inventory`]: what operators ask outside the OSB flow;
//! - [`served`]: which plugin version served each service last, and the
//!   instances each service still has (retired plugins);
//! - `tables`: the SQL and the stored documents behind all of it.

mod batch;
pub mod inventory;
mod keys;
mod kv;
mod owners;
mod replicas;
pub mod served;
mod step;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

pub use kv::{KvQuota, KvWrite};

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, ConnectOptions, Executor, Transaction};

use crate::config::{StateBackend, StateConfig};
use crate::lifecycle::{OperationRecord, ResourceStatus};
use crate::model::{Binding, BindingResult, Instance};
use crate::secrets::{Keyring, SecretsError};

use tables::history::{OperationMark, ResourceKind};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Reads run in parallel (WAL readers never wait for the writer); writes
/// take the store's single write lock one at a time anyway.
const MAX_CONNECTIONS: u32 = 8;

/// SQLite settings the `Any` driver's URL cannot carry. In WAL mode,
/// NORMAL syncs only at checkpoints: a kill -9 loses nothing, but a power
/// loss or kernel crash can drop the latest commits. Those are answers the
/// platform already has (201 with credentials, 202 with an operation id);
/// forgetting them leaves databases and users nobody will ever delete. FULL
/// syncs the WAL at every commit, and a commit is what we acknowledge.
/// (Foreign keys on and a 5 s busy timeout, for an operator's `sqlite3`
/// shell or a backup holding the lock, are sqlx's defaults.)
const SQLITE_SESSION: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;";

/// The PostgreSQL advisory lock every write transaction holds: the one
/// writer at a time that SQLite has by design. ("wasm-brk" in ASCII.)
const POSTGRES_WRITE_LOCK: i64 = 0x7761_736d_2d62_726b;

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
    #[error("[state] backend = \"postgres\" needs the database URL in {url_env} or [state] url")]
    NoUrl { url_env: String },
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
    /// The shared commit of a batch of state changes failed: none of them
    /// was stored.
    #[error("state store: committing the change failed: {0}")]
    BatchCommit(String),
    #[error("state store: the write batch was lost while a change ran in it")]
    BatchLost,
    /// A change of the batch failed and could not be undone alone (or
    /// SQLite rolled the batch back itself), so the whole batch was rolled
    /// back: none of its changes was stored.
    #[error("state store: a change failed and its whole write batch was rolled back")]
    BatchPoisoned,
    #[error("state store: {0}")]
    Writer(#[from] rusqlite::Error),
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
    pool: AnyPool,
    backend: StateBackend,
    keyring: Arc<Keyring>,
    /// Writers of this process queue here, in order, instead of in SQLite's
    /// busy handler, which polls with sleeps of up to 100 ms and lets an
    /// unlucky writer starve past the busy timeout under load, or in
    /// PostgreSQL's lock queue, each holding a pooled connection. The
    /// store's own lock still guards against writers in other processes.
    /// Transitions share commits through it (`batch`: group commit).
    write_gate: batch::WriteGate,
    /// This process among the replicas sharing the store: recorded on the
    /// operations whose plugin call it makes.
    replica: Arc<str>,
    replica_lease: Duration,
}

/// An open write transaction and this process's turn to write. Field order
/// matters: the transaction ends (rollback on drop) before the turn passes.
struct WriteTransaction {
    transaction: Transaction<'static, Any>,
    _turn: batch::ExclusiveTurn,
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

    async fn open_with_keys(config: &StateConfig, keyring: Keyring) -> Result<Self, StateError> {
        sqlx::any::install_default_drivers();
        let (pool, target) = match config.backend {
            StateBackend::Sqlite => {
                let pool = open_sqlite(config).await?;
                (
                    pool,
                    batch::Target::Sqlite(writer::WriterSource::new(&config.path)),
                )
            }
            StateBackend::Postgres => {
                let pool = open_postgres(config).await?;
                (pool.clone(), batch::Target::Postgres(pool))
            }
        };
        let store = Self {
            pool,
            backend: config.backend,
            keyring: Arc::new(keyring),
            write_gate: batch::WriteGate::new(target)?,
            replica: Arc::from(replicas::new_replica_id()),
            replica_lease: Duration::from_secs(config.replica_lease_seconds),
        };
        store.check_credentials_readable().await?;
        Ok(store)
    }

    /// Waits for the connections to finish and closes them (so SQLite's WAL
    /// is checkpointed into the database file at shutdown), and ends this
    /// replica's lease keeping.
    pub async fn close(&self) {
        self.write_gate.close().await;
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
        self.instance_step(id, false, |current, _| decide(current))
            .await
    }

    /// Like `transition_instance`; `decide` also sees the instance's
    /// bindings that are not deleted, oldest first, read in the same step
    /// (a deprovision revokes them: read here, they cost no read of their
    /// own, which on SQLite would be a hand-off to a pool connection).
    pub async fn transition_instance_and_bindings<R>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<InstanceRecord>, Vec<BindingRecord>) -> Transition<InstanceRecord, R>
        + Send,
    ) -> Result<R, StateError> {
        self.instance_step(id, true, decide).await
    }

    async fn instance_step<R>(
        &self,
        id: &str,
        with_bindings: bool,
        decide: impl FnOnce(Option<InstanceRecord>, Vec<BindingRecord>) -> Transition<InstanceRecord, R>
        + Send,
    ) -> Result<R, StateError> {
        let mut turn = self.write_gate.step().await?;
        // If the step fails or is cancelled, only its own changes leave the
        // batch (see `step::Step`).
        let mut step = turn.begin_step().await?;
        let current = step.read_instance(id).await?;
        let bindings = if with_bindings {
            step.read_live_bindings(&self.keyring, id).await?
        } else {
            Vec::new()
        };
        let before = OperationMark::of(
            current
                .as_ref()
                .and_then(|record| record.operation.as_ref()),
        );
        let answer = match decide(current, bindings) {
            Transition::Keep(answer) => {
                // Nothing written: released, not rolled back (a rollback to a
                // savepoint leaves it on the batch's stack).
                step.done().await?;
                answer
            }
            Transition::Write(record, answer) => {
                debug_assert_eq!(
                    record.instance.id, id,
                    "a transition must not move a record to another id"
                );
                step.write_instance(&self.replica, &record).await?;
                step.append_history(ResourceKind::Instance, id, &before, &record.operation)
                    .await?;
                step.done().await?;
                answer
            }
        };
        // Even a decision to keep the record waits: it may rest on what an
        // earlier step of the batch wrote.
        turn.durable().await?;
        Ok(answer)
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
        let mut turn = self.write_gate.step().await?;
        let mut step = turn.begin_step().await?;
        let instance = step.read_instance(instance_id).await?;
        let current = step.read_binding(&self.keyring, id).await?;
        let before = OperationMark::of(
            current
                .as_ref()
                .and_then(|record| record.operation.as_ref()),
        );
        let answer = match decide(instance, current) {
            Transition::Keep(answer) => {
                // Nothing written: released, not rolled back (a rollback to a
                // savepoint leaves it on the batch's stack).
                step.done().await?;
                answer
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
                step.write_binding(&self.keyring, &self.replica, &record)
                    .await?;
                step.append_history(ResourceKind::Binding, id, &before, &record.operation)
                    .await?;
                step.done().await?;
                answer
            }
        };
        turn.durable().await?;
        Ok(answer)
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StateError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Takes this process's turn to write (committing the open batch of
    /// transitions first), then the store's write lock, for the whole
    /// transaction: what it reads cannot change before it writes.
    async fn begin_write(&self) -> Result<WriteTransaction, StateError> {
        let turn = self.write_gate.exclusive().await;
        let transaction = batch::begin(&self.pool, self.backend).await?;
        Ok(WriteTransaction {
            transaction,
            _turn: turn,
        })
    }
}

async fn open_sqlite(config: &StateConfig) -> Result<AnyPool, StateError> {
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
    let url = SqliteConnectOptions::new()
        .filename(&config.path)
        .create_if_missing(true)
        .to_url_lossy();
    let pool = AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .after_connect(|connection, _| {
            Box::pin(async move {
                connection.execute(SQLITE_SESSION).await?;
                Ok(())
            })
        })
        .connect_with(AnyConnectOptions::from_url(&url)?)
        .await?;
    SQLITE_MIGRATIONS.run(&pool).await?;
    Ok(pool)
}

async fn open_postgres(config: &StateConfig) -> Result<AnyPool, StateError> {
    let url = config.url.as_ref().ok_or_else(|| StateError::NoUrl {
        url_env: config.url_env.clone(),
    })?;
    let options: AnyConnectOptions = url.expose_secret().parse()?;
    tracing::info!(
        database = %redacted(&options.database_url),
        "opening the PostgreSQL state store"
    );
    let pool = AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .connect_with(options)
        .await?;
    // sqlx holds an advisory lock while migrating: replicas starting
    // together migrate one after the other.
    POSTGRES_MIGRATIONS.run(&pool).await?;
    Ok(pool)
}

/// A database URL fit for logs: no password, no query (which may hold one).
fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}
