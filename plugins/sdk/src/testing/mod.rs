//! In-memory fakes of the host's capabilities, so a plugin's logic runs in
//! a native `cargo test` (feature `testing`).
//!
//! Compiled for any target but `wasm32`, the SDK's wrappers ([`crate::sql`],
//! [`crate::redis`], [`crate::http`], [`crate::tcp`], [`crate::kv`],
//! [`crate::config`], [`crate::log`]) call these fakes instead of the host:
//! the plugin's code is the one that ships, unchanged. A test calls the
//! plugin's [`ServicePlugin`](crate::ServicePlugin) functions directly,
//! after scripting what the backend answers, then inspects what the plugin
//! sent:
//!
//! ```ignore
//! use wasm_broker_sdk::sql::{Dialect, ServerInfo};
//! use wasm_broker_sdk::testing::{self, Fakes};
//!
//! #[test]
//! fn provision_creates_the_database() {
//!     let fakes = Fakes::install();
//!     fakes.sql.grant("admin", ServerInfo { dialect: Dialect::Mysql, host: "db.test".into(), port: 3306 });
//!     fakes.sql.fail("DROP", wasm_broker_sdk::sql::Error::Failed("no".into()));
//!     MyPlugin::provision(&testing::instance("i-1", PLAN_ID), &testing::request()).unwrap();
//!     assert_eq!(fakes.sql.statements(), ["CREATE DATABASE IF NOT EXISTS `db...`"]);
//! }
//! ```
//!
//! The fakes behave as the host does where it matters to a plugin: a
//! connection the test did not [grant](Sql::grant) fails with `not-granted`,
//! errors come back as the same [`BrokerError`](crate::BrokerError)s, the kv
//! store is a real (in-memory) key-value store. What the backend answers is
//! the test's script: rules matched newest first, each answering every
//! matching call or only the next ([`Sql::reply_once`]); a call no rule
//! matches gets a neutral answer (an empty SQL result, Redis `OK`, HTTP 204).
//!
//! Each test thread has fakes of its own (Rust runs every test on its own
//! thread), so tests never see each other's scripts. [`Fakes::install`]
//! starts from empty. A responder closure must not call the SDK's
//! capability functions itself.

mod http;
pub(crate) mod imports;
mod kv;
mod redis;
mod sql;
mod tcp;

use std::cell::RefCell;
use std::marker::PhantomData;

pub use self::http::{Http, HttpCall, response};
pub use self::kv::{Config, Kv, Log, LogLine};
pub use self::redis::{Redis, RedisCall};
pub use self::sql::{Sql, SqlCall, rows};
pub use self::tcp::Tcp;

use crate::{BindOutcome, Binding, Instance, RequestInfo};

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Everything the fakes of one thread hold.
#[derive(Default)]
struct State {
    sql: sql::State,
    redis: redis::State,
    http: http::State,
    tcp: tcp::State,
    kv: kv::KvState,
    config: std::collections::BTreeMap<String, String>,
    log: Vec<LogLine>,
}

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    STATE.with(|state| f(&mut state.borrow_mut()))
}

/// The handle on this thread's fakes, one field per capability. Not `Send`:
/// the fakes belong to the thread the test runs on.
pub struct Fakes {
    /// The `sql` capability.
    pub sql: Sql,
    /// The `redis` capability.
    pub redis: Redis,
    /// The `http` capability.
    pub http: Http,
    /// The `tcp` capability.
    pub tcp: Tcp,
    /// The plugin's key-value store.
    pub kv: Kv,
    /// The plugin's settings (`[plugins.<name>.config]`).
    pub config: Config,
    /// What the plugin logged.
    pub log: Log,
}

impl Fakes {
    /// Empties this thread's fakes (no connection granted, no rule, no
    /// setting, nothing recorded) and returns the handle on them.
    pub fn install() -> Self {
        with_state(|state| *state = State::default());
        Self {
            sql: Sql(ThreadBound::default()),
            redis: Redis(ThreadBound::default()),
            http: Http(ThreadBound::default()),
            tcp: Tcp(ThreadBound::default()),
            kv: Kv(ThreadBound::default()),
            config: Config(ThreadBound::default()),
            log: Log(ThreadBound::default()),
        }
    }
}

/// Keeps a handle on the thread whose fakes it scripts.
type ThreadBound = PhantomData<*const ()>;

/// Rules answering calls of one kind, newest first, and the calls seen.
struct Script<C, R> {
    rules: Vec<Rule<C, R>>,
    seen: Vec<C>,
}

/// A responder returning `None` does not match, and the next rule is asked.
type Responder<C, R> = Box<dyn FnMut(&C) -> Option<R>>;

struct Rule<C, R> {
    respond: Responder<C, R>,
    once: bool,
}

impl<C, R> Default for Script<C, R> {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            seen: Vec::new(),
        }
    }
}

impl<C, R> Script<C, R> {
    fn add(&mut self, once: bool, respond: impl FnMut(&C) -> Option<R> + 'static) {
        self.rules.push(Rule {
            respond: Box::new(respond),
            once,
        });
    }

    /// Records `call` and answers it from the newest matching rule.
    fn answer(&mut self, call: C) -> Option<R> {
        let mut answer = None;
        for index in (0..self.rules.len()).rev() {
            if let Some(reply) = (self.rules[index].respond)(&call) {
                if self.rules[index].once {
                    self.rules.remove(index);
                }
                answer = Some(reply);
                break;
            }
        }
        self.seen.push(call);
        answer
    }
}

/// An instance of `plan_id` with id `id`, no parameters, as the host hands
/// it to `provision`. Fill in more with struct update syntax.
pub fn instance(id: &str, service_id: &str, plan_id: &str) -> Instance {
    Instance {
        id: id.to_owned(),
        service_id: service_id.to_owned(),
        plan_id: plan_id.to_owned(),
        parameters: None,
        context: None,
        organization_guid: None,
        space_guid: None,
        maintenance_version: None,
        plugin_version: "0.0.0-test".to_owned(),
    }
}

/// A binding `id` of `instance`, no parameters.
pub fn binding(id: &str, instance: &Instance) -> Binding {
    Binding {
        id: id.to_owned(),
        instance_id: instance.id.clone(),
        service_id: instance.service_id.clone(),
        plan_id: instance.plan_id.clone(),
        app_guid: None,
        bind_resource: None,
        context: None,
        parameters: None,
        predecessor_binding_id: None,
    }
}

/// A synchronous request (`accepts_incomplete=false`, API 2.17).
pub fn request() -> RequestInfo {
    RequestInfo {
        originating_identity: None,
        request_identity: Some("test-request".to_owned()),
        api_version: "2.17".to_owned(),
        accepts_incomplete: false,
    }
}

/// The credentials object of a finished bind, parsed; panics (failing the
/// test) for an accepted bind or one without credentials.
pub fn credentials(outcome: &BindOutcome) -> serde_json::Value {
    match outcome {
        BindOutcome::Done(result) => {
            let text = result
                .credentials
                .as_deref()
                .expect("the bind returned no credentials");
            serde_json::from_str(text).expect("the credentials are not JSON")
        }
        BindOutcome::Accepted(_) => panic!("the bind was accepted (asynchronous), not done"),
    }
}

/// The message a call on a connection the test did not grant fails with.
fn not_granted(capability: &str, connection: &str) -> String {
    format!(
        "connection `{connection}` is not granted: natively the SDK's fakes answer, \
         grant it in the test with `Fakes::install().{capability}.grant(\"{connection}\", ...)` \
         (feature `testing` of wasm-broker-sdk)"
    )
}
