//! A plugin reaches only the connections broker.toml grants it: asking for
//! one it was not granted (or one of the wrong kind) fails the request with
//! a 500 that says why, touches no backend, and leaks no DSN.

use wasm_broker_tests::{
    BrokerSetup, CONNECTIONS, TestBroker, assert_error_body, derived_name, instance_path,
    mariadb_has_database, postgres_admin, service_available, unique_id, wasm,
};

/// A connection nobody is granted, whose URL holds a password that must
/// never show up anywhere.
const SECRET_PASSWORD: &str = "dsn-secret-4b9e1c";

fn connections_with_a_secret() -> String {
    format!(
        "{CONNECTIONS}\n[connections.secret-mariadb]\nkind = \"mysql\"\nurl = \"mysql://root:{SECRET_PASSWORD}@127.0.0.1:3306\"\n"
    )
}

fn mysql_without_grants() -> BrokerSetup {
    BrokerSetup {
        plugins: vec![("mysql".to_owned(), wasm("mysql"))],
        extra_config: connections_with_a_secret(),
        ..BrokerSetup::default()
    }
}

#[tokio::test]
async fn a_connection_not_granted_fails_the_provision_and_creates_nothing() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let broker = TestBroker::start(mysql_without_grants()).await;
    let plan = broker.plan("mysql", "small").await;
    let instance = unique_id("ungranted");
    let database = derived_name("db", &instance, 64);

    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 500, "{body}");
    assert_error_body(&body, "ungranted provision");
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("not granted"),
        "the description does not say the connection is not granted: {description}"
    );
    assert!(
        description.contains("admin"),
        "the description does not name the alias: {description}"
    );
    for secret in ["mysql://", SECRET_PASSWORD, "127.0.0.1:3306"] {
        assert!(
            !description.contains(secret),
            "the description leaks {secret:?}: {description}"
        );
    }
    assert!(
        !mariadb_has_database(&database).await,
        "a plugin without the grant created {database}"
    );
    let logs = broker.logs();
    assert!(
        !logs.contains(SECRET_PASSWORD),
        "the broker log holds a connection password"
    );
    assert!(
        !logs.contains("mysql://root@127.0.0.1:3306"),
        "the broker log holds a DSN"
    );
}

/// A plugin's own `internal` error is a 500: OSB's orphan mitigation then
/// sends a DELETE, which must reach the plugin (it may have created part of
/// the instance before failing), not be answered 410 as if the failed
/// provision had been a refusal that changed nothing.
#[tokio::test]
async fn a_provision_the_plugin_failed_is_kept_for_orphan_mitigation() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let broker = TestBroker::start(mysql_without_grants()).await;
    let plan = broker.plan("mysql", "small").await;
    let instance = unique_id("orphan");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 500, "{body}");
    // The plugin still cannot reach its backend, so the delete fails too,
    // and the instance stays known for the platform's next attempt.
    for attempt in 1..=2 {
        let (status, body) = broker.deprovision(&instance, &plan).await;
        assert_eq!(
            status, 500,
            "orphan-mitigation delete {attempt} after a failed provision: {body}"
        );
        assert_error_body(&body, "orphan-mitigation delete");
    }
}

#[tokio::test]
async fn a_connection_of_the_wrong_kind_fails_the_provision() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let setup = BrokerSetup {
        plugins: vec![("mysql".to_owned(), wasm("mysql"))],
        extra_config: format!(
            "{}\n[plugins.mysql.connections]\nadmin = \"postgres\"\n",
            connections_with_a_secret()
        ),
        ..BrokerSetup::default()
    };
    let broker = TestBroker::start(setup).await;
    let plan = broker.plan("mysql", "small").await;
    let instance = unique_id("wrong-kind");
    let database = derived_name("db", &instance, 64);

    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 500, "{body}");
    assert_error_body(&body, "wrong-kind provision");
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("MySQL"),
        "the description does not say what kind was expected: {description}"
    );
    assert!(
        !description.contains("postgres://"),
        "the description leaks the DSN: {description}"
    );
    let mut admin = postgres_admin().await;
    let created = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&database)
        .fetch_optional(&mut admin)
        .await
        .expect("pg_database");
    assert!(
        created.is_none(),
        "the mysql plugin created {database} on PostgreSQL"
    );
    let (status, _) = broker.get(&instance_path(&instance)).await;
    assert_eq!(
        status, 404,
        "a failed provision is not a fetchable instance"
    );
}
