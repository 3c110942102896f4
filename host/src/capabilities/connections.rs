//! The backends broker.toml names (`[connections.<name>]`), opened once at
//! startup and shared by every plugin call. A plugin never sees a DSN, a URL
//! or a password: it names an alias, and [`Grants`] resolves the alias to a
//! connection only if the plugin's `[plugins.<name>.connections]` table maps it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use super::tcp::TcpConnection;
use crate::config::{ConnectionConfig, ConnectionKind};

/// How long a call waits for a free connection before it fails, so a burst of
/// calls reports "busy" instead of piling up behind the plugin deadline.
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a TCP (and TLS) connection to a backend may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Redis command or HTTP request may take end to end.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A `[connections.<name>]` section that cannot be used. Never carries the
/// URL itself: it may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("[connections.{connection}]: the url is not valid: {reason}")]
    InvalidUrl { connection: String, reason: String },
    #[error("[connections.{connection}]: {reason}")]
    Invalid { connection: String, reason: String },
}

/// Every configured backend, by its broker.toml name. A broker.toml change
/// builds a new set ([`Connections::reconfigured`]) that shares every
/// unchanged connection, pool included, with the old one; calls keep the set
/// their plugin was loaded with, so a change never alters a call in flight.
pub struct Connections {
    by_name: BTreeMap<String, Arc<Connection>>,
    /// What each connection was built from: an equal section reuses it.
    configs: BTreeMap<String, ConnectionConfig>,
}

/// Which connections a broker.toml change touched, by name (never a URL).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl ConnectionChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

pub(crate) enum Connection {
    Sql(SqlConnection),
    Redis(RedisConnection),
    Http(HttpConnection),
    Tcp(Arc<TcpConnection>),
}

impl Connection {
    fn kind_name(&self) -> &'static str {
        match self {
            Self::Sql(_) => "an SQL",
            Self::Redis(_) => "a Redis",
            Self::Http(_) => "an HTTP",
            Self::Tcp(_) => "a TCP",
        }
    }
}

/// Host and port applications are told to use; never credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicAddress {
    pub host: String,
    pub port: u16,
}

pub(crate) enum SqlPool {
    Mysql(MySqlPool),
    Postgres(PgPool),
}

pub(crate) struct SqlConnection {
    pub pool: SqlPool,
    pub address: PublicAddress,
}

pub(crate) struct RedisConnection {
    client: redis::Client,
    /// One permit per open connection: each plugin call gets a connection of
    /// its own (see [`RedisConnection::open`]), and `max_connections` bounds
    /// how many exist at once.
    permits: Arc<Semaphore>,
    pub address: PublicAddress,
    pub tls: bool,
}

pub(crate) struct HttpConnection {
    pub client: reqwest::Client,
    /// Scheme, host, port and path prefix every request stays below; no
    /// credentials, no query.
    pub base_url: Url,
    /// `base_url` with `public_host`/`public_port` applied, without the
    /// trailing slash.
    pub public_base_url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// One permit per request in flight, so at most `max_connections`
    /// connections to the service are open.
    pub permits: Semaphore,
}

impl Connections {
    /// Opens nothing yet: SQL pools and Redis connections connect on first
    /// use, so the broker starts even when a backend is down. Must run inside
    /// a Tokio runtime (the SQL pools spawn their maintenance tasks).
    pub fn from_config(
        configs: &BTreeMap<String, ConnectionConfig>,
    ) -> Result<Self, ConnectionError> {
        Self::empty()
            .reconfigured(configs)
            .map(|(connections, _)| connections)
    }

    fn empty() -> Self {
        Self {
            by_name: BTreeMap::new(),
            configs: BTreeMap::new(),
        }
    }

    /// The set `configs` describes, sharing with `self` every connection
    /// whose section is unchanged (its open pool too), and what changed.
    /// Fails, building nothing that outlives the call, if any section is
    /// invalid: a broker.toml change applies whole or not at all.
    pub fn reconfigured(
        &self,
        configs: &BTreeMap<String, ConnectionConfig>,
    ) -> Result<(Self, ConnectionChanges), ConnectionError> {
        let mut changes = ConnectionChanges::default();
        let mut by_name = BTreeMap::new();
        for (name, config) in configs {
            let connection = match (self.configs.get(name), self.by_name.get(name)) {
                (Some(old), Some(connection)) if old == config => connection.clone(),
                (old, _) => {
                    if old.is_some() {
                        changes.changed.push(name.clone());
                    } else {
                        changes.added.push(name.clone());
                    }
                    Arc::new(Connection::from_config(name, config)?)
                }
            };
            by_name.insert(name.clone(), connection);
        }
        changes.removed = self
            .configs
            .keys()
            .filter(|name| !configs.contains_key(*name))
            .cloned()
            .collect();
        let connections = Self {
            by_name,
            configs: configs.clone(),
        };
        Ok((connections, changes))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Connection> {
        self.by_name.get(name).map(Arc::as_ref)
    }
}

impl Connection {
    fn from_config(name: &str, config: &ConnectionConfig) -> Result<Self, ConnectionError> {
        let invalid = |reason: String| ConnectionError::Invalid {
            connection: name.to_owned(),
            reason,
        };
        if config.max_connections == 0 {
            return Err(invalid("max_connections must be at least 1".to_owned()));
        }
        let url =
            Url::parse(&config.effective_url()).map_err(|error| ConnectionError::InvalidUrl {
                connection: name.to_owned(),
                reason: error.to_string(),
            })?;
        match config.kind {
            ConnectionKind::Mysql | ConnectionKind::Postgres => {
                SqlConnection::from_url(name, config, &url).map(Self::Sql)
            }
            ConnectionKind::Redis => RedisConnection::from_url(name, config, url).map(Self::Redis),
            ConnectionKind::Http => HttpConnection::from_url(name, config, url).map(Self::Http),
            ConnectionKind::Tcp => {
                TcpConnection::from_url(name, config, &url).map(|tcp| Self::Tcp(Arc::new(tcp)))
            }
        }
    }
}

pub(crate) fn invalid_url(connection: &str, reason: impl ToString) -> ConnectionError {
    ConnectionError::InvalidUrl {
        connection: connection.to_owned(),
        reason: reason.to_string(),
    }
}

/// `public_host`/`public_port` where set, else what the host itself connects to.
pub(crate) fn public_address(
    connection: &str,
    config: &ConnectionConfig,
    host: Option<&str>,
    port: u16,
) -> Result<PublicAddress, ConnectionError> {
    let host = match (&config.public_host, host) {
        (Some(public), _) => public.clone(),
        (None, Some(host)) if !host.is_empty() && !host.starts_with('/') => host.to_owned(),
        (None, _) => {
            return Err(ConnectionError::Invalid {
                connection: connection.to_owned(),
                reason: "the url names no TCP host (a Unix socket?): set public_host and public_port so \
                         applications know where to connect"
                    .to_owned(),
            });
        }
    };
    Ok(PublicAddress {
        host,
        port: config.public_port.unwrap_or(port),
    })
}

impl SqlConnection {
    fn from_url(name: &str, config: &ConnectionConfig, url: &Url) -> Result<Self, ConnectionError> {
        let max_connections = config.max_connections;
        if config.kind == ConnectionKind::Mysql {
            // Statement logging is off: plugin DDL carries generated passwords
            // (`CREATE USER ... IDENTIFIED BY '...'`).
            let options = MySqlConnectOptions::from_url(url)
                .map_err(|error| invalid_url(name, error))?
                .disable_statement_logging();
            let address =
                public_address(name, config, Some(options.get_host()), options.get_port())?;
            let pool = MySqlPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // A plugin statement may leave a transaction open (BEGIN without
                // COMMIT); it must not leak into the next call on this connection.
                .after_release(|connection, _| {
                    Box::pin(async move {
                        connection.execute("ROLLBACK").await?;
                        Ok(true)
                    })
                })
                .connect_lazy_with(options);
            Ok(Self {
                pool: SqlPool::Mysql(pool),
                address,
            })
        } else {
            let options = PgConnectOptions::from_url(url)
                .map_err(|error| invalid_url(name, error))?
                .disable_statement_logging();
            let address =
                public_address(name, config, Some(options.get_host()), options.get_port())?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // As for MySQL, but a ROLLBACK outside a transaction makes
                // PostgreSQL log a warning on every call. Outside a transaction
                // block each statement is its own transaction, so its start
                // time equals the transaction's; otherwise the connection is
                // closed instead of reused.
                .after_release(|connection, _| {
                    Box::pin(async move {
                        sqlx::query_scalar::<_, bool>("SELECT now() = statement_timestamp()")
                            .fetch_one(connection)
                            .await
                    })
                })
                .connect_lazy_with(options);
            Ok(Self {
                pool: SqlPool::Postgres(pool),
                address,
            })
        }
    }
}

impl RedisConnection {
    fn from_url(name: &str, config: &ConnectionConfig, url: Url) -> Result<Self, ConnectionError> {
        let client = redis::Client::open(url).map_err(|error| invalid_url(name, error))?;
        let (host, port, tls) = match &client.get_connection_info().addr {
            redis::ConnectionAddr::Tcp(host, port) => (Some(host.as_str()), *port, false),
            redis::ConnectionAddr::TcpTls { host, port, .. } => (Some(host.as_str()), *port, true),
            redis::ConnectionAddr::Unix(_) => (None, 0, false),
        };
        let address = public_address(name, config, host, port)?;
        let permits = Arc::new(Semaphore::new(permit_count(config.max_connections)));
        Ok(Self {
            client,
            permits,
            address,
            tls,
        })
    }

    /// A new connection for one plugin call. Commands may change the state of
    /// the connection they run on (SELECT, MULTI, CLIENT REPLY ...), so calls
    /// never share one; the permit is held as long as the connection lives.
    pub async fn open(
        &self,
    ) -> Result<(redis::aio::MultiplexedConnection, OwnedSemaphorePermit), String> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                format!(
                    "all connections are busy (waited {} s)",
                    ACQUIRE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|_| "the connection is shutting down".to_owned())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(REQUEST_TIMEOUT);
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|error| format!("cannot connect: {error}"))?;
        Ok((connection, permit))
    }
}

impl HttpConnection {
    fn from_url(
        name: &str,
        config: &ConnectionConfig,
        mut url: Url,
    ) -> Result<Self, ConnectionError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid_url(
                name,
                "an http connection needs an http:// or https:// url",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid_url(
                name,
                "the base url of an http connection cannot have a query or a fragment",
            ));
        }
        // Credentials may come in the url (handy with `url_env`); the host sends
        // them as basic auth and keeps them out of every url it uses or shows.
        let url_username = Some(url.username())
            .filter(|user| !user.is_empty())
            .map(decode_userinfo);
        let url_password = url.password().map(decode_userinfo);
        let stripped = url.set_username("").is_ok() && url.set_password(None).is_ok();
        if !stripped {
            return Err(invalid_url(name, "the url cannot carry credentials"));
        }
        let username = config.username.clone().or(url_username);
        let password = config.effective_password().or(url_password);

        let mut public_url = url.clone();
        if let Some(host) = &config.public_host {
            public_url
                .set_host(Some(host))
                .map_err(|error| ConnectionError::Invalid {
                    connection: name.to_owned(),
                    reason: format!("public_host is not a valid host: {error}"),
                })?;
        }
        if let Some(port) = config.public_port {
            // Cannot fail: the scheme is http(s), which has a host and a port.
            let _ = public_url.set_port(Some(port));
        }
        let public_base_url = public_url.as_str().trim_end_matches('/').to_owned();

        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A redirect could lead anywhere; the plugin sees the 3xx instead.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(permit_count(config.max_connections))
            .build()
            .map_err(|error| ConnectionError::Invalid {
                connection: name.to_owned(),
                reason: format!("cannot build the HTTP client: {error}"),
            })?;
        Ok(Self {
            client,
            base_url: url,
            public_base_url,
            username,
            password,
            permits: Semaphore::new(permit_count(config.max_connections)),
        })
    }
}

pub(crate) fn decode_userinfo(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) fn permit_count(max_connections: u32) -> usize {
    usize::try_from(max_connections)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// The connections one plugin may use: its broker.toml grants (alias the
/// plugin asks for -> connection name) over the connections as they were
/// when the plugin was loaded. Both are shared, so handing a copy to each
/// capability of each call is cheap.
#[derive(Clone)]
pub struct Grants {
    connections: Arc<Connections>,
    aliases: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Grants {
    /// The aliases only: a connection holds secrets.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Grants")
            .field("aliases", &self.aliases)
            .finish_non_exhaustive()
    }
}

impl Grants {
    pub fn new(connections: Arc<Connections>, aliases: Arc<BTreeMap<String, String>>) -> Self {
        Self {
            connections,
            aliases,
        }
    }

    /// The connection name behind `alias` and the connection, or why the
    /// plugin may not use it (the message names only the alias).
    fn resolve(&self, alias: &str) -> Result<(&str, &Connection), String> {
        self.aliases
            .get(alias)
            .and_then(|name| Some((name.as_str(), self.connections.get(name)?)))
            .ok_or_else(|| {
                format!("connection {alias:?} is not granted to this plugin in broker.toml")
            })
    }

    pub(crate) fn sql(&self, alias: &str) -> Result<&SqlConnection, String> {
        match self.resolve(alias)? {
            (_, Connection::Sql(sql)) => Ok(sql),
            (_, other) => Err(wrong_kind(alias, other, "an SQL")),
        }
    }

    /// The Redis connection and its broker.toml name, which tells apart two
    /// aliases of one connection.
    pub(crate) fn redis(&self, alias: &str) -> Result<(&str, &RedisConnection), String> {
        match self.resolve(alias)? {
            (name, Connection::Redis(redis)) => Ok((name, redis)),
            (_, other) => Err(wrong_kind(alias, other, "a Redis")),
        }
    }

    pub(crate) fn http(&self, alias: &str) -> Result<&HttpConnection, String> {
        match self.resolve(alias)? {
            (_, Connection::Http(http)) => Ok(http),
            (_, other) => Err(wrong_kind(alias, other, "an HTTP")),
        }
    }
}

impl Grants {
    /// The TCP connection and its broker.toml name, which keys the call's
    /// placeholder tokens.
    pub(crate) fn tcp(&self, alias: &str) -> Result<(&str, &Arc<TcpConnection>), String> {
        match self.resolve(alias)? {
            (name, Connection::Tcp(tcp)) => Ok((name, tcp)),
            (_, other) => Err(wrong_kind(alias, other, "a TCP")),
        }
    }
}

fn wrong_kind(alias: &str, actual: &Connection, wanted: &str) -> String {
    format!(
        "connection {alias:?} granted in broker.toml is {} connection, not {wanted} one",
        actual.kind_name()
    )
}

#[cfg(test)]
pub(crate) mod tests;
