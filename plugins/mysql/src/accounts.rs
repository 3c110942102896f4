//! Binding users: created, given their password, granted their database,
//! dropped and disconnected. Two ways, chosen per call by what the `admin`
//! account may do:
//!
//! - the shipped least-privilege account holds no global CREATE USER (with
//!   it, MariaDB lets an account ALTER USER root) and no CONNECTION ADMIN; it
//!   may only EXECUTE the `wasm_broker` procedures
//!   (deploy/mariadb/least-privilege.sql), which run each statement as a
//!   locked definer account, for names of the plugin's shape only;
//! - an account without them (an operator's full administrator, or an
//!   account made before the procedures existed) runs the statements itself.

use wasm_broker_sdk::prelude::*;
use wasm_broker_sdk::sql::{self, Dialect, Value};

use crate::ADMIN;

/// The procedures deploy/mariadb/least-privilege.sql makes.
const PROCEDURES: [&str; 5] = [
    "create_user",
    "alter_user",
    "grant_database",
    "drop_user",
    "kill_user",
];

/// How binding users are managed on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accounts {
    /// `CALL wasm_broker.<procedure>(...)`.
    Procedures,
    /// The statements themselves.
    Statements,
}

/// What a binding user logs in with.
pub(crate) struct Login<'a> {
    pub password: &'a str,
    pub max_connections: u32,
    /// The password's lifetime in days; `None`: it never expires.
    pub expire_days: Option<u32>,
}

/// One change to binding users.
enum Change<'a> {
    CreateUser(&'a str, &'a Login<'a>),
    AlterUser(&'a str, &'a Login<'a>),
    GrantDatabase { database: &'a str, user: &'a str },
    DropUser(&'a str),
    KillSessions(&'a str),
}

impl Accounts {
    /// The procedures when the account may execute all of them:
    /// information_schema lists only routines the account holds a right on.
    pub(crate) fn detect() -> Result<Self, BrokerError> {
        let names = PROCEDURES
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let found = sql::execute(
            ADMIN,
            &format!(
                "SELECT COUNT(*) FROM information_schema.ROUTINES \
                 WHERE ROUTINE_SCHEMA = 'wasm_broker' AND ROUTINE_TYPE = 'PROCEDURE' \
                 AND ROUTINE_NAME IN ({names})"
            ),
        )?
        .first_column()
        .next()
        .and_then(Value::as_i64);
        Ok(if found == Some(PROCEDURES.len() as i64) {
            Accounts::Procedures
        } else {
            Accounts::Statements
        })
    }

    /// CREATE USER IF NOT EXISTS, with the password in the same statement.
    pub(crate) fn create_user(self, user: &str, login: &Login) -> Result<(), BrokerError> {
        self.run(&Change::CreateUser(user, login))
            .map_err(|error| error.redact(login.password))
    }

    /// ALTER USER: the login's password, connections and lifetime.
    pub(crate) fn alter_user(self, user: &str, login: &Login) -> Result<(), BrokerError> {
        self.run(&Change::AlterUser(user, login))
            .map_err(|error| error.redact(login.password))
    }

    /// GRANT ALL PRIVILEGES on `database` to `user`.
    pub(crate) fn grant_database(self, database: &str, user: &str) -> Result<(), BrokerError> {
        self.run(&Change::GrantDatabase { database, user })
    }

    /// DROP USER IF EXISTS.
    pub(crate) fn drop_user(self, user: &str) -> Result<(), BrokerError> {
        self.run(&Change::DropUser(user))
    }

    /// KILL CONNECTION USER: ends every session of `user`. It needs
    /// CONNECTION ADMIN only, where listing other users' sessions would need
    /// PROCESS (which also shows every session's statements).
    pub(crate) fn kill_sessions(self, user: &str) -> Result<(), BrokerError> {
        self.run(&Change::KillSessions(user))
    }

    fn run(self, change: &Change) -> Result<(), BrokerError> {
        sql::execute(ADMIN, &self.statement(change)).map(drop)
    }

    /// The statement for `change`. Pure, for the unit tests.
    fn statement(self, change: &Change) -> String {
        let string = |text: &str| quote_sql_string(Dialect::Mysql, text);
        match self {
            Accounts::Procedures => {
                let login_args = |user: &str, login: &Login| {
                    format!(
                        "{}, {}, {}, {}",
                        string(user),
                        string(login.password),
                        login.max_connections,
                        login
                            .expire_days
                            .map_or_else(|| "NULL".to_owned(), |days| days.to_string())
                    )
                };
                match change {
                    Change::CreateUser(user, login) => {
                        format!("CALL wasm_broker.create_user({})", login_args(user, login))
                    }
                    Change::AlterUser(user, login) => {
                        format!("CALL wasm_broker.alter_user({})", login_args(user, login))
                    }
                    Change::GrantDatabase { database, user } => format!(
                        "CALL wasm_broker.grant_database({}, {})",
                        string(database),
                        string(user)
                    ),
                    Change::DropUser(user) => {
                        format!("CALL wasm_broker.drop_user({})", string(user))
                    }
                    Change::KillSessions(user) => {
                        format!("CALL wasm_broker.kill_user({})", string(user))
                    }
                }
            }
            Accounts::Statements => {
                // Explicitly NEVER without a lifetime: the server's
                // default_password_lifetime must not expire a binding whose
                // metadata says nothing about it.
                let login_clause = |login: &Login| {
                    let expiry = match login.expire_days {
                        Some(days) => format!("PASSWORD EXPIRE INTERVAL {days} DAY"),
                        None => "PASSWORD EXPIRE NEVER".to_owned(),
                    };
                    format!(
                        "IDENTIFIED BY {} WITH MAX_USER_CONNECTIONS {} {expiry}",
                        string(login.password),
                        login.max_connections
                    )
                };
                match change {
                    Change::CreateUser(user, login) => format!(
                        "CREATE USER IF NOT EXISTS {} {}",
                        account(user),
                        login_clause(login)
                    ),
                    Change::AlterUser(user, login) => {
                        format!("ALTER USER {} {}", account(user), login_clause(login))
                    }
                    Change::GrantDatabase { database, user } => format!(
                        "GRANT ALL PRIVILEGES ON {}.* TO {}",
                        quote_mysql_ident(database),
                        account(user)
                    ),
                    Change::DropUser(user) => format!("DROP USER IF EXISTS {}", account(user)),
                    Change::KillSessions(user) => {
                        format!("KILL CONNECTION USER {}", account(user))
                    }
                }
            }
        }
    }
}

/// `'user'@'%'`: the user may connect from any host; the password is what
/// guards it.
pub(crate) fn account(user: &str) -> String {
    format!("{}@'%'", quote_sql_string(Dialect::Mysql, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: Login = Login {
        password: "Secret0123456789",
        max_connections: 10,
        expire_days: None,
    };

    #[test]
    fn procedures_get_quoted_arguments() {
        let expiring = Login {
            expire_days: Some(30),
            ..LOGIN
        };
        assert_eq!(
            Accounts::Procedures.statement(&Change::CreateUser("u_1", &LOGIN)),
            "CALL wasm_broker.create_user('u_1', 'Secret0123456789', 10, NULL)"
        );
        assert_eq!(
            Accounts::Procedures.statement(&Change::AlterUser("u_1", &expiring)),
            "CALL wasm_broker.alter_user('u_1', 'Secret0123456789', 10, 30)"
        );
        assert_eq!(
            Accounts::Procedures.statement(&Change::GrantDatabase {
                database: "db1",
                user: "u_'1"
            }),
            "CALL wasm_broker.grant_database('db1', 'u_''1')"
        );
    }

    #[test]
    fn statements_are_the_plain_ddl() {
        let expiring = Login {
            expire_days: Some(30),
            ..LOGIN
        };
        assert_eq!(
            Accounts::Statements.statement(&Change::CreateUser("u_1", &LOGIN)),
            "CREATE USER IF NOT EXISTS 'u_1'@'%' IDENTIFIED BY 'Secret0123456789' \
             WITH MAX_USER_CONNECTIONS 10 PASSWORD EXPIRE NEVER"
        );
        assert_eq!(
            Accounts::Statements.statement(&Change::AlterUser("u_1", &expiring)),
            "ALTER USER 'u_1'@'%' IDENTIFIED BY 'Secret0123456789' \
             WITH MAX_USER_CONNECTIONS 10 PASSWORD EXPIRE INTERVAL 30 DAY"
        );
        assert_eq!(
            Accounts::Statements.statement(&Change::GrantDatabase {
                database: "db`1",
                user: "u_1"
            }),
            "GRANT ALL PRIVILEGES ON `db``1`.* TO 'u_1'@'%'"
        );
        assert_eq!(
            Accounts::Statements.statement(&Change::KillSessions("u_1")),
            "KILL CONNECTION USER 'u_1'@'%'"
        );
    }

    #[test]
    fn accounts_quote_the_user() {
        assert_eq!(account("u_1"), "'u_1'@'%'");
    }
}
