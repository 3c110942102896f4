//! Provision, bind, unbind and deprovision run natively against the SDK's
//! fake `http` capability (the management API): the requests the plugin
//! sends, their bodies, and the credentials it returns.

use serde_json::json;
use wasm_broker_sdk::http::Error;
use wasm_broker_sdk::testing::{self, Fakes};

use super::*;

fn fakes() -> Fakes {
    let fakes = Fakes::install();
    fakes.http.grant(ADMIN, "http://mq.test:15672");
    fakes.config.set("amqp_host", "amqp.test");
    fakes.config.set("amqp_port", "5671");
    fakes
}

fn instance() -> Instance {
    Instance {
        parameters: Some(r#"{"queue_max_length":1000}"#.to_owned()),
        ..testing::instance("instance-1", SERVICE_ID, PLANS[0].id)
    }
}

#[test]
fn provision_puts_the_vhost_its_limits_and_policy_and_a_repeat_puts_them_again() {
    let fakes = fakes();
    let instance = instance();
    let vhost = vhost_name(&instance);

    RabbitMq::provision(&instance, &testing::request()).expect("provisioned");
    let first = fakes.http.requests();
    RabbitMq::provision(&instance, &testing::request()).expect("provisioned again");

    assert_eq!(
        first,
        [
            format!("PUT /api/vhosts/{vhost}"),
            format!("PUT /api/vhost-limits/{vhost}/max-connections"),
            format!("PUT /api/vhost-limits/{vhost}/max-queues"),
            format!("PUT /api/policies/{vhost}/{QUEUE_POLICY}"),
        ]
    );
    assert_eq!(fakes.http.requests()[4..], first[..]);
    let calls = fakes.http.calls();
    assert_eq!(
        calls[0].json(),
        json!({"description": "wasm-broker instance instance-1"})
    );
    assert_eq!(calls[1].json(), json!({"value": 20}));
    assert_eq!(calls[2].json(), json!({"value": 100}));
    assert_eq!(
        calls[3].json(),
        json!({"pattern": ".*", "apply-to": "queues", "definition": {"max-length": 1000}, "priority": 0})
    );
}

#[test]
fn a_refused_vhost_fails_with_the_apis_answer() {
    let fakes = fakes();
    fakes.http.reply(
        Method::Put,
        "/api/vhosts/",
        testing::response(403, r#"{"error":"not_authorised"}"#),
    );
    let error = RabbitMq::provision(&instance(), &testing::request()).expect_err("refused");
    assert_eq!(
        error,
        BrokerError::Internal(
            r#"creating the virtual host: HTTP 403 {"error":"not_authorised"}"#.to_owned()
        )
    );
    assert_eq!(fakes.http.requests().len(), 1, "nothing after the refusal");
}

#[test]
fn bind_creates_a_user_with_rights_on_the_vhost_only() {
    let fakes = fakes();
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);

    let credentials = testing::credentials(
        &RabbitMq::bind(&instance, &binding, &testing::request()).expect("bound"),
    );

    let vhost = vhost_name(&instance);
    let user = user_name(&binding);
    let password = credentials["password"].as_str().expect("password");
    assert_eq!(password.len(), 32);
    assert_eq!(credentials["username"], user.as_str());
    assert_eq!(credentials["vhost"], vhost.as_str());
    assert_eq!(
        credentials["uri"],
        format!("amqp://{user}:{password}@amqp.test:5671/{vhost}")
    );
    assert_eq!(
        credentials["http_api_uri"],
        format!("http://{user}:{password}@mq.test:15672/api/")
    );
    let calls = fakes.http.calls();
    assert_eq!(
        fakes.http.requests(),
        [
            format!("PUT /api/users/{user}"),
            format!("PUT /api/permissions/{vhost}/{user}"),
        ]
    );
    assert_eq!(
        calls[0].json(),
        json!({"password": password, "tags": "management"})
    );
    assert_eq!(
        calls[1].json(),
        json!({"configure": ".*", "write": ".*", "read": ".*"})
    );
}

#[test]
fn a_repeated_bind_gives_the_same_user_a_new_password() {
    let fakes = fakes();
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);
    let first = testing::credentials(
        &RabbitMq::bind(&instance, &binding, &testing::request()).expect("bound"),
    );
    let again = testing::credentials(
        &RabbitMq::bind(&instance, &binding, &testing::request()).expect("bound again"),
    );
    assert_eq!(first["username"], again["username"]);
    assert_ne!(first["password"], again["password"]);
    assert_eq!(fakes.http.calls()[2].json()["password"], again["password"]);
}

#[test]
fn a_failed_user_creation_does_not_leak_the_password() {
    let fakes = fakes();
    fakes.http.respond(|call| {
        call.request.path.starts_with("/api/users/").then(|| {
            let body = String::from_utf8_lossy(call.request.body.as_deref().unwrap_or_default());
            Ok(testing::response(400, &format!("bad request: {body}")))
        })
    });
    let instance = instance();
    let error = RabbitMq::bind(
        &instance,
        &testing::binding("binding-1", &instance),
        &testing::request(),
    )
    .expect_err("fails");
    let sent = fakes.http.calls()[0].json();
    let password = sent["password"].as_str().expect("password");
    assert!(!error.description().contains(password), "{error:?}");
    assert!(error.description().contains("[redacted]"), "{error:?}");
}

#[test]
fn unbind_and_deprovision_treat_gone_as_done_but_not_other_failures() {
    let fakes = fakes();
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);
    fakes.http.reply(
        Method::Delete,
        "/api/users/",
        testing::response(404, r#"{"error":"Object Not Found"}"#),
    );
    RabbitMq::unbind(&instance, &binding, &testing::request()).expect("gone is done");
    RabbitMq::deprovision(&instance, &testing::request()).expect("deprovisioned");
    assert_eq!(
        fakes.http.requests(),
        [
            format!("DELETE /api/users/{}", user_name(&binding)),
            format!("DELETE /api/vhosts/{}", vhost_name(&instance)),
        ]
    );

    fakes.http.fail(
        Method::Delete,
        "/api/vhosts/",
        Error::Failed("connection refused".to_owned()),
    );
    let error = RabbitMq::deprovision(&instance, &testing::request()).expect_err("fails");
    assert!(
        error.description().contains("connection refused"),
        "{error:?}"
    );
}
