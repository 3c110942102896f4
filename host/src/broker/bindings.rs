//! Bind, unbind, fetch and poll service bindings: the lifecycle rules
//! (`crate::lifecycle`) decide, this file reads and writes the records and
//! calls the plugin around their decisions.

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::lifecycle::{
    self, Admission, Found, OperationRecord, PollStep, Polled, Resource, ResourceStatus,
};
use crate::model::{
    Binding, BindingResult, OperationKind, OperationState, OperationStatus, Refusal,
};
use crate::runtime::CallError;
use crate::state::{BindingRecord, InstanceRecord, Transition};

use super::instances::operation_id;
use super::validation::{resolve_plan, validate_parameters};
use super::{
    AcceptedReply, BindRequest, Broker, BrokerError, Changed, Created, FetchedBinding, Next,
    Plugins, PollRequest, Records, UnbindRequest, answer, changed, created,
};

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

/// Whether a repeated bind asks for the binding that is stored.
fn same_binding(stored: &Binding, requested: &Binding) -> bool {
    stored.instance_id == requested.instance_id
        && stored.service_id == requested.service_id
        && stored.plan_id == requested.plan_id
        && stored.app_guid == requested.app_guid
        && stored.bind_resource == requested.bind_resource
        && stored.parameters == requested.parameters
        && stored.predecessor_binding_id == requested.predecessor_binding_id
}

fn found_binding<'a>(record: &'a BindingRecord, differs: Option<&'a str>) -> Found<'a> {
    Found {
        status: record.status,
        operation: record.operation.as_ref(),
        differs,
    }
}

fn found_instance<'a>(record: &'a InstanceRecord, differs: Option<&'a str>) -> Found<'a> {
    Found {
        status: record.status,
        operation: record.operation.as_ref(),
        differs,
    }
}

type BindCall = (InstanceRecord, BindingRecord);

impl<P: Plugins, R: Records> Broker<P, R> {
    pub async fn bind(&self, request: BindRequest) -> Result<Created<BindingResult>, BrokerError> {
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
                self.records.binding(predecessor).await?.filter(|record| {
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
        let rules = lifecycle::Request {
            resource: Resource::Binding,
            kind: OperationKind::Bind,
            id: &request.binding_id,
            attributes: &attributes,
            accepts_incomplete,
        };
        let instance_mismatch = format!(
            "service_id and plan_id must be those of service instance {}",
            request.instance_id
        );
        let next = self
            .records
            .transition_binding(
                &request.binding_id,
                &request.instance_id,
                |instance, existing| {
                    let instance_found = instance.as_ref().map(|record| {
                        let differs = record.instance.service_id != request.service_id
                            || record.instance.plan_id != request.plan_id;
                        found_instance(record, differs.then_some(instance_mismatch.as_str()))
                    });
                    let binding_found = existing.as_ref().map(|record| {
                        let differs = !same_binding(&record.binding, &binding);
                        found_binding(record, differs.then_some("attributes"))
                    });
                    let admission = lifecycle::admit_binding(
                        &rules,
                        &request.instance_id,
                        instance_found,
                        binding_found,
                    );
                    match (admission, instance, existing) {
                        (Admission::Start(operation), Some(instance), _) => {
                            let record = BindingRecord {
                                binding,
                                status: ResourceStatus::Creating,
                                result: None,
                                operation: Some(operation),
                            };
                            Transition::Write(
                                record.clone(),
                                Ok(Next::Call(Box::new((instance, record)))),
                            )
                        }
                        (Admission::Existing, _, Some(record)) => Transition::Keep(Ok(
                            Next::Answer(Created::Existing(record.result.unwrap_or_default())),
                        )),
                        (Admission::Running { operation }, _, _) => {
                            Transition::Keep(Ok(Next::Answer(Created::Accepted(AcceptedReply {
                                operation,
                                dashboard_url: None,
                            }))))
                        }
                        (Admission::Refuse(refusal), _, _) => Transition::Keep(Err(refusal)),
                        (Admission::Start(_) | Admission::Existing, _, _) => {
                            Transition::Keep(Err(Refusal::Internal(
                                "a bind was admitted without the records it needs".to_owned(),
                            )))
                        }
                    }
                },
            )
            .await??;
        let (instance, record): BindCall = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(call) => *call,
        };
        let operation_id = operation_id(&record.operation);

        let outcome = self
            .plugins
            .bind(&instance.instance, &record.binding, &request.info)
            .await
            .map_err(BrokerError::from);
        let settlement =
            lifecycle::settle(OperationKind::Bind, accepts_incomplete, answer(outcome));
        self.finish_binding(
            &request.binding_id,
            &request.instance_id,
            &operation_id,
            |record, operation| {
                settlement.apply(&mut record.status, operation);
                if let lifecycle::Verdict::Done(result) = &settlement.verdict {
                    record.result = Some(result.clone());
                }
            },
        )
        .await?;
        created(settlement.verdict, operation_id)
    }

    pub async fn unbind(&self, request: UnbindRequest) -> Result<Changed<()>, BrokerError> {
        let accepts_incomplete = request.info.accepts_incomplete;
        let attributes = json!({ "service_id": request.service_id, "plan_id": request.plan_id });
        let rules = lifecycle::Request {
            resource: Resource::Binding,
            kind: OperationKind::Unbind,
            id: &request.binding_id,
            attributes: &attributes,
            accepts_incomplete,
        };
        let next = self
            .records
            .transition_binding(
                &request.binding_id,
                &request.instance_id,
                |instance, existing| {
                    // A binding of another instance is not this instance's.
                    let existing =
                        existing.filter(|r| r.binding.instance_id == request.instance_id);
                    let mismatch = existing.as_ref().and_then(|record| {
                        (record.binding.service_id != request.service_id).then(|| {
                            format!(
                                "service_id {:?} does not match the binding's service {:?}",
                                request.service_id, record.binding.service_id
                            )
                        })
                    });
                    let admission = lifecycle::admit_binding(
                        &rules,
                        &request.instance_id,
                        instance.as_ref().map(|record| found_instance(record, None)),
                        existing
                            .as_ref()
                            .map(|record| found_binding(record, mismatch.as_deref())),
                    );
                    match (admission, instance, existing) {
                        (Admission::Start(operation), Some(instance), Some(mut record)) => {
                            record.operation = Some(operation);
                            Transition::Write(
                                record.clone(),
                                Ok(Next::Call(Box::new((instance, record)))),
                            )
                        }
                        (Admission::Running { operation }, _, _) => {
                            Transition::Keep(Ok(Next::Answer(Changed::Accepted(AcceptedReply {
                                operation,
                                dashboard_url: None,
                            }))))
                        }
                        (Admission::Refuse(refusal), _, _) => Transition::Keep(Err(refusal)),
                        (Admission::Start(_) | Admission::Existing, _, _) => {
                            Transition::Keep(Err(Refusal::Internal(
                                "an unbind was admitted without the records it needs".to_owned(),
                            )))
                        }
                    }
                },
            )
            .await??;
        let (instance, record): BindCall = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(call) => *call,
        };
        let operation_id = operation_id(&record.operation);

        let outcome = self
            .plugins
            .unbind(&instance.instance, &record.binding, &request.info)
            .await
            .map_err(BrokerError::from);
        let settlement =
            lifecycle::settle(OperationKind::Unbind, accepts_incomplete, answer(outcome));
        self.finish_binding(
            &request.binding_id,
            &request.instance_id,
            &operation_id,
            |record, operation| {
                settlement.apply(&mut record.status, operation);
                if record.status == ResourceStatus::Deleted {
                    record.result = None;
                }
            },
        )
        .await?;
        changed(settlement.verdict, operation_id)
    }

    pub async fn fetch_binding(
        &self,
        instance_id: &str,
        binding_id: &str,
    ) -> Result<FetchedBinding, BrokerError> {
        let record = self
            .records
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
    ) -> Result<OperationStatus, BrokerError> {
        let binding_id = poll.binding_id.as_deref().unwrap_or_default();
        let record = self
            .records
            .binding(binding_id)
            .await?
            .filter(|r| r.binding.instance_id == poll.instance_id)
            .ok_or_else(|| binding_not_found(binding_id))?;
        let operation = match lifecycle::poll_step(record.status, record.operation.as_ref()) {
            PollStep::NotFound => return Err(binding_not_found(binding_id).into()),
            PollStep::Stored(status) => return Ok(status),
            PollStep::AskPlugin => record
                .operation
                .clone()
                .ok_or_else(|| binding_not_found(binding_id))?,
        };
        // Concurrent polls of this operation share one plugin call.
        let key = operation.id.clone();
        self.binding_polls
            .run(
                &key,
                self.ask_binding_plugin(&poll.instance_id, record, operation),
            )
            .await
    }

    /// Asks the plugin how `operation` of `record` goes (and, for a bind
    /// that succeeded, its credentials), and settles a finished one in the
    /// record.
    async fn ask_binding_plugin(
        &self,
        instance_id: &str,
        record: BindingRecord,
        operation: OperationRecord,
    ) -> Result<OperationStatus, BrokerError> {
        let binding_id = record.binding.id.as_str();
        let instance = self.records.instance(instance_id).await?.ok_or_else(|| {
            Refusal::NotFound(format!("service instance {instance_id} does not exist"))
        })?;
        let mut polled = self
            .plugins
            .last_binding_operation(
                &instance.instance,
                &record.binding,
                operation.kind,
                operation.plugin_operation.as_deref(),
            )
            .await;
        // An asynchronous bind delivers its credentials through a fetch, so
        // get them from the plugin before telling the platform it succeeded.
        let mut result = None;
        let bound = operation.kind == OperationKind::Bind
            && matches!(&polled, Ok(status) if status.state == OperationState::Succeeded);
        if bound {
            match self
                .plugins
                .get_binding(&instance.instance, &record.binding)
                .await
            {
                Ok(fetched) => result = Some(fetched),
                Err(error) => {
                    polled = Ok(OperationStatus {
                        state: OperationState::Failed,
                        description: Some(format!(
                            "the binding was created but its credentials could not be read: {error}"
                        )),
                        instance_usable: None,
                        update_repeatable: None,
                    });
                }
            }
        }
        let is_gone = |error: &CallError| matches!(error, CallError::Refused(Refusal::Gone(_)));
        let (reported, status) = match lifecycle::settle_poll(operation.kind, polled, is_gone)? {
            Polled::Running(reported) => return Ok(reported),
            Polled::Finished { reported, status } => (reported, status),
        };
        self.finish_binding(
            binding_id,
            instance_id,
            &operation.id,
            |record, operation| {
                if let Some(status) = status {
                    record.status = status;
                }
                match record.status {
                    ResourceStatus::Ready => record.result = result,
                    ResourceStatus::Deleted => record.result = None,
                    _ => {}
                }
                lifecycle::record_status(operation, &reported);
            },
        )
        .await?;
        Ok(reported)
    }

    pub(super) async fn mark_binding_deleted(
        &self,
        binding_id: &str,
        instance_id: &str,
    ) -> Result<(), BrokerError> {
        self.records
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

    /// Applies `change` to the binding if its current operation is still
    /// `operation_id` (a restart or a purge may have replaced it meanwhile).
    async fn finish_binding(
        &self,
        binding_id: &str,
        instance_id: &str,
        operation_id: &str,
        change: impl FnOnce(&mut BindingRecord, &mut OperationRecord) + Send,
    ) -> Result<(), BrokerError> {
        self.records
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
