//! One operation of `plugins test`, driven to its end as the broker would:
//! the runtime's call, then, for an `accepted` answer, `last_operation`
//! polls until the operation is done (and `get_binding` for an asynchronous
//! bind's result).

use std::time::{Duration, Instant};

use serde_json::json;

use wasm_broker::model::{
    Accepted, BindOutcome, Binding, BindingResult, DeletionOutcome, Instance, InstanceOutcome,
    OperationKind, OperationState, OperationStatus, Refusal, RequestInfo, ServiceOffering,
    ServicePlan,
};
use wasm_broker::runtime::{CallError, PluginRuntime};

/// What an operation came to, after any polling.
#[derive(Debug)]
pub enum Settled<T> {
    /// Finished: the value, and how (`done`, `accepted, succeeded after 3 polls`).
    Done(T, String),
    /// The plugin refused it (directly, or in a poll).
    Refused(Refusal),
    /// A fault, a failed operation, or polling that ran out of time.
    Failed(String),
}

impl<T> Settled<T> {
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done(..))
    }

    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Refused(Refusal::Gone(_)))
    }

    /// How it ended, for the report.
    pub fn describe(&self) -> String {
        match self {
            Self::Done(_, how) => how.clone(),
            Self::Refused(refusal) => refusal_text(refusal),
            Self::Failed(why) => why.clone(),
        }
    }
}

/// `conflict (409): the database exists`.
pub fn refusal_text(refusal: &Refusal) -> String {
    let (word, status) = match refusal {
        Refusal::BadRequest(_) => ("bad-request", 400),
        Refusal::Conflict(_) => ("conflict", 409),
        Refusal::Gone(_) => ("gone", 410),
        Refusal::NotFound(_) => ("not-found", 404),
        Refusal::AsyncRequired(_) => ("async-required", 422),
        Refusal::ConcurrencyError(_) => ("concurrency-error", 422),
        Refusal::RequiresApp(_) => ("requires-app", 422),
        Refusal::MaintenanceInfoConflict(_) => ("maintenance-info-conflict", 422),
        Refusal::Unprocessable(_) => ("unprocessable", 422),
        Refusal::Internal(_) => ("internal", 500),
    };
    format!("{word} ({status}): {refusal}")
}

/// A random id in the GUID form platforms use.
pub fn new_id() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Calls the plugin's exports through the runtime, as the broker would for
/// a platform that accepts asynchronous operations.
pub struct Calls<'a> {
    pub runtime: &'a PluginRuntime,
    /// The version `describe()` reported, recorded in every instance.
    pub plugin_version: String,
    /// How long an asynchronous operation may take (at most the plan's
    /// `maximum_polling_duration`).
    pub poll_timeout: Duration,
    requests: u32,
}

impl<'a> Calls<'a> {
    pub fn new(runtime: &'a PluginRuntime, plugin_version: String, poll_timeout: Duration) -> Self {
        Self {
            runtime,
            plugin_version,
            poll_timeout,
            requests: 0,
        }
    }

    /// A new instance record of `plan`, as the broker would store it.
    pub fn instance(
        &self,
        offering: &ServiceOffering,
        plan: &ServicePlan,
        parameters: Option<serde_json::Value>,
    ) -> Instance {
        Instance {
            id: new_id(),
            service_id: offering.id.clone(),
            plan_id: plan.id.clone(),
            parameters,
            context: Some(json!({"platform": "wasm-broker-plugins-test"})),
            organization_guid: None,
            space_guid: None,
            maintenance_version: plan
                .maintenance_info
                .as_ref()
                .map(|info| info.version.clone()),
            plugin_version: self.plugin_version.clone(),
        }
    }

    /// A new binding record of `instance`, for an application.
    pub fn binding(&self, instance: &Instance, parameters: Option<serde_json::Value>) -> Binding {
        let app_guid = new_id();
        Binding {
            id: new_id(),
            instance_id: instance.id.clone(),
            service_id: instance.service_id.clone(),
            plan_id: instance.plan_id.clone(),
            bind_resource: Some(json!({"app_guid": app_guid})),
            app_guid: Some(app_guid),
            context: Some(json!({"platform": "wasm-broker-plugins-test"})),
            parameters,
            predecessor_binding_id: None,
        }
    }

    fn info(&mut self) -> RequestInfo {
        self.requests += 1;
        RequestInfo {
            originating_identity: None,
            request_identity: Some(format!("plugins-test-{}", self.requests)),
            api_version: "2.17".to_owned(),
            accepts_incomplete: true,
        }
    }

    pub async fn provision(&mut self, instance: &Instance, plan: &ServicePlan) -> Settled<()> {
        let info = self.info();
        let answer = self.runtime.provision(instance, &info).await;
        self.instance_answer(answer, instance, plan, OperationKind::Provision)
            .await
    }

    /// A provision whose deadline is `cut` (`PluginRuntime::provision_within`).
    pub async fn provision_cut(&mut self, instance: &Instance, cut: Duration) -> Settled<()> {
        let info = self.info();
        match self.runtime.provision_within(instance, &info, cut).await {
            Ok(InstanceOutcome::Done(_)) => Settled::Done((), "done".to_owned()),
            Ok(InstanceOutcome::Accepted(_)) => Settled::Done((), "accepted".to_owned()),
            Err(error) => call_error(error),
        }
    }

    pub async fn deprovision(&mut self, instance: &Instance, plan: &ServicePlan) -> Settled<()> {
        let info = self.info();
        let answer = match self.runtime.deprovision(instance, &info).await {
            Ok(DeletionOutcome::Done) => Ok(InstanceOutcome::Done(Default::default())),
            Ok(DeletionOutcome::Accepted(accepted)) => Ok(InstanceOutcome::Accepted(accepted)),
            Err(error) => Err(error),
        };
        self.instance_answer(answer, instance, plan, OperationKind::Deprovision)
            .await
    }

    pub async fn get_instance(&mut self, instance: &Instance) -> Settled<()> {
        match self.runtime.get_instance(instance).await {
            Ok(_) => Settled::Done((), "answered".to_owned()),
            Err(error) => call_error(error),
        }
    }

    async fn instance_answer(
        &mut self,
        answer: Result<InstanceOutcome, CallError>,
        instance: &Instance,
        plan: &ServicePlan,
        kind: OperationKind,
    ) -> Settled<()> {
        match answer {
            Ok(InstanceOutcome::Done(_)) => Settled::Done((), "done".to_owned()),
            Ok(InstanceOutcome::Accepted(accepted)) => {
                let runtime = self.runtime;
                let operation = accepted.operation.clone();
                self.poll(plan, move || {
                    let operation = operation.clone();
                    async move {
                        runtime
                            .last_operation(instance, kind, operation.as_deref())
                            .await
                    }
                })
                .await
            }
            Err(error) => call_error(error),
        }
    }

    pub async fn bind(
        &mut self,
        instance: &Instance,
        binding: &Binding,
        plan: &ServicePlan,
    ) -> Settled<BindingResult> {
        let info = self.info();
        match self.runtime.bind(instance, binding, &info).await {
            Ok(BindOutcome::Done(result)) => Settled::Done(result, "done".to_owned()),
            Ok(BindOutcome::Accepted(accepted)) => {
                match self
                    .poll_binding(instance, binding, plan, OperationKind::Bind, &accepted)
                    .await
                {
                    Settled::Done((), how) => {
                        match self.runtime.get_binding(instance, binding).await {
                            Ok(result) => Settled::Done(result, format!("{how}, then get-binding")),
                            Err(error) => match call_error::<()>(error) {
                                Settled::Refused(refusal) => Settled::Failed(format!(
                                    "{how}, but get-binding answered {}",
                                    refusal_text(&refusal)
                                )),
                                other => Settled::Failed(format!(
                                    "{how}, but get-binding failed: {}",
                                    other.describe()
                                )),
                            },
                        }
                    }
                    Settled::Refused(refusal) => Settled::Refused(refusal),
                    Settled::Failed(why) => Settled::Failed(why),
                }
            }
            Err(error) => call_error(error),
        }
    }

    pub async fn unbind(
        &mut self,
        instance: &Instance,
        binding: &Binding,
        plan: &ServicePlan,
    ) -> Settled<()> {
        let info = self.info();
        match self.runtime.unbind(instance, binding, &info).await {
            Ok(DeletionOutcome::Done) => Settled::Done((), "done".to_owned()),
            Ok(DeletionOutcome::Accepted(accepted)) => {
                self.poll_binding(instance, binding, plan, OperationKind::Unbind, &accepted)
                    .await
            }
            Err(error) => call_error(error),
        }
    }

    async fn poll_binding(
        &mut self,
        instance: &Instance,
        binding: &Binding,
        plan: &ServicePlan,
        kind: OperationKind,
        accepted: &Accepted,
    ) -> Settled<()> {
        let runtime = self.runtime;
        let operation = accepted.operation.clone();
        self.poll(plan, move || {
            let operation = operation.clone();
            async move {
                runtime
                    .last_binding_operation(instance, binding, kind, operation.as_deref())
                    .await
            }
        })
        .await
    }

    /// Polls until the operation succeeds or fails, at growing intervals
    /// (50 ms to 1 s), for at most the poll timeout or the plan's
    /// `maximum_polling_duration`, whichever is shorter.
    async fn poll<F, Fut>(&mut self, plan: &ServicePlan, mut ask: F) -> Settled<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<OperationStatus, CallError>>,
    {
        let limit = plan
            .maximum_polling_duration
            .map(|seconds| Duration::from_secs(seconds.into()))
            .map_or(self.poll_timeout, |plan_limit| {
                plan_limit.min(self.poll_timeout)
            });
        let started = Instant::now();
        let mut interval = Duration::from_millis(50);
        let mut polls = 0u32;
        loop {
            polls += 1;
            match ask().await {
                Ok(status) => match status.state {
                    OperationState::Succeeded => {
                        return Settled::Done(
                            (),
                            format!("accepted, succeeded after {polls} polls"),
                        );
                    }
                    OperationState::Failed => {
                        return Settled::Failed(format!(
                            "accepted, then failed after {polls} polls: {}",
                            status.description.as_deref().unwrap_or("no description")
                        ));
                    }
                    OperationState::InProgress => {}
                },
                Err(error) => return call_error(error),
            }
            if started.elapsed() >= limit {
                return Settled::Failed(format!(
                    "accepted, still in progress after {polls} polls in {} s",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(1));
        }
    }
}

fn call_error<T>(error: CallError) -> Settled<T> {
    match error {
        CallError::Refused(refusal) => Settled::Refused(refusal),
        other => Settled::Failed(other.to_string()),
    }
}
