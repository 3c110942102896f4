//! PostgreSQL: a database and its owner role per instance, a login role per
//! binding, reached through the connection the operator maps to the alias
//! `admin` (`[plugins.postgres.connections] admin = "<connection>"`).
//!
//! The admin connection is fixed to one database (the DSN's), and PostgreSQL
//! runs most object-level statements only in the database a session is
//! connected to. So this plugin does everything with cluster-level
//! statements (roles, `CREATE/ALTER/DROP DATABASE`) and arranges ownership so
//! that nothing ever has to be cleaned up inside the instance's database:
//!
//! - the database is owned by a `NOLOGIN` role `<db>_owner`;
//! - each binding's login role is a member of the owner role, and the
//!   database has `ALTER DATABASE ... SET role = '<db>_owner'`, so sessions
//!   act as the owner and everything they create is owned by the owner role
//!   (a setting on the database, not on the login role: `role` cannot be
//!   set from a SECURITY DEFINER function, see [`Roles`]; a superuser who
//!   connects to the database starts as the owner too, until `SET ROLE
//!   NONE`);
//! - `DROP DATABASE` then removes all objects at once, and a binding role owns
//!   nothing and can be dropped from the admin database (`REASSIGN OWNED` /
//!   `DROP OWNED` would have to run inside the instance's database).
//!
//! An application that deliberately runs `SET ROLE <its own role>` can still
//! create objects it owns itself; its unbind then revokes the login and the
//! role is dropped with the instance (see [`Postgres::unbind`]).
//!
//! No `extensions` parameter: `CREATE EXTENSION` must run inside the new
//! database, which the admin connection cannot reach. The extensions people
//! usually ask for (pgcrypto, citext, hstore, uuid-ossp ...) are "trusted"
//! since PostgreSQL 13, so a binding, acting as the database owner, creates
//! them itself with `CREATE EXTENSION`.
//!
//! A binding may ask for credentials that expire (`expires_in_days`, or the
//! operator's `binding_expires_in_days` setting): its login role gets
//! `VALID UNTIL`, after which PostgreSQL refuses the role's password. That
//! instant is computed from the server's clock and handed to the platform as
//! the binding's `expires_at` (see [`wasm_broker_sdk::expiry`]). `VALID
//! UNTIL` applies to password authentication only: a `pg_hba.conf` line
//! that trusts the client lets the role in regardless.
//!
//! Roles are made through the functions of deploy/postgres/least-privilege.sql
//! when the server has them (the shipped account: `CREATEDB`, no
//! `CREATEROLE`), by the plugin's own statements otherwise (a superuser, or
//! `CREATEDB` + `CREATEROLE` on PostgreSQL 16 and later); see [`Roles`].

use serde::Deserialize;
use serde_json::json;
use wasm_broker_sdk::expiry::{Expiry, Lifetime};
use wasm_broker_sdk::log;
use wasm_broker_sdk::prelude::*;
use wasm_broker_sdk::sql::{self, Dialect, Value};

#[cfg(test)]
mod flow_tests;
mod roles;
use roles::Roles;

const ADMIN: &str = "admin";
const VERSION: &str = env!("CARGO_PKG_VERSION");

const SERVICE_ID: &str = "2d9cd9b7-db8d-4e1c-a16a-e1460a2ea800";

/// What a plan decides: how many connections the database accepts.
struct Plan {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    max_connections: u32,
}

const PLANS: [Plan; 2] = [
    Plan {
        id: "b1aea2fb-82dd-4b4f-8b68-9de4a720065e",
        name: "small",
        description: "A database accepting up to 20 connections.",
        max_connections: 20,
    },
    Plan {
        id: "dc6086dc-5292-43b2-9281-58685c237ade",
        name: "large",
        description: "A database accepting up to 100 connections.",
        max_connections: 100,
    },
];

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Parameters {
    /// Lower than the plan's maximum, for applications that must not
    /// exhaust the server.
    connection_limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BindingParameters {
    /// Signed, so that a negative lifetime is refused with the range rather
    /// than with serde's type error.
    expires_in_days: Option<i64>,
}

struct Postgres;

impl ServicePlugin for Postgres {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "postgres",
            VERSION,
            "PostgreSQL: a database per instance, a login role per binding",
        )
    }

    fn catalog() -> Catalog {
        let plans = PLANS
            .iter()
            .map(|plan| {
                let schema = parameters_schema(json!({
                    "connection_limit": {
                        "description": "Connections the database accepts at most (default: the plan's maximum).",
                        "type": "integer",
                        "minimum": 1,
                        "maximum": plan.max_connections,
                    },
                }));
                ServicePlan::new(plan.id, plan.name, plan.description)
                    .maintenance_version(VERSION, "wasm-broker postgres plugin build")
                    .binding_rotatable()
                    .instance_schemas(schema.clone(), Some(schema))
                    .binding_schema(parameters_schema(json!({
                        wasm_broker_sdk::expiry::PARAMETER: Lifetime::schema_property(),
                    })))
            })
            .collect();
        Catalog::new(vec![
            ServiceOffering::new(SERVICE_ID, "postgres", "PostgreSQL database", plans)
                .tags(&["postgresql", "postgres", "relational"])
                .metadata(json!({"displayName": "PostgreSQL"}))
                .plan_updateable(true),
        ])
    }

    fn provision(instance: &Instance, _info: &RequestInfo) -> Result<InstanceOutcome, BrokerError> {
        let limit = connection_limit(plan(&instance.plan_id)?, &instance.parameters()?)?;
        admin_server()?;
        let names = Names::of(instance);
        let roles = Roles::of_server()?;
        // PostgreSQL has no CREATE ROLE/DATABASE IF NOT EXISTS; looking first
        // lets a retry after a failed provision carry on.
        roles.create_owner(&names.owner)?;
        roles.act_as_owner(&names.owner)?;
        if !exists(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &names.database,
        )? {
            sql::execute(
                ADMIN,
                &format!(
                    "CREATE DATABASE {} OWNER {} CONNECTION LIMIT {limit}",
                    quote_pg_ident(&names.database),
                    quote_pg_ident(&names.owner)
                ),
            )?;
        }
        // PUBLIC may connect to every new database by default: keep other
        // instances' bindings out. Members of the owner role connect through
        // the owner's privileges.
        sql::execute(
            ADMIN,
            &format!(
                "REVOKE ALL ON DATABASE {} FROM PUBLIC",
                quote_pg_ident(&names.database)
            ),
        )?;
        log::info!(
            "created database {} owned by {}",
            names.database,
            names.owner
        );
        Ok(InstanceOutcome::done())
    }

    /// A plan change or a new `connection_limit` is one `ALTER DATABASE`.
    fn update(
        instance: &Instance,
        changes: &InstanceChanges,
        _info: &RequestInfo,
    ) -> Result<InstanceOutcome, BrokerError> {
        if changes.touches_only_metadata()? {
            return Ok(InstanceOutcome::done());
        }
        let plan = plan(changes.plan_id.as_deref().unwrap_or(&instance.plan_id))?;
        let parameters: Parameters = changes.merged_parameters(instance)?;
        let limit = connection_limit(plan, &parameters).map_err(|error| {
            BrokerError::Unprocessable(format!(
                "{}; lower connection_limit in the same update",
                error.description()
            ))
        })?;
        let names = Names::of(instance);
        Roles::of_server()?.act_as_owner(&names.owner)?;
        let database = names.database;
        sql::execute(
            ADMIN,
            &format!(
                "ALTER DATABASE {} CONNECTION LIMIT {limit}",
                quote_pg_ident(&database)
            ),
        )?;
        Ok(InstanceOutcome::done())
    }

    fn deprovision(
        instance: &Instance,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let names = Names::of(instance);
        let roles = Roles::of_server()?;
        // A provision cut short by its deadline (orphan mitigation sends
        // this delete right after) may have left its CREATE DATABASE running:
        // the host closed the connection, but the server finishes the
        // statement, and the database would appear after the DROP below and
        // keep the owner role from being dropped. End it first, waiting (at
        // most 5 s) until it is rolled back. Only this instance's statement,
        // of the admin account's own sessions.
        sql::query(
            ADMIN,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE usename = current_user AND pid <> pg_backend_pid() \
               AND query LIKE 'CREATE DATABASE %' AND strpos(query, $1) > 0",
            &[Value::from(names.database.as_str())],
        )?;
        if role_exists(&names.owner)? {
            roles.act_as_owner(&names.owner)?;
        }
        // WITH (FORCE) (PostgreSQL 13+) ends the database's sessions first.
        sql::execute(
            ADMIN,
            &format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_pg_ident(&names.database)
            ),
        )?;
        // Binding roles still here are those whose unbind could not drop them
        // (they owned objects in the database just dropped), or those of
        // bindings the platform never deleted: only roles named like a
        // binding's (`role_name`), never the admin account (a member too,
        // see `Roles::act_as_owner`) or a role an operator granted the owner
        // to; dropping the owner ends their membership.
        let members = sql::query(
            ADMIN,
            "SELECT member.rolname FROM pg_auth_members m \
             JOIN pg_roles member ON member.oid = m.member \
             JOIN pg_roles owner ON owner.oid = m.roleid \
             WHERE owner.rolname = $1 AND member.rolname <> current_user \
               AND member.rolname ~ '^u_[0-9a-f]{16}$'",
            &[Value::from(names.owner.as_str())],
        )?;
        for member in members.first_column().filter_map(Value::as_str) {
            roles.drop_role(member)?;
        }
        roles.drop_role(&names.owner)?;
        log::info!(
            "dropped database {} and role {}",
            names.database,
            names.owner
        );
        Ok(DeletionOutcome::Done)
    }

    /// A login role acting as the database owner, valid until the
    /// binding's lifetime ends if it has one. A rotation is an ordinary
    /// bind: the new binding id gives a new role with a lifetime of its own,
    /// and the predecessor's stays valid until it is unbound or expires.
    fn bind(
        instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<BindOutcome, BrokerError> {
        let parameters: BindingParameters = binding.parameters()?;
        let lifetime = Lifetime::for_binding(parameters.expires_in_days)?;
        let server = admin_server()?;
        let names = Names::of(instance);
        let role = role_name(binding);
        let expiry = lifetime
            .map(|lifetime| Expiry::starting_at(server_clock()?, lifetime))
            .transpose()?;
        let roles = Roles::of_server()?;
        let password = password(24)?;
        // Sessions start as the owner (RESET ROLE returns to it too), so what
        // the application creates belongs to the owner, not to its login
        // role. Set here rather than at provision so instances provisioned
        // before it was the way get it too.
        roles.act_as_owner(&names.owner)?;
        sql::execute(
            ADMIN,
            &format!(
                "ALTER DATABASE {} SET role = {}",
                quote_pg_ident(&names.database),
                quote_sql_string(Dialect::Postgres, &names.owner)
            ),
        )?;
        // Left by a failed attempt at this bind, never handed out: start over.
        roles.drop_role(&role)?;
        roles
            .create_login(
                &role,
                &password,
                expiry.as_ref().map(Expiry::expires_at),
                &names.owner,
            )
            .map_err(|error| error.redact(&password))?;
        match &expiry {
            Some(expiry) => log::info!(
                "created role {role} in {}, valid until {}",
                names.owner,
                expiry.expires_at()
            ),
            None => log::info!("created role {role} in {}", names.owner),
        }
        Ok(Credentials::new("postgresql", &server.host, server.port)
            .login(&role, &password)
            .database(&names.database)
            .jdbc("postgresql")
            .into_bind_outcome()
            .expiring(expiry.as_ref()))
    }

    /// Revokes the login first, then ends the role's sessions, then drops
    /// the role. The drop fails only if the application created objects as
    /// this role itself (`SET ROLE`); the credentials are revoked all the
    /// same, and deprovision drops the role after the database.
    fn unbind(
        _instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let role = role_name(binding);
        if !role_exists(&role)? {
            return Ok(DeletionOutcome::Done);
        }
        let roles = Roles::of_server()?;
        roles.disable_login(&role)?;
        sql::query(
            ADMIN,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[Value::from(role.as_str())],
        )?;
        match roles.drop_role(&role) {
            Ok(_) => log::info!("dropped role {role}"),
            Err(error) => log::warn!(
                "role {role} can no longer log in but stays until the instance is deleted: {}",
                error.description()
            ),
        }
        Ok(DeletionOutcome::Done)
    }
}

wasm_broker_sdk::export_plugin!(Postgres);

struct Names {
    database: String,
    owner: String,
}

impl Names {
    fn of(instance: &Instance) -> Self {
        // 63 bytes is PostgreSQL's identifier limit; the owner adds 6.
        let database = derive_name("db_", &instance.id, 57);
        Self {
            owner: format!("{database}_owner"),
            database,
        }
    }
}

fn role_name(binding: &Binding) -> String {
    derive_name("u_", &binding.id, 63)
}

fn plan(plan_id: &str) -> Result<&'static Plan, BrokerError> {
    PLANS
        .iter()
        .find(|plan| plan.id == plan_id)
        .ok_or_else(|| BrokerError::BadRequest(format!("plan {plan_id} is not a postgres plan")))
}

fn connection_limit(plan: &Plan, parameters: &Parameters) -> Result<u32, BrokerError> {
    match parameters.connection_limit {
        None => Ok(plan.max_connections),
        Some(limit) if (1..=plan.max_connections).contains(&limit) => Ok(limit),
        Some(limit) => Err(BrokerError::BadRequest(format!(
            "parameters.connection_limit: {limit} is not between 1 and plan {}'s maximum {}",
            plan.name, plan.max_connections
        ))),
    }
}

/// The server behind `admin`, checked to be PostgreSQL so a wrong grant in
/// broker.toml fails with a clear message rather than a syntax error.
fn admin_server() -> Result<sql::ServerInfo, BrokerError> {
    let server = sql::server_info(ADMIN)?;
    if server.dialect != Dialect::Postgres {
        return Err(BrokerError::Internal(
            "the connection mapped to `admin` for the postgres plugin is not a PostgreSQL connection".to_owned(),
        ));
    }
    Ok(server)
}

/// The server's clock in whole seconds since the epoch: `VALID UNTIL` is
/// checked against it, so the binding's lifetime starts by it.
fn server_clock() -> Result<i64, BrokerError> {
    sql::execute(
        ADMIN,
        "SELECT floor(extract(epoch FROM statement_timestamp()))::bigint",
    )?
    .first_column()
    .next()
    .and_then(Value::as_i64)
    .ok_or_else(|| BrokerError::Internal("PostgreSQL did not tell its clock".to_owned()))
}

fn role_exists(role: &str) -> Result<bool, BrokerError> {
    exists("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
}

fn exists(query: &str, name: &str) -> Result<bool, BrokerError> {
    Ok(!sql::query(ADMIN, query, &[Value::from(name)])?
        .rows
        .is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_postgres_identifiers() {
        let instance = Instance {
            id: "x".repeat(500),
            service_id: SERVICE_ID.to_owned(),
            plan_id: PLANS[0].id.to_owned(),
            parameters: None,
            context: None,
            organization_guid: None,
            space_guid: None,
            maintenance_version: None,
            plugin_version: VERSION.to_owned(),
        };
        let names = Names::of(&instance);
        assert!(names.owner.len() <= 63 && names.owner.starts_with(&names.database));
    }

    /// The role functions of deploy/postgres/least-privilege.sql refuse
    /// any name outside these patterns: the names derived here must fit them.
    #[test]
    fn names_fit_the_role_functions_patterns() {
        let sql = include_str!("../../../deploy/postgres/least-privilege.sql");
        assert!(sql.contains("'^db_[0-9a-f]{16}_owner$'"));
        assert!(sql.contains("'^u_[0-9a-f]{16}$'"));
        let hex16 = |text: &str| {
            text.len() == 16
                && text
                    .bytes()
                    .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
        };
        for id in ["x", "an \"odd\" id; DROP ROLE postgres", &"y".repeat(300)] {
            let instance = Instance {
                id: id.to_owned(),
                service_id: SERVICE_ID.to_owned(),
                plan_id: PLANS[0].id.to_owned(),
                parameters: None,
                context: None,
                organization_guid: None,
                space_guid: None,
                maintenance_version: None,
                plugin_version: VERSION.to_owned(),
            };
            let owner = Names::of(&instance).owner;
            let digits = owner
                .strip_prefix("db_")
                .and_then(|rest| rest.strip_suffix("_owner"));
            assert!(digits.is_some_and(hex16), "{owner}");
            let login = derive_name("u_", id, 63);
            assert!(login.strip_prefix("u_").is_some_and(hex16), "{login}");
        }
    }

    #[test]
    fn connection_limit_defaults_to_the_plan_and_stays_within_it() {
        let small = &PLANS[0];
        assert_eq!(
            connection_limit(small, &Parameters::default()).ok(),
            Some(small.max_connections)
        );
        assert_eq!(
            connection_limit(
                small,
                &Parameters {
                    connection_limit: Some(5)
                }
            )
            .ok(),
            Some(5)
        );
        let error = connection_limit(
            small,
            &Parameters {
                connection_limit: Some(small.max_connections + 1),
            },
        )
        .expect_err("above the plan");
        assert!(
            error
                .description()
                .starts_with("parameters.connection_limit: "),
            "{error}"
        );
    }

    #[test]
    fn each_plan_schema_caps_the_limit_at_its_maximum() {
        let catalog = Postgres::catalog();
        for (plan, spec) in catalog.services[0].plans.iter().zip(&PLANS) {
            let schemas = plan.schemas.as_ref().expect("schemas");
            let schema: serde_json::Value =
                serde_json::from_str(schemas.instance_create.as_deref().expect("create"))
                    .expect("json");
            assert_eq!(
                schema["properties"]["connection_limit"]["maximum"],
                spec.max_connections
            );
            assert!(plan.binding_rotatable);
            let binding: serde_json::Value =
                serde_json::from_str(schemas.binding_create.as_deref().expect("binding"))
                    .expect("json");
            assert_eq!(
                binding["properties"]["expires_in_days"]["minimum"], 1,
                "{binding}"
            );
        }
    }

    #[test]
    fn bind_parameters_name_unknown_fields() {
        let error =
            wasm_broker_sdk::params::parse::<BindingParameters>(Some(r#"{"expires_in":3}"#))
                .expect_err("unknown");
        assert!(
            error
                .description()
                .starts_with("parameters.expires_in: unknown field"),
            "{error}"
        );
    }
}
