//! [`ServicePlugin`], the trait a plugin implements, and [`export_plugin!`].

use crate::bindings::exports::wasm_broker::plugin::broker::Guest;
use crate::{
    BindOutcome, Binding, BindingResult, BrokerError, Catalog, DeletionOutcome, Instance,
    InstanceChanges, InstanceDetails, InstanceOutcome, InstanceResult, OperationKind,
    OperationStatus, PluginInfo, RequestInfo,
};

/// What a plugin does for each OSB operation.
///
/// The host calls each function in a fresh instance, so there is no `self`:
/// everything a plugin knows comes from the arguments, its backend, its
/// [`crate::config`] and its [`crate::kv`] store. The host has already
/// checked auth, ids, parameter schemas and idempotency: an identical
/// repeat of a finished request never arrives here.
///
/// Only `describe`, `catalog`, `provision`, `deprovision`, `bind` and
/// `unbind` are required; the defaults suit a plugin that answers every
/// operation synchronously.
pub trait ServicePlugin {
    /// Name (`[a-z0-9-]+`) and version of this build.
    fn describe() -> PluginInfo;

    /// The offerings and plans; called when the plugin loads, must never
    /// change for a given build (ids especially).
    fn catalog() -> Catalog;

    /// Creates the instance's resources. On error the platform may send a
    /// deprovision (orphan mitigation), so leave nothing it cannot delete.
    fn provision(instance: &Instance, info: &RequestInfo) -> Result<InstanceOutcome, BrokerError>;

    /// Applies `changes`; on error nothing may have changed.
    ///
    /// Default: accepts updates that change only the context or the
    /// maintenance version (nothing to do in the backend) and refuses plan
    /// and parameter changes as unprocessable.
    fn update(
        instance: &Instance,
        changes: &InstanceChanges,
        info: &RequestInfo,
    ) -> Result<InstanceOutcome, BrokerError> {
        let _ = (instance, info);
        if changes.touches_only_metadata()? {
            Ok(InstanceOutcome::done())
        } else {
            Err(BrokerError::Unprocessable(format!(
                "plugin {} cannot change the plan or the parameters of an instance",
                Self::describe().name
            )))
        }
    }

    /// Deletes the instance's resources; must succeed when they are
    /// already gone or were only partly created.
    fn deprovision(instance: &Instance, info: &RequestInfo)
    -> Result<DeletionOutcome, BrokerError>;

    /// Creates credentials on the instance. A binding with a
    /// `predecessor_binding_id` rotates credentials: create new ones and
    /// keep the predecessor's valid.
    fn bind(
        instance: &Instance,
        binding: &Binding,
        info: &RequestInfo,
    ) -> Result<BindOutcome, BrokerError>;

    /// Revokes the binding's credentials; must succeed when they are
    /// already gone or were only partly created.
    fn unbind(
        instance: &Instance,
        binding: &Binding,
        info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError>;

    /// Progress of an instance operation answered with `accepted`.
    fn last_operation(
        instance: &Instance,
        kind: OperationKind,
        operation: Option<&str>,
    ) -> Result<OperationStatus, BrokerError> {
        let _ = (instance, kind, operation);
        Err(no_async_operations())
    }

    /// Progress of a binding operation answered with `accepted`.
    fn last_binding_operation(
        instance: &Instance,
        binding: &Binding,
        kind: OperationKind,
        operation: Option<&str>,
    ) -> Result<OperationStatus, BrokerError> {
        let _ = (instance, binding, kind, operation);
        Err(no_async_operations())
    }

    /// What `GET /v2/service_instances/:id` shows. Default: the parameters
    /// of the host's record (override to hide secrets or add a dashboard).
    fn get_instance(instance: &Instance) -> Result<InstanceDetails, BrokerError> {
        Ok(InstanceDetails {
            dashboard_url: None,
            parameters: instance.parameters.clone(),
            metadata: None,
        })
    }

    /// The result of an asynchronous bind, once it succeeded.
    fn get_binding(instance: &Instance, binding: &Binding) -> Result<BindingResult, BrokerError> {
        let _ = (instance, binding);
        Err(no_async_operations())
    }
}

fn no_async_operations() -> BrokerError {
    BrokerError::Internal("this plugin does not run asynchronous operations".to_owned())
}

impl InstanceOutcome {
    /// Finished now, without dashboard or metadata.
    pub fn done() -> Self {
        Self::Done(InstanceResult {
            dashboard_url: None,
            metadata: None,
        })
    }
}

// Both traits are this crate's, so every `ServicePlugin` is a `Guest` and the
// generated export glue can be pointed at the plugin's own type.
impl<P: ServicePlugin> Guest for P {
    fn describe() -> PluginInfo {
        P::describe()
    }

    fn catalog() -> Catalog {
        P::catalog()
    }

    fn provision(instance: Instance, info: RequestInfo) -> Result<InstanceOutcome, BrokerError> {
        P::provision(&instance, &info)
    }

    fn update(
        instance: Instance,
        changes: InstanceChanges,
        info: RequestInfo,
    ) -> Result<InstanceOutcome, BrokerError> {
        P::update(&instance, &changes, &info)
    }

    fn deprovision(instance: Instance, info: RequestInfo) -> Result<DeletionOutcome, BrokerError> {
        P::deprovision(&instance, &info)
    }

    fn bind(
        instance: Instance,
        binding: Binding,
        info: RequestInfo,
    ) -> Result<BindOutcome, BrokerError> {
        P::bind(&instance, &binding, &info)
    }

    fn unbind(
        instance: Instance,
        binding: Binding,
        info: RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        P::unbind(&instance, &binding, &info)
    }

    fn last_operation(
        instance: Instance,
        kind: OperationKind,
        operation: Option<String>,
    ) -> Result<OperationStatus, BrokerError> {
        P::last_operation(&instance, kind, operation.as_deref())
    }

    fn last_binding_operation(
        instance: Instance,
        binding: Binding,
        kind: OperationKind,
        operation: Option<String>,
    ) -> Result<OperationStatus, BrokerError> {
        P::last_binding_operation(&instance, &binding, kind, operation.as_deref())
    }

    fn get_instance(instance: Instance) -> Result<InstanceDetails, BrokerError> {
        P::get_instance(&instance)
    }

    fn get_binding(instance: Instance, binding: Binding) -> Result<BindingResult, BrokerError> {
        P::get_binding(&instance, &binding)
    }
}

/// Makes `$plugin` (a type implementing [`ServicePlugin`]) the component's
/// `wasm-broker:plugin/broker@0.1.0` export. Use it once, in the plugin's
/// `lib.rs`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident) => {
        $crate::bindings::export!($plugin with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestInfo;

    struct Minimal;

    impl ServicePlugin for Minimal {
        fn describe() -> PluginInfo {
            PluginInfo::new("minimal", "0.0.1", "test")
        }
        fn catalog() -> Catalog {
            Catalog::new(Vec::new())
        }
        fn provision(_: &Instance, _: &RequestInfo) -> Result<InstanceOutcome, BrokerError> {
            Ok(InstanceOutcome::done())
        }
        fn deprovision(_: &Instance, _: &RequestInfo) -> Result<DeletionOutcome, BrokerError> {
            Ok(DeletionOutcome::Done)
        }
        fn bind(_: &Instance, _: &Binding, _: &RequestInfo) -> Result<BindOutcome, BrokerError> {
            Err(BrokerError::Unprocessable("no".to_owned()))
        }
        fn unbind(
            _: &Instance,
            _: &Binding,
            _: &RequestInfo,
        ) -> Result<DeletionOutcome, BrokerError> {
            Ok(DeletionOutcome::Done)
        }
    }

    fn instance(parameters: Option<&str>) -> Instance {
        Instance {
            id: "i".to_owned(),
            service_id: "s".to_owned(),
            plan_id: "p".to_owned(),
            parameters: parameters.map(str::to_owned),
            context: None,
            organization_guid: None,
            space_guid: None,
            maintenance_version: None,
            plugin_version: "0.0.1".to_owned(),
        }
    }

    fn changes(plan_id: Option<&str>, parameters: Option<&str>) -> InstanceChanges {
        InstanceChanges {
            plan_id: plan_id.map(str::to_owned),
            parameters: parameters.map(str::to_owned),
            context: Some("{}".to_owned()),
            maintenance_version: Some("0.0.2".to_owned()),
        }
    }

    fn info() -> RequestInfo {
        RequestInfo {
            originating_identity: None,
            request_identity: None,
            api_version: "2.17".to_owned(),
            accepts_incomplete: false,
        }
    }

    #[test]
    fn default_update_accepts_context_and_maintenance_changes() {
        let outcome = <Minimal as ServicePlugin>::update(
            &instance(None),
            &changes(None, Some("{}")),
            &info(),
        );
        assert_eq!(outcome, Ok(InstanceOutcome::done()));
    }

    #[test]
    fn default_update_refuses_plan_and_parameter_changes() {
        for change in [
            changes(Some("other"), None),
            changes(None, Some(r#"{"a":1}"#)),
        ] {
            let outcome = <Minimal as ServicePlugin>::update(&instance(None), &change, &info());
            assert!(
                matches!(outcome, Err(BrokerError::Unprocessable(_))),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn default_get_instance_shows_the_recorded_parameters() {
        let details = <Minimal as ServicePlugin>::get_instance(&instance(Some(r#"{"a":1}"#)))
            .expect("details");
        assert_eq!(details.parameters.as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn asynchronous_defaults_are_internal_errors() {
        let status = <Minimal as ServicePlugin>::last_operation(
            &instance(None),
            OperationKind::Provision,
            None,
        );
        assert_eq!(status, Err(no_async_operations()));
    }
}
