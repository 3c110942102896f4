//! `broker.toml`: what the operator decides. Every section has defaults that
//! work on a developer machine, so an empty file is a valid configuration.
//! Relative paths are resolved against the directory of the config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use crate::policy::{Family, Grant, GrantPolicy};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid broker.toml: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub state: StateConfig,
    pub runtime: RuntimeConfig,
    /// Named backend connections, e.g. `[connections.mariadb]`. Only the host
    /// reads them; plugins refer to them by the alias they are granted.
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// Per-plugin grants, limits and settings, keyed by the plugin's file
    /// stem (`mysql.wasm` -> `[plugins.mysql]`): the operator names the
    /// plugin, so a plugin cannot claim another one's grants.
    pub plugins: BTreeMap<String, PluginConfig>,
}

/// What the broker answers when `X-Broker-API-Version` is missing. The spec
/// suggests 400; the conformance suites expect 412.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum MissingVersionStatus {
    #[serde(rename = "400")]
    BadRequest,
    #[default]
    #[serde(rename = "412")]
    PreconditionFailed,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Oldest `X-Broker-API-Version` served (`MAJOR.MINOR`); older gets 412.
    pub min_api_version: String,
    pub missing_version_status: MissingVersionStatus,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// `[server.tls]`: serve HTTPS instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    /// A new connection must have sent a request's headers (and finished
    /// its TLS handshake) within this long, or it is closed.
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request under way is closed after
    /// this long (longer than a load balancer's idle timeout, so that the
    /// balancer closes first).
    pub idle_timeout_ms: u64,
    /// Connections open at once. At the cap the connection idle longest is
    /// closed to make room; if every one is busy, a few more are taken for
    /// the probes only. Keep it well below the open-file limit.
    pub max_connections: usize,
}

/// The certificate (chain) and private key the HTTPS listener presents.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the server certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            min_api_version: "2.13".to_owned(),
            missing_version_status: MissingVersionStatus::default(),
            max_body_bytes: 1024 * 1024,
            tls: None,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            max_connections: 512,
        }
    }
}

/// HTTP basic auth of the platform. `WASM_BROKER_USERNAME` and
/// `WASM_BROKER_PASSWORD` override the file, so the password can live in a
/// secret store instead of broker.toml.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
}

/// Where the state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// An embedded file: one broker process.
    #[default]
    Sqlite,
    /// A PostgreSQL database: any number of broker processes (replicas)
    /// sharing it serve as one broker.
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// SQLite database file (`backend = "sqlite"`).
    pub path: PathBuf,
    /// PostgreSQL connection URL (`backend = "postgres"`),
    /// `postgres://user:password@host:5432/database`. The variable named by
    /// `url_env` overrides it, so the password can stay out of the file.
    pub url: Option<SecretString>,
    pub url_env: String,
    /// PostgreSQL: a replica that has not renewed its lease for this long is
    /// taken for dead, and the other replicas fail the synchronous plugin
    /// calls it had under way. Longer than any pause a live replica may
    /// have (a stalled database connection), shorter than the platform's
    /// patience with an operation that will never finish.
    pub replica_lease_seconds: u64,
    /// Encrypts service binding credentials at rest: 32 bytes in base64
    /// (`wasm-broker generate-key`). The variable named by
    /// `encryption_key_env` overrides it, so the key can stay out of the file.
    pub encryption_key: Option<SecretString>,
    pub encryption_key_env: String,
    /// Keys that only decrypt: during a rotation, the keys credentials may
    /// still be encrypted with. The variable named by
    /// `previous_encryption_keys_env` (comma-separated) overrides them.
    pub previous_encryption_keys: Vec<SecretString>,
    pub previous_encryption_keys_env: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::Sqlite,
            path: PathBuf::from("state/broker.db"),
            url: None,
            url_env: "WASM_BROKER_STATE_URL".to_owned(),
            replica_lease_seconds: 30,
            encryption_key: None,
            encryption_key_env: "WASM_BROKER_ENCRYPTION_KEY".to_owned(),
            previous_encryption_keys: Vec::new(),
            previous_encryption_keys_env: "WASM_BROKER_PREVIOUS_ENCRYPTION_KEYS".to_owned(),
        }
    }
}

impl StateConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.backend == StateBackend::Postgres && self.url.is_none() {
            return Err(ConfigError::Invalid(format!(
                "[state] backend = \"postgres\" needs url (or {})",
                self.url_env
            )));
        }
        if self.replica_lease_seconds == 0 {
            return Err(ConfigError::Invalid(
                "[state] replica_lease_seconds must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Limits for one plugin call. Global defaults in `[runtime]`, overridable
/// per plugin in `[plugins.<name>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    pub memory_limit_mb: Option<u64>,
    pub call_timeout_ms: Option<u64>,
    pub max_host_call_bytes: Option<u64>,
    pub max_log_bytes_per_call: Option<u64>,
    pub max_log_lines_per_call: Option<u64>,
    pub kv_max_keys: Option<u64>,
    pub kv_max_bytes: Option<u64>,
    /// Overrides `[runtime] max_concurrent_calls_per_plugin`.
    pub max_concurrent_calls: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Linear memory a plugin instance may grow to.
    pub memory_limit_mb: u64,
    /// Wall-clock deadline of one call, enforced by epoch interruption, so a
    /// looping plugin is stopped even when it never calls the host.
    pub call_timeout_ms: u64,
    /// Largest statement, parameter, request body or result that crosses the
    /// sandbox boundary in one host call.
    pub max_host_call_bytes: u64,
    /// What one call may write to the host log (the `log` import, stdout
    /// and stderr together); past either, one notice and nothing more.
    pub max_log_bytes_per_call: u64,
    pub max_log_lines_per_call: u64,
    /// The plugin's kv store: keys, and bytes of keys and values as stored.
    pub kv_max_keys: u64,
    pub kv_max_bytes: u64,
    /// Calls of the plugin running at once; more wait for one to finish.
    pub max_concurrent_calls: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Every `*.wasm` here is a plugin; the directory is watched.
    pub plugin_dir: PathBuf,
    /// Compiled plugin code, so a restart does not recompile.
    pub cache_dir: PathBuf,
    pub memory_limit_mb: u64,
    pub call_timeout_ms: u64,
    pub max_host_call_bytes: u64,
    /// Plugin instances alive at once across all plugins (pooling allocator).
    pub max_concurrent_instances: u32,
    /// Deadline of a plugin's `describe` and `catalog` calls when it is
    /// loaded (at most its call_timeout_ms), so one that loops cannot hold
    /// up loading the others.
    pub catalog_timeout_ms: u64,
    pub max_log_bytes_per_call: u64,
    pub max_log_lines_per_call: u64,
    pub kv_max_keys: u64,
    pub kv_max_bytes: u64,
    /// Calls of one plugin running at once, so one plugin cannot take every
    /// instance slot; `max_concurrent_calls` in `[plugins.<name>]` overrides.
    pub max_concurrent_calls_per_plugin: u32,
    /// Guest memory all calls running at once may reserve: each call
    /// reserves its plugin's `memory_limit_mb` before it starts, and waits
    /// (at most its deadline) while the budget is taken.
    pub max_total_memory_mb: u64,
    /// The code generator plugins are compiled with (a restart applies it).
    pub compiler: Compiler,
    /// What the compile worker may allocate (its data segment: heap and
    /// private writable mappings), so that a plugin file built to make
    /// the compiler allocate without end is refused instead of running the
    /// machine out of memory (a restart applies it). The 18 MiB Python
    /// example peaks at about 450 MB.
    pub compile_memory_mb: u64,
}

/// Below this the worker could not compile even a small plugin.
pub const MIN_COMPILE_MEMORY_MB: u64 = 64;

/// wasmtime's two code generators (both tier 1 on x86_64). One engine
/// holds one, so the choice is the broker's, not a plugin's.
///
/// Winch is the default. Measured on 2 cores (`bench/README.md`): the
/// 18 MiB Python example dropped into an empty cache serves 2.0 to 2.5 s
/// later with Winch, 8 to 9 s with Cranelift; its calls take the same time
/// under both (2.3 ms), and a fresh-instance call of a Rust plugin is
/// faster under Winch (no-op 12.0 against 17.9 us p50, echo 29 against
/// 44 us): a plugin call is mostly instantiating and waiting on the
/// backend, not running optimised code. Cranelift is for plugins that
/// compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compiler {
    /// Optimising: 4x slower to compile, faster code for plugins that
    /// compute.
    Cranelift,
    /// Baseline: compiles in one pass.
    #[default]
    Winch,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            plugin_dir: PathBuf::from("plugins/dist"),
            cache_dir: PathBuf::from("state/compiled"),
            memory_limit_mb: 64,
            call_timeout_ms: 10_000,
            max_host_call_bytes: crate::limits::DEFAULT_MAX_HOST_CALL_BYTES,
            max_concurrent_instances: 256,
            catalog_timeout_ms: 2_000,
            max_log_bytes_per_call: 1024 * 1024,
            max_log_lines_per_call: 1000,
            kv_max_keys: 10_000,
            kv_max_bytes: 64 * 1024 * 1024,
            max_concurrent_calls_per_plugin: 32,
            max_total_memory_mb: 4096,
            compiler: Compiler::default(),
            compile_memory_mb: 2048,
        }
    }
}

impl RuntimeConfig {
    /// The limits for a plugin: its own overrides, else the global defaults.
    pub fn limits_for(&self, overrides: &LimitOverrides) -> CallLimits {
        CallLimits {
            memory_limit_mb: overrides.memory_limit_mb.unwrap_or(self.memory_limit_mb),
            call_timeout_ms: overrides.call_timeout_ms.unwrap_or(self.call_timeout_ms),
            max_host_call_bytes: overrides
                .max_host_call_bytes
                .unwrap_or(self.max_host_call_bytes),
            max_log_bytes_per_call: overrides
                .max_log_bytes_per_call
                .unwrap_or(self.max_log_bytes_per_call),
            max_log_lines_per_call: overrides
                .max_log_lines_per_call
                .unwrap_or(self.max_log_lines_per_call),
            kv_max_keys: overrides.kv_max_keys.unwrap_or(self.kv_max_keys),
            kv_max_bytes: overrides.kv_max_bytes.unwrap_or(self.kv_max_bytes),
            max_concurrent_calls: overrides
                .max_concurrent_calls
                .unwrap_or(self.max_concurrent_calls_per_plugin),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Mysql,
    Postgres,
    Redis,
    Http,
    /// Byte streams to `tcp://host:port` or `tls://host:port` endpoints.
    Tcp,
}

impl ConnectionKind {
    /// Which policy keys apply to a grant of such a connection.
    pub fn family(self) -> Family {
        match self {
            Self::Mysql | Self::Postgres => Family::Sql,
            Self::Redis => Family::Redis,
            Self::Http => Family::Http,
            Self::Tcp => Family::Tcp,
        }
    }
}

/// A backend the host connects to on behalf of plugins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub kind: ConnectionKind,
    /// DSN or base URL, with admin credentials for SQL and Redis
    /// (`mysql://root@127.0.0.1:3306`, `redis://:pw@127.0.0.1:6379`).
    pub url: String,
    /// Name of an environment variable whose value replaces `url`, to keep
    /// secrets out of the file.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Basic-auth user and password the host adds to HTTP requests.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// Address applications are told to use, when it differs from the one
    /// the host uses (e.g. a DNS name instead of loopback).
    #[serde(default)]
    pub public_host: Option<String>,
    #[serde(default)]
    pub public_port: Option<u16>,
    /// Connections the host keeps open to this backend at most, for each
    /// plugin granted it (each has a pool of its own).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// `kind = "tcp"`: more `host:port` endpoints, tried in order after the
    /// url's when it does not accept (a cluster's other nodes).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `kind = "tcp"`: hand plugins the real username and password instead
    /// of placeholder tokens. Only for challenge-response protocols (SCRAM,
    /// nkeys) where the host cannot substitute the secret: every plugin
    /// granted this connection then holds the admin credentials.
    #[serde(default)]
    pub reveal_credentials: bool,
}

fn default_max_connections() -> u32 {
    4
}

impl ConnectionConfig {
    /// The URL with `url_env` applied.
    pub fn effective_url(&self) -> String {
        self.url_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok())
            .unwrap_or_else(|| self.url.clone())
    }

    /// The password with `password_env` applied.
    pub fn effective_password(&self) -> Option<String> {
        self.password_env
            .as_deref()
            .and_then(|name| std::env::var(name).ok())
            .or_else(|| self.password.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(from = "RawPluginConfig")]
pub struct PluginConfig {
    /// Connections this plugin may use: alias the plugin asks for -> name of
    /// a `[connections.<name>]` section. Nothing else is reachable.
    pub connections: BTreeMap<String, String>,
    /// The policy of each grant that declares one (the table form of a
    /// grant), by alias; see [`crate::policy`].
    pub policies: BTreeMap<String, GrantPolicy>,
    pub limits: LimitOverrides,
    /// Free-form settings the plugin reads through the `config` import.
    pub config: toml::Table,
}

/// `[plugins.<name>]` as written: a grant is a connection name or a table
/// with a policy (`admin = { connection = "redis", commands = [...] }`).
// No `deny_unknown_fields`: serde does not support it together with `flatten`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPluginConfig {
    connections: BTreeMap<String, Grant>,
    #[serde(flatten)]
    limits: LimitOverrides,
    config: toml::Table,
}

impl From<RawPluginConfig> for PluginConfig {
    fn from(raw: RawPluginConfig) -> Self {
        let mut connections = BTreeMap::new();
        let mut policies = BTreeMap::new();
        for (alias, grant) in raw.connections {
            if grant.policy != GrantPolicy::default() {
                policies.insert(alias.clone(), grant.policy);
            }
            connections.insert(alias, grant.connection);
        }
        Self {
            connections,
            policies,
            limits: raw.limits,
            config: raw.config,
        }
    }
}

impl Config {
    /// Reads and validates a config file; relative paths become relative to
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.apply_env();
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let tls_paths = self
            .server
            .tls
            .iter_mut()
            .flat_map(|tls| [&mut tls.cert, &mut tls.key]);
        for path in [
            &mut self.state.path,
            &mut self.runtime.plugin_dir,
            &mut self.runtime.cache_dir,
        ]
        .into_iter()
        .chain(tls_paths)
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    fn apply_env(&mut self) {
        if let Ok(username) = std::env::var("WASM_BROKER_USERNAME") {
            self.auth.username = username;
        }
        if let Ok(password) = std::env::var("WASM_BROKER_PASSWORD") {
            self.auth.password = password;
        }
        // Empty counts as unset: an unfilled secret in a deployment template
        // must not replace a key with nothing.
        let non_empty_env = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        if let Some(url) = non_empty_env(&self.state.url_env) {
            self.state.url = Some(url.into());
        }
        if let Some(key) = non_empty_env(&self.state.encryption_key_env) {
            self.state.encryption_key = Some(key.into());
        }
        if let Some(keys) = non_empty_env(&self.state.previous_encryption_keys_env) {
            self.state.previous_encryption_keys = keys
                .split(',')
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(SecretString::from)
                .collect();
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.username.is_empty() || self.auth.password.is_empty() {
            return Err(ConfigError::Invalid(
                "[auth] username and password must be set (or WASM_BROKER_USERNAME / WASM_BROKER_PASSWORD): \
                 OSB platforms authenticate every request"
                    .to_owned(),
            ));
        }
        if parse_api_version(&self.server.min_api_version).is_none() {
            return Err(ConfigError::Invalid(format!(
                "[server] min_api_version {:?} is not MAJOR.MINOR",
                self.server.min_api_version
            )));
        }
        if self.server.header_read_timeout_ms == 0
            || self.server.idle_timeout_ms == 0
            || self.server.max_connections == 0
        {
            return Err(ConfigError::Invalid(
                "[server] header_read_timeout_ms, idle_timeout_ms and max_connections must be at least 1"
                    .to_owned(),
            ));
        }
        self.state.validate()?;
        if self.runtime.compile_memory_mb < MIN_COMPILE_MEMORY_MB {
            return Err(ConfigError::Invalid(format!(
                "[runtime] compile_memory_mb must be at least {MIN_COMPILE_MEMORY_MB}"
            )));
        }
        if self.runtime.max_concurrent_calls_per_plugin == 0
            || self
                .plugins
                .values()
                .any(|plugin| plugin.limits.max_concurrent_calls == Some(0))
        {
            return Err(ConfigError::Invalid(
                "max_concurrent_calls_per_plugin and max_concurrent_calls must be at least 1"
                    .to_owned(),
            ));
        }
        for (plugin, plugin_config) in &self.plugins {
            for (alias, target) in &plugin_config.connections {
                let Some(connection) = self.connections.get(target) else {
                    return Err(ConfigError::Invalid(format!(
                        "[plugins.{plugin}] grants connection {alias:?} -> {target:?}, but there is no [connections.{target}]"
                    )));
                };
                let misplaced = plugin_config
                    .policies
                    .get(alias)
                    .map(|policy| policy.misplaced_keys(connection.kind.family()))
                    .unwrap_or_default();
                if !misplaced.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "[plugins.{plugin}] grant {alias:?}: {} does not apply to [connections.{target}] (kind = {:?})",
                        misplaced.join(", "),
                        connection.kind
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn plugin(&self, name: &str) -> PluginConfig {
        self.plugins.get(name).cloned().unwrap_or_default()
    }

    /// The connections granted to plugin `name` that hand it their real
    /// admin credentials (`reveal_credentials = true`): what `plugins list`
    /// and the startup log must say out loud.
    pub fn revealed_to(&self, name: &str) -> Vec<String> {
        let Some(plugin) = self.plugins.get(name) else {
            return Vec::new();
        };
        let mut revealed: Vec<String> = plugin
            .connections
            .values()
            .filter(|target| {
                self.connections
                    .get(*target)
                    .is_some_and(|connection| connection.reveal_credentials)
            })
            .cloned()
            .collect();
        revealed.sort();
        revealed.dedup();
        revealed
    }
}

/// `MAJOR.MINOR` -> (major, minor).
pub fn parse_api_version(text: &str) -> Option<(u32, u32)> {
    // Digits only: `u32::from_str` would also take "+17".
    let number = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (major, minor) = text.trim().split_once('.')?;
    Some((number(major)?, number(minor)?))
}

#[cfg(test)]
mod grant_tests;

#[cfg(test)]
mod tests;
