//! `cargo run --release -p wasm-broker-bench`: builds the host and the
//! fixture plugins in release mode, runs the real `wasm-broker serve`
//! against a bare axum baseline under the same load, measures dispatch,
//! cold start, hot reload, memory and scale, and prints every figure next
//! to its baseline with the targets as pass/fail. See bench/README.md.

mod baseline;
mod coldstart;
mod dispatch;
mod durability;
mod large;
mod load;
mod prepare;
mod reload;
mod report;
mod scale;
mod scenarios;
mod servers;
mod system;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use hyper::{Method, StatusCode};

use crate::load::{Endpoint, Measurement, Window};
use crate::prepare::Artifacts;
use crate::report::{Comparison, LoadResults, Memory, Results};
use crate::scenarios::{BindUnbind, Catalog, Ids, Mix, ProvisionDeprovision};
use crate::servers::{NoopCopy, ServerProcess, broker_command, free_address, write_broker_config};
use crate::system::RssSampler;

pub const CATALOG: &str = "GET catalog";
pub const PROVISION: &str = "provision + deprovision";

/// The no-op plugin copies the load phases spread their requests over.
const SERVED_PLUGINS: usize = 4;
const WARMUP: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(
    about = "Benchmarks wasm-broker against a bare axum baseline and prints the figures as ratios"
)]
struct Cli {
    /// Measured seconds per load phase (after 1 s of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Times each load phase runs on each server; the best run counts.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Use the host binary and fixture plugins as built, without running cargo.
    #[arg(long)]
    skip_build: bool,
    /// Instances in the scale phase's store (each with two bindings).
    #[arg(long, default_value_t = 100_000)]
    scale_instances: usize,
    /// Run only these sections (comma-separated); all when not given.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The parts of the benchmark, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Plugin dispatch in process.
    Dispatch,
    /// Load phases against the baseline, memory, hot reload.
    Load,
    /// Cold start with 50 plugins.
    ColdStart,
    /// Reads with 100,000 instances in the store.
    Scale,
    /// The Python example into an empty compile cache, per compiler.
    Large,
}

#[derive(Subcommand)]
enum Command {
    /// The baseline server (the benchmark starts it; not for direct use).
    #[command(hide = true)]
    Baseline {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        catalog: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Baseline {
            listen,
            state,
            catalog,
        }) => baseline::serve(listen, state, catalog).await,
        None => {
            let results = run(&cli).await?;
            println!("{}", report::render(&results));
            Ok(())
        }
    }
}

#[derive(Clone, Copy)]
enum Scenario {
    Catalog,
    ProvisionDeprovision,
    BindUnbind,
    Mix,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Catalog => CATALOG,
            Self::ProvisionDeprovision => PROVISION,
            Self::BindUnbind => "bind + unbind",
            Self::Mix => "mix (lifecycle)",
        }
    }
}

/// What one load phase runs.
#[derive(Clone, Copy)]
struct Phase {
    scenario: Scenario,
    connections: usize,
}

const PHASES: [Phase; 6] = [
    Phase {
        scenario: Scenario::Catalog,
        connections: 16,
    },
    Phase {
        scenario: Scenario::ProvisionDeprovision,
        connections: 16,
    },
    Phase {
        scenario: Scenario::ProvisionDeprovision,
        connections: 64,
    },
    Phase {
        scenario: Scenario::BindUnbind,
        connections: 16,
    },
    Phase {
        scenario: Scenario::Mix,
        connections: 16,
    },
    Phase {
        scenario: Scenario::Mix,
        connections: 64,
    },
];

async fn run(cli: &Cli) -> anyhow::Result<Results> {
    let started = Instant::now();
    let machine = system::describe_machine();
    let root = prepare::repo_root();
    let artifacts = prepare::build(&root, cli.skip_build)?;
    // On the disk the target directory is on, like a broker's state: the
    // state writes are durable (fsync) and must be measured as such.
    let work = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir_in(root.join("target"))?;
    let duration = Duration::from_secs(cli.seconds);
    let short = duration.min(Duration::from_secs(3));
    let runs = |section: Section| cli.only.is_empty() || cli.only.contains(&section);

    let mut results = Results {
        machine,
        rounds: cli.rounds,
        seconds: cli.seconds,
        dispatch: None,
        load: None,
        cold_start: None,
        scale: None,
        large: Vec::new(),
        large_skipped: None,
        total: Duration::ZERO,
    };
    if runs(Section::Dispatch) {
        eprintln!("bench: plugin dispatch");
        let dir = work.path().join("dispatch");
        results.dispatch = Some(dispatch::measure(&artifacts, &dir, short).await?);
    }
    if runs(Section::Load) {
        results.load = Some(measure_load(cli, &artifacts, work.path(), duration).await?);
    }
    if runs(Section::ColdStart) {
        eprintln!("bench: cold start with {} plugins", coldstart::PLUGINS);
        let dir = work.path().join("cold");
        results.cold_start = Some(coldstart::measure(&artifacts, &dir).await?);
    }
    if runs(Section::Scale) {
        eprintln!("bench: scale ({} instances)", cli.scale_instances);
        let scratch = scratch_dir(work.path())?;
        let dir = work.path().join("scale");
        let instances = cli.scale_instances;
        results.scale =
            Some(scale::measure(&artifacts, &dir, scratch.path(), instances, short).await?);
    }
    if runs(Section::Large) {
        match large::plugins(&root) {
            Ok(plugins) => {
                // The default compiler first: its figures are the targets'.
                for compiler in ["winch", "cranelift"] {
                    eprintln!("bench: the Python example, empty compile cache, {compiler}");
                    let dir = work.path().join("large");
                    let measured =
                        large::measure(&artifacts.broker, &plugins, &dir, compiler).await?;
                    results.large.push(measured);
                }
            }
            Err(why) => {
                eprintln!("bench: large plugins skipped: {why}");
                results.large_skipped = Some(why);
            }
        }
    }
    results.total = started.elapsed();
    Ok(results)
}

/// The load phases on the broker and the baseline, the broker's memory
/// meanwhile, then hot reload on the same broker.
async fn measure_load(
    cli: &Cli,
    artifacts: &Artifacts,
    work: &Path,
    duration: Duration,
) -> anyhow::Result<LoadResults> {
    eprintln!("bench: starting the broker and the baseline");
    let copies: Vec<NoopCopy> = (1..=SERVED_PLUGINS).map(NoopCopy::numbered).collect();
    let broker_dir = work.join("broker");
    let (broker, plugin_dir) = start_broker(artifacts, &broker_dir, &copies).await?;
    let catalog = broker_dir.join("catalog.json");
    let (status, catalog_bytes) = load::Connection::open(&broker.endpoint)
        .await?
        .send(Method::GET, "/v2/catalog", None)
        .await?;
    ensure!(
        status == StatusCode::OK,
        "the broker's catalog answered {status}"
    );
    std::fs::write(&catalog, &catalog_bytes)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = system::resident_kib(broker.pid()).context("reading the broker's RSS")?;
    let baseline = start_baseline(&work.join("baseline"), &catalog).await?;
    // Beside the broker's own state, on the same disk, while both servers idle.
    eprintln!("bench: fsync, bare transactions and StateStore writes (SQLite, PostgreSQL)");
    let durability = durability::measure(&broker_dir.join("state"), duration).await?;

    let broker_rss = RssSampler::start(broker.pid());
    let baseline_rss = RssSampler::start(baseline.pid());
    let mut comparisons = Vec::new();
    for (number, phase) in PHASES.into_iter().enumerate() {
        let mut best: Option<(Measurement, Measurement)> = None;
        for round in 0..cli.rounds {
            eprintln!(
                "bench: {} @{} round {}",
                phase.scenario.name(),
                phase.connections,
                round + 1
            );
            // Alternating the order cancels drift in what else the machine does.
            let broker_first = round % 2 == 0;
            let measure = async |server: &ServerProcess, label: &str| {
                let prefix = format!("{label}-p{number}-r{round}");
                let window = Window::after_warmup(WARMUP, duration);
                let cpu = tokio::spawn(system::cpu_time_during(server.pid(), window));
                let measured = run_phase(&server.endpoint, phase, &prefix, &copies, window).await?;
                anyhow::Ok(measured.with_server_cpu(cpu.await?))
            };
            let (on_broker, on_baseline) = if broker_first {
                let on_broker = measure(&broker, "broker").await?;
                (on_broker, measure(&baseline, "baseline").await?)
            } else {
                let on_baseline = measure(&baseline, "baseline").await?;
                (measure(&broker, "broker").await?, on_baseline)
            };
            best = Some(match best {
                None => (on_broker, on_baseline),
                Some((b, base)) => (b.best(on_broker), base.best(on_baseline)),
            });
        }
        if let Some((broker, baseline)) = best {
            comparisons.push(Comparison {
                scenario: phase.scenario.name(),
                connections: phase.connections,
                broker,
                baseline,
            });
        }
    }
    let memory = Memory {
        plugins: SERVED_PLUGINS,
        idle_kib,
        loaded_kib: broker_rss.largest_kib(),
        peak_kib: system::peak_resident_kib(broker.pid()).unwrap_or_default(),
        baseline_loaded_kib: baseline_rss.largest_kib(),
    };
    drop((broker_rss, baseline_rss, baseline));

    eprintln!("bench: hot reload");
    let config = broker_dir.join("broker.toml");
    let reload = reload::measure(artifacts, &broker.endpoint, &plugin_dir, &config).await?;
    Ok(LoadResults {
        comparisons,
        memory,
        reload,
        durability,
    })
}

/// A broker serving `copies` of the no-op plugin; also returns its plugin
/// directory.
async fn start_broker(
    artifacts: &Artifacts,
    dir: &Path,
    copies: &[NoopCopy],
) -> anyhow::Result<(ServerProcess, PathBuf)> {
    let address = free_address()?;
    let config = write_broker_config(dir, address, &dir.join("compiled"), copies)?;
    let plugin_dir = dir.join("plugins");
    for copy in copies {
        std::fs::copy(
            &artifacts.noop,
            plugin_dir.join(format!("{}.wasm", copy.stem)),
        )?;
    }
    let (broker, _) = ServerProcess::start(
        broker_command(&artifacts.broker, &config),
        address,
        dir.join("broker.log"),
    )
    .await?;
    Ok((broker, plugin_dir))
}

/// This binary again, as the baseline server, in a process of its own like
/// the broker.
async fn start_baseline(dir: &Path, catalog: &Path) -> anyhow::Result<ServerProcess> {
    std::fs::create_dir_all(dir)?;
    let address = free_address()?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("baseline")
        .arg("--listen")
        .arg(address.to_string())
        .arg("--state")
        .arg(dir.join("state/broker.db"))
        .arg("--catalog")
        .arg(catalog);
    let (baseline, _) = ServerProcess::start(command, address, dir.join("baseline.log")).await?;
    Ok(baseline)
}

async fn run_phase(
    endpoint: &Arc<Endpoint>,
    phase: Phase,
    prefix: &str,
    copies: &[NoopCopy],
    window: Window,
) -> anyhow::Result<Measurement> {
    let plan = |index: usize| copies[index % copies.len()].plan.clone();
    let ids = |index: usize| Ids::new(format!("{prefix}-c{index}"));
    match phase.scenario {
        Scenario::Catalog => load::run(endpoint, phase.connections, window, |_| Catalog).await,
        Scenario::ProvisionDeprovision => {
            load::run(endpoint, phase.connections, window, |i| {
                ProvisionDeprovision {
                    plan: plan(i),
                    ids: ids(i),
                }
            })
            .await
        }
        Scenario::BindUnbind => {
            load::run(endpoint, phase.connections, window, |i| BindUnbind {
                plan: plan(i),
                ids: ids(i),
                instance_id: None,
            })
            .await
        }
        Scenario::Mix => {
            load::run(endpoint, phase.connections, window, |i| Mix {
                plan: plan(i),
                ids: ids(i),
            })
            .await
        }
    }
}

/// A RAM file system for filling the scale store, if the machine has one.
fn scratch_dir(fallback: &Path) -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() { shm } else { fallback };
    Ok(tempfile::Builder::new()
        .prefix("wasm-broker-bench-")
        .tempdir_in(parent)?)
}
