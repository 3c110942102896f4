//! The command line of `wasm-broker`: its arguments (clap) here, each
//! command in a module of its own. The operator commands run the same
//! loading and validation code as `serve`, once, so what they report is
//! what the broker would do; and they read (`instances`) and repair
//! (`purge`) the store it serves from.

pub mod instances;
pub mod keys;
pub mod plugin_test;
pub mod plugins;
mod plugins_live;
pub mod purge;
pub mod scaffold;
pub mod serve;
mod text;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use wasm_broker::lifecycle::ResourceStatus;

/// An Open Service Broker API v2.17 host whose services are WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// The broker configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "WASM_BROKER_CONFIG",
        default_value = "broker.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the OSB API (and load, and watch, the plugin directory; broker.toml changes and SIGHUP
    /// apply connections, plugin sections and call limits without a restart).
    Serve {
        /// Listen address, overriding [server] listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print the merged catalog the plugin directory yields, as `GET /v2/catalog` would serve it.
    Catalog,
    /// Inspect plugins without serving them.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Print a new random encryption key (base64) for WASM_BROKER_ENCRYPTION_KEY or [state] encryption_key.
    GenerateKey,
    /// Re-encrypt every stored credential with a new key, read from WASM_BROKER_NEW_ENCRYPTION_KEY or
    /// --new-key-file, decrypting with the configured keys. Then start the broker with the new key.
    RotateKey {
        /// File holding the new key in base64.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
    /// Read the service instances in the state store (safe while the broker serves).
    #[command(subcommand)]
    Instances(InstancesCommand),
    /// The compile worker: compile one plugin file for an engine of these settings (the broker
    /// runs this itself, so that compiling's memory is not the broker's).
    #[command(hide = true)]
    CompilePlugin {
        #[arg(long, value_enum)]
        compiler: CompilerArg,
        #[arg(long)]
        largest_memory: u64,
        #[arg(long)]
        max_instances: u32,
        /// The cap on what the worker allocates (its data segment), in MiB.
        #[arg(long)]
        memory_limit_mb: u64,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// Forget a stuck service instance and its bindings, WITHOUT calling the plugin: its backend
    /// resources (databases, users, ...) are NOT deleted.
    #[command(long_about = PURGE_HELP)]
    Purge {
        /// The instance id, as the platform sent it.
        id: String,
        /// Do not ask for confirmation (for scripts). Without it, purge needs a terminal.
        #[arg(long)]
        yes: bool,
        /// Why, recorded in the instance's operation history with the purge.
        #[arg(long)]
        reason: Option<String>,
    },
}

const PURGE_HELP: &str = "\
Forget a stuck service instance: remove its record and the records of its bindings from the state
store, without calling the plugin. Use it when the platform and the broker disagree for good, for
example when an operation can never finish or the plugin that served the instance is gone.

What is NOT deleted: everything the instance has in its backend (databases, users, queues, ...) and
the credentials its bindings handed out, which stay valid. Remove those by hand.

Afterwards the broker answers for the id as for one it never saw: fetch and last_operation 404,
deprovision 410 Gone, and the platform can provision the same id again. A `purge` entry is appended
to the instance's operation history (`wasm-broker instances show ID`), with --reason if given.

purge lists what it will remove and asks you to type the instance id; --yes skips that, and
without a terminal (a script, a pipe) purge refuses to run unless --yes is given.

A broker may keep serving from the same store meanwhile: the purge is one transaction, and it goes
ahead only if the instance and its bindings are still exactly as listed when you confirmed. An
operation the broker is running on the instance at that moment finishes without a record to write
to, so what it creates is not recorded: prefer to purge when nothing is under way.";

#[derive(Subcommand)]
pub enum InstancesCommand {
    /// A table of instances, newest first: id, service, plan, status, last operation, times.
    List {
        /// Only instances of this service (its catalog name, or its id).
        #[arg(long)]
        service: Option<String>,
        /// Only instances in this status (deleted ones are hidden unless asked for).
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Include the records of deleted instances, kept so last_operation can report the deletion.
        #[arg(long, conflicts_with = "status")]
        all: bool,
        /// Show at most this many (0: all of them).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One instance: its record, its bindings (never their credentials) and its operation history.
    Show {
        /// The instance id, as the platform sent it.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StatusArg {
    Creating,
    Ready,
    Failed,
    Deleted,
}

impl From<StatusArg> for ResourceStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Creating => ResourceStatus::Creating,
            StatusArg::Ready => ResourceStatus::Ready,
            StatusArg::Failed => ResourceStatus::Failed,
            StatusArg::Deleted => ResourceStatus::Deleted,
        }
    }
}

#[derive(Subcommand)]
pub enum PluginsCommand {
    /// One line per file in the plugin directory: name, version, WIT version, services, and why a plugin was refused;
    /// then the retired plugins (file gone, instances left) with how many instances they still hold.
    List,
    /// Validate a .wasm against the WIT contract and the catalog rules, its file name against its
    /// describe() name, and its ids and names against the plugins of the directory it would join;
    /// exits non-zero if the broker would refuse it or a rule is broken.
    Check {
        /// The plugin file.
        file: PathBuf,
        /// The plugin directory it would join (default: the configuration's plugin_dir).
        #[arg(long)]
        plugins_dir: Option<PathBuf>,
    },
    /// Drive a plugin through the WIT contract, with the connections the configuration grants it
    /// (no HTTP): catalog rules, parameter schemas, provision, repeats, binds, unbinds,
    /// deprovisions, a provision cut short. Prints a pass/fail report; exits non-zero on a failure.
    #[command(long_about = TEST_HELP)]
    Test {
        /// The plugin file; its stem names its [plugins.<name>] section.
        file: PathBuf,
        /// The plugin directory it must not clash with (default: the configuration's plugin_dir).
        #[arg(long)]
        plugins_dir: Option<PathBuf>,
        /// Run the lifecycle on every plan, not only the first of each offering.
        #[arg(long)]
        all_plans: bool,
        /// Seconds an asynchronous operation may take (at most the plan's maximum_polling_duration).
        #[arg(long, default_value_t = 120)]
        poll_timeout: u64,
        /// Warnings fail the run too.
        #[arg(long)]
        strict: bool,
    },
    /// Release the offering ids, plan ids and offering names a plugin owns (it served them first),
    /// so that another plugin may serve them. Remove the plugin's file first, or it claims them again.
    #[command(long_about = RELEASE_HELP)]
    Release {
        /// The plugin's name: its file stem (mysql for mysql.wasm).
        name: String,
    },
    /// Write a new plugin project, ready to build, to DIR/NAME: one service with one plan, a unit
    /// test, the build configuration (Rust: a copy of the SDK). Needs no broker.toml.
    New {
        /// The plugin's name (a-z, 0-9 and -, starting with a letter): its .wasm file's stem.
        name: String,
        /// The language: a template this binary carries (rust, and those under plugins/templates/).
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Where to create the project's directory (default: the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

const RELEASE_HELP: &str = "\
Release what a plugin owns: the broker records, in its state store, the plugin (file stem) that
first served each offering id, plan id and offering name, and refuses any other plugin that
declares one of them, whatever the file names, across restarts and replicas. This hands them over.

Prints what was released. Remove (or replace) the old owner's .wasm first: a broker still serving
it records it as the owner again at its next reload. The brokers pick up the change at their next
restart or change of the plugin directory: the new claimant then serves, and owns, what it
declares. Instances made by the old owner stay in the store; the new plugin answers for them.";

const TEST_HELP: &str = "\
Drive a plugin through the WIT contract as the broker would, with the runtime `serve` uses and the
connections the configuration grants it in [plugins.<name>] (<name>: the file stem), but without
HTTP and without the broker's own answers to repeated requests, so the plugin's own idempotency is
what is exercised. It works on the real backends: every instance and binding it makes, it deletes.

Checks, each printed with PASS, WARN, SKIP or FAIL and its time:
  load                the WIT contract, describe() and the catalog rules (as `plugins check`)
  file stem           the file is named after describe().name
  clash               no offering id, plan id or name served by another plugin of --plugins-dir
  parameter schemas   each plan's schemas against the samples they offer (examples, defaults)
  per plan (the first of each offering, or all with --all-plans), with the schema samples:
    provision; get-instance (if instances are retrievable); provision again with the same inputs
    (must succeed); provision again with different inputs (another enum value, else another plan:
    conflict expected, a success is a warning); two binds (distinct credentials); unbind; unbind
    again (done or gone); unbind the other; deprovision; deprovision again (done or gone);
    three provisions cut short by a deadline at 1/4, 1/2 and 3/4 of a full one's time, each then
    deprovisioned twice (done or gone)
An `accepted` answer is polled through last_operation until it finishes (--poll-timeout).

Exits non-zero if any check fails (or warns, with --strict).";

/// `[runtime] compiler` on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompilerArg {
    Cranelift,
    Winch,
}

impl From<CompilerArg> for wasm_broker::config::Compiler {
    fn from(compiler: CompilerArg) -> Self {
        match compiler {
            CompilerArg::Cranelift => Self::Cranelift,
            CompilerArg::Winch => Self::Winch,
        }
    }
}
