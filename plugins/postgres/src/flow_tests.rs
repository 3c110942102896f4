//! Provision, bind, unbind and deprovision run natively against the SDK's
//! fake `sql` capability, scripted as a small PostgreSQL that remembers its
//! databases and roles, so repeats meet what the first call left.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use wasm_broker_sdk::sql::{self, QueryResult, ServerInfo};
use wasm_broker_sdk::testing::{self, Fakes, SqlCall};

use super::*;

/// What the fake server holds.
#[derive(Default)]
struct Server {
    databases: BTreeSet<String>,
    roles: BTreeSet<String>,
}

fn one_row(value: Value) -> QueryResult {
    testing::rows(&["?column?"], vec![vec![value]])
}

fn text_param(call: &SqlCall, index: usize) -> String {
    call.params[index]
        .as_str()
        .expect("a text parameter")
        .to_owned()
}

/// `"name"` in a statement, after `keyword`.
fn quoted_after(statement: &str, keyword: &str) -> String {
    let rest = &statement[statement.find(keyword).expect("the keyword") + keyword.len()..];
    rest.split('"').nth(1).expect("a quoted name").to_owned()
}

/// A PostgreSQL with the `wasm_broker` functions of the least-privilege setup.
fn postgres() -> (Fakes, Rc<RefCell<Server>>) {
    let fakes = Fakes::install();
    fakes.sql.grant(
        ADMIN,
        ServerInfo {
            dialect: Dialect::Postgres,
            host: "pg.test".to_owned(),
            port: 5432,
        },
    );
    let server = Rc::new(RefCell::new(Server::default()));
    let state = Rc::clone(&server);
    fakes.sql.respond(move |call| {
        let mut server = state.borrow_mut();
        let statement = call.statement.as_str();
        let exists = |found: bool| {
            testing::rows(
                &["?column?"],
                if found {
                    vec![vec![Value::Int(1)]]
                } else {
                    vec![]
                },
            )
        };
        let answer = if statement.contains("to_regnamespace('wasm_broker')") {
            one_row(Value::Boolean(true))
        } else if statement.starts_with("SELECT 1 FROM pg_database") {
            exists(server.databases.contains(&text_param(call, 0)))
        } else if statement.starts_with("SELECT 1 FROM pg_roles") {
            exists(server.roles.contains(&text_param(call, 0)))
        } else if statement.starts_with("CREATE DATABASE") {
            server.databases.insert(quoted_after(statement, "DATABASE"));
            testing::rows(&[], vec![])
        } else if statement.starts_with("DROP DATABASE IF EXISTS") {
            server.databases.remove(&quoted_after(statement, "EXISTS"));
            testing::rows(&[], vec![])
        } else if statement.starts_with("SELECT wasm_broker.create_owner")
            || statement.starts_with("SELECT wasm_broker.create_login")
        {
            server.roles.insert(text_param(call, 0));
            one_row(Value::Boolean(true))
        } else if statement.starts_with("SELECT wasm_broker.drop_role") {
            let dropped = server.roles.remove(&text_param(call, 0));
            one_row(Value::Boolean(dropped))
        } else {
            return None;
        };
        Some(Ok(answer))
    });
    (fakes, server)
}

fn instance() -> Instance {
    testing::instance("instance-1", SERVICE_ID, PLANS[0].id)
}

fn count(statements: &[String], prefix: &str) -> usize {
    statements
        .iter()
        .filter(|statement| statement.starts_with(prefix))
        .count()
}

#[test]
fn provision_creates_owner_and_database_once_and_a_repeat_carries_on() {
    let (fakes, server) = postgres();
    let instance = instance();
    let names = Names::of(&instance);

    Postgres::provision(&instance, &testing::request()).expect("provisioned");
    Postgres::provision(&instance, &testing::request()).expect("provisioned again");

    let statements = fakes.sql.statements();
    assert_eq!(
        count(&statements, "CREATE DATABASE"),
        1,
        "the repeat found the database: {statements:#?}"
    );
    assert!(statements.contains(&format!(
        "CREATE DATABASE \"{}\" OWNER \"{}\" CONNECTION LIMIT 20",
        names.database, names.owner
    )));
    assert_eq!(
        count(
            &statements,
            &format!("REVOKE ALL ON DATABASE \"{}\" FROM PUBLIC", names.database)
        ),
        2
    );
    assert!(server.borrow().databases.contains(&names.database));
    assert!(server.borrow().roles.contains(&names.owner));
}

#[test]
fn a_connection_limit_above_the_plan_is_a_bad_request_before_any_statement() {
    let (fakes, _server) = postgres();
    let instance = Instance {
        parameters: Some(r#"{"connection_limit":500}"#.to_owned()),
        ..instance()
    };
    let error = Postgres::provision(&instance, &testing::request()).expect_err("refused");
    assert!(matches!(error, BrokerError::BadRequest(_)), "{error:?}");
    assert!(fakes.sql.statements().is_empty());
}

#[test]
fn bind_returns_a_login_role_of_the_owner_and_a_repeat_starts_it_over() {
    let (fakes, server) = postgres();
    let instance = instance();
    let names = Names::of(&instance);
    let binding = testing::binding("binding-1", &instance);
    Postgres::provision(&instance, &testing::request()).expect("provisioned");

    let first = testing::credentials(
        &Postgres::bind(&instance, &binding, &testing::request()).expect("bound"),
    );
    let again = testing::credentials(
        &Postgres::bind(&instance, &binding, &testing::request()).expect("bound again"),
    );

    let role = role_name(&binding);
    let password = first["password"].as_str().expect("password");
    assert_eq!(password.len(), 24);
    assert_eq!(first["username"], role.as_str());
    assert_eq!(first["host"], "pg.test");
    assert_eq!(first["port"], 5432);
    assert_eq!(first["name"], names.database.as_str());
    assert_eq!(
        first["uri"],
        format!(
            "postgresql://{role}:{password}@pg.test:5432/{}",
            names.database
        )
    );
    assert_eq!(again["username"], first["username"]);
    assert_ne!(again["password"], first["password"]);
    let logins: Vec<SqlCall> = fakes
        .sql
        .calls()
        .into_iter()
        .filter(|call| {
            call.statement
                .starts_with("SELECT wasm_broker.create_login")
        })
        .collect();
    assert_eq!(logins.len(), 2);
    assert_eq!(
        logins[0].params,
        [
            Value::from(role.as_str()),
            Value::from(password),
            Value::Null,
            Value::from(names.owner.as_str()),
        ]
    );
    // Each attempt dropped what an earlier one left before creating.
    let statements = fakes.sql.statements();
    assert_eq!(count(&statements, "SELECT wasm_broker.drop_role"), 2);
    assert!(statements.contains(&format!(
        "ALTER DATABASE \"{}\" SET role = '{}'",
        names.database, names.owner
    )));
    assert!(server.borrow().roles.contains(&role));
}

#[test]
fn unbind_revokes_then_drops_and_a_repeat_finds_nothing_to_do() {
    let (fakes, server) = postgres();
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);
    Postgres::provision(&instance, &testing::request()).expect("provisioned");
    Postgres::bind(&instance, &binding, &testing::request()).expect("bound");
    let before = fakes.sql.statements().len();

    Postgres::unbind(&instance, &binding, &testing::request()).expect("unbound");
    let first = fakes.sql.statements()[before..].to_vec();
    Postgres::unbind(&instance, &binding, &testing::request()).expect("unbound again");
    let second = fakes.sql.statements()[before + first.len()..].to_vec();

    assert_eq!(
        first,
        [
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            "SELECT to_regnamespace('wasm_broker') IS NOT NULL",
            "SELECT wasm_broker.disable_login($1)",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            "SELECT wasm_broker.drop_role($1)",
        ]
    );
    assert_eq!(second, ["SELECT 1 FROM pg_roles WHERE rolname = $1"]);
    assert!(!server.borrow().roles.contains(&role_name(&binding)));
}

#[test]
fn deprovision_drops_the_database_leftover_binding_roles_and_the_owner() {
    let (fakes, server) = postgres();
    let instance = instance();
    let names = Names::of(&instance);
    let binding = testing::binding("binding-1", &instance);
    Postgres::provision(&instance, &testing::request()).expect("provisioned");
    Postgres::bind(&instance, &binding, &testing::request()).expect("bound");
    let role = role_name(&binding);
    // The binding was never unbound: its role is still a member of the owner.
    fakes.sql.reply(
        "FROM pg_auth_members",
        testing::rows(&["rolname"], vec![vec![Value::from(role.as_str())]]),
    );

    Postgres::deprovision(&instance, &testing::request()).expect("deprovisioned");

    assert!(server.borrow().databases.is_empty());
    assert!(
        server.borrow().roles.is_empty(),
        "{:?}",
        server.borrow().roles
    );
    assert!(fakes.sql.statements().contains(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        names.database
    )));
}

#[test]
fn a_failing_login_creation_fails_the_bind_with_the_servers_message() {
    let (fakes, _server) = postgres();
    fakes
        .sql
        .fail("create_login", sql::Error::Failed("role exists".to_owned()));
    let instance = instance();
    let error = Postgres::bind(
        &instance,
        &testing::binding("binding-1", &instance),
        &testing::request(),
    )
    .expect_err("fails");
    assert!(error.description().contains("role exists"), "{error:?}");
}
