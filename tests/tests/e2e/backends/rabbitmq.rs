//! The rabbitmq plugin end to end: the real broker, the real plugin, a real
//! RabbitMQ (AMQP and the management API); what the users it hands out can
//! and cannot do. The lifecycle every plugin shares runs here through
//! [`Rabbitmq`]; plan and parameter updates of a virtual host are this
//! plugin's own.

use std::time::{Duration, Instant};

use futures_lite::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::Url;
use serde_json::{Value, json};
use wasm_broker_tests::{
    BrokerSetup, TestBroker, credential, credentials, derived_name, encode_id, service_available,
    unique_id,
};

use super::{Backend, Credentials};

const MANAGEMENT: &str = "http://127.0.0.1:15672/api";

fn services_available() -> bool {
    service_available("RabbitMQ", "127.0.0.1:5672")
        && service_available("RabbitMQ management API", "127.0.0.1:15672")
}

async fn rabbitmq_broker() -> TestBroker {
    TestBroker::start(BrokerSetup::shipped(&["rabbitmq"])).await
}

/// `GET` on the management API as the server's admin.
async fn management(path: &str) -> (u16, Value) {
    let request = reqwest::Client::new()
        .get(format!("{MANAGEMENT}{path}"))
        .basic_auth("guest", Some("guest"));
    wasm_broker_tests::send(request).await
}

/// `GET` below a binding's `http_api_uri`, with the login the uri carries.
async fn with_api_uri(api_uri: &str, path: &str) -> (u16, Value) {
    let mut url = Url::parse(api_uri).expect("http_api_uri is a URL");
    let username = url.username().to_owned();
    let password = url.password().map(str::to_owned);
    assert!(
        !username.is_empty() && password.is_some(),
        "http_api_uri carries no login: {api_uri}"
    );
    url.set_username("").expect("strip user");
    url.set_password(None).expect("strip password");
    let url = url.join(path).expect("a path below the api uri");
    wasm_broker_tests::send(
        reqwest::Client::new()
            .get(url)
            .basic_auth(username, password),
    )
    .await
}

async fn connect(uri: &str) -> lapin::Result<Connection> {
    Connection::connect(uri, ConnectionProperties::default()).await
}

/// Declares a queue, publishes a message to it and consumes it back.
async fn round_trip(connection: &Connection, queue: &str, payload: &[u8]) {
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish")
        .await
        .expect("publish confirm");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "e2e-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open")
        .expect("a delivery, not an error");
    assert_eq!(delivery.data, payload);
    delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("basic.ack");
}

/// `uri` with its virtual host replaced by `vhost`.
fn uri_for_vhost(uri: &str, vhost: &str) -> String {
    let (base, _) = uri.rsplit_once('/').expect("an amqp uri with a vhost");
    format!("{base}/{}", encode_id(vhost))
}

/// Whether a management API answer refuses the request.
fn refused(status: u16) -> bool {
    status == 401 || status == 403
}

/// The rabbitmq plugin: a virtual host per instance, a user per binding.
struct Rabbitmq;

impl Backend for Rabbitmq {
    const PLUGIN: &'static str = "rabbitmq";
    const ID_PREFIX: &'static str = "rabbit";
    const CREDENTIAL_FIELDS: &'static [&'static str] = &[
        "uri",
        "hostname",
        "username",
        "password",
        "vhost",
        "http_api_uri",
    ];
    const PORT: u16 = 5672;
    const URI_SCHEMES: &'static [&'static str] = &["amqp://"];
    const RESOURCE: &'static str = "vhost";
    const ROTATABLE: bool = false;
    type Session = Connection;

    fn available() -> bool {
        services_available()
    }

    fn provision_parameters() -> Option<Value> {
        Some(json!({"queue_max_length": 2}))
    }

    /// The plan's limits and the queue_max_length policy are on the vhost.
    async fn check_binding(bound: &Value) {
        let vhost = credential(credentials(bound), "vhost");
        let (status, limits) = management(&format!("/vhost-limits/{}", encode_id(vhost))).await;
        assert_eq!(status, 200, "{limits}");
        assert_eq!(
            limits[0]["value"],
            json!({"max-connections": 20, "max-queues": 100}),
            "{limits}"
        );
        let (status, policy) = management(&format!(
            "/policies/{}/wasm-broker-queue-limits",
            encode_id(vhost)
        ))
        .await;
        assert_eq!(status, 200, "{policy}");
        assert_eq!(policy["definition"]["max-length"], 2, "{policy}");
    }

    /// AMQP with the binding's uri: declare, publish, consume; the
    /// management API with the binding's own login sees that queue.
    async fn use_credentials(creds: &Credentials) -> Connection {
        let app = connect(credential(creds, "uri"))
            .await
            .expect("the binding's uri logs in");
        let queue = unique_id("e2e-queue");
        round_trip(&app, &queue, b"hello from the e2e test").await;

        let api_uri = credential(creds, "http_api_uri");
        let vhost = credential(creds, "vhost");
        let (status, whoami) = with_api_uri(api_uri, "whoami").await;
        assert_eq!(status, 200, "{whoami}");
        assert_eq!(whoami["name"], credential(creds, "username"));
        let (status, queues) = with_api_uri(api_uri, &format!("queues/{}", encode_id(vhost))).await;
        assert_eq!(status, 200, "{queues}");
        assert!(
            queues
                .as_array()
                .is_some_and(|q| q.iter().any(|q| q["name"] == queue.as_str())),
            "{queues}"
        );
        app
    }

    /// The management API shows the binding its own vhost only.
    async fn check_confined(_session: &mut Connection, creds: &Credentials) {
        let api_uri = credential(creds, "http_api_uri");
        let (status, body) = with_api_uri(api_uri, "queues/%2F").await;
        assert!(
            refused(status),
            "the binding reads the default vhost's queues: {status} {body}"
        );
        let (status, body) = with_api_uri(api_uri, "users").await;
        assert!(
            refused(status),
            "the binding lists the server's users: {status} {body}"
        );
    }

    async fn check_isolated(a: &Credentials, b: &Credentials) {
        let vhost = credential(a, "vhost");
        assert!(
            connect(&uri_for_vhost(credential(b, "uri"), vhost))
                .await
                .is_err(),
            "B's user opened A's vhost"
        );
        let (status, body) = with_api_uri(
            credential(b, "http_api_uri"),
            &format!("queues/{}", encode_id(vhost)),
        )
        .await;
        assert!(
            refused(status),
            "B reads A's queues over HTTP: {status} {body}"
        );
        let app_b = connect(credential(b, "uri")).await.expect("B logs in");
        round_trip(&app_b, &unique_id("e2e-queue-b"), b"b").await;
    }

    async fn user_exists(creds: &Credentials) -> bool {
        let user = credential(creds, "username");
        let (status, _) = management(&format!("/users/{}", encode_id(user))).await;
        status != 404
    }

    async fn assert_login_refused(creds: &Credentials, what: &str) {
        assert!(
            connect(credential(creds, "uri")).await.is_err(),
            "{what}: the binding's credentials log in"
        );
    }

    /// RabbitMQ closes the connections of a deleted user, soon rather than
    /// at once.
    async fn assert_session_ended(session: Connection) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while session.status().connected() {
            assert!(
                Instant::now() < deadline,
                "a connection opened before the unbind is still open 10 s after it"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn resource_exists(creds: &Credentials) -> bool {
        let vhost = credential(creds, "vhost");
        let (status, _) = management(&format!("/vhosts/{}", encode_id(vhost))).await;
        status != 404
    }

    async fn leave_data(_creds: &Credentials) {
        unreachable!("rabbitmq plans are not binding_rotatable");
    }

    async fn check_data(_creds: &Credentials) {
        unreachable!("rabbitmq plans are not binding_rotatable");
    }
}

shared_suite!(Rabbitmq);

#[tokio::test]
async fn plan_and_parameter_updates_change_the_vhost() {
    if !services_available() {
        return;
    }
    let broker = rabbitmq_broker().await;
    let plan = broker.plan("rabbitmq", "small").await;
    let large = broker.plan("rabbitmq", "large").await;
    let instance = unique_id("rabbit-update");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let vhost = derived_name("inst_", &instance, 64);
    let (status, _) = management(&format!("/vhosts/{vhost}")).await;
    assert_eq!(status, 200, "the vhost of {instance} is {vhost}");
    let (status, _) = management(&format!("/policies/{vhost}/wasm-broker-queue-limits")).await;
    assert_eq!(status, 404, "no queue policy without queue_max_length");

    let (status, body) = broker
        .update(&instance, &json!({"service_id": plan.service_id, "plan_id": large.plan_id, "parameters": {"queue_max_length": 7}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, limits) = management(&format!("/vhost-limits/{vhost}")).await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(
        limits[0]["value"],
        json!({"max-connections": 200, "max-queues": 1000}),
        "{limits}"
    );
    let (status, policy) = management(&format!("/policies/{vhost}/wasm-broker-queue-limits")).await;
    assert_eq!(
        (status, &policy["definition"]["max-length"]),
        (200, &json!(7)),
        "{policy}"
    );

    let (status, body) = broker
        .update(
            &instance,
            &json!({"service_id": plan.service_id, "parameters": {"queue_max_length": null}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = management(&format!("/policies/{vhost}/wasm-broker-queue-limits")).await;
    assert_eq!(status, 404, "queue_max_length null removes the policy");

    let (status, body) = broker.deprovision(&instance, &large).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, _) = management(&format!("/vhosts/{vhost}")).await;
    assert_eq!(status, 404);
}
