//! The end-to-end tests: the real `wasm-broker serve` binary, talked to
//! over OSB, with the shipped plugins against real MariaDB, PostgreSQL,
//! Redis, RabbitMQ and Mosquitto, and with the fixture plugins of
//! `tests/fixtures`.
//!
//! One test binary, so CI links once rather than once per file. Its tests
//! run in parallel threads of one process: the harness gives every broker a
//! port and every resource an id no other test of the process gets, and the
//! tests that measure time or keep every core busy hold
//! `wasm_broker_tests::timed` or `saturating` so they stay out of each
//! other's way.

mod async_required;
mod backends;
mod concurrency;
mod deadlines;
mod disconnect;
mod escalation;
mod grants;
mod group_commit;
mod ha;
mod hot_reload;
mod least_privilege;
mod listener;
mod live_config;
mod malformed;
mod metrics;
mod osb_rules;
mod ownership;
mod plugin_test;
mod policy;
mod polyglot;
mod quotas;
mod reading_limits;
mod restart;
mod retired;
mod sandbox;
mod scaffold;
mod schemathesis;
mod secrets;
mod tcp_escape;
mod upgrades;
