//! The mysql plugin end to end: the real broker, the real plugin, a real
//! MariaDB; what the credentials it hands out can and cannot do.

use serde_json::{Value, json};
use sqlx::{Connection as _, MySqlConnection};
use wasm_broker_tests::{
    BrokerSetup, TestBroker, bind_body, bind_refused_lifetimes, binding_path, credential,
    credentials, instance_path, mariadb_has_database, mariadb_root, service_available, unique_id,
};

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

#[tokio::test]
async fn mysql_lifecycle_isolation_and_revocation() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let broker = mysql_broker().await;
    let catalog = broker.catalog().await;
    let offering = catalog["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "mysql"))
        .expect("mysql");
    assert_eq!(offering["bindable"], true, "{offering}");
    assert_eq!(offering["bindings_retrievable"], true, "{offering}");
    let plan = broker.plan("mysql", "small").await;

    // Provision and bind instance A.
    let instance_a = unique_id("mysql-a");
    let (status, body) = broker.provision(&instance_a, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    assert!(body.is_object(), "{body}");
    let binding_a = unique_id("mysql-a-binding");
    let (status, bound) = broker.bind(&instance_a, &binding_a, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    let creds = credentials(&bound).clone();
    for field in ["uri", "jdbcUrl", "hostname", "name", "username", "password"] {
        credential(&creds, field);
    }
    assert_eq!(creds.get("port"), Some(&json!(3306)), "{creds:?}");
    let uri = credential(&creds, "uri").to_owned();
    let database = credential(&creds, "name").to_owned();
    let username = credential(&creds, "username").to_owned();
    let password = credential(&creds, "password").to_owned();
    assert!(uri.starts_with("mysql://"), "{uri}");
    assert!(uri.ends_with(&format!("/{database}")), "{uri}");
    let jdbc = credential(&creds, "jdbcUrl");
    assert!(
        jdbc.starts_with("jdbc:mysql://") && jdbc.contains(&database),
        "{jdbc}"
    );
    assert!(password.len() >= 16, "a short password: {password}");
    assert_eq!(bound["endpoints"][0]["host"], creds["hostname"], "{bound}");
    assert_eq!(bound["endpoints"][0]["ports"], json!(["3306"]), "{bound}");

    // The credentials work: a table, a row, read back.
    let mut app_a = connect(&uri).await.expect("the binding's uri logs in");
    sqlx::query("CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(100))")
        .execute(&mut app_a)
        .await
        .expect("create table");
    sqlx::query("INSERT INTO notes VALUES (1, 'hello from the e2e test')")
        .execute(&mut app_a)
        .await
        .expect("insert");
    let (body_text,): (String,) = sqlx::query_as("SELECT body FROM notes WHERE id = 1")
        .fetch_one(&mut app_a)
        .await
        .expect("select");
    assert_eq!(body_text, "hello from the e2e test");

    // No secret in the broker's logs (which do hold the plugin's lines).
    let logs = broker.logs();
    assert!(
        logs.contains(&username),
        "the plugin's log line about {username} is not in the broker log"
    );
    assert!(
        !logs.contains(&password),
        "the binding's password is in the broker log"
    );
    assert!(
        !logs.contains(&uri),
        "the binding's uri is in the broker log"
    );

    // Fetching the binding gives the same credentials.
    let (status, fetched) = broker.get(&binding_path(&instance_a, &binding_a)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["credentials"], bound["credentials"]);

    // Instance B's binding cannot reach A's database, nor A's binding B's.
    let instance_b = unique_id("mysql-b");
    let (status, body) = broker.provision(&instance_b, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let binding_b = unique_id("mysql-b-binding");
    let (status, bound_b) = broker.bind(&instance_b, &binding_b, &plan, None).await;
    assert_eq!(status, 201, "{bound_b}");
    let creds_b = credentials(&bound_b).clone();
    let database_b = credential(&creds_b, "name").to_owned();
    let user_b = credential(&creds_b, "username").to_owned();
    assert_ne!(database_b, database, "two instances share a database");
    assert_ne!(user_b, username, "two bindings share a user");
    let mut app_b = connect(credential(&creds_b, "uri"))
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
        credential(&creds_b, "password")
    );
    assert_denied(
        connect(&b_into_a).await.map(|_| ()),
        "B logging into A's database",
    );
    assert_denied(
        sqlx::query("SELECT 1 FROM mysql.user")
            .fetch_all(&mut app_a)
            .await,
        "A reading the server's user table",
    );
    let visible: Vec<(String,)> =
        sqlx::query_as("SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA")
            .fetch_all(&mut app_b)
            .await
            .expect("B lists schemata");
    assert!(
        !visible.iter().any(|(name,)| *name == database),
        "B sees A's database: {visible:?}"
    );
    drop(app_b);

    // Unbind: 200 {}, the user is gone, new logins fail, open sessions end.
    let (status, body) = broker.unbind(&instance_a, &binding_a, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(!user_exists(&username).await, "unbind left user {username}");
    assert_denied(connect(&uri).await.map(|_| ()), "logging in after unbind");
    assert!(
        sqlx::query("SELECT 1").execute(&mut app_a).await.is_err(),
        "a session opened before the unbind still works after it"
    );
    let (status, body) = broker.get(&binding_path(&instance_a, &binding_a)).await;
    assert_eq!(status, 404, "fetching an unbound binding: {body}");

    // Deprovision: 200 {}, the database and its data are gone.
    assert!(mariadb_has_database(&database).await);
    let (status, body) = broker.deprovision(&instance_a, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(
        !mariadb_has_database(&database).await,
        "deprovision left database {database}"
    );
    let (status, operation) = broker
        .get(&format!("{}/last_operation", instance_path(&instance_a)))
        .await;
    assert_eq!(status, 200, "last_operation after deprovision: {operation}");
    assert_eq!(operation["state"], "succeeded", "{operation}");
    let (status, body) = broker.get(&instance_path(&instance_a)).await;
    assert_eq!(status, 404, "fetching a deprovisioned instance: {body}");

    // Deprovisioning B with its binding still there revokes that binding too.
    let (status, body) = broker.deprovision(&instance_b, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(
        !mariadb_has_database(&database_b).await,
        "deprovision left database {database_b}"
    );
    assert!(
        !user_exists(&user_b).await,
        "deprovision left the user of a binding never unbound: {user_b}"
    );
    let (status, body) = broker.get(&binding_path(&instance_b, &binding_b)).await;
    assert_eq!(status, 404, "{body}");

    let logs = broker.logs();
    for secret in [password.as_str(), credential(&creds_b, "password")] {
        assert!(
            !logs.contains(secret),
            "a binding's password is in the broker log after unbind/deprovision"
        );
    }
}

#[tokio::test]
async fn mysql_binding_rotation_keeps_both_credentials_until_unbound() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let broker = mysql_broker().await;
    let catalog = broker.catalog().await;
    let plan = broker.plan("mysql", "small").await;
    let rotatable = catalog["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "mysql"))
        .and_then(|s| s["plans"].as_array())
        .and_then(|plans| plans.iter().find(|p| p["id"] == plan.plan_id.as_str()))
        .map(|p| p["binding_rotatable"] == true);
    assert_eq!(
        rotatable,
        Some(true),
        "the mysql plugin declares its plans rotatable"
    );

    let instance = unique_id("mysql-rotate");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let old = unique_id("mysql-rotate-old");
    let (status, old_bound) = broker.bind(&instance, &old, &plan, None).await;
    assert_eq!(status, 201, "{old_bound}");
    let old_uri = credential(credentials(&old_bound), "uri").to_owned();
    let mut app = connect(&old_uri).await.expect("old credentials log in");
    sqlx::query("CREATE TABLE rotated (v INT)")
        .execute(&mut app)
        .await
        .expect("create");
    sqlx::query("INSERT INTO rotated VALUES (42)")
        .execute(&mut app)
        .await
        .expect("insert");
    drop(app);

    // A predecessor that is not a binding of this instance is refused.
    let mut stray = bind_body(&plan, None);
    stray["predecessor_binding_id"] = json!(unique_id("no-such-binding"));
    let (status, body) = broker
        .put_binding(&instance, &unique_id("mysql-rotate-stray"), &stray)
        .await;
    assert_eq!(status, 400, "rotation from an unknown binding: {body}");

    let new = unique_id("mysql-rotate-new");
    let mut rotation = bind_body(&plan, None);
    rotation["predecessor_binding_id"] = json!(old);
    let (status, new_bound) = broker.put_binding(&instance, &new, &rotation).await;
    assert_eq!(status, 201, "{new_bound}");
    let old_creds = credentials(&old_bound);
    let new_creds = credentials(&new_bound);
    assert_ne!(
        credential(new_creds, "username"),
        credential(old_creds, "username")
    );
    assert_ne!(
        credential(new_creds, "password"),
        credential(old_creds, "password")
    );
    assert_eq!(
        credential(new_creds, "name"),
        credential(old_creds, "name"),
        "a rotation keeps the database"
    );
    let (status, again) = broker.put_binding(&instance, &new, &rotation).await;
    assert_eq!(status, 200, "identical rotation re-sent: {again}");

    let new_uri = credential(new_creds, "uri").to_owned();
    for uri in [&old_uri, &new_uri] {
        let mut app = connect(uri)
            .await
            .expect("both credentials log in during a rotation");
        let (value,): (i32,) = sqlx::query_as("SELECT v FROM rotated")
            .fetch_one(&mut app)
            .await
            .expect("select");
        assert_eq!(value, 42);
    }

    let (status, body) = broker.unbind(&instance, &old, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert_denied(
        connect(&old_uri).await.map(|_| ()),
        "old credentials after their unbind",
    );
    let mut app = connect(&new_uri)
        .await
        .expect("new credentials outlive the old binding");
    let (value,): (i32,) = sqlx::query_as("SELECT v FROM rotated")
        .fetch_one(&mut app)
        .await
        .expect("select");
    assert_eq!(value, 42);
    drop(app);

    let (status, body) = broker.unbind(&instance, &new, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!((status, body), (200, json!({})));
}

#[tokio::test]
async fn mysql_charset_parameter_and_updates() {
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

/// `yyyy-mm-ddThh:mm:ss.sZ`, the binding metadata format OSB fixes.
#[track_caller]
fn assert_osb_timestamp(text: &str) {
    let shape: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.dZ", "{text}");
}

/// The `metadata` of a bind or fetch-binding body: (`expires_at`, `renew_before`).
#[track_caller]
fn binding_metadata(body: &Value) -> (String, String) {
    let field = |name: &str| {
        body["metadata"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no metadata.{name} in {body}"))
            .to_owned()
    };
    let (expires_at, renew_before) = (field("expires_at"), field("renew_before"));
    assert_osb_timestamp(&expires_at);
    assert_osb_timestamp(&renew_before);
    (expires_at, renew_before)
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
async fn mysql_binding_lifetime_is_the_passwords_and_mariadb_enforces_it() {
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
        let user = wasm_broker_tests::derived_name("u_", &refused, 32);
        assert!(!user_exists(&user).await, "{refused} created {user}");
    }

    broker
        .unbind_all_and_deprovision(&instance, &[&forever, &expiring], &plan)
        .await;
}

#[tokio::test]
async fn mysql_rotation_gives_the_successor_a_lifetime_of_its_own() {
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
