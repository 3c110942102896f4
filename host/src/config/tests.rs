use super::*;

#[test]
fn revealed_credentials_are_named_per_plugin() {
    let config: Config = toml::from_str(
        "[connections.nats]\nkind = 'tcp'\nurl = 'tcp://a:b@h:4222'\nreveal_credentials = true\n\
         [connections.mqtt]\nkind = 'tcp'\nurl = 'tcp://a:b@h:1884'\n\
         [plugins.nats.connections]\nadmin = 'nats'\n\
         [plugins.mosquitto.connections]\nadmin = 'mqtt'\n",
    )
    .expect("parses");
    assert_eq!(config.revealed_to("nats"), vec!["nats".to_owned()]);
    assert!(config.revealed_to("mosquitto").is_empty());
    assert!(config.revealed_to("absent").is_empty());
}

#[test]
fn empty_file_needs_only_auth() {
    let config: Config = toml::from_str("[auth]\nusername='u'\npassword='p'").expect("parses");
    config.validate().expect("valid");
    assert_eq!(
        config.server.missing_version_status,
        MissingVersionStatus::PreconditionFailed
    );
}

#[test]
fn grant_of_unknown_connection_is_refused() {
    let config: Config = toml::from_str(
        "[auth]\nusername='u'\npassword='p'\n[plugins.mysql.connections]\nadmin='nope'",
    )
    .expect("parses");
    let error = config.validate().expect_err("must be refused").to_string();
    assert!(error.contains("nope"), "{error}");
}

#[test]
fn plugin_limits_override_global_ones() {
    let config: Config = toml::from_str(
        "[runtime]\nmemory_limit_mb=64\n[plugins.a]\nmemory_limit_mb=8\n[plugins.a.config]\nx='y'",
    )
    .expect("parses");
    let limits = config.runtime.limits_for(&config.plugin("a").limits);
    assert_eq!(limits.memory_limit_mb, 8);
    assert_eq!(limits.call_timeout_ms, config.runtime.call_timeout_ms);
    assert_eq!(
        config.plugin("a").config.get("x").and_then(|v| v.as_str()),
        Some("y")
    );
}

#[test]
fn a_postgres_state_needs_a_url() {
    let config: Config =
        toml::from_str("[auth]\nusername='u'\npassword='p'\n[state]\nbackend='postgres'")
            .expect("parses");
    let error = config.validate().expect_err("must be refused").to_string();
    assert!(error.contains("WASM_BROKER_STATE_URL"), "{error}");
    let config: Config = toml::from_str(
        "[auth]\nusername='u'\npassword='p'\n[state]\nbackend='postgres'\nurl='postgres://x@h/db'",
    )
    .expect("parses");
    config.validate().expect("valid");
    assert_eq!(config.state.replica_lease_seconds, 30);
}

#[test]
fn api_versions_parse() {
    assert_eq!(parse_api_version("2.17"), Some((2, 17)));
    assert_eq!(parse_api_version("2"), None);
    assert_eq!(parse_api_version("a.b"), None);
    assert_eq!(parse_api_version("2.+17"), None);
    assert_eq!(parse_api_version("+2.17"), None);
}

#[test]
fn the_compile_worker_gets_a_cap_it_can_compile_under() {
    let config: Config = toml::from_str("[auth]\nusername='u'\npassword='p'").expect("parses");
    assert_eq!(config.runtime.compile_memory_mb, 2048);
    let config: Config =
        toml::from_str("[auth]\nusername='u'\npassword='p'\n[runtime]\ncompile_memory_mb = 16")
            .expect("parses");
    let error = config.validate().expect_err("must be refused").to_string();
    assert!(error.contains("compile_memory_mb"), "{error}");
}
