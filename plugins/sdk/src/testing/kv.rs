//! The fake key-value store, settings and log.

use std::collections::BTreeMap;

use super::{ThreadBound, with_state};
use crate::kv::Error;
use crate::log::Level;

#[derive(Default)]
pub(super) struct KvState {
    entries: BTreeMap<String, Vec<u8>>,
    /// The next call fails with this.
    failure: Option<Error>,
}

/// Scripts and inspects the fake key-value store: a real one, in memory.
pub struct Kv(pub(super) ThreadBound);

impl Kv {
    /// Stores `value` under `key`, as if an earlier call had.
    pub fn set(&self, key: &str, value: &[u8]) {
        with_state(|state| state.kv.entries.insert(key.to_owned(), value.to_vec()));
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        with_state(|state| state.kv.entries.get(key).cloned())
    }

    /// Every key and value, in key order.
    pub fn entries(&self) -> BTreeMap<String, Vec<u8>> {
        with_state(|state| state.kv.entries.clone())
    }

    /// The plugin's next kv call fails with `error` (a full store, a
    /// failing state store ...).
    pub fn fail_next(&self, error: Error) {
        with_state(|state| state.kv.failure = Some(error));
    }
}

/// Scripts the fake settings.
pub struct Config(pub(super) ThreadBound);

impl Config {
    /// Sets `key` to `value` (strings as they are, other TOML values as
    /// JSON text, as the host hands them).
    pub fn set(&self, key: &str, value: &str) {
        with_state(|state| state.config.insert(key.to_owned(), value.to_owned()));
    }
}

/// One line the plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub message: String,
}

/// Inspects what the plugin logged. Lines are also printed to stderr, which
/// `cargo test` shows for a failing test.
pub struct Log(pub(super) ThreadBound);

impl Log {
    /// The lines logged so far.
    pub fn lines(&self) -> Vec<LogLine> {
        with_state(|state| state.log.clone())
    }

    /// The messages logged so far, without their levels.
    pub fn messages(&self) -> Vec<String> {
        self.lines().into_iter().map(|line| line.message).collect()
    }
}

fn take_failure() -> Result<(), Error> {
    with_state(|state| state.kv.failure.take()).map_or(Ok(()), Err)
}

pub(crate) fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    take_failure()?;
    Ok(with_state(|state| state.kv.entries.get(key).cloned()))
}

pub(crate) fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    take_failure()?;
    with_state(|state| state.kv.entries.insert(key.to_owned(), value.to_vec()));
    Ok(())
}

pub(crate) fn delete(key: &str) -> Result<(), Error> {
    take_failure()?;
    with_state(|state| state.kv.entries.remove(key));
    Ok(())
}

pub(crate) fn list_keys(prefix: &str) -> Result<Vec<String>, Error> {
    take_failure()?;
    Ok(with_state(|state| {
        state
            .kv
            .entries
            .keys()
            .filter(|key| key.starts_with(prefix))
            .cloned()
            .collect()
    }))
}

pub(crate) fn config_get(key: &str) -> Option<String> {
    with_state(|state| state.config.get(key).cloned())
}

pub(crate) fn log(level: Level, message: &str) {
    eprintln!("[plugin {level:?}] {message}");
    with_state(|state| {
        state.log.push(LogLine {
            level,
            message: message.to_owned(),
        })
    });
}
