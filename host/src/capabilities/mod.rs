//! Host capabilities granted to plugins: one module per WIT interface.
//!
//! Each module owns its host struct (one per call, stored in
//! [`CallState`]) and an `add_to_linker` that links its interface with a
//! projection to that struct, so no capability sees another one's state.

pub mod config;
pub mod connections;
pub mod http;
pub mod kv;
pub mod log;
pub mod redis;
pub mod sql;

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::Linker;

use self::connections::{Connections, Grants};
use crate::runtime::CallState;
use crate::state::StateStore;

/// What one plugin may reach, resolved from its `[plugins.<name>]` section
/// when it loads. Every call builds fresh capability hosts from it, so no
/// state leaks from one call into the next.
#[derive(Debug, Clone)]
pub struct PluginGrants {
    /// The file stem: the name broker.toml and the kv namespace use, which
    /// the plugin cannot choose.
    plugin: Arc<str>,
    settings: Arc<config::Settings>,
    /// Alias the plugin asks for -> `[connections.<name>]`.
    connections: Arc<BTreeMap<String, String>>,
    max_host_call_bytes: u64,
}

/// Backends every plugin's calls share.
#[derive(Clone)]
pub struct SharedBackends {
    pub connections: Arc<Connections>,
    pub state: StateStore,
}

/// The capability hosts of one call, one per WIT import.
pub struct CallHosts {
    pub log: log::LogHost,
    pub config: config::ConfigHost,
    pub kv: kv::KvHost,
    pub sql: sql::SqlHost,
    pub redis: redis::RedisHost,
    pub http: http::HttpHost,
}

impl PluginGrants {
    pub fn new(
        plugin: &str,
        plugin_config: &crate::config::PluginConfig,
        max_host_call_bytes: u64,
    ) -> Self {
        Self {
            plugin: Arc::from(plugin),
            settings: Arc::new(config::Settings::from_table(&plugin_config.config)),
            connections: Arc::new(plugin_config.connections.clone()),
            max_host_call_bytes,
        }
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// `request_identity` tags the plugin's log lines, so they can be
    /// correlated with the platform's request.
    pub fn hosts(&self, backends: &SharedBackends, request_identity: Option<&str>) -> CallHosts {
        let limit = self.max_host_call_bytes;
        let grants = Grants::new(backends.connections.clone(), self.connections.clone());
        CallHosts {
            log: log::LogHost::new(self.plugin.clone(), request_identity.map(str::to_owned)),
            config: config::ConfigHost::new(self.settings.clone()),
            kv: kv::KvHost::new(backends.state.clone(), self.plugin.clone(), limit),
            sql: sql::SqlHost::new(grants.clone(), limit),
            redis: redis::RedisHost::new(grants.clone(), limit),
            http: http::HttpHost::new(grants, limit),
        }
    }
}

/// Links every capability interface of the `service-plugin` world.
pub fn add_all_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    log::add_to_linker(linker)?;
    config::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    sql::add_to_linker(linker)?;
    redis::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    Ok(())
}
