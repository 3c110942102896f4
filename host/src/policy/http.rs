//! HTTP request policy: the methods allowed and the path prefixes allowed,
//! below the connection's base URL.
//!
//! Paths are compared segment by segment, each segment percent-decoded, as
//! a server splits and decodes them: `/api/users` never allows
//! `/api/users-evil`, and `/api/%75sers/x` is `/api/users/x`. A segment
//! holding an encoded `/` (`%2F`) stays one segment, as it does for the
//! server. The capability matches the path after URL normalisation (dot
//! segments resolved, `..` refused before that).

use std::fmt;

use serde::Deserialize;

/// The methods the WIT `http` interface offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    const ALL: [(Self, &'static str); 6] = [
        (Self::Get, "GET"),
        (Self::Head, "HEAD"),
        (Self::Post, "POST"),
        (Self::Put, "PUT"),
        (Self::Patch, "PATCH"),
        (Self::Delete, "DELETE"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(method, _)| *method == self)
            .map_or("?", |(_, name)| name)
    }
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::ALL
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(&text))
            .map(|(method, _)| *method)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "method {text:?} is none of GET, HEAD, POST, PUT, PATCH, DELETE"
                ))
            })
    }
}

/// A path prefix: `/api/vhosts` allows that path and every path below it;
/// with a trailing slash, `/api/vhosts/`, only the paths below it (not the
/// collection itself: `GET /api/users` lists every user's password hash,
/// `/api/users/` allows only single users). `/` allows every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix {
    text: String,
    segments: Vec<String>,
    /// Only paths with at least one more non-empty segment.
    below_only: bool,
}

impl PathPrefix {
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path prefix {text:?} must start with '/'"));
        };
        if text.contains(['?', '#', '\\']) || text.chars().any(char::is_control) {
            return Err(format!(
                "path prefix {text:?} must be a plain path (no query, fragment, backslash or control character)"
            ));
        }
        let below_only = !rest.is_empty() && rest.ends_with('/');
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<String> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').map(decode).collect()
        };
        if segments.iter().any(|segment| segment.is_empty()) {
            return Err(format!("path prefix {text:?} has an empty segment ('//')"));
        }
        if segments
            .iter()
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(format!("path prefix {text:?} has '.' or '..' segments"));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
            below_only,
        })
    }

    /// Whether `path` (absolute, normalised, no query) is this prefix or
    /// below it.
    fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let segments: Vec<String> = rest.split('/').map(decode).collect();
        let count = self.segments.len();
        if segments.len() < count || segments[..count] != self.segments[..] {
            return false;
        }
        !self.below_only || segments.get(count).is_some_and(|next| !next.is_empty())
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for PathPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// A rule on request bodies: below `path`, a request's JSON body may give
/// its top-level `field` only the values in `allow`. A string value is a
/// comma-separated list (`"management,monitoring"`), an array one value per
/// item; empty entries are no value. Written for RabbitMQ, whose management
/// API makes a user an administrator by `PUT /api/users/NAME` with
/// `{"tags": "administrator"}` and lets only an administrator create users,
/// so the account a plugin needs could otherwise make more of itself:
///
/// ```toml
/// body_fields = [{ path = "/api/users/", field = "tags", allow = ["management"] }]
/// ```
///
/// Below the rule's path a body must be a JSON object without repeated
/// keys (a server may read the first of two where the host read the
/// second); anything else is refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyField {
    pub path: PathPrefix,
    pub field: String,
    pub allow: Vec<String>,
}

impl BodyField {
    /// Why `body`, sent to `path`, is refused by this rule, if it is.
    fn check(&self, path: &str, body: &[u8]) -> Result<(), String> {
        if !self.path.matches(path) || body.is_empty() {
            return Ok(());
        }
        let object: DistinctKeys = serde_json::from_slice(body).map_err(|error| {
            format!(
                "the body of a request below {} must be a JSON object with distinct keys (the grant checks its {:?}): {error}",
                self.path, self.field
            )
        })?;
        let Some(value) = object.0.get(&self.field) else {
            return Ok(());
        };
        let entries: Vec<&str> = match value {
            serde_json::Value::String(text) => text.split(',').collect(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().ok_or(()))
                .collect::<Result<_, ()>>()
                .map_err(|()| format!("{:?} holds a value that is not a string", self.field))?,
            _ => return Err(format!("{:?} is neither a string nor an array", self.field)),
        };
        for entry in entries.iter().map(|entry| entry.trim()) {
            if !entry.is_empty() && !self.allow.iter().any(|allowed| allowed == entry) {
                return Err(format!(
                    "{:?} = {entry:?} below {} is not among the values this grant allows in broker.toml ({:?})",
                    self.field, self.path, self.allow
                ));
            }
        }
        Ok(())
    }
}

/// A JSON object whose keys are all distinct.
struct DistinctKeys(std::collections::BTreeMap<String, serde_json::Value>);

impl<'de> Deserialize<'de> for DistinctKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = DistinctKeys;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<DistinctKeys, M::Error> {
                let mut object = std::collections::BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value()?;
                    if object.insert(key.clone(), value).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "the key {key:?} is repeated"
                        )));
                    }
                }
                Ok(DistinctKeys(object))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Why a request is refused: a method not in `methods`, a path below none
/// of `paths`, or a body a rule of `body_fields` refuses (each checked only
/// when the grant sets it).
pub fn check(
    methods: Option<&[HttpMethod]>,
    paths: Option<&[PathPrefix]>,
    body_fields: &[BodyField],
    request: (HttpMethod, &str, Option<&[u8]>),
) -> Result<(), String> {
    let (method, path, body) = request;
    if let Some(methods) = methods
        && !methods.contains(&method)
    {
        return Err(format!(
            "method {} is not among the methods this grant allows in broker.toml",
            method.name()
        ));
    }
    if let Some(paths) = paths
        && !paths.iter().any(|prefix| prefix.matches(path))
    {
        return Err(format!(
            "{} {path} is below none of the paths this grant allows in broker.toml",
            method.name()
        ));
    }
    if let Some(body) = body {
        for rule in body_fields {
            rule.check(path, body)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_fields_allow_only_their_values() {
        let rule: BodyField = toml::from_str(
            "path = '/api/users/'\nfield = 'tags'\nallow = ['management', 'monitoring']",
        )
        .expect("a rule");
        let table: &[(&str, &str, bool)] = &[
            (
                "/api/users/u",
                r#"{"password":"p","tags":"management"}"#,
                true,
            ),
            ("/api/users/u", r#"{"tags":"management, monitoring"}"#, true),
            ("/api/users/u", r#"{"tags":["monitoring"]}"#, true),
            ("/api/users/u", r#"{"tags":""}"#, true),
            ("/api/users/u", r#"{"password":"p"}"#, true),
            ("/api/users/u", r#"{"tags":"administrator"}"#, false),
            ("/api/users/u", r#"{"tags":" administrator "}"#, false),
            (
                "/api/users/u",
                r#"{"tags":"management,administrator"}"#,
                false,
            ),
            ("/api/users/u", r#"{"tags":["administrator"]}"#, false),
            ("/api/users/u", r#"{"tags":[1]}"#, false),
            ("/api/users/u", r#"{"tags":{"a":1}}"#, false),
            (
                "/api/users/u",
                r#"{"tags":"management","tags":"administrator"}"#,
                false,
            ),
            ("/api/users/u", r#"[{"tags":"administrator"}]"#, false),
            ("/api/users/u", "tags=administrator", false),
            ("/api/%75sers/u", r#"{"tags":"administrator"}"#, false),
            // Elsewhere the rule does not look.
            ("/api/vhosts/v", r#"{"tags":"administrator"}"#, true),
            ("/api/vhosts/v", "not json", true),
        ];
        for (path, body, allowed) in table {
            let outcome = check(
                None,
                None,
                std::slice::from_ref(&rule),
                (HttpMethod::Put, path, Some(body.as_bytes())),
            );
            assert_eq!(outcome.is_ok(), *allowed, "{path} {body}: {outcome:?}");
        }
    }

    fn prefixes(texts: &[&str]) -> Vec<PathPrefix> {
        texts
            .iter()
            .map(|text| PathPrefix::parse(text).expect("valid"))
            .collect()
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let table: &[(&str, &str, bool)] = &[
            ("/api/vhosts/", "/api/vhosts/inst_1", true),
            ("/api/vhosts/", "/api/vhosts/%2F", true),
            ("/api/vhosts/", "/api/vhosts/a/b", true),
            ("/api/vhosts/", "/api/vhosts", false),
            ("/api/vhosts/", "/api/vhosts/", false),
            ("/api/vhosts/", "/api/vhosts-evil/x", false),
            ("/api/vhosts/", "/api/vhostsx", false),
            ("/api/vhosts/", "/api//vhosts/x", false),
            ("/api/vhosts/", "/api/vhosts%2Fx", false),
            ("/api/vhosts/", "/API/vhosts/x", false),
            // Encoded letters are the same segment for the server.
            ("/api/users/", "/api/%75sers/u_1", true),
            ("/api/users", "/api/users", true),
            ("/api/users", "/api/users/u_1", true),
            ("/api/users", "/api/users-evil", false),
            ("/api/users", "/api", false),
            ("/", "/anything/at/all", true),
            ("/", "/", true),
        ];
        for (prefix, path, expected) in table {
            let prefix = PathPrefix::parse(prefix).expect("valid");
            assert_eq!(prefix.matches(path), *expected, "{prefix} vs {path}");
        }
    }

    #[test]
    fn methods_and_paths_are_both_required() {
        let methods = [HttpMethod::Put, HttpMethod::Delete];
        let paths = prefixes(&["/api/vhosts/", "/api/users/"]);
        let check = |method, path| check(Some(&methods), Some(&paths), &[], (method, path, None));
        check(HttpMethod::Put, "/api/users/u_1").expect("allowed");
        check(HttpMethod::Delete, "/api/vhosts/inst_1").expect("allowed");
        let error = check(HttpMethod::Get, "/api/users/u_1").expect_err("GET");
        assert!(error.contains("method GET"), "{error}");
        let error = check(HttpMethod::Put, "/api/users").expect_err("the collection");
        assert!(error.contains("PUT /api/users is below none"), "{error}");
        assert!(check(HttpMethod::Put, "/api/definitions").is_err());
        // Unset keys restrict nothing.
        super::check(None, None, &[], (HttpMethod::Get, "/api/users", None)).expect("no policy");
        super::check(
            None,
            Some(&paths),
            &[],
            (HttpMethod::Get, "/api/users/x", None),
        )
        .expect("any method");
    }

    #[test]
    fn prefixes_and_methods_parse() {
        for bad in [
            "api/",
            "/api//x",
            "/api/../x",
            "/api/./x",
            "/api?x",
            "/a\\b",
            "",
        ] {
            assert!(PathPrefix::parse(bad).is_err(), "{bad:?}");
        }
        let method: HttpMethod = serde_json::from_str("\"delete\"").expect("valid");
        assert_eq!(method, HttpMethod::Delete);
        assert!(serde_json::from_str::<HttpMethod>("\"TRACE\"").is_err());
    }
}
