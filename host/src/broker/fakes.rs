//! In-memory fakes of the broker's two seams, for fast unit tests of the OSB
//! rules: records in a map behind one lock (a transition holds it from read
//! to write, as the store's write lock does), and plugins whose answers a
//! test scripts and whose calls it counts. The real runtime and store are
//! tested end to end in `tests/` against real plugins and databases.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::catalog::{CatalogSnapshot, PluginCatalog};
use crate::model::{
    BindOutcome, Binding, BindingResult, Catalog, DeletionOutcome, Instance, InstanceChanges,
    InstanceDetails, InstanceOutcome, InstanceResult, MaintenanceInfo, OperationKind,
    OperationStatus, PluginInfo, Refusal, RequestInfo, ServiceOffering, ServicePlan,
};
use crate::runtime::CallError;
use crate::state::{BindingRecord, InstanceRecord, StateError, Transition};

use super::{Plugins, Records};

pub const SERVICE: &str = "svc-1";
pub const SMALL: &str = "plan-small";
pub const LARGE: &str = "plan-large";
pub const MAINTENANCE_VERSION: &str = "1.2.0";

#[derive(Default)]
struct Tables {
    instances: BTreeMap<String, InstanceRecord>,
    bindings: BTreeMap<String, BindingRecord>,
}

/// Records in memory. `Clone` shares the tables.
#[derive(Clone, Default)]
pub struct MemoryRecords {
    tables: Arc<Mutex<Tables>>,
}

impl MemoryRecords {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A test that panicked while holding the lock already failed.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn instance_now(&self, id: &str) -> Option<InstanceRecord> {
        self.tables().instances.get(id).cloned()
    }

    pub fn binding_now(&self, id: &str) -> Option<BindingRecord> {
        self.tables().bindings.get(id).cloned()
    }
}

impl Records for MemoryRecords {
    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StateError> {
        Ok(self.instance_now(id))
    }

    async fn binding(&self, id: &str) -> Result<Option<BindingRecord>, StateError> {
        Ok(self.binding_now(id))
    }

    async fn transition_instance<R: Send>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<InstanceRecord>) -> Transition<InstanceRecord, R> + Send,
    ) -> Result<R, StateError> {
        self.transition_instance_and_bindings(id, |current, _| decide(current))
            .await
    }

    async fn transition_instance_and_bindings<R: Send>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<InstanceRecord>, Vec<BindingRecord>) -> Transition<InstanceRecord, R>
        + Send,
    ) -> Result<R, StateError> {
        let mut tables = self.tables();
        let current = tables.instances.get(id).cloned();
        let mut live: Vec<BindingRecord> = tables
            .bindings
            .values()
            .filter(|record| {
                record.binding.instance_id == id
                    && record.status != crate::lifecycle::ResourceStatus::Deleted
            })
            .cloned()
            .collect();
        // No creation times here: oldest first is approximated by id.
        live.sort_by(|a, b| a.binding.id.cmp(&b.binding.id));
        Ok(match decide(current, live) {
            Transition::Keep(answer) => answer,
            Transition::Write(record, answer) => {
                tables.instances.insert(id.to_owned(), record);
                answer
            }
        })
    }

    async fn transition_binding<R: Send>(
        &self,
        id: &str,
        instance_id: &str,
        decide: impl FnOnce(
            Option<InstanceRecord>,
            Option<BindingRecord>,
        ) -> Transition<BindingRecord, R>
        + Send,
    ) -> Result<R, StateError> {
        let mut tables = self.tables();
        let instance = tables.instances.get(instance_id).cloned();
        let current = tables.bindings.get(id).cloned();
        Ok(match decide(instance, current) {
            Transition::Keep(answer) => answer,
            Transition::Write(record, answer) => {
                tables.bindings.insert(id.to_owned(), record);
                answer
            }
        })
    }
}

/// A scripted answer of the fake plugin.
#[derive(Debug, Clone)]
pub enum Script {
    /// Done; binds answer credentials naming the binding.
    Done,
    /// 202 with this plugin operation token.
    Accepted(&'static str),
    Refuse(Refusal),
    /// A trap, timeout or malformed answer.
    Fault,
}

/// A plugin whose answers are scripted per operation kind (a queue; `Done`
/// once it runs dry) and whose calls are counted.
#[derive(Default)]
pub struct ScriptedPlugins {
    catalog: Arc<CatalogSnapshot>,
    scripts: Mutex<BTreeMap<&'static str, VecDeque<Script>>>,
    polls: Mutex<VecDeque<Result<OperationStatus, CallError>>>,
    calls: Mutex<Vec<String>>,
    /// When set, polls wait for a permit before answering (`hold_polls`).
    poll_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl ScriptedPlugins {
    pub fn new() -> Self {
        Self {
            catalog: Arc::new(CatalogSnapshot::build(&[test_catalog()])),
            ..Self::default()
        }
    }

    /// The next answers to calls named `call` ("provision", "bind", ...).
    pub fn script(&self, call: &'static str, answers: impl IntoIterator<Item = Script>) {
        let mut scripts = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
        scripts.entry(call).or_default().extend(answers);
    }

    /// The next answers to `last_operation` / `last_binding_operation`.
    pub fn script_polls(
        &self,
        answers: impl IntoIterator<Item = Result<OperationStatus, CallError>>,
    ) {
        self.polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(answers);
    }

    /// From now on each poll is counted at once but answers only once the
    /// returned semaphore has a permit for it (`add_permits`), which it
    /// uses up.
    pub fn hold_polls(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.poll_gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(gate.clone());
        gate
    }

    async fn pass_gate(&self) {
        let gate = self
            .poll_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Each permit lets one poll through (never closed: a closed gate
        // lets every poll through).
        if let Some(gate) = gate
            && let Ok(permit) = gate.acquire().await
        {
            permit.forget();
        }
    }

    /// The calls made so far, in order ("provision i-1", "bind b-1", ...).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn count(&self, call: &str) -> usize {
        self.calls()
            .iter()
            .filter(|made| made.split(' ').next() == Some(call))
            .count()
    }

    fn next(&self, call: &'static str, id: &str) -> Script {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{call} {id}"));
        self.scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(call)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Script::Done)
    }
}

fn fault() -> CallError {
    CallError::Fault {
        plugin: "fake".to_owned(),
        cause: "the fake plugin trapped".to_owned(),
    }
}

fn outcome<T>(
    script: Script,
    done: T,
    accepted: impl FnOnce(crate::model::Accepted) -> T,
) -> Result<T, CallError> {
    match script {
        Script::Done => Ok(done),
        Script::Accepted(token) => Ok(accepted(crate::model::Accepted {
            operation: Some(token.to_owned()),
            dashboard_url: Some("https://dashboard.example/async".to_owned()),
        })),
        Script::Refuse(refusal) => Err(CallError::Refused(refusal)),
        Script::Fault => Err(fault()),
    }
}

/// The credentials the fake plugin hands out for `binding`.
pub fn credentials_of(binding: &str) -> BindingResult {
    BindingResult {
        credentials: Some(json!({"username": binding, "password": format!("secret-{binding}")})),
        ..BindingResult::default()
    }
}

impl Plugins for ScriptedPlugins {
    fn catalog(&self) -> Arc<CatalogSnapshot> {
        self.catalog.clone()
    }

    async fn provision(
        &self,
        instance: &Instance,
        _: &RequestInfo,
    ) -> Result<InstanceOutcome, CallError> {
        let result = InstanceResult {
            dashboard_url: Some(format!("https://dashboard.example/{}", instance.id)),
            metadata: None,
        };
        outcome(
            self.next("provision", &instance.id),
            InstanceOutcome::Done(result),
            InstanceOutcome::Accepted,
        )
    }

    async fn update(
        &self,
        instance: &Instance,
        _: &InstanceChanges,
        _: &RequestInfo,
    ) -> Result<InstanceOutcome, CallError> {
        outcome(
            self.next("update", &instance.id),
            InstanceOutcome::Done(InstanceResult::default()),
            InstanceOutcome::Accepted,
        )
    }

    async fn deprovision(
        &self,
        instance: &Instance,
        _: &RequestInfo,
    ) -> Result<DeletionOutcome, CallError> {
        outcome(
            self.next("deprovision", &instance.id),
            DeletionOutcome::Done,
            DeletionOutcome::Accepted,
        )
    }

    async fn bind(
        &self,
        _: &Instance,
        binding: &Binding,
        _: &RequestInfo,
    ) -> Result<BindOutcome, CallError> {
        outcome(
            self.next("bind", &binding.id),
            BindOutcome::Done(credentials_of(&binding.id)),
            BindOutcome::Accepted,
        )
    }

    async fn unbind(
        &self,
        _: &Instance,
        binding: &Binding,
        _: &RequestInfo,
    ) -> Result<DeletionOutcome, CallError> {
        outcome(
            self.next("unbind", &binding.id),
            DeletionOutcome::Done,
            DeletionOutcome::Accepted,
        )
    }

    async fn last_operation(
        &self,
        instance: &Instance,
        _: OperationKind,
        _: Option<&str>,
    ) -> Result<OperationStatus, CallError> {
        self.next("last_operation", &instance.id);
        self.pass_gate().await;
        self.next_poll()
    }

    async fn last_binding_operation(
        &self,
        _: &Instance,
        binding: &Binding,
        _: OperationKind,
        _: Option<&str>,
    ) -> Result<OperationStatus, CallError> {
        self.next("last_binding_operation", &binding.id);
        self.pass_gate().await;
        self.next_poll()
    }

    async fn get_instance(&self, instance: &Instance) -> Result<InstanceDetails, CallError> {
        self.next("get_instance", &instance.id);
        Ok(InstanceDetails {
            parameters: instance.parameters.clone(),
            ..InstanceDetails::default()
        })
    }

    async fn get_binding(
        &self,
        _: &Instance,
        binding: &Binding,
    ) -> Result<BindingResult, CallError> {
        match self.next("get_binding", &binding.id) {
            Script::Fault => Err(fault()),
            _ => Ok(credentials_of(&binding.id)),
        }
    }
}

impl ScriptedPlugins {
    fn next_poll(&self) -> Result<OperationStatus, CallError> {
        self.polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or(Err(fault()))
    }
}

/// One offering with two plans: `small` (with maintenance_info and a
/// parameter schema, rotatable bindings) and `large`; plan changes allowed.
fn test_catalog() -> PluginCatalog {
    let schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"charset": {"enum": ["utf8mb4", "latin1"]}},
        "additionalProperties": false
    });
    let plan = |id: &str, name: &str| ServicePlan {
        id: id.to_owned(),
        name: name.to_owned(),
        description: format!("the {name} plan"),
        metadata: None,
        free: true,
        bindable: None,
        plan_updateable: None,
        binding_rotatable: true,
        schemas: None,
        maximum_polling_duration: None,
        maintenance_info: None,
    };
    let mut small = plan(SMALL, "small");
    small.maintenance_info = Some(MaintenanceInfo {
        version: MAINTENANCE_VERSION.to_owned(),
        description: None,
    });
    small.schemas = serde_json::from_value(json!({
        "service_instance": {
            "create": {"parameters": schema},
            "update": {"parameters": schema}
        }
    }))
    .ok();
    let offering = ServiceOffering {
        id: SERVICE.to_owned(),
        name: "fake".to_owned(),
        description: "a scripted fake".to_owned(),
        tags: Vec::new(),
        requires: Vec::new(),
        bindable: true,
        instances_retrievable: true,
        bindings_retrievable: true,
        allow_context_updates: false,
        plan_updateable: true,
        metadata: None,
        dashboard_client: None,
        plans: vec![small, plan(LARGE, "large")],
    };
    PluginCatalog {
        plugin: "fake".to_owned(),
        info: PluginInfo {
            name: "fake".to_owned(),
            version: "1.0.0".to_owned(),
            description: "a scripted fake".to_owned(),
        },
        catalog: Catalog {
            services: vec![offering],
        },
    }
}
