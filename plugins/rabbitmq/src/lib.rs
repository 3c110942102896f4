//! RabbitMQ: a virtual host per instance, a user per binding, through the
//! management HTTP API the operator maps to the alias `admin`
//! (`[plugins.rabbitmq.connections] admin = "<http connection>"`; the host
//! adds the admin credentials to every request).
//!
//! The management API does not tell where applications reach AMQP, so the
//! plugin's config says it: `[plugins.rabbitmq.config] amqp_host`,
//! `amqp_port` (default 127.0.0.1:5672).

#[cfg(test)]
mod flow_tests;

use serde::Deserialize;
use serde_json::json;
use wasm_broker_sdk::http::{self, Method, encode_segment};
use wasm_broker_sdk::prelude::*;
use wasm_broker_sdk::{config, log};

const ADMIN: &str = "admin";
const VERSION: &str = env!("CARGO_PKG_VERSION");

const SERVICE_ID: &str = "6ce1ca5e-13b9-47e2-99e6-3aacc906e3e8";

/// The policy carrying the `queue_max_length` parameter.
const QUEUE_POLICY: &str = "wasm-broker-queue-limits";

/// What a plan decides: the vhost's limits.
struct Plan {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    max_connections: u32,
    max_queues: u32,
}

const PLANS: [Plan; 2] = [
    Plan {
        id: "b61a4de9-e638-490b-aecd-464b54e0f362",
        name: "small",
        description: "A virtual host with up to 20 connections and 100 queues.",
        max_connections: 20,
        max_queues: 100,
    },
    Plan {
        id: "35a25066-0aec-4465-862e-2c528edcb037",
        name: "large",
        description: "A virtual host with up to 200 connections and 1000 queues.",
        max_connections: 200,
        max_queues: 1000,
    },
];

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Parameters {
    /// Messages a queue keeps at most; the oldest are dropped beyond it.
    queue_max_length: Option<u64>,
}

struct RabbitMq;

impl ServicePlugin for RabbitMq {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "rabbitmq",
            VERSION,
            "RabbitMQ: a virtual host per instance, a user per binding",
        )
    }

    fn catalog() -> Catalog {
        let schema = parameters_schema(json!({
            "queue_max_length": {
                "description": "Messages each queue keeps at most (the oldest are dropped beyond it). Unset: no limit.",
                "type": ["integer", "null"],
                "minimum": 1,
            },
        }));
        let plans = PLANS
            .iter()
            .map(|plan| {
                ServicePlan::new(plan.id, plan.name, plan.description)
                    .maintenance_version(VERSION, "wasm-broker rabbitmq plugin build")
                    .instance_schemas(schema.clone(), Some(schema.clone()))
            })
            .collect();
        Catalog::new(vec![
            ServiceOffering::new(
                SERVICE_ID,
                "rabbitmq",
                "RabbitMQ message broker (a virtual host)",
                plans,
            )
            .tags(&["rabbitmq", "amqp", "messaging"])
            .metadata(json!({"displayName": "RabbitMQ"}))
            .plan_updateable(true),
        ])
    }

    fn provision(instance: &Instance, _info: &RequestInfo) -> Result<InstanceOutcome, BrokerError> {
        let plan = plan(&instance.plan_id)?;
        let parameters: Parameters = instance.parameters()?;
        let vhost = vhost_name(instance);
        // PUT is idempotent: a retry after a failed provision carries on.
        put(
            &format!("/api/vhosts/{}", encode_segment(&vhost)),
            &json!({"description": format!("wasm-broker instance {}", instance.id)}),
            "creating the virtual host",
        )?;
        apply_limits(&vhost, plan)?;
        apply_queue_policy(&vhost, parameters.queue_max_length)?;
        log::info!("created virtual host {vhost}");
        Ok(InstanceOutcome::done())
    }

    /// A plan change sets the vhost limits, a parameter change the queue
    /// policy; `"queue_max_length": null` removes the limit.
    fn update(
        instance: &Instance,
        changes: &InstanceChanges,
        _info: &RequestInfo,
    ) -> Result<InstanceOutcome, BrokerError> {
        let vhost = vhost_name(instance);
        if let Some(plan_id) = &changes.plan_id {
            apply_limits(&vhost, plan(plan_id)?)?;
        }
        if changes.parameters.is_some() {
            let parameters: Parameters = changes.merged_parameters(instance)?;
            apply_queue_policy(&vhost, parameters.queue_max_length)?;
        }
        Ok(InstanceOutcome::done())
    }

    /// Deleting the vhost closes its connections and deletes its queues,
    /// exchanges, policies and limits.
    fn deprovision(
        instance: &Instance,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let vhost = vhost_name(instance);
        delete(
            &format!("/api/vhosts/{}", encode_segment(&vhost)),
            "deleting the virtual host",
        )?;
        log::info!("deleted virtual host {vhost}");
        Ok(DeletionOutcome::Done)
    }

    /// A user with full rights on the instance's vhost only.
    fn bind(
        instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<BindOutcome, BrokerError> {
        let vhost = vhost_name(instance);
        let user = user_name(binding);
        let password = password(32)?;
        let amqp_host = config::get("amqp_host").unwrap_or_else(|| "127.0.0.1".to_owned());
        let amqp_port = config::get_or("amqp_port", 5672u16)?;
        let api_base = http::server_info(ADMIN)?.base_url;
        // The `management` tag lets the application use the HTTP API
        // (http_api_uri) for the vhosts it has permissions on, and nothing
        // of other users or vhosts.
        put(
            &format!("/api/users/{}", encode_segment(&user)),
            &json!({"password": password, "tags": "management"}),
            "creating the user",
        )
        .map_err(|error| error.redact(&password))?;
        put(
            &format!(
                "/api/permissions/{}/{}",
                encode_segment(&vhost),
                encode_segment(&user)
            ),
            &json!({"configure": ".*", "write": ".*", "read": ".*"}),
            "granting the user the virtual host",
        )?;
        log::info!("created user {user} on virtual host {vhost}");
        Ok(Credentials::new("amqp", &amqp_host, amqp_port)
            .login(&user, &password)
            .database(&vhost)
            .field("vhost", vhost.as_str())
            .field("http_api_uri", http_api_uri(&api_base, &user, &password))
            .into_bind_outcome())
    }

    /// Deleting a user also closes its connections.
    fn unbind(
        _instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let user = user_name(binding);
        delete(
            &format!("/api/users/{}", encode_segment(&user)),
            "deleting the user",
        )?;
        log::info!("deleted user {user}");
        Ok(DeletionOutcome::Done)
    }
}

wasm_broker_sdk::export_plugin!(RabbitMq);

fn plan(plan_id: &str) -> Result<&'static Plan, BrokerError> {
    PLANS
        .iter()
        .find(|plan| plan.id == plan_id)
        .ok_or_else(|| BrokerError::BadRequest(format!("plan {plan_id} is not a rabbitmq plan")))
}

fn vhost_name(instance: &Instance) -> String {
    derive_name("inst_", &instance.id, 64)
}

fn user_name(binding: &Binding) -> String {
    derive_name("u_", &binding.id, 64)
}

fn apply_limits(vhost: &str, plan: &Plan) -> Result<(), BrokerError> {
    for (limit, value) in [
        ("max-connections", plan.max_connections),
        ("max-queues", plan.max_queues),
    ] {
        put(
            &format!("/api/vhost-limits/{}/{limit}", encode_segment(vhost)),
            &json!({"value": value}),
            "setting the virtual host's limits",
        )?;
    }
    Ok(())
}

fn apply_queue_policy(vhost: &str, max_length: Option<u64>) -> Result<(), BrokerError> {
    let path = format!("/api/policies/{}/{QUEUE_POLICY}", encode_segment(vhost));
    match max_length {
        Some(max_length) => put(
            &path,
            &json!({"pattern": ".*", "apply-to": "queues", "definition": {"max-length": max_length}, "priority": 0}),
            "setting the queue length policy",
        ),
        None => delete(&path, "removing the queue length policy"),
    }
}

fn put(path: &str, body: &serde_json::Value, what: &str) -> Result<(), BrokerError> {
    http::send_json(ADMIN, Method::Put, path, Some(body))?.success_or(what)?;
    Ok(())
}

/// 404 counts as done: deletes must succeed when the thing is already gone.
fn delete(path: &str, what: &str) -> Result<(), BrokerError> {
    let response = http::send_json(ADMIN, Method::Delete, path, None)?;
    if response.status != 404 {
        response.success_or(what)?;
    }
    Ok(())
}

/// The management API's base URL with the binding's login:
/// `http://user:pw@host:15672/api/`.
fn http_api_uri(base_url: &str, user: &str, password: &str) -> String {
    let base = base_url.trim_end_matches('/');
    match base.split_once("://") {
        Some((scheme, rest)) => {
            format!(
                "{scheme}://{}:{}@{rest}/api/",
                encode_segment(user),
                encode_segment(password)
            )
        }
        None => format!("{base}/api/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_broker_sdk::params;

    #[test]
    fn api_uri_carries_the_login() {
        assert_eq!(
            http_api_uri("http://127.0.0.1:15672/", "u_1", "pw"),
            "http://u_1:pw@127.0.0.1:15672/api/"
        );
        assert_eq!(
            http_api_uri("https://mq.example/rabbit", "u", "p"),
            "https://u:p@mq.example/rabbit/api/"
        );
    }

    #[test]
    fn null_queue_length_removes_the_limit() {
        let parameters: Parameters =
            params::parse(Some(r#"{"queue_max_length":null}"#)).expect("parses");
        assert_eq!(parameters.queue_max_length, None);
        let parameters: Parameters =
            params::parse(Some(r#"{"queue_max_length":10}"#)).expect("parses");
        assert_eq!(parameters.queue_max_length, Some(10));
    }

    #[test]
    fn plans_are_versioned() {
        for plan in &RabbitMq::catalog().services[0].plans {
            assert_eq!(
                plan.maintenance_info
                    .as_ref()
                    .map(|info| info.version.as_str()),
                Some(VERSION)
            );
        }
    }
}
