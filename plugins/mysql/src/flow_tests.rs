//! Provision, bind, unbind and deprovision run natively against the SDK's
//! fake `sql` capability: the statements the plugin sends, the credentials
//! it returns, and what repeats do.

use wasm_broker_sdk::sql::{self, Dialect, ServerInfo, Value};
use wasm_broker_sdk::testing::{self, Fakes};

use super::*;

const INSTANCE: &str = "instance-1";

fn fakes() -> Fakes {
    let fakes = Fakes::install();
    fakes.sql.grant(
        ADMIN,
        ServerInfo {
            dialect: Dialect::Mysql,
            host: "db.test".to_owned(),
            port: 3306,
        },
    );
    fakes
}

/// The shipped least-privilege account: all five procedures are visible.
fn with_procedures(fakes: &Fakes) {
    fakes.sql.reply(
        "information_schema.ROUTINES",
        testing::rows(&["COUNT(*)"], vec![vec![Value::Int(5)]]),
    );
}

fn instance() -> Instance {
    testing::instance(INSTANCE, SERVICE_ID, PLANS[0].id)
}

#[test]
fn provision_creates_the_database_and_a_repeat_sends_the_same_idempotent_statement() {
    let fakes = fakes();
    let instance = Instance {
        parameters: Some(r#"{"charset":"latin1"}"#.to_owned()),
        ..instance()
    };
    let database = database_name(&instance);
    let expected = format!("CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET latin1");

    MySql::provision(&instance, &testing::request()).expect("provisioned");
    MySql::provision(&instance, &testing::request()).expect("provisioned again");

    assert_eq!(fakes.sql.statements(), [expected.clone(), expected]);
    assert!(
        fakes
            .log
            .messages()
            .contains(&format!("created database {database}")),
        "{:?}",
        fakes.log.messages()
    );
}

#[test]
fn provision_on_a_postgres_connection_is_refused_before_any_statement() {
    let fakes = Fakes::install();
    fakes.sql.grant(
        ADMIN,
        ServerInfo {
            dialect: Dialect::Postgres,
            host: "pg.test".to_owned(),
            port: 5432,
        },
    );
    let error = MySql::provision(&instance(), &testing::request()).expect_err("refused");
    assert!(
        error.description().contains("not a MySQL/MariaDB"),
        "{error:?}"
    );
    assert!(fakes.sql.statements().is_empty());
}

#[test]
fn an_ungranted_connection_is_an_internal_error_naming_it() {
    let _fakes = Fakes::install();
    let error = MySql::provision(&instance(), &testing::request()).expect_err("refused");
    assert!(
        matches!(&error, BrokerError::Internal(text) if text.contains("`admin` is not granted")),
        "{error:?}"
    );
}

#[test]
fn bind_creates_a_user_through_the_procedures_and_returns_its_login() {
    let fakes = fakes();
    with_procedures(&fakes);
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);

    let outcome = MySql::bind(&instance, &binding, &testing::request()).expect("bound");

    let credentials = testing::credentials(&outcome);
    let user = user_name(&binding);
    let database = database_name(&instance);
    let password = credentials["password"].as_str().expect("a password");
    assert_eq!(password.len(), 24);
    assert_eq!(credentials["username"], user.as_str());
    assert_eq!(credentials["host"], "db.test");
    assert_eq!(credentials["port"], 3306);
    assert_eq!(credentials["name"], database.as_str());
    assert_eq!(
        credentials["uri"],
        format!("mysql://{user}:{password}@db.test:3306/{database}")
    );
    let statements = fakes.sql.statements();
    assert_eq!(
        statements[1..],
        [
            format!("CALL wasm_broker.create_user('{user}', '{password}', 10, NULL)"),
            format!("CALL wasm_broker.alter_user('{user}', '{password}', 10, NULL)"),
            format!("CALL wasm_broker.grant_database('{database}', '{user}')"),
        ]
    );
}

#[test]
fn a_repeated_bind_gives_the_same_user_a_new_password_and_another_binding_another_user() {
    let fakes = fakes();
    with_procedures(&fakes);
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);

    let first = testing::credentials(
        &MySql::bind(&instance, &binding, &testing::request()).expect("bound"),
    );
    let again = testing::credentials(
        &MySql::bind(&instance, &binding, &testing::request()).expect("bound again"),
    );
    let other = testing::credentials(
        &MySql::bind(
            &instance,
            &testing::binding("binding-2", &instance),
            &testing::request(),
        )
        .expect("bound"),
    );

    assert_eq!(first["username"], again["username"]);
    assert_ne!(first["password"], again["password"]);
    assert_ne!(first["username"], other["username"]);
    // The retry's ALTER gives the existing user the password it returns.
    let last_alter = fakes
        .sql
        .statements()
        .into_iter()
        .filter(|statement| statement.starts_with("CALL wasm_broker.alter_user"))
        .nth(1)
        .expect("the second bind's ALTER");
    assert!(
        last_alter.contains(again["password"].as_str().expect("password")),
        "{last_alter}"
    );
}

#[test]
fn without_the_procedures_bind_runs_the_ddl_itself_with_an_expiring_password() {
    let fakes = fakes();
    fakes.sql.reply(
        "information_schema.ROUTINES",
        testing::rows(&["COUNT(*)"], vec![vec![Value::Int(0)]]),
    );
    // The server's clock reads the same second before and after the ALTER.
    fakes.sql.reply(
        "UNIX_TIMESTAMP()",
        testing::rows(&["UNIX_TIMESTAMP()"], vec![vec![Value::Int(1_700_000_000)]]),
    );
    let instance = instance();
    let binding = Binding {
        parameters: Some(r#"{"expires_in_days":30}"#.to_owned()),
        ..testing::binding("binding-1", &instance)
    };

    let outcome = MySql::bind(&instance, &binding, &testing::request()).expect("bound");

    let user = user_name(&binding);
    let password = testing::credentials(&outcome)["password"]
        .as_str()
        .expect("password")
        .to_owned();
    let statements = fakes.sql.statements();
    assert!(statements.contains(&format!(
        "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}' \
         WITH MAX_USER_CONNECTIONS 10 PASSWORD EXPIRE INTERVAL 30 DAY"
    )));
    // 1_700_000_000 + 30 days.
    let BindOutcome::Done(result) = outcome else {
        panic!("an asynchronous bind")
    };
    let metadata = result.metadata.expect("expiry metadata");
    assert_eq!(
        metadata.expires_at.as_deref(),
        Some("2023-12-14T22:13:20.0Z")
    );
}

#[test]
fn a_failing_create_user_does_not_leak_the_password() {
    let fakes = fakes();
    with_procedures(&fakes);
    fakes.sql.respond(|call| {
        call.statement
            .starts_with("CALL wasm_broker.create_user")
            .then(|| Err(sql::Error::Failed(format!("error near {}", call.statement))))
    });
    let instance = instance();
    let error = MySql::bind(
        &instance,
        &testing::binding("binding-1", &instance),
        &testing::request(),
    )
    .expect_err("fails");
    assert!(error.description().contains("[redacted]"), "{error:?}");
    let statement = &fakes.sql.statements()[1];
    let password = statement.split('\'').nth(3).expect("the password argument");
    assert!(!error.description().contains(password), "{error:?}");
}

#[test]
fn unbind_drops_the_user_then_ends_its_sessions_and_deprovision_drops_the_database() {
    let fakes = fakes();
    with_procedures(&fakes);
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);
    // The sessions cannot be ended: unbind still succeeds (best effort).
    fakes.sql.fail(
        "wasm_broker.kill_user",
        sql::Error::Failed("denied".to_owned()),
    );

    MySql::unbind(&instance, &binding, &testing::request()).expect("unbound");
    MySql::unbind(&instance, &binding, &testing::request()).expect("unbound again");
    MySql::deprovision(&instance, &testing::request()).expect("deprovisioned");

    let user = user_name(&binding);
    let statements: Vec<String> = fakes
        .sql
        .statements()
        .into_iter()
        .filter(|statement| !statement.contains("information_schema"))
        .collect();
    let unbind = [
        format!("CALL wasm_broker.drop_user('{user}')"),
        format!("CALL wasm_broker.kill_user('{user}')"),
    ];
    assert_eq!(statements[..2], unbind);
    assert_eq!(statements[2..4], unbind);
    assert_eq!(
        statements[4],
        format!("DROP DATABASE IF EXISTS `{}`", database_name(&instance))
    );
    assert!(
        fakes
            .log
            .lines()
            .iter()
            .any(|line| line.level == log::Level::Warn && line.message.contains(&user)),
        "{:?}",
        fakes.log.lines()
    );
}
