//! Grants with a policy in broker.toml, and the shipped file's own.

use super::*;

#[test]
fn grants_with_a_policy_parse_and_misplaced_keys_are_refused() {
    let text = "[auth]\nusername='u'\npassword='p'\n\
                [connections.cache]\nkind='redis'\nurl='redis://h'\n\
                [connections.db]\nkind='postgres'\nurl='postgres://h/db'\n\
                [plugins.a]\nmemory_limit_mb=8\n\
                [plugins.a.connections]\nplain='cache'\n\
                admin={ connection='cache', commands=['PING','ACL SETUSER'] }\n\
                ro={ connection='db', read_only=true }\n";
    let config: Config = toml::from_str(text).expect("parses");
    config.validate().expect("valid");
    let plugin = config.plugin("a");
    assert_eq!(plugin.connections["admin"], "cache");
    assert_eq!(plugin.connections["plain"], "cache");
    assert_eq!(plugin.limits.memory_limit_mb, Some(8));
    assert!(!plugin.policies.contains_key("plain"));
    assert!(plugin.policies["ro"].read_only);

    let misplaced = text.replace("read_only=true", "commands=['GET']");
    let config: Config = toml::from_str(&misplaced).expect("parses");
    let error = config.validate().expect_err("misplaced").to_string();
    assert!(
        error.contains("commands does not apply to [connections.db]"),
        "{error}"
    );

    let unknown = text.replace("read_only=true", "readonly=true");
    let error = toml::from_str::<Config>(&unknown)
        .expect_err("unknown key")
        .to_string();
    assert!(error.contains("readonly"), "{error}");
}

#[test]
fn the_shipped_broker_toml_is_valid_and_narrows_its_grants() {
    let config: Config =
        toml::from_str(include_str!("../../../broker.toml")).expect("broker.toml parses");
    config.validate().expect("broker.toml is valid");
    let redis = &config.plugin("redis").policies["admin"];
    let commands: Vec<String> = redis
        .commands
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    assert!(commands.contains(&"ACL SETUSER".to_owned()), "{commands:?}");
    assert!(!commands.iter().any(|command| command.starts_with("CONFIG")));
    let rabbitmq = &config.plugin("rabbitmq").policies["admin"];
    assert!(
        rabbitmq
            .check_http(crate::policy::HttpMethod::Get, "/api/users", None)
            .is_err()
    );
    rabbitmq
        .check_http(crate::policy::HttpMethod::Put, "/api/vhosts/inst_1", None)
        .expect("the plugin's own request");
}
