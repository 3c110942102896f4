//! `wasm-broker plugins test FILE.wasm`: drives one plugin through the WIT
//! contract with the runtime `serve` uses (the same loading, grants,
//! limits and calls) and the connections broker.toml grants it, without
//! HTTP and without the broker's own answers to repeats, so the plugin's
//! idempotency is what gets exercised. Each step is a named check with its
//! outcome and time; any failure makes the command fail.
//!
//! - `report`: the checks and their lines; `rules`: the file stem and the
//!   clashes with a plugin directory (shared with `plugins check`);
//!   `samples`: sample inputs from the parameter schemas; `lifecycle`: the
//!   sequence of one plan; `calls`: one operation driven to its end
//!   (polling an asynchronous one); `scratch`: the runtime it all runs on.

mod calls;
mod lifecycle;
mod report;
pub mod rules;
mod samples;
mod scratch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasm_broker::catalog::PluginCatalog;
use wasm_broker::config::Config;
use wasm_broker::printable::printable;

use self::calls::Calls;
use self::lifecycle::PlanRun;
use self::report::{Outcome, Report, timed};
pub use self::scratch::Scratch;

/// What `plugins test` was asked to do.
pub struct Options {
    pub file: PathBuf,
    /// The directory whose plugins the file must not clash with; the
    /// configuration's plugin directory if not given.
    pub plugins_dir: Option<PathBuf>,
    /// Run the lifecycle on every plan, not only each offering's first.
    pub all_plans: bool,
    /// How long an asynchronous operation may take to finish.
    pub poll_timeout: Duration,
    /// Warnings fail the run too.
    pub strict: bool,
}

pub async fn run(config: &Config, config_path: &Path, options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let stem = rules::plugin_stem(&options.file)?.to_owned();
    println!(
        "testing {} as plugin {stem}, granted what [plugins.{stem}] of {} grants",
        options.file.display(),
        config_path.display()
    );
    if !config.plugins.contains_key(&stem) {
        println!(
            "note: {} has no [plugins.{stem}] section: the plugin is granted no connection",
            config_path.display()
        );
    }
    let mut report = Report::default();
    let (scratch, took) = timed(Scratch::load(
        config,
        &[(stem.clone(), options.file.clone())],
    ))
    .await;
    let scratch = scratch?;
    let runtime = &scratch.runtime;
    let status = runtime.plugins().into_iter().next();
    let Some((info, None)) = status
        .as_ref()
        .map(|status| (status.info.clone(), &status.error))
    else {
        let why = status
            .and_then(|status| status.error)
            .unwrap_or_else(|| "it was not picked up as a plugin".to_owned());
        report.record("load: contract and catalog rules", took, Outcome::Fail(why));
        return finish(&report, started, options.strict);
    };
    let Some(info) = info else {
        report.record(
            "load: contract and catalog rules",
            took,
            Outcome::Fail("describe() gave no info".to_owned()),
        );
        return finish(&report, started, options.strict);
    };
    let catalog = runtime.catalog().catalog.clone();
    let plans: usize = catalog
        .services
        .iter()
        .map(|offering| offering.plans.len())
        .sum();
    report.record(
        "load: contract and catalog rules",
        took,
        Outcome::Pass(format!(
            "{} {}, wit {}, {} offering(s), {plans} plan(s)",
            info.name,
            info.version,
            status
                .as_ref()
                .and_then(|status| status.wit_version.as_deref())
                .unwrap_or("?"),
            catalog.services.len()
        )),
    );
    report.note(
        "file stem = describe().name",
        rules::stem_rule(&stem, &info),
    );
    let candidate = PluginCatalog {
        plugin: stem.clone(),
        info: info.clone(),
        catalog: catalog.clone(),
    };
    let dir = options
        .plugins_dir
        .clone()
        .unwrap_or_else(|| config.runtime.plugin_dir.clone());
    let (clash, took) = timed(rules::directory_clash(config, &dir, &candidate)).await;
    let clash = clash.unwrap_or_else(|error| Outcome::Fail(format!("{error:#}")));
    report.record("no clash with the plugin directory", took, clash);

    let mut calls = Calls::new(runtime, info.version.clone(), options.poll_timeout);
    for offering in &catalog.services {
        let inputs: Vec<_> = offering
            .plans
            .iter()
            .map(|plan| {
                let (outcome, inputs) = samples::check_plan(plan);
                report.note(
                    format!("{}/{}: parameter schemas", offering.name, plan.name),
                    outcome,
                );
                inputs
            })
            .collect();
        let chosen = if options.all_plans {
            offering.plans.len()
        } else {
            1
        };
        for (index, plan) in offering.plans.iter().enumerate().take(chosen) {
            let other_plan = offering
                .plans
                .iter()
                .zip(&inputs)
                .enumerate()
                .find(|(other, _)| *other != index)
                .map(|(_, (plan, inputs))| (plan, inputs));
            let run = PlanRun {
                offering,
                plan,
                inputs: &inputs[index],
                other_plan,
            };
            run.run(&mut calls, &mut report).await;
        }
    }
    finish(&report, started, options.strict)
}

/// The summary, and an error naming every failed check.
fn finish(report: &Report, started: Instant, strict: bool) -> anyhow::Result<()> {
    println!("{}", report.summary(started));
    let failures = report.failures(strict);
    if failures.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = failures
        .iter()
        .map(|name| printable(name).into_owned())
        .collect();
    anyhow::bail!("{} check(s) failed: {}", names.len(), names.join(", "))
}
