//! The rabbitmq plugin end to end: the real broker, the real plugin, a real
//! RabbitMQ (AMQP and the management API); what the users it hands out can
//! and cannot do.

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
    BrokerSetup, TestBroker, bind_body, binding_path, credential, credentials, encode_id,
    instance_path, service_available, unique_id,
};

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

#[tokio::test]
async fn rabbitmq_lifecycle_isolation_and_revocation() {
    if !services_available() {
        return;
    }
    let broker = rabbitmq_broker().await;
    let plan = broker.plan("rabbitmq", "small").await;

    let instance_a = unique_id("rabbit-a");
    let (status, body) = broker
        .provision(&instance_a, &plan, Some(json!({"queue_max_length": 2})))
        .await;
    assert_eq!(status, 201, "{body}");
    let binding_a = unique_id("rabbit-a-binding");
    let (status, bound) = broker.bind(&instance_a, &binding_a, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    let creds = credentials(&bound).clone();
    for field in [
        "uri",
        "hostname",
        "username",
        "password",
        "vhost",
        "http_api_uri",
    ] {
        credential(&creds, field);
    }
    assert_eq!(creds.get("port"), Some(&json!(5672)), "{creds:?}");
    let uri = credential(&creds, "uri").to_owned();
    let vhost = credential(&creds, "vhost").to_owned();
    let user = credential(&creds, "username").to_owned();
    let password = credential(&creds, "password").to_owned();
    let api_uri = credential(&creds, "http_api_uri").to_owned();
    assert!(uri.starts_with("amqp://"), "{uri}");

    // The plan's limits and the queue_max_length policy are on the vhost.
    let (status, limits) = management(&format!("/vhost-limits/{}", encode_id(&vhost))).await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(
        limits[0]["value"],
        json!({"max-connections": 20, "max-queues": 100}),
        "{limits}"
    );
    let (status, policy) = management(&format!(
        "/policies/{}/wasm-broker-queue-limits",
        encode_id(&vhost)
    ))
    .await;
    assert_eq!(status, 200, "{policy}");
    assert_eq!(policy["definition"]["max-length"], 2, "{policy}");

    // AMQP with the binding's uri: declare, publish, consume.
    let app_a = connect(&uri).await.expect("the binding's uri logs in");
    let queue = unique_id("e2e-queue");
    round_trip(&app_a, &queue, b"hello from the e2e test").await;

    // The management API with the binding's own login sees its vhost only.
    let (status, whoami) = with_api_uri(&api_uri, "whoami").await;
    assert_eq!(status, 200, "{whoami}");
    assert_eq!(whoami["name"], user.as_str());
    let (status, queues) = with_api_uri(&api_uri, &format!("queues/{}", encode_id(&vhost))).await;
    assert_eq!(status, 200, "{queues}");
    assert!(
        queues
            .as_array()
            .is_some_and(|q| q.iter().any(|q| q["name"] == queue.as_str())),
        "{queues}"
    );
    let (status, body) = with_api_uri(&api_uri, "queues/%2F").await;
    assert!(
        status == 401 || status == 403,
        "the binding reads the default vhost's queues: {status} {body}"
    );
    let (status, body) = with_api_uri(&api_uri, "users").await;
    assert!(
        status == 401 || status == 403,
        "the binding lists the server's users: {status} {body}"
    );

    assert!(
        !broker.logs().contains(&password),
        "the binding's password is in the broker log"
    );

    let (status, fetched) = broker.get(&binding_path(&instance_a, &binding_a)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["credentials"], bound["credentials"]);

    // Rotation is not offered for these plans.
    let mut rotation = bind_body(&plan, None);
    rotation["predecessor_binding_id"] = json!(binding_a);
    let (status, body) = broker
        .put_binding(&instance_a, &unique_id("rabbit-rotate"), &rotation)
        .await;
    assert_eq!(
        status, 400,
        "rotation on a plan that is not binding_rotatable: {body}"
    );

    // Instance B's binding cannot reach A's vhost.
    let instance_b = unique_id("rabbit-b");
    let (status, body) = broker.provision(&instance_b, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let binding_b = unique_id("rabbit-b-binding");
    let (status, bound_b) = broker.bind(&instance_b, &binding_b, &plan, None).await;
    assert_eq!(status, 201, "{bound_b}");
    let creds_b = credentials(&bound_b).clone();
    let vhost_b = credential(&creds_b, "vhost").to_owned();
    let user_b = credential(&creds_b, "username").to_owned();
    assert_ne!(vhost_b, vhost);
    assert!(
        connect(&uri_for_vhost(credential(&creds_b, "uri"), &vhost))
            .await
            .is_err(),
        "B's user opened A's vhost"
    );
    let (status, body) = with_api_uri(
        credential(&creds_b, "http_api_uri"),
        &format!("queues/{}", encode_id(&vhost)),
    )
    .await;
    assert!(
        status == 401 || status == 403,
        "B reads A's queues over HTTP: {status} {body}"
    );
    let app_b = connect(credential(&creds_b, "uri"))
        .await
        .expect("B logs in");
    round_trip(&app_b, &unique_id("e2e-queue-b"), b"b").await;
    drop(app_b);

    // Unbind: the user is gone, logins fail, its connection is closed.
    let (status, body) = broker.unbind(&instance_a, &binding_a, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, _) = management(&format!("/users/{}", encode_id(&user))).await;
    assert_eq!(status, 404, "unbind left user {user}");
    assert!(
        connect(&uri).await.is_err(),
        "the binding's credentials log in after unbind"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while app_a.status().connected() {
        assert!(
            Instant::now() < deadline,
            "a connection opened before the unbind is still open 10 s after it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = broker.get(&binding_path(&instance_a, &binding_a)).await;
    assert_eq!(status, 404);

    // Deprovision deletes the vhost.
    let (status, body) = broker.deprovision(&instance_a, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, _) = management(&format!("/vhosts/{}", encode_id(&vhost))).await;
    assert_eq!(status, 404, "deprovision left vhost {vhost}");
    let (status, operation) = broker
        .get(&format!("{}/last_operation", instance_path(&instance_a)))
        .await;
    assert_eq!(
        (status, &operation["state"]),
        (200, &json!("succeeded")),
        "{operation}"
    );

    // B goes with its binding still there: its user goes too.
    let (status, body) = broker.deprovision(&instance_b, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, _) = management(&format!("/vhosts/{}", encode_id(&vhost_b))).await;
    assert_eq!(status, 404);
    let (status, _) = management(&format!("/users/{}", encode_id(&user_b))).await;
    assert_eq!(
        status, 404,
        "deprovision left the user of a binding never unbound: {user_b}"
    );

    let logs = broker.logs();
    for secret in [password.as_str(), credential(&creds_b, "password")] {
        assert!(
            !logs.contains(secret),
            "a binding's password is in the broker log after unbind/deprovision"
        );
    }
}

#[tokio::test]
async fn rabbitmq_plan_and_parameter_updates_change_the_vhost() {
    if !services_available() {
        return;
    }
    let broker = rabbitmq_broker().await;
    let plan = broker.plan("rabbitmq", "small").await;
    let large = broker.plan("rabbitmq", "large").await;
    let instance = unique_id("rabbit-update");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let vhost = wasm_broker_tests::derived_name("inst_", &instance, 64);
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
