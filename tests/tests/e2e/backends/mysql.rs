//! The mysql plugin end to end: the real broker, the real plugin, a real
//! MariaDB; what the credentials it hands out can and cannot do. The
//! lifecycle every plugin shares runs here through [`Mysql`]; the charset
//! parameter and binding lifetimes (MariaDB password expiry) are this
//! plugin's own.

use serde_json::{Value, json};
use sqlx::{Connection as _, MySqlConnection};
use wasm_broker_tests::{
    BrokerSetup, TestBroker, bind_body, bind_refused_lifetimes, binding_metadata, binding_path,
    credential, credentials, derived_name, instance_path, mariadb_has_database, mariadb_root,
    service_available, unique_id,
};

use super::{Backend, Credentials};

async fn connect(uri: &str) -> Result<MySqlConnection, sqlx::Error> {
    MySqlConnection::connect(uri).await
}

async fn mysql_broker() -> TestBroker {
    TestBroker::start(BrokerSetup::shipped(&["mysql"])).await
}

#[track_caller]
fn assert_denied(result: Result<impl std::fmt::Debug, sqlx::Error>, what: &str) {
    match result {
        Ok(value) => panic!("{what} should have been denied, got {value:?}"),
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.to_lowercase().contains("denied"),
                "{what}: expected an access-denied error, got {text}"
            );
        }
    }
}

async fn user_exists(user: &str) -> bool {
    let mut root = mariadb_root().await;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM mysql.user WHERE User = ?")
        .bind(user)
        .fetch_one(&mut root)
        .await
        .expect("mysql.user");
    count > 0
}

async fn default_charset(database: &str) -> String {
    let mut root = mariadb_root().await;
    let (charset,): (String,) = sqlx::query_as(
        "SELECT CAST(DEFAULT_CHARACTER_SET_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(database)
    .fetch_one(&mut root)
    .await
    .expect("the database exists");
    charset
}

/// The mysql plugin: a database per instance, a user per binding.
struct Mysql;

impl Backend for Mysql {
    const PLUGIN: &'static str = "mysql";
    const ID_PREFIX: &'static str = "mysql";
    const CREDENTIAL_FIELDS: &'static [&'static str] =
        &["uri", "jdbcUrl", "hostname", "name", "username", "password"];
    const PORT: u16 = 3306;
    const URI_SCHEMES: &'static [&'static str] = &["mysql://"];
    const RESOURCE: &'static str = "name";
    const ROTATABLE: bool = true;
    type Session = MySqlConnection;

    fn available() -> bool {
        service_available("MariaDB", "127.0.0.1:3306")
    }

    fn provision_parameters() -> Option<Value> {
        None
    }

    async fn check_binding(bound: &Value) {
        let creds = credentials(bound);
        let uri = credential(creds, "uri");
        let database = credential(creds, "name");
        assert!(uri.ends_with(&format!("/{database}")), "{uri}");
        let jdbc = credential(creds, "jdbcUrl");
        assert!(
            jdbc.starts_with("jdbc:mysql://") && jdbc.contains(database),
            "{jdbc}"
        );
        let password = credential(creds, "password");
        assert!(password.len() >= 16, "a short password: {password}");
        assert_eq!(bound["endpoints"][0]["host"], creds["hostname"], "{bound}");
        assert_eq!(bound["endpoints"][0]["ports"], json!(["3306"]), "{bound}");
    }

    /// A table, a row, read back.
    async fn use_credentials(creds: &Credentials) -> MySqlConnection {
        let mut app = connect(credential(creds, "uri"))
            .await
            .expect("the binding's uri logs in");
        sqlx::query("CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(100))")
            .execute(&mut app)
            .await
            .expect("create table");
        sqlx::query("INSERT INTO notes VALUES (1, 'hello from the e2e test')")
            .execute(&mut app)
            .await
            .expect("insert");
        let (body_text,): (String,) = sqlx::query_as("SELECT body FROM notes WHERE id = 1")
            .fetch_one(&mut app)
            .await
            .expect("select");
        assert_eq!(body_text, "hello from the e2e test");
        app
    }

    async fn check_confined(session: &mut MySqlConnection, _creds: &Credentials) {
        assert_denied(
            sqlx::query("SELECT 1 FROM mysql.user")
                .fetch_all(session)
                .await,
            "A reading the server's user table",
        );
    }

    async fn check_isolated(a: &Credentials, b: &Credentials) {
        let database = credential(a, "name");
        let user_b = credential(b, "username");
        let mut app_b = connect(credential(b, "uri"))
            .await
            .expect("B's uri logs in");
        assert_denied(
            sqlx::query_as::<_, (String,)>(&format!("SELECT body FROM `{database}`.notes"))
                .fetch_all(&mut app_b)
                .await,
            "B reading A's table",
        );
        assert_denied(
            sqlx::query(&format!("CREATE TABLE `{database}`.intruder (id INT)"))
                .execute(&mut app_b)
                .await,
            "B creating a table in A's database",
        );
        let b_into_a = format!(
            "mysql://{user_b}:{}@127.0.0.1:3306/{database}",
            credential(b, "password")
        );
        assert_denied(
            connect(&b_into_a).await.map(|_| ()),
            "B logging into A's database",
        );
        let visible: Vec<(String,)> =
            sqlx::query_as("SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA")
                .fetch_all(&mut app_b)
                .await
                .expect("B lists schemata");
        assert!(
            !visible.iter().any(|(name,)| name == database),
            "B sees A's database: {visible:?}"
        );
    }

    async fn user_exists(creds: &Credentials) -> bool {
        user_exists(credential(creds, "username")).await
    }

    async fn assert_login_refused(creds: &Credentials, what: &str) {
        assert_denied(connect(credential(creds, "uri")).await.map(|_| ()), what);
    }

    async fn assert_session_ended(mut session: MySqlConnection) {
        assert!(
            sqlx::query("SELECT 1").execute(&mut session).await.is_err(),
            "a session opened before the unbind still works after it"
        );
    }

    async fn resource_exists(creds: &Credentials) -> bool {
        mariadb_has_database(credential(creds, "name")).await
    }

    async fn leave_data(creds: &Credentials) {
        let mut app = connect(credential(creds, "uri"))
            .await
            .expect("old credentials log in");
        sqlx::query("CREATE TABLE rotated (v INT)")
            .execute(&mut app)
            .await
            .expect("create");
        sqlx::query("INSERT INTO rotated VALUES (42)")
            .execute(&mut app)
            .await
            .expect("insert");
    }

    async fn check_data(creds: &Credentials) {
        let mut app = connect(credential(creds, "uri"))
            .await
            .expect("credentials of a binding not unbound log in");
        let (value,): (i32,) = sqlx::query_as("SELECT v FROM rotated")
            .fetch_one(&mut app)
            .await
            .expect("select");
        assert_eq!(value, 42);
    }
}

shared_suite!(Mysql);

#[tokio::test]
async fn charset_parameter_and_updates() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let large = broker.plan("mysql", "large").await;
    let instance = unique_id("mysql-charset");
    let (status, body) = broker
        .provision(&instance, &plan, Some(json!({"charset": "latin1"})))
        .await;
    assert_eq!(status, 201, "{body}");
    let binding = unique_id("mysql-charset-binding");
    let (status, bound) = broker.bind(&instance, &binding, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    let database = credential(credentials(&bound), "name").to_owned();
    assert_eq!(default_charset(&database).await, "latin1");

    let (status, body) = broker
        .update(
            &instance,
            &json!({"service_id": plan.service_id, "parameters": {"charset": "utf8mb4"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.is_object(), "{body}");
    assert_eq!(default_charset(&database).await, "utf8mb4");
    let (status, fetched) = broker.get(&instance_path(&instance)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(
        fetched["parameters"],
        json!({"charset": "utf8mb4"}),
        "{fetched}"
    );

    let (status, body) = broker
        .update(
            &instance,
            &json!({"service_id": plan.service_id, "parameters": {"charset": "ebcdic"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = broker
        .update(
            &instance,
            &json!({"service_id": plan.service_id, "plan_id": large.plan_id}),
        )
        .await;
    assert_eq!(status, 422, "mysql plans are not updateable: {body}");
    assert_eq!(
        default_charset(&database).await,
        "utf8mb4",
        "a refused update changed the database"
    );
    let (status, fetched) = broker.get(&instance_path(&instance)).await;
    assert_eq!(
        (status, &fetched["plan_id"]),
        (200, &Value::from(plan.plan_id.clone())),
        "{fetched}"
    );

    let (status, body) = broker.unbind(&instance, &binding, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(!mariadb_has_database(&database).await);
}

async fn server_seconds() -> i64 {
    let mut root = mariadb_root().await;
    let (seconds,): (i64,) = sqlx::query_as("SELECT CAST(UNIX_TIMESTAMP() AS SIGNED)")
        .fetch_one(&mut root)
        .await
        .expect("the server's clock");
    seconds
}

/// A user's password expiry as MariaDB records it.
#[derive(Debug)]
struct PasswordExpiry {
    /// `password_lifetime` in days (0: never expires).
    lifetime_days: i64,
    /// `password_last_changed`, seconds since the epoch.
    last_changed: i64,
    /// When MariaDB starts refusing the password, formatted as OSB binding
    /// metadata, and a fifth of the lifetime earlier.
    expires_at: String,
    renew_before: String,
}

async fn password_expiry(user: &str) -> PasswordExpiry {
    let mut root = mariadb_root().await;
    sqlx::query("SET time_zone = '+00:00'")
        .execute(&mut root)
        .await
        .expect("UTC session");
    let (lifetime_days, last_changed, expires_at, renew_before): (i64, i64, String, String) =
        sqlx::query_as(
            "SELECT lifetime, changed, \
             CAST(DATE_FORMAT(FROM_UNIXTIME(changed + lifetime * 86400), '%Y-%m-%dT%H:%i:%s.0Z') AS CHAR), \
             CAST(DATE_FORMAT(FROM_UNIXTIME(changed + lifetime * 86400 - lifetime * 86400 DIV 5), \
             '%Y-%m-%dT%H:%i:%s.0Z') AS CHAR) \
             FROM (SELECT CAST(JSON_VALUE(Priv, '$.password_lifetime') AS SIGNED) AS lifetime, \
             CAST(JSON_VALUE(Priv, '$.password_last_changed') AS SIGNED) AS changed \
             FROM mysql.global_priv WHERE User = ? AND Host = '%') AS account",
        )
        .bind(user)
        .fetch_one(&mut root)
        .await
        .expect("the binding's user exists");
    PasswordExpiry {
        lifetime_days,
        last_changed,
        expires_at,
        renew_before,
    }
}

/// Makes MariaDB believe `user`'s password was set `seconds` earlier than
/// it was: the only way to see the server enforce a lifetime of days
/// without waiting for it.
async fn age_password(user: &str, seconds: i64) {
    let mut root = mariadb_root().await;
    sqlx::query(
        "UPDATE mysql.global_priv SET Priv = JSON_SET(Priv, '$.password_last_changed', \
         CAST(JSON_VALUE(Priv, '$.password_last_changed') AS SIGNED) - ?) \
         WHERE User = ? AND Host = '%'",
    )
    .bind(seconds)
    .bind(user)
    .execute(&mut root)
    .await
    .expect("age the password");
    sqlx::query("FLUSH PRIVILEGES")
        .execute(&mut root)
        .await
        .expect("reload the grant tables");
}

const DAY: i64 = 86_400;

/// Logs in with `uri` and runs a statement. Depending on
/// disconnect_on_expired_password, MariaDB refuses an expired password at
/// login or opens a session in which only SET statements run.
async fn run_statement(uri: &str) -> Result<(), String> {
    let mut session = connect(uri).await.map_err(|error| error.to_string())?;
    sqlx::query("SELECT 1")
        .execute(&mut session)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[tokio::test]
async fn binding_lifetime_is_the_passwords_and_mariadb_enforces_it() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let instance = unique_id("mysql-expiry");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");

    // Without a lifetime: no metadata, and a password that never expires,
    // whatever the server's default_password_lifetime.
    let forever = unique_id("mysql-expiry-forever");
    let (status, bound) = broker.bind(&instance, &forever, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    assert!(bound.get("metadata").is_none(), "{bound}");
    let forever_user = credential(credentials(&bound), "username").to_owned();
    let forever_uri = credential(credentials(&bound), "uri").to_owned();
    assert_eq!(password_expiry(&forever_user).await.lifetime_days, 0);

    // With one: MariaDB expires the password that many days after the bind
    // set it, and the metadata names exactly that instant.
    let expiring = unique_id("mysql-expiry-30");
    let before = server_seconds().await;
    let (status, bound) = broker
        .bind(
            &instance,
            &expiring,
            &plan,
            Some(json!({"expires_in_days": 30})),
        )
        .await;
    let after = server_seconds().await;
    assert_eq!(status, 201, "{bound}");
    let (expires_at, renew_before) = binding_metadata(&bound);
    let user = credential(credentials(&bound), "username").to_owned();
    let recorded = password_expiry(&user).await;
    assert_eq!(recorded.lifetime_days, 30, "{recorded:?}");
    assert!(
        (before..=after).contains(&recorded.last_changed),
        "the password was set during the bind ({before}..{after}): {recorded:?}"
    );
    assert_eq!(expires_at, recorded.expires_at);
    assert_eq!(renew_before, recorded.renew_before);
    assert!(renew_before < expires_at);
    let (status, fetched) = broker.get(&binding_path(&instance, &expiring)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["metadata"], bound["metadata"]);

    // MariaDB enforces it: once the lifetime has passed, the credentials
    // open no usable session; a password that never expires still works.
    let uri = credential(credentials(&bound), "uri").to_owned();
    run_statement(&uri)
        .await
        .expect("credentials work before they expire");
    age_password(&user, 30 * DAY + 1).await;
    let refusal = run_statement(&uri)
        .await
        .expect_err("credentials whose lifetime has passed still run statements");
    assert!(
        refusal.contains("SET PASSWORD") || refusal.contains("expired"),
        "expected an expired-password error, got {refusal}"
    );
    age_password(&forever_user, 3650 * DAY).await;
    run_statement(&forever_uri)
        .await
        .expect("a password without a lifetime never expires");

    // A lifetime that is over before it starts, or not a number of days, is
    // the platform user's mistake, and nothing is created.
    for refused in bind_refused_lifetimes(&broker, &instance, &plan, "mysql-expiry-refused").await {
        let user = derived_name("u_", &refused, 32);
        assert!(!user_exists(&user).await, "{refused} created {user}");
    }

    broker
        .unbind_all_and_deprovision(&instance, &[&forever, &expiring], &plan)
        .await;
}

#[tokio::test]
async fn rotation_gives_the_successor_a_lifetime_of_its_own() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let broker = mysql_broker().await;
    let plan = broker.plan("mysql", "small").await;
    let instance = unique_id("mysql-expiry-rotate");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let old = unique_id("mysql-expiry-old");
    let (status, old_bound) = broker
        .bind(&instance, &old, &plan, Some(json!({"expires_in_days": 1})))
        .await;
    assert_eq!(status, 201, "{old_bound}");
    let (old_expires_at, _) = binding_metadata(&old_bound);
    let old_user = credential(credentials(&old_bound), "username").to_owned();

    let new = unique_id("mysql-expiry-new");
    let mut rotation = bind_body(&plan, Some(json!({"expires_in_days": 7})));
    rotation["predecessor_binding_id"] = json!(old);
    let before = server_seconds().await;
    let (status, new_bound) = broker.put_binding(&instance, &new, &rotation).await;
    let after = server_seconds().await;
    assert_eq!(status, 201, "{new_bound}");
    let (expires_at, renew_before) = binding_metadata(&new_bound);
    assert_ne!(expires_at, old_expires_at);
    let new_user = credential(credentials(&new_bound), "username").to_owned();
    let recorded = password_expiry(&new_user).await;
    assert_eq!(recorded.lifetime_days, 7, "{recorded:?}");
    assert!(
        (before..=after).contains(&recorded.last_changed),
        "the successor's lifetime starts at the rotation ({before}..{after}): {recorded:?}"
    );
    assert_eq!(
        (expires_at, renew_before),
        (recorded.expires_at, recorded.renew_before)
    );

    // The predecessor keeps its own lifetime and works until unbound.
    let old_recorded = password_expiry(&old_user).await;
    assert_eq!(old_recorded.lifetime_days, 1);
    assert_eq!(old_recorded.expires_at, old_expires_at);
    let old_uri = credential(credentials(&old_bound), "uri").to_owned();
    let new_uri = credential(credentials(&new_bound), "uri").to_owned();
    connect(&old_uri)
        .await
        .expect("the predecessor works during the rotation");
    connect(&new_uri).await.expect("the successor works");
    let (status, body) = broker.unbind(&instance, &old, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert_denied(
        connect(&old_uri).await.map(|_| ()),
        "the predecessor after its unbind",
    );
    connect(&new_uri)
        .await
        .expect("the successor outlives its predecessor");

    // A rotation that does not resend the parameters keeps the lifetime's
    // length (the broker carries the predecessor's parameters over) and
    // starts it anew.
    let newest = unique_id("mysql-expiry-newest");
    let mut rotation = bind_body(&plan, None);
    rotation["predecessor_binding_id"] = json!(new);
    let before = server_seconds().await;
    let (status, newest_bound) = broker.put_binding(&instance, &newest, &rotation).await;
    let after = server_seconds().await;
    assert_eq!(status, 201, "{newest_bound}");
    let (expires_at, _) = binding_metadata(&newest_bound);
    let recorded = password_expiry(credential(credentials(&newest_bound), "username")).await;
    assert_eq!(recorded.lifetime_days, 7, "{recorded:?}");
    assert!(
        (before..=after).contains(&recorded.last_changed),
        "the inherited lifetime starts at this rotation ({before}..{after}): {recorded:?}"
    );
    assert_eq!(expires_at, recorded.expires_at);

    let (status, body) = broker.unbind(&instance, &newest, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker.unbind(&instance, &new, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!((status, body), (200, json!({})));
}
