//! wasm-broker: an Open Service Broker API v2.17 host that hands every
//! operation to a sandboxed WebAssembly plugin.
//!
//! - [`osb`]: the HTTP layer; knows OSB, nothing of wasmtime.
//! - [`broker`]: the core: catalog checks, records and plugin calls around the rules.
//! - [`lifecycle`]: the OSB lifecycle rules as pure functions (no I/O).
//! - [`runtime`]: loads and calls plugin components; knows nothing of HTTP.
//! - [`contract`]: the WIT contract with plugins, as generated Rust.
//! - [`limits`]: the fixed limits on a plugin call, shared by runtime and capabilities.
//! - [`policy`]: per-grant policy (Redis commands, HTTP methods and paths, SQL read-only and caps), pure.
//! - [`capabilities`]: what a plugin may reach (sql, redis, http, kv, log, settings).
//! - [`state`]: durable instances, bindings and operations.
//! - [`secrets`]: encryption at rest of the credentials in [`state`].

pub mod broker;
pub mod capabilities;
pub mod catalog;
pub mod config;
pub mod contract;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod osb;
pub mod policy;
pub mod printable;
pub mod runtime;
pub mod secrets;
pub mod state;
