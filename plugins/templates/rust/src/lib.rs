//! {{name}}: a wasm-broker service plugin.
//!
//! This skeleton keeps each instance and binding in the plugin's own
//! key-value store, so it serves without any backend. Replace the marked
//! parts with your backend's calls: `wasm_broker_sdk::sql`, `redis`, `http`
//! or `tcp` on a connection broker.toml grants as `admin`
//! (`[plugins.{{name}}.connections] admin = "<connection>"`).

use serde_json::json;
use wasm_broker_sdk::prelude::*;
use wasm_broker_sdk::{kv, log};

/// The ids the platform knows this service and plan by: never change them
/// once the plugin has served.
const SERVICE_ID: &str = "{{service_id}}";
const PLAN_ID: &str = "{{plan_id}}";
const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Plugin;

impl ServicePlugin for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", VERSION, "{{name}}: one service, one plan")
    }

    fn catalog() -> Catalog {
        let plan = ServicePlan::new(PLAN_ID, "standard", "The standard plan.")
            .maintenance_version(VERSION, "{{name}} plugin build");
        Catalog::new(vec![
            ServiceOffering::new(SERVICE_ID, "{{name}}", "The {{name}} service", vec![plan])
                .tags(&["{{name}}"]),
        ])
    }

    /// Creates the instance's resources. A retry after a failure must carry
    /// on: here, setting the same key again.
    fn provision(instance: &Instance, _info: &RequestInfo) -> Result<InstanceOutcome, BrokerError> {
        let name = resource_name(instance);
        // Your backend: e.g. sql::execute("admin", &format!("CREATE DATABASE IF NOT EXISTS {}", quote_mysql_ident(&name)))?;
        kv::set(&instance_key(instance), name.as_bytes())?;
        log::info!("created {name}");
        Ok(InstanceOutcome::done())
    }

    /// Deletes them; must succeed when they are already gone.
    fn deprovision(
        instance: &Instance,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        kv::delete(&instance_key(instance))?;
        log::info!("deleted {}", resource_name(instance));
        Ok(DeletionOutcome::Done)
    }

    /// New credentials for an application: a user of its own.
    fn bind(
        instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<BindOutcome, BrokerError> {
        let Some(resource) = kv::get(&instance_key(instance))? else {
            return Err(BrokerError::NotFound(format!(
                "instance {} has no resource",
                instance.id
            )));
        };
        let resource = String::from_utf8_lossy(&resource).into_owned();
        let user = derive_name("u_", &binding.id, 32);
        let password = password(24)?;
        // Your backend: create `user` with `password` on `resource`.
        kv::set(&binding_key(binding), user.as_bytes())?;
        log::info!("created user {user} on {resource}");
        Ok(Credentials::new("{{name}}", "{{name}}.example", 1234)
            .login(&user, &password)
            .database(&resource)
            .field("note", json!("replace with your backend's address"))
            .into_bind_outcome())
    }

    /// Revokes them; must succeed when they are already gone.
    fn unbind(
        _instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        kv::delete(&binding_key(binding))?;
        Ok(DeletionOutcome::Done)
    }
}

wasm_broker_sdk::export_plugin!(Plugin);

/// A backend name from the platform's id, which may hold any character.
fn resource_name(instance: &Instance) -> String {
    derive_name("res_", &instance.id, 32)
}

fn instance_key(instance: &Instance) -> String {
    format!("instance/{}", resource_name(instance))
}

fn binding_key(binding: &Binding) -> String {
    format!("binding/{}", derive_name("u_", &binding.id, 32))
}

/// Native tests: `cargo test --target host-tuple`. Capability calls answer
/// from the SDK's fakes, which each test scripts and inspects.
#[cfg(test)]
mod tests {
    use super::*;
    use wasm_broker_sdk::testing::{self, Fakes};

    #[test]
    fn provision_then_bind_returns_a_login_and_repeats_are_safe() {
        let fakes = Fakes::install();
        let instance = testing::instance("instance-1", SERVICE_ID, PLAN_ID);
        let binding = testing::binding("binding-1", &instance);

        Plugin::provision(&instance, &testing::request()).expect("provisioned");
        Plugin::provision(&instance, &testing::request()).expect("provisioned again");
        let credentials = testing::credentials(
            &Plugin::bind(&instance, &binding, &testing::request()).expect("bound"),
        );

        assert_eq!(
            credentials["username"],
            derive_name("u_", "binding-1", 32).as_str()
        );
        assert_eq!(credentials["password"].as_str().map(str::len), Some(24));
        assert_eq!(fakes.kv.entries().len(), 2, "{:?}", fakes.kv.entries());
        assert!(
            fakes
                .log
                .messages()
                .iter()
                .any(|line| line.starts_with("created user"))
        );

        Plugin::unbind(&instance, &binding, &testing::request()).expect("unbound");
        Plugin::unbind(&instance, &binding, &testing::request()).expect("unbound again");
        Plugin::deprovision(&instance, &testing::request()).expect("deprovisioned");
        assert!(fakes.kv.entries().is_empty());
    }

    #[test]
    fn bind_on_an_unknown_instance_is_not_found() {
        let _fakes = Fakes::install();
        let instance = testing::instance("nowhere", SERVICE_ID, PLAN_ID);
        let error = Plugin::bind(
            &instance,
            &testing::binding("b", &instance),
            &testing::request(),
        )
        .expect_err("refused");
        assert!(matches!(error, BrokerError::NotFound(_)), "{error:?}");
    }
}
