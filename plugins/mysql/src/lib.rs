//! MariaDB/MySQL: a database per instance, a user per binding, reached
//! through the connection the operator maps to the alias `admin`
//! (`[plugins.mysql.connections] admin = "<connection>"` in broker.toml).
//!
//! A binding may ask for credentials that expire (`expires_in_days`, or the
//! operator's `binding_expires_in_days` setting): its user gets
//! `PASSWORD EXPIRE INTERVAL <days> DAY`, which MariaDB (10.4.3+) counts
//! from the moment the password was set, by its own clock. The plugin reads
//! that moment from the server's clock ([`password_set_at`]) and hands the
//! platform the instant MariaDB will start refusing the password as
//! `expires_at` (see [`wasm_broker_sdk::expiry`]).
//!
//! What "refusing" means is MariaDB's: a client that does not declare it can
//! handle expired passwords is disconnected
//! (`disconnect_on_expired_password = ON`) or gets a session in which every
//! statement but `SET` fails with "You must SET PASSWORD before executing this
//! statement" (error 1820). A client that does declare it (the `mysql`
//! command line with `--connect-expired-password`) may still set a new
//! password, which starts a new lifetime of the same length: the expiry ends
//! the handed-out credentials, it does not lock out someone holding them.
//! Unbind drops the user.

mod accounts;
#[cfg(test)]
mod flow_tests;

use serde::Deserialize;
use serde_json::json;
use wasm_broker_sdk::expiry::{Expiry, Lifetime};
use wasm_broker_sdk::log;
use wasm_broker_sdk::prelude::*;
use wasm_broker_sdk::sql::{self, Dialect, Value};

use crate::accounts::{Accounts, Login};

const ADMIN: &str = "admin";
const VERSION: &str = env!("CARGO_PKG_VERSION");

const SERVICE_ID: &str = "9cc50e7b-80c1-41dc-a640-510b85e0cdf6";

/// What a plan decides: how many connections each binding's user may open.
struct Plan {
    id: &'static str,
    name: &'static str,
    description: &'static str,
    max_user_connections: u32,
}

const PLANS: [Plan; 2] = [
    Plan {
        id: "e6d7f5fe-0689-496b-b8dc-fbad54d3dd0f",
        name: "small",
        description: "A database; each binding may open 10 connections.",
        max_user_connections: 10,
    },
    Plan {
        id: "a112bad0-54db-4081-a132-50f3367eba90",
        name: "large",
        description: "A database; each binding may open 50 connections.",
        max_user_connections: 50,
    },
];

/// Character sets a database may be created with (the `charset` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Charset {
    #[default]
    Utf8mb4,
    Latin1,
}

impl Charset {
    const ALL: [Charset; 2] = [Charset::Utf8mb4, Charset::Latin1];

    fn sql_name(self) -> &'static str {
        match self {
            Charset::Utf8mb4 => "utf8mb4",
            Charset::Latin1 => "latin1",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Parameters {
    charset: Charset,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BindingParameters {
    /// Signed, so that a negative lifetime is refused with the range rather
    /// than with serde's type error.
    expires_in_days: Option<i64>,
}

struct MySql;

impl ServicePlugin for MySql {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "mysql",
            VERSION,
            "MariaDB/MySQL: a database per instance, a user per binding",
        )
    }

    fn catalog() -> Catalog {
        let charsets: Vec<&str> = Charset::ALL
            .iter()
            .map(|charset| charset.sql_name())
            .collect();
        let schema = parameters_schema(json!({
            "charset": {
                "description": "Default character set of the database.",
                "type": "string",
                "enum": charsets,
                "default": Charset::default().sql_name(),
            },
        }));
        let binding_schema = parameters_schema(json!({
            wasm_broker_sdk::expiry::PARAMETER: Lifetime::schema_property(),
        }));
        let plans = PLANS
            .iter()
            .map(|plan| {
                ServicePlan::new(plan.id, plan.name, plan.description)
                    .maintenance_version(VERSION, "wasm-broker mysql plugin build")
                    .binding_rotatable()
                    .instance_schemas(schema.clone(), Some(schema.clone()))
                    .binding_schema(binding_schema.clone())
            })
            .collect();
        Catalog::new(vec![
            ServiceOffering::new(SERVICE_ID, "mysql", "MariaDB/MySQL database", plans)
                .tags(&["mysql", "mariadb", "relational"])
                .metadata(json!({"displayName": "MariaDB"})),
        ])
    }

    fn provision(instance: &Instance, _info: &RequestInfo) -> Result<InstanceOutcome, BrokerError> {
        let parameters: Parameters = instance.parameters()?;
        admin_server()?;
        let database = database_name(instance);
        // IF NOT EXISTS: a retry after a failed provision finds the database
        // the first attempt created.
        sql::execute(
            ADMIN,
            &format!(
                "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET {}",
                quote_mysql_ident(&database),
                parameters.charset.sql_name()
            ),
        )?;
        log::info!("created database {database}");
        Ok(InstanceOutcome::done())
    }

    /// Changes the default character set (existing tables keep theirs).
    fn update(
        instance: &Instance,
        changes: &InstanceChanges,
        _info: &RequestInfo,
    ) -> Result<InstanceOutcome, BrokerError> {
        if changes.plan_id.is_some() {
            return Err(BrokerError::Unprocessable(
                "mysql plans cannot be changed".to_owned(),
            ));
        }
        if changes.touches_only_metadata()? {
            return Ok(InstanceOutcome::done());
        }
        let parameters: Parameters = changes.merged_parameters(instance)?;
        sql::execute(
            ADMIN,
            &format!(
                "ALTER DATABASE {} CHARACTER SET {}",
                quote_mysql_ident(&database_name(instance)),
                parameters.charset.sql_name()
            ),
        )?;
        Ok(InstanceOutcome::done())
    }

    fn deprovision(
        instance: &Instance,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let database = database_name(instance);
        sql::execute(
            ADMIN,
            &format!("DROP DATABASE IF EXISTS {}", quote_mysql_ident(&database)),
        )?;
        log::info!("dropped database {database}");
        Ok(DeletionOutcome::Done)
    }

    /// A new user with all privileges on the instance's database only,
    /// whose password expires when the binding's lifetime ends if it has
    /// one. A rotation is an ordinary bind: the new binding id gives a new
    /// user with a lifetime of its own, and the predecessor's stays valid
    /// until it is unbound or expires.
    fn bind(
        instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<BindOutcome, BrokerError> {
        let parameters: BindingParameters = binding.parameters()?;
        let lifetime = Lifetime::for_binding(parameters.expires_in_days)?;
        let plan = plan(&instance.plan_id)?;
        let server = admin_server()?;
        let database = database_name(instance);
        let user = user_name(binding);
        let password = password(24)?;
        let accounts = Accounts::detect()?;
        let login = Login {
            password: &password,
            max_connections: plan.max_user_connections,
            expire_days: lifetime.map(Lifetime::days),
        };
        // The password is part of the CREATE itself: a user created without
        // one and given it by a second statement would be a passwordless
        // login until that statement ran (or forever, if the broker died in
        // between). The ALTER is for a retry after a failed bind: it finds
        // the user and gives it the password (and the lifetime) this attempt
        // returns.
        accounts.create_user(&user, &login)?;
        let set_password = || accounts.alter_user(&user, &login);
        let expiry = match lifetime {
            Some(lifetime) => Some(Expiry::starting_at(
                password_set_at(set_password)?,
                lifetime,
            )?),
            None => {
                set_password()?;
                None
            }
        };
        accounts.grant_database(&database, &user)?;
        match &expiry {
            Some(expiry) => log::info!(
                "created user {user} on database {database}, password expires at {}",
                expiry.expires_at()
            ),
            None => log::info!("created user {user} on database {database}"),
        }
        Ok(Credentials::new("mysql", &server.host, server.port)
            .login(&user, &password)
            .database(&database)
            .jdbc("mysql")
            .into_bind_outcome()
            .expiring(expiry.as_ref()))
    }

    fn unbind(
        _instance: &Instance,
        binding: &Binding,
        _info: &RequestInfo,
    ) -> Result<DeletionOutcome, BrokerError> {
        let user = user_name(binding);
        let accounts = Accounts::detect()?;
        accounts.drop_user(&user)?;
        // Sessions outlive DROP USER; ending them makes the revocation take
        // effect now. After the DROP, so no new session can start meanwhile.
        // Best effort: the user is already dropped.
        if let Err(error) = accounts.kill_sessions(&user) {
            log::warn!("cannot end the sessions of {user}: {}", error.description());
        }
        log::info!("dropped user {user}");
        Ok(DeletionOutcome::Done)
    }
}

wasm_broker_sdk::export_plugin!(MySql);

fn plan(plan_id: &str) -> Result<&'static Plan, BrokerError> {
    PLANS
        .iter()
        .find(|plan| plan.id == plan_id)
        .ok_or_else(|| BrokerError::BadRequest(format!("plan {plan_id} is not a mysql plan")))
}

/// The server behind `admin`, checked to be MySQL/MariaDB so a wrong grant in
/// broker.toml fails with a clear message rather than a syntax error.
fn admin_server() -> Result<sql::ServerInfo, BrokerError> {
    let server = sql::server_info(ADMIN)?;
    if server.dialect != Dialect::Mysql {
        return Err(BrokerError::Internal(
            "the connection mapped to `admin` for the mysql plugin is not a MySQL/MariaDB connection".to_owned(),
        ));
    }
    Ok(server)
}

/// No `_` in the name: in the database part of `GRANT` it is a wildcard
/// matching any character.
fn database_name(instance: &Instance) -> String {
    derive_name("db", &instance.id, 64)
}

/// MySQL limits user names to 32 characters (MariaDB to 80).
fn user_name(binding: &Binding) -> String {
    derive_name("u_", &binding.id, 32)
}

/// Runs `set`, a statement that sets a password, and answers when the
/// server set it, in seconds since the epoch by its clock: MariaDB counts
/// the password's lifetime from that moment (the statement's start, in
/// whole seconds). It records it in `mysql.global_priv`, which the plugin's
/// least-privilege account cannot read (it holds every password hash), so
/// the plugin reads the server's clock before and after instead: equal
/// readings are the moment. A retry sets the same password again, which
/// restarts the lifetime; after three straddled seconds the earlier reading
/// is a lower bound (the platform is told to renew a second early).
fn password_set_at(set: impl Fn() -> Result<(), BrokerError>) -> Result<i64, BrokerError> {
    let mut attempt = 1;
    loop {
        let before = server_clock()?;
        set()?;
        if server_clock()? == before || attempt == 3 {
            return Ok(before);
        }
        attempt += 1;
    }
}

/// The server's clock, in seconds since the epoch.
fn server_clock() -> Result<i64, BrokerError> {
    sql::query(ADMIN, "SELECT UNIX_TIMESTAMP()", &[])?
        .first_column()
        .next()
        .and_then(Value::as_i64)
        .ok_or_else(|| BrokerError::Internal("MariaDB did not answer UNIX_TIMESTAMP()".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_broker_sdk::params;

    #[test]
    fn every_plan_is_rotatable_and_versioned() {
        let catalog = MySql::catalog();
        let plans = &catalog.services[0].plans;
        assert_eq!(plans.len(), PLANS.len());
        for plan in plans {
            assert!(plan.binding_rotatable);
            assert_eq!(
                plan.maintenance_info
                    .as_ref()
                    .map(|info| info.version.as_str()),
                Some(VERSION)
            );
        }
    }

    #[test]
    fn every_charset_in_the_schema_is_accepted() {
        let catalog = MySql::catalog();
        let schemas = catalog.services[0].plans[0]
            .schemas
            .as_ref()
            .expect("schemas");
        let schema: serde_json::Value =
            serde_json::from_str(schemas.instance_create.as_deref().expect("create schema"))
                .expect("json");
        let charsets = schema["properties"]["charset"]["enum"]
            .as_array()
            .expect("enum");
        for charset in charsets {
            let parameters: Parameters =
                params::parse(Some(&json!({"charset": charset}).to_string()))
                    .expect("a listed charset parses");
            assert_eq!(json!(parameters.charset.sql_name()), *charset);
        }
    }

    #[test]
    fn unknown_charsets_name_the_field() {
        let error =
            params::parse::<Parameters>(Some(r#"{"charset":"koi8r"}"#)).expect_err("refused");
        assert!(
            error
                .description()
                .starts_with("parameters.charset: unknown variant `koi8r`"),
            "{error}"
        );
    }

    #[test]
    fn every_plan_accepts_a_binding_lifetime() {
        let catalog = MySql::catalog();
        for plan in &catalog.services[0].plans {
            let schemas = plan.schemas.as_ref().expect("schemas");
            let binding: serde_json::Value =
                serde_json::from_str(schemas.binding_create.as_deref().expect("binding schema"))
                    .expect("json");
            assert_eq!(
                binding["properties"]["expires_in_days"]["type"], "integer",
                "{binding}"
            );
            assert_eq!(binding["additionalProperties"], false);
        }
    }
}
