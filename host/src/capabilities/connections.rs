//! The backends broker.toml names (`[connections.<name>]`), opened once at
//! startup and shared by every plugin call. A plugin never sees a DSN, a URL
//! or a password: it names an alias, and [`Grants`] resolves the alias to a
//! connection only if the plugin's `[plugins.<name>.connections]` table maps it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

pub(crate) use self::relay::{Relay, wire_allowance as sql_wire_allowance};
pub(crate) use self::shares::PerPlugin;
use self::shares::SqlOptions;
pub(crate) use self::shares::{HttpGrant, RedisGrant, SqlGrant};
use super::redis::ReplyMeter;
use super::tcp::TcpConnection;
use crate::config::{ConnectionConfig, ConnectionKind};
use crate::policy::GrantPolicy;

mod relay;
mod shares;
mod stale_relays;

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

/// The connections of one plugin to an SQL backend. A PostgreSQL pool
/// reaches its server through a [`Relay`] of its own (`None` when it could
/// not start, or the server is on a Unix socket), which bounds what one
/// answer may make the host buffer; MySQL's server bounds that itself
/// (`max_allowed_packet`).
#[derive(Clone)]
pub(crate) enum SqlPool {
    Mysql(MySqlPool),
    Postgres(PgPool, Option<Arc<Relay>>),
}

/// An SQL backend. Every plugin granted it gets a pool of its own, of
/// `max_connections`, made on the plugin's first statement: a plugin that
/// holds all of its connections (`SELECT SLEEP(...)` on each) makes only
/// its own calls wait, and no session ever passes from one plugin to
/// another. (See `shares` for how a session is reset between calls.)
pub(crate) struct SqlConnection {
    options: SqlOptions,
    max_connections: u32,
    pools: PerPlugin<SqlPool>,
    pub address: PublicAddress,
}

pub(crate) struct RedisConnection {
    client: redis::Client,
    /// One permit per open connection, per plugin: each plugin call gets a
    /// connection of its own (see [`RedisGrant::open`]), and
    /// `max_connections` bounds how many exist at once for each plugin, so
    /// one plugin's blocked commands never hold another's.
    max_connections: usize,
    permits: PerPlugin<Arc<Semaphore>>,
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
    /// One permit per request in flight, per plugin, so at most
    /// `max_connections` connections to the service are open for each plugin
    /// and one plugin's slow requests never hold another's.
    max_connections: usize,
    plugin_permits: PerPlugin<Arc<Semaphore>>,
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
        // Statement logging is off: plugin DDL carries generated passwords
        // (`CREATE USER ... IDENTIFIED BY '...'`).
        let (options, host, port) = if config.kind == ConnectionKind::Mysql {
            let options = MySqlConnectOptions::from_url(url)
                .map_err(|error| invalid_url(name, error))?
                .disable_statement_logging();
            let (host, port) = (options.get_host().to_owned(), options.get_port());
            (SqlOptions::Mysql(options), host, port)
        } else {
            let options = PgConnectOptions::from_url(url)
                .map_err(|error| invalid_url(name, error))?
                .disable_statement_logging();
            let (host, port) = (options.get_host().to_owned(), options.get_port());
            (SqlOptions::Postgres(options), host, port)
        };
        Ok(Self {
            address: public_address(name, config, Some(&host), port)?,
            options,
            max_connections: config.max_connections,
            pools: PerPlugin::default(),
        })
    }
}

impl SqlConnection {
    /// `plugin`'s pool of this connection (made on first use): for host
    /// work outside a plugin call, such as the grants' probe.
    pub(crate) fn pool_of(&self, plugin: &Arc<str>) -> SqlPool {
        SqlGrant::new(self, plugin).pool
    }
}

impl RedisConnection {
    /// This connection with `plugin`'s permits: for host work outside a
    /// plugin call, such as the grants' probe.
    pub(crate) fn grant_to(&self, plugin: &Arc<str>) -> RedisGrant<'_> {
        RedisGrant::new(self, plugin)
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
        Ok(Self {
            client,
            max_connections: permit_count(config.max_connections),
            permits: PerPlugin::default(),
            address,
            tls,
        })
    }
}

impl RedisConnection {
    /// The user the host logs in as (`default` when the url names none).
    pub(crate) fn username(&self) -> &str {
        self.client
            .get_connection_info()
            .redis
            .username
            .as_deref()
            .unwrap_or("default")
    }
}

impl RedisGrant<'_> {
    /// A new connection for one plugin call. Commands may change the state of
    /// the connection they run on (SELECT, MULTI, CLIENT REPLY ...), so calls
    /// never share one; the permit is held as long as the connection lives.
    /// `meter` bounds what each reply may read.
    pub(crate) async fn open(
        &self,
        meter: &ReplyMeter,
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
        let connection = meter
            .connect(&self.client, config)
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
            max_connections: permit_count(config.max_connections),
            plugin_permits: PerPlugin::default(),
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
    /// The policy of each alias that declares one (`crate::policy`).
    policies: Arc<BTreeMap<String, GrantPolicy>>,
    /// The plugin's file stem: whose pool and permits its calls use.
    plugin: Arc<str>,
}

/// The policy of an alias granted without one.
static NO_POLICY: GrantPolicy = GrantPolicy::NONE;

impl std::fmt::Debug for Grants {
    /// The aliases only: a connection holds secrets.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Grants")
            .field("aliases", &self.aliases)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl Grants {
    pub fn new(connections: Arc<Connections>, aliases: Arc<BTreeMap<String, String>>) -> Self {
        Self {
            connections,
            aliases,
            plugin: Arc::from(""),
            policies: Arc::default(),
        }
    }

    /// These grants as plugin `plugin`'s: its calls use its own pools and
    /// permits of each connection.
    pub fn of_plugin(self, plugin: Arc<str>) -> Self {
        Self { plugin, ..self }
    }

    /// Whose pools and permits the calls use.
    pub(crate) fn plugin(&self) -> &Arc<str> {
        &self.plugin
    }

    /// The same grants, with the policy of each alias that declares one.
    pub fn with_policies(self, policies: Arc<BTreeMap<String, GrantPolicy>>) -> Self {
        Self { policies, ..self }
    }

    /// What broker.toml lets the plugin do through `alias`.
    pub(crate) fn policy(&self, alias: &str) -> &GrantPolicy {
        self.policies.get(alias).unwrap_or(&NO_POLICY)
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

    pub(crate) fn sql(&self, alias: &str) -> Result<SqlGrant<'_>, String> {
        match self.resolve(alias)? {
            (_, Connection::Sql(sql)) => Ok(SqlGrant::new(sql, &self.plugin)),
            (_, other) => Err(wrong_kind(alias, other, "an SQL")),
        }
    }

    /// The Redis connection and its broker.toml name, which tells apart two
    /// aliases of one connection.
    pub(crate) fn redis(&self, alias: &str) -> Result<(&str, RedisGrant<'_>), String> {
        match self.resolve(alias)? {
            (name, Connection::Redis(redis)) => Ok((name, RedisGrant::new(redis, &self.plugin))),
            (_, other) => Err(wrong_kind(alias, other, "a Redis")),
        }
    }

    pub(crate) fn http(&self, alias: &str) -> Result<HttpGrant<'_>, String> {
        match self.resolve(alias)? {
            (_, Connection::Http(http)) => Ok(HttpGrant::new(http, &self.plugin)),
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
