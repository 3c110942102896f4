//! The two things the broker core talks to, as traits: the plugins and the
//! records. The service plugs in the wasmtime runtime and the state store;
//! the unit tests plug in in-memory fakes (`fakes.rs`), so the OSB rules are
//! checked without a database or a WebAssembly plugin.
//!
//! Futures are `Send`: the HTTP layer runs every broker operation on its own
//! task, so that a platform hanging up cannot cut one short.

use std::future::Future;
use std::sync::Arc;

use crate::catalog::CatalogSnapshot;
use crate::model::{
    BindOutcome, Binding, BindingResult, DeletionOutcome, Instance, InstanceChanges,
    InstanceDetails, InstanceOutcome, OperationKind, OperationStatus, RequestInfo,
};
use crate::runtime::{CallError, PluginRuntime};
use crate::state::{BindingRecord, InstanceRecord, StateError, StateStore, Transition};

/// The plugins: the merged catalog, and the nine calls of the contract, each
/// routed to the plugin that serves the instance's service.
pub trait Plugins: Send + Sync + 'static {
    fn catalog(&self) -> Arc<CatalogSnapshot>;

    fn provision(
        &self,
        instance: &Instance,
        info: &RequestInfo,
    ) -> impl Future<Output = Result<InstanceOutcome, CallError>> + Send;

    fn update(
        &self,
        instance: &Instance,
        changes: &InstanceChanges,
        info: &RequestInfo,
    ) -> impl Future<Output = Result<InstanceOutcome, CallError>> + Send;

    fn deprovision(
        &self,
        instance: &Instance,
        info: &RequestInfo,
    ) -> impl Future<Output = Result<DeletionOutcome, CallError>> + Send;

    fn bind(
        &self,
        instance: &Instance,
        binding: &Binding,
        info: &RequestInfo,
    ) -> impl Future<Output = Result<BindOutcome, CallError>> + Send;

    fn unbind(
        &self,
        instance: &Instance,
        binding: &Binding,
        info: &RequestInfo,
    ) -> impl Future<Output = Result<DeletionOutcome, CallError>> + Send;

    fn last_operation(
        &self,
        instance: &Instance,
        kind: OperationKind,
        operation: Option<&str>,
    ) -> impl Future<Output = Result<OperationStatus, CallError>> + Send;

    fn last_binding_operation(
        &self,
        instance: &Instance,
        binding: &Binding,
        kind: OperationKind,
        operation: Option<&str>,
    ) -> impl Future<Output = Result<OperationStatus, CallError>> + Send;

    fn get_instance(
        &self,
        instance: &Instance,
    ) -> impl Future<Output = Result<InstanceDetails, CallError>> + Send;

    fn get_binding(
        &self,
        instance: &Instance,
        binding: &Binding,
    ) -> impl Future<Output = Result<BindingResult, CallError>> + Send;
}

/// The records: instances and bindings with their latest operation. A
/// transition reads, decides and writes in one serialized step, so two
/// requests for one resource can never both act on what they read.
pub trait Records: Send + Sync + 'static {
    fn instance(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<InstanceRecord>, StateError>> + Send;

    fn binding(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<BindingRecord>, StateError>> + Send;

    fn transition_instance<R: Send>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<InstanceRecord>) -> Transition<InstanceRecord, R> + Send,
    ) -> impl Future<Output = Result<R, StateError>> + Send;

    /// Like `transition_instance`; `decide` also sees the instance's
    /// bindings that are not deleted, oldest first, read in the same step.
    fn transition_instance_and_bindings<R: Send>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<InstanceRecord>, Vec<BindingRecord>) -> Transition<InstanceRecord, R>
        + Send,
    ) -> impl Future<Output = Result<R, StateError>> + Send;

    /// `decide` also sees the binding's instance, read in the same step.
    fn transition_binding<R: Send>(
        &self,
        id: &str,
        instance_id: &str,
        decide: impl FnOnce(
            Option<InstanceRecord>,
            Option<BindingRecord>,
        ) -> Transition<BindingRecord, R>
        + Send,
    ) -> impl Future<Output = Result<R, StateError>> + Send;
}

impl Plugins for PluginRuntime {
    fn catalog(&self) -> Arc<CatalogSnapshot> {
        PluginRuntime::catalog(self)
    }

    async fn provision(
        &self,
        instance: &Instance,
        info: &RequestInfo,
    ) -> Result<InstanceOutcome, CallError> {
        PluginRuntime::provision(self, instance, info).await
    }

    async fn update(
        &self,
        instance: &Instance,
        changes: &InstanceChanges,
        info: &RequestInfo,
    ) -> Result<InstanceOutcome, CallError> {
        PluginRuntime::update(self, instance, changes, info).await
    }

    async fn deprovision(
        &self,
        instance: &Instance,
        info: &RequestInfo,
    ) -> Result<DeletionOutcome, CallError> {
        PluginRuntime::deprovision(self, instance, info).await
    }

    async fn bind(
        &self,
        instance: &Instance,
        binding: &Binding,
        info: &RequestInfo,
    ) -> Result<BindOutcome, CallError> {
        PluginRuntime::bind(self, instance, binding, info).await
    }

    async fn unbind(
        &self,
        instance: &Instance,
        binding: &Binding,
        info: &RequestInfo,
    ) -> Result<DeletionOutcome, CallError> {
        PluginRuntime::unbind(self, instance, binding, info).await
    }

    async fn last_operation(
        &self,
        instance: &Instance,
        kind: OperationKind,
        operation: Option<&str>,
    ) -> Result<OperationStatus, CallError> {
        PluginRuntime::last_operation(self, instance, kind, operation).await
    }

    async fn last_binding_operation(
        &self,
        instance: &Instance,
        binding: &Binding,
        kind: OperationKind,
        operation: Option<&str>,
    ) -> Result<OperationStatus, CallError> {
        PluginRuntime::last_binding_operation(self, instance, binding, kind, operation).await
    }

    async fn get_instance(&self, instance: &Instance) -> Result<InstanceDetails, CallError> {
        PluginRuntime::get_instance(self, instance).await
    }

    async fn get_binding(
        &self,
        instance: &Instance,
        binding: &Binding,
    ) -> Result<BindingResult, CallError> {
        PluginRuntime::get_binding(self, instance, binding).await
    }
}

impl Records for StateStore {
    async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StateError> {
        StateStore::instance(self, id).await
    }

    async fn binding(&self, id: &str) -> Result<Option<BindingRecord>, StateError> {
        StateStore::binding(self, id).await
    }

    async fn transition_instance<R: Send>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<InstanceRecord>) -> Transition<InstanceRecord, R> + Send,
    ) -> Result<R, StateError> {
        StateStore::transition_instance(self, id, decide).await
    }

    async fn transition_instance_and_bindings<R: Send>(
        &self,
        id: &str,
        decide: impl FnOnce(Option<InstanceRecord>, Vec<BindingRecord>) -> Transition<InstanceRecord, R>
        + Send,
    ) -> Result<R, StateError> {
        StateStore::transition_instance_and_bindings(self, id, decide).await
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
        StateStore::transition_binding(self, id, instance_id, decide).await
    }
}
