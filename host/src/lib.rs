//! wasm-broker: an Open Service Broker API v2.17 host that hands every
//! operation to a sandboxed WebAssembly plugin.
//!
//! - [`osb`]: the HTTP layer; knows OSB, nothing of wasmtime.
//! - [`broker`]: idempotency, concurrency, operation records.
//! - [`runtime`]: loads and calls plugin components; knows nothing of HTTP.
//! - [`capabilities`]: what a plugin may reach (sql, redis, http, kv, log, config).
//! - [`state`]: durable instances, bindings and operations.
//! - [`secrets`]: encryption at rest of the credentials in [`state`].

pub mod broker;
pub mod capabilities;
pub mod catalog;
pub mod config;
pub mod lifecycle;
pub mod model;
pub mod osb;
pub mod runtime;
pub mod secrets;
pub mod state;
