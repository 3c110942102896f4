//! The command line of `wasm-broker`: its arguments (clap) here, each
//! command in a module of its own. The operator commands run the same
//! loading and validation code as `serve`, once, so what they report is
//! what the broker would do; and they read (`instances`) and repair
//! (`purge`) the store it serves from.

pub mod instances;
pub mod keys;
pub mod plugins;
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
    /// Validate a .wasm against the WIT contract and the catalog rules; exits non-zero if the broker would refuse it.
    Check {
        /// The plugin file.
        file: PathBuf,
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
