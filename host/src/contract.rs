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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    /// The `.wit` files of `dir`, by name.
    fn wit_files(dir: &Path) -> BTreeMap<String, String> {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()));
        entries
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "wit"))
            .map(|path| {
                let name = path
                    .file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
                (name, text)
            })
            .collect()
    }

    /// The SDK carries its own copy of the contract, because a published
    /// crate can only pack files below its own directory; `wit/v0.1.0` stays
    /// where plugins in other languages (and this host) read it. The two
    /// must never differ: change both, or this fails.
    #[test]
    fn the_sdk_carries_the_contract_the_host_implements() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let contract = wit_files(&root.join("wit/v0.1.0"));
        let sdk = wit_files(&root.join("plugins/sdk/wit"));
        assert!(!contract.is_empty(), "no .wit files in wit/v0.1.0");
        assert_eq!(
            contract.keys().collect::<Vec<_>>(),
            sdk.keys().collect::<Vec<_>>(),
            "wit/v0.1.0 and plugins/sdk/wit hold different files"
        );
        for (name, text) in &contract {
            assert!(
                sdk.get(name) == Some(text),
                "plugins/sdk/wit/{name} differs from wit/v0.1.0/{name}: copy the contract into the SDK"
            );
        }
    }
}
