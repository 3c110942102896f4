//! Attacks between plugins sharing an SQL connection, against the local
//! MariaDB and PostgreSQL: one plugin holding every connection of the pool,
//! and session state (variables, roles, temporary tables) left for the next
//! call or the next plugin.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::capabilities::connections::Connections;
use crate::capabilities::connections::tests::{connections, reachable_or_skip};
use wit::Host as _;

const MARIADB: &str = "127.0.0.1:3306";
const POSTGRES: &str = "127.0.0.1:5432";
const LIMIT: u64 = 64 * 1024;

/// Pools of `max_connections` each, so a second statement of one plugin
/// reuses the first one's connection if anything does.
fn shared(max_connections: u32) -> Arc<Connections> {
    connections(&[
        (
            "mariadb",
            &format!(
                "kind = 'mysql'\nurl = 'mysql://root@127.0.0.1:3306'\nmax_connections = {max_connections}"
            ),
        ),
        (
            "pg",
            &format!(
                "kind = 'postgres'\nurl = 'postgres://postgres@127.0.0.1:5432/postgres'\nmax_connections = {max_connections}"
            ),
        ),
    ])
}

/// Plugin `plugin`'s host over `connections`, granted both as `my` and `pg`.
fn plugin_host(connections: &Arc<Connections>, plugin: &str) -> SqlHost {
    let grants = BTreeMap::from([
        ("my".to_owned(), "mariadb".to_owned()),
        ("pg".to_owned(), "pg".to_owned()),
    ]);
    SqlHost::new(
        Grants::new(connections.clone(), Arc::new(grants)).of_plugin(Arc::from(plugin)),
        LIMIT,
    )
}

async fn ok(host: &mut SqlHost, alias: &str, statement: &str, params: Vec<Value>) -> QueryResult {
    host.query(alias.to_owned(), statement.to_owned(), params)
        .await
        .expect("no trap")
        .unwrap_or_else(|error| panic!("{statement}: {error:?}"))
}

async fn first_value(host: &mut SqlHost, alias: &str, statement: &str) -> Value {
    let result = ok(host, alias, statement, vec![]).await;
    result
        .rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .unwrap_or_else(|| panic!("{statement} returned no value"))
}

#[tokio::test]
async fn a_plugin_holding_every_connection_does_not_stall_another() {
    if !reachable_or_skip("MariaDB", MARIADB).await {
        return;
    }
    let connections = shared(2);
    // The hog holds both connections of the pool for 7 s.
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let mut hog = plugin_host(&connections, "hog");
            tokio::spawn(async move {
                hog.query("my".to_owned(), "SELECT SLEEP(7)".to_owned(), vec![])
                    .await
                    .expect("no trap")
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut other = plugin_host(&connections, "other");
    let started = Instant::now();
    let answer = other
        .query("my".to_owned(), "SELECT 1".to_owned(), vec![])
        .await
        .expect("no trap");
    assert!(
        answer.is_ok(),
        "another plugin's statement waited for the hog's connections: {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "another plugin's statement took {:?}",
        started.elapsed()
    );
    for sleeper in sleepers {
        let slept = sleeper.await.expect("joined");
        assert!(
            slept.is_ok(),
            "the hog's own statements still run: {slept:?}"
        );
    }
}

#[tokio::test]
async fn mariadb_session_state_does_not_reach_the_next_statement() {
    if !reachable_or_skip("MariaDB", MARIADB).await {
        return;
    }
    let connections = shared(1);
    let mut attacker = plugin_host(&connections, "attacker");
    let mut victim = plugin_host(&connections, "victim");

    // A pre-4.1 password hash is 16 hex digits, a current one `*` and 40.
    ok(&mut attacker, "my", "SET SESSION old_passwords = 1", vec![]).await;
    ok(&mut victim, "my", "SET SESSION old_passwords = 1", vec![]).await;
    for host in [&mut attacker, &mut victim] {
        let hash = first_value(host, "my", "SELECT PASSWORD('x')").await;
        assert!(
            matches!(&hash, Value::Text(text) if text.starts_with('*') && text.len() == 41),
            "old_passwords outlived its statement: {hash:?}"
        );
    }

    ok(&mut attacker, "my", "SET @planted = 'yes'", vec![]).await;
    for host in [&mut attacker, &mut victim] {
        assert_eq!(
            first_value(host, "my", "SELECT @planted").await,
            Value::Null
        );
    }

    ok(
        &mut attacker,
        "my",
        "CREATE TEMPORARY TABLE mysql.wb_planted (id INT)",
        vec![],
    )
    .await;
    let visible = attacker
        .query(
            "my".to_owned(),
            "SELECT * FROM mysql.wb_planted".to_owned(),
            vec![],
        )
        .await
        .expect("no trap");
    assert!(visible.is_err(), "a temporary table outlived its statement");

    ok(&mut attacker, "my", "USE mysql", vec![]).await;
    assert_eq!(
        first_value(&mut attacker, "my", "SELECT DATABASE()").await,
        Value::Null
    );

    ok(
        &mut attacker,
        "my",
        "SET SESSION sql_mode = 'ANSI_QUOTES'",
        vec![],
    )
    .await;
    let mode = first_value(&mut attacker, "my", "SELECT @@SESSION.sql_mode").await;
    assert!(
        matches!(&mode, Value::Text(text) if !text.contains("ANSI_QUOTES")),
        "sql_mode outlived its statement: {mode:?}"
    );
}

#[tokio::test]
async fn postgres_session_state_is_discarded_between_statements() {
    if !reachable_or_skip("PostgreSQL", POSTGRES).await {
        return;
    }
    let connections = shared(1);
    let mut attacker = plugin_host(&connections, "attacker");

    // The pool reuses its connection: what follows is DISCARD ALL's doing,
    // not a fresh session each time.
    let first = first_value(&mut attacker, "pg", "SELECT pg_backend_pid()").await;
    let second = first_value(&mut attacker, "pg", "SELECT pg_backend_pid()").await;
    assert_eq!(first, second, "the connection was not reused");

    ok(&mut attacker, "pg", "SET search_path = evil", vec![]).await;
    assert_eq!(
        first_value(&mut attacker, "pg", "SHOW search_path").await,
        Value::Text("\"$user\", public".to_owned())
    );

    ok(&mut attacker, "pg", "SET ROLE pg_monitor", vec![]).await;
    assert_eq!(
        first_value(&mut attacker, "pg", "SELECT current_user::text").await,
        Value::Text("postgres".to_owned())
    );

    ok(
        &mut attacker,
        "pg",
        "SET SESSION AUTHORIZATION pg_monitor",
        vec![],
    )
    .await;
    assert_eq!(
        first_value(&mut attacker, "pg", "SELECT session_user::text").await,
        Value::Text("postgres".to_owned())
    );

    ok(
        &mut attacker,
        "pg",
        "CREATE TEMPORARY TABLE wb_planted (id int)",
        vec![],
    )
    .await;
    let visible = attacker
        .query(
            "pg".to_owned(),
            "SELECT * FROM wb_planted".to_owned(),
            vec![],
        )
        .await
        .expect("no trap");
    assert!(visible.is_err(), "a temporary table outlived its statement");

    // Prepared statements still work after DISCARD ALL dropped the ones the
    // connection had: sqlx forgot them too.
    for _ in 0..3 {
        let result = ok(&mut attacker, "pg", "SELECT $1::int8", vec![Value::Int(7)]).await;
        assert_eq!(result.rows, [vec![Value::Int(7)]]);
    }
}
