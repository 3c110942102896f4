//! Privilege escalation through the rights a plugin needs: the shipped redis
//! plugin must be able to make ACL users and the shipped rabbitmq plugin
//! management users, so their least-privilege accounts may (Redis: `ACL
//! SETUSER`; RabbitMQ: only an administrator may create users). The host
//! keeps those rights from being turned against the server: a user the
//! plugin makes or changes may not administer the server, and no account
//! that administers it may be changed or deleted by a plugin.
//!
//! Each attack runs through the shipped grants and the least-privilege
//! accounts (`CONNECTIONS`), as a real plugin would hold them; what it would
//! have made is then looked for with the administrator's own client.

use serde_json::{Value, json};
use wasm_broker_tests::faults::{GRANT_ABUSE, assert_denied, grant_abuse_report};
use wasm_broker_tests::{
    BrokerSetup, CONNECTIONS, TestBroker, service_available, shipped_grants, unique_id,
};

/// grant_abuse holding what the shipped plugin `shipped` is granted.
async fn broker_with_grants_of(shipped: &str) -> TestBroker {
    let grants = shipped_grants(shipped);
    TestBroker::start(BrokerSetup {
        plugins: vec![GRANT_ABUSE.plugin()],
        extra_config: format!("{CONNECTIONS}\n[plugins.grant_abuse.connections]\n{grants}\n"),
        ..BrokerSetup::default()
    })
    .await
}

async fn redis_admin() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("the Redis administrator connects")
}

/// The ACL users whose names start with `prefix`.
async fn users_named(admin: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(admin)
        .await
        .expect("ACL USERS");
    users
        .into_iter()
        .filter(|user| user.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn a_plugin_cannot_make_or_take_over_a_redis_user_that_administers_the_server() {
    if !service_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let broker = broker_with_grants_of("redis").await;
    let mut admin = redis_admin().await;
    let tag = unique_id("esc").replace('-', "_");
    // An operator's own administrator account on the same server.
    let operator = format!("{tag}_ops");
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            &operator,
            "on",
            ">ops-secret",
            "~*",
            "&*",
            "+@all",
        ])
        .query_async(&mut admin)
        .await
        .expect("the operator's account");

    // The shipped redis plugin's rules (plugins/redis: COMMAND_RULES).
    // Without `-function`, +@write would hold FUNCTION FLUSH.
    let shipped_rules = [
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
    let mut fair = vec!["ACL", "SETUSER"];
    let fair_user = format!("{tag}_fair");
    let fair_keys = format!("~{tag}:*");
    fair.extend([
        fair_user.as_str(),
        "reset",
        "on",
        ">fair-pw",
        fair_keys.as_str(),
    ]);
    fair.extend(shipped_rules);
    let all_user = format!("{tag}_all");
    let write_user = format!("{tag}_write");
    let selector_user = format!("{tag}_sel");
    let report = grant_abuse_report(
        &broker,
        json!([
            {"redis": ["ACL", "SETUSER", all_user, "on", ">pw", "~*", "+@all"]},
            {"redis": ["acl", "setuser", all_user, "on", ">pw", "allcommands", "allkeys"]},
            // +@write alone holds FLUSHALL and FLUSHDB.
            {"redis": ["ACL", "SETUSER", write_user, "on", ">pw", "~*", "+@write"]},
            {"redis": ["ACL", "SETUSER", write_user, "on", ">pw", "+config|get"]},
            {"redis": ["ACL", "SETUSER", write_user, "on", ">pw", "+acl"]},
            {"redis": ["ACL", "SETUSER", selector_user, "on", ">pw", "(~* +@all)"]},
            {"redis": ["ACL", "SETUSER", operator, ">taken-over"]},
            {"redis": ["ACL", "DELUSER", operator]},
            {"redis": fair},
            {"redis": ["ACL", "DELUSER", fair_user]},
        ]),
    )
    .await;
    let attacks = [
        "a user with +@all",
        "a user with allcommands",
        "a user with +@write (FLUSHALL)",
        "a user with CONFIG GET",
        "a user with ACL",
        "a user with a selector",
        "a new password for the operator's administrator",
        "deleting the operator's administrator",
    ];
    for (line, what) in report.iter().zip(attacks) {
        assert_denied(line, what);
    }
    assert_eq!(
        report[8], "OK: OK",
        "the shipped plugin's own rules are refused"
    );
    assert_eq!(report[9], "OK: 1", "the fair user was not deleted");

    assert_eq!(
        users_named(&mut admin, &format!("{tag}_")).await,
        std::slice::from_ref(&operator),
        "a user the host refused exists, or the operator's is gone"
    );
    assert!(
        users_named(&mut admin, "wasm-broker-acl-check")
            .await
            .is_empty(),
        "the host's scratch users were left behind"
    );
    // The operator's password is still theirs.
    let mut operator_connection =
        redis::Client::open(format!("redis://{operator}:ops-secret@127.0.0.1:6379"))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("the operator still logs in with their password");
    let pong: String = redis::cmd("PING")
        .query_async(&mut operator_connection)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
    let _: i64 = redis::cmd("ACL")
        .arg(&["DELUSER", &operator])
        .query_async(&mut admin)
        .await
        .expect("cleanup");
}

/// `GET /api/users/NAME` as RabbitMQ's administrator: the user's tags, or
/// `None` when there is no such user.
async fn rabbitmq_user_tags(name: &str) -> Option<Value> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:15672/api/users/{name}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("the management API answers");
    if response.status() == 404 {
        return None;
    }
    let body: Value = response.json().await.expect("a JSON user");
    Some(body["tags"].clone())
}

#[tokio::test]
async fn a_plugin_cannot_make_a_rabbitmq_administrator() {
    if !service_available("RabbitMQ management API", "127.0.0.1:15672") {
        return;
    }
    let broker = broker_with_grants_of("rabbitmq").await;
    let tag = unique_id("esc");
    let evil = format!("{tag}-evil");
    let fair = format!("{tag}-fair");
    let evil_path = format!("/api/users/{evil}");
    let fair_path = format!("/api/users/{fair}");
    let report = grant_abuse_report(
        &broker,
        json!([
            {"http": "PUT", "path": evil_path, "body": {"password": "pw", "tags": "administrator"}},
            {"http": "PUT", "path": evil_path, "body": {"password": "pw", "tags": ["administrator"]}},
            {"http": "PUT", "path": evil_path, "body": {"password": "pw", "tags": "management,policymaker"}},
            {"http": "PUT", "path": evil_path, "body": {"password": "pw", "tags": " administrator "}},
            {"http": "PUT", "path": evil_path, "body": [{"tags": "administrator"}]},
            {"http": "PUT", "path": fair_path, "body": {"password": "pw", "tags": "management"}},
            {"http": "DELETE", "path": fair_path},
        ]),
    )
    .await;
    for (line, what) in report.iter().zip([
        "tags administrator",
        "tags [administrator]",
        "tags management,policymaker",
        "tags with spaces",
        "a body that is not an object",
    ]) {
        assert_denied(line, what);
    }
    assert_eq!(
        report[5], "OK: HTTP 201",
        "the shipped plugin's own user is refused"
    );
    assert_eq!(report[6], "OK: HTTP 204", "the fair user was not deleted");
    assert_eq!(
        rabbitmq_user_tags(&evil).await,
        None,
        "the refused user exists"
    );
    assert_eq!(rabbitmq_user_tags(&fair).await, None);
}
