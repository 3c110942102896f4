//! The `wasm-broker:plugin@0.1.0` contract as Rust, generated from the WIT
//! files so the host and the contract cannot drift apart. The runtime calls
//! the plugin's exports through it; each capability implements one of its
//! imports.
//!
//! Imports are async (SQL, Redis, HTTP and kv calls await the network) and
//! trappable (a host failure that is not the plugin's fault, such as a full
//! resource table, ends the call instead of being handed to the guest).

wasmtime::component::bindgen!({
    path: "../wit/v0.1.0",
    world: "service-plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    // Lets tests compare what a host call returned.
    additional_derives: [PartialEq],
});
