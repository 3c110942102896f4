//! Mosquitto: a topic namespace per instance, a login per binding, through
//! Mosquitto's dynamic security plugin on the broker the operator maps to
//! the alias `admin` (`[plugins.mosquitto.connections] admin = "<tcp
//! connection>"`, whose URL carries the dynamic security admin's login).
//!
//! - An instance is a dynamic security role named like its topic prefix
//!   (`inst_<hash>`), allowed to publish and subscribe below `<prefix>/` only.
//! - A binding is a client (user name and generated password) with that
//!   role. Deleting it also disconnects whoever is logged in as it.
//!
//! The host has no MQTT capability, so the plugin speaks MQTT 3.1.1 itself
//! over the host's `tcp` stream ([`mqtt`], [`session`]) and sends the JSON
//! commands of the dynamic security API ([`dynsec`]). It logs in with the
//! placeholder tokens `tcp::credentials` returns: the host writes the admin
//! login in their place, so the plugin never holds the admin password.
//!
//! Retained messages are the broker's, not the role's: they outlive the
//! instance (no later instance gets the same prefix, and no binding can
//! read another prefix), until the broker restarts without persistence.

mod dynsec;
#[cfg(test)]
mod flow_tests;
mod mqtt;
mod session;

use std::time::{Duration, Instant};

use serde_json::json;
use wasm_broker_sdk::prelude::*;
use wasm_broker_sdk::{log, tcp};

use dynsec::Admin;
use mqtt::Connect;

const ADMIN: &str = "admin";
const VERSION: &str = env!("CARGO_PKG_VERSION");

const SERVICE_ID: &str = "d108443e-2d4e-49b7-b3fe-0e703348354e";
const PLAN_ID: &str = "94a1fa3b-1684-4d65-97f8-f95919a9aa09";

/// How long one admin session may take, from CONNECT to the last answer:
/// well inside the default 10 s call deadline.
pub(crate) const SESSION_BUDGET: Duration = Duration::from_secs(5);

/// Seconds of silence after which the server may drop the admin session;
/// longer than the session lasts.
const KEEP_ALIVE_SECS: u16 = 30;

struct Mosquitto;

impl ServicePlugin for Mosquitto {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "mosquitto",
            VERSION,
            "Mosquitto: a topic namespace per instance, an MQTT login per binding",
        )
    }

    fn catalog() -> Catalog {
        let plan = ServicePlan::new(
            PLAN_ID,
            "standard",
            "A topic namespace on a shared Mosquitto: publish and subscribe below its prefix only.",
        )
        .maintenance_version(VERSION, "wasm-broker mosquitto plugin build")
        .binding_rotatable()
        // No parameters: the schema refuses any.
        .instance_schemas(parameters_schema(json!({})), None);
        Catalog::new(vec![
            ServiceOffering::new(
                SERVICE_ID,
                "mosquitto",
                "MQTT topic namespace on a shared Mosquitto broker",
                vec![plan],
            )
            .tags(&["mqtt", "mosquitto", "messaging"])
            .metadata(json!({"displayName": "Mosquitto (MQTT)"})),
        ])
    }

    /// Creates the role. A retry finding it already there sets its ACLs
    /// again, so a role left by an earlier attempt (or changed by hand)
    /// ends up exactly as a first provision makes it.
    fn provision(instance: &Instance, _info: &RequestInfo) -> Result<InstanceOutcome, BrokerError> {
        let role = role_name(instance);
        let acls = dynsec::topic_acls(&role);
        let description = format!("wasm-broker instance {}", instance.id);
        let mut admin = admin_session()?;
        let created = admin
            .run(dynsec::create_role(&role, &description, &acls))?
            .created("role")?;
        if !created {
            admin
                .run(dynsec::modify_role(&role, &description, &acls))?
                .done()?;
        }
        admin.close();
        log::info!("created role {role} for topics {role}/#");
        Ok(InstanceOutcome::done())
    }

    /// Deletes the role; gone already counts as done.
    fn deprovision(
        instance: &Instance,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let role = role_name(instance);
        let mut admin = admin_session()?;
        let deleted = admin.run(dynsec::delete_role(&role))?.deleted("role")?;
        admin.close();
        if deleted {
            log::info!("deleted role {role}");
        } else {
            log::info!("role {role} was already gone");
        }
        Ok(DeletionOutcome::Done)
    }

    /// A client with the instance's role. A retry (or a rotation's new
    /// binding id, which gets a client of its own) finding the client
    /// already there sets the new password and the role on it.
    fn bind(
        instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<BindOutcome, BrokerError> {
        let server = tcp::server_info(ADMIN)?;
        let role = role_name(instance);
        let user = user_name(binding);
        let password = password(32)?;
        let description = format!("wasm-broker binding {}", binding.id);
        let mut admin = admin_session()?;
        let mut bind = || {
            let created = admin
                .run(dynsec::create_client(&user, &password, &role, &description))?
                .created("client")?;
            if created {
                return Ok(());
            }
            admin
                .run(dynsec::modify_client(&user, &password, &role, &description))?
                .done()
        };
        bind().map_err(|error: BrokerError| error.redact(&password))?;
        admin.close();
        log::info!("created client {user} with role {role}");
        let scheme = if server.tls { "mqtts" } else { "mqtt" };
        Ok(Credentials::new(scheme, &server.host, server.port)
            .login(&user, &password)
            .field("topic_prefix", role)
            .into_bind_outcome())
    }

    /// Deletes the client, which disconnects its sessions; gone already
    /// counts as done.
    fn unbind(
        _instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let user = user_name(binding);
        let mut admin = admin_session()?;
        let deleted = admin.run(dynsec::delete_client(&user))?.deleted("client")?;
        admin.close();
        if deleted {
            log::info!("deleted client {user}");
        } else {
            log::info!("client {user} was already gone");
        }
        Ok(DeletionOutcome::Done)
    }
}

wasm_broker_sdk::export_plugin!(Mosquitto);

/// The instance's role, also its topic prefix: `inst_<hash>`, no MQTT
/// wildcard or separator in it.
fn role_name(instance: &Instance) -> String {
    derive_name("inst_", &instance.id, 64)
}

fn user_name(binding: &Binding) -> String {
    derive_name("u_", &binding.id, 64)
}

/// Connects to the granted broker and logs in as the dynamic security
/// admin with the host's placeholder tokens.
fn admin_session() -> Result<Admin<tcp::Stream>, BrokerError> {
    let deadline = Instant::now() + SESSION_BUDGET;
    let login = tcp::credentials(ADMIN)?;
    // Unique: the server disconnects an older session with the same id, and
    // the session's requests are told apart by it.
    let client_id = format!("wasm-broker-{}", password(16)?);
    let stream = tcp::connect(ADMIN)?;
    Admin::open(
        stream,
        &Connect {
            client_id: &client_id,
            username: login.username.as_deref(),
            password: login.password.as_deref().map(str::as_bytes),
            keep_alive_secs: KEEP_ALIVE_SECS,
        },
        deadline,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_refuses_parameters_and_rotates() {
        let catalog = Mosquitto::catalog();
        let plan = &catalog.services[0].plans[0];
        let schemas = plan.schemas.as_ref().expect("schemas");
        let schema: serde_json::Value =
            serde_json::from_str(schemas.instance_create.as_deref().expect("create"))
                .expect("json");
        assert_eq!(schema["additionalProperties"], false, "{schema}");
        assert!(plan.binding_rotatable);
    }

    #[test]
    fn role_names_are_safe_topic_prefixes() {
        let name = derive_name("inst_", "a/b/#/+ $x", 64);
        assert!(!name.contains(['/', '#', '+', '$']), "{name}");
    }
}
