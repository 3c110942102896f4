//! Provision, bind, unbind and deprovision run natively against the SDK's
//! fake `redis` capability: the commands the plugin sends and the
//! credentials it returns.

use wasm_broker_sdk::redis::{Error, ReplyItem, ServerInfo};
use wasm_broker_sdk::testing::{self, Fakes};

use super::*;

fn fakes(tls: bool) -> Fakes {
    let fakes = Fakes::install();
    fakes.redis.grant(
        ADMIN,
        ServerInfo {
            host: "cache.test".to_owned(),
            port: 6380,
            tls,
        },
    );
    fakes
}

fn instance() -> Instance {
    testing::instance("instance-1", SERVICE_ID, PLANS[0].id)
}

fn scan_page(cursor: &str, keys: &[&str]) -> Reply {
    Reply::Array(vec![
        ReplyItem::Data(cursor.as_bytes().to_vec()),
        ReplyItem::Nested(keys.iter().map(|key| key.as_bytes().to_vec()).collect()),
    ])
}

#[test]
fn provision_checks_the_grant_with_a_ping_and_repeats_alike() {
    let fakes = fakes(false);
    Redis::provision(&instance(), &testing::request()).expect("provisioned");
    Redis::provision(&instance(), &testing::request()).expect("provisioned again");
    assert_eq!(fakes.redis.commands(), [["PING"], ["PING"]]);
}

#[test]
fn provision_fails_when_the_server_is_unreachable() {
    let fakes = fakes(false);
    fakes
        .redis
        .fail(&["PING"], Error::Failed("connection refused".to_owned()));
    let error = Redis::provision(&instance(), &testing::request()).expect_err("fails");
    assert!(
        error.description().contains("connection refused"),
        "{error:?}"
    );
}

#[test]
fn bind_creates_an_acl_user_for_the_prefix_and_a_repeat_resets_it() {
    let fakes = fakes(true);
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);

    let first = testing::credentials(
        &Redis::bind(&instance, &binding, &testing::request()).expect("bound"),
    );
    let again = testing::credentials(
        &Redis::bind(&instance, &binding, &testing::request()).expect("bound again"),
    );

    let user = user_name(&binding);
    let prefix = key_prefix(&instance);
    let password = first["password"].as_str().expect("password");
    assert_eq!(password.len(), 32);
    assert_eq!(first["username"], user.as_str());
    assert_eq!(first["prefix"], prefix.as_str());
    assert_eq!(
        first["uri"],
        format!("rediss://{user}:{password}@cache.test:6380")
    );
    assert_eq!(again["username"], first["username"]);
    assert_ne!(again["password"], first["password"]);

    let commands = fakes.redis.commands();
    let mut expected = vec![
        "ACL".to_owned(),
        "SETUSER".to_owned(),
        user.clone(),
        "reset".to_owned(),
        "on".to_owned(),
        format!("#{}", sha256_hex(password)),
        format!("~{prefix}*"),
        format!("&{prefix}*"),
    ];
    expected.extend(COMMAND_RULES.iter().map(|rule| (*rule).to_owned()));
    assert_eq!(commands[0], expected);
    assert_eq!(commands[1], ["ACL", "SAVE"]);
    // The retry starts from `reset` again, with the new password's hash.
    assert_eq!(commands[2][3], "reset");
    assert_eq!(
        commands[2][5],
        format!(
            "#{}",
            sha256_hex(again["password"].as_str().expect("password"))
        )
    );
    // The password itself never travels.
    assert!(!commands.concat().iter().any(|word| word.contains(password)));
}

#[test]
fn a_server_without_an_aclfile_still_binds_and_the_operator_is_warned() {
    let fakes = fakes(false);
    fakes.redis.fail(
        &["ACL", "SAVE"],
        Error::Failed("ERR This Redis instance is not configured to use an ACL file".to_owned()),
    );
    let instance = instance();
    Redis::bind(
        &instance,
        &testing::binding("binding-1", &instance),
        &testing::request(),
    )
    .expect("bound");
    assert!(
        fakes
            .log
            .lines()
            .iter()
            .any(|line| line.level == log::Level::Warn && line.message.contains("aclfile")),
        "{:?}",
        fakes.log.lines()
    );
}

#[test]
fn unbind_deletes_the_user_every_time() {
    let fakes = fakes(false);
    let instance = instance();
    let binding = testing::binding("binding-1", &instance);
    // Redis answers 0 (no user deleted) the second time: still done.
    fakes
        .redis
        .reply_once(&["ACL", "DELUSER"], Reply::Integer(1));
    fakes.redis.reply(&["ACL", "DELUSER"], Reply::Integer(0));
    Redis::unbind(&instance, &binding, &testing::request()).expect("unbound");
    Redis::unbind(&instance, &binding, &testing::request()).expect("unbound again");
    let user = user_name(&binding);
    assert_eq!(
        fakes.redis.commands(),
        [
            vec!["ACL", "DELUSER", user.as_str()],
            vec!["ACL", "SAVE"],
            vec!["ACL", "DELUSER", user.as_str()],
            vec!["ACL", "SAVE"],
        ]
    );
}

#[test]
fn deprovision_unlinks_every_page_of_the_prefix() {
    let fakes = fakes(false);
    let instance = instance();
    let prefix = key_prefix(&instance);
    let key = |name: &str| format!("{prefix}{name}");
    let (a, b, c) = (key("a"), key("b"), key("c"));
    fakes.redis.reply(&["SCAN"], scan_page("0", &[c.as_str()]));
    fakes
        .redis
        .reply_once(&["SCAN", "0"], scan_page("17", &[a.as_str(), b.as_str()]));

    Redis::deprovision(&instance, &testing::request()).expect("deprovisioned");

    let pattern = format!("{prefix}*");
    assert_eq!(
        fakes.redis.commands(),
        [
            vec!["SCAN", "0", "MATCH", pattern.as_str(), "COUNT", SCAN_BATCH],
            vec!["UNLINK", a.as_str(), b.as_str()],
            vec!["SCAN", "17", "MATCH", pattern.as_str(), "COUNT", SCAN_BATCH],
            vec!["UNLINK", c.as_str()],
        ]
    );
    assert!(
        fakes
            .log
            .messages()
            .contains(&format!("deleted 3 keys under {pattern}"))
    );
}
