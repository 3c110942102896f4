//! Per-grant policy: what broker.toml lets a plugin do through one granted
//! connection, beyond reaching it. Pure: parsing (at config load, so a bad
//! policy is refused with the rest of the file) and matching (on every host
//! call). A leaf module: `config` parses grants into it, the capabilities
//! enforce it; it imports nothing of the crate.
//!
//! A grant is `alias = "connection"` (no policy but the Redis default) or a
//! table naming the connection and the policy:
//!
//! ```toml
//! admin = { connection = "redis", commands = ["PING", "SCAN", "ACL SETUSER"] }
//! admin = { connection = "rabbitmq-management", methods = ["PUT", "DELETE"], paths = ["/api/vhosts/"] }
//! admin = { connection = "postgres", read_only = true, max_rows = 1000, max_bytes = 65536 }
//! ```

pub mod http;
pub mod redis;
pub mod redis_acl;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub use self::http::{BodyField, HttpMethod, PathPrefix};
pub use self::redis::CommandPattern;

/// The family of capability a policy key belongs to; a key of another
/// family than the granted connection's is refused at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Sql,
    Redis,
    Http,
    Tcp,
}

/// The policy of one grant. Every key is optional; none set means no
/// restriction beyond the connection's own rights, except for Redis, where a
/// grant without `commands` gets [`redis::DEFAULT_DENIED`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantPolicy {
    /// Redis: the only commands allowed, `"GET"` (every form of the command)
    /// or `"ACL SETUSER"` (that subcommand only). Without it: every command
    /// but [`redis::DEFAULT_DENIED`].
    #[serde(default)]
    pub commands: Option<Vec<CommandPattern>>,
    /// HTTP: the only methods allowed.
    #[serde(default)]
    pub methods: Option<Vec<HttpMethod>>,
    /// HTTP: the only paths allowed (below the connection's base URL),
    /// matched whole segment by segment; see [`PathPrefix`].
    #[serde(default)]
    pub paths: Option<Vec<PathPrefix>>,
    /// HTTP: rules on the JSON bodies sent below a path; see [`BodyField`].
    #[serde(default)]
    pub body_fields: Option<Vec<BodyField>>,
    /// SQL: each statement runs in a read-only transaction, alone (several
    /// statements in one call are refused by the server's prepared-statement
    /// protocol).
    #[serde(default)]
    pub read_only: bool,
    /// SQL: most rows one statement may return; more is `limit-exceeded`.
    #[serde(default)]
    pub max_rows: Option<u64>,
    /// SQL: most bytes one statement's result may hold; never more than the
    /// plugin's `max_host_call_bytes`, whichever is lower applies.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

impl GrantPolicy {
    /// No policy: what a grant in the plain `alias = "connection"` form has.
    pub const NONE: Self = Self {
        commands: None,
        methods: None,
        paths: None,
        body_fields: None,
        read_only: false,
        max_rows: None,
        max_bytes: None,
    };

    /// The keys set that do not apply to a connection of `family`.
    pub fn misplaced_keys(&self, family: Family) -> Vec<&'static str> {
        let keys = [
            ("commands", self.commands.is_some(), Family::Redis),
            ("methods", self.methods.is_some(), Family::Http),
            ("paths", self.paths.is_some(), Family::Http),
            ("body_fields", self.body_fields.is_some(), Family::Http),
            ("read_only", self.read_only, Family::Sql),
            ("max_rows", self.max_rows.is_some(), Family::Sql),
            ("max_bytes", self.max_bytes.is_some(), Family::Sql),
        ];
        keys.into_iter()
            .filter(|(_, set, fits)| *set && *fits != family)
            .map(|(key, _, _)| key)
            .collect()
    }

    /// Why the Redis command `args` is refused, if it is. `own_user` is the
    /// user the host logs in as, which no grant may change.
    pub fn check_redis(&self, args: &[Vec<u8>], own_user: &str) -> Result<(), String> {
        redis::check(self.commands.as_deref(), args, own_user)
    }

    /// Why an HTTP request is refused, if it is. `path` is the request's
    /// path below the base URL, normalised (dot segments resolved), without
    /// the query; `body` what the plugin sends.
    pub fn check_http(
        &self,
        method: HttpMethod,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(), String> {
        http::check(
            self.methods.as_deref(),
            self.paths.as_deref(),
            self.body_fields.as_deref().unwrap_or_default(),
            (method, path, body),
        )
    }

    /// The byte cap of one SQL result: `max_bytes`, at most `max_host_call_bytes`.
    pub fn sql_max_bytes(&self, max_host_call_bytes: u64) -> u64 {
        self.max_bytes
            .map_or(max_host_call_bytes, |cap| cap.min(max_host_call_bytes))
    }
}

/// One `[plugins.<name>.connections]` entry: the connection it names and its
/// policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub connection: String,
    pub policy: GrantPolicy,
}

impl<'de> Deserialize<'de> for Grant {
    /// `"name"` or `{ connection = "name", <policy keys> }`; unknown keys are
    /// refused, naming them.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GrantVisitor;

        impl<'de> Visitor<'de> for GrantVisitor {
            type Value = Grant;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter
                    .write_str("a connection name, or a table with `connection` and policy keys")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Grant, E> {
                Ok(Grant {
                    connection: name.to_owned(),
                    policy: GrantPolicy::default(),
                })
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Grant, M::Error> {
                let mut connection = None;
                let mut rest = BTreeMap::<String, toml::Value>::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "connection" {
                        connection = Some(map.next_value::<String>()?);
                    } else {
                        let value = map.next_value::<toml::Value>()?;
                        rest.insert(key, value);
                    }
                }
                let connection =
                    connection.ok_or_else(|| de::Error::missing_field("connection"))?;
                let policy = toml::Value::Table(rest.into_iter().collect())
                    .try_into::<GrantPolicy>()
                    .map_err(|error| de::Error::custom(error.message()))?;
                Ok(Grant { connection, policy })
            }
        }

        deserializer.deserialize_any(GrantVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Grants {
        connections: BTreeMap<String, Grant>,
    }

    fn parse(text: &str) -> Result<BTreeMap<String, Grant>, String> {
        toml::from_str::<Grants>(text)
            .map(|grants| grants.connections)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn both_forms_parse() {
        let grants = parse(
            "[connections]\nplain = 'redis'\n\
             cache = { connection = 'redis', commands = ['get', 'ACL SETUSER'] }\n\
             api = { connection = 'mq', methods = ['put'], paths = ['/api/vhosts/'] }\n\
             db = { connection = 'pg', read_only = true, max_rows = 10, max_bytes = 100 }\n",
        )
        .expect("parses");
        assert_eq!(grants["plain"].connection, "redis");
        assert_eq!(grants["plain"].policy, GrantPolicy::default());
        let commands = grants["cache"].policy.commands.as_ref().expect("set");
        assert_eq!(commands[1].to_string(), "ACL SETUSER");
        assert_eq!(grants["api"].policy.methods, Some(vec![HttpMethod::Put]));
        let db = &grants["db"].policy;
        assert!(db.read_only);
        assert_eq!(
            (db.max_rows, db.sql_max_bytes(50), db.sql_max_bytes(1000)),
            (Some(10), 50, 100)
        );
        assert!(db.misplaced_keys(Family::Sql).is_empty());
        assert_eq!(
            db.misplaced_keys(Family::Redis),
            ["read_only", "max_rows", "max_bytes"]
        );
        assert_eq!(
            grants["api"].policy.misplaced_keys(Family::Tcp),
            ["methods", "paths"]
        );
    }

    #[test]
    fn bad_grants_are_refused_naming_what_is_wrong() {
        for (text, expected) in [
            ("a = { connection = 'x', comands = ['GET'] }", "comands"),
            ("a = { commands = ['GET'] }", "connection"),
            (
                "a = { connection = 'x', commands = ['ACL SET USER'] }",
                "ACL SET USER",
            ),
            ("a = { connection = 'x', commands = [''] }", "empty"),
            ("a = { connection = 'x', methods = ['TRACE'] }", "TRACE"),
            ("a = { connection = 'x', paths = ['api/'] }", "api/"),
            ("a = { connection = 'x', paths = ['/api/../x'] }", ".."),
            ("a = { connection = 'x', max_rows = -1 }", "max_rows"),
            ("a = 3", "connection name"),
        ] {
            let error = parse(&format!("[connections]\n{text}\n")).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
