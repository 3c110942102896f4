//! Host capabilities granted to plugins: one module per WIT interface, each
//! behind the one trait [`Capability`], listed once in the registry below.
//!
//! A capability's host struct is built fresh for every call from a
//! [`CallContext`] and dropped with it, so no state leaks from one call into
//! the next. The registry gathers the hosts of one call in [`CallHosts`];
//! the runtime keeps that in its store and exposes it through
//! [`CapabilityView`], and [`add_all_to_linker`] links every interface with
//! a projection to its own host, so no capability sees another one's state
//! and none of them knows the runtime.
//!
//! Adding a capability:
//! 1. its interface in the WIT contract (`wit/`), imported by the
//!    `service-plugin` world, so [`crate::contract`] generates its `Host` trait;
//! 2. a module here with its host struct, the generated `Host` trait and
//!    [`Capability`] implemented for it (`for_call` takes what it needs from
//!    the [`CallContext`]; `add_to_linker` calls the generated `add_to_linker`
//!    with `HasSelf<Self>`);
//! 3. one line in the `registry!` below;
//! 4. the wrapper plugins call, in the SDK (`plugins/sdk`).
//!
//! A capability that needs something of the plugin's `[plugins.<name>]`
//! section resolves it once, when the plugin loads, into [`PluginGrants`].

pub mod connections;
pub mod http;
pub mod kv;
pub mod log;
pub mod probe;
pub mod redis;
mod refusal;
pub mod settings;
pub mod sql;
pub mod tcp;

use std::sync::Arc;

use wasmtime::component::Linker;

use self::connections::{Connections, Grants};
use crate::limits::CallDeadline;
use crate::state::StateStore;

/// One host capability: the host of one WIT import, built for each call.
pub trait Capability: Sized + Send + 'static {
    /// The host serving one call of the plugin in `call`.
    fn for_call(call: &CallContext<'_>) -> Self;

    /// Links the capability's interface, reaching its host in a store's data
    /// through `get`.
    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()>;
}

/// Store data that holds the capability hosts of its call: what
/// [`add_all_to_linker`] needs to link every capability over it.
pub trait CapabilityView: Send + 'static {
    fn hosts(&mut self) -> &mut CallHosts;
}

/// Lists every capability once, as `field: HostType`, and generates from the
/// list [`CallHosts`], [`CallHosts::for_call`] and [`add_all_to_linker`].
/// Each host is a plain field, reached by a projection the compiler inlines:
/// no lookup and no dynamic dispatch on the per-call path.
macro_rules! registry {
    ($($field:ident: $host:ty),+ $(,)?) => {
        /// The capability hosts of one call, one per WIT import.
        pub struct CallHosts {
            $(pub $field: $host,)+
        }

        impl CallHosts {
            /// Fresh hosts for one call.
            pub fn for_call(call: &CallContext<'_>) -> Self {
                Self {
                    $($field: <$host as Capability>::for_call(call),)+
                }
            }
        }

        /// Links every capability interface of the `service-plugin` world.
        pub fn add_all_to_linker<T: CapabilityView>(
            linker: &mut Linker<T>,
        ) -> wasmtime::Result<()> {
            $(<$host as Capability>::add_to_linker(linker, |state: &mut T| {
                &mut state.hosts().$field
            })?;)+
            Ok(())
        }
    };
}

registry! {
    log: log::LogHost,
    settings: settings::SettingsHost,
    kv: kv::KvHost,
    sql: sql::SqlHost,
    redis: redis::RedisHost,
    http: http::HttpHost,
    tcp: tcp::TcpHost,
}

/// What one plugin may reach, resolved from its `[plugins.<name>]` section
/// when it loads. Every call builds fresh capability hosts from it, so no
/// state leaks from one call into the next; and since it holds the
/// connections it resolves against, a broker.toml change (which loads the
/// plugin again) never alters a call in flight.
#[derive(Debug, Clone)]
pub struct PluginGrants {
    /// The file stem: the name broker.toml and the kv namespace use, which
    /// the plugin cannot choose.
    plugin: Arc<str>,
    settings: Arc<settings::Settings>,
    /// Alias the plugin asks for -> `[connections.<name>]`, over the
    /// connections of the broker.toml the plugin was loaded with.
    connections: Grants,
    max_host_call_bytes: u64,
}

impl PluginGrants {
    pub fn new(
        plugin: &str,
        plugin_config: &crate::config::PluginConfig,
        connections: Arc<Connections>,
        max_host_call_bytes: u64,
    ) -> Self {
        let plugin: Arc<str> = Arc::from(plugin);
        Self {
            plugin: plugin.clone(),
            settings: Arc::new(settings::Settings::from_table(&plugin_config.config)),
            connections: Grants::new(connections, Arc::new(plugin_config.connections.clone()))
                .with_policies(Arc::new(plugin_config.policies.clone()))
                .of_plugin(plugin),
            max_host_call_bytes,
        }
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }
}

/// Backends every plugin's calls share. The named connections are not
/// here: each plugin holds those of the broker.toml it was loaded with (in
/// its [`PluginGrants`]), since broker.toml can change while calls run.
#[derive(Clone)]
pub struct SharedBackends {
    pub state: StateStore,
}

/// What the capability hosts of one call are built from. Everything in it
/// is borrowed or shared: building the hosts copies `Arc`s, never tables.
pub struct CallContext<'a> {
    /// What the calling plugin may reach.
    pub grants: &'a PluginGrants,
    pub backends: &'a SharedBackends,
    /// The platform's identity of the request, which tags the plugin's log
    /// lines so they can be correlated with it.
    pub request_identity: Option<&'a str>,
    /// When the call ends: every host call still waiting then ends too.
    pub deadline: CallDeadline,
    /// What the call may still log, shared with its stdout and stderr.
    pub log_budget: &'a Arc<crate::limits::LogBudget>,
    /// The plugin's limits (its kv quota among them).
    pub limits: &'a crate::config::CallLimits,
}

impl CallContext<'_> {
    /// The plugin's file stem, which the plugin cannot choose.
    fn plugin(&self) -> &Arc<str> {
        &self.grants.plugin
    }

    /// The connections granted to the plugin.
    fn connections(&self) -> Grants {
        self.grants.connections.clone()
    }

    /// Most bytes one host call may move across the sandbox boundary.
    fn max_host_call_bytes(&self) -> u64 {
        self.grants.max_host_call_bytes
    }
}
