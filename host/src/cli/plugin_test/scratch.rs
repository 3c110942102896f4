//! A runtime serving copies of some plugin files, with a scratch state
//! store: loaded as `serve` loads a plugin directory, so what `plugins
//! test` finds is what the broker would do, without touching the real
//! store or plugin directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};

use wasm_broker::config::Config;
use wasm_broker::runtime::PluginRuntime;

use crate::cli::plugins::load_plugins_with_state;

pub struct Scratch {
    pub runtime: Arc<PluginRuntime>,
    /// The scratch plugin directory and state store: kept as long as the
    /// runtime, since the plugins' kv store lives there.
    _dir: tempfile::TempDir,
}

impl Scratch {
    /// Loads `files` (plugin name, file), each copied as `<name>.wasm`.
    pub async fn load(config: &Config, files: &[(String, PathBuf)]) -> anyhow::Result<Self> {
        let dir =
            tempfile::tempdir().map_err(|error| anyhow!("cannot make a scratch dir: {error}"))?;
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugin_dir).context("creating the scratch plugin directory")?;
        for (stem, file) in files {
            std::fs::copy(file, plugin_dir.join(format!("{stem}.wasm")))
                .with_context(|| format!("cannot read {}", file.display()))?;
        }
        // A key of its own for the scratch store: kv values are sealed as a
        // broker with a key seals them, and the store does not warn that
        // binds would be refused without one.
        let mut config = config.clone();
        config.state.encryption_key = Some(scratch_key().into());
        config.state.previous_encryption_keys = Vec::new();
        let runtime =
            load_plugins_with_state(&config, &plugin_dir, &dir.path().join("state.db")).await?;
        Ok(Self { runtime, _dir: dir })
    }
}

/// 32 random bytes in base64, the form `[state] encryption_key` takes.
fn scratch_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}
