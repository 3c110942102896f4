//! The credentials object a binding hands to the application.

use serde_json::{Map, Value};

use crate::http::encode_segment;
use crate::{BindOutcome, BindingResult, Endpoint, EndpointProtocol};

/// Builds the usual credentials of a network service:
///
/// ```json
/// { "uri": "mysql://u:pw@db.example:3306/db_1", "jdbcUrl": "jdbc:mysql://db.example:3306/db_1?user=u&password=pw",
///   "hostname": "db.example", "host": "db.example", "port": 3306, "name": "db_1",
///   "username": "u", "password": "pw" }
/// ```
///
/// Every part of a URI is percent-encoded, so any user, password or
/// database name yields a valid URI. Both `hostname` (Cloud Foundry
/// libraries) and `host` (most others) are set.
#[derive(Debug, Clone)]
pub struct Credentials {
    scheme: String,
    host: String,
    port: u16,
    login: Option<(String, String)>,
    database: Option<String>,
    jdbc_subprotocol: Option<String>,
    extra: Map<String, Value>,
}

impl Credentials {
    /// A service at `scheme://host:port`.
    pub fn new(scheme: &str, host: &str, port: u16) -> Self {
        Self {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port,
            login: None,
            database: None,
            jdbc_subprotocol: None,
            extra: Map::new(),
        }
    }

    /// Adds `username` and `password` (and puts them into the URIs).
    #[must_use]
    pub fn login(mut self, username: &str, password: &str) -> Self {
        self.login = Some((username.to_owned(), password.to_owned()));
        self
    }

    /// Adds `name` (and the URI path): a database, a RabbitMQ vhost ...
    #[must_use]
    pub fn database(mut self, name: &str) -> Self {
        self.database = Some(name.to_owned());
        self
    }

    /// Adds `jdbcUrl`, e.g. with `"mysql"` or `"postgresql"`.
    #[must_use]
    pub fn jdbc(mut self, subprotocol: &str) -> Self {
        self.jdbc_subprotocol = Some(subprotocol.to_owned());
        self
    }

    /// Adds a field of the plugin's own.
    #[must_use]
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// `scheme://user:password@host:port/name`.
    pub fn uri(&self) -> String {
        let userinfo = match &self.login {
            Some((username, password)) => {
                format!("{}:{}@", encode_segment(username), encode_segment(password))
            }
            None => String::new(),
        };
        let path = self
            .database
            .as_deref()
            .map(|name| format!("/{}", encode_segment(name)))
            .unwrap_or_default();
        format!("{}://{userinfo}{}{path}", self.scheme, self.authority())
    }

    /// `jdbc:<subprotocol>://host:port/name?user=..&password=..`, if asked for.
    pub fn jdbc_url(&self) -> Option<String> {
        let subprotocol = self.jdbc_subprotocol.as_deref()?;
        let path = self
            .database
            .as_deref()
            .map(encode_segment)
            .unwrap_or_default();
        let query = match &self.login {
            Some((username, password)) => {
                format!(
                    "?user={}&password={}",
                    encode_segment(username),
                    encode_segment(password)
                )
            }
            None => String::new(),
        };
        Some(format!(
            "jdbc:{subprotocol}://{}/{path}{query}",
            self.authority()
        ))
    }

    /// The credentials object.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("uri".to_owned(), self.uri().into());
        if let Some(jdbc_url) = self.jdbc_url() {
            object.insert("jdbcUrl".to_owned(), jdbc_url.into());
        }
        object.insert("hostname".to_owned(), self.host.clone().into());
        object.insert("host".to_owned(), self.host.clone().into());
        object.insert("port".to_owned(), self.port.into());
        if let Some(name) = &self.database {
            object.insert("name".to_owned(), name.clone().into());
        }
        if let Some((username, password)) = &self.login {
            object.insert("username".to_owned(), username.clone().into());
            object.insert("password".to_owned(), password.clone().into());
        }
        object.extend(self.extra.clone());
        Value::Object(object)
    }

    /// A finished bind handing out these credentials, with the service's
    /// address as the binding's network endpoint.
    pub fn into_bind_outcome(self) -> BindOutcome {
        BindOutcome::Done(BindingResult {
            credentials: Some(self.to_json().to_string()),
            metadata: None,
            syslog_drain_url: None,
            route_service_url: None,
            volume_mounts: Vec::new(),
            endpoints: vec![Endpoint {
                host: self.host.clone(),
                ports: vec![self.port.to_string()],
                protocol: EndpointProtocol::Tcp,
            }],
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn full_database_credentials() {
        let credentials = Credentials::new("mysql", "db.example", 3306)
            .login("u_1", "Pw9")
            .database("db_1")
            .jdbc("mysql")
            .to_json();
        assert_eq!(
            credentials,
            json!({
                "uri": "mysql://u_1:Pw9@db.example:3306/db_1",
                "jdbcUrl": "jdbc:mysql://db.example:3306/db_1?user=u_1&password=Pw9",
                "hostname": "db.example",
                "host": "db.example",
                "port": 3306,
                "name": "db_1",
                "username": "u_1",
                "password": "Pw9",
            })
        );
    }

    #[test]
    fn every_uri_part_is_percent_encoded() {
        let credentials = Credentials::new("amqp", "::1", 5672)
            .login("a@b", "p:w/d?#")
            .database("my/vhost");
        assert_eq!(
            credentials.uri(),
            "amqp://a%40b:p%3Aw%2Fd%3F%23@[::1]:5672/my%2Fvhost"
        );
    }

    #[test]
    fn plugin_fields_and_no_path() {
        let credentials = Credentials::new("redis", "127.0.0.1", 6379)
            .login("u", "p")
            .field("prefix", "inst_1");
        let json = credentials.to_json();
        assert_eq!(json["uri"], "redis://u:p@127.0.0.1:6379");
        assert_eq!(json["prefix"], "inst_1");
        assert!(json.get("jdbcUrl").is_none() && json.get("name").is_none());
    }

    #[test]
    fn bind_outcome_lists_the_endpoint() {
        let BindOutcome::Done(result) = Credentials::new("redis", "h", 1).into_bind_outcome()
        else {
            panic!("a finished bind");
        };
        assert_eq!(result.endpoints.len(), 1);
        assert_eq!(result.endpoints[0].ports, vec!["1".to_owned()]);
        let credentials: Value =
            serde_json::from_str(result.credentials.as_deref().expect("credentials"))
                .expect("json");
        assert_eq!(credentials["host"], "h");
    }
}
