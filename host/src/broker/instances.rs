//! Provision, update, deprovision, fetch and poll service instances: the
//! lifecycle rules (`crate::lifecycle`) decide, this file reads and writes
//! the records and calls the plugin around their decisions.

use serde_json::json;

use crate::lifecycle::{
    self, Admission, Found, OperationRecord, PollStep, Polled, Resource, ResourceStatus,
    StoredChanges,
};
use crate::model::{
    DeletionOutcome, Instance, InstanceChanges, InstanceResult, OperationKind, OperationStatus,
    Refusal, RequestInfo,
};
use crate::runtime::CallError;
use crate::state::{BindingRecord, InstanceRecord, Transition};

use super::changes::{apply_changes, plan_changes};
use super::validation::{
    check_maintenance_version, offered_service, resolve_plan, validate_parameters,
};
use super::{
    AcceptedReply, Broker, BrokerError, Changed, Created, DeleteRequest, FetchedInstance, Next,
    Plugins, PollRequest, ProvisionRequest, Records, UpdateRequest, answer, changed, created,
};

fn existing_result(record: &InstanceRecord) -> InstanceResult {
    InstanceResult {
        dashboard_url: record.dashboard_url.clone(),
        metadata: record.metadata.clone(),
    }
}

/// The stored instance as the lifecycle rules see it.
fn found<'a>(record: &'a InstanceRecord, differs: Option<&'a str>) -> Found<'a> {
    Found {
        status: record.status,
        operation: record.operation.as_ref(),
        differs,
    }
}

/// An update or delete must name the instance's own service.
fn service_mismatch(record: &InstanceRecord, service_id: &str) -> Option<String> {
    (record.instance.service_id != service_id).then(|| {
        format!(
            "service_id {service_id:?} does not match the instance's service {:?}",
            record.instance.service_id
        )
    })
}

impl<P: Plugins, R: Records> Broker<P, R> {
    pub async fn provision(
        &self,
        request: ProvisionRequest,
    ) -> Result<Created<InstanceResult>, BrokerError> {
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
            .ok_or_else(|| CallError::NoPlugin {
                service_id: request.service_id.clone(),
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
        let rules = lifecycle::Request {
            resource: Resource::Instance,
            kind: OperationKind::Provision,
            id: &request.instance_id,
            attributes: &attributes,
            accepts_incomplete,
        };
        let next = self
            .records
            .transition_instance(&request.instance_id, |existing| {
                let same = |record: &InstanceRecord| {
                    record.instance.service_id == request.service_id
                        && record.instance.plan_id == request.plan_id
                        && record.instance.parameters == request.parameters
                        && record.instance.organization_guid == request.organization_guid
                        && record.instance.space_guid == request.space_guid
                };
                let admission = lifecycle::admit(
                    &rules,
                    existing
                        .as_ref()
                        .map(|record| found(record, (!same(record)).then_some("attributes"))),
                );
                match (admission, existing) {
                    (Admission::Start(operation), _) => {
                        let record = InstanceRecord {
                            instance,
                            status: ResourceStatus::Creating,
                            dashboard_url: None,
                            metadata: None,
                            operation: Some(operation),
                        };
                        Transition::Write(record.clone(), Ok(Next::Call(Box::new(record))))
                    }
                    (Admission::Existing, Some(record)) => Transition::Keep(Ok(Next::Answer(
                        Created::Existing(existing_result(&record)),
                    ))),
                    (Admission::Running { operation }, record) => {
                        Transition::Keep(Ok(Next::Answer(Created::Accepted(AcceptedReply {
                            operation,
                            dashboard_url: record.and_then(|record| record.dashboard_url),
                        }))))
                    }
                    (Admission::Refuse(refusal), _) => Transition::Keep(Err(refusal)),
                    (Admission::Existing, None) => Transition::Keep(Err(Refusal::Internal(
                        "an existing instance was found without a record".to_owned(),
                    ))),
                }
            })
            .await??;
        let record = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(record) => record,
        };
        let operation_id = operation_id(&record.operation);

        let outcome = self
            .plugins
            .provision(&record.instance, &request.info)
            .await
            .map_err(BrokerError::from);
        let settlement = lifecycle::settle(
            OperationKind::Provision,
            accepts_incomplete,
            answer(outcome),
        );
        self.finish_instance(&request.instance_id, &operation_id, |record, operation| {
            settlement.apply(&mut record.status, operation);
            match &settlement.verdict {
                lifecycle::Verdict::Done(result) => {
                    record.dashboard_url = result.dashboard_url.clone();
                    record.metadata = result.metadata.clone();
                }
                lifecycle::Verdict::Accepted { dashboard_url } => {
                    record.dashboard_url = dashboard_url.clone();
                }
                _ => {}
            }
        })
        .await?;
        created(settlement.verdict, operation_id)
    }

    pub async fn update(
        &self,
        request: UpdateRequest,
    ) -> Result<Changed<InstanceResult>, BrokerError> {
        let catalog = self.catalog();
        let offering = offered_service(&catalog, &request.service_id)?;
        let accepts_incomplete = request.info.accepts_incomplete;
        let attributes = json!({
            "plan_id": request.plan_id,
            "parameters": request.parameters,
            "context": request.context,
            "maintenance_version": request.maintenance_version,
        });
        let rules = lifecycle::Request {
            resource: Resource::Instance,
            kind: OperationKind::Update,
            id: &request.instance_id,
            attributes: &attributes,
            accepts_incomplete,
        };
        let next = self
            .records
            .transition_instance(&request.instance_id, |existing| {
                let mismatch = existing
                    .as_ref()
                    .and_then(|record| service_mismatch(record, &request.service_id));
                let admission = lifecycle::admit(
                    &rules,
                    existing
                        .as_ref()
                        .map(|record| found(record, mismatch.as_deref())),
                );
                let (mut operation, mut record) = match (admission, existing) {
                    (Admission::Start(operation), Some(record)) => (operation, record),
                    (Admission::Running { operation }, _) => {
                        return Transition::Keep(Ok(Next::Answer(Changed::Accepted(
                            AcceptedReply {
                                operation,
                                dashboard_url: None,
                            },
                        ))));
                    }
                    (Admission::Refuse(refusal), _) => return Transition::Keep(Err(refusal)),
                    (Admission::Start(_) | Admission::Existing, _) => {
                        return Transition::Keep(Err(Refusal::Internal(
                            "an update was admitted without a record".to_owned(),
                        )));
                    }
                };
                let changes = match plan_changes(&catalog, offering, &record.instance, &request) {
                    Ok(changes) => changes,
                    Err(refusal) => return Transition::Keep(Err(refusal)),
                };
                if changes == StoredChanges::default() {
                    return Transition::Keep(Ok(Next::Answer(Changed::Done(
                        InstanceResult::default(),
                    ))));
                }
                operation.changes = Some(changes);
                record.operation = Some(operation);
                Transition::Write(record.clone(), Ok(Next::Call(Box::new(record))))
            })
            .await??;
        let record = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(record) => record,
        };
        let operation_id = operation_id(&record.operation);
        let changes = record
            .operation
            .as_ref()
            .and_then(|operation| operation.changes.clone())
            .unwrap_or_default();

        let outcome = self
            .plugins
            .update(
                &record.instance,
                &InstanceChanges::from(&changes),
                &request.info,
            )
            .await
            .map_err(BrokerError::from);
        let settlement =
            lifecycle::settle(OperationKind::Update, accepts_incomplete, answer(outcome));
        self.finish_instance(&request.instance_id, &operation_id, |record, operation| {
            settlement.apply(&mut record.status, operation);
            match &settlement.verdict {
                lifecycle::Verdict::Done(result) => {
                    apply_changes(&mut record.instance, &changes);
                    if result.dashboard_url.is_some() {
                        record.dashboard_url = result.dashboard_url.clone();
                    }
                    if result.metadata.is_some() {
                        record.metadata = result.metadata.clone();
                    }
                }
                lifecycle::Verdict::Accepted { dashboard_url } if dashboard_url.is_some() => {
                    record.dashboard_url = dashboard_url.clone();
                }
                _ => {}
            }
        })
        .await?;
        changed(settlement.verdict, operation_id)
    }

    pub async fn deprovision(&self, request: DeleteRequest) -> Result<Changed<()>, BrokerError> {
        let accepts_incomplete = request.info.accepts_incomplete;
        let attributes = json!({ "service_id": request.service_id, "plan_id": request.plan_id });
        let rules = lifecycle::Request {
            resource: Resource::Instance,
            kind: OperationKind::Deprovision,
            id: &request.instance_id,
            attributes: &attributes,
            accepts_incomplete,
        };
        let next = self
            .records
            .transition_instance_and_bindings(&request.instance_id, |existing, leftovers| {
                let mismatch = existing
                    .as_ref()
                    .and_then(|record| service_mismatch(record, &request.service_id));
                let admission = lifecycle::admit(
                    &rules,
                    existing
                        .as_ref()
                        .map(|record| found(record, mismatch.as_deref())),
                );
                match (admission, existing) {
                    (Admission::Start(operation), Some(mut record)) => {
                        // All checked before any is revoked: a deprovision
                        // refused with 422 must leave every binding it found,
                        // or a bind answered 201 just before could lose its
                        // credentials to a deletion that did not happen.
                        if let Some(busy) = leftovers
                            .iter()
                            .find(|leftover| lifecycle::is_running(leftover.operation.as_ref()))
                        {
                            return Transition::Keep(Err(Refusal::ConcurrencyError(format!(
                                "binding {} of this instance is still being processed",
                                busy.binding.id
                            ))));
                        }
                        record.operation = Some(operation);
                        Transition::Write(
                            record.clone(),
                            Ok(Next::Call(Box::new((record, leftovers)))),
                        )
                    }
                    (Admission::Running { operation }, _) => {
                        Transition::Keep(Ok(Next::Answer(Changed::Accepted(AcceptedReply {
                            operation,
                            dashboard_url: None,
                        }))))
                    }
                    (Admission::Refuse(refusal), _) => Transition::Keep(Err(refusal)),
                    (Admission::Start(_) | Admission::Existing, _) => Transition::Keep(Err(
                        Refusal::Internal("a deprovision was admitted without a record".to_owned()),
                    )),
                }
            })
            .await??;
        let (record, leftovers) = match next {
            Next::Answer(answer) => return Ok(answer),
            Next::Call(call) => *call,
        };
        let operation_id = operation_id(&record.operation);

        let outcome = match self
            .unbind_leftovers(&record.instance, leftovers, &request.info)
            .await
        {
            Ok(()) => self
                .plugins
                .deprovision(&record.instance, &request.info)
                .await
                .map_err(BrokerError::from),
            Err(failure) => Err(failure),
        };
        let settlement = lifecycle::settle(
            OperationKind::Deprovision,
            accepts_incomplete,
            answer(outcome),
        );
        self.finish_instance(&request.instance_id, &operation_id, |record, operation| {
            settlement.apply(&mut record.status, operation);
        })
        .await?;
        changed(settlement.verdict, operation_id)
    }

    /// OSB says the platform deletes bindings before their instance; when it
    /// did not (or its unbind got lost), revoke them now so no credentials
    /// outlive the instance. `leftovers` are the instance's live bindings,
    /// none of them running, read with the deprovision's own record.
    async fn unbind_leftovers(
        &self,
        instance: &Instance,
        leftovers: Vec<BindingRecord>,
        info: &RequestInfo,
    ) -> Result<(), BrokerError> {
        let sync_info = RequestInfo {
            accepts_incomplete: false,
            ..info.clone()
        };
        for leftover in leftovers {
            match self
                .plugins
                .unbind(instance, &leftover.binding, &sync_info)
                .await
            {
                Ok(DeletionOutcome::Done) | Err(CallError::Refused(Refusal::Gone(_))) => {}
                Ok(DeletionOutcome::Accepted(_)) => {
                    return Err(BrokerError::PluginContract(format!(
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

    pub async fn fetch_instance(&self, instance_id: &str) -> Result<FetchedInstance, BrokerError> {
        let record = self.records.instance(instance_id).await?.ok_or_else(|| {
            Refusal::NotFound(format!("service instance {instance_id} does not exist"))
        })?;
        lifecycle::fetchable_instance(instance_id, record.status, record.operation.as_ref())?;
        let catalog = self.catalog();
        // A retired plugin's instances are described by its offering still.
        let retrievable = catalog
            .service_of_instance(&record.instance.service_id)
            .is_some_and(|s| s.instances_retrievable);
        let details = if retrievable {
            Some(self.plugins.get_instance(&record.instance).await?)
        } else {
            None
        };
        let maintenance_info = catalog
            .plan_of_instance(&record.instance.service_id, &record.instance.plan_id)
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
    ) -> Result<OperationStatus, BrokerError> {
        let instance_id = &poll.instance_id;
        let not_found =
            || Refusal::NotFound(format!("service instance {instance_id} does not exist"));
        let record = self
            .records
            .instance(instance_id)
            .await?
            .ok_or_else(not_found)?;
        let operation = match lifecycle::poll_step(record.status, record.operation.as_ref()) {
            PollStep::NotFound => return Err(not_found().into()),
            PollStep::Stored(status) => return Ok(status),
            PollStep::AskPlugin => record.operation.clone().ok_or_else(not_found)?,
        };
        // Concurrent polls of this operation share one plugin call.
        let key = operation.id.clone();
        self.instance_polls
            .run(&key, self.ask_instance_plugin(record, operation))
            .await
    }

    /// Asks the plugin how `operation` of `record` goes, and settles a
    /// finished one in the record.
    async fn ask_instance_plugin(
        &self,
        record: InstanceRecord,
        operation: OperationRecord,
    ) -> Result<OperationStatus, BrokerError> {
        let polled = self
            .plugins
            .last_operation(
                &record.instance,
                operation.kind,
                operation.plugin_operation.as_deref(),
            )
            .await;
        let (reported, status) = match lifecycle::settle_poll(operation.kind, polled, |error| {
            matches!(error, CallError::Refused(Refusal::Gone(_)))
        })? {
            Polled::Running(reported) => return Ok(reported),
            Polled::Finished { reported, status } => (reported, status),
        };
        let kind = operation.kind;
        let instance_id = &record.instance.id;
        self.finish_instance(instance_id, &operation.id, |record, operation| {
            if let Some(status) = status {
                record.status = status;
            }
            if kind == OperationKind::Update
                && reported.state == crate::model::OperationState::Succeeded
                && let Some(changes) = &operation.changes
            {
                apply_changes(&mut record.instance, changes);
            }
            lifecycle::record_status(operation, &reported);
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
    ) -> Result<(), BrokerError> {
        self.records
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
}

/// The id of the operation a transition just started.
pub(super) fn operation_id(operation: &Option<OperationRecord>) -> String {
    operation
        .as_ref()
        .map(|op| op.id.clone())
        .unwrap_or_default()
}
