//! One transition's step in a batch (see `batch`): what it reads and
//! writes, on whichever backend holds the batch.

use sqlx::{Any, AnyConnection, Transaction};

use super::tables;
use super::tables::history::{self, Entry, OperationMark, ResourceKind};
use super::writer::WriterStep;
use super::{BindingRecord, InstanceRecord, StateError};
use crate::lifecycle::OperationRecord;
use crate::secrets::Keyring;

/// Where one transition's step reads and writes. If the step fails or is
/// cancelled (dropped before [`Step::done`]), only its own changes leave
/// the batch.
pub(super) enum Step<'t> {
    /// PostgreSQL, the step that opened the batch: the batch's transaction
    /// itself (dropping it unfinished rolls back the batch, see `batch`).
    Whole(&'t mut Transaction<'static, Any>),
    /// PostgreSQL, a later step: a savepoint, rolled back to when dropped
    /// (sqlx).
    Savepoint(Transaction<'t, Any>),
    /// SQLite: a savepoint of the batch writer's transaction (the step
    /// that opened the batch: the transaction itself).
    Writer(WriterStep<'t>),
}

/// The driver a step's statements go through.
enum Driver<'s, 't> {
    Sqlx(&'s mut AnyConnection),
    Writer(&'s mut WriterStep<'t>),
}

impl<'t> Step<'t> {
    fn driver(&mut self) -> Driver<'_, 't> {
        match self {
            Step::Whole(transaction) => Driver::Sqlx(transaction),
            Step::Savepoint(savepoint) => Driver::Sqlx(savepoint),
            Step::Writer(step) => Driver::Writer(step),
        }
    }

    pub(super) async fn read_instance(
        &mut self,
        id: &str,
    ) -> Result<Option<InstanceRecord>, StateError> {
        match self.driver() {
            Driver::Sqlx(connection) => tables::read_instance(connection, id).await,
            Driver::Writer(step) => step.read_instance(id),
        }
    }

    pub(super) async fn read_binding(
        &mut self,
        keyring: &Keyring,
        id: &str,
    ) -> Result<Option<BindingRecord>, StateError> {
        match self.driver() {
            Driver::Sqlx(connection) => tables::read_binding(connection, keyring, id).await,
            Driver::Writer(step) => step.read_binding(keyring, id),
        }
    }

    /// The bindings of instance `instance_id` that are not deleted, oldest
    /// first.
    pub(super) async fn read_live_bindings(
        &mut self,
        keyring: &Keyring,
        instance_id: &str,
    ) -> Result<Vec<BindingRecord>, StateError> {
        match self.driver() {
            Driver::Sqlx(connection) => {
                tables::read_live_bindings(connection, keyring, instance_id).await
            }
            Driver::Writer(step) => step.read_live_bindings(keyring, instance_id),
        }
    }

    /// Stores `record` (insert or replace), written by `replica`.
    pub(super) async fn write_instance(
        &mut self,
        replica: &str,
        record: &InstanceRecord,
    ) -> Result<(), StateError> {
        match self.driver() {
            Driver::Sqlx(connection) => tables::write_instance(connection, replica, record).await,
            Driver::Writer(step) => step.write_instance(replica, record),
        }
    }

    /// Stores `record` (insert or replace) with its credentials sealed by
    /// `keyring`, written by `replica`.
    pub(super) async fn write_binding(
        &mut self,
        keyring: &Keyring,
        replica: &str,
        record: &BindingRecord,
    ) -> Result<(), StateError> {
        match self.driver() {
            Driver::Sqlx(connection) => {
                tables::write_binding(connection, keyring, replica, record).await
            }
            Driver::Writer(step) => step.write_binding(keyring, replica, record),
        }
    }

    /// Appends `after` to the history if it is a new step compared to
    /// `before`.
    pub(super) async fn append_history(
        &mut self,
        kind: ResourceKind,
        resource_id: &str,
        before: &OperationMark,
        after: &Option<OperationRecord>,
    ) -> Result<(), StateError> {
        match self.driver() {
            Driver::Sqlx(connection) => {
                history::append(connection, kind, resource_id, before, after).await
            }
            Driver::Writer(step) => {
                step.append_history(Entry::of(kind, resource_id, before, after))
            }
        }
    }

    /// The step succeeded: its savepoint is released into the batch.
    pub(super) async fn done(self) -> Result<(), StateError> {
        match self {
            Step::Whole(_) => Ok(()),
            Step::Savepoint(savepoint) => Ok(savepoint.commit().await?),
            Step::Writer(step) => step.done(),
        }
    }
}
