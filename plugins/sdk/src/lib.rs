//! Write a wasm-broker service plugin.
//!
//! A plugin is a WebAssembly component implementing the WIT world
//! `wasm-broker:plugin/service-plugin@0.1.0` (`wit/v0.1.0/` in the repository).
//! This crate generates the bindings and adds what every plugin needs:
//!
//! - [`ServicePlugin`]: one typed function per OSB operation, with defaults
//!   for what a synchronous plugin does not use, wired up by [`export_plugin!`];
//! - [`names`]: backend identifiers derived from platform ids, and quoting;
//! - [`password`]: random passwords from the host's CSPRNG;
//! - [`Credentials`]: the credentials object of a binding, with encoded URIs;
//! - [`params`]: parameters parsed into your types, errors naming the field;
//! - [`expiry`]: credentials that expire, and the binding metadata telling
//!   the platform when to rotate them;
//! - thin wrappers over the host capabilities: [`sql`], [`redis`], [`http`],
//!   [`tcp`], [`kv`], [`config`] and [`log`], whose failures are
//!   [`BrokerError`]s; [`tcp`] carries any protocol of the plugin's own,
//!   with the admin secret filled in by the host.
//!
//! Natively (any target but `wasm32`), the capability wrappers answer from
//! in-memory fakes instead of the host, so a plugin's own `cargo test` runs
//! its real flows: enable the `testing` feature and script them with
//! [`testing::Fakes`] (see that module).
//!
//! The crate's version follows the WIT contract in its `wit/` directory:
//! 0.1.x speaks `wasm-broker:plugin@0.1.0`.
//!
//! ```ignore
//! use wasm_broker_sdk::prelude::*;
//!
//! struct Echo;
//!
//! impl ServicePlugin for Echo {
//!     fn describe() -> PluginInfo { /* ... */ }
//!     fn catalog() -> Catalog { /* ... */ }
//!     fn provision(instance: &Instance, info: &RequestInfo) -> Result<InstanceOutcome, BrokerError> {
//!         Ok(InstanceOutcome::done())
//!     }
//!     // deprovision, bind, unbind ...
//! }
//!
//! export_plugin!(Echo);
//! ```

#![warn(missing_docs)]

// The generated export glue names this crate by its path, also from inside it.
extern crate self as wasm_broker_sdk;

pub mod catalog;
pub mod config;
pub mod credentials;
mod error;
pub mod expiry;
pub mod http;
pub mod kv;
pub mod log;
pub mod names;
pub mod params;
pub mod plugin;
pub mod redis;
pub mod sql;
pub mod tcp;

mod secret;

/// In-memory fakes of the host's capabilities, for native tests.
#[cfg(feature = "testing")]
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub mod testing;
// Natively the wrappers always answer from the fakes (unscripted: every
// connection ungranted), so a capability call in a native test is an error
// the test sees, never the bindings' `unreachable!()` that aborts the whole
// test binary.
#[cfg(all(not(feature = "testing"), not(target_arch = "wasm32")))]
#[allow(dead_code, unreachable_pub)]
mod testing;

/// Where the capability wrappers send their calls: the host's imports in a
/// component, the fakes of [`testing`] anywhere else.
#[cfg(target_arch = "wasm32")]
use bindings::wasm_broker::plugin as imports;
#[cfg(not(target_arch = "wasm32"))]
use testing::imports;

/// The code `wit-bindgen` generates for the `service-plugin` world. Plugins
/// use the re-exports at the crate root instead.
#[allow(clippy::all, missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "service-plugin",
        path: "wit",
        additional_derives: [PartialEq],
        pub_export_macro: true,
        default_bindings_module: "wasm_broker_sdk::bindings",
        // Plugins depend on this crate only, not on wit-bindgen.
        runtime_path: "wasm_broker_sdk::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
#[allow(missing_docs)]
pub mod __private {
    pub use wit_bindgen;
}

pub use bindings::wasm_broker::plugin::types::{
    Accepted, BindOutcome, Binding, BindingMetadata, BindingResult, BrokerError, Catalog,
    DashboardClient, DeletionOutcome, Endpoint, EndpointProtocol, Instance, InstanceChanges,
    InstanceDetails, InstanceOutcome, InstanceResult, MaintenanceInfo, MountMode, OperationKind,
    OperationState, OperationStatus, OriginatingIdentity, PluginInfo, RequestInfo, Schemas,
    ServiceOffering, ServicePlan, VolumeMount,
};
pub use credentials::Credentials;
pub use plugin::ServicePlugin;
pub use secret::password;

/// Everything a plugin usually imports: `use wasm_broker_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::catalog::parameters_schema;
    pub use crate::names::{derive_name, quote_mysql_ident, quote_pg_ident, quote_sql_string};
    pub use crate::{
        BindOutcome, Binding, BrokerError, Catalog, Credentials, DeletionOutcome, Instance,
        InstanceChanges, InstanceOutcome, PluginInfo, RequestInfo, ServiceOffering, ServicePlan,
        ServicePlugin, export_plugin, password,
    };
}
