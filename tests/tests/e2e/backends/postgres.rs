//! The postgres plugin end to end: the real broker, the real plugin, a real
//! PostgreSQL; what the credentials it hands out can and cannot do. The
//! lifecycle every plugin shares runs here through [`Postgres`]; the plan
//! parameters, plan changes and binding lifetimes (a role's VALID UNTIL)
//! are this plugin's own.

use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use wasm_broker_tests::{
    BrokerSetup, TestBroker, bind_body, bind_refused_lifetimes, binding_metadata, binding_path,
    credential, credentials, derived_name, instance_path, postgres_admin, service_available,
    unique_id,
};

use super::{Backend, Credentials};

async fn connect(uri: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(uri).await
}

async fn postgres_broker() -> TestBroker {
    TestBroker::start(BrokerSetup::shipped(&["postgres"])).await
}

#[track_caller]
fn assert_refused(
    result: Result<impl std::fmt::Debug, sqlx::Error>,
    what: &str,
    expected: &[&str],
) {
    match result {
        Ok(value) => panic!("{what} should have been refused, got {value:?}"),
        Err(error) => {
            let text = error.to_string();
            assert!(
                expected.iter().any(|e| text.contains(e)),
                "{what}: expected one of {expected:?}, got {text}"
            );
        }
    }
}

async fn database_exists(name: &str) -> bool {
    let mut admin = postgres_admin().await;
    sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut admin)
        .await
        .expect("pg_database")
        .is_some()
}

async fn role_exists(name: &str) -> bool {
    let mut admin = postgres_admin().await;
    sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(name)
        .fetch_optional(&mut admin)
        .await
        .expect("pg_roles")
        .is_some()
}

async fn connection_limit(database: &str) -> i32 {
    let mut admin = postgres_admin().await;
    let (limit,): (i32,) =
        sqlx::query_as("SELECT datconnlimit FROM pg_database WHERE datname = $1")
            .bind(database)
            .fetch_one(&mut admin)
            .await
            .expect("the database exists");
    limit
}

/// `uri` with its database replaced by `database`.
fn uri_for_database(uri: &str, database: &str) -> String {
    let (base, _) = uri.rsplit_once('/').expect("a uri with a path");
    format!("{base}/{database}")
}

/// The postgres plugin: a database (and its owner role) per instance, a
/// role per binding.
struct Postgres;

impl Backend for Postgres {
    const PLUGIN: &'static str = "postgres";
    const ID_PREFIX: &'static str = "pg";
    const CREDENTIAL_FIELDS: &'static [&'static str] =
        &["uri", "jdbcUrl", "hostname", "name", "username", "password"];
    const PORT: u16 = 5432;
    const URI_SCHEMES: &'static [&'static str] = &["postgresql://", "postgres://"];
    const RESOURCE: &'static str = "name";
    const ROTATABLE: bool = true;
    type Session = PgConnection;

    fn available() -> bool {
        service_available("PostgreSQL", "127.0.0.1:5432")
    }

    fn provision_parameters() -> Option<Value> {
        Some(json!({"connection_limit": 5}))
    }

    async fn check_binding(bound: &Value) {
        let creds = credentials(bound);
        assert!(
            credential(creds, "jdbcUrl").starts_with("jdbc:postgresql://"),
            "{creds:?}"
        );
        assert_eq!(
            connection_limit(credential(creds, "name")).await,
            5,
            "the connection_limit parameter"
        );
    }

    /// A table, a row, read back.
    async fn use_credentials(creds: &Credentials) -> PgConnection {
        let mut app = connect(credential(creds, "uri"))
            .await
            .expect("the binding's uri logs in");
        sqlx::query("CREATE TABLE notes (id INT PRIMARY KEY, body TEXT)")
            .execute(&mut app)
            .await
            .expect("create table");
        sqlx::query("INSERT INTO notes VALUES (1, 'hello from the e2e test')")
            .execute(&mut app)
            .await
            .expect("insert");
        let (text,): (String,) = sqlx::query_as("SELECT body FROM notes WHERE id = 1")
            .fetch_one(&mut app)
            .await
            .expect("select");
        assert_eq!(text, "hello from the e2e test");
        app
    }

    /// Beyond its database a binding's role reaches nothing the isolation
    /// checks do not cover.
    async fn check_confined(_session: &mut PgConnection, _creds: &Credentials) {}

    async fn check_isolated(a: &Credentials, b: &Credentials) {
        let database = credential(a, "name");
        let uri_b = credential(b, "uri");
        assert_refused(
            connect(&uri_for_database(uri_b, database))
                .await
                .map(|_| ()),
            "B connecting to A's database",
            &["permission denied"],
        );
        let mut app_b = connect(uri_b).await.expect("B's uri logs in");
        assert_refused(
            sqlx::query(&format!("SET ROLE \"{database}_owner\""))
                .execute(&mut app_b)
                .await,
            "B taking A's owner role",
            &["permission denied"],
        );
    }

    async fn user_exists(creds: &Credentials) -> bool {
        role_exists(credential(creds, "username")).await
    }

    async fn assert_login_refused(creds: &Credentials, what: &str) {
        assert_refused(
            connect(credential(creds, "uri")).await.map(|_| ()),
            what,
            &["does not exist", "not permitted"],
        );
    }

    async fn assert_session_ended(mut session: PgConnection) {
        assert!(
            sqlx::query("SELECT 1").execute(&mut session).await.is_err(),
            "a session outlived the unbind"
        );
    }

    /// The database, or its owner role: deprovision deletes both.
    async fn resource_exists(creds: &Credentials) -> bool {
        let database = credential(creds, "name");
        database_exists(database).await || role_exists(&format!("{database}_owner")).await
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

    /// Reads the predecessor's row and writes one.
    async fn check_data(creds: &Credentials) {
        let mut app = connect(credential(creds, "uri"))
            .await
            .expect("credentials of a binding not unbound log in");
        let (value,): (i32,) = sqlx::query_as("SELECT v FROM rotated ORDER BY v LIMIT 1")
            .fetch_one(&mut app)
            .await
            .expect("select");
        assert_eq!(value, 42, "the binding sees the predecessor's table");
        sqlx::query("INSERT INTO rotated VALUES (43)")
            .execute(&mut app)
            .await
            .expect("the binding writes");
    }
}

shared_suite!(Postgres);

/// A plan change (plans are plan_updateable) moves the database to the
/// large plan's connection limit; the instance then goes, with its binding
/// still there, under the large plan's ids.
#[tokio::test]
async fn plan_change_moves_the_connection_limit() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let broker = postgres_broker().await;
    let plan = broker.plan("postgres", "small").await;
    let large = broker.plan("postgres", "large").await;
    let instance = unique_id("pg-plan");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let binding = unique_id("pg-plan-binding");
    let (status, bound) = broker.bind(&instance, &binding, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    let database = credential(credentials(&bound), "name").to_owned();
    let role = credential(credentials(&bound), "username").to_owned();

    assert_eq!(connection_limit(&database).await, 20);
    let (status, body) = broker
        .update(
            &instance,
            &json!({"service_id": plan.service_id, "plan_id": large.plan_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(connection_limit(&database).await, 100);
    let (status, fetched) = broker.get(&instance_path(&instance)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["plan_id"], large.plan_id.as_str(), "{fetched}");

    let (status, body) = broker.deprovision(&instance, &large).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(!database_exists(&database).await);
    assert!(
        !role_exists(&role).await,
        "deprovision left the role of a binding never unbound: {role}"
    );
}

#[tokio::test]
async fn parameters_are_checked_against_the_plan() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let broker = postgres_broker().await;
    let plan = broker.plan("postgres", "small").await;
    let instance = unique_id("pg-params");
    let (status, body) = broker
        .provision(&instance, &plan, Some(json!({"connection_limit": 21})))
        .await;
    assert_eq!(status, 400, "above the small plan's maximum: {body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap_or_default()
            .contains("connection_limit"),
        "{body}"
    );
    let (status, body) = broker
        .provision(&instance, &plan, Some(json!({"extensions": ["pgcrypto"]})))
        .await;
    assert_eq!(status, 400, "an unknown parameter: {body}");
    let (status, _) = broker.get(&instance_path(&instance)).await;
    assert_eq!(status, 404);
}

/// The server's clock in whole seconds since the epoch, rounded down
/// (`floor`) or up (`ceil`).
async fn server_seconds(rounding: &str) -> i64 {
    let mut admin = postgres_admin().await;
    let (seconds,): (i64,) = sqlx::query_as(&format!(
        "SELECT {rounding}(extract(epoch FROM clock_timestamp()))::bigint"
    ))
    .fetch_one(&mut admin)
    .await
    .expect("the server's clock");
    seconds
}

/// What PostgreSQL makes of a binding's metadata and its role: the role's
/// `VALID UNTIL` equals `expires_at` (seconds since the epoch), and the
/// seconds from `renew_before` to `expires_at`.
async fn role_expiry(role: &str, expires_at: &str, renew_before: &str) -> (i64, bool, i64) {
    let mut admin = postgres_admin().await;
    let (valid_until, matches, renewal_margin): (Option<i64>, Option<bool>, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM rolvaliduntil)::bigint, rolvaliduntil = $2::timestamptz, \
         extract(epoch FROM $2::timestamptz - $3::timestamptz)::bigint \
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .bind(expires_at)
    .bind(renew_before)
    .fetch_one(&mut admin)
    .await
    .expect("the binding's role exists");
    (
        valid_until.unwrap_or_else(|| panic!("role {role} has no VALID UNTIL")),
        matches.unwrap_or(false),
        renewal_margin,
    )
}

const DAY: i64 = 86_400;

#[tokio::test]
async fn binding_lifetime_is_the_roles_valid_until() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let broker = postgres_broker().await;
    let plan = broker.plan("postgres", "small").await;
    let instance = unique_id("pg-expiry");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");

    // Without a lifetime: no metadata, no VALID UNTIL.
    let forever = unique_id("pg-expiry-forever");
    let (status, bound) = broker.bind(&instance, &forever, &plan, None).await;
    assert_eq!(status, 201, "{bound}");
    assert!(bound.get("metadata").is_none(), "{bound}");
    let role = credential(credentials(&bound), "username").to_owned();
    let mut admin = postgres_admin().await;
    let (valid_until,): (Option<String>,) =
        sqlx::query_as("SELECT rolvaliduntil::text FROM pg_roles WHERE rolname = $1")
            .bind(&role)
            .fetch_one(&mut admin)
            .await
            .expect("the role exists");
    assert_eq!(valid_until, None, "a binding without a lifetime expires");

    // With one: the role is valid until `expires_at`, which is the lifetime
    // after the moment of the bind by the server's clock.
    let expiring = unique_id("pg-expiry-30");
    let before = server_seconds("floor").await;
    let (status, bound) = broker
        .bind(
            &instance,
            &expiring,
            &plan,
            Some(json!({"expires_in_days": 30})),
        )
        .await;
    let after = server_seconds("ceil").await;
    assert_eq!(status, 201, "{bound}");
    let (expires_at, renew_before) = binding_metadata(&bound);
    assert!(renew_before < expires_at, "{bound}");
    let role = credential(credentials(&bound), "username").to_owned();
    let (valid_until, matches, renewal_margin) =
        role_expiry(&role, &expires_at, &renew_before).await;
    assert!(matches, "VALID UNTIL of {role} is not {expires_at}");
    assert!(
        (before + 30 * DAY..=after + 30 * DAY).contains(&valid_until),
        "VALID UNTIL {valid_until} is not 30 days after the bind ({before}..{after})"
    );
    assert_eq!(
        renewal_margin,
        6 * DAY,
        "renew a fifth of the lifetime early"
    );
    let uri = credential(credentials(&bound), "uri").to_owned();
    connect(&uri)
        .await
        .expect("credentials log in before they expire");

    // The platform sees the same metadata again: on an identical re-bind and
    // when it fetches the binding.
    let (status, again) = broker
        .bind(
            &instance,
            &expiring,
            &plan,
            Some(json!({"expires_in_days": 30})),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["metadata"], bound["metadata"]);
    let (status, fetched) = broker.get(&binding_path(&instance, &expiring)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["metadata"], bound["metadata"]);

    // A lifetime that is over before it starts, or not a number of days, is
    // the platform user's mistake, and nothing is created.
    for refused in bind_refused_lifetimes(&broker, &instance, &plan, "pg-expiry-refused").await {
        let role = derived_name("u_", &refused, 63);
        assert!(!role_exists(&role).await, "{refused} created {role}");
    }

    broker
        .unbind_all_and_deprovision(&instance, &[&forever, &expiring], &plan)
        .await;
}

#[tokio::test]
async fn rotation_gives_the_successor_a_lifetime_of_its_own() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let broker = postgres_broker().await;
    let plan = broker.plan("postgres", "small").await;
    let instance = unique_id("pg-expiry-rotate");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    let old = unique_id("pg-expiry-old");
    let (status, old_bound) = broker
        .bind(&instance, &old, &plan, Some(json!({"expires_in_days": 1})))
        .await;
    assert_eq!(status, 201, "{old_bound}");
    let (old_expires_at, _) = binding_metadata(&old_bound);

    let new = unique_id("pg-expiry-new");
    let mut rotation = bind_body(&plan, Some(json!({"expires_in_days": 7})));
    rotation["predecessor_binding_id"] = json!(old);
    let before = server_seconds("floor").await;
    let (status, new_bound) = broker.put_binding(&instance, &new, &rotation).await;
    let after = server_seconds("ceil").await;
    assert_eq!(status, 201, "{new_bound}");
    let (expires_at, renew_before) = binding_metadata(&new_bound);
    assert_ne!(expires_at, old_expires_at);
    let new_role = credential(credentials(&new_bound), "username").to_owned();
    let (valid_until, matches, renewal_margin) =
        role_expiry(&new_role, &expires_at, &renew_before).await;
    assert!(matches, "VALID UNTIL of {new_role} is not {expires_at}");
    assert!(
        (before + 7 * DAY..=after + 7 * DAY).contains(&valid_until),
        "the successor's lifetime starts at the rotation ({before}..{after}), got {valid_until}"
    );
    assert_eq!(renewal_margin, 7 * DAY / 5);

    // The predecessor keeps its own lifetime and keeps working until unbound.
    let old_role = credential(credentials(&old_bound), "username").to_owned();
    let (status, fetched) = broker.get(&binding_path(&instance, &old)).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["metadata"], old_bound["metadata"]);
    let (_, old_matches, _) = role_expiry(&old_role, &old_expires_at, &old_expires_at).await;
    assert!(
        old_matches,
        "the rotation changed the predecessor's VALID UNTIL"
    );
    let old_uri = credential(credentials(&old_bound), "uri").to_owned();
    let new_uri = credential(credentials(&new_bound), "uri").to_owned();
    connect(&old_uri)
        .await
        .expect("the predecessor works during the rotation");
    connect(&new_uri).await.expect("the successor works");
    let (status, body) = broker.unbind(&instance, &old, &plan).await;
    assert_eq!((status, body), (200, json!({})));
    assert!(!role_exists(&old_role).await, "unbind left {old_role}");
    connect(&new_uri)
        .await
        .expect("the successor outlives its predecessor");

    // A rotation that does not resend the parameters keeps the lifetime's
    // length (the broker carries the predecessor's parameters over) and
    // starts it anew.
    let newest = unique_id("pg-expiry-newest");
    let mut rotation = bind_body(&plan, None);
    rotation["predecessor_binding_id"] = json!(new);
    let before = server_seconds("floor").await;
    let (status, newest_bound) = broker.put_binding(&instance, &newest, &rotation).await;
    let after = server_seconds("ceil").await;
    assert_eq!(status, 201, "{newest_bound}");
    let (expires_at, renew_before) = binding_metadata(&newest_bound);
    let newest_role = credential(credentials(&newest_bound), "username").to_owned();
    let (valid_until, matches, _) = role_expiry(&newest_role, &expires_at, &renew_before).await;
    assert!(matches, "VALID UNTIL of {newest_role} is not {expires_at}");
    assert!(
        (before + 7 * DAY..=after + 7 * DAY).contains(&valid_until),
        "the inherited 7 days start at this rotation ({before}..{after}), got {valid_until}"
    );

    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!((status, body), (200, json!({})));
}

#[tokio::test]
async fn operator_default_lifetime_applies_unless_the_binding_asks() {
    if !service_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let mut setup = BrokerSetup::shipped(&["postgres"]);
    setup
        .extra_config
        .push_str("\n[plugins.postgres.config]\nbinding_expires_in_days = 2\n");
    let broker = TestBroker::start(setup).await;
    let plan = broker.plan("postgres", "small").await;
    let instance = unique_id("pg-expiry-default");
    let (status, body) = broker.provision(&instance, &plan, None).await;
    assert_eq!(status, 201, "{body}");
    for (parameters, days) in [(None, 2), (Some(json!({"expires_in_days": 5})), 5)] {
        let binding = unique_id("pg-expiry-default");
        let before = server_seconds("floor").await;
        let (status, bound) = broker
            .bind(&instance, &binding, &plan, parameters.clone())
            .await;
        let after = server_seconds("ceil").await;
        assert_eq!(status, 201, "{bound}");
        let (expires_at, renew_before) = binding_metadata(&bound);
        let role = credential(credentials(&bound), "username").to_owned();
        let (valid_until, matches, _) = role_expiry(&role, &expires_at, &renew_before).await;
        assert!(matches, "{parameters:?}: VALID UNTIL is not {expires_at}");
        assert!(
            (before + days * DAY..=after + days * DAY).contains(&valid_until),
            "{parameters:?}: expected {days} days from {before}..{after}, got {valid_until}"
        );
    }
    let (status, body) = broker.deprovision(&instance, &plan).await;
    assert_eq!((status, body), (200, json!({})));
}
