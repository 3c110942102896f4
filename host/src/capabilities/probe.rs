//! What the account behind each granted connection may do on its backend,
//! asked of the backend itself: a grant gives a plugin everything that
//! account can do, so a grant of root, a superuser or an account holding
//! FILE or SUPER hands the plugin the backend's host too. `wasm-broker
//! plugins check` prints what this finds; `serve` logs it once listening,
//! and again when broker.toml is applied live.
//!
//! The probe opens its own [`Connections`] (only those granted), so it takes
//! no connection a plugin call waits for, and gives each connection
//! [`PROBE_TIMEOUT`]: a backend that does not answer is reported as
//! unchecked and blocks nothing. Findings name the plugin, the alias and the
//! connection, never a URL or a password.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::Row;

use super::connections::{Connection, ConnectionError, Connections, HttpConnection, SqlPool};
use super::redis::ReplyMeter;
use crate::config::Config;

/// How long the probe of one connection may take, connecting included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to find which rights each shipped plugin needs, for the warnings.
const GUIDE: &str = "README.md, \"What a plugin holds\"";

/// One grant: `[plugins.<plugin>.connections] <alias> = "<connection>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub plugin: String,
    pub alias: String,
    pub connection: String,
}

/// What the probe found of one connection's account.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rights {
    /// Rights no shipped plugin needs and that reach past the backend
    /// (superuser, FILE, SUPER, CONFIG ...): each grant of it is a warning.
    pub excess: Vec<String>,
    /// Rights a plugin needs that still reach far: said, not warned about.
    pub notes: Vec<String>,
}

/// Why a connection's account could not be checked. Never carries a URL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {} s", PROBE_TIMEOUT.as_secs())]
    TimedOut,
    #[error("the backend refused or failed the check: {0}")]
    Backend(String),
    #[error("no [connections.{0}] section")]
    Unknown(String),
}

/// The probe's answer for one grant.
#[derive(Debug, Clone)]
pub struct Report {
    pub grant: Grant,
    pub rights: Result<Rights, ProbeError>,
}

impl Report {
    fn subject(&self) -> String {
        format!(
            "plugin {}, connection {} (alias {})",
            self.grant.plugin, self.grant.connection, self.grant.alias
        )
    }

    /// The warning, if the account holds rights no plugin needs.
    pub fn warning(&self) -> Option<String> {
        let excess = &self.rights.as_ref().ok()?.excess;
        (!excess.is_empty()).then(|| {
            format!(
                "OVER-PRIVILEGED GRANT: {}: the account {}; the plugin can do all of that. \
                 Grant an account with only the rights the plugin needs ({GUIDE})",
                self.subject(),
                excess.join("; ")
            )
        })
    }

    /// Every line to show an operator: the warning, the notes, or why the
    /// account could not be checked.
    pub fn lines(&self) -> Vec<String> {
        match &self.rights {
            Ok(rights) => self
                .warning()
                .into_iter()
                .chain(
                    rights
                        .notes
                        .iter()
                        .map(|note| format!("note: {}: the account {note}", self.subject())),
                )
                .collect(),
            Err(error) => vec![format!(
                "could not check the rights of {}: {error}",
                self.subject()
            )],
        }
    }
}

/// The grants of `config`, of one plugin (a file stem) or of all.
pub fn grants_of(config: &Config, plugin: Option<&str>) -> Vec<Grant> {
    config
        .plugins
        .iter()
        .filter(|(name, _)| plugin.is_none_or(|wanted| wanted == name.as_str()))
        .flat_map(|(name, section)| {
            section.connections.iter().map(|(alias, connection)| Grant {
                plugin: name.clone(),
                alias: alias.clone(),
                connection: connection.clone(),
            })
        })
        .collect()
}

/// Probes the connections `config` grants (to `plugin`, or to every plugin),
/// each once and all at once, on connections of the probe's own.
pub async fn probe_config(
    config: &Config,
    plugin: Option<&str>,
) -> Result<Vec<Report>, ConnectionError> {
    let grants = grants_of(config, plugin);
    let granted: BTreeSet<&str> = grants.iter().map(|g| g.connection.as_str()).collect();
    let sections = config
        .connections
        .iter()
        .filter(|(name, _)| granted.contains(name.as_str()))
        .map(|(name, section)| (name.clone(), section.clone()))
        .collect();
    let connections = Connections::from_config(&sections)?;
    Ok(probe_grants(&connections, grants).await)
}

/// Probes each connection `grants` name once and reports per grant.
pub async fn probe_grants(connections: &Connections, grants: Vec<Grant>) -> Vec<Report> {
    let names: BTreeSet<String> = grants.iter().map(|g| g.connection.clone()).collect();
    let probes = names.into_iter().map(|name| async move {
        let rights = probe_connection(connections, &name).await;
        (name, rights)
    });
    let by_connection: BTreeMap<String, Result<Rights, ProbeError>> =
        join_all(probes).await.into_iter().collect();
    grants
        .into_iter()
        .map(|grant| {
            let rights = by_connection
                .get(&grant.connection)
                .cloned()
                .unwrap_or_else(|| Err(ProbeError::Unknown(grant.connection.clone())));
            Report { grant, rights }
        })
        .collect()
}

/// Logs each report: warnings as warnings, notes and unchecked accounts as
/// information (an unreachable backend is not the operator's mistake).
pub fn log_reports(reports: &[Report]) {
    for report in reports {
        let grant = &report.grant;
        if let Some(warning) = report.warning() {
            tracing::warn!(plugin = %grant.plugin, connection = %grant.connection, "{warning}");
        }
        match &report.rights {
            Ok(rights) => {
                for note in &rights.notes {
                    tracing::info!(plugin = %grant.plugin, connection = %grant.connection, "the granted account {note}");
                }
            }
            Err(error) => tracing::info!(
                plugin = %grant.plugin,
                connection = %grant.connection,
                %error,
                "could not check the rights of the granted account"
            ),
        }
    }
}

/// The rights of connection `name`'s account, within [`PROBE_TIMEOUT`].
pub async fn probe_connection(connections: &Connections, name: &str) -> Result<Rights, ProbeError> {
    let connection = connections
        .get(name)
        .ok_or_else(|| ProbeError::Unknown(name.to_owned()))?;
    // The probe's own pool and permits, never a plugin's.
    let prober: std::sync::Arc<str> = std::sync::Arc::from("(probe)");
    let probe = async {
        match connection {
            Connection::Sql(sql) => match sql.pool_of(&prober) {
                SqlPool::Mysql(pool) => mysql(&pool).await,
                SqlPool::Postgres(pool, _) => postgres(&pool).await,
            },
            Connection::Redis(redis) => {
                // Its replies are a few short lines.
                let meter = ReplyMeter::new(1 << 20);
                let (mut session, _permit) = redis
                    .grant_to(&prober)
                    .open(&meter)
                    .await
                    .map_err(ProbeError::Backend)?;
                redis_rights(&mut session).await
            }
            Connection::Http(http) => rabbitmq(http).await,
            // A byte stream: the host knows no protocol to ask in.
            Connection::Tcp(_) => Ok(Rights::default()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| ProbeError::TimedOut)?
}

fn backend(error: impl std::fmt::Display) -> ProbeError {
    ProbeError::Backend(error.to_string())
}

/// MariaDB/MySQL: the account's global privileges, from `SHOW GRANTS`.
async fn mysql(pool: &sqlx::MySqlPool) -> Result<Rights, ProbeError> {
    let rows = sqlx::query("SHOW GRANTS FOR CURRENT_USER")
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    let grants: Vec<String> = rows
        .iter()
        .map(|row| {
            row.try_get::<String, _>(0)
                .or_else(|_| {
                    row.try_get::<Vec<u8>, _>(0)
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                })
                .map_err(backend)
        })
        .collect::<Result<_, _>>()?;
    Ok(mysql_rights(&grants))
}

/// The note about an account that manages users through the procedures of
/// deploy/mariadb/least-privilege.sql.
const WASM_BROKER_PROCEDURES: &str = "may create, alter, grant a `db` + 16 hex digits database to \
     and drop the accounts named `u_` + 16 hex digits, through the wasm_broker procedures";

/// What `SHOW GRANTS` lines give away. Pure, for the unit tests.
pub(crate) fn mysql_rights(grants: &[String]) -> Rights {
    let mut rights = Rights::default();
    for line in grants {
        let Some(privileges) = line
            .strip_prefix("GRANT ")
            .and_then(|rest| rest.split_once(" ON "))
        else {
            continue;
        };
        let (privileges, target) = (privileges.0, privileges.1);
        let global = target.starts_with("*.*");
        let on_mysql = target.starts_with("`mysql`.") || target.starts_with("mysql.");
        let list: Vec<&str> = privileges.split(", ").map(str::trim).collect();
        let has = |name: &str| list.contains(&name);
        if global && has("ALL PRIVILEGES") {
            rights
                .excess
                .push("holds ALL PRIVILEGES on *.* (root: FILE and SUPER included)".to_owned());
        }
        if global && has("FILE") {
            rights.excess.push(
                "holds FILE (LOAD_FILE and INTO OUTFILE read and write the server's files)"
                    .to_owned(),
            );
        }
        if global && has("SUPER") {
            rights
                .excess
                .push("holds SUPER (server settings, every session)".to_owned());
        }
        if (global || on_mysql) && (has("SELECT") || has("ALL PRIVILEGES")) {
            rights
                .excess
                .push("may read the mysql schema (every account's password hash)".to_owned());
        }
        // The shipped account's only way to accounts
        // (deploy/mariadb/least-privilege.sql): noted once, not per procedure.
        if target.starts_with("PROCEDURE `wasm_broker`.")
            && has("EXECUTE")
            && !rights
                .notes
                .iter()
                .any(|note| note == WASM_BROKER_PROCEDURES)
        {
            rights.notes.push(WASM_BROKER_PROCEDURES.to_owned());
        }
        if global && has("CREATE USER") {
            rights.notes.push(
                "holds CREATE USER, which MariaDB cannot limit to the plugin's own accounts: \
                 it may alter or drop any account, root's too"
                    .to_owned(),
            );
        }
    }
    rights
}

/// PostgreSQL: superuser, the predefined roles that reach the server's
/// files and programs, and CREATEROLE before PostgreSQL 16.
async fn postgres(pool: &sqlx::PgPool) -> Result<Rights, ProbeError> {
    let row = sqlx::query(
        "SELECT r.rolsuper, r.rolcreaterole, current_setting('server_version_num')::int, \
                pg_has_role(current_user, 'pg_execute_server_program', 'USAGE'), \
                pg_has_role(current_user, 'pg_read_server_files', 'USAGE'), \
                pg_has_role(current_user, 'pg_write_server_files', 'USAGE') \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .map_err(backend)?;
    let flag = |index: usize| row.try_get::<bool, _>(index).map_err(backend);
    let version: i32 = row.try_get(2).map_err(backend)?;
    let mut rights = Rights::default();
    if flag(0)? {
        rights
            .excess
            .push("is a superuser (COPY ... FROM PROGRAM runs commands on the server)".to_owned());
        return Ok(rights);
    }
    for (index, role, what) in [
        (
            3,
            "pg_execute_server_program",
            "runs commands on the server",
        ),
        (4, "pg_read_server_files", "reads the server's files"),
        (5, "pg_write_server_files", "writes the server's files"),
    ] {
        if flag(index)? {
            rights
                .excess
                .push(format!("has the rights of {role} ({what})"));
        }
    }
    // A warning, not a note: the shipped account needs no CREATEROLE (its
    // roles come from deploy/postgres/least-privilege.sql's functions), and
    // before 16 it is one GRANT away from the server's programs.
    if flag(1)? && version < 160_000 {
        rights.excess.push(
            "holds CREATEROLE on PostgreSQL older than 16, where it may grant itself \
             pg_execute_server_program (runs commands on the server); use \
             deploy/postgres/least-privilege.sql instead"
                .to_owned(),
        );
    }
    Ok(rights)
}

/// Redis: whether the account may run CONFIG (asked with a parameter that
/// does not exist, so nothing is read or changed) and, where it may use
/// `ACL DRYRUN`, FLUSHALL and SHUTDOWN (asked, never run).
async fn redis_rights(
    session: &mut redis::aio::MultiplexedConnection,
) -> Result<Rights, ProbeError> {
    let mut rights = Rights::default();
    let config: redis::RedisResult<redis::Value> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("wasm-broker-probe-no-such-parameter")
        .query_async(session)
        .await;
    match config {
        Ok(_) => rights.excess.push(
            "may run CONFIG (reads requirepass, rewrites the server's settings and files)"
                .to_owned(),
        ),
        Err(error) if error.is_io_error() || error.is_timeout() => return Err(backend(error)),
        Err(_) => {}
    }
    let user: redis::RedisResult<String> =
        redis::cmd("ACL").arg("WHOAMI").query_async(session).await;
    if let Ok(user) = user {
        for command in ["FLUSHALL", "SHUTDOWN"] {
            let dry: redis::RedisResult<String> = redis::cmd("ACL")
                .arg("DRYRUN")
                .arg(&user)
                .arg(command)
                .query_async(session)
                .await;
            if dry.is_ok_and(|answer| answer == "OK") {
                rights.excess.push(format!("may run {command}"));
            }
        }
    }
    Ok(rights)
}

/// An HTTP connection: RabbitMQ's management API tells the account's tags
/// (`/api/whoami`); anything else answers no such thing and is not judged.
async fn rabbitmq(http: &HttpConnection) -> Result<Rights, ProbeError> {
    let url = format!(
        "{}/api/whoami",
        http.base_url.as_str().trim_end_matches('/')
    );
    let mut request = http.client.get(url);
    if let Some(username) = &http.username {
        request = request.basic_auth(username, http.password.as_ref());
    }
    let response = request
        .send()
        .await
        .map_err(|error| backend(error.without_url()))?;
    if !response.status().is_success() {
        return Ok(Rights::default());
    }
    let whoami: serde_json::Value = match response.json().await {
        Ok(value) => value,
        Err(_) => return Ok(Rights::default()),
    };
    Ok(rabbitmq_rights(&whoami))
}

/// What `/api/whoami`'s tags give away. Pure, for the unit tests.
pub(crate) fn rabbitmq_rights(whoami: &serde_json::Value) -> Rights {
    // A list (3.9 and later) or a comma-separated string (older).
    let tags: Vec<String> = match &whoami["tags"] {
        serde_json::Value::Array(tags) => tags
            .iter()
            .filter_map(|tag| tag.as_str().map(str::to_owned))
            .collect(),
        serde_json::Value::String(tags) => tags.split(',').map(|t| t.trim().to_owned()).collect(),
        _ => Vec::new(),
    };
    let mut rights = Rights::default();
    // Not a warning: RabbitMQ lets no other tag create virtual hosts and
    // users, which is what a plugin on the management API is for.
    if tags.iter().any(|tag| tag == "administrator") {
        rights.notes.push(
            "is a RabbitMQ administrator (no other tag may manage virtual hosts and users): \
             it may also read every user's password hash and make other administrators"
                .to_owned(),
        );
    }
    rights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|line| (*line).to_owned()).collect()
    }

    #[test]
    fn root_and_file_and_super_are_excess() {
        let root = mysql_rights(&lines(&[
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`127.0.0.1` WITH GRANT OPTION",
        ]));
        assert_eq!(root.excess.len(), 2, "{root:?}");
        assert!(root.excess[0].contains("ALL PRIVILEGES"));
        let file = mysql_rights(&lines(&[
            "GRANT SELECT, FILE, SUPER ON *.* TO `x`@`%` IDENTIFIED BY PASSWORD '*AB'",
        ]));
        assert!(
            file.excess.iter().any(|e| e.starts_with("holds FILE")),
            "{file:?}"
        );
        assert!(
            file.excess.iter().any(|e| e.starts_with("holds SUPER")),
            "{file:?}"
        );
        assert!(
            file.excess.iter().any(|e| e.contains("mysql schema")),
            "{file:?}"
        );
    }

    #[test]
    fn an_account_holding_create_user_has_only_a_note() {
        let rights = mysql_rights(&lines(&[
            "GRANT CREATE USER, CONNECTION ADMIN ON *.* TO `wasm_broker_mysql`@`%` IDENTIFIED BY PASSWORD '*AC'",
            "GRANT ALL PRIVILEGES ON `db________________`.* TO `wasm_broker_mysql`@`%` WITH GRANT OPTION",
        ]));
        assert!(rights.excess.is_empty(), "{rights:?}");
        assert_eq!(rights.notes.len(), 1, "{rights:?}");
        assert!(rights.notes[0].contains("CREATE USER"), "{rights:?}");
    }

    #[test]
    fn the_shipped_mysql_account_has_one_note_for_its_procedures() {
        let mut grants = vec![
            "GRANT USAGE ON *.* TO `wasm_broker_mysql`@`%` IDENTIFIED BY PASSWORD '*AC'".to_owned(),
            "GRANT ALL PRIVILEGES ON `db________________`.* TO `wasm_broker_mysql`@`%`".to_owned(),
        ];
        for procedure in [
            "create_user",
            "alter_user",
            "grant_database",
            "drop_user",
            "kill_user",
        ] {
            grants.push(format!(
                "GRANT EXECUTE ON PROCEDURE `wasm_broker`.`{procedure}` TO `wasm_broker_mysql`@`%`"
            ));
        }
        let rights = mysql_rights(&grants);
        assert!(rights.excess.is_empty(), "{rights:?}");
        assert_eq!(rights.notes, [WASM_BROKER_PROCEDURES], "{rights:?}");
    }

    #[test]
    fn reading_the_mysql_schema_is_excess() {
        let rights = mysql_rights(&lines(&["GRANT SELECT ON `mysql`.* TO `x`@`%`"]));
        assert_eq!(rights.excess.len(), 1, "{rights:?}");
    }

    #[test]
    fn rabbitmq_administrators_get_a_note_not_a_warning() {
        for whoami in [
            serde_json::json!({"name": "guest", "tags": ["administrator"]}),
            serde_json::json!({"name": "old", "tags": "administrator,management"}),
        ] {
            let rights = rabbitmq_rights(&whoami);
            assert!(rights.excess.is_empty());
            assert_eq!(rights.notes.len(), 1, "{whoami}");
        }
        assert_eq!(
            rabbitmq_rights(&serde_json::json!({"name": "m", "tags": ["monitoring"]})),
            Rights::default()
        );
    }

    #[test]
    fn reports_name_plugin_and_connection_and_never_a_url() {
        let report = Report {
            grant: Grant {
                plugin: "mysql".to_owned(),
                alias: "admin".to_owned(),
                connection: "mariadb".to_owned(),
            },
            rights: Ok(Rights {
                excess: vec!["holds FILE".to_owned()],
                notes: vec![],
            }),
        };
        let warning = report.warning().expect("a warning");
        assert!(
            warning.contains("plugin mysql, connection mariadb (alias admin)"),
            "{warning}"
        );
        let unchecked = Report {
            rights: Err(ProbeError::TimedOut),
            ..report
        };
        assert_eq!(unchecked.warning(), None);
        assert!(
            unchecked.lines()[0].starts_with("could not check"),
            "{:?}",
            unchecked.lines()
        );
    }
}
