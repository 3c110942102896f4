//! Provision, update, deprovision, fetch and poll service instances.

use serde_json::{Value, json};

use crate::model::{
    Refusal, DeletionOutcome, Instance, InstanceChanges, InstanceOutcome, InstanceResult,
    OperationKind, OperationState, OperationStatus, RequestInfo,
};
use crate::runtime::CallError;
use crate::state::{
    InstanceRecord, OperationPhase, OperationRecord, ResourceStatus, StoredChanges, Transition,
};

use super::operations::{self, is_running};
use super::{
    AcceptedReply, Broker, Changed, Created, DeleteRequest, Failure, FetchedInstance, PollRequest,
    ProvisionRequest, UpdateRequest, check_maintenance_version, fingerprint, resolve_plan,
    same_fingerprint, validate_parameters,
};

/// What a transition decided to do next.
enum Next<T> {
    /// Answer now without calling the plugin.
    Answer(T),
    /// The operation record was written; call the plugin.
    Call(Box<InstanceRecord>),
}

fn concurrency_error() -> Refusal {
    Refusal::ConcurrencyError(
        "Another operation for this service instance is in progress.".to_owned(),
    )
}

fn accepted_reply(record: &InstanceRecord) -> Option<AcceptedReply> {
    let operation = record.operation.as_ref()?;
    Some(AcceptedReply {
        operation: operation.id.clone(),
        dashboard_url: record.dashboard_url.clone(),
    })
}

fn existing_result(record: &InstanceRecord) -> InstanceResult {
    InstanceResult {
        dashboard_url: record.dashboard_url.clone(),
        metadata: record.metadata.clone(),
    }
}

/// Parameters after an update: new top-level keys replace old ones, the rest
/// stay (OSB leaves subset semantics to the broker).
fn merge_parameters(current: Option<&Value>, changes: Option<&Value>) -> Option<Value> {
    match (current, changes) {
        (Some(Value::Object(current)), Some(Value::Object(changes))) => {
            let mut merged = current.clone();
            merged.extend(
                changes
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone())),
            );
            Some(Value::Object(merged))
        }
        (current, None) => current.cloned(),
        (_, Some(changes)) => Some(changes.clone()),
    }
}

fn apply_changes(instance: &mut Instance, changes: &StoredChanges) {
    if let Some(plan_id) = &changes.plan_id {
        instance.plan_id = plan_id.clone();
    }
    if changes.parameters.is_some() {
        instance.parameters =
            merge_parameters(instance.parameters.as_ref(), changes.parameters.as_ref());
    }
    if let Some(context) = &changes.context {
        instance.context = Some(context.clone());
    }
    if let Some(version) = &changes.maintenance_version {
        instance.maintenance_version = Some(version.clone());
    }
}

impl Broker {
    pub async fn provision(
        &self,
        request: ProvisionRequest,
    ) -> Result<Created<InstanceResult>, Failure> {
        let catalog = self.catalog();
        let (_, plan) = resolve_plan(&catalog, &request.service_id, &request.plan_id)?;
        check_maintenance_version(plan, request.maintenance_version.as_deref())?;
        let schema = plan
            .schemas
            .as_ref()
            .and_then(|s| s.service_instance.as_ref())
            .and_then(|s| s.create.as_ref());
        validate_parameters(schema.map(|s| &s.parameters), request.parameters.as_ref())?;
        let plugin_version = catalog
            .plugin_of(&request.service_id)
            .map(|(_, info)| info.version.clone())
            .ok_or_else(|| {
                Failure::Plugin(format!("no plugin serves service {}", request.service_id))
            })?;

        let attributes = json!({
            "service_id": request.service_id,
            "plan_id": request.plan_id,
            "parameters": request.parameters,
            "organization_guid": request.organization_guid,
            "space_guid": request.space_guid,
        });
        let instance = Instance {
            id: request.instance_id.clone(),
            service_id: request.service_id.clone(),
            plan_id: request.plan_id.clone(),
            parameters: request.parameters.clone(),
            context: request.context.clone(),
            organization_guid: request.organization_guid.clone(),
            space_guid: request.space_guid.clone(),
            maintenance_version: plan
                .maintenance_info
                .as_ref()
                .map(|info| info.version.clone()),
            plugin_version,
        };
        let accepts_incomplete = request.info.accepts_incomplete;
        let next = self
            .store
            .transition_instance(&request.instance_id, |existing| {
                let fresh = || {
                    let operation = operations::start(OperationKind::Provision, fingerprint(&attributes));
                    let record = InstanceRecord {
                        instance,
                        status: ResourceStatus::Creating,
                        dashboard_url: None,
                        metadata: None,
                        operation: Some(operation),
                    };
                    Transition::Write(record.clone(), Ok(Next::Call(Box::new(record))))
                };
                let Some(record) = existing.filter(|r| r.status != ResourceStatus::Deleted) else {
                    return fresh();
                };
                let same = record.instance.service_id == request.service_id
                    && record.instance.plan_id == request.plan_id
                    && record.instance.parameters == request.parameters
                    && record.instance.organization_guid == request.organization_guid
                    && record.instance.space_guid == request.space_guid;
                let answer = match (record.status, record.operation.as_ref()) {
                    _ if !same => Err(Refusal::Conflict(format!(
                        "service instance {} already exists with different attributes",
                        request.instance_id
                    ))),
                    (ResourceStatus::Ready, operation) if !is_running(operation) => {
                        Ok(Next::Answer(Created::Existing(existing_result(&record))))
                    }
                    (ResourceStatus::Creating, Some(op))
                        if op.phase == OperationPhase::InProgress && accepts_incomplete =>
                    {
                        accepted_reply(&record).map(Created::Accepted).map(Next::Answer).ok_or_else(concurrency_error)
                    }
                    (ResourceStatus::Failed, _) => Err(Refusal::Conflict(format!(
                        "provisioning service instance {} failed earlier; deprovision it before provisioning again",
                        request.instance_id
                    ))),
                    _ => Err(concurrency_error()),
                };
                Transition::Keep(answer)
            })
            .await??;
        let record = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(record) => record,
        };

        let outcome = self
            .runtime
            .provision(&record.instance, &request.info)
            .await;
        let operation_id = record
            .operation
            .as_ref()
            .map(|op| op.id.clone())
            .unwrap_or_default();
        match outcome {
            Ok(InstanceOutcome::Done(result)) => {
                self.finish_instance(&request.instance_id, &operation_id, |record, operation| {
                    record.status = ResourceStatus::Ready;
                    record.dashboard_url = result.dashboard_url.clone();
                    record.metadata = result.metadata.clone();
                    operations::succeed(operation);
                })
                .await?;
                Ok(Created::New(result))
            }
            Ok(InstanceOutcome::Accepted(accepted)) if accepts_incomplete => {
                self.finish_instance(&request.instance_id, &operation_id, |record, operation| {
                    record.dashboard_url = accepted.dashboard_url.clone();
                    operations::accept(operation, accepted.operation.clone());
                })
                .await?;
                Ok(Created::Accepted(AcceptedReply {
                    operation: operation_id,
                    dashboard_url: accepted.dashboard_url,
                }))
            }
            Ok(InstanceOutcome::Accepted(_)) => {
                let description =
                    "the plugin answered asynchronously to a request without accepts_incomplete"
                        .to_owned();
                self.fail_creation(&request.instance_id, &operation_id, description.clone())
                    .await?;
                Err(Failure::Plugin(description))
            }
            Err(CallError::Refused(refusal)) if !matches!(refusal, Refusal::Internal(_)) => {
                // 4xx: the broker's resources must be as if nothing happened.
                self.finish_instance(&request.instance_id, &operation_id, |record, operation| {
                    record.status = ResourceStatus::Deleted;
                    operations::fail(operation, refusal.to_string());
                })
                .await?;
                Err(Failure::Refused(refusal))
            }
            Err(fault) => {
                // Keep the record: the platform's orphan-mitigation delete
                // must reach the plugin to clean up what it half created.
                let failure = Failure::from(fault);
                self.fail_creation(&request.instance_id, &operation_id, failure.to_string())
                    .await?;
                Err(failure)
            }
        }
    }

    pub async fn update(&self, request: UpdateRequest) -> Result<Changed<InstanceResult>, Failure> {
        let catalog = self.catalog();
        let offering = catalog.service(&request.service_id).ok_or_else(|| {
            Refusal::BadRequest(format!(
                "service_id {:?} is not in the catalog",
                request.service_id
            ))
        })?;
        let accepts_incomplete = request.info.accepts_incomplete;
        let attributes = json!({
            "plan_id": request.plan_id,
            "parameters": request.parameters,
            "context": request.context,
            "maintenance_version": request.maintenance_version,
        });
        let next = self
            .store
            .transition_instance(&request.instance_id, |existing| {
                let Some(mut record) = existing.filter(|r| r.status != ResourceStatus::Deleted)
                else {
                    return Transition::Keep(Err(Refusal::NotFound(format!(
                        "service instance {} does not exist",
                        request.instance_id
                    ))));
                };
                if record.instance.service_id != request.service_id {
                    return Transition::Keep(Err(Refusal::BadRequest(format!(
                        "service_id {:?} does not match the instance's service {:?}",
                        request.service_id, record.instance.service_id
                    ))));
                }
                if let Some(op) = record.operation.as_ref().filter(|op| is_running(Some(op))) {
                    let same_update = op.kind == OperationKind::Update
                        && op.phase == OperationPhase::InProgress
                        && same_fingerprint(&op.request_fingerprint, &attributes);
                    return Transition::Keep(if same_update && accepts_incomplete {
                        Ok(Next::Answer(Changed::Accepted(AcceptedReply {
                            operation: op.id.clone(),
                            dashboard_url: None,
                        })))
                    } else {
                        Err(concurrency_error())
                    });
                }
                if record.status != ResourceStatus::Ready {
                    return Transition::Keep(Err(Refusal::Unprocessable(format!(
                        "service instance {} is not usable (its provisioning did not succeed)",
                        request.instance_id
                    ))));
                }
                let changes = match plan_changes(&catalog, offering, &record.instance, &request) {
                    Ok(changes) => changes,
                    Err(refusal) => return Transition::Keep(Err(refusal)),
                };
                if changes == StoredChanges::default() {
                    return Transition::Keep(Ok(Next::Answer(Changed::Done(
                        InstanceResult::default(),
                    ))));
                }
                let mut operation =
                    operations::start(OperationKind::Update, fingerprint(&attributes));
                operation.changes = Some(changes);
                record.operation = Some(operation);
                Transition::Write(record.clone(), Ok(Next::Call(Box::new(record))))
            })
            .await??;
        let record = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(record) => record,
        };
        let Some(operation) = record.operation.clone() else {
            return Err(Failure::Plugin(
                "update started without an operation record".to_owned(),
            ));
        };
        let changes = operation.changes.clone().unwrap_or_default();

        let outcome = self
            .runtime
            .update(
                &record.instance,
                &InstanceChanges::from(&changes),
                &request.info,
            )
            .await;
        match outcome {
            Ok(InstanceOutcome::Done(result)) => {
                self.finish_instance(&request.instance_id, &operation.id, |record, operation| {
                    apply_changes(&mut record.instance, &changes);
                    if result.dashboard_url.is_some() {
                        record.dashboard_url = result.dashboard_url.clone();
                    }
                    if result.metadata.is_some() {
                        record.metadata = result.metadata.clone();
                    }
                    operations::succeed(operation);
                })
                .await?;
                Ok(Changed::Done(result))
            }
            Ok(InstanceOutcome::Accepted(accepted)) if accepts_incomplete => {
                self.finish_instance(&request.instance_id, &operation.id, |record, operation| {
                    if accepted.dashboard_url.is_some() {
                        record.dashboard_url = accepted.dashboard_url.clone();
                    }
                    operations::accept(operation, accepted.operation.clone());
                })
                .await?;
                Ok(Changed::Accepted(AcceptedReply {
                    operation: operation.id,
                    dashboard_url: accepted.dashboard_url,
                }))
            }
            other => {
                let failure = match other {
                    Ok(_) => Failure::Plugin(
                        "the plugin answered asynchronously to a request without accepts_incomplete".to_owned(),
                    ),
                    Err(error) => Failure::from(error),
                };
                self.finish_instance(&request.instance_id, &operation.id, |_, operation| {
                    operations::fail(operation, failure.to_string());
                })
                .await?;
                Err(failure)
            }
        }
    }

    pub async fn deprovision(&self, request: DeleteRequest) -> Result<Changed<()>, Failure> {
        let accepts_incomplete = request.info.accepts_incomplete;
        let attributes = json!({ "service_id": request.service_id, "plan_id": request.plan_id });
        let next = self
            .store
            .transition_instance(&request.instance_id, |existing| {
                let Some(mut record) = existing.filter(|r| r.status != ResourceStatus::Deleted)
                else {
                    return Transition::Keep(Err(Refusal::Gone(format!(
                        "service instance {} does not exist",
                        request.instance_id
                    ))));
                };
                if record.instance.service_id != request.service_id {
                    return Transition::Keep(Err(Refusal::BadRequest(format!(
                        "service_id {:?} does not match the instance's service {:?}",
                        request.service_id, record.instance.service_id
                    ))));
                }
                if let Some(op) = record.operation.as_ref().filter(|op| is_running(Some(op))) {
                    return Transition::Keep(
                        match operations::pending_deletion(
                            op,
                            OperationKind::Deprovision,
                            accepts_incomplete,
                        ) {
                            Some(reply) => Ok(Next::Answer(Changed::Accepted(reply))),
                            None => Err(concurrency_error()),
                        },
                    );
                }
                record.operation = Some(operations::start(
                    OperationKind::Deprovision,
                    fingerprint(&attributes),
                ));
                Transition::Write(record.clone(), Ok(Next::Call(Box::new(record))))
            })
            .await??;
        let record = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(record) => record,
        };
        let operation_id = record
            .operation
            .as_ref()
            .map(|op| op.id.clone())
            .unwrap_or_default();

        let outcome = match self.unbind_leftovers(&record.instance, &request.info).await {
            Ok(()) => self
                .runtime
                .deprovision(&record.instance, &request.info)
                .await
                .map_err(Failure::from),
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok(DeletionOutcome::Done) | Err(Failure::Refused(Refusal::Gone(_))) => {
                self.finish_instance(&request.instance_id, &operation_id, |record, operation| {
                    record.status = ResourceStatus::Deleted;
                    operations::succeed(operation);
                })
                .await?;
                Ok(Changed::Done(()))
            }
            Ok(DeletionOutcome::Accepted(accepted)) if accepts_incomplete => {
                self.finish_instance(&request.instance_id, &operation_id, |_, operation| {
                    operations::accept(operation, accepted.operation.clone());
                })
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
                    Err(failure) => failure,
                };
                self.finish_instance(&request.instance_id, &operation_id, |_, operation| {
                    operations::fail(operation, failure.to_string());
                })
                .await?;
                Err(failure)
            }
        }
    }

    /// OSB says the platform deletes bindings before their instance; when it
    /// did not (or its unbind got lost), revoke them now so no credentials
    /// outlive the instance.
    async fn unbind_leftovers(
        &self,
        instance: &Instance,
        info: &RequestInfo,
    ) -> Result<(), Failure> {
        let sync_info = RequestInfo {
            accepts_incomplete: false,
            ..info.clone()
        };
        for leftover in self.store.live_bindings(&instance.id).await? {
            if is_running(leftover.operation.as_ref()) {
                return Err(Refusal::ConcurrencyError(format!(
                    "binding {} of this instance is still being processed",
                    leftover.binding.id
                ))
                .into());
            }
            match self
                .runtime
                .unbind(instance, &leftover.binding, &sync_info)
                .await
            {
                Ok(DeletionOutcome::Done) | Err(CallError::Refused(Refusal::Gone(_))) => {}
                Ok(DeletionOutcome::Accepted(_)) => {
                    return Err(Failure::Plugin(format!(
                        "binding {} must be unbound before the instance is deleted, and its unbind is asynchronous",
                        leftover.binding.id
                    )));
                }
                Err(error) => return Err(error.into()),
            }
            self.mark_binding_deleted(&leftover.binding.id, &instance.id)
                .await?;
        }
        Ok(())
    }

    pub async fn fetch_instance(&self, instance_id: &str) -> Result<FetchedInstance, Failure> {
        let not_found =
            || Refusal::NotFound(format!("service instance {instance_id} does not exist"));
        let record = self
            .store
            .instance(instance_id)
            .await?
            .ok_or_else(not_found)?;
        if record.status != ResourceStatus::Ready {
            return Err(not_found().into());
        }
        if record
            .operation
            .as_ref()
            .is_some_and(|op| op.kind == OperationKind::Update && is_running(Some(op)))
        {
            return Err(Refusal::ConcurrencyError(
                "The service instance is being updated.".to_owned(),
            )
            .into());
        }
        let catalog = self.catalog();
        let retrievable = catalog
            .service(&record.instance.service_id)
            .is_some_and(|s| s.instances_retrievable);
        let details = if retrievable {
            Some(self.runtime.get_instance(&record.instance).await?)
        } else {
            None
        };
        let maintenance_info = catalog
            .plan(&record.instance.service_id, &record.instance.plan_id)
            .and_then(|plan| plan.maintenance_info.clone())
            .map(|mut info| {
                if let Some(version) = &record.instance.maintenance_version {
                    info.version = version.clone();
                }
                info
            });
        let (dashboard_url, parameters, metadata) = match details {
            Some(details) => (
                details.dashboard_url.or(record.dashboard_url),
                details.parameters,
                details.metadata.or(record.metadata),
            ),
            None => (
                record.dashboard_url,
                record.instance.parameters.clone(),
                record.metadata,
            ),
        };
        Ok(FetchedInstance {
            service_id: record.instance.service_id,
            plan_id: record.instance.plan_id,
            dashboard_url,
            parameters,
            maintenance_info,
            metadata,
        })
    }

    pub async fn instance_last_operation(
        &self,
        poll: PollRequest,
    ) -> Result<OperationStatus, Failure> {
        let instance_id = &poll.instance_id;
        let not_found =
            || Refusal::NotFound(format!("service instance {instance_id} does not exist"));
        let record = self
            .store
            .instance(instance_id)
            .await?
            .ok_or_else(not_found)?;
        let Some(operation) = record.operation.clone() else {
            return Err(not_found().into());
        };
        if record.status == ResourceStatus::Deleted && operation.kind != OperationKind::Deprovision
        {
            return Err(not_found().into());
        }
        if operation.phase != OperationPhase::InProgress {
            return Ok(operations::status(&operation));
        }
        let reported = match self
            .runtime
            .last_operation(
                &record.instance,
                operation.kind,
                operation.plugin_operation.as_deref(),
            )
            .await
        {
            Ok(status) => status,
            Err(CallError::Refused(Refusal::Gone(_)))
                if operation.kind == OperationKind::Deprovision =>
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
        let kind = operation.kind;
        self.finish_instance(instance_id, &operation.id, |record, operation| {
            let succeeded = reported.state == OperationState::Succeeded;
            match (kind, succeeded) {
                (OperationKind::Provision, true) => record.status = ResourceStatus::Ready,
                (OperationKind::Provision, false) => record.status = ResourceStatus::Failed,
                (OperationKind::Update, true) => {
                    if let Some(changes) = &operation.changes {
                        apply_changes(&mut record.instance, changes);
                    }
                }
                (OperationKind::Deprovision, true) => record.status = ResourceStatus::Deleted,
                _ => {}
            }
            operations::record_status(operation, &reported);
        })
        .await?;
        Ok(reported)
    }

    /// Applies `change` to the instance if its current operation is still
    /// `operation_id` (a restart or a purge may have replaced it meanwhile).
    async fn finish_instance(
        &self,
        instance_id: &str,
        operation_id: &str,
        change: impl FnOnce(&mut InstanceRecord, &mut OperationRecord) + Send,
    ) -> Result<(), Failure> {
        self.store
            .transition_instance(instance_id, |existing| match existing {
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

    async fn fail_creation(
        &self,
        instance_id: &str,
        operation_id: &str,
        description: String,
    ) -> Result<(), Failure> {
        self.finish_instance(instance_id, operation_id, |record, operation| {
            record.status = ResourceStatus::Failed;
            operations::fail(operation, description);
        })
        .await
    }
}

/// Checks an update against the catalog and works out what really changes.
fn plan_changes(
    catalog: &crate::catalog::CatalogSnapshot,
    offering: &crate::model::ServiceOffering,
    instance: &Instance,
    request: &UpdateRequest,
) -> Result<StoredChanges, Refusal> {
    let new_plan_id = request
        .plan_id
        .as_ref()
        .filter(|plan| **plan != instance.plan_id);
    let current_plan = catalog.plan(&instance.service_id, &instance.plan_id);
    let target_plan = match new_plan_id {
        Some(plan_id) => {
            let (_, target) = resolve_plan(catalog, &instance.service_id, plan_id)?;
            let updateable = current_plan
                .and_then(|plan| plan.plan_updateable)
                .unwrap_or(offering.plan_updateable);
            if !updateable {
                return Err(Refusal::Unprocessable(format!(
                    "plan changes are not supported for service {:?}",
                    offering.name
                )));
            }
            Some(target)
        }
        None => current_plan,
    };
    let Some(target_plan) = target_plan else {
        return Err(Refusal::Unprocessable(format!(
            "the instance's plan {:?} is no longer in the catalog; choose a new plan",
            instance.plan_id
        )));
    };
    let maintenance_version = match &request.maintenance_version {
        Some(version) => {
            check_maintenance_version(target_plan, Some(version))?;
            Some(version.clone()).filter(|v| instance.maintenance_version.as_ref() != Some(v))
        }
        None => None,
    };
    let schema = target_plan
        .schemas
        .as_ref()
        .and_then(|s| s.service_instance.as_ref())
        .and_then(|s| s.update.as_ref());
    validate_parameters(schema.map(|s| &s.parameters), request.parameters.as_ref())?;
    let context = request
        .context
        .clone()
        .filter(|context| instance.context.as_ref() != Some(context));
    if context.is_some()
        && new_plan_id.is_none()
        && request.parameters.is_none()
        && !offering.allow_context_updates
    {
        // The platform may not send context-only updates to this offering;
        // accept and record nothing rather than fail an instance rename.
        return Ok(StoredChanges::default());
    }
    Ok(StoredChanges {
        plan_id: new_plan_id.cloned(),
        parameters: request.parameters.clone(),
        context,
        maintenance_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_merge_key_by_key() {
        let merged = merge_parameters(
            Some(&json!({"a": 1, "b": 2})),
            Some(&json!({"b": 3, "c": 4})),
        );
        assert_eq!(merged, Some(json!({"a": 1, "b": 3, "c": 4})));
        assert_eq!(
            merge_parameters(Some(&json!({"a": 1})), None),
            Some(json!({"a": 1}))
        );
        assert_eq!(
            merge_parameters(None, Some(&json!({"a": 1}))),
            Some(json!({"a": 1}))
        );
    }
}
