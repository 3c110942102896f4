//! What an `ACL SETUSER` or `ACL DELUSER` from a plugin may do. A plugin
//! that makes a user per binding (the shipped redis plugin) needs `ACL
//! SETUSER`, and Redis lets any holder of it give a user every right,
//! administration included: the account's own limits do not bound the
//! users it makes. So the host decides, for every such command:
//!
//! - the rules may not hold selectors (`(~* +@all)`: rules inside rules);
//! - the user the rules would make, from nothing, may run none of
//!   [`PROBES`] (server administration and ACL changes);
//! - the users it names, if they exist, may run none of them either: an
//!   operator's administrator may not be given a new password or deleted.
//!
//! Which commands a set of rules allows depends on the server's command
//! categories (`+@write` holds FLUSHALL; `-@dangerous` then takes it away),
//! so the server answers, not a table here: the capability applies the
//! rules to a scratch user that cannot log in (`off`, no password), asks
//! `ACL DRYRUN` for each probe, and deletes it. This module is the pure
//! part: recognising the commands, the scratch user's rules, the probes,
//! and reading `ACL DRYRUN`'s answers.
//!
//! Rules only ever add to or remove from a user's rights, so what a user
//! may do after `SETUSER u rules` is at most what it could do before plus
//! what `rules` give from nothing: checking both bounds the result.

/// The commands (with valid arity, as `ACL DRYRUN` checks it) that a user
/// made or changed by a plugin may not run: what administers the server,
/// wipes it, runs code the host never sees, or changes ACL users. Commands
/// on keys are left out: key patterns are the plugin's own business.
pub const PROBES: &[&[&str]] = &[
    &["ACL", "SETUSER", "x"],
    &["ACL", "DELUSER", "x"],
    &["ACL", "GETUSER", "x"],
    &["ACL", "LIST"],
    &["ACL", "LOAD"],
    &["ACL", "SAVE"],
    &["ACL", "DRYRUN", "x", "PING"],
    &["BGREWRITEAOF"],
    &["BGSAVE"],
    &["CLIENT", "KILL", "ID", "1"],
    &["CLIENT", "LIST"],
    &["CLIENT", "PAUSE", "0"],
    &["CLUSTER", "INFO"],
    &["CONFIG", "GET", "requirepass"],
    &["CONFIG", "SET", "x", "y"],
    &["DEBUG", "SLEEP", "0"],
    &["EVAL", "return 1", "0"],
    &["FAILOVER"],
    &["FCALL", "f", "0"],
    &["FLUSHALL"],
    &["FLUSHDB"],
    &["FUNCTION", "FLUSH"],
    &["KEYS", "*"],
    &["MODULE", "LIST"],
    &["MONITOR"],
    &["PSYNC", "?", "-1"],
    &["REPLICAOF", "NO", "ONE"],
    &["SAVE"],
    &["SCRIPT", "FLUSH"],
    &["SHUTDOWN"],
    &["SLAVEOF", "NO", "ONE"],
    &["SLOWLOG", "GET"],
    &["SWAPDB", "0", "1"],
    &["SYNC"],
];

/// The prefix of the scratch users' names; a random suffix makes each one.
pub const SCRATCH_PREFIX: &str = "wasm-broker-acl-check-";

/// An ACL change a plugin asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum AclChange<'a> {
    /// `ACL SETUSER user rules...`
    SetUser {
        user: &'a [u8],
        rules: &'a [Vec<u8>],
    },
    /// `ACL DELUSER users...`
    DelUser { users: &'a [Vec<u8>] },
}

impl AclChange<'_> {
    /// The existing users the change would touch.
    pub fn users(&self) -> Vec<&[u8]> {
        match self {
            Self::SetUser { user, .. } => vec![*user],
            Self::DelUser { users } => users.iter().map(Vec::as_slice).collect(),
        }
    }
}

/// The ACL change `args` asks for, if it is one.
pub fn acl_change(args: &[Vec<u8>]) -> Option<AclChange<'_>> {
    let [command, subcommand, rest @ ..] = args else {
        return None;
    };
    if !command.eq_ignore_ascii_case(b"ACL") {
        return None;
    }
    if subcommand.eq_ignore_ascii_case(b"SETUSER") {
        let (user, rules) = rest.split_first()?;
        Some(AclChange::SetUser { user, rules })
    } else if subcommand.eq_ignore_ascii_case(b"DELUSER") {
        Some(AclChange::DelUser { users: rest })
    } else {
        None
    }
}

/// Why the rules are refused before the server is asked: a selector.
pub fn check_rules(rules: &[Vec<u8>]) -> Result<(), String> {
    if rules.iter().any(|rule| rule.first() == Some(&b'(')) {
        return Err(
            "ACL SETUSER with a selector is refused: the host checks plain rules only".to_owned(),
        );
    }
    Ok(())
}

/// `ACL SETUSER scratch reset <rules> off resetpass`: what `rules` give a
/// user made from nothing, on a user no one can log in as.
pub fn scratch_command(scratch: &str, rules: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut command: Vec<Vec<u8>> = ["ACL", "SETUSER", scratch, "reset"]
        .iter()
        .map(|word| word.as_bytes().to_vec())
        .collect();
    command.extend(rules.iter().cloned());
    command.extend([b"off".to_vec(), b"resetpass".to_vec()]);
    command
}

/// `ACL DRYRUN user <probe>`.
pub fn dryrun_command(user: &[u8], probe: &[&str]) -> Vec<Vec<u8>> {
    let mut command = vec![b"ACL".to_vec(), b"DRYRUN".to_vec(), user.to_vec()];
    command.extend(probe.iter().map(|word| word.as_bytes().to_vec()));
    command
}

/// What `ACL DRYRUN` answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Dryrun {
    /// `OK`: the user may run the command.
    Allowed,
    /// A text saying why not (Redis answers a refusal as a plain reply).
    Refused,
    /// The server has no such user.
    NoSuchUser,
    /// The server does not know the command (an older or trimmed server):
    /// no user can run it.
    UnknownCommand,
}

/// Reads an `ACL DRYRUN` answer: `Ok(text)` for a plain reply, `Err(text)`
/// for an error reply. Anything unforeseen is an error: the host then
/// refuses the change rather than guess.
pub fn read_dryrun(answer: Result<&str, &str>) -> Result<Dryrun, String> {
    match answer {
        Ok(text) if text.eq_ignore_ascii_case("OK") => Ok(Dryrun::Allowed),
        Ok(_) => Ok(Dryrun::Refused),
        Err(text) => {
            // "Command 'acl|setuser' not found" must not read as a missing
            // user: command first, and "user '" with its space.
            let lower = text.to_ascii_lowercase();
            if lower.contains("command '") && lower.ends_with("not found") {
                Ok(Dryrun::UnknownCommand)
            } else if lower.contains("user '") && lower.ends_with("not found") {
                Ok(Dryrun::NoSuchUser)
            } else {
                Err(text.to_owned())
            }
        }
    }
}

/// The probe as a refusal names it.
pub fn describe_probe(probe: &[&str]) -> String {
    probe.iter().take(2).copied().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|word| word.as_bytes().to_vec()).collect()
    }

    #[test]
    fn only_setuser_and_deluser_are_acl_changes() {
        let setuser = args(&["acl", "SetUser", "u", "on", "+@all"]);
        assert_eq!(
            acl_change(&setuser),
            Some(AclChange::SetUser {
                user: b"u",
                rules: &setuser[3..]
            })
        );
        let deluser = args(&["ACL", "DELUSER", "a", "b"]);
        let change = acl_change(&deluser).expect("a change");
        assert_eq!(change.users(), [b"a".as_slice(), b"b".as_slice()]);
        for other in [
            args(&["ACL", "WHOAMI"]),
            args(&["ACL", "SETUSER"]),
            args(&["GET", "SETUSER"]),
            args(&["ACL"]),
        ] {
            assert_eq!(acl_change(&other), None, "{other:?}");
        }
    }

    #[test]
    fn selectors_are_refused() {
        assert!(check_rules(&args(&["on", "(~* +@all)"])).is_err());
        assert!(check_rules(&args(&["on", "~inst_*", "+get", "clearselectors"])).is_ok());
    }

    #[test]
    fn the_scratch_user_cannot_log_in() {
        let command = scratch_command("s", &args(&["on", ">pw", "+@all"]));
        assert_eq!(
            command,
            args(&[
                "ACL",
                "SETUSER",
                "s",
                "reset",
                "on",
                ">pw",
                "+@all",
                "off",
                "resetpass"
            ])
        );
    }

    #[test]
    fn dryrun_answers() {
        type Row<'a> = (Result<&'a str, &'a str>, Result<Dryrun, ()>);
        let table: &[Row] = &[
            (Ok("OK"), Ok(Dryrun::Allowed)),
            (
                Ok("This user has no permissions to run the 'flushall' command"),
                Ok(Dryrun::Refused),
            ),
            (Err("ERR User 'x' not found"), Ok(Dryrun::NoSuchUser)),
            (
                Err("ERR Command 'failover' not found"),
                Ok(Dryrun::UnknownCommand),
            ),
            (
                Err("ERR Command 'acl|setuser' not found"),
                Ok(Dryrun::UnknownCommand),
            ),
            (
                Err("NOPERM this user has no permissions to run the 'acl|dryrun' command"),
                Err(()),
            ),
            (
                Err("ERR wrong number of arguments for 'config|get' command"),
                Err(()),
            ),
        ];
        for (answer, expected) in table {
            assert_eq!(
                read_dryrun(*answer).map_err(|_| ()),
                *expected,
                "{answer:?}"
            );
        }
    }

    #[test]
    fn probes_name_their_command() {
        assert_eq!(
            describe_probe(&["CONFIG", "GET", "requirepass"]),
            "CONFIG GET"
        );
        assert!(PROBES.iter().all(|probe| !probe.is_empty()));
    }
}
