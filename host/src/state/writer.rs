//! SQLite's batch writer: the connection the transitions' batches (see
//! `batch`) write through, driven with rusqlite on the calling thread.
//!
//! Why not sqlx here: sqlx-sqlite runs every statement on a worker thread
//! of the connection's own and hands the statement there and its result
//! back. On this 2-core VM each hand-off costs about 60 us of CPU
//! (bench/README.md, "Issue 14"), and a transition took five (savepoint,
//! read, write, history, release): most of a state change's cost, and what
//! kept durable writes far below the disk's fsync rate. Here a step's
//! statements run on the task's own thread, without a hand-off.
//!
//! They do not block that thread for long: they run inside the batch's
//! transaction, which already holds SQLite's write lock, so no statement
//! waits for another process, and they touch a few pages of a small
//! working set (the connection's cache, or the OS's). What can wait does
//! not hold up the worker's other tasks: a batch's commit (the WAL's fsync)
//! runs on tokio's blocking pool, or, a lone writer's, on its own thread
//! once `block_in_place` has moved the worker's other tasks away (see
//! [`CommitOn`]); taking the write lock (`BEGIN IMMEDIATE`) when another
//! process holds it (an operator's `sqlite3` shell or a backup) waits on
//! the blocking pool, up to the busy timeout. When the lock is free, as it
//! is unless another process writes, it is taken on the task's thread
//! without waiting: a lone writer's change costs no hand-off at all.
//!
//! Reads outside transitions, and writes outside batches (kv, leases,
//! keys, operators' commands), stay on the sqlx pool: they take the write
//! gate exclusively, after the open batch has committed, so this
//! connection never holds the lock they need.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ToSql, named_params};

use super::tables::history::{self, Entry};
use super::tables::{self, Column, Columns, StoredRow};
use super::{BindingRecord, InstanceRecord, StateError};
use crate::lifecycle::ResourceStatus;
use crate::secrets::Keyring;

/// How long taking the write lock waits for another process, on the
/// blocking pool (sqlx's default, which the pool's connections use: an
/// operator's `sqlite3` shell or a backup may hold the lock that long).
/// Otherwise the writer never waits: every other statement runs with the
/// lock held, and a commit's checkpoint is passive.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The statements a step runs, kept prepared (SQLite compiles a statement
/// in about as long as it takes to run one of these).
const STATEMENT_CACHE: usize = 16;

/// Where a commit's fsync waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommitOn {
    /// A thread of tokio's blocking pool: the committing task's worker goes
    /// on polling other tasks.
    BlockingPool,
    /// The committing task's own thread, which tokio's `block_in_place`
    /// first relieves of its other tasks: for a lone writer, whose commit
    /// nobody else waits for. The hand-off to the blocking pool and back
    /// (two thread wake-ups) cost a lone change about a quarter of its CPU
    /// (bench/README.md, "Issue 14": 241 to 265 us a change, 185 us here).
    /// On a current-thread runtime (tests), the blocking pool after all.
    ThisThread,
}

/// Commits the open transaction; after a failure none is left open.
fn commit(connection: &Connection) -> rusqlite::Result<()> {
    let committed = connection.execute_batch("COMMIT");
    if committed.is_err() {
        // A failed COMMIT may leave the transaction open (SQLite rolls back
        // by itself only after some errors): the next batch must start
        // clean.
        let _ = connection.execute_batch("ROLLBACK");
    }
    committed
}

/// The writer's connection. Outside a batch it holds no transaction.
pub(super) struct Writer {
    connection: Connection,
    /// A step's savepoint could not be rolled back: the batch may hold half
    /// a step, so it must not be committed.
    poisoned: bool,
}

/// Where a writer comes from (and is opened again after one was lost).
#[derive(Debug, Clone)]
pub(super) struct WriterSource {
    path: PathBuf,
}

impl WriterSource {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// Opens a writer on the store's database (created and migrated by the
    /// sqlx pool already), with the session settings of the pool's
    /// connections: WAL, a sync at every commit (see `SQLITE_SESSION`),
    /// foreign keys.
    pub(super) fn open(&self) -> Result<Writer, StateError> {
        let connection = Connection::open(&self.path)?;
        connection.busy_timeout(Duration::ZERO)?;
        connection.execute_batch(super::SQLITE_SESSION)?;
        connection.pragma_update(None, "foreign_keys", true)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Writer {
            connection,
            poisoned: false,
        })
    }
}

impl Writer {
    /// Takes SQLite's write lock (`BEGIN IMMEDIATE`): here if it is free,
    /// else on the blocking pool, waiting up to [`BUSY_TIMEOUT`]. Returns
    /// the writer (unless it was lost), with the outcome.
    pub(super) async fn begin(self) -> (Option<Self>, Result<(), StateError>) {
        match self.connection.execute_batch("BEGIN IMMEDIATE") {
            Err(error) if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                self.on_blocking_pool(|connection| {
                    connection.busy_timeout(BUSY_TIMEOUT)?;
                    let begun = connection.execute_batch("BEGIN IMMEDIATE");
                    // Not `?`: a begun transaction must be reported begun.
                    // (Setting a timeout does not fail on an open handle.)
                    let _ = connection.busy_timeout(Duration::ZERO);
                    begun
                })
                .await
            }
            begun => (Some(self), begun.map_err(StateError::from)),
        }
    }

    /// Commits the batch (the WAL's fsync), or rolls it back if a step
    /// left it poisoned. `place` says on which thread the fsync waits.
    pub(super) async fn commit(self, place: CommitOn) -> (Option<Self>, Result<(), StateError>) {
        if self.poisoned {
            let mut writer = self;
            writer.rollback();
            return (Some(writer), Err(StateError::BatchPoisoned));
        }
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if place == CommitOn::ThisThread && multi_thread {
            let committed = tokio::task::block_in_place(|| commit(&self.connection));
            return (Some(self), committed.map_err(StateError::from));
        }
        self.on_blocking_pool(commit).await
    }

    /// Ends the open transaction without keeping anything (no fsync in WAL
    /// mode: it only drops what this connection wrote).
    pub(super) fn rollback(&mut self) {
        if let Err(error) = self.connection.execute_batch("ROLLBACK") {
            // Nothing was open (a failed BEGIN): nothing to undo.
            tracing::debug!(%error, "rolling back the write batch");
        }
        self.poisoned = false;
    }

    /// Runs `work` on tokio's blocking pool. The writer is lost (`None`) if
    /// that task could not finish (a panic, or the runtime stopping): its
    /// connection is closed, which rolls back what it held.
    async fn on_blocking_pool(
        self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> (Option<Self>, Result<(), StateError>) {
        let task = tokio::task::spawn_blocking(move || {
            let outcome = work(&self.connection);
            (self, outcome)
        });
        match task.await {
            Ok((writer, outcome)) => (Some(writer), outcome.map_err(StateError::from)),
            Err(_) => (None, Err(StateError::BatchLost)),
        }
    }

    /// Runs `sql` on the connection behind the batch's back.
    #[cfg(test)]
    pub(super) fn execute_raw(&self, sql: &str) -> rusqlite::Result<()> {
        self.connection.execute_batch(sql)
    }

    /// `journal_mode`, `synchronous` and `foreign_keys` of the connection.
    #[cfg(test)]
    pub(super) fn settings(&self) -> rusqlite::Result<(String, i64, i64)> {
        let pragma = |name: &str| format!("PRAGMA {name}");
        Ok((
            self.connection
                .query_row(&pragma("journal_mode"), [], |row| row.get(0))?,
            self.connection
                .query_row(&pragma("synchronous"), [], |row| row.get(0))?,
            self.connection
                .query_row(&pragma("foreign_keys"), [], |row| row.get(0))?,
        ))
    }

    /// A step in the open batch: a savepoint, rolled back to unless
    /// [`WriterStep::done`].
    pub(super) fn step(&mut self) -> Result<WriterStep<'_>, StateError> {
        self.refuse_if_rolled_back()?;
        self.connection
            .prepare_cached("SAVEPOINT step")?
            .execute([])?;
        Ok(WriterStep {
            writer: self,
            savepoint: true,
        })
    }

    /// The step that opened the batch, run in its transaction itself: with
    /// nothing else in the batch yet, a failure rolls the batch back whole
    /// (`batch` does, see `StepTurn`), so the savepoint and its release, two
    /// statements of a lone writer's seven, are not needed.
    pub(super) fn opening_step(&mut self) -> Result<WriterStep<'_>, StateError> {
        self.refuse_if_rolled_back()?;
        Ok(WriterStep {
            writer: self,
            savepoint: false,
        })
    }

    fn refuse_if_rolled_back(&mut self) -> Result<(), StateError> {
        if self.connection.is_autocommit() {
            // SQLite rolled the whole batch back after an error (it does
            // for a full disk, an I/O error): a savepoint now would start a
            // transaction of its own, committed at its release.
            self.poisoned = true;
            return Err(StateError::BatchPoisoned);
        }
        Ok(())
    }
}

/// One transition's step, in a savepoint of the batch (or, the batch's
/// opening step, in its transaction).
pub(super) struct WriterStep<'w> {
    writer: &'w mut Writer,
    /// The step's savepoint is open: rolled back to if the step is dropped.
    savepoint: bool,
}

impl WriterStep<'_> {
    pub(super) fn read_instance(&mut self, id: &str) -> Result<Option<InstanceRecord>, StateError> {
        let connection = &self.writer.connection;
        let mut statement = connection.prepare_cached(tables::SELECT_INSTANCE)?;
        let mut rows = statement.query(named_params! { "$1": id })?;
        rows.next()?.map(tables::decode_instance).transpose()
    }

    pub(super) fn read_binding(
        &mut self,
        keyring: &Keyring,
        id: &str,
    ) -> Result<Option<BindingRecord>, StateError> {
        let connection = &self.writer.connection;
        let mut statement = connection.prepare_cached(tables::SELECT_BINDING)?;
        let mut rows = statement.query(named_params! { "$1": id })?;
        rows.next()?
            .map(|row| tables::decode_binding(row, keyring))
            .transpose()
    }

    pub(super) fn read_live_bindings(
        &mut self,
        keyring: &Keyring,
        instance_id: &str,
    ) -> Result<Vec<BindingRecord>, StateError> {
        let connection = &self.writer.connection;
        let mut statement = connection.prepare_cached(tables::SELECT_LIVE_BINDINGS)?;
        let mut rows = statement.query(named_params! {
            "$1": instance_id,
            "$2": ResourceStatus::Deleted.as_str(),
        })?;
        let mut live = Vec::new();
        while let Some(row) = rows.next()? {
            live.push(tables::decode_binding(row, keyring)?);
        }
        Ok(live)
    }

    pub(super) fn write_instance(
        &mut self,
        replica: &str,
        record: &InstanceRecord,
    ) -> Result<(), StateError> {
        let columns = tables::instance_columns(replica, record)?;
        self.execute_columns(tables::UPSERT_INSTANCE, &columns)
    }

    pub(super) fn write_binding(
        &mut self,
        keyring: &Keyring,
        replica: &str,
        record: &BindingRecord,
    ) -> Result<(), StateError> {
        let columns = tables::binding_columns(keyring, replica, record)?;
        self.execute_columns(tables::UPSERT_BINDING, &columns)
    }

    pub(super) fn append_history(&mut self, entry: Option<Entry<'_>>) -> Result<(), StateError> {
        let Some(entry) = entry else {
            return Ok(());
        };
        let values = entry.values();
        self.execute(
            history::INSERT_HISTORY,
            values.iter().map(|value| value as &dyn ToSql),
        )
    }

    fn execute_columns(
        &mut self,
        statement: &str,
        columns: &Columns<'_>,
    ) -> Result<(), StateError> {
        let values = columns.values.iter().map(|value| match value {
            Column::Text(text) => text as &dyn ToSql,
            Column::Bytes(bytes) => bytes,
        });
        self.execute(statement, values)
    }

    /// Runs `statement` with `values` bound to `$1`, `$2`... by name:
    /// SQLite numbers `$N` parameters in order of appearance, not by N (the
    /// upserts use `$9` before `$8`), so binding by position would swap them.
    fn execute<'v>(
        &mut self,
        statement: &str,
        values: impl Iterator<Item = &'v dyn ToSql>,
    ) -> Result<(), StateError> {
        let mut statement = self.writer.connection.prepare_cached(statement)?;
        let parameters: Vec<(&str, &dyn ToSql)> = PARAMETER_NAMES.into_iter().zip(values).collect();
        statement.execute(parameters.as_slice())?;
        Ok(())
    }

    /// The step succeeded: its savepoint is released into the batch.
    pub(super) fn done(mut self) -> Result<(), StateError> {
        if self.savepoint {
            self.writer
                .connection
                .prepare_cached("RELEASE step")?
                .execute([])?;
            self.savepoint = false;
        }
        Ok(())
    }
}

/// `$1` to `$9`, as the shared statements name their parameters.
const PARAMETER_NAMES: [&str; 9] = ["$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9"];

impl Drop for WriterStep<'_> {
    /// A step that failed, panicked or was cancelled leaves nothing in the
    /// batch. Should even that fail (SQLite may have rolled the whole batch
    /// back already), the batch is not committed.
    fn drop(&mut self) {
        if self.savepoint {
            let undone = self
                .writer
                .connection
                .execute_batch("ROLLBACK TO step; RELEASE step");
            if let Err(error) = undone {
                tracing::error!(%error, "a failed state change could not be undone: its batch is rolled back");
                self.writer.poisoned = true;
            }
        }
    }
}

impl StoredRow for rusqlite::Row<'_> {
    fn text(&self, column: &str) -> Result<String, String> {
        self.get(column).map_err(|error| error.to_string())
    }

    fn optional_text(&self, column: &str) -> Result<Option<String>, String> {
        self.get(column).map_err(|error| error.to_string())
    }

    fn optional_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, String> {
        self.get(column).map_err(|error| error.to_string())
    }
}
