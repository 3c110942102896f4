//! The fake `redis` capability.

use std::collections::BTreeMap;

use super::{Script, ThreadBound, not_granted, with_state};
use crate::redis::{Error, Reply, ServerInfo};

/// One command the plugin ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisCall {
    /// The connection alias it ran on.
    pub connection: String,
    /// The command and its arguments.
    pub args: Vec<Vec<u8>>,
}

impl RedisCall {
    /// The arguments as text (invalid UTF-8 replaced).
    pub fn words(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    }

    /// Whether the command starts with `prefix`, the command name compared
    /// without regard to case (`["ACL", "SETUSER"]` matches `acl setuser u1`).
    pub fn starts_with(&self, prefix: &[&str]) -> bool {
        prefix.len() <= self.args.len()
            && prefix
                .iter()
                .zip(&self.args)
                .all(|(word, arg)| word.as_bytes().eq_ignore_ascii_case(arg))
    }
}

#[derive(Default)]
pub(super) struct State {
    granted: BTreeMap<String, ServerInfo>,
    script: Script<RedisCall, Result<Reply, Error>>,
}

/// Scripts and inspects the fake `redis` capability.
pub struct Redis(pub(super) ThreadBound);

impl Redis {
    /// Grants `connection`, with the server behind it.
    pub fn grant(&self, connection: &str, server: ServerInfo) {
        with_state(|state| state.redis.granted.insert(connection.to_owned(), server));
    }

    /// Every command starting with `prefix` (see [`RedisCall::starts_with`])
    /// gets `reply`.
    pub fn reply(&self, prefix: &[&str], reply: Reply) {
        self.add(false, prefix, Ok(reply));
    }

    /// The next command starting with `prefix` gets `reply`.
    pub fn reply_once(&self, prefix: &[&str], reply: Reply) {
        self.add(true, prefix, Ok(reply));
    }

    /// Every command starting with `prefix` fails with `error`.
    pub fn fail(&self, prefix: &[&str], error: Error) {
        self.add(false, prefix, Err(error));
    }

    /// Answers every command `respond` returns `Some` for.
    pub fn respond(
        &self,
        respond: impl FnMut(&RedisCall) -> Option<Result<Reply, Error>> + 'static,
    ) {
        with_state(|state| state.redis.script.add(false, respond));
    }

    /// The commands run so far.
    pub fn calls(&self) -> Vec<RedisCall> {
        with_state(|state| state.redis.script.seen.clone())
    }

    /// The commands run so far, as text.
    pub fn commands(&self) -> Vec<Vec<String>> {
        self.calls().iter().map(RedisCall::words).collect()
    }

    fn add(&self, once: bool, prefix: &[&str], answer: Result<Reply, Error>) {
        let prefix: Vec<String> = prefix.iter().map(|word| (*word).to_owned()).collect();
        with_state(|state| {
            state.redis.script.add(once, move |call: &RedisCall| {
                let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
                call.starts_with(&prefix).then(|| answer.clone())
            })
        });
    }
}

pub(crate) fn get_server_info(connection: &str) -> Result<ServerInfo, Error> {
    with_state(|state| state.redis.granted.get(connection).cloned())
        .ok_or_else(|| Error::NotGranted(not_granted("redis", connection)))
}

pub(crate) fn command(connection: &str, args: &[Vec<u8>]) -> Result<Reply, Error> {
    get_server_info(connection)?;
    let call = RedisCall {
        connection: connection.to_owned(),
        args: args.to_vec(),
    };
    with_state(|state| state.redis.script.answer(call))
        .unwrap_or_else(|| Ok(Reply::Data(b"OK".to_vec())))
}
