//! The `redis` capability: commands on the Redis connections broker.toml
//! grants a plugin. The host holds the URL and the admin password. A
//! command passes the grant's policy first (`crate::policy::redis`: a
//! `denied` never reaches the server; an ACL change is also checked on the
//! server, `acl_guard`), ends at the call's deadline (its
//! connection closed), and its reply is bounded while read (`meter`).

mod acl_guard;
mod meter;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::{HasSelf, Linker};

pub(crate) use self::meter::ReplyMeter;
use super::connections::Grants;
use super::refusal::Refusals;
use super::{CallContext, Capability};
use crate::contract::wasm_broker::plugin::redis::{
    self as wit, Error, Reply, ReplyItem, ServerInfo,
};
use crate::limits::{ByteBudget, CallDeadline};

/// The `redis` import of one plugin call.
pub struct RedisHost {
    grants: Grants,
    max_host_call_bytes: u64,
    deadline: CallDeadline,
    refusals: Refusals,
    /// Connections this call opened, by connection name; closed when the
    /// call ends, so what one call does to its connection (SELECT, MULTI,
    /// CLIENT REPLY ...) never reaches another.
    sessions: BTreeMap<String, Session>,
}

struct Session {
    connection: MultiplexedConnection,
    /// What each reply on the connection may read.
    meter: ReplyMeter,
    _permit: OwnedSemaphorePermit,
}

impl RedisHost {
    /// `grants` maps the alias the plugin uses to a `[connections.<name>]`.
    pub fn new(grants: Grants, max_host_call_bytes: u64) -> Self {
        Self {
            grants,
            max_host_call_bytes,
            deadline: CallDeadline::distant(),
            refusals: Refusals::new(Arc::from("unnamed")),
            sessions: BTreeMap::new(),
        }
    }

    /// The same host, serving a call of `plugin` that ends at `deadline`.
    pub(crate) fn in_call(self, plugin: Arc<str>, deadline: CallDeadline) -> Self {
        Self {
            deadline,
            refusals: Refusals::new(plugin),
            ..self
        }
    }

    async fn run(&mut self, alias: &str, args: Vec<Vec<u8>>) -> Result<Reply, Error> {
        let (name, redis) = self.grants.redis(alias).map_err(Error::NotGranted)?;
        if args.is_empty() {
            return Err(Error::Failed(
                "empty command: the first argument names the command".to_owned(),
            ));
        }
        self.grants
            .policy(alias)
            .check_redis(&args, redis.username())
            .map_err(|reason| Error::Denied(self.refusals.denied("redis", alias, reason)))?;
        ByteBudget::new(self.max_host_call_bytes)
            .take(args.iter().map(Vec::len).sum(), "the command")
            .map_err(Error::LimitExceeded)?;
        let session = match self.sessions.entry(name.to_owned()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let meter = ReplyMeter::new(meter::wire_allowance(self.max_host_call_bytes));
                let (connection, permit) = redis.open(&meter).await.map_err(Error::Failed)?;
                entry.insert(Session {
                    connection,
                    meter,
                    _permit: permit,
                })
            }
        };
        acl_guard::check(&mut session.connection, &session.meter, &args)
            .await
            .map_err(|stopped| match stopped {
                acl_guard::Stopped::Refused(reason) => {
                    Error::Denied(self.refusals.denied("redis", alias, reason))
                }
                acl_guard::Stopped::Failed(reason) => Error::Failed(reason),
            })?;
        session.meter.next_reply();
        let mut command = redis::Cmd::new();
        for arg in &args {
            command.arg(arg.as_slice());
        }
        match command
            .query_async::<redis::Value>(&mut session.connection)
            .await
        {
            Ok(value) => to_reply(value, &mut ByteBudget::new(self.max_host_call_bytes)),
            Err(_) if session.meter.tripped() => {
                // The rest of the reply is still on the way: the connection
                // is dropped with it, and the next command reconnects.
                self.sessions.remove(name);
                Err(Error::LimitExceeded(format!(
                    "the reply exceeds the host-call data limit of {} bytes (abandoned while read)",
                    self.max_host_call_bytes
                )))
            }
            Err(error) => {
                if error.is_io_error() || error.is_connection_dropped() {
                    // The next command of this call reconnects.
                    self.sessions.remove(name);
                }
                Err(Error::Failed(error.to_string()))
            }
        }
    }
}

impl wit::Host for RedisHost {
    async fn get_server_info(
        &mut self,
        connection: String,
    ) -> wasmtime::Result<Result<ServerInfo, Error>> {
        Ok(self
            .grants
            .redis(&connection)
            .map_err(Error::NotGranted)
            .map(|(_, redis)| ServerInfo {
                host: redis.address.host.clone(),
                port: redis.address.port,
                tls: redis.tls,
            }))
    }

    async fn command(
        &mut self,
        connection: String,
        args: Vec<Vec<u8>>,
    ) -> wasmtime::Result<Result<Reply, Error>> {
        let deadline = self.deadline;
        let outcome = deadline.bound("redis", self.run(&connection, args)).await;
        outcome.map_err(|exceeded| {
            // The command may still be running on the server: its
            // connection is closed, not used again.
            self.sessions.clear();
            wasmtime::Error::new(exceeded)
        })
    }
}

impl Capability for RedisHost {
    fn for_call(call: &CallContext<'_>) -> Self {
        Self::new(call.connections(), call.max_host_call_bytes())
            .in_call(call.plugin().clone(), call.deadline)
    }

    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

/// A reply reduced to what the WIT `reply` can say. RESP3 types fold into
/// RESP2 ones: maps become arrays of key, value, key, value ..., sets and
/// pushes arrays, booleans 0/1, doubles and big numbers decimal text.
enum Shape {
    Nil,
    Integer(i64),
    Data(Vec<u8>),
    Aggregate(Vec<redis::Value>),
}

fn shape(value: redis::Value) -> Result<Shape, Error> {
    use redis::Value;
    Ok(match value {
        Value::Nil => Shape::Nil,
        Value::Int(number) => Shape::Integer(number),
        Value::Boolean(flag) => Shape::Integer(flag.into()),
        Value::BulkString(bytes) => Shape::Data(bytes),
        Value::SimpleString(text) => Shape::Data(text.into_bytes()),
        Value::Okay => Shape::Data(b"OK".to_vec()),
        Value::Double(number) => Shape::Data(number.to_string().into_bytes()),
        Value::VerbatimString { text, .. } => Shape::Data(text.into_bytes()),
        Value::BigNumber(number) => Shape::Data(number.to_string().into_bytes()),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            Shape::Aggregate(items)
        }
        Value::Map(pairs) => Shape::Aggregate(
            pairs
                .into_iter()
                .flat_map(|(key, value)| [key, value])
                .collect(),
        ),
        Value::Attribute { data, .. } => shape(*data)?,
        // An error inside an array (e.g. from EXEC) fails the whole command:
        // the WIT reply has no place for it.
        Value::ServerError(error) => {
            return Err(Error::Failed(redis::RedisError::from(error).to_string()));
        }
    })
}

/// Bytes of one element: integers and nils count as 8.
fn element_size(shape: &Shape) -> usize {
    match shape {
        Shape::Data(bytes) => bytes.len(),
        Shape::Nil | Shape::Integer(_) | Shape::Aggregate(_) => 8,
    }
}

fn count(shape: &Shape, budget: &mut ByteBudget) -> Result<(), Error> {
    budget
        .take(element_size(shape), "the reply")
        .map_err(Error::LimitExceeded)
}

fn to_reply(value: redis::Value, budget: &mut ByteBudget) -> Result<Reply, Error> {
    let shape = shape(value)?;
    count(&shape, budget)?;
    Ok(match shape {
        Shape::Nil => Reply::Nil,
        Shape::Integer(number) => Reply::Integer(number),
        Shape::Data(bytes) => Reply::Data(bytes),
        Shape::Aggregate(items) => Reply::Array(
            items
                .into_iter()
                .map(|item| to_item(item, budget))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn to_item(value: redis::Value, budget: &mut ByteBudget) -> Result<ReplyItem, Error> {
    let shape = shape(value)?;
    count(&shape, budget)?;
    Ok(match shape {
        Shape::Nil => ReplyItem::Nil,
        Shape::Integer(number) => ReplyItem::Integer(number),
        Shape::Data(bytes) => ReplyItem::Data(bytes),
        Shape::Aggregate(items) => {
            let mut elements = Vec::with_capacity(items.len());
            for item in items {
                flatten(item, &mut elements, budget)?;
            }
            ReplyItem::Nested(elements)
        }
    })
}

/// An inner array's elements as bytes: integers as decimal text, nil as
/// empty; deeper arrays contribute their elements in order.
fn flatten(
    value: redis::Value,
    elements: &mut Vec<Vec<u8>>,
    budget: &mut ByteBudget,
) -> Result<(), Error> {
    let shape = shape(value)?;
    count(&shape, budget)?;
    match shape {
        Shape::Nil => elements.push(Vec::new()),
        Shape::Integer(number) => elements.push(number.to_string().into_bytes()),
        Shape::Data(bytes) => elements.push(bytes),
        Shape::Aggregate(items) => {
            for item in items {
                flatten(item, elements, budget)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::capabilities::connections::tests::{connections, reachable_or_skip};
    use wit::Host as _;

    const REDIS: &str = "127.0.0.1:6379";

    fn host(max_host_call_bytes: u64) -> RedisHost {
        let connections = connections(&[(
            "cache",
            "kind = 'redis'\nurl = 'redis://127.0.0.1:6379'\nmax_connections = 2",
        )]);
        let aliases = BTreeMap::from([("admin".to_owned(), "cache".to_owned())]);
        RedisHost::new(
            Grants::new(connections, Arc::new(aliases)),
            max_host_call_bytes,
        )
    }

    async fn command(host: &mut RedisHost, args: &[&[u8]]) -> Result<Reply, Error> {
        host.command(
            "admin".to_owned(),
            args.iter().map(|arg| arg.to_vec()).collect(),
        )
        .await
        .expect("no trap")
    }

    async fn ok(host: &mut RedisHost, args: &[&[u8]]) -> Reply {
        command(host, args)
            .await
            .unwrap_or_else(|error| panic!("{args:?}: {error:?}"))
    }

    fn data(bytes: &[u8]) -> Reply {
        Reply::Data(bytes.to_vec())
    }

    fn prefix() -> String {
        format!("wb_test_{:016x}:", rand::random::<u64>())
    }

    #[tokio::test]
    async fn set_get_and_scan_map_to_replies() {
        if !reachable_or_skip("Redis", REDIS).await {
            return;
        }
        let mut host = host(64 * 1024);
        let prefix = prefix();
        let key = format!("{prefix}a");
        assert_eq!(
            ok(&mut host, &[b"SET", key.as_bytes(), b"v\x00\xff"]).await,
            data(b"OK")
        );
        assert_eq!(
            ok(&mut host, &[b"GET", key.as_bytes()]).await,
            data(b"v\x00\xff")
        );
        let missing = format!("{prefix}missing");
        assert_eq!(
            ok(&mut host, &[b"GET", missing.as_bytes()]).await,
            Reply::Nil
        );
        let counter = format!("{prefix}n");
        assert_eq!(
            ok(&mut host, &[b"INCRBY", counter.as_bytes(), b"41"]).await,
            Reply::Integer(41)
        );

        // SCAN answers [cursor, [keys]]: the inner array arrives as `nested`.
        let pattern = format!("{prefix}*");
        let mut cursor = b"0".to_vec();
        let mut keys = Vec::new();
        loop {
            let reply = ok(
                &mut host,
                &[
                    b"SCAN",
                    &cursor,
                    b"MATCH",
                    pattern.as_bytes(),
                    b"COUNT",
                    b"1000",
                ],
            )
            .await;
            let Reply::Array(items) = reply else {
                panic!("SCAN answered {reply:?}")
            };
            let [ReplyItem::Data(next), ReplyItem::Nested(batch)] = items.as_slice() else {
                panic!("{items:?}")
            };
            keys.extend(batch.iter().cloned());
            if next == b"0" {
                break;
            }
            cursor = next.clone();
        }
        keys.sort();
        assert_eq!(keys, [key.as_bytes().to_vec(), counter.as_bytes().to_vec()]);

        assert_eq!(
            ok(&mut host, &[b"MGET", key.as_bytes(), missing.as_bytes()]).await,
            Reply::Array(vec![ReplyItem::Data(b"v\x00\xff".to_vec()), ReplyItem::Nil])
        );
        assert_eq!(
            ok(&mut host, &[b"DEL", key.as_bytes(), counter.as_bytes()]).await,
            Reply::Integer(2)
        );
    }

    #[tokio::test]
    async fn server_errors_come_back_as_failed() {
        if !reachable_or_skip("Redis", REDIS).await {
            return;
        }
        let mut host = host(64 * 1024);
        let result = command(&mut host, &[b"NOSUCHCOMMAND"]).await;
        assert!(
            matches!(&result, Err(Error::Failed(message)) if message.to_lowercase().contains("unknown command")),
            "{result:?}"
        );
        let result = command(&mut host, &[]).await;
        assert!(matches!(result, Err(Error::Failed(_))), "{result:?}");
        // The connection survives an error reply.
        assert_eq!(ok(&mut host, &[b"PING"]).await, data(b"PONG"));
    }

    #[tokio::test]
    async fn each_call_has_its_own_connection() {
        if !reachable_or_skip("Redis", REDIS).await {
            return;
        }
        let key = format!("{}selected", prefix());
        let mut first = host(64 * 1024);
        ok(&mut first, &[b"SELECT", b"1"]).await;
        ok(&mut first, &[b"SET", key.as_bytes(), b"x"]).await;
        assert_eq!(ok(&mut first, &[b"GET", key.as_bytes()]).await, data(b"x"));
        // Another call starts on database 0, whatever the first one selected.
        let mut second = host(64 * 1024);
        assert_eq!(ok(&mut second, &[b"GET", key.as_bytes()]).await, Reply::Nil);
        ok(&mut first, &[b"DEL", key.as_bytes()]).await;
    }

    #[tokio::test]
    async fn commands_and_replies_over_the_limit_are_refused() {
        if !reachable_or_skip("Redis", REDIS).await {
            return;
        }
        let mut host = host(200);
        let key = format!("{}big", prefix());
        let result = command(&mut host, &[b"SET", key.as_bytes(), &[b'x'; 200]]).await;
        assert!(matches!(result, Err(Error::LimitExceeded(_))), "{result:?}");
        ok(&mut host, &[b"SET", key.as_bytes(), &[b'x'; 150]]).await;
        ok(&mut host, &[b"APPEND", key.as_bytes(), &[b'x'; 150]]).await;
        let result = command(&mut host, &[b"GET", key.as_bytes()]).await;
        let Err(Error::LimitExceeded(message)) = result else {
            panic!("{result:?}")
        };
        assert!(
            message.contains("the reply exceeds the host-call data limit of 200 bytes"),
            "{message}"
        );
        ok(&mut host, &[b"DEL", key.as_bytes()]).await;
    }

    #[tokio::test]
    async fn server_info_and_grants() {
        let mut host = host(1024);
        let info = host
            .get_server_info("admin".to_owned())
            .await
            .expect("no trap")
            .expect("granted");
        assert_eq!(
            (info.host.as_str(), info.port, info.tls),
            ("127.0.0.1", 6379, false)
        );
        let result = host
            .command("cache".to_owned(), vec![b"PING".to_vec()])
            .await
            .expect("no trap");
        let Err(Error::NotGranted(message)) = result else {
            panic!("{result:?}")
        };
        assert!(message.contains("\"cache\" is not granted"), "{message}");
    }

    #[test]
    fn nested_replies_flatten_to_bytes() {
        use redis::Value;
        let reply = Value::Array(vec![
            Value::Int(7),
            Value::Array(vec![
                Value::BulkString(b"k".to_vec()),
                Value::Int(3),
                Value::Nil,
                Value::Array(vec![Value::Okay]),
            ]),
            Value::Map(vec![(
                Value::SimpleString("f".to_owned()),
                Value::Double(1.5),
            )]),
        ]);
        let Reply::Array(items) = to_reply(reply, &mut ByteBudget::new(1024)).expect("fits") else {
            panic!()
        };
        let [
            ReplyItem::Integer(7),
            ReplyItem::Nested(nested),
            ReplyItem::Nested(map),
        ] = items.as_slice()
        else {
            panic!("{items:?}")
        };
        assert_eq!(
            nested,
            &[b"k".to_vec(), b"3".to_vec(), Vec::new(), b"OK".to_vec()]
        );
        assert_eq!(map, &[b"f".to_vec(), b"1.5".to_vec()]);
    }
}
