//! Before the plugin: what a request gets, given what the store holds.
//!
//! OSB's rules, in the order they apply:
//! - a create (provision, bind) of an unknown id starts; of a known id with
//!   identical attributes answers 200 with what exists (or 202 with the
//!   running asynchronous creation); with different attributes 409; after a
//!   failed creation 409 until the platform deletes it;
//! - an update of an unknown instance is 404, of a failed one 422;
//! - a delete of an unknown id is 410;
//! - while an operation runs, anything else is 422 `ConcurrencyError`, except
//!   a re-sent identical asynchronous update or delete, which gets 202 with
//!   the running operation.

use serde_json::Value;

use crate::model::{OperationKind, Refusal};

use super::{
    OperationPhase, OperationRecord, Resource, ResourceStatus, is_creation, is_running,
    same_fingerprint, start,
};

/// A request, reduced to what the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub resource: Resource,
    pub kind: OperationKind,
    /// The id of the instance or binding the request names.
    pub id: &'a str,
    /// The request's attributes: an identical re-send compares equal.
    pub attributes: &'a Value,
    pub accepts_incomplete: bool,
}

/// What the store holds for a resource the request names, reduced to what
/// the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub status: ResourceStatus,
    pub operation: Option<&'a OperationRecord>,
    /// How the request differs from the stored resource, `None` if it does
    /// not. For a create: its attributes (any difference is a 409). For an
    /// update or delete: the service (and plan) it names, which must be the
    /// resource's (400, with this description).
    pub differs: Option<&'a str>,
}

/// The broker's decision about a request, before any plugin call.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Write the record with this new operation (phase `Calling`), then call
    /// the plugin.
    Start(OperationRecord),
    /// A create finds the resource already made as asked: 200 with what is
    /// stored.
    Existing,
    /// The same asynchronous operation already runs: 202 with its id.
    Running { operation: String },
    /// Refused, nothing written.
    Refuse(Refusal),
}

/// The rules for a request on one resource (instance, or binding once its
/// instance passed [`admit_binding`]). `found` is the stored record, if any.
pub fn admit(request: &Request<'_>, found: Option<Found<'_>>) -> Admission {
    let noun = request.resource.noun();
    let Some(found) = found.filter(|found| found.status != ResourceStatus::Deleted) else {
        return match request.kind {
            OperationKind::Provision | OperationKind::Bind => fresh(request),
            OperationKind::Update => Admission::Refuse(Refusal::NotFound(format!(
                "{noun} {} does not exist",
                request.id
            ))),
            OperationKind::Deprovision | OperationKind::Unbind => Admission::Refuse(Refusal::Gone(
                format!("{noun} {} does not exist", request.id),
            )),
        };
    };
    if is_creation(request.kind) {
        return repeated_creation(request, found);
    }
    if let Some(difference) = found.differs {
        return Admission::Refuse(Refusal::BadRequest(difference.to_owned()));
    }
    if let Some(running) = found.operation.filter(|op| is_running(Some(op))) {
        return if resends(request, running) {
            Admission::Running {
                operation: running.id.clone(),
            }
        } else {
            Admission::Refuse(concurrency_error(request.resource))
        };
    }
    if request.kind == OperationKind::Update && found.status != ResourceStatus::Ready {
        return Admission::Refuse(Refusal::Unprocessable(format!(
            "{noun} {} is not usable (its provisioning did not succeed)",
            request.id
        )));
    }
    fresh(request)
}

/// The rules for a bind or unbind, which also look at the binding's
/// instance (`instance_id`, stored as `instance`; `differs` there says how
/// the request's service and plan differ from the instance's).
pub fn admit_binding(
    request: &Request<'_>,
    instance_id: &str,
    instance: Option<Found<'_>>,
    binding: Option<Found<'_>>,
) -> Admission {
    if request.kind != OperationKind::Bind {
        // Unbind (and any delete): a binding whose instance is gone is gone.
        if live(binding).is_none() || instance.is_none() {
            return Admission::Refuse(Refusal::Gone(format!(
                "service binding {} does not exist",
                request.id
            )));
        }
        return admit(request, binding);
    }
    let Some(instance) = live(instance) else {
        return Admission::Refuse(Refusal::NotFound(format!(
            "service instance {instance_id} does not exist"
        )));
    };
    if let Some(difference) = instance.differs {
        return Admission::Refuse(Refusal::BadRequest(difference.to_owned()));
    }
    if let Some(binding) = live(binding) {
        return repeated_creation(request, binding);
    }
    if instance.status == ResourceStatus::Failed {
        return Admission::Refuse(Refusal::Unprocessable(format!(
            "service instance {instance_id} failed to provision and cannot be bound"
        )));
    }
    if instance.status != ResourceStatus::Ready || is_running(instance.operation) {
        return Admission::Refuse(Refusal::ConcurrencyError(
            "The service instance is being provisioned, updated or deleted.".to_owned(),
        ));
    }
    fresh(request)
}

/// Whether a fetch (`GET` of an instance) may be answered: only a ready
/// instance exists for the platform, and not while an update changes it.
pub fn fetchable_instance(
    instance_id: &str,
    status: ResourceStatus,
    operation: Option<&OperationRecord>,
) -> Result<(), Refusal> {
    if status != ResourceStatus::Ready {
        return Err(Refusal::NotFound(format!(
            "service instance {instance_id} does not exist"
        )));
    }
    if operation.is_some_and(|op| op.kind == OperationKind::Update && is_running(Some(op))) {
        return Err(Refusal::ConcurrencyError(
            "The service instance is being updated.".to_owned(),
        ));
    }
    Ok(())
}

/// A stored resource that is not a tombstone.
fn live(found: Option<Found<'_>>) -> Option<Found<'_>> {
    found.filter(|found| found.status != ResourceStatus::Deleted)
}

fn fresh(request: &Request<'_>) -> Admission {
    Admission::Start(start(request.kind, request.attributes))
}

/// A create of an id that exists (and is not deleted).
fn repeated_creation(request: &Request<'_>, found: Found<'_>) -> Admission {
    let noun = request.resource.noun();
    if found.differs.is_some() {
        return Admission::Refuse(Refusal::Conflict(format!(
            "{noun} {} already exists with different attributes",
            request.id
        )));
    }
    match (found.status, found.operation) {
        (ResourceStatus::Ready, operation) if !is_running(operation) => Admission::Existing,
        (ResourceStatus::Creating, Some(op))
            if op.phase == OperationPhase::InProgress && request.accepts_incomplete =>
        {
            Admission::Running {
                operation: op.id.clone(),
            }
        }
        (ResourceStatus::Failed, _) => {
            Admission::Refuse(Refusal::Conflict(match request.resource {
                Resource::Instance => format!(
                    "provisioning service instance {} failed earlier; deprovision it before provisioning again",
                    request.id
                ),
                Resource::Binding => format!(
                    "binding {} failed earlier; unbind it before binding again",
                    request.id
                ),
            }))
        }
        _ => Admission::Refuse(concurrency_error(request.resource)),
    }
}

/// Whether `request` re-sends the asynchronous operation `running`: OSB
/// lets a platform repeat an update or delete it got a 202 for. Only an
/// identical update counts; a delete's attributes are only ids.
fn resends(request: &Request<'_>, running: &OperationRecord) -> bool {
    let same_kind = running.kind == request.kind && running.phase == OperationPhase::InProgress;
    let same_request = request.kind != OperationKind::Update
        || same_fingerprint(&running.request_fingerprint, request.attributes);
    same_kind && same_request && request.accepts_incomplete
}

fn concurrency_error(resource: Resource) -> Refusal {
    Refusal::ConcurrencyError(format!(
        "Another operation for this {} is in progress.",
        resource.noun()
    ))
}
