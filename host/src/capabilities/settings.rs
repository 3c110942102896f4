//! The plugin-settings capability: the plugin's `[plugins.<name>.config]`
//! table of broker.toml, read-only. Strings come as they are, other TOML
//! values as JSON text, so a plugin parses structured settings with any JSON
//! library.
//!
//! Its WIT interface keeps its published name, `config`: renaming it would
//! break every built plugin. In the host, "config" means broker.toml
//! ([`crate::config`]); what a plugin reads of it are its settings.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::config as wit;

/// A plugin's settings, converted once when the plugin loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(BTreeMap<String, String>);

impl Settings {
    pub fn from_table(table: &toml::Table) -> Self {
        Self(
            table
                .iter()
                .map(|(key, value)| {
                    let text = match value {
                        toml::Value::String(text) => text.clone(),
                        other => toml_to_json(other).to_string(),
                    };
                    (key.clone(), text)
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// TOML has two things JSON lacks: datetimes become RFC 3339 strings, and
/// non-finite floats (`inf`, `nan`) become their TOML spelling as strings.
fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(text) => Value::String(text.clone()),
        toml::Value::Integer(number) => Value::from(*number),
        toml::Value::Float(number) => serde_json::Number::from_f64(*number)
            .map_or_else(|| Value::String(number.to_string()), Value::Number),
        toml::Value::Boolean(flag) => Value::Bool(*flag),
        toml::Value::Datetime(datetime) => Value::String(datetime.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(key, value)| (key.clone(), toml_to_json(value)))
                .collect(),
        ),
    }
}

/// The settings (WIT `config`) import of one plugin call.
pub struct SettingsHost {
    settings: Arc<Settings>,
}

impl SettingsHost {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }
}

impl wit::Host for SettingsHost {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.settings.get(&key).map(str::to_owned))
    }
}

impl Capability for SettingsHost {
    fn for_call(call: &CallContext<'_>) -> Self {
        Self::new(call.grants.settings.clone())
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::wasm_broker::plugin::config::Host;

    fn host(toml: &str) -> SettingsHost {
        let table: toml::Table = toml::from_str(toml).expect("valid toml");
        SettingsHost::new(Arc::new(Settings::from_table(&table)))
    }

    #[tokio::test]
    async fn strings_are_plain_and_other_values_json() {
        let mut host = host(
            r#"
            prefix = "svc_"
            quota = 10
            ratio = 0.5
            strict = true
            hosts = ["a", 1]
            limits = { max = 3, name = "x" }
            since = 1979-05-27T07:32:00Z
            never = inf
            "#,
        );
        let mut get = async |key: &str| host.get(key.to_owned()).await.expect("no trap");
        assert_eq!(get("prefix").await.as_deref(), Some("svc_"));
        assert_eq!(get("quota").await.as_deref(), Some("10"));
        assert_eq!(get("ratio").await.as_deref(), Some("0.5"));
        assert_eq!(get("strict").await.as_deref(), Some("true"));
        assert_eq!(get("hosts").await.as_deref(), Some(r#"["a",1]"#));
        assert_eq!(
            get("limits").await.as_deref(),
            Some(r#"{"max":3,"name":"x"}"#)
        );
        assert_eq!(
            get("since").await.as_deref(),
            Some(r#""1979-05-27T07:32:00Z""#)
        );
        assert_eq!(get("never").await.as_deref(), Some(r#""inf""#));
        assert_eq!(get("missing").await, None);
    }
}
