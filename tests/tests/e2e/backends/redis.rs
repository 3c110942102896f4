//! The redis plugin end to end: the real broker, the real plugin, a real
//! Redis; what the ACL users it hands out can and cannot do.

use redis::aio::MultiplexedConnection;
use serde_json::json;
use wasm_broker_tests::{
    BrokerSetup, TestBroker, bind_body, binding_path, credential, credentials, instance_path,
    service_available, unique_id,
};

const ADMIN_URL: &str = "redis://127.0.0.1:6379";

async fn connect(uri: &str) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(uri)?
        .get_multiplexed_async_connection()
        .await
}

async fn admin() -> MultiplexedConnection {
    connect(ADMIN_URL).await.expect("admin connection to Redis")
}

async fn redis_broker() -> TestBroker {
    TestBroker::start(BrokerSetup::shipped(&["redis"])).await
}

#[track_caller]
fn assert_no_permission<T: std::fmt::Debug>(result: redis::RedisResult<T>, what: &str) {
    match result {
        Ok(value) => panic!("{what} should have been refused, got {value:?}"),
        Err(error) => assert_eq!(
            error.code(),
            Some("NOPERM"),
            "{what}: expected NOPERM, got {error}"
        ),
    }
}

async fn acl_user_exists(user: &str) -> bool {
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut admin().await)
        .await
        .expect("ACL USERS");
    users.iter().any(|u| u == user)
}

#[tokio::test]
async fn redis_lifecycle_isolation_and_revocation() {
    if !service_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let broker = redis_broker().await;
    let plan = broker.plan("redis", "small").await;

    let instance_a = unique_id("redis-a");
    let (status, body) = broker
        .provision(&instance_a, &plan, Some(json!({"maxmemory_hint_mb": 64})))
        .await;
    assert_eq!(status, 201, "{body}");
    let binding_a = unique_id("redis-a-binding");
    let (status, bound) = broker.bind(&instance_a, &binding_a, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    let creds = credentials(&bound).clone();
    for field in ["uri", "hostname", "username", "password", "prefix"] {
        credential(&creds, field);
    }
    assert_eq!(creds.get("port"), Some(&json!(6379)), "{creds:?}");
    let uri = credential(&creds, "uri").to_owned();
    let prefix = credential(&creds, "prefix").to_owned();
    let user = credential(&creds, "username").to_owned();
    let password = credential(&creds, "password").to_owned();
    assert!(uri.starts_with("redis://"), "{uri}");

    let mut app_a = connect(&uri).await.expect("the binding's uri logs in");
    let key = format!("{prefix}greeting");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("hello")
        .query_async(&mut app_a)
        .await
        .expect("SET under the prefix");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut app_a)
        .await
        .expect("GET under the prefix");
    assert_eq!(value, "hello");

    let outside = unique_id("outside-any-prefix");
    assert_no_permission(
        redis::cmd("SET")
            .arg(&outside)
            .arg("x")
            .query_async::<()>(&mut app_a)
            .await,
        "SET outside the prefix",
    );
    assert_no_permission(
        redis::cmd("GET")
            .arg(&outside)
            .query_async::<Option<String>>(&mut app_a)
            .await,
        "GET outside the prefix",
    );
    assert_no_permission(
        redis::cmd("KEYS")
            .arg("*")
            .query_async::<Vec<String>>(&mut app_a)
            .await,
        "KEYS *",
    );
    assert_no_permission(
        redis::cmd("FLUSHALL").query_async::<()>(&mut app_a).await,
        "FLUSHALL",
    );
    assert_no_permission(
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("*")
            .query_async::<Vec<String>>(&mut app_a)
            .await,
        "CONFIG GET",
    );
    assert_no_permission(
        redis::cmd("SCAN")
            .arg("0")
            .query_async::<redis::Value>(&mut app_a)
            .await,
        "SCAN",
    );

    assert!(
        !broker.logs().contains(&password),
        "the binding's password is in the broker log"
    );

    let (status, fetched) = broker.get(&binding_path(&instance_a, &binding_a)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["credentials"], bound["credentials"]);

    // Instance B's binding cannot touch A's keys.
    let instance_b = unique_id("redis-b");
    let (status, body) = broker.provision(&instance_b, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let binding_b = unique_id("redis-b-binding");
    let (status, bound_b) = broker.bind(&instance_b, &binding_b, &plan, None).await;
    assert_eq!(status, 201, "{bound_b}");
    let creds_b = credentials(&bound_b).clone();
    let prefix_b = credential(&creds_b, "prefix").to_owned();
    assert_ne!(prefix_b, prefix);
    assert!(
        !prefix_b.starts_with(&prefix) && !prefix.starts_with(&prefix_b),
        "{prefix} / {prefix_b}"
    );
    let mut app_b = connect(credential(&creds_b, "uri"))
        .await
        .expect("B logs in");
    assert_no_permission(
        redis::cmd("GET")
            .arg(&key)
            .query_async::<Option<String>>(&mut app_b)
            .await,
        "B reading A's key",
    );
    assert_no_permission(
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<i64>(&mut app_b)
            .await,
        "B deleting A's key",
    );
    let () = redis::cmd("SET")
        .arg(format!("{prefix_b}mine"))
        .arg("b")
        .query_async(&mut app_b)
        .await
        .expect("B's own key");

    // Unbind: the user is gone, logins fail, the open connection is closed.
    let (status, body) = broker.unbind(&instance_a, &binding_a, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(!acl_user_exists(&user).await, "unbind left ACL user {user}");
    assert!(
        connect(&uri).await.is_err(),
        "the binding's credentials log in after unbind"
    );
    assert!(
        redis::cmd("GET")
            .arg(&key)
            .query_async::<Option<String>>(&mut app_a)
            .await
            .is_err(),
        "a connection opened before the unbind still works"
    );
    let (status, _) = broker.get(&binding_path(&instance_a, &binding_a)).await;
    assert_eq!(status, 404);

    // Deprovision deletes every key under the prefix and nothing else.
    let mut admin = admin().await;
    for i in 0..1200 {
        let () = redis::cmd("SET")
            .arg(format!("{prefix}bulk:{i}"))
            .arg(i)
            .query_async(&mut admin)
            .await
            .expect("SET");
    }
    let (status, body) = broker.deprovision(&instance_a, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut admin)
        .await
        .expect("KEYS");
    assert!(
        left.is_empty(),
        "deprovision left {} keys under {prefix}",
        left.len()
    );
    let other: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix_b}mine"))
        .query_async(&mut admin)
        .await
        .expect("GET");
    assert_eq!(
        other.as_deref(),
        Some("b"),
        "deprovisioning A deleted B's key"
    );
    let (status, operation) = broker
        .get(&format!("{}/last_operation", instance_path(&instance_a)))
        .await;
    assert_eq!(
        (status, &operation["state"]),
        (200, &json!("succeeded")),
        "{operation}"
    );

    // B goes with its binding still there: the ACL user goes too.
    let user_b = credential(&creds_b, "username").to_owned();
    let (status, body) = broker.deprovision(&instance_b, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(
        !acl_user_exists(&user_b).await,
        "deprovision left the ACL user of a binding never unbound"
    );
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix_b}*"))
        .query_async(&mut admin)
        .await
        .expect("KEYS");
    assert!(left.is_empty(), "{left:?}");

    let logs = broker.logs();
    for secret in [password.as_str(), credential(&creds_b, "password")] {
        assert!(
            !logs.contains(secret),
            "a binding's password is in the broker log after unbind/deprovision"
        );
    }
}

#[tokio::test]
async fn redis_binding_rotation_keeps_both_credentials_until_unbound() {
    if !service_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let broker = redis_broker().await;
    let plan = broker.plan("redis", "small").await;
    let instance = unique_id("redis-rotate");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let old = unique_id("redis-rotate-old");
    let (status, old_bound) = broker.bind(&instance, &old, &plan, None).await;
    assert_eq!(status, 201, "{old_bound}");
    let new = unique_id("redis-rotate-new");
    let mut rotation = bind_body(&plan, None);
    rotation["predecessor_binding_id"] = json!(old);
    let (status, new_bound) = broker.put_binding(&instance, &new, &rotation).await;
    assert_eq!(status, 201, "{new_bound}");
    let old_creds = credentials(&old_bound);
    let new_creds = credentials(&new_bound);
    assert_eq!(
        credential(old_creds, "prefix"),
        credential(new_creds, "prefix"),
        "a rotation keeps the prefix"
    );
    let key = format!("{}k", credential(old_creds, "prefix"));

    let mut old_app = connect(credential(old_creds, "uri"))
        .await
        .expect("old credentials");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .query_async(&mut old_app)
        .await
        .expect("SET");
    let mut new_app = connect(credential(new_creds, "uri"))
        .await
        .expect("new credentials");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut new_app)
        .await
        .expect("GET");
    assert_eq!(value, "v");

    let (status, body) = broker.unbind(&instance, &old, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(
        connect(credential(old_creds, "uri")).await.is_err(),
        "old credentials still log in"
    );
    let mut new_app = connect(credential(new_creds, "uri"))
        .await
        .expect("new credentials outlive the old binding");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut new_app)
        .await
        .expect("GET");
    assert_eq!(value, "v");

    let (status, body) = broker.unbind(&instance, &new, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!((status, body), (200, json!({})));
}
