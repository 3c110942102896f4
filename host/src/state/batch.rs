//! Group commit: concurrent state changes share one durable commit.
//!
//! Each instance or binding transition used to be a transaction of its
//! own, and so one fsync of SQLite's WAL (`synchronous = FULL`) or of
//! PostgreSQL's log: with 64 platform requests at once, the disk's fsync
//! rate was the broker's write rate. Now the transitions of this process
//! take turns at one write gate (a FIFO `tokio::sync::Mutex`) over one
//! open transaction, the *batch*:
//!
//! 1. A transition takes the gate, opens the batch if none is open (`BEGIN
//!    IMMEDIATE`, or PostgreSQL's advisory write lock), and runs its reads,
//!    decision and writes inside a savepoint of it. A failing (or
//!    cancelled) step is rolled back to its savepoint; the batch's other
//!    steps stay.
//! 2. It leaves the gate with the batch open, and a commit task queues for
//!    the gate behind every transition that arrived meanwhile: those run
//!    their steps in the same batch.
//! 3. The first of the batch's commit tasks to get the gate commits it
//!    (one commit, one fsync) and publishes the outcome; the later ones
//!    find the batch gone. Each transition answers only once the batch
//!    holding its step is durable, or fails if that commit failed.
//!
//! So nothing is acknowledged before it is durable (`synchronous` stays
//! FULL, PostgreSQL's synchronous commit stays on), and a crash loses only
//! steps whose batch had not committed, none of which was answered. Each
//! step reads what the batch's earlier steps wrote: the transitions are
//! serialized in gate order, as before; waiting for the batch's commit
//! before answering covers a decision that read an earlier step's write.
//!
//! On SQLite a batch is a transaction of the batch writer (`writer`, on
//! rusqlite: a step's statements run on its task's thread); on PostgreSQL,
//! of a pooled sqlx connection, whose every statement is a network round
//! trip anyway.
//!
//! Two shortcuts keep a lone writer cheap: the step that opens a batch
//! runs in the batch's transaction itself, no savepoint (if it fails, the
//! batch holds nothing else and is rolled back whole), and a
//! batch of one step with no other transition waiting at the gate is
//! committed by its step directly, without a task, waiting for its fsync
//! on its own thread (`writer::CommitOn`).
//!
//! Otherwise the commit runs in a task of its own, so a request dropped by
//! its client cannot abandon a commit other requests wait for. Writes outside the
//! transitions (kv, leases, key rotation, operators' commands) take the gate
//! exclusively: they commit an open batch first.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::{Acquire as _, Any, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::step::Step;
use super::writer::{CommitOn, Writer, WriterSource};
use super::{POSTGRES_WRITE_LOCK, StateError};
use crate::config::StateBackend;

/// At most this many steps share a commit: a batch's first step waits for
/// the others, so this bounds what batching may add to one request's
/// latency (the bench measured about 170 us of CPU per step with 64
/// writers on SQLite: some 11 ms for a full batch on one core).
pub(super) const MAX_BATCH_STEPS: usize = 64;

/// How a batch's commit ended, as each of its steps sees it.
type Outcome = Option<Result<(), Arc<str>>>;

/// Where the batches of a store are written.
#[derive(Clone)]
pub(super) enum Target {
    Sqlite(WriterSource),
    Postgres(AnyPool),
}

/// A batch's transaction.
enum Open {
    /// The batch writer, in `BEGIN IMMEDIATE`.
    Sqlite(Writer),
    /// A pooled connection holding the advisory write lock.
    Postgres(Transaction<'static, Any>),
}

/// One open transaction holding the steps of several transitions.
struct Batch {
    id: u64,
    transaction: Open,
    steps: usize,
    outcome: watch::Sender<Outcome>,
}

impl Batch {
    /// Commits, counts and tells every step's transition how it went.
    /// Returns the steps committed (none if the commit failed), and the
    /// batch writer for the next batch (SQLite; none if it was lost).
    async fn commit(self, place: CommitOn) -> (u64, Option<Writer>) {
        let (writer, committed) = match self.transaction {
            Open::Sqlite(writer) => writer.commit(place).await,
            Open::Postgres(transaction) => {
                (None, transaction.commit().await.map_err(StateError::from))
            }
        };
        let steps = self.steps as u64;
        if committed.is_ok() {
            metrics::counter!("state_commits_total").increment(1);
            metrics::counter!("state_changes_total").increment(steps);
        }
        let done = if committed.is_ok() { steps } else { 0 };
        self.outcome.send_replace(Some(
            committed.map_err(|error| Arc::from(error.to_string().as_str())),
        ));
        (done, writer)
    }
}

struct Gate {
    open: Option<Batch>,
    /// SQLite's batch writer while no batch is open (none after one was
    /// lost: it is opened again for the next batch).
    idle: Option<Writer>,
    next_id: u64,
    /// Batches and the steps in them committed so far (the metrics count
    /// them too; these are for this process's tests).
    committed: (u64, u64),
}

impl Gate {
    /// Commits the open batch, if any, in a task of its own (so that this
    /// caller going away cannot abandon it) and waits for it.
    async fn commit_open(&mut self) {
        if let Some(batch) = self.open.take() {
            // A failed join is the runtime shutting down: the batch's
            // transaction was dropped (rolled back) and its steps were told
            // (their outcome channel closed).
            if let Ok((steps, writer)) = tokio::spawn(batch.commit(CommitOn::BlockingPool)).await {
                self.settle(steps, writer);
            }
        }
    }

    /// A batch's commit ended: counts it and keeps the writer.
    fn settle(&mut self, steps: u64, writer: Option<Writer>) {
        self.count(steps);
        self.idle = writer;
    }

    /// Rolls back the open batch (its opening step did not finish).
    fn abandon_open(&mut self) {
        match self.open.take().map(|batch| batch.transaction) {
            Some(Open::Sqlite(mut writer)) => {
                writer.rollback();
                self.idle = Some(writer);
            }
            // Dropping the transaction rolls it back.
            Some(Open::Postgres(_)) | None => {}
        }
    }

    /// Opens a batch's transaction, taking the store's write lock.
    async fn begin(&mut self, target: &Target) -> Result<Open, StateError> {
        match target {
            Target::Sqlite(source) => {
                let writer = match self.idle.take() {
                    Some(writer) => writer,
                    None => source.open()?,
                };
                let (writer, begun) = writer.begin().await;
                match (begun, writer) {
                    (Ok(()), Some(writer)) => Ok(Open::Sqlite(writer)),
                    (Ok(()), None) => Err(StateError::BatchLost),
                    (Err(error), writer) => {
                        self.idle = writer;
                        Err(error)
                    }
                }
            }
            Target::Postgres(pool) => {
                Ok(Open::Postgres(begin(pool, StateBackend::Postgres).await?))
            }
        }
    }

    fn count(&mut self, steps: u64) {
        if steps > 0 {
            self.committed.0 += 1;
            self.committed.1 += steps;
        }
    }
}

/// This process's one way to write to the store. Cheap to clone.
#[derive(Clone)]
pub(super) struct WriteGate {
    gate: Arc<Mutex<Gate>>,
    target: Target,
    /// Transitions waiting for the gate: while none is, a batch of one
    /// step is committed by that step directly.
    waiting: Arc<AtomicUsize>,
}

/// Counts a transition waiting at the gate, until it has it (or gives up).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WriteGate {
    /// The gate of a store whose batches `target` writes. A SQLite writer
    /// is opened now, so that a store that cannot be written fails to open.
    pub(super) fn new(target: Target) -> Result<Self, StateError> {
        let idle = match &target {
            Target::Sqlite(source) => Some(source.open()?),
            Target::Postgres(_) => None,
        };
        Ok(Self {
            gate: Arc::new(Mutex::new(Gate {
                open: None,
                idle,
                next_id: 0,
                committed: (0, 0),
            })),
            target,
            waiting: Arc::default(),
        })
    }

    /// The gate to oneself, with no batch open: for writes of their own
    /// (a transaction, or single statements on the pool).
    pub(super) async fn exclusive(&self) -> ExclusiveTurn {
        let mut gate = self.gate.clone().lock_owned().await;
        gate.commit_open().await;
        ExclusiveTurn { _gate: gate }
    }

    /// Commits the open batch and closes the batch writer: with the pool's
    /// connections closed too, SQLite checkpoints the WAL into the
    /// database file. (A later transition would open a writer again.)
    pub(super) async fn close(&self) {
        let mut gate = self.gate.lock().await;
        gate.commit_open().await;
        gate.idle = None;
    }

    /// Batches committed so far, and the steps they held.
    #[cfg(test)]
    pub(super) async fn committed(&self) -> (u64, u64) {
        self.gate.lock().await.committed
    }

    /// A turn to run one transition's step in the open batch (opening one
    /// if needed). Run the step in [`StepTurn::begin_step`], then wait for
    /// [`StepTurn::durable`].
    pub(super) async fn step(&self) -> Result<StepTurn, StateError> {
        let mut gate = {
            let _waiting = Waiting::start(&self.waiting);
            self.gate.clone().lock_owned().await
        };
        if gate
            .open
            .as_ref()
            .is_some_and(|batch| batch.steps >= MAX_BATCH_STEPS)
        {
            gate.commit_open().await;
        }
        let opener = gate.open.is_none();
        let mut batch = match gate.open.take() {
            Some(batch) => batch,
            None => {
                let transaction = gate.begin(&self.target).await?;
                gate.next_id = gate.next_id.wrapping_add(1);
                Batch {
                    id: gate.next_id,
                    transaction,
                    steps: 0,
                    outcome: watch::channel(None).0,
                }
            }
        };
        batch.steps += 1;
        let outcome = batch.outcome.subscribe();
        let batch_id = batch.id;
        gate.open = Some(batch);
        Ok(StepTurn {
            gate: Some(gate),
            batch_id,
            outcome,
            opener,
            finished: false,
            waiting: self.waiting.clone(),
        })
    }
}

/// Opens a write transaction holding the store's write lock from its
/// start. SQLite: `BEGIN IMMEDIATE` locks at once (a deferred transaction
/// would find out only at its first write, after the decision was taken
/// on what it read). PostgreSQL: an advisory lock held until commit or
/// rollback, taken before the first read; at read committed, each read
/// then sees every transaction committed before it.
pub(super) async fn begin(
    pool: &AnyPool,
    backend: StateBackend,
) -> Result<Transaction<'static, Any>, StateError> {
    Ok(match backend {
        StateBackend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        StateBackend::Postgres => {
            let mut transaction = pool.begin().await?;
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(POSTGRES_WRITE_LOCK)
                .execute(&mut *transaction)
                .await?;
            transaction
        }
    })
}

/// The gate, held for writes outside the batches.
pub(super) struct ExclusiveTurn {
    _gate: OwnedMutexGuard<Gate>,
}

/// One transition's place in a batch, holding the gate until
/// [`StepTurn::durable`] (or until dropped, after a failed or cancelled
/// step: then the batch is rolled back if that step opened it, and its
/// commit queued otherwise, so a batch never stays open holding the
/// store's write lock).
pub(super) struct StepTurn {
    gate: Option<OwnedMutexGuard<Gate>>,
    batch_id: u64,
    outcome: watch::Receiver<Outcome>,
    /// This step opened the batch, and runs in its transaction directly.
    opener: bool,
    finished: bool,
    waiting: Arc<AtomicUsize>,
}

impl StepTurn {
    /// Where the step runs. If the step fails or is cancelled, only its
    /// own changes leave the batch: a savepoint is rolled back to when
    /// dropped (sqlx), and a batch whose opening step did not finish is
    /// rolled back whole.
    pub(super) async fn begin_step(&mut self) -> Result<Step<'_>, StateError> {
        let opener = self.opener;
        let transaction = self
            .gate
            .as_mut()
            .and_then(|gate| gate.open.as_mut())
            .map(|batch| &mut batch.transaction)
            .ok_or(StateError::BatchLost)?;
        Ok(match transaction {
            Open::Sqlite(writer) => Step::Writer(if opener {
                writer.opening_step()?
            } else {
                writer.step()?
            }),
            Open::Postgres(transaction) => {
                if opener {
                    Step::Whole(transaction)
                } else {
                    Step::Savepoint(transaction.begin().await?)
                }
            }
        })
    }

    /// The step is done: returns once the batch holding it is committed,
    /// or an error if that commit failed or was abandoned (the runtime
    /// shutting down).
    pub(super) async fn durable(mut self) -> Result<(), StateError> {
        self.finished = true;
        let alone = self
            .gate
            .as_ref()
            .and_then(|gate| gate.open.as_ref())
            .is_some_and(|batch| batch.id == self.batch_id && batch.steps == 1)
            && self.waiting.load(Ordering::SeqCst) == 0;
        match self.gate.take() {
            // Nobody to share the commit with: commit it here. (If this
            // request is dropped meanwhile, nobody else waits for it.)
            Some(mut gate) if alone => {
                if let Some(batch) = gate.open.take() {
                    let (steps, writer) = batch.commit(CommitOn::ThisThread).await;
                    gate.settle(steps, writer);
                }
            }
            Some(gate) => self.queue_commit(gate),
            None => {}
        }
        Durable {
            outcome: self.outcome.clone(),
        }
        .wait()
        .await
    }

    /// Leaves the gate and queues behind whoever waits there now, then
    /// commits the batch if no step before has.
    fn queue_commit(&self, gate: OwnedMutexGuard<Gate>) {
        let shared = OwnedMutexGuard::mutex(&gate).clone();
        let batch_id = self.batch_id;
        // Outside a runtime (only while one shuts down) the transaction
        // will be dropped, i.e. rolled back, and the waiters told.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Spawned before the gate is released, not after: tokio runs the
        // task a worker woke or spawned last next (its LIFO slot), pushing
        // the previous one to the back of the run queue. Released first,
        // the gate's next holder was woken into that slot and then pushed
        // behind every queued request by this spawn, holding the gate idle
        // meanwhile. In this order the next holder runs next, and this
        // commit after the queue, when more steps have joined its batch.
        // (The pairs' rate did not move beyond the bench's noise: under
        // HTTP load a change still holds the gate about 93 us against 60
        // in process; bench/README.md, "Issue 14", 2026-12-07.)
        runtime.spawn(async move {
            let mut gate = shared.lock().await;
            if gate.open.as_ref().is_some_and(|batch| batch.id == batch_id) {
                gate.commit_open().await;
            }
        });
        drop(gate);
    }
}

impl Drop for StepTurn {
    fn drop(&mut self) {
        let Some(mut gate) = self.gate.take() else {
            return;
        };
        if self.opener && !self.finished {
            // The opening step failed half way (with no savepoint to go
            // back to); the batch holds nothing else.
            gate.abandon_open();
            return;
        }
        self.queue_commit(gate);
    }
}

/// A finished step, waiting for its batch's commit.
pub(super) struct Durable {
    outcome: watch::Receiver<Outcome>,
}

impl Durable {
    /// Returns once the batch holding the step is committed; an error if
    /// the commit failed or was abandoned (the runtime shutting down).
    pub(super) async fn wait(mut self) -> Result<(), StateError> {
        let outcome = match self.outcome.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_closed) => None,
        };
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(cause)) => Err(StateError::BatchCommit(cause.to_string())),
            None => Err(StateError::BatchCommit(
                "the commit was abandoned (the broker is stopping)".to_owned(),
            )),
        }
    }
}
