//! OSB `parameters` objects parsed into the plugin's own types.
//!
//! The host validates parameters against the plan's JSON Schema before the
//! plugin runs; parsing them again into a Rust type gives the plugin typed
//! values and turns anything the schema let through into a 400 that names
//! the field, e.g. `parameters.charset: unknown variant `koi8`, expected
//! `utf8mb4` or `latin1``.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{Binding, BrokerError, Instance, InstanceChanges};

/// Parses a parameters object into `T`. Absent parameters parse as `{}`, so
/// a `T` whose fields have defaults (`#[serde(default)]`) gets them.
pub fn parse<T: DeserializeOwned>(parameters: Option<&str>) -> Result<T, BrokerError> {
    parse_value(Value::Object(object(parameters)?))
}

/// `current` with the top-level keys of `changes` replaced, the way an OSB
/// update applies new parameters on top of the provisioned ones.
pub fn merge(
    current: Option<&str>,
    changes: Option<&str>,
) -> Result<Map<String, Value>, BrokerError> {
    let mut merged = object(current)?;
    merged.extend(object(changes)?);
    Ok(merged)
}

fn object(parameters: Option<&str>) -> Result<Map<String, Value>, BrokerError> {
    let Some(text) = parameters else {
        return Ok(Map::new());
    };
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(BrokerError::BadRequest(
            "parameters must be a JSON object".to_owned(),
        )),
        Err(error) => Err(BrokerError::BadRequest(format!(
            "parameters are not valid JSON: {error}"
        ))),
    }
}

// Deserialising from a `Value` rather than from the text keeps serde_json's
// "at line 1 column 42" out of the message: the path already says where.
fn parse_value<T: DeserializeOwned>(value: Value) -> Result<T, BrokerError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." {
            "parameters".to_owned()
        } else {
            format!("parameters.{path}")
        };
        BrokerError::BadRequest(format!("{field}: {}", error.inner()))
    })
}

impl Instance {
    /// The instance's parameters (provision merged with later updates).
    pub fn parameters<T: DeserializeOwned>(&self) -> Result<T, BrokerError> {
        parse(self.parameters.as_deref())
    }
}

impl InstanceChanges {
    /// The parameters the instance will have once this update is applied.
    pub fn merged_parameters<T: DeserializeOwned>(
        &self,
        instance: &Instance,
    ) -> Result<T, BrokerError> {
        parse_value(Value::Object(merge(
            instance.parameters.as_deref(),
            self.parameters.as_deref(),
        )?))
    }

    /// The update changes only the context or the maintenance version, which
    /// most backends have nothing to do for.
    pub fn touches_only_metadata(&self) -> Result<bool, BrokerError> {
        Ok(self.plan_id.is_none() && object(self.parameters.as_deref())?.is_empty())
    }
}

impl Binding {
    /// The binding's own parameters.
    pub fn parameters<T: DeserializeOwned>(&self) -> Result<T, BrokerError> {
        parse(self.parameters.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(rename_all = "lowercase")]
    enum Charset {
        #[default]
        Utf8mb4,
        Latin1,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Params {
        charset: Charset,
        limits: Vec<u32>,
    }

    #[test]
    fn absent_parameters_give_the_defaults() {
        assert_eq!(parse::<Params>(None).expect("parses"), Params::default());
        assert_eq!(
            parse::<Params>(Some("null")).expect("parses"),
            Params::default()
        );
    }

    #[test]
    fn values_are_parsed() {
        let params: Params = parse(Some(r#"{"charset":"latin1","limits":[1,2]}"#)).expect("parses");
        assert_eq!(
            params,
            Params {
                charset: Charset::Latin1,
                limits: vec![1, 2]
            }
        );
    }

    #[test]
    fn errors_name_the_field_without_text_positions() {
        let error = parse::<Params>(Some(r#"{"charset":"koi8"}"#)).expect_err("rejected");
        assert_eq!(
            error,
            BrokerError::BadRequest(
                "parameters.charset: unknown variant `koi8`, expected `utf8mb4` or `latin1`"
                    .to_owned()
            )
        );
        let error = parse::<Params>(Some(r#"{"limits":[1,"x"]}"#)).expect_err("rejected");
        assert!(
            error
                .description()
                .starts_with("parameters.limits[1]: invalid type"),
            "{error}"
        );
    }

    #[test]
    fn unknown_fields_and_non_objects_are_bad_requests() {
        let error = parse::<Params>(Some(r#"{"colour":1}"#)).expect_err("rejected");
        assert_eq!(
            error,
            BrokerError::BadRequest(
                "parameters.colour: unknown field `colour`, expected `charset` or `limits`"
                    .to_owned()
            )
        );
        let error = parse::<Params>(Some("[1]")).expect_err("rejected");
        assert_eq!(
            error,
            BrokerError::BadRequest("parameters must be a JSON object".to_owned())
        );
        assert!(matches!(
            parse::<Params>(Some("{")),
            Err(BrokerError::BadRequest(_))
        ));
    }

    #[test]
    fn merge_replaces_top_level_keys() {
        let merged = merge(
            Some(r#"{"a":1,"b":{"c":2}}"#),
            Some(r#"{"b":{"d":3},"e":4}"#),
        )
        .expect("merges");
        assert_eq!(
            Value::Object(merged),
            serde_json::json!({"a":1,"b":{"d":3},"e":4})
        );
    }
}
