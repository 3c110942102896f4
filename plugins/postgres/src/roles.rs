//! Creating, granting and dropping the plugin's roles, one way or the other.
//!
//! Up to PostgreSQL 15, `CREATEROLE` may grant any non-superuser role, the
//! server-program and server-file ones included, so an admin account holding
//! it is a way to run commands on the server (`GRANT
//! pg_execute_server_program TO CURRENT_USER`, then `COPY ... FROM
//! PROGRAM`). The shipped account therefore has no `CREATEROLE`: its roles
//! are made by the SECURITY DEFINER functions of
//! deploy/postgres/least-privilege.sql (schema `wasm_broker`), which take only
//! this plugin's role names and grant only its owner roles. Where that
//! schema does not exist the account is trusted with the statements
//! themselves (a superuser, or `CREATEROLE` on PostgreSQL 16 and later).
//!
//! `ALTER ROLE ... SET role` is one statement the functions cannot run
//! (PostgreSQL refuses to set `role` inside a SECURITY DEFINER function), so
//! the setting that makes sessions act as the owner is on the database,
//! which the admin account alters as a member of its owner.

use wasm_broker_sdk::prelude::*;
use wasm_broker_sdk::sql::{self, Dialect, Value};

use crate::ADMIN;

/// How this server's roles are made.
pub(crate) enum Roles {
    /// Through the `wasm_broker` schema's functions.
    Functions,
    /// With `CREATE/ALTER/DROP ROLE` and `GRANT` run by the admin account.
    Statements,
}

impl Roles {
    /// Asked once per call: the schema is the operator's to add or remove.
    /// `to_regnamespace` needs no privilege on the schema, so an account
    /// left without USAGE fails on the function call with "permission
    /// denied for schema wasm_broker" rather than running statements it may
    /// not be meant to run.
    pub(crate) fn of_server() -> Result<Self, BrokerError> {
        let found = sql::execute(ADMIN, "SELECT to_regnamespace('wasm_broker') IS NOT NULL")?
            .first_column()
            .next()
            .and_then(|value| match value {
                Value::Boolean(flag) => Some(*flag),
                _ => None,
            })
            .ok_or_else(|| {
                BrokerError::Internal(
                    "PostgreSQL did not say whether schema wasm_broker exists".into(),
                )
            })?;
        Ok(if found {
            Self::Functions
        } else {
            Self::Statements
        })
    }

    /// A `NOLOGIN` owner role for a database, unless it exists.
    pub(crate) fn create_owner(&self, owner: &str) -> Result<(), BrokerError> {
        match self {
            Self::Functions => call("create_owner($1)", &[Value::from(owner)]),
            Self::Statements => {
                if !crate::role_exists(owner)? {
                    sql::execute(
                        ADMIN,
                        &format!("CREATE ROLE {} NOLOGIN", quote_pg_ident(owner)),
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Makes the admin account a member of `owner`: only the owner of a
    /// database (or a superuser) may create it for that owner, alter or drop
    /// it. Databases created before, by a superuser grant, get it on their
    /// next bind, update or deprovision. Granting it again only notices.
    pub(crate) fn act_as_owner(&self, owner: &str) -> Result<(), BrokerError> {
        match self {
            Self::Functions => call("act_as_owner($1)", &[Value::from(owner)]),
            Self::Statements => sql::execute(
                ADMIN,
                &format!("GRANT {} TO CURRENT_USER", quote_pg_ident(owner)),
            )
            .map(drop),
        }
    }

    /// A login role with `password`, valid until `valid_until` (the
    /// server's timestamp syntax) if given, a member of `owner`. The
    /// password is a bound parameter of the function call, so it appears in
    /// no statement text; the caller redacts it from errors of either way.
    pub(crate) fn create_login(
        &self,
        login: &str,
        password: &str,
        valid_until: Option<&str>,
        owner: &str,
    ) -> Result<(), BrokerError> {
        match self {
            Self::Functions => call(
                "create_login($1, $2, $3::timestamptz, $4)",
                &[
                    Value::from(login),
                    Value::from(password),
                    valid_until.map_or(Value::Null, Value::from),
                    Value::from(owner),
                ],
            ),
            Self::Statements => {
                let valid_until = valid_until
                    .map(|instant| {
                        format!(
                            " VALID UNTIL {}",
                            quote_sql_string(Dialect::Postgres, instant)
                        )
                    })
                    .unwrap_or_default();
                sql::execute(
                    ADMIN,
                    &format!(
                        "CREATE ROLE {} LOGIN PASSWORD {}{valid_until} IN ROLE {}",
                        quote_pg_ident(login),
                        quote_sql_string(Dialect::Postgres, password),
                        quote_pg_ident(owner)
                    ),
                )
                .map(drop)
            }
        }
    }

    /// The login role can no longer log in (its password is gone too).
    pub(crate) fn disable_login(&self, login: &str) -> Result<(), BrokerError> {
        match self {
            Self::Functions => call("disable_login($1)", &[Value::from(login)]),
            Self::Statements => sql::execute(
                ADMIN,
                &format!("ALTER ROLE {} NOLOGIN PASSWORD NULL", quote_pg_ident(login)),
            )
            .map(drop),
        }
    }

    /// Drops the role if it exists; fails while it owns anything.
    pub(crate) fn drop_role(&self, role: &str) -> Result<(), BrokerError> {
        match self {
            Self::Functions => call("drop_role($1)", &[Value::from(role)]),
            Self::Statements => sql::execute(
                ADMIN,
                &format!("DROP ROLE IF EXISTS {}", quote_pg_ident(role)),
            )
            .map(drop),
        }
    }
}

/// `SELECT wasm_broker.<function>`: each answers whether it changed
/// anything, which the plugin does not need (its callers are idempotent).
fn call(function: &str, params: &[Value]) -> Result<(), BrokerError> {
    sql::query(ADMIN, &format!("SELECT wasm_broker.{function}"), params).map(drop)
}
