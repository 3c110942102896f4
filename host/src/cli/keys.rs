//! `generate-key` and `rotate-key`: the keys that encrypt the stored
//! credentials.

use std::path::Path;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use wasm_broker::config::{Config, StateBackend};
use wasm_broker::secrets::{EncryptionKey, generate_key};
use wasm_broker::state::StateStore;

/// Where `rotate-key` reads the new key when no file is given: an argument
/// would show in `ps`.
const NEW_KEY_ENV: &str = "WASM_BROKER_NEW_ENCRYPTION_KEY";

/// Prints a new random key, in base64.
pub fn generate() -> anyhow::Result<()> {
    println!("{}", generate_key()?.expose_secret());
    Ok(())
}

pub async fn rotate(config: Config, new_key_file: Option<&Path>) -> anyhow::Result<()> {
    let (text, source) = match new_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (SecretString::from(text), path.display().to_string())
        }
        None => {
            let text = std::env::var(NEW_KEY_ENV).with_context(|| {
                format!("the new key goes in {NEW_KEY_ENV} or a file named by --new-key-file")
            })?;
            (SecretString::from(text), NEW_KEY_ENV.to_owned())
        }
    };
    let new_key = EncryptionKey::from_base64(&text, &source)?;
    let path = &config.state.path;
    anyhow::ensure!(
        config.state.backend != StateBackend::Sqlite || path.exists(),
        "there is no state store at {}: is --config right?",
        path.display()
    );
    let key_id = new_key.id();
    let rotated = StateStore::rotate_encryption_key(&config.state, new_key)
        .await
        .context("re-encrypting the stored credentials")?;
    println!("re-encrypted the credentials of {rotated} service binding(s) with key {key_id}");
    Ok(())
}
