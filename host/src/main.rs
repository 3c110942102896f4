//! `wasm-broker`: the command line. This file parses the arguments, sets up
//! logging and runs the command; the commands are in [`cli`].

mod cli;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, InstancesCommand, PluginsCommand};
use wasm_broker::config::Config;
use wasm_broker::runtime::{self, EngineSettings};

fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    // The compile worker runs without an async runtime: it nices itself
    // first thing, and Linux keeps a nice value per thread, so the idle
    // workers of a runtime started before would keep full priority (and
    // wasmtime's compiling threads, started after, inherit the nice).
    if let Command::CompilePlugin {
        compiler,
        largest_memory,
        max_instances,
        memory_limit_mb,
        input,
        output,
    } = &args.command
    {
        let settings = EngineSettings {
            compiler: (*compiler).into(),
            largest_memory: *largest_memory,
            max_instances: *max_instances,
            compile_memory_mb: *memory_limit_mb,
        };
        std::process::exit(runtime::run_worker(&settings, input, output));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}

/// Every command but the compile worker.
async fn run(args: Cli) -> anyhow::Result<()> {
    // Every command that loads plugins compiles them in a child process of
    // this binary (`runtime/compiler.rs`).
    if let Ok(binary) = std::env::current_exe() {
        runtime::use_compile_worker(binary);
    }
    // The store commands talk to the operator on stderr: only what goes
    // wrong belongs between their lines.
    let default_level = match args.command {
        Command::Instances(_)
        | Command::Purge { .. }
        | Command::Plugins(PluginsCommand::Release { .. })
        | Command::Plugins(PluginsCommand::Test { .. }) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        // Logs on stderr, so commands that print results keep stdout clean.
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or journal
        // would keep the escape codes, and styling every span field was a
        // sixth of the cost of serving the catalog.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .init();
    let config =
        || Config::load(&args.config).with_context(|| format!("loading {}", args.config.display()));
    match args.command {
        Command::Serve { listen } => {
            cli::serve::serve(config()?, args.config.clone(), listen).await
        }
        Command::Catalog => cli::plugins::print_catalog(&config()?).await,
        Command::Plugins(PluginsCommand::List) => cli::plugins::list(&config()?).await,
        Command::Plugins(PluginsCommand::Check { file, plugins_dir }) => {
            cli::plugins::check(&config()?, &file, plugins_dir.as_deref()).await
        }
        Command::Plugins(PluginsCommand::Test {
            file,
            plugins_dir,
            all_plans,
            poll_timeout,
            strict,
        }) => {
            let options = cli::plugin_test::Options {
                file,
                plugins_dir,
                all_plans,
                poll_timeout: std::time::Duration::from_secs(poll_timeout),
                strict,
            };
            cli::plugin_test::run(&config()?, &args.config, &options).await
        }
        Command::Plugins(PluginsCommand::Release { name }) => {
            cli::plugins::release(&config()?, &name).await
        }
        Command::Plugins(PluginsCommand::New { name, lang, dir }) => {
            let project = cli::scaffold::new_project(&name, &lang, dir.as_deref())?;
            println!(
                "created {} (its README.md says how to build and test it)",
                project.display()
            );
            Ok(())
        }
        Command::GenerateKey => cli::keys::generate(),
        Command::RotateKey { new_key_file } => {
            cli::keys::rotate(config()?, new_key_file.as_deref()).await
        }
        Command::Instances(InstancesCommand::List {
            service,
            status,
            all,
            limit,
            json,
        }) => {
            let status = cli::instances::status_filter(status, all);
            cli::instances::list(config()?, service.as_deref(), status, limit, json).await
        }
        Command::Instances(InstancesCommand::Show { id, json }) => {
            cli::instances::show(config()?, &id, json).await
        }
        Command::Purge { id, yes, reason } => {
            cli::purge::purge(config()?, &id, yes, reason.as_deref()).await
        }
        // Run above, before logging starts: its stderr is the reason the
        // broker gives for a refused file.
        Command::CompilePlugin { .. } => anyhow::bail!("compile-plugin runs before logging"),
    }
}
