//! Connections from broker.toml tables: parsing, public addresses, grants.

use super::*;

/// Connections from `(name, body of its [connections.<name>] table)` pairs.
pub(crate) fn connections(tables: &[(&str, &str)]) -> Arc<Connections> {
    let text: String = tables
        .iter()
        .map(|(name, body)| format!("[{name}]\n{body}\n"))
        .collect();
    let configs: BTreeMap<String, ConnectionConfig> =
        toml::from_str(&text).expect("valid connection tables");
    Arc::new(Connections::from_config(&configs).expect("valid connections"))
}

/// Whether a local service answers. Outside CI a missing service skips
/// the test; under `CI=true` it fails it, so CI cannot pass by skipping.
pub(crate) async fn reachable_or_skip(service: &str, address: &str) -> bool {
    let connect = tokio::net::TcpStream::connect(address);
    if matches!(
        tokio::time::timeout(Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    ) {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{service} not reachable at {address} (CI=true)"
    );
    eprintln!("skipping: {service} not reachable at {address}");
    false
}

fn config(kind: &str, url: &str, extra: &str) -> BTreeMap<String, ConnectionConfig> {
    let text = format!("[admin]\nkind = '{kind}'\nurl = '{url}'\n{extra}");
    toml::from_str(&text).expect("valid connection table")
}

#[tokio::test]
async fn public_address_comes_from_the_url_or_the_overrides() {
    let connections =
        Connections::from_config(&config("mysql", "mysql://root:secret@127.0.0.1:3307", ""))
            .expect("valid");
    let Some(Connection::Sql(sql)) = connections.get("admin") else {
        panic!("not sql")
    };
    assert_eq!(
        sql.address,
        PublicAddress {
            host: "127.0.0.1".to_owned(),
            port: 3307
        }
    );

    let overridden = config(
        "postgres",
        "postgres://postgres@127.0.0.1",
        "public_host = 'db.example'\npublic_port = 6432",
    );
    let connections = Connections::from_config(&overridden).expect("valid");
    let Some(Connection::Sql(sql)) = connections.get("admin") else {
        panic!("not sql")
    };
    assert_eq!(
        sql.address,
        PublicAddress {
            host: "db.example".to_owned(),
            port: 6432
        }
    );
}

#[tokio::test]
async fn bad_urls_name_the_connection_and_hide_the_url() {
    for (kind, url) in [
        ("mysql", "not a url :secret@"),
        ("http", "ftp://user:secret@host/"),
        ("redis", "http://:secret@host"),
    ] {
        let error = Connections::from_config(&config(kind, url, ""))
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("[connections.admin]"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }
}

#[tokio::test]
async fn zero_connections_are_refused() {
    let error =
        Connections::from_config(&config("redis", "redis://127.0.0.1", "max_connections = 0"))
            .err()
            .expect("refused")
            .to_string();
    assert!(error.contains("max_connections"), "{error}");
}

#[test]
fn http_credentials_leave_the_url() {
    let connections =
        Connections::from_config(&config("http", "http://guest:gu%40st@127.0.0.1:15672/", ""))
            .expect("valid");
    let Some(Connection::Http(http)) = connections.get("admin") else {
        panic!("not http")
    };
    assert_eq!(http.public_base_url, "http://127.0.0.1:15672");
    assert_eq!(http.base_url.as_str(), "http://127.0.0.1:15672/");
    assert_eq!(http.username.as_deref(), Some("guest"));
    assert_eq!(http.password.as_deref(), Some("gu@st"));
}

#[test]
fn redis_tls_and_unix_sockets() {
    let connections =
        Connections::from_config(&config("redis", "rediss://:pw@cache.example:6380", ""))
            .expect("valid");
    let Some(Connection::Redis(redis)) = connections.get("admin") else {
        panic!("not redis")
    };
    assert!(redis.tls);
    assert_eq!(
        redis.address,
        PublicAddress {
            host: "cache.example".to_owned(),
            port: 6380
        }
    );

    let error = Connections::from_config(&config("redis", "redis+unix:///run/redis.sock", ""))
        .err()
        .expect("refused");
    assert!(error.to_string().contains("public_host"), "{error}");
    Connections::from_config(&config(
        "redis",
        "redis+unix:///run/redis.sock",
        "public_host = 'cache'\npublic_port = 6379",
    ))
    .expect("valid with a public address");
}

#[tokio::test]
async fn a_changed_configuration_keeps_the_unchanged_connections() {
    let tables = |text: &str| -> BTreeMap<String, ConnectionConfig> {
        toml::from_str(text).expect("valid connection tables")
    };
    let old = Connections::from_config(&tables(
        "[same]\nkind = 'redis'\nurl = 'redis://127.0.0.1'\n\
         [moved]\nkind = 'http'\nurl = 'http://127.0.0.1:1'\n\
         [gone]\nkind = 'redis'\nurl = 'redis://127.0.0.1'\n",
    ))
    .expect("valid");
    let (new, changes) = old
        .reconfigured(&tables(
            "[same]\nkind = 'redis'\nurl = 'redis://127.0.0.1'\n\
             [moved]\nkind = 'http'\nurl = 'http://127.0.0.1:2'\n\
             [added]\nkind = 'http'\nurl = 'http://127.0.0.1:3'\n",
        ))
        .expect("valid");
    assert!(
        Arc::ptr_eq(&old.by_name["same"], &new.by_name["same"]),
        "an unchanged connection keeps its pool"
    );
    assert!(!Arc::ptr_eq(&old.by_name["moved"], &new.by_name["moved"]));
    assert_eq!(
        changes,
        ConnectionChanges {
            added: vec!["added".to_owned()],
            changed: vec!["moved".to_owned()],
            removed: vec!["gone".to_owned()],
        }
    );
    assert!(new.get("gone").is_none());

    let error = new
        .reconfigured(&tables(
            "[same]\nkind = 'redis'\nurl = 'http://:secret@host'\n",
        ))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("[connections.same]") && !error.contains("secret"),
        "{error}"
    );
    assert!(
        new.get("moved").is_some(),
        "a refused change leaves the set as it was"
    );
}

#[tokio::test]
async fn grants_resolve_only_granted_aliases_of_the_right_kind() {
    let connections = Arc::new(
        Connections::from_config(&config("redis", "redis://127.0.0.1", "")).expect("valid"),
    );
    let grants = Grants::new(
        connections,
        Arc::new(BTreeMap::from([("cache".to_owned(), "admin".to_owned())])),
    );
    assert!(grants.redis("cache").is_ok());
    let not_granted = grants.redis("admin").err().expect("alias, not name");
    assert!(
        not_granted.contains("\"admin\" is not granted"),
        "{not_granted}"
    );
    let wrong = grants.sql("cache").err().expect("wrong kind");
    assert!(
        wrong.contains("a Redis connection, not an SQL one"),
        "{wrong}"
    );
}
