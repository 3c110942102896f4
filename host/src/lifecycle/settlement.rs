//! After the plugin: how its answer changes the record and what the
//! platform hears.
//!
//! - Success: a creation makes the resource `Ready`, a deletion `Deleted`
//!   (a plugin's `gone` on a deletion is success: the resource is not there).
//! - Accepted: with `accepts_incomplete` the operation goes `InProgress` and
//!   the platform gets 202; without it the plugin broke the contract, which
//!   is a failure like any other.
//! - A 4xx refusal of a creation leaves things as if nothing happened (the
//!   resource is `Deleted`); a fault (or a 500 refusal) of a creation keeps
//!   it `Failed`, so the platform's orphan-mitigation delete still reaches
//!   the plugin to clean up what it half made. A failed update or deletion
//!   leaves the resource as it was.

use std::fmt::Display;

use crate::model::{
    Accepted, BindOutcome, BindingResult, DeletionOutcome, InstanceOutcome, InstanceResult,
    OperationKind, OperationState, OperationStatus, Refusal,
};

use super::{OperationPhase, OperationRecord, ResourceStatus, is_creation, is_deletion, status};

/// What the plugin (or the broker around it) answered a started operation;
/// `T` is what a success carries (the instance's or binding's result).
#[derive(Debug)]
pub enum Answer<T, F> {
    Done(T),
    Accepted(Accepted),
    /// A typed OSB refusal.
    Refused(Refusal),
    /// Anything else that went wrong (a trap, a timeout, a malformed answer,
    /// a missing plugin).
    Fault(F),
}

impl<F> From<InstanceOutcome> for Answer<InstanceResult, F> {
    fn from(outcome: InstanceOutcome) -> Self {
        match outcome {
            InstanceOutcome::Done(result) => Self::Done(result),
            InstanceOutcome::Accepted(accepted) => Self::Accepted(accepted),
        }
    }
}

impl<F> From<BindOutcome> for Answer<BindingResult, F> {
    fn from(outcome: BindOutcome) -> Self {
        match outcome {
            BindOutcome::Done(result) => Self::Done(result),
            BindOutcome::Accepted(accepted) => Self::Accepted(accepted),
        }
    }
}

impl<F> From<DeletionOutcome> for Answer<(), F> {
    fn from(outcome: DeletionOutcome) -> Self {
        match outcome {
            DeletionOutcome::Done => Self::Done(()),
            DeletionOutcome::Accepted(accepted) => Self::Accepted(accepted),
        }
    }
}

/// How the operation record moves.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Succeed,
    /// Asynchronous: the plugin's token, passed back when polling.
    Accept(Option<String>),
    Fail(String),
}

/// What the platform hears.
#[derive(Debug)]
pub enum Verdict<T, F> {
    /// 200 (or 201 for a creation) with what the plugin made.
    Done(T),
    /// 202 with the operation's id; the plugin's dashboard URL, if any.
    Accepted {
        dashboard_url: Option<String>,
    },
    Refused(Refusal),
    Failed(F),
    /// The plugin answered in a way the contract forbids (500).
    BrokenContract(&'static str),
}

/// The record change and the reply for one plugin answer.
#[derive(Debug)]
pub struct Settlement<T, F> {
    /// The resource's new status; `None` leaves it as it was.
    pub status: Option<ResourceStatus>,
    pub step: Step,
    pub verdict: Verdict<T, F>,
}

impl<T, F> Settlement<T, F> {
    /// Applies the status and the step to a stored record.
    pub fn apply(&self, status: &mut ResourceStatus, operation: &mut OperationRecord) {
        if let Some(new) = self.status {
            *status = new;
        }
        match &self.step {
            Step::Succeed => {
                operation.phase = OperationPhase::Succeeded;
                operation.description = None;
            }
            Step::Accept(token) => {
                operation.phase = OperationPhase::InProgress;
                operation.plugin_operation = token.clone();
            }
            Step::Fail(description) => {
                operation.phase = OperationPhase::Failed;
                operation.description = Some(description.clone());
            }
        }
    }
}

/// What the platform hears when a plugin answers 202 to a request that did
/// not allow it.
pub const ASYNC_WITHOUT_ACCEPTS_INCOMPLETE: &str =
    "the plugin answered asynchronously to a request without accepts_incomplete";

/// Settles a started operation of `kind` with the plugin's `answer`.
pub fn settle<T: Default, F: Display>(
    kind: OperationKind,
    accepts_incomplete: bool,
    answer: Answer<T, F>,
) -> Settlement<T, F> {
    let failed_status = is_creation(kind).then_some(ResourceStatus::Failed);
    match answer {
        Answer::Refused(Refusal::Gone(_)) if is_deletion(kind) => succeeded(kind, T::default()),
        Answer::Done(result) => succeeded(kind, result),
        Answer::Accepted(accepted) if accepts_incomplete => Settlement {
            status: None,
            step: Step::Accept(accepted.operation),
            // OSB's 202 carries a dashboard URL for provisions and updates only.
            verdict: Verdict::Accepted {
                dashboard_url: accepted
                    .dashboard_url
                    .filter(|_| matches!(kind, OperationKind::Provision | OperationKind::Update)),
            },
        },
        Answer::Accepted(_) => Settlement {
            status: failed_status,
            step: Step::Fail(ASYNC_WITHOUT_ACCEPTS_INCOMPLETE.to_owned()),
            verdict: Verdict::BrokenContract(ASYNC_WITHOUT_ACCEPTS_INCOMPLETE),
        },
        Answer::Refused(refusal) => {
            // A 4xx refusal of a creation: the broker's resources must be as
            // if nothing happened. A 500 is a fault: keep the record.
            let status = match refusal {
                Refusal::Internal(_) => failed_status,
                _ => is_creation(kind).then_some(ResourceStatus::Deleted),
            };
            Settlement {
                status,
                step: Step::Fail(refusal.to_string()),
                verdict: Verdict::Refused(refusal),
            }
        }
        Answer::Fault(fault) => Settlement {
            status: failed_status,
            step: Step::Fail(fault.to_string()),
            verdict: Verdict::Failed(fault),
        },
    }
}

fn succeeded<T, F>(kind: OperationKind, result: T) -> Settlement<T, F> {
    let status = if is_creation(kind) {
        Some(ResourceStatus::Ready)
    } else if is_deletion(kind) {
        Some(ResourceStatus::Deleted)
    } else {
        None
    };
    Settlement {
        status,
        step: Step::Succeed,
        verdict: Verdict::Done(result),
    }
}

/// What a `last_operation` poll does with the stored record.
#[derive(Debug, Clone, PartialEq)]
pub enum PollStep {
    /// No operation the platform may ask about: 404.
    NotFound,
    /// Finished (or a synchronous call still under way): the stored status.
    Stored(OperationStatus),
    /// Asynchronous and not finished: ask the plugin, then [`settle_poll`].
    AskPlugin,
}

/// The poll rules: a resource without an operation, or deleted by anything
/// but a deletion (a refused creation), is unknown to the platform.
pub fn poll_step(status: ResourceStatus, operation: Option<&OperationRecord>) -> PollStep {
    let Some(operation) = operation else {
        return PollStep::NotFound;
    };
    if status == ResourceStatus::Deleted && !is_deletion(operation.kind) {
        return PollStep::NotFound;
    }
    if operation.phase != OperationPhase::InProgress {
        return PollStep::Stored(status_of(operation));
    }
    PollStep::AskPlugin
}

fn status_of(operation: &OperationRecord) -> OperationStatus {
    status(operation)
}

/// Where an asynchronous operation stands after the plugin was polled.
#[derive(Debug, Clone, PartialEq)]
pub enum Polled {
    /// Still running: report it, write nothing.
    Running(OperationStatus),
    /// Finished: record `reported` on the operation and give the resource
    /// `status` (`None`: as it was).
    Finished {
        reported: OperationStatus,
        status: Option<ResourceStatus>,
    },
}

/// Settles a poll of an asynchronous operation of `kind` with what the
/// plugin reported. A plugin's `gone` (told by `is_gone`) while polling a
/// deletion means it is done; any other error is the caller's to report.
pub fn settle_poll<E>(
    kind: OperationKind,
    reported: Result<OperationStatus, E>,
    is_gone: impl FnOnce(&E) -> bool,
) -> Result<Polled, E> {
    let reported = match reported {
        Ok(reported) => reported,
        Err(error) if is_deletion(kind) && is_gone(&error) => OperationStatus {
            state: OperationState::Succeeded,
            description: None,
            instance_usable: None,
            update_repeatable: None,
        },
        Err(error) => return Err(error),
    };
    let status = match reported.state {
        OperationState::InProgress => return Ok(Polled::Running(reported)),
        OperationState::Succeeded if is_creation(kind) => Some(ResourceStatus::Ready),
        OperationState::Succeeded if is_deletion(kind) => Some(ResourceStatus::Deleted),
        OperationState::Failed if is_creation(kind) => Some(ResourceStatus::Failed),
        OperationState::Succeeded | OperationState::Failed => None,
    };
    Ok(Polled::Finished { reported, status })
}

/// Records a terminal or in-progress status reported by the plugin.
pub fn record_status(operation: &mut OperationRecord, reported: &OperationStatus) {
    operation.phase = match reported.state {
        OperationState::InProgress => OperationPhase::InProgress,
        OperationState::Succeeded => OperationPhase::Succeeded,
        OperationState::Failed => OperationPhase::Failed,
    };
    operation.description = reported.description.clone();
    operation.instance_usable = reported.instance_usable;
    operation.update_repeatable = reported.update_repeatable;
}

/// The end of a crash-interrupted call. A creation that never finished left
/// at most half-made resources, which the platform's orphan mitigation
/// (a delete of a `Failed` resource) cleans up; an interrupted update or
/// deletion leaves the resource as it was.
pub fn fail_interrupted(
    operation: &mut OperationRecord,
    status: &mut ResourceStatus,
    description: &str,
) {
    if is_creation(operation.kind) {
        *status = ResourceStatus::Failed;
    }
    operation.phase = OperationPhase::Failed;
    operation.description = Some(description.to_owned());
}
