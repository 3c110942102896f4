//! A grant gives a plugin what its connection's account can do, so the
//! shipped broker.toml grants least-privilege accounts
//! (tests/services/roles.sh), never the backends' administrators. Each
//! attack runs through the grant_abuse fixture twice: granted the
//! administrator (root, the PostgreSQL superuser, the default Redis user),
//! where it works, so the test can fail; then granted the shipped account,
//! where it must come back refused. And the probe: `plugins check` and the
//! startup log warn about a grant of an administrator, naming the plugin and
//! the connection, and say nothing of the kind about the shipped accounts.
//!
//! What the shipped accounts still allow (README.md, "What a plugin holds")
//! is not tested as refused here: RabbitMQ's administrator reads
//! `/api/users`.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Executor as _;
use wasm_broker_tests::faults::{GRANT_ABUSE, grant_abuse_report, wait_for_log};
use wasm_broker_tests::{
    ADMIN_CONNECTIONS, BrokerSetup, CONNECTIONS, TestBroker, derived_name, mariadb_has_database,
    mariadb_root, postgres_admin, service_available, unique_id,
};

/// The shipped Redis account (tests/services/roles.sh).
const REDIS_ROLE: &str = "wasm_broker_redis";

/// A broker serving grant_abuse with `connections` (the administrators' or
/// the shipped accounts') and `grants` as its `[plugins.grant_abuse.connections]`.
async fn abuse_broker(connections: &str, grants: &str) -> TestBroker {
    TestBroker::start(BrokerSetup {
        plugins: vec![GRANT_ABUSE.plugin()],
        extra_config: format!("{connections}\n[plugins.grant_abuse.connections]\n{grants}\n"),
        ..BrokerSetup::default()
    })
    .await
}

/// Provisions grant_abuse with `calls`; its report, one line per call.
async fn attack(broker: &TestBroker, calls: &[Value]) -> Vec<String> {
    grant_abuse_report(broker, Value::Array(calls.to_vec())).await
}

fn sql(statement: &str) -> Value {
    json!({"sql": statement})
}

fn redis(args: &[&str]) -> Value {
    json!({"redis": args})
}

/// Every line of `report` is a refusal (`failed: ...`, `denied: ...`) and
/// none carries `leak` (what a worked attack returns).
#[track_caller]
fn assert_refused(report: &[String], calls: &[Value], leak: &str, context: &str) {
    for (line, call) in report.iter().zip(calls) {
        assert!(
            !line.starts_with("OK") && !line.contains(leak),
            "{context}: {call} was not refused: {line}"
        );
    }
}

#[tokio::test]
async fn mariadb_files_hashes_and_other_databases_are_out_of_reach() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let other = format!("wbt_other_{}", unique_id("").replace('-', "_"));
    let outfile = |who: &str| format!("/tmp/{other}_{who}.txt");
    let calls = |who: &str| {
        vec![
            sql("SELECT LOAD_FILE('/etc/passwd')"),
            sql(&format!("SELECT 'written' INTO OUTFILE '{}'", outfile(who))),
            sql(
                "SELECT authentication_string FROM mysql.user WHERE authentication_string <> '' LIMIT 1",
            ),
            sql("SELECT Priv FROM mysql.global_priv LIMIT 1"),
            sql(&format!("DROP DATABASE {other}")),
        ]
    };
    let make_other = || async {
        mariadb_root()
            .await
            .execute(format!("CREATE DATABASE IF NOT EXISTS {other}").as_str())
            .await
            .expect("another application's database");
    };

    // Root: every one works (LOAD_FILE reads the file, DROP drops).
    make_other().await;
    let root = abuse_broker(ADMIN_CONNECTIONS, "admin = \"mariadb\"").await;
    let report = attack(&root, &calls("root")).await;
    assert!(report[0].contains("root:"), "LOAD_FILE as root: {report:?}");
    for line in &report[1..] {
        assert!(line.starts_with("OK"), "as root: {report:?}");
    }
    assert!(!mariadb_has_database(&other).await, "root dropped {other}");
    let _ = std::fs::remove_file(outfile("root"));

    // The shipped account: refused (LOAD_FILE answers NULL without FILE).
    make_other().await;
    let shipped = abuse_broker(CONNECTIONS, "admin = \"mariadb\"").await;
    let calls = calls("shipped");
    let report = attack(&shipped, &calls).await;
    assert_eq!(report[0], "OK: 1 rows; NULL", "LOAD_FILE without FILE");
    assert_refused(
        &report[1..],
        &calls[1..],
        "root:",
        "the shipped MariaDB account",
    );
    assert!(
        !std::path::Path::new(&outfile("shipped")).exists(),
        "INTO OUTFILE wrote a file"
    );
    assert!(mariadb_has_database(&other).await, "{other} was dropped");
    mariadb_root()
        .await
        .execute(format!("DROP DATABASE IF EXISTS {other}").as_str())
        .await
        .expect("drop the other database");
}

/// Whether `user` logs in to MariaDB with `password`.
async fn mariadb_login(user: &str, password: &str) -> bool {
    use sqlx::Connection as _;
    sqlx::MySqlConnection::connect(&format!("mysql://{user}:{password}@127.0.0.1:3306"))
        .await
        .is_ok()
}

/// Global CREATE USER lets an account ALTER USER any account, root's too.
/// The shipped account holds none: it manages binding users only through
/// the `wasm_broker` procedures (deploy/mariadb/least-privilege.sql), which
/// refuse any name not of the plugin's shape. Dynamic SQL (PREPARE/EXECUTE)
/// runs with the account's own rights, so it is refused as well.
#[tokio::test]
async fn mariadb_other_accounts_are_out_of_reach() {
    if !service_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let victim = format!("victim_x_{}", &unique_id("").replace('-', "")[..12]);
    let mut root_connection = mariadb_root().await;
    let set_victim = format!("CREATE OR REPLACE USER '{victim}'@'%' IDENTIFIED BY 'before'");
    root_connection
        .execute(set_victim.as_str())
        .await
        .expect("the victim account");
    // Statements that need CREATE USER (or GRANT OPTION), run directly and
    // as dynamic SQL, then the procedures with names not of the plugin's shape.
    let direct = [
        format!("ALTER USER '{victim}'@'%' IDENTIFIED BY 'hijacked'"),
        format!(
            "PREPARE s FROM 'ALTER USER ''{victim}''@''%'' IDENTIFIED BY ''hijacked'''; EXECUTE s"
        ),
        format!("SET PASSWORD FOR '{victim}'@'%' = PASSWORD('hijacked')"),
        format!("DROP USER '{victim}'@'%'"),
        format!("GRANT ALL PRIVILEGES ON db0000000000000000.* TO '{victim}'@'%'"),
    ];
    let procedures = [
        format!("CALL wasm_broker.alter_user('{victim}', 'Hijacked0123456789', 10, NULL)"),
        "CALL wasm_broker.drop_user('root')".to_owned(),
        format!("CALL wasm_broker.grant_database('mysql', '{victim}')"),
        "CALL wasm_broker.create_user('u_0123456789abcdef''@''localhost', \
         'Hijacked0123456789', 10, NULL)"
            .to_owned(),
    ];
    let calls: Vec<Value> = direct.iter().chain(&procedures).map(|s| sql(s)).collect();

    // Root: ALTER USER changes the victim's password.
    let root = abuse_broker(ADMIN_CONNECTIONS, "admin = \"mariadb\"").await;
    let report = attack(&root, &calls[..1]).await;
    assert!(report[0].starts_with("OK"), "as root: {report:?}");
    assert!(mariadb_login(&victim, "hijacked").await, "root changed it");
    root_connection
        .execute(set_victim.as_str())
        .await
        .expect("reset the victim account");

    // The shipped account: every way is refused, the password is unchanged.
    let shipped = abuse_broker(CONNECTIONS, "admin = \"mariadb\"").await;
    let report = attack(&shipped, &calls).await;
    let unchanged = mariadb_login(&victim, "before").await;
    root_connection
        .execute(format!("DROP USER IF EXISTS '{victim}'@'%'").as_str())
        .await
        .expect("drop the victim account");
    assert_refused(&report, &calls, "OK", "the shipped MariaDB account");
    for line in &report[..direct.len()] {
        assert!(
            line.contains("denied"),
            "refused for want of the right: {report:?}"
        );
    }
    for line in &report[direct.len()..] {
        assert!(
            line.contains("wasm_broker: not a"),
            "refused by the procedure's check: {report:?}"
        );
    }
    assert!(unchanged, "the victim's password was changed: {report:?}");
    // The rights sit with an account nobody logs in as.
    let (definer,): (String,) =
        sqlx::query_as("SHOW CREATE USER 'wasm_broker_mysql_definer'@'localhost'")
            .fetch_one(&mut root_connection)
            .await
            .expect("the definer account (tests/services/roles.sh)");
    assert!(definer.contains("ACCOUNT LOCK"), "{definer}");
}

#[tokio::test]
async fn postgres_programs_files_hashes_and_other_databases_are_out_of_reach() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let other = format!("wbt_other_{}", unique_id("").replace('-', "_"));
    let calls = vec![
        sql("DO $$ BEGIN CREATE TEMP TABLE wbt_out(line text); \
             COPY wbt_out FROM PROGRAM 'id'; DROP TABLE wbt_out; END $$"),
        sql("SELECT pg_read_file('/etc/passwd')"),
        sql("SELECT rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL LIMIT 1"),
        sql(&format!("DROP DATABASE {other}")),
    ];
    let make_other = || async {
        postgres_admin()
            .await
            .execute(format!("CREATE DATABASE {other}").as_str())
            .await
            .expect("another application's database");
    };
    let other_exists = || async {
        sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&other)
            .fetch_optional(&mut postgres_admin().await)
            .await
            .expect("pg_database")
            .is_some()
    };

    make_other().await;
    let root = abuse_broker(ADMIN_CONNECTIONS, "admin = \"postgres\"").await;
    let report = attack(&root, &calls).await;
    assert!(
        report[1].contains("root:"),
        "pg_read_file as superuser: {report:?}"
    );
    // The password hash query may find no hash (trust): OK with 0 rows.
    for line in &report {
        assert!(line.starts_with("OK"), "as superuser: {report:?}");
    }
    assert!(!other_exists().await, "the superuser dropped {other}");

    make_other().await;
    let shipped = abuse_broker(CONNECTIONS, "admin = \"postgres\"").await;
    let report = attack(&shipped, &calls).await;
    assert_refused(&report, &calls, "root:", "the shipped PostgreSQL role");
    assert!(
        report[0].contains("pg_execute_server_program"),
        "{report:?}"
    );
    assert!(other_exists().await, "{other} was dropped");
    postgres_admin()
        .await
        .execute(format!("DROP DATABASE IF EXISTS {other}").as_str())
        .await
        .expect("drop the other database");
}

/// Up to PostgreSQL 15, CREATEROLE may grant itself any non-superuser
/// role, pg_execute_server_program included, so the shipped account holds
/// none: its roles come from the SECURITY DEFINER functions of
/// deploy/postgres/least-privilege.sql. Neither a GRANT, nor one built by
/// dynamic SQL, nor those functions asked for another role's name or for an
/// owner-named role that is not a plain owner, gives it the server's
/// programs. Should one work, the role is taken back before the test fails,
/// so no other test runs as an escalated account.
#[tokio::test]
async fn postgres_shipped_role_cannot_grant_itself_server_programs() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    const SHIPPED: &str = "wasm_broker_postgres";
    // Named like an owner role of the plugin but a member of the
    // server-program role: what a function must not hand out.
    let disguised = format!("{}_owner", derived_name("db_", &unique_id("disguised"), 57));
    let mut admin = postgres_admin().await;
    admin
        .execute(
            format!("CREATE ROLE {disguised} NOLOGIN IN ROLE pg_execute_server_program").as_str(),
        )
        .await
        .expect("a disguised owner role");
    let copy = "DO $$ BEGIN CREATE TEMP TABLE wbt_out(line text); \
                COPY wbt_out FROM PROGRAM 'id'; DROP TABLE wbt_out; END $$";
    let calls = vec![
        sql("GRANT pg_execute_server_program TO CURRENT_USER"),
        sql(
            "DO $$ BEGIN EXECUTE format('GRANT pg_execute_server_program TO %I', \
             current_user); END $$",
        ),
        sql("ALTER ROLE CURRENT_USER CREATEROLE"),
        sql("GRANT wasm_broker_role_manager TO CURRENT_USER"),
        sql("SELECT wasm_broker.act_as_owner('pg_execute_server_program')"),
        sql("SELECT wasm_broker.create_owner('pg_execute_server_program')"),
        sql(
            "SELECT wasm_broker.create_login('u_0123456789abcdef', 'x', NULL, \
             'pg_execute_server_program')",
        ),
        sql(&format!("SELECT wasm_broker.act_as_owner('{disguised}')")),
        sql(&format!(
            "SELECT wasm_broker.create_login('u_0123456789abcdef', 'x', NULL, '{disguised}')"
        )),
        sql("SELECT wasm_broker.drop_role('postgres')"),
        sql(
            "CREATE OR REPLACE FUNCTION wasm_broker.drop_role(name text) RETURNS boolean \
             LANGUAGE sql AS 'SELECT true'",
        ),
        sql(copy),
        // CREATEDB reaches no file either: not by a large object, an
        // untrusted extension, or a copy of a database it does not own.
        sql("SELECT lo_import('/etc/passwd')"),
        sql("CREATE EXTENSION file_fdw"),
        sql("CREATE DATABASE wbt_copy_of_postgres TEMPLATE postgres"),
    ];
    let broker = abuse_broker(CONNECTIONS, "admin = \"postgres\"").await;
    let report = attack(&broker, &calls).await;
    drop(broker);
    let escalated: bool = sqlx::query_scalar(
        "SELECT pg_has_role($1, 'pg_execute_server_program', 'MEMBER') \
             OR pg_has_role($1, 'wasm_broker_role_manager', 'MEMBER') \
             OR (SELECT rolcreaterole FROM pg_roles WHERE rolname = $1)",
    )
    .bind(SHIPPED)
    .fetch_one(&mut admin)
    .await
    .expect("the shipped account's rights");
    // Taken back whatever happened (each only warns when not granted).
    admin
        .execute(
            format!(
                "SET client_min_messages = error; \
                 REVOKE pg_execute_server_program FROM {SHIPPED}; \
                 REVOKE wasm_broker_role_manager FROM {SHIPPED}; \
                 ALTER ROLE {SHIPPED} NOCREATEROLE; \
                 REVOKE {disguised} FROM {SHIPPED}; \
                 DROP ROLE IF EXISTS u_0123456789abcdef; DROP ROLE {disguised}"
            )
            .as_str(),
        )
        .await
        .expect("clean up");
    assert!(
        !escalated,
        "{SHIPPED} gained server programs or CREATEROLE: {report:?}"
    );
    assert_refused(&report, &calls, "uid=", "the shipped PostgreSQL role");
    // Refused for the reason meant, not by a typo in the attack.
    for (index, reason) in [
        (0, "must have admin option"),
        (1, "must have admin option"),
        (4, "not a database owner role of the plugin"),
        (6, "not a database owner role of the plugin"),
        (7, "not a plain owner role"),
        (8, "not a plain owner role"),
        (9, "not a role of the plugin"),
        (11, "pg_execute_server_program"),
        (12, "permission denied for function lo_import"),
        (13, "permission denied to create extension"),
        (14, "permission denied to copy database"),
    ] {
        assert!(report[index].contains(reason), "{index}: {report:?}");
    }
}

/// An account like the one shipped before deploy/postgres/least-privilege.sql
/// (LOGIN CREATEDB CREATEROLE): below PostgreSQL 16 one GRANT away from the
/// server's programs, so the probe warns about it.
#[tokio::test]
async fn postgres_probe_warns_about_createrole_before_16() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let role = format!("wbt_role_{}", unique_id("").replace('-', "_"));
    let mut admin = postgres_admin().await;
    admin
        .execute(
            format!("CREATE ROLE {role} LOGIN PASSWORD 'wbt' CREATEDB CREATEROLE NOSUPERUSER")
                .as_str(),
        )
        .await
        .expect("a CREATEROLE account");
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&mut admin)
        .await
        .expect("server version");
    let connections = format!(
        "[connections.pg]\nkind = \"postgres\"\nurl = \"postgres://{role}:wbt@127.0.0.1:5432/postgres\"\n"
    );
    let broker = abuse_broker(&connections, "admin = \"pg\"").await;
    let plugin = GRANT_ABUSE.plugin().1;
    let (_, check) = broker.cli(&["plugins", "check", &plugin.to_string_lossy()]);
    // Its pool's sessions end with it, before the role goes.
    drop(broker);
    admin
        .execute(format!("DROP ROLE IF EXISTS {role}").as_str())
        .await
        .expect("drop the role");
    let warned = check.lines().any(|line| {
        line.contains("OVER-PRIVILEGED GRANT: plugin grant_abuse, connection pg")
            && line.contains("CREATEROLE")
    });
    assert_eq!(warned, version < 160_000, "{check}");
}

/// A grant whose policy lets the server-administration commands through:
/// the host's default policy refuses them itself (tests/e2e/policy.rs), and
/// here the account's own rights are under test, as if the operator had
/// listed them.
const UNFILTERED_REDIS_GRANT: &str = r#"admin = { connection = "redis", commands = ["CONFIG", "ACL", "FLUSHALL", "FLUSHDB", "SHUTDOWN", "DEBUG", "MONITOR", "MODULE", "SAVE", "REPLICAOF", "EVAL", "KEYS"] }"#;

#[tokio::test]
async fn redis_config_flush_and_shutdown_are_refused() {
    if !service_available("Redis", "127.0.0.1:6379") {
        return;
    }
    // The default user: CONFIG GET answers the password setting, and it may
    // FLUSHALL and SHUTDOWN (asked with ACL DRYRUN, never run).
    let root = abuse_broker(ADMIN_CONNECTIONS, UNFILTERED_REDIS_GRANT).await;
    let report = attack(
        &root,
        &[
            redis(&["CONFIG", "GET", "requirepass"]),
            redis(&["ACL", "DRYRUN", "default", "FLUSHALL"]),
            redis(&["ACL", "DRYRUN", "default", "SHUTDOWN"]),
        ],
    )
    .await;
    assert_eq!(report[0], "OK: 2 items", "{report:?}");
    assert_eq!(report[1..], ["OK: OK", "OK: OK"], "{report:?}");

    // Before sending them for real through the shipped account, make sure
    // it cannot run them: a wrong role must not flush or stop the Redis
    // every other test uses.
    let mut direct = redis::Client::open("redis://127.0.0.1:6379")
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection to Redis");
    let destructive: [&[&str]; 12] = [
        &["CONFIG", "GET", "requirepass"],
        &["CONFIG", "SET", "requirepass", "hijacked"],
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["SHUTDOWN", "NOSAVE"],
        &["DEBUG", "SLEEP", "0"],
        &["MONITOR"],
        &["MODULE", "LIST"],
        &["SAVE"],
        &["REPLICAOF", "NO", "ONE"],
        &["EVAL", "return 1", "0"],
        &["KEYS", "*"],
    ];
    for command in destructive {
        let answer: String = redis::cmd("ACL")
            .arg("DRYRUN")
            .arg(REDIS_ROLE)
            .arg(command)
            .query_async(&mut direct)
            .await
            .expect("ACL DRYRUN");
        assert_ne!(
            answer, "OK",
            "{REDIS_ROLE} may run {command:?}: fix tests/services/roles.sh"
        );
    }
    let shipped = abuse_broker(CONNECTIONS, UNFILTERED_REDIS_GRANT).await;
    let calls: Vec<Value> = destructive.iter().map(|command| redis(command)).collect();
    let report = attack(&shipped, &calls).await;
    assert_refused(&report, &calls, "requirepass", "the shipped Redis user");
    // DEBUG is off on this server before the ACL is asked (its DRYRUN
    // above shows the ACL refuses it too).
    for line in &report {
        assert!(
            line.contains("NOPERM") || line.contains("DEBUG command not allowed"),
            "refused by the ACL: {report:?}"
        );
    }
}

/// `plugins check` and the startup log warn about a grant of an
/// administrator, naming plugin and connection, and not about the shipped
/// accounts.
#[tokio::test]
async fn the_probe_warns_about_administrators_only() {
    if !service_available("MariaDB", "127.0.0.1:3306")
        || !service_available("PostgreSQL", "127.0.0.1:5432")
        || !service_available("Redis", "127.0.0.1:6379")
    {
        return;
    }
    let grants = "admin = \"mariadb\"\npg = \"postgres\"\ncache = \"redis\"";
    let plugin = GRANT_ABUSE.plugin().1;
    let plugin = plugin.to_string_lossy();

    let root = abuse_broker(ADMIN_CONNECTIONS, grants).await;
    let (ok, check) = root.cli(&["plugins", "check", &plugin]);
    assert!(ok, "a warning does not refuse the plugin: {check}");
    for (connection, what) in [
        ("mariadb (alias admin)", "ALL PRIVILEGES"),
        ("postgres (alias pg)", "superuser"),
        ("redis (alias cache)", "CONFIG"),
    ] {
        let needle = format!("OVER-PRIVILEGED GRANT: plugin grant_abuse, connection {connection}");
        let line = check
            .lines()
            .find(|line| line.contains(&needle))
            .unwrap_or_else(|| panic!("no warning about {connection}: {check}"));
        assert!(line.contains(what), "{line}");
    }
    assert!(
        !check.contains("mysql://") && !check.contains("redis://"),
        "{check}"
    );
    wait_for_log(
        &root,
        &["OVER-PRIVILEGED GRANT: plugin grant_abuse, connection mariadb"],
        Duration::from_secs(60),
    )
    .await;

    let shipped = abuse_broker(CONNECTIONS, grants).await;
    let (ok, check) = shipped.cli(&["plugins", "check", &plugin]);
    assert!(ok, "{check}");
    assert!(!check.contains("OVER-PRIVILEGED"), "{check}");
    assert!(
        !check.contains("could not check"),
        "every account was checked: {check}"
    );
    // The residual rights are said, not warned about.
    assert!(
        check.contains("note: plugin grant_abuse, connection mariadb"),
        "{check}"
    );
    // The log: the probe ran (it notes the account's procedures) and warned
    // about nothing.
    wait_for_log(
        &shipped,
        &["through the wasm_broker procedures"],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        !shipped.logs().contains("OVER-PRIVILEGED"),
        "{}",
        shipped.logs()
    );

    // broker.toml changed to grant the administrators: warned about live.
    let config = std::fs::read_to_string(shipped.config_path()).expect("read broker.toml");
    assert!(
        config.contains(CONNECTIONS),
        "the harness wrote the shipped connections"
    );
    let temporary = shipped.dir.path().join("broker.toml.new");
    std::fs::write(&temporary, config.replace(CONNECTIONS, ADMIN_CONNECTIONS))
        .expect("write the new broker.toml");
    std::fs::rename(&temporary, shipped.config_path()).expect("rename it over broker.toml");
    wait_for_log(
        &shipped,
        &["OVER-PRIVILEGED GRANT: plugin grant_abuse, connection redis (alias cache)"],
        Duration::from_secs(60),
    )
    .await;
}
