//! Each plugin's own share of a connection: its SQL pool, its Redis, HTTP
//! and TCP permits. A connection granted to several plugins gives each of them
//! `max_connections` of its own, so a plugin that holds all of its
//! connections (four `SELECT SLEEP(9)`, four blocking `BLPOP`s) makes only
//! its own calls wait. A grant (`SqlGrant`, ...) is the connection as one
//! plugin's call sees it: the plugin's share, the rest of the connection
//! through `Deref`.
//!
//! SQL sessions are never handed from one call to the next with state in
//! them. PostgreSQL runs `DISCARD ALL` when a connection returns to its
//! pool (role, `search_path`, settings, temporary tables, prepared
//! statements, advisory locks, LISTEN). MySQL/MariaDB's equivalent is the
//! protocol command `COM_RESET_CONNECTION`, which sqlx cannot send, and no
//! SQL statement resets everything (`SET SESSION old_passwords = 1`, user
//! variables, `SET ROLE`, `USE`, temporary tables, `SET SESSION
//! sql_mode`...): so a MySQL connection serves one statement and is closed.
//! Opening one costs the handshake and sqlx's session setup, a few round
//! trips (on loopback, `mysqlslap --detach=1` showed no measurable cost per
//! statement): little beside what a plugin call does.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection as _, Executor};
use tokio::sync::Semaphore;

use super::relay::ServerTls;
use super::{ACQUIRE_TIMEOUT, HttpConnection, RedisConnection, Relay, SqlConnection, SqlPool};

/// One `T` per plugin, made on the plugin's first use. Kept as long as the
/// connection: a broker.toml change that leaves the connection unchanged
/// keeps every plugin's share (pool included); plugins removed leave an
/// idle pool behind, whose connections sqlx closes after its idle timeout.
pub(crate) struct PerPlugin<T> {
    by_plugin: Mutex<HashMap<Arc<str>, T>>,
}

impl<T> Default for PerPlugin<T> {
    fn default() -> Self {
        Self {
            by_plugin: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> PerPlugin<T> {
    pub(crate) fn get(&self, plugin: &Arc<str>, make: impl FnOnce() -> T) -> T {
        // Nothing in the map can be left half-updated by a panic.
        let mut by_plugin = self
            .by_plugin
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_plugin.entry(plugin.clone()).or_insert_with(make).clone()
    }
}

/// How to connect to an SQL backend; each plugin's pool connects with it.
pub(crate) enum SqlOptions {
    Mysql(MySqlConnectOptions),
    Postgres(PgConnectOptions),
}

impl SqlConnection {
    /// Connects lazily; must run inside a Tokio runtime (sqlx spawns the
    /// pool's maintenance task), as every plugin call does.
    fn new_pool(&self) -> SqlPool {
        match &self.options {
            SqlOptions::Mysql(options) => SqlPool::Mysql(
                MySqlPoolOptions::new()
                    .max_connections(self.max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    // Closed after each statement: see the module comment.
                    // This also ends a transaction a statement left open.
                    .after_release(|_, _| Box::pin(async { Ok(false) }))
                    .connect_lazy_with(options.clone()),
            ),
            SqlOptions::Postgres(options) => {
                let relay = start_relay(options);
                let options = match &relay {
                    // Where the relay does the TLS there is, sqlx talks plain
                    // text to it, over the private socket.
                    Some((relay, tls)) if tls.relay_ends_tls() => options
                        .clone()
                        .socket(relay.directory())
                        .ssl_mode(PgSslMode::Disable),
                    Some((relay, _)) => options.clone().socket(relay.directory()),
                    None => options.clone(),
                };
                let relay = relay.map(|(relay, _)| relay);
                SqlPool::Postgres(
                    PgPoolOptions::new()
                        .max_connections(self.max_connections)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .after_release(|connection, _| {
                            Box::pin(async move {
                                // DISCARD ALL deallocates the prepared statements
                                // sqlx has cached: forget them first. Inside a
                                // transaction block (a BEGIN left open, or an
                                // aborted one) DISCARD ALL fails: the connection
                                // is then closed instead of reused. Ok(false), not
                                // the error: sqlx's error path (a hard close) at
                                // times left the pool's place taken until the
                                // acquire timeout.
                                if connection.clear_cached_statements().await.is_err() {
                                    return Ok(false);
                                }
                                Ok(connection.execute("DISCARD ALL").await.is_ok())
                            })
                        })
                        .connect_lazy_with(options),
                    relay,
                )
            }
        }
    }
}

/// The relay of a new PostgreSQL pool, allowing the default data limit until
/// the first statement sets its own; `None` for a server on a Unix socket
/// (nothing to relay: it is this machine's) or when it cannot start (logged:
/// the pool then connects directly, without the bound).
fn start_relay(options: &PgConnectOptions) -> Option<(Arc<Relay>, ServerTls)> {
    if options.get_socket().is_some() || options.get_host().starts_with('/') {
        return None;
    }
    let tls = match options.get_ssl_mode() {
        PgSslMode::Disable | PgSslMode::Allow => ServerTls::Plain,
        PgSslMode::Prefer => ServerTls::Prefer,
        PgSslMode::Require => ServerTls::Require,
        PgSslMode::VerifyCa | PgSslMode::VerifyFull => ServerTls::Passthrough,
    };
    let allowance = super::relay::wire_allowance(crate::limits::DEFAULT_MAX_HOST_CALL_BYTES);
    match Relay::start(
        options.get_host().to_owned(),
        options.get_port(),
        tls,
        allowance,
    ) {
        Ok(relay) => Some((Arc::new(relay), tls)),
        Err(error) => {
            tracing::warn!(%error, "no PostgreSQL relay: answers are not bounded while read");
            None
        }
    }
}

/// An SQL connection as one plugin's call sees it: the plugin's own pool.
pub(crate) struct SqlGrant<'a> {
    pub pool: SqlPool,
    connection: &'a SqlConnection,
}

impl<'a> SqlGrant<'a> {
    pub(super) fn new(connection: &'a SqlConnection, plugin: &Arc<str>) -> Self {
        Self {
            pool: connection.pools.get(plugin, || connection.new_pool()),
            connection,
        }
    }
}

impl Deref for SqlGrant<'_> {
    type Target = SqlConnection;

    fn deref(&self) -> &SqlConnection {
        self.connection
    }
}

/// A Redis connection as one plugin's call sees it: the plugin's permits.
pub(crate) struct RedisGrant<'a> {
    pub(super) permits: Arc<Semaphore>,
    connection: &'a RedisConnection,
}

impl<'a> RedisGrant<'a> {
    pub(super) fn new(connection: &'a RedisConnection, plugin: &Arc<str>) -> Self {
        Self {
            permits: connection.permits.get(plugin, || {
                Arc::new(Semaphore::new(connection.max_connections))
            }),
            connection,
        }
    }
}

impl Deref for RedisGrant<'_> {
    type Target = RedisConnection;

    fn deref(&self) -> &RedisConnection {
        self.connection
    }
}

/// An HTTP connection as one plugin's call sees it: the plugin's permits.
pub(crate) struct HttpGrant<'a> {
    pub permits: Arc<Semaphore>,
    connection: &'a HttpConnection,
}

impl<'a> HttpGrant<'a> {
    pub(super) fn new(connection: &'a HttpConnection, plugin: &Arc<str>) -> Self {
        Self {
            permits: connection.plugin_permits.get(plugin, || {
                Arc::new(Semaphore::new(connection.max_connections))
            }),
            connection,
        }
    }
}

impl Deref for HttpGrant<'_> {
    type Target = HttpConnection;

    fn deref(&self) -> &HttpConnection {
        self.connection
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Connections, Grants};
    use super::*;
    use crate::config::ConnectionConfig;

    fn tables(text: &str) -> BTreeMap<String, ConnectionConfig> {
        toml::from_str(text).expect("valid connection tables")
    }

    fn grants_of(connections: &Arc<Connections>, plugin: &str) -> Grants {
        let aliases = BTreeMap::from([
            ("api".to_owned(), "api".to_owned()),
            ("cache".to_owned(), "cache".to_owned()),
        ]);
        Grants::new(connections.clone(), Arc::new(aliases)).of_plugin(Arc::from(plugin))
    }

    #[tokio::test]
    async fn each_plugin_has_its_own_permits_kept_across_a_reload() {
        let config = tables(
            "[api]\nkind = 'http'\nurl = 'http://127.0.0.1:1'\nmax_connections = 3\n\
             [cache]\nkind = 'redis'\nurl = 'redis://127.0.0.1:1'\n",
        );
        let old = Arc::new(Connections::from_config(&config).expect("valid"));
        let (a, b) = (grants_of(&old, "a"), grants_of(&old, "b"));
        let http = |grants: &Grants| grants.http("api").expect("granted").permits.clone();
        let redis = |grants: &Grants| grants.redis("cache").expect("granted").1.permits.clone();
        assert!(
            Arc::ptr_eq(&http(&a), &http(&a)),
            "a plugin's calls share its permits"
        );
        assert!(
            !Arc::ptr_eq(&http(&a), &http(&b)),
            "plugins do not share permits"
        );
        assert!(!Arc::ptr_eq(&redis(&a), &redis(&b)));
        assert_eq!(http(&b).available_permits(), 3, "max_connections each");

        let (new, changes) = old.reconfigured(&config).expect("valid");
        assert!(changes.is_empty());
        let reloaded = grants_of(&Arc::new(new), "a");
        assert!(
            Arc::ptr_eq(&http(&a), &http(&reloaded)),
            "an unchanged connection keeps each plugin's share"
        );
    }
}
