//! The redis plugin end to end: the real broker, the real plugin, a real
//! Redis; what the ACL users it hands out can and cannot do. Everything it
//! does is the lifecycle every plugin shares, run here through [`Redis`]:
//! an instance is a key prefix, a binding an ACL user confined to it.

use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use wasm_broker_tests::{credential, credentials, service_available, unique_id};

use super::{Backend, Credentials};

const ADMIN_URL: &str = "redis://127.0.0.1:6379";

async fn connect(uri: &str) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(uri)?
        .get_multiplexed_async_connection()
        .await
}

async fn admin() -> MultiplexedConnection {
    connect(ADMIN_URL).await.expect("admin connection to Redis")
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

/// The key the lifecycle stores under a binding's prefix.
fn greeting_key(creds: &Credentials) -> String {
    format!("{}greeting", credential(creds, "prefix"))
}

/// The key the rotation stores under a binding's prefix.
fn rotated_key(creds: &Credentials) -> String {
    format!("{}k", credential(creds, "prefix"))
}

/// A connection with a binding's login, and the key it stored.
struct Session {
    connection: MultiplexedConnection,
    key: String,
}

/// The redis plugin: a key prefix per instance, an ACL user per binding.
struct Redis;

impl Backend for Redis {
    const PLUGIN: &'static str = "redis";
    const ID_PREFIX: &'static str = "redis";
    const CREDENTIAL_FIELDS: &'static [&'static str] =
        &["uri", "hostname", "username", "password", "prefix"];
    const PORT: u16 = 6379;
    const URI_SCHEMES: &'static [&'static str] = &["redis://"];
    const RESOURCE: &'static str = "prefix";
    const ROTATABLE: bool = true;
    type Session = Session;

    fn available() -> bool {
        service_available("Redis", "127.0.0.1:6379")
    }

    fn provision_parameters() -> Option<Value> {
        Some(json!({"maxmemory_hint_mb": 64}))
    }

    /// Nothing beyond the shared fields (a memory hint changes no server
    /// setting).
    async fn check_binding(bound: &Value) {
        credentials(bound);
    }

    /// A key under the prefix, set and read back.
    async fn use_credentials(creds: &Credentials) -> Session {
        let mut connection = connect(credential(creds, "uri"))
            .await
            .expect("the binding's uri logs in");
        let key = greeting_key(creds);
        let () = redis::cmd("SET")
            .arg(&key)
            .arg("hello")
            .query_async(&mut connection)
            .await
            .expect("SET under the prefix");
        let value: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("GET under the prefix");
        assert_eq!(value, "hello");
        Session { connection, key }
    }

    /// No key outside the prefix, no command over all keys or the server.
    async fn check_confined(session: &mut Session, _creds: &Credentials) {
        let app = &mut session.connection;
        let outside = unique_id("outside-any-prefix");
        assert_no_permission(
            redis::cmd("SET")
                .arg(&outside)
                .arg("x")
                .query_async::<()>(app)
                .await,
            "SET outside the prefix",
        );
        assert_no_permission(
            redis::cmd("GET")
                .arg(&outside)
                .query_async::<Option<String>>(app)
                .await,
            "GET outside the prefix",
        );
        assert_no_permission(
            redis::cmd("KEYS")
                .arg("*")
                .query_async::<Vec<String>>(app)
                .await,
            "KEYS *",
        );
        assert_no_permission(
            redis::cmd("FLUSHALL").query_async::<()>(app).await,
            "FLUSHALL",
        );
        assert_no_permission(
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("*")
                .query_async::<Vec<String>>(app)
                .await,
            "CONFIG GET",
        );
        assert_no_permission(
            redis::cmd("SCAN")
                .arg("0")
                .query_async::<redis::Value>(app)
                .await,
            "SCAN",
        );
    }

    /// B cannot touch A's key; B's own key (`mine`, which A's deprovision
    /// must leave) is set.
    async fn check_isolated(a: &Credentials, b: &Credentials) {
        let prefix = credential(a, "prefix");
        let prefix_b = credential(b, "prefix");
        assert!(
            !prefix_b.starts_with(prefix) && !prefix.starts_with(prefix_b),
            "{prefix} / {prefix_b}"
        );
        let key = greeting_key(a);
        let mut app_b = connect(credential(b, "uri")).await.expect("B logs in");
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
    }

    async fn user_exists(creds: &Credentials) -> bool {
        acl_user_exists(credential(creds, "username")).await
    }

    async fn assert_login_refused(creds: &Credentials, what: &str) {
        assert!(
            connect(credential(creds, "uri")).await.is_err(),
            "{what}: the binding's credentials log in"
        );
    }

    async fn assert_session_ended(mut session: Session) {
        assert!(
            redis::cmd("GET")
                .arg(&session.key)
                .query_async::<Option<String>>(&mut session.connection)
                .await
                .is_err(),
            "a connection opened before the unbind still works"
        );
    }

    /// Any key under the prefix.
    async fn resource_exists(creds: &Credentials) -> bool {
        let prefix = credential(creds, "prefix");
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut admin().await)
            .await
            .expect("KEYS");
        !left.is_empty()
    }

    /// More keys than one SCAN batch: deprovision must delete every key
    /// under the prefix.
    async fn fill(creds: &Credentials) {
        let prefix = credential(creds, "prefix");
        let mut admin = admin().await;
        for i in 0..1200 {
            let () = redis::cmd("SET")
                .arg(format!("{prefix}bulk:{i}"))
                .arg(i)
                .query_async(&mut admin)
                .await
                .expect("SET");
        }
    }

    async fn check_untouched(b: &Credentials) {
        let other: Option<String> = redis::cmd("GET")
            .arg(format!("{}mine", credential(b, "prefix")))
            .query_async(&mut admin().await)
            .await
            .expect("GET");
        assert_eq!(
            other.as_deref(),
            Some("b"),
            "deprovisioning A deleted B's key"
        );
    }

    async fn leave_data(creds: &Credentials) {
        let mut app = connect(credential(creds, "uri"))
            .await
            .expect("old credentials");
        let () = redis::cmd("SET")
            .arg(rotated_key(creds))
            .arg("v")
            .query_async(&mut app)
            .await
            .expect("SET");
    }

    async fn check_data(creds: &Credentials) {
        let mut app = connect(credential(creds, "uri"))
            .await
            .expect("credentials of a binding not unbound log in");
        let value: String = redis::cmd("GET")
            .arg(rotated_key(creds))
            .query_async(&mut app)
            .await
            .expect("GET");
        assert_eq!(value, "v");
    }
}

shared_suite!(Redis);
