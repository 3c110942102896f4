//! A grant's Redis policy and the call's deadline, against the local Redis.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::capabilities::connections::tests::{connections, reachable_or_skip};
use crate::limits::DeadlineExceeded;
use crate::policy::{CommandPattern, GrantPolicy};
use wit::Host as _;

/// Aliases `default` (no policy: the default refusals) and `listed` (only
/// PING and BLPOP), on one connection.
fn host() -> RedisHost {
    let connections = connections(&[(
        "cache",
        "kind = 'redis'\nurl = 'redis://127.0.0.1:6379'\nmax_connections = 2",
    )]);
    let aliases = BTreeMap::from([
        ("default".to_owned(), "cache".to_owned()),
        ("listed".to_owned(), "cache".to_owned()),
    ]);
    let listed = GrantPolicy {
        commands: Some(
            ["PING", "BLPOP"]
                .iter()
                .map(|text| CommandPattern::parse(text).expect("valid"))
                .collect(),
        ),
        ..GrantPolicy::default()
    };
    let policies = BTreeMap::from([("listed".to_owned(), listed)]);
    let grants = Grants::new(connections, Arc::new(aliases)).with_policies(Arc::new(policies));
    RedisHost::new(grants, 64 * 1024)
}

async fn command(host: &mut RedisHost, alias: &str, args: &[&str]) -> Result<Reply, Error> {
    let args = args.iter().map(|arg| arg.as_bytes().to_vec()).collect();
    host.command(alias.to_owned(), args).await.expect("no trap")
}

#[tokio::test]
async fn refused_commands_never_reach_the_server() {
    // Port 9: nothing listens; a command that got through would fail to
    // connect instead of being denied.
    let connections = connections(&[("closed", "kind = 'redis'\nurl = 'redis://127.0.0.1:9'")]);
    let aliases = BTreeMap::from([("admin".to_owned(), "closed".to_owned())]);
    let mut host = RedisHost::new(Grants::new(connections, Arc::new(aliases)), 1024);
    for args in [
        &["CONFIG", "GET", "requirepass"][..],
        &["FLUSHALL"],
        &["SHUTDOWN"],
        &["DEBUG", "SLEEP", "0"],
    ] {
        let result = command(&mut host, "admin", args).await;
        assert!(
            matches!(&result, Err(Error::Denied(_))),
            "{args:?}: {result:?}"
        );
    }
    let result = command(&mut host, "admin", &["PING"]).await;
    assert!(matches!(&result, Err(Error::Failed(_))), "{result:?}");
}

#[tokio::test]
async fn a_command_list_is_enforced_per_alias() {
    if !reachable_or_skip("Redis", "127.0.0.1:6379").await {
        return;
    }
    let mut host = host();
    assert_eq!(
        command(&mut host, "listed", &["PING"])
            .await
            .expect("allowed"),
        Reply::Data(b"PONG".to_vec())
    );
    let result = command(&mut host, "listed", &["GET", "x"]).await;
    assert!(
        matches!(&result, Err(Error::Denied(message)) if message.contains("GET")),
        "{result:?}"
    );
    // The other alias of the same connection has the default policy.
    command(&mut host, "default", &["GET", "x"])
        .await
        .expect("allowed");
    let result = command(&mut host, "default", &["CONFIG", "GET", "requirepass"]).await;
    assert!(matches!(&result, Err(Error::Denied(_))), "{result:?}");
}

#[tokio::test]
async fn a_blocked_command_ends_at_the_deadline() {
    if !reachable_or_skip("Redis", "127.0.0.1:6379").await {
        return;
    }
    let key = format!("wb_test_{:016x}:never", rand::random::<u64>());
    let mut host = host().in_call(
        Arc::from("test"),
        CallDeadline::after(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let trap = host
        .command(
            "listed".to_owned(),
            vec![b"BLPOP".to_vec(), key.into_bytes(), b"30".to_vec()],
        )
        .await
        .expect_err("a trap at the deadline");
    assert!(
        trap.downcast_ref::<DeadlineExceeded>().is_some(),
        "{trap:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(host.sessions.is_empty(), "the blocked connection was kept");
}
