//! Redis command policy: an allow-list of commands, with subcommand
//! granularity (`ACL SETUSER`), or else the default, which refuses the
//! commands that administer the server rather than data in it.

use std::fmt;

use serde::Deserialize;

/// Refused when a grant lists no `commands`: what reconfigures, stops,
/// replicates, wipes or blocks the whole server, reads other clients'
/// traffic or secrets, or runs code that could call any of these (scripts
/// and functions run commands the host never sees).
pub const DEFAULT_DENIED: &[&str] = &[
    "ACL GETUSER",
    "ACL LIST",
    "ACL LOAD",
    "ACL LOG",
    "ACL SAVE",
    "BGREWRITEAOF",
    "BGSAVE",
    "CLIENT KILL",
    "CLIENT LIST",
    "CLIENT PAUSE",
    "CLUSTER",
    "CONFIG",
    "DEBUG",
    "EVAL",
    "EVALSHA",
    "EVALSHA_RO",
    "EVAL_RO",
    "FAILOVER",
    "FCALL",
    "FCALL_RO",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "KEYS",
    "MIGRATE",
    "MODULE",
    "MONITOR",
    "PFDEBUG",
    "PFSELFTEST",
    "PSYNC",
    "REPLCONF",
    "REPLICAOF",
    "RESTORE",
    "RESTORE-ASKING",
    "SAVE",
    "SCRIPT",
    "SHUTDOWN",
    "SLAVEOF",
    "SLOWLOG",
    "SWAPDB",
    "SYNC",
];

/// `COMMAND` or `COMMAND SUBCOMMAND`, upper case. One word matches every
/// form of the command; two match only that subcommand (the first argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPattern {
    command: String,
    subcommand: Option<String>,
}

impl CommandPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid_word = |word: &str| {
            word.bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_|.".contains(&byte))
        };
        let words: Vec<&str> = text.split_ascii_whitespace().collect();
        let (command, subcommand) = match words.as_slice() {
            [] => return Err("a command pattern is empty".to_owned()),
            [command] => (*command, None),
            [command, subcommand] => (*command, Some(*subcommand)),
            _ => {
                return Err(format!(
                    "{text:?} is not COMMAND or COMMAND SUBCOMMAND (two words at most)"
                ));
            }
        };
        if !words.iter().all(|word| valid_word(word)) {
            return Err(format!("{text:?} holds characters no Redis command has"));
        }
        Ok(Self {
            command: command.to_ascii_uppercase(),
            subcommand: subcommand.map(str::to_ascii_uppercase),
        })
    }

    /// Whether the command `args` is this pattern. Redis compares command
    /// names without case, so does this.
    fn matches(&self, args: &[Vec<u8>]) -> bool {
        let same = |word: &str, arg: Option<&Vec<u8>>| {
            arg.is_some_and(|arg| arg.eq_ignore_ascii_case(word.as_bytes()))
        };
        same(&self.command, args.first())
            && self
                .subcommand
                .as_deref()
                .is_none_or(|subcommand| same(subcommand, args.get(1)))
    }
}

impl fmt::Display for CommandPattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.command)?;
        if let Some(subcommand) = &self.subcommand {
            write!(formatter, " {subcommand}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for CommandPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The command as the refusal names it: its first two words at most, cut
/// short and with non-printable bytes escaped (a plugin chose them).
fn describe(args: &[Vec<u8>]) -> String {
    args.iter()
        .take(2)
        .map(|arg| {
            let shown: String = arg
                .iter()
                .take(32)
                .flat_map(|byte| std::ascii::escape_default(*byte))
                .map(char::from)
                .collect();
            shown.to_ascii_uppercase()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The user an `ACL SETUSER` or `ACL DELUSER` would change that no grant
/// may change: `default` (every client that does not log in) and `own_user`
/// (the one the host logs in as). Either would hand the plugin the server:
/// `ACL SETUSER default on nopass +@all`.
fn protected_user<'a>(args: &'a [Vec<u8>], own_user: &str) -> Option<&'a [u8]> {
    let [command, subcommand, users @ ..] = args else {
        return None;
    };
    if !command.eq_ignore_ascii_case(b"ACL") {
        return None;
    }
    // SETUSER names one user, DELUSER any number.
    let users = if subcommand.eq_ignore_ascii_case(b"SETUSER") {
        users.get(..1).unwrap_or_default()
    } else if subcommand.eq_ignore_ascii_case(b"DELUSER") {
        users
    } else {
        return None;
    };
    // User names are case-sensitive.
    users
        .iter()
        .map(Vec::as_slice)
        .find(|user| *user == b"default" || *user == own_user.as_bytes())
}

/// Why `args` is refused: an ACL change of `default` or of `own_user`
/// (always); else not in `allowed` when the grant lists commands, or in
/// [`DEFAULT_DENIED`] when it does not.
pub fn check(
    allowed: Option<&[CommandPattern]>,
    args: &[Vec<u8>],
    own_user: &str,
) -> Result<(), String> {
    if let Some(user) = protected_user(args, own_user) {
        return Err(format!(
            "{} of {:?} is refused: no grant may change the default user or the one the host logs in as",
            describe(args),
            String::from_utf8_lossy(user)
        ));
    }
    match allowed {
        Some(allowed) => {
            if allowed.iter().any(|pattern| pattern.matches(args)) {
                Ok(())
            } else {
                Err(format!(
                    "{} is not among the commands this grant allows in broker.toml",
                    describe(args)
                ))
            }
        }
        None => {
            let denied = DEFAULT_DENIED
                .iter()
                .any(|text| CommandPattern::parse(text).is_ok_and(|pattern| pattern.matches(args)));
            if denied {
                Err(format!(
                    "{} administers the server: refused unless the grant lists it in `commands` in broker.toml",
                    describe(args)
                ))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|word| word.as_bytes().to_vec()).collect()
    }

    fn patterns(texts: &[&str]) -> Vec<CommandPattern> {
        texts
            .iter()
            .map(|text| CommandPattern::parse(text).expect("valid"))
            .collect()
    }

    #[test]
    fn the_default_refuses_server_administration() {
        for denied in [
            &["CONFIG", "GET", "requirepass"][..],
            &["config", "set", "requirepass", "x"],
            &["FLUSHALL"],
            &["flushdb", "ASYNC"],
            &["SHUTDOWN", "NOSAVE"],
            &["DEBUG", "SLEEP", "0"],
            &["MONITOR"],
            &["MODULE", "LOAD", "/tmp/x.so"],
            &["SAVE"],
            &["BGSAVE"],
            &["REPLICAOF", "evil", "6379"],
            &["SLAVEOF", "evil", "6379"],
            &["EVAL", "return redis.call('CONFIG','GET','*')", "0"],
            &["evalsha", "abc", "0"],
            &["FUNCTION", "LOAD", "x"],
            &["SCRIPT", "LOAD", "x"],
            &["FCALL", "f", "0"],
            &["CLIENT", "KILL", "ID", "1"],
            &["client", "list"],
            &["ACL", "LOAD"],
            &["ACL", "SAVE"],
            &["acl", "log"],
            &["ACL", "LIST"],
            &["ACL", "GETUSER", "default"],
            &["MIGRATE", "h", "1", "k", "0", "5"],
            &["SYNC"],
            &["PSYNC", "?", "-1"],
            &["SWAPDB", "0", "1"],
            &["KEYS", "*"],
        ] {
            let error = check(None, &args(denied), "broker").expect_err(&denied.join(" "));
            assert!(error.contains("administers the server"), "{error}");
        }
        for allowed in [
            &["PING"][..],
            &["GET", "k"],
            &["SCAN", "0", "MATCH", "p*"],
            &["UNLINK", "a", "b"],
            &["ACL", "SETUSER", "u", "on"],
            &["acl", "deluser", "u"],
            &["ACL", "WHOAMI"],
            &["CLIENT", "SETNAME", "x"],
            // A key named like a command is data, not the command.
            &["SET", "CONFIG", "x"],
            &["GET", "FLUSHALL"],
        ] {
            check(None, &args(allowed), "broker")
                .unwrap_or_else(|error| panic!("{allowed:?}: {error}"));
        }
    }

    #[test]
    fn a_list_allows_exactly_its_commands_and_subcommands() {
        let allowed = patterns(&["PING", "scan", "ACL SETUSER", "acl deluser"]);
        for ok in [
            &["PING"][..],
            &["ping"],
            &["SCAN", "0"],
            &["ACL", "SETUSER", "u"],
            &["Acl", "DelUser", "u"],
        ] {
            check(Some(&allowed), &args(ok), "broker")
                .unwrap_or_else(|error| panic!("{ok:?}: {error}"));
        }
        for denied in [
            &["GET", "k"][..],
            &["ACL", "LOAD"],
            &["ACL", "SAVE"],
            &["ACL"],
            &["ACL", "SETUSERX"],
            &["CONFIG", "GET", "requirepass"],
            &["PINGX"],
            &[],
        ] {
            let error =
                check(Some(&allowed), &args(denied), "broker").expect_err(&denied.join(" "));
            assert!(error.contains("not among the commands"), "{error}");
        }
        // A whole command allows every subcommand; an empty list nothing.
        let whole = patterns(&["CONFIG"]);
        check(Some(&whole), &args(&["CONFIG", "GET", "x"]), "broker").expect("allowed");
        assert!(check(Some(&[]), &args(&["PING"]), "broker").is_err());
    }

    #[test]
    fn no_grant_changes_the_default_user_or_its_own() {
        let allowed = patterns(&["ACL SETUSER", "ACL DELUSER"]);
        for denied in [
            &["ACL", "SETUSER", "default", "on", "nopass", "+@all"][..],
            &["acl", "setuser", "broker", "resetpass"],
            &["ACL", "DELUSER", "u_1", "default"],
            &["ACL", "DELUSER", "broker"],
        ] {
            for list in [None, Some(allowed.as_slice())] {
                let error = check(list, &args(denied), "broker").expect_err(&denied.join(" "));
                assert!(
                    error.contains("default user or the one the host logs in as"),
                    "{error}"
                );
            }
        }
        for ok in [
            &["ACL", "SETUSER", "u_1", "on"][..],
            &["ACL", "SETUSER", "Default"],
            &["ACL", "DELUSER", "u_1", "u_2"],
            &["ACL", "WHOAMI"],
        ] {
            let list = Some(allowed.as_slice()).filter(|_| ok[1] != "WHOAMI");
            check(list, &args(ok), "broker").unwrap_or_else(|error| panic!("{ok:?}: {error}"));
        }
    }

    #[test]
    fn refusals_name_the_command_safely() {
        let error = check(None, &args(&["config", "get\r\n", "requirepass"]), "broker")
            .expect_err("denied");
        assert!(error.starts_with("CONFIG GET\\R\\N "), "{error}");
        assert!(!error.contains("requirepass"), "{error}");
    }

    #[test]
    fn patterns_parse_and_print() {
        assert_eq!(
            CommandPattern::parse(" acl  setuser ")
                .expect("valid")
                .to_string(),
            "ACL SETUSER"
        );
        assert_eq!(
            CommandPattern::parse("restore-asking")
                .expect("valid")
                .to_string(),
            "RESTORE-ASKING"
        );
        for bad in ["", "  ", "A B C", "GET*", "CONFIG\u{0}"] {
            assert!(CommandPattern::parse(bad).is_err(), "{bad:?}");
        }
        for text in DEFAULT_DENIED {
            CommandPattern::parse(text).unwrap_or_else(|error| panic!("{error}"));
        }
    }
}
