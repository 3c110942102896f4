//! The server-side half of `policy::redis_acl`: before a plugin's `ACL
//! SETUSER` or `ACL DELUSER` runs, the host asks the server, through the
//! plugin's own connection, what the change would allow (on a scratch user
//! that cannot log in) and what the users it names may already do.
//!
//! The account needs `ACL DRYRUN` for this (`tests/services/roles.sh` gives
//! it); without it every ACL change is refused, saying so.
//!
//! Cost: one `SETUSER`, one `DRYRUN` per probe and one `DELUSER` for the
//! scratch user, plus the probes of each named user that exists: about 70
//! round trips on a bind, about 5 ms on loopback. Binds are rare next to
//! what a plugin's users then do.

use rand::Rng;
use redis::aio::MultiplexedConnection;

use super::ReplyMeter;
use crate::policy::redis_acl::{self, AclChange, Dryrun, PROBES, SCRATCH_PREFIX};

/// Why a change does not go ahead.
#[derive(Debug)]
pub(super) enum Stopped {
    /// The change would let a user administer the server: `denied`.
    Refused(String),
    /// The server failed a command the check needed: `failed`.
    Failed(String),
}

/// Whether `args` (already past the grant's policy) may run.
pub(super) async fn check(
    connection: &mut MultiplexedConnection,
    meter: &ReplyMeter,
    args: &[Vec<u8>],
) -> Result<(), Stopped> {
    let Some(change) = redis_acl::acl_change(args) else {
        return Ok(());
    };
    for user in change.users() {
        if let Some(probe) = first_allowed(connection, meter, user).await? {
            return Err(Stopped::Refused(format!(
                "ACL changes of user {:?} are refused: it may run {probe}, and no plugin may change or delete an account that administers the server",
                String::from_utf8_lossy(user)
            )));
        }
    }
    let AclChange::SetUser { user, rules } = change else {
        return Ok(());
    };
    redis_acl::check_rules(rules).map_err(Stopped::Refused)?;
    let scratch = format!("{SCRATCH_PREFIX}{:016x}", rand::rng().random::<u64>());
    run(
        connection,
        meter,
        &redis_acl::scratch_command(&scratch, rules),
    )
    .await
    .map_err(Stopped::Failed)?;
    let verdict = first_allowed(connection, meter, scratch.as_bytes()).await;
    // Always, whatever the probes said: the scratch user must not stay.
    let removed = run(
        connection,
        meter,
        &[
            b"ACL".to_vec(),
            b"DELUSER".to_vec(),
            scratch.clone().into_bytes(),
        ],
    )
    .await;
    if let Some(probe) = verdict? {
        return Err(Stopped::Refused(format!(
            "ACL SETUSER {:?} is refused: its rules would let the user run {probe}, which administers the server",
            String::from_utf8_lossy(user)
        )));
    }
    removed.map(|_| ()).map_err(Stopped::Failed)
}

/// The first probe `user` may run, or `None` (also when there is no such
/// user).
async fn first_allowed(
    connection: &mut MultiplexedConnection,
    meter: &ReplyMeter,
    user: &[u8],
) -> Result<Option<String>, Stopped> {
    for probe in PROBES {
        let answer = run(connection, meter, &redis_acl::dryrun_command(user, probe)).await;
        let verdict = match &answer {
            Ok(text) => redis_acl::read_dryrun(Ok(text)),
            Err(text) => redis_acl::read_dryrun(Err(text)),
        }
        .map_err(|error| {
            Stopped::Refused(format!(
                "the host could not check this ACL change ({error}): the grant's account needs ACL DRYRUN"
            ))
        })?;
        match verdict {
            Dryrun::Allowed => return Ok(Some(redis_acl::describe_probe(probe))),
            Dryrun::NoSuchUser => return Ok(None),
            Dryrun::Refused | Dryrun::UnknownCommand => {}
        }
    }
    Ok(None)
}

/// One host command: `Ok` with a plain reply's text, `Err` with the
/// server's error (or the connection's).
async fn run(
    connection: &mut MultiplexedConnection,
    meter: &ReplyMeter,
    args: &[Vec<u8>],
) -> Result<String, String> {
    meter.next_reply();
    let mut command = redis::Cmd::new();
    for arg in args {
        command.arg(arg.as_slice());
    }
    match command.query_async::<redis::Value>(connection).await {
        Ok(redis::Value::Okay) => Ok("OK".to_owned()),
        Ok(redis::Value::SimpleString(text)) => Ok(text),
        Ok(redis::Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(redis::Value::VerbatimString { text, .. }) => Ok(text),
        Ok(other) => Ok(format!("{other:?}")),
        Err(error) => Err(error.to_string()),
    }
}
