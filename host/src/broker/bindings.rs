//! Bind, unbind, fetch and poll service bindings.

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::{
    BindOutcome, Binding, BindingResult, Refusal, DeletionOutcome, OperationKind,
    OperationState, OperationStatus,
};
use crate::runtime::CallError;
use crate::state::{
    BindingRecord, InstanceRecord, OperationPhase, OperationRecord, ResourceStatus, Transition,
};

use super::operations::{self, is_running};
use super::{
    AcceptedReply, BindRequest, Broker, Changed, Created, Failure, FetchedBinding, PollRequest,
    UnbindRequest, fingerprint, resolve_plan, validate_parameters,
};

enum Next<T> {
    Answer(T),
    Call(Box<(InstanceRecord, BindingRecord)>),
}

fn concurrency_error() -> Refusal {
    Refusal::ConcurrencyError(
        "Another operation for this service binding is in progress.".to_owned(),
    )
}

/// The `expires_at` of a binding whose expiry has passed. OSB 2.17 rotates
/// only non-expired bindings. An expiry the broker cannot read does not
/// block rotation: moving off such a binding is the safe direction.
fn expiry_passed(result: Option<&BindingResult>, now: OffsetDateTime) -> Option<&str> {
    let expires_at = result?.metadata.as_ref()?.expires_at.as_deref()?;
    let instant = OffsetDateTime::parse(expires_at, &Rfc3339).ok()?;
    (instant <= now).then_some(expires_at)
}

fn binding_not_found(binding_id: &str) -> Refusal {
    Refusal::NotFound(format!("service binding {binding_id} does not exist"))
}

impl Broker {
    pub async fn bind(&self, request: BindRequest) -> Result<Created<BindingResult>, Failure> {
        let catalog = self.catalog();
        let (offering, plan) = resolve_plan(&catalog, &request.service_id, &request.plan_id)?;
        if !plan.bindable.unwrap_or(offering.bindable) {
            return Err(
                Refusal::BadRequest(format!("plan {:?} is not bindable", plan.name)).into(),
            );
        }
        let schema = plan
            .schemas
            .as_ref()
            .and_then(|s| s.service_binding.as_ref())
            .and_then(|s| s.create.as_ref());
        validate_parameters(schema.map(|s| &s.parameters), request.parameters.as_ref())?;
        // OSB 2.17: a platform rotating a binding need not resend its
        // parameters; the successor then gets the predecessor's.
        let mut inherited_parameters = None;
        if let Some(predecessor) = &request.predecessor_binding_id {
            if !plan.binding_rotatable {
                return Err(Refusal::BadRequest(format!(
                    "plan {:?} does not allow binding rotation (binding_rotatable is false)",
                    plan.name
                ))
                .into());
            }
            let Some(predecessor_record) =
                self.store.binding(predecessor).await?.filter(|record| {
                    record.status == ResourceStatus::Ready
                        && record.binding.instance_id == request.instance_id
                })
            else {
                return Err(Refusal::BadRequest(format!(
                    "predecessor_binding_id {predecessor:?} is not a binding of service instance {}",
                    request.instance_id
                ))
                .into());
            };
            if let Some(expires_at) = expiry_passed(
                predecessor_record.result.as_ref(),
                OffsetDateTime::now_utc(),
            ) {
                return Err(Refusal::BadRequest(format!(
                    "predecessor_binding_id {predecessor:?} expired at {expires_at}: only a binding \
                     that has not expired can be rotated (its renew_before says when to rotate)"
                ))
                .into());
            }
            inherited_parameters = predecessor_record.binding.parameters;
        }

        let attributes = json!({
            "service_id": request.service_id,
            "plan_id": request.plan_id,
            "app_guid": request.app_guid,
            "bind_resource": request.bind_resource,
            "parameters": request.parameters,
            "predecessor_binding_id": request.predecessor_binding_id,
        });
        let binding = Binding {
            id: request.binding_id.clone(),
            instance_id: request.instance_id.clone(),
            service_id: request.service_id.clone(),
            plan_id: request.plan_id.clone(),
            app_guid: request.app_guid.clone(),
            bind_resource: request.bind_resource.clone(),
            context: request.context.clone(),
            parameters: request.parameters.clone().or(inherited_parameters),
            predecessor_binding_id: request.predecessor_binding_id.clone(),
        };
        let accepts_incomplete = request.info.accepts_incomplete;
        let next = self
            .store
            .transition_binding(
                &request.binding_id,
                &request.instance_id,
                |instance, existing| {
                    let Some(instance) = instance.filter(|r| r.status != ResourceStatus::Deleted)
                    else {
                        return Transition::Keep(Err(Refusal::NotFound(format!(
                            "service instance {} does not exist",
                            request.instance_id
                        ))));
                    };
                    if instance.instance.service_id != request.service_id
                        || instance.instance.plan_id != request.plan_id
                    {
                        return Transition::Keep(Err(Refusal::BadRequest(format!(
                            "service_id and plan_id must be those of service instance {}",
                            request.instance_id
                        ))));
                    }
                    if let Some(record) = existing.filter(|r| r.status != ResourceStatus::Deleted) {
                        return Transition::Keep(existing_binding(
                            &record,
                            &binding,
                            accepts_incomplete,
                        ));
                    }
                    if instance.status == ResourceStatus::Failed {
                        return Transition::Keep(Err(Refusal::Unprocessable(format!(
                            "service instance {} failed to provision and cannot be bound",
                            request.instance_id
                        ))));
                    }
                    if instance.status != ResourceStatus::Ready
                        || is_running(instance.operation.as_ref())
                    {
                        return Transition::Keep(Err(Refusal::ConcurrencyError(
                            "The service instance is being provisioned, updated or deleted."
                                .to_owned(),
                        )));
                    }
                    let record = BindingRecord {
                        binding,
                        status: ResourceStatus::Creating,
                        result: None,
                        operation: Some(operations::start(
                            OperationKind::Bind,
                            fingerprint(&attributes),
                        )),
                    };
                    Transition::Write(record.clone(), Ok(Next::Call(Box::new((instance, record)))))
                },
            )
            .await??;
        let (instance, record) = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(call) => *call,
        };
        let operation_id = record
            .operation
            .as_ref()
            .map(|op| op.id.clone())
            .unwrap_or_default();

        let outcome = self
            .runtime
            .bind(&instance.instance, &record.binding, &request.info)
            .await;
        match outcome {
            Ok(BindOutcome::Done(result)) => {
                self.finish_binding(
                    &request.binding_id,
                    &request.instance_id,
                    &operation_id,
                    |record, operation| {
                        record.status = ResourceStatus::Ready;
                        record.result = Some(result.clone());
                        operations::succeed(operation);
                    },
                )
                .await?;
                Ok(Created::New(result))
            }
            Ok(BindOutcome::Accepted(accepted)) if accepts_incomplete => {
                self.finish_binding(
                    &request.binding_id,
                    &request.instance_id,
                    &operation_id,
                    |_, operation| {
                        operations::accept(operation, accepted.operation.clone());
                    },
                )
                .await?;
                Ok(Created::Accepted(AcceptedReply {
                    operation: operation_id,
                    dashboard_url: None,
                }))
            }
            Err(CallError::Refused(refusal)) if !matches!(refusal, Refusal::Internal(_)) => {
                self.finish_binding(
                    &request.binding_id,
                    &request.instance_id,
                    &operation_id,
                    |record, operation| {
                        record.status = ResourceStatus::Deleted;
                        operations::fail(operation, refusal.to_string());
                    },
                )
                .await?;
                Err(Failure::Refused(refusal))
            }
            other => {
                let failure = match other {
                    Ok(_) => Failure::Plugin(
                        "the plugin answered asynchronously to a request without accepts_incomplete".to_owned(),
                    ),
                    Err(error) => Failure::from(error),
                };
                // Kept as Failed: the platform's orphan-mitigation unbind
                // must reach the plugin to revoke half-made credentials.
                self.finish_binding(
                    &request.binding_id,
                    &request.instance_id,
                    &operation_id,
                    |record, operation| {
                        record.status = ResourceStatus::Failed;
                        operations::fail(operation, failure.to_string());
                    },
                )
                .await?;
                Err(failure)
            }
        }
    }

    pub async fn unbind(&self, request: UnbindRequest) -> Result<Changed<()>, Failure> {
        let accepts_incomplete = request.info.accepts_incomplete;
        let attributes = json!({ "service_id": request.service_id, "plan_id": request.plan_id });
        let next = self
            .store
            .transition_binding(
                &request.binding_id,
                &request.instance_id,
                |instance, existing| {
                    let gone = || {
                        Transition::Keep(Err(Refusal::Gone(format!(
                            "service binding {} does not exist",
                            request.binding_id
                        ))))
                    };
                    let Some(mut record) = existing.filter(|r| {
                        r.status != ResourceStatus::Deleted
                            && r.binding.instance_id == request.instance_id
                    }) else {
                        return gone();
                    };
                    let Some(instance) = instance else {
                        return gone();
                    };
                    if record.binding.service_id != request.service_id {
                        return Transition::Keep(Err(Refusal::BadRequest(format!(
                            "service_id {:?} does not match the binding's service {:?}",
                            request.service_id, record.binding.service_id
                        ))));
                    }
                    if let Some(op) = record.operation.as_ref().filter(|op| is_running(Some(op))) {
                        return Transition::Keep(
                            match operations::pending_deletion(
                                op,
                                OperationKind::Unbind,
                                accepts_incomplete,
                            ) {
                                Some(reply) => Ok(Next::Answer(Changed::Accepted(reply))),
                                None => Err(concurrency_error()),
                            },
                        );
                    }
                    record.operation = Some(operations::start(
                        OperationKind::Unbind,
                        fingerprint(&attributes),
                    ));
                    Transition::Write(record.clone(), Ok(Next::Call(Box::new((instance, record)))))
                },
            )
            .await??;
        let (instance, record) = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(call) => *call,
        };
        let operation_id = record
            .operation
            .as_ref()
            .map(|op| op.id.clone())
            .unwrap_or_default();

        let outcome = self
            .runtime
            .unbind(&instance.instance, &record.binding, &request.info)
            .await;
        match outcome {
            Ok(DeletionOutcome::Done) | Err(CallError::Refused(Refusal::Gone(_))) => {
                self.finish_binding(
                    &request.binding_id,
                    &request.instance_id,
                    &operation_id,
                    |record, operation| {
                        record.status = ResourceStatus::Deleted;
                        record.result = None;
                        operations::succeed(operation);
                    },
                )
                .await?;
                Ok(Changed::Done(()))
            }
            Ok(DeletionOutcome::Accepted(accepted)) if accepts_incomplete => {
                self.finish_binding(
                    &request.binding_id,
                    &request.instance_id,
                    &operation_id,
                    |_, operation| {
                        operations::accept(operation, accepted.operation.clone());
                    },
                )
                .await?;
                Ok(Changed::Accepted(AcceptedReply {
                    operation: operation_id,
                    dashboard_url: None,
                }))
            }
            other => {
                let failure = match other {
                    Ok(_) => Failure::Plugin(
                        "the plugin answered asynchronously to a request without accepts_incomplete".to_owned(),
                    ),
                    Err(error) => Failure::from(error),
                };
                self.finish_binding(
                    &request.binding_id,
                    &request.instance_id,
                    &operation_id,
                    |_, operation| {
                        operations::fail(operation, failure.to_string());
                    },
                )
                .await?;
                Err(failure)
            }
        }
    }

    pub async fn fetch_binding(
        &self,
        instance_id: &str,
        binding_id: &str,
    ) -> Result<FetchedBinding, Failure> {
        let record = self
            .store
            .binding(binding_id)
            .await?
            .filter(|r| r.status == ResourceStatus::Ready && r.binding.instance_id == instance_id)
            .ok_or_else(|| binding_not_found(binding_id))?;
        Ok(FetchedBinding {
            result: record.result.unwrap_or_default(),
            parameters: record.binding.parameters,
        })
    }

    pub async fn binding_last_operation(
        &self,
        poll: PollRequest,
    ) -> Result<OperationStatus, Failure> {
        let binding_id = poll.binding_id.as_deref().unwrap_or_default();
        let record = self
            .store
            .binding(binding_id)
            .await?
            .filter(|r| r.binding.instance_id == poll.instance_id)
            .ok_or_else(|| binding_not_found(binding_id))?;
        let Some(operation) = record.operation.clone() else {
            return Err(binding_not_found(binding_id).into());
        };
        if record.status == ResourceStatus::Deleted && operation.kind != OperationKind::Unbind {
            return Err(binding_not_found(binding_id).into());
        }
        if operation.phase != OperationPhase::InProgress {
            return Ok(operations::status(&operation));
        }
        let instance = self
            .store
            .instance(&poll.instance_id)
            .await?
            .ok_or_else(|| {
                Refusal::NotFound(format!(
                    "service instance {} does not exist",
                    poll.instance_id
                ))
            })?;
        let polled = self
            .runtime
            .last_binding_operation(
                &instance.instance,
                &record.binding,
                operation.kind,
                operation.plugin_operation.as_deref(),
            )
            .await;
        let mut reported = match polled {
            Ok(status) => status,
            Err(CallError::Refused(Refusal::Gone(_)))
                if operation.kind == OperationKind::Unbind =>
            {
                OperationStatus {
                    state: OperationState::Succeeded,
                    description: None,
                    instance_usable: None,
                    update_repeatable: None,
                }
            }
            Err(error) => return Err(error.into()),
        };
        if reported.state == OperationState::InProgress {
            return Ok(reported);
        }
        // An asynchronous bind delivers its credentials through a fetch, so
        // get them from the plugin before telling the platform it succeeded.
        let mut result = None;
        if operation.kind == OperationKind::Bind && reported.state == OperationState::Succeeded {
            match self
                .runtime
                .get_binding(&instance.instance, &record.binding)
                .await
            {
                Ok(fetched) => result = Some(fetched),
                Err(error) => {
                    reported = OperationStatus {
                        state: OperationState::Failed,
                        description: Some(format!(
                            "the binding was created but its credentials could not be read: {error}"
                        )),
                        instance_usable: None,
                        update_repeatable: None,
                    };
                }
            }
        }
        let kind = operation.kind;
        self.finish_binding(
            binding_id,
            &poll.instance_id,
            &operation.id,
            |record, operation| {
                let succeeded = reported.state == OperationState::Succeeded;
                match (kind, succeeded) {
                    (OperationKind::Bind, true) => {
                        record.status = ResourceStatus::Ready;
                        record.result = result;
                    }
                    (OperationKind::Bind, false) => record.status = ResourceStatus::Failed,
                    (OperationKind::Unbind, true) => {
                        record.status = ResourceStatus::Deleted;
                        record.result = None;
                    }
                    _ => {}
                }
                operations::record_status(operation, &reported);
            },
        )
        .await?;
        Ok(reported)
    }

    pub(super) async fn mark_binding_deleted(
        &self,
        binding_id: &str,
        instance_id: &str,
    ) -> Result<(), Failure> {
        self.store
            .transition_binding(binding_id, instance_id, |_, existing| match existing {
                Some(mut record) => {
                    record.status = ResourceStatus::Deleted;
                    record.result = None;
                    Transition::Write(record, ())
                }
                None => Transition::Keep(()),
            })
            .await?;
        Ok(())
    }

    async fn finish_binding(
        &self,
        binding_id: &str,
        instance_id: &str,
        operation_id: &str,
        change: impl FnOnce(&mut BindingRecord, &mut OperationRecord) + Send,
    ) -> Result<(), Failure> {
        self.store
            .transition_binding(binding_id, instance_id, |_, existing| match existing {
                Some(mut record)
                    if record
                        .operation
                        .as_ref()
                        .is_some_and(|op| op.id == operation_id) =>
                {
                    if let Some(mut operation) = record.operation.take() {
                        change(&mut record, &mut operation);
                        record.operation = Some(operation);
                    }
                    Transition::Write(record, ())
                }
                _ => Transition::Keep(()),
            })
            .await?;
        Ok(())
    }
}

/// The answer for a bind whose binding id already exists.
fn existing_binding(
    record: &BindingRecord,
    requested: &Binding,
    accepts_incomplete: bool,
) -> Result<Next<Created<BindingResult>>, Refusal> {
    let stored = &record.binding;
    let same = stored.instance_id == requested.instance_id
        && stored.service_id == requested.service_id
        && stored.plan_id == requested.plan_id
        && stored.app_guid == requested.app_guid
        && stored.bind_resource == requested.bind_resource
        && stored.parameters == requested.parameters
        && stored.predecessor_binding_id == requested.predecessor_binding_id;
    if !same {
        return Err(Refusal::Conflict(format!(
            "service binding {} already exists with different attributes",
            requested.id
        )));
    }
    match (record.status, record.operation.as_ref()) {
        (ResourceStatus::Ready, operation) if !is_running(operation) => Ok(Next::Answer(
            Created::Existing(record.result.clone().unwrap_or_default()),
        )),
        (ResourceStatus::Creating, Some(op))
            if op.phase == OperationPhase::InProgress && accepts_incomplete =>
        {
            Ok(Next::Answer(Created::Accepted(AcceptedReply {
                operation: op.id.clone(),
                dashboard_url: None,
            })))
        }
        (ResourceStatus::Failed, _) => Err(Refusal::Conflict(format!(
            "binding {} failed earlier; unbind it before binding again",
            requested.id
        ))),
        _ => Err(concurrency_error()),
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    use super::expiry_passed;
    use crate::model::{BindingMetadata, BindingResult};

    fn expiring(expires_at: &str) -> BindingResult {
        BindingResult {
            metadata: Some(BindingMetadata {
                expires_at: Some(expires_at.to_owned()),
                renew_before: None,
            }),
            ..BindingResult::default()
        }
    }

    #[test]
    fn rotation_is_refused_only_once_the_predecessor_expired() {
        let now = OffsetDateTime::parse("2026-11-26T12:00:00.0Z", &Rfc3339).expect("valid instant");
        let past = expiring("2026-11-26T11:59:59.9Z");
        let future = expiring("2026-11-26T12:00:00.1Z");
        assert_eq!(
            expiry_passed(Some(&past), now),
            Some("2026-11-26T11:59:59.9Z")
        );
        assert_eq!(expiry_passed(Some(&future), now), None);
        assert_eq!(expiry_passed(Some(&BindingResult::default()), now), None);
        assert_eq!(expiry_passed(None, now), None);
        assert_eq!(expiry_passed(Some(&expiring("next tuesday")), now), None);
    }
}
