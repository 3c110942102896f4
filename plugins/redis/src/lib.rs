//! Redis: a key prefix per instance, an ACL user per binding limited to
//! that prefix, on the server the operator maps to the alias `admin`
//! (`[plugins.redis.connections] admin = "<connection>"`).
//!
//! Instances share the server and its database 0 (the admin connection must
//! use database 0, which is where applications connecting without a
//! database number land). Redis has no per-prefix memory quota, so plans
//! and `maxmemory_hint_mb` are informative.
//!
//! ACL users live in memory unless the server has an `aclfile`: after each
//! change the plugin runs `ACL SAVE` and warns when the server has none.

#[cfg(test)]
mod flow_tests;

use serde::Deserialize;
use serde_json::json;
use wasm_broker_sdk::log;
use wasm_broker_sdk::names::sha256_hex;
use wasm_broker_sdk::prelude::*;
use wasm_broker_sdk::redis::{self, Reply};

const ADMIN: &str = "admin";
const VERSION: &str = env!("CARGO_PKG_VERSION");

const SERVICE_ID: &str = "6b471fa0-621d-4077-a92c-3a748767101e";

/// Keys `UNLINK`ed per round trip when deleting an instance.
const SCAN_BATCH: &str = "500";

struct Plan {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    max_memory_hint_mb: u32,
}

const PLANS: [Plan; 2] = [
    Plan {
        id: "3a7dbf86-1d8d-477f-9aa5-7307f82c5184",
        name: "small",
        description: "A key prefix on a shared Redis, for up to 256 MB of data.",
        max_memory_hint_mb: 256,
    },
    Plan {
        id: "12562d40-221c-4cdc-9280-5205a8523416",
        name: "large",
        description: "A key prefix on a shared Redis, for up to 4 GB of data.",
        max_memory_hint_mb: 4096,
    },
];

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Parameters {
    /// Expected data size, for the operator's capacity planning.
    maxmemory_hint_mb: Option<u32>,
}

/// What a binding may do: data commands on its own keys and channels,
/// nothing that reaches other tenants or the server.
///
/// `@read`/`@write`/`@keyspace` bring the data commands; `-@dangerous` then
/// removes the server-wide ones (`FLUSHALL`, `KEYS`, `CONFIG`, `INFO` ...).
/// Also denied: commands that enumerate the whole keyspace or channel list
/// (`SCAN`, `RANDOMKEY`, `DBSIZE`, `PUBSUB`), since ACL key patterns do not
/// filter them; `SELECT`/`MOVE`/`COPY`, which reach other databases the
/// instance's deletion would not clean; `FUNCTION`, whose `FLUSH` removes
/// every tenant's functions.
const COMMAND_RULES: [&str; 17] = [
    "-@all",
    "+@read",
    "+@write",
    "+@keyspace",
    "+@pubsub",
    "+@transaction",
    "+@connection",
    "-@dangerous",
    "-@admin",
    "-scan",
    "-randomkey",
    "-dbsize",
    "-pubsub",
    "-select",
    "-move",
    "-copy",
    "-function",
];

struct Redis;

impl ServicePlugin for Redis {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "redis",
            VERSION,
            "Redis: a key prefix per instance, an ACL user per binding",
        )
    }

    fn catalog() -> Catalog {
        let plans = PLANS
            .iter()
            .map(|plan| {
                let schema = parameters_schema(json!({
                    "maxmemory_hint_mb": {
                        "description": "Expected data size in MB (informative: Redis cannot cap a prefix).",
                        "type": "integer",
                        "minimum": 1,
                        "maximum": plan.max_memory_hint_mb,
                    },
                }));
                ServicePlan::new(plan.id, plan.name, plan.description)
                    .maintenance_version(VERSION, "wasm-broker redis plugin build")
                    .binding_rotatable()
                    .instance_schemas(schema, None)
            })
            .collect();
        Catalog::new(vec![
            ServiceOffering::new(
                SERVICE_ID,
                "redis",
                "Redis key-value store (a key prefix on a shared server)",
                plans,
            )
            .tags(&["redis", "key-value", "cache"])
            .metadata(json!({"displayName": "Redis"})),
        ])
    }

    /// Nothing to create: the prefix is derived from the instance id. The
    /// PING checks that the operator granted the connection.
    fn provision(instance: &Instance, _info: &RequestInfo) -> Result<InstanceOutcome, BrokerError> {
        let parameters: Parameters = instance.parameters()?;
        redis::command(ADMIN, &["PING"])?;
        let hint = parameters
            .maxmemory_hint_mb
            .map(|mb| format!(" (expected size {mb} MB)"))
            .unwrap_or_default();
        log::info!("reserved key prefix {}{hint}", key_prefix(instance));
        Ok(InstanceOutcome::done())
    }

    /// Deletes the instance's keys, a batch per round trip. `UNLINK` frees
    /// memory in the background, so large values do not block the server.
    fn deprovision(
        instance: &Instance,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let pattern = format!("{}*", key_prefix(instance));
        let mut cursor = "0".to_owned();
        let mut deleted = 0usize;
        loop {
            let page = redis::command(
                ADMIN,
                &[
                    "SCAN",
                    cursor.as_str(),
                    "MATCH",
                    &pattern,
                    "COUNT",
                    SCAN_BATCH,
                ],
            )?
            .into_scan_page()?;
            if !page.keys.is_empty() {
                let mut unlink: Vec<&[u8]> = vec![b"UNLINK"];
                unlink.extend(page.keys.iter().map(Vec::as_slice));
                redis::command(ADMIN, &unlink)?;
                deleted += page.keys.len();
            }
            if page.cursor == "0" {
                break;
            }
            cursor = page.cursor;
        }
        log::info!("deleted {deleted} keys under {pattern}");
        Ok(DeletionOutcome::Done)
    }

    /// An ACL user for the instance's keys and channels. A rotation is an
    /// ordinary bind: the new binding id gives a new user, and the
    /// predecessor's stays valid until it is unbound.
    fn bind(
        instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<BindOutcome, BrokerError> {
        let server = redis::server_info(ADMIN)?;
        let prefix = key_prefix(instance);
        let user = user_name(binding);
        let password = password(32)?;
        // `reset` first: a retry after a failed bind replaces what the first
        // attempt set. The password goes as its SHA-256 (`#`), so it never
        // appears in the command, nor in an error quoting it.
        let keys = format!("~{prefix}*");
        let channels = format!("&{prefix}*");
        let password_hash = format!("#{}", sha256_hex(&password));
        let mut command = vec![
            "ACL",
            "SETUSER",
            user.as_str(),
            "reset",
            "on",
            &password_hash,
            &keys,
            &channels,
        ];
        command.extend(COMMAND_RULES);
        redis::command(ADMIN, &command)?;
        save_acl();
        log::info!("created ACL user {user} for {prefix}*");
        let scheme = if server.tls { "rediss" } else { "redis" };
        Ok(Credentials::new(scheme, &server.host, server.port)
            .login(&user, &password)
            .field("prefix", prefix)
            .into_bind_outcome())
    }

    /// `ACL DELUSER` also disconnects the user's clients, and answers 0
    /// rather than failing when the user is already gone.
    fn unbind(
        _instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let user = user_name(binding);
        redis::command(ADMIN, &["ACL", "DELUSER", user.as_str()])?;
        save_acl();
        log::info!("deleted ACL user {user}");
        Ok(DeletionOutcome::Done)
    }
}

wasm_broker_sdk::export_plugin!(Redis);

/// `inst_<hash>:`; the derived part holds no glob characters, so it is safe
/// in `SCAN MATCH` and ACL patterns.
fn key_prefix(instance: &Instance) -> String {
    format!("{}:", derive_name("inst_", &instance.id, 64))
}

fn user_name(binding: &Binding) -> String {
    derive_name("u_", &binding.id, 64)
}

/// Best effort: without an `aclfile` the server cannot save, and users live
/// until it restarts; the operator is told so. The host refuses ACL SAVE
/// unless the grant lists it in `commands` (the shipped broker.toml does).
fn save_acl() {
    match redis::command(ADMIN, &["ACL", "SAVE"]) {
        Ok(Reply::Data(_)) => {}
        Ok(other) => log::warn!("ACL SAVE answered {other:?}"),
        Err(error) => log::warn!(
            "ACL users are not persisted (configure an aclfile on the Redis server): {}",
            error.description()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_commands_are_denied_after_the_grants() {
        let grants = COMMAND_RULES
            .iter()
            .position(|rule| *rule == "+@connection")
            .expect("grants");
        for denied in ["-@dangerous", "-scan", "-select", "-pubsub", "-function"] {
            let position = COMMAND_RULES
                .iter()
                .position(|rule| *rule == denied)
                .expect(denied);
            assert!(
                position > grants,
                "{denied} must come after the grants to override them"
            );
        }
    }

    #[test]
    fn memory_hint_is_capped_per_plan() {
        let catalog = Redis::catalog();
        for (plan, spec) in catalog.services[0].plans.iter().zip(&PLANS) {
            let schemas = plan.schemas.as_ref().expect("schemas");
            let schema: serde_json::Value =
                serde_json::from_str(schemas.instance_create.as_deref().expect("create"))
                    .expect("json");
            assert_eq!(
                schema["properties"]["maxmemory_hint_mb"]["maximum"],
                spec.max_memory_hint_mb
            );
        }
    }
}
