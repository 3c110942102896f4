//! The printed result: Markdown tables (readable in a terminal, pasteable
//! into bench/README.md), every load figure next to its baseline from the
//! same run, and the targets as pass/fail.

use std::fmt::Write as _;
use std::time::Duration;

use crate::coldstart::{self, ColdStart};
use crate::dispatch::Dispatch;
use crate::durability::{Durability, Rate};
use crate::large::LargePlugin;
use crate::load::Measurement;
use crate::reload::HotReload;
use crate::scale::{self, Scale};

/// One load phase on both servers.
pub struct Comparison {
    pub scenario: &'static str,
    pub connections: usize,
    pub broker: Measurement,
    pub baseline: Measurement,
}

pub struct Memory {
    pub plugins: usize,
    pub idle_kib: u64,
    pub loaded_kib: u64,
    pub peak_kib: u64,
    pub baseline_loaded_kib: u64,
}

/// What the load section measured on one broker.
pub struct LoadResults {
    pub comparisons: Vec<Comparison>,
    pub memory: Memory,
    pub reload: HotReload,
    pub durability: Durability,
}

/// Every section that ran (`--only` may skip some).
pub struct Results {
    pub machine: Vec<(String, String)>,
    pub rounds: u32,
    pub seconds: u64,
    pub dispatch: Option<Dispatch>,
    pub load: Option<LoadResults>,
    pub cold_start: Option<ColdStart>,
    pub scale: Option<Scale>,
    /// Per compiler, the default (winch) first.
    pub large: Vec<LargePlugin>,
    pub large_skipped: Option<String>,
    pub total: Duration,
}

struct Target {
    name: String,
    measured: String,
    limit: String,
    pass: bool,
    /// How far from the limit, in the direction that matters (+ is headroom).
    margin: f64,
}

impl Target {
    /// `measured` must be at least `limit`.
    fn at_least(name: &str, measured: f64, limit: f64, unit: &str) -> Self {
        Self {
            name: name.to_owned(),
            measured: format!("{measured:.2}{unit}"),
            limit: format!(">= {limit}{unit}"),
            pass: measured >= limit,
            margin: measured / limit - 1.0,
        }
    }

    /// `measured` must be at most (or, `strictly`, below) `limit`.
    fn at_most(name: &str, measured: f64, limit: f64, unit: &str, strictly: bool) -> Self {
        Self {
            name: name.to_owned(),
            measured: format!("{measured:.2}{unit}"),
            limit: format!("{} {limit}{unit}", if strictly { "<" } else { "<=" }),
            pass: if strictly {
                measured < limit
            } else {
                measured <= limit
            },
            margin: 1.0 - measured / limit,
        }
    }
}

fn ratio(broker: f64, baseline: f64) -> String {
    format!("{:.2}x", broker / baseline)
}

fn ms(micros: f64) -> String {
    format!("{:.3}", micros / 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn seconds(duration: Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

pub fn render(results: &Results) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = render_into(&mut out, results);
    out
}

fn render_into(out: &mut String, r: &Results) -> std::fmt::Result {
    writeln!(out, "## Machine\n\n| | |\n|---|---|")?;
    for (fact, value) in &r.machine {
        writeln!(out, "| {fact} | {value} |")?;
    }
    if let Some(load) = &r.load {
        render_load(out, load, r.seconds, r.rounds)?;
        render_durability(out, load)?;
    }
    if let Some(dispatch) = &r.dispatch {
        render_dispatch(out, dispatch)?;
    }
    if r.load.is_some() || r.cold_start.is_some() {
        writeln!(
            out,
            "\n## Start, reload, memory\n\n| figure | value |\n|---|---:|"
        )?;
    }
    if let Some(cold_start) = &r.cold_start {
        render_cold_start(out, cold_start)?;
    }
    if let Some(load) = &r.load {
        render_reload_and_memory(out, &load.reload, &load.memory)?;
    }
    if let Some(scale) = &r.scale {
        render_scale(out, scale)?;
    }
    render_large(out, &r.large, r.large_skipped.as_deref())?;

    writeln!(
        out,
        "\n## Targets\n\n| target | measured | limit | result | margin |\n|---|---:|---:|---|---:|"
    )?;
    let mut failed = 0;
    for target in targets(r) {
        if !target.pass {
            failed += 1;
        }
        writeln!(
            out,
            "| {} | {} | {} | {} | {:+.0}% |",
            target.name,
            target.measured,
            target.limit,
            if target.pass { "pass" } else { "**FAIL**" },
            target.margin * 100.0
        )?;
    }
    writeln!(
        out,
        "\n{failed} target(s) missed. Whole run: {}.",
        seconds(r.total)
    )
}

fn render_load(
    out: &mut String,
    load: &LoadResults,
    seconds: u64,
    rounds: u32,
) -> std::fmt::Result {
    writeln!(
        out,
        "\n## Load: broker vs bare axum baseline\n\nClosed loop, {seconds} s per phase after 1 s of warm-up, best of \
         {rounds} rounds (broker and baseline alternate). Ratios are broker / baseline: above 1 is better for req/s, \
         below 1 for latency and CPU. Latencies in ms; CPU/req is the server process's CPU time (all threads, \
         from /proc) in the window divided by the requests served.\n",
    )?;
    writeln!(
        out,
        "| scenario | conns | broker req/s | baseline req/s | **req/s ratio** | broker p50 | baseline p50 | p50 ratio | \
         broker p99 | baseline p99 | p99 ratio | broker CPU/req us | baseline CPU/req us | CPU ratio |"
    )?;
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for c in &load.comparisons {
        let (b, base) = (&c.broker, &c.baseline);
        let cpu = |m: &Measurement| {
            m.server_cpu_us
                .map_or_else(|| "n/a".to_owned(), |us| format!("{us:.0}"))
        };
        let cpu_ratio = match (b.server_cpu_us, base.server_cpu_us) {
            (Some(broker), Some(baseline)) => ratio(broker, baseline),
            _ => "n/a".to_owned(),
        };
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | **{}** | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.scenario,
            c.connections,
            b.per_second(),
            base.per_second(),
            ratio(b.per_second(), base.per_second()),
            ms(b.p50_us()),
            ms(base.p50_us()),
            ratio(b.p50_us(), base.p50_us()),
            ms(b.p99_us()),
            ms(base.p99_us()),
            ratio(b.p99_us(), base.p99_us()),
            cpu(b),
            cpu(base),
            cpu_ratio,
        )?;
    }
    for c in &load.comparisons {
        for (server, m) in [("broker", &c.broker), ("baseline", &c.baseline)] {
            if let Some(first) = &m.first_unexpected {
                writeln!(
                    out,
                    "\n**{} @{} on the {server}: {} unexpected answers**, the first: {first}",
                    c.scenario, c.connections, m.unexpected
                )?;
            }
        }
    }
    Ok(())
}

/// The provision+deprovision phase at 64 connections on the broker.
fn pairs_at_64(load: &LoadResults) -> Option<&Measurement> {
    load.comparisons
        .iter()
        .find(|c| c.scenario == crate::PROVISION && c.connections == 64)
        .map(|c| &c.broker)
}

fn render_durability(out: &mut String, load: &LoadResults) -> std::fmt::Result {
    let d = &load.durability;
    writeln!(
        out,
        "\n## Durable writes: the store vs the disk and a bare transaction\n\n\
         Measured in this process, one writer, while the servers idle. fsync: 4 KiB written in place in a \
         file of the broker's state directory, then fsync. Bare transaction: WAL, \
         synchronous=FULL, `BEGIN IMMEDIATE`, read the instance row, upsert it, append a history row, commit; \
         through rusqlite with prepared statements on the calling thread (the floor the ratios use, and how \
         the store's batch writer runs its statements), and through sqlx-sqlite. \
         StateStore: the same state change through `transition_instance`. CPU/op is this process's CPU time \
         (all threads, from /proc, 10 ms ticks) divided by the operations.\n\n\
         | operation | ops/s | CPU/op us | ratio to bare transaction (CPU) |\n|---|---:|---:|---:|"
    )?;
    let cpu = |rate: &Rate| {
        rate.cpu_us
            .map_or_else(|| "n/a".to_owned(), |us| format!("{us:.0}"))
    };
    let against_bare = |rate: &Rate| match (rate.cpu_us, d.bare.cpu_us) {
        (Some(us), Some(bare)) => ratio(us, bare),
        _ => "n/a".to_owned(),
    };
    let concurrent = format!(
        "StateStore, {} writers at once (group commit)",
        crate::durability::CONCURRENT_WRITERS
    );
    for (name, rate) in [
        ("write + fsync", &d.fsync),
        (
            "bare SQLite transaction, rusqlite (one state change)",
            &d.bare,
        ),
        ("bare SQLite transaction, sqlx-sqlite", &d.bare_sqlx),
        (
            "StateStore::transition_instance (one state change)",
            &d.store,
        ),
        (concurrent.as_str(), &d.store_concurrent),
    ] {
        writeln!(
            out,
            "| {name} | {:.0} | {} | {} |",
            rate.per_second(),
            cpu(rate),
            against_bare(rate)
        )?;
    }
    match &d.postgres {
        Ok(pg) => {
            writeln!(
                out,
                "\nPostgreSQL (local server, synchronous commit), same state change:\n\n\
                 | operation | ops/s | CPU/op us | ratio to bare transaction (CPU) |\n|---|---:|---:|---:|"
            )?;
            let against_bare = |rate: &Rate| match (rate.cpu_us, pg.bare.cpu_us) {
                (Some(us), Some(bare)) => ratio(us, bare),
                _ => "n/a".to_owned(),
            };
            let replicas = format!(
                "two StateStores (replicas) on one database, {} writers each",
                crate::durability::CONCURRENT_WRITERS / 2
            );
            for (name, rate) in [
                ("bare PostgreSQL transaction", &pg.bare),
                ("StateStore::transition_instance", &pg.store),
                (replicas.as_str(), &pg.two_replicas),
            ] {
                writeln!(
                    out,
                    "| {name} | {:.0} | {} | {} |",
                    rate.per_second(),
                    cpu(rate),
                    against_bare(rate)
                )?;
            }
        }
        Err(why) => writeln!(out, "\nPostgreSQL: not measured ({why}).")?,
    }
    if let Some(pairs) = pairs_at_64(load) {
        // Each provision+deprovision pair is two requests.
        let pairs_per_second = pairs.per_second() / 2.0;
        let (p50, p99) = (pairs.marked_p50_us(), pairs.marked_p99_us());
        writeln!(
            out,
            "\nDurable provision+deprovision pairs at 64 connections: {pairs_per_second:.0}/s, \
             {} the fsync rate ({:.0}/s). Provision alone: p50 {} ms, p99 {} ms ({} of p50).",
            ratio(pairs_per_second, d.fsync.per_second()),
            d.fsync.per_second(),
            ms(p50),
            ms(p99),
            ratio(p99, p50),
        )?;
    }
    Ok(())
}

fn render_dispatch(out: &mut String, d: &Dispatch) -> std::fmt::Result {
    writeln!(
        out,
        "\n## Plugin dispatch (in process, one call at a time, fresh instance per call)\n\n\
         | call | p50 us | p99 us | calls/s | p50 vs native |\n|---|---:|---:|---:|---:|"
    )?;
    for (name, wasm, native) in [
        (
            "no-op `last_operation` through PluginRuntime",
            &d.noop_wasm,
            &d.noop_native,
        ),
        (
            "echo `get_instance` through PluginRuntime",
            &d.echo_wasm,
            &d.echo_native,
        ),
    ] {
        writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.0} | {:.0}x |",
            wasm.p50_us(),
            wasm.p99_us(),
            wasm.per_second(),
            wasm.p50_us() / native.p50_us()
        )?;
        writeln!(
            out,
            "| the same in native Rust | {:.3} | {:.3} | {:.0} | 1x |",
            native.p50_us(),
            native.p99_us(),
            native.per_second()
        )?;
    }
    Ok(())
}

fn render_cold_start(out: &mut String, cold_start: &ColdStart) -> std::fmt::Result {
    let plugins = coldstart::PLUGINS;
    writeln!(
        out,
        "| cold start, {plugins} plugins, empty compile cache | {} |",
        seconds(cold_start.uncached)
    )?;
    writeln!(
        out,
        "| cold start, {plugins} plugins, compile cache filled (median of 3) | {} |",
        seconds(cold_start.cached)
    )
}

fn render_reload_and_memory(out: &mut String, reload: &HotReload, m: &Memory) -> std::fmt::Result {
    for (what, duration) in [
        ("new plugin added", reload.added),
        ("plugin replaced by a new version", reload.replaced),
        (
            "plugin replaced by a cached version",
            reload.replaced_cached,
        ),
    ] {
        writeln!(
            out,
            "| hot reload: {what}, file renamed in to first call served | {} |",
            seconds(duration)
        )?;
    }
    writeln!(
        out,
        "| live broker.toml: a [plugins.echo] change saved to first call that sees it | {} |",
        seconds(reload.config_changed)
    )?;
    writeln!(
        out,
        "| broker RSS idle, {} plugins | {} |",
        m.plugins,
        mib(m.idle_kib)
    )?;
    writeln!(
        out,
        "| broker RSS under load (largest sample) | {} |",
        mib(m.loaded_kib)
    )?;
    writeln!(out, "| broker peak RSS (VmHWM) | {} |", mib(m.peak_kib))?;
    writeln!(
        out,
        "| baseline RSS under load (largest sample) | {} |",
        mib(m.baseline_loaded_kib)
    )
}

fn render_scale(out: &mut String, s: &Scale) -> std::fmt::Result {
    writeln!(
        out,
        "\n## Scale: {} instances and {} bindings in the store\n\nOne request at a time; filling the store through \
         `StateStore` took {}.\n\n| read | empty p50 | full p50 | **p50 ratio** | empty p99 | full p99 | p99 ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        s.instances,
        s.instances * scale::BINDINGS_PER_INSTANCE,
        seconds(s.populate)
    )?;
    for (name, empty, full) in [
        ("GET instance (broker, HTTP)", &s.fetch_empty, &s.fetch_full),
        (
            "GET last_operation (broker, HTTP)",
            &s.poll_empty,
            &s.poll_full,
        ),
        (
            "`StateStore::instance` (in process)",
            &s.store_read_empty,
            &s.store_read_full,
        ),
    ] {
        writeln!(
            out,
            "| {name} | {} ms | {} ms | **{}** | {} ms | {} ms | {} |",
            ms(empty.p50_us()),
            ms(full.p50_us()),
            ratio(full.p50_us(), empty.p50_us()),
            ms(empty.p99_us()),
            ms(full.p99_us()),
            ratio(full.p99_us(), empty.p99_us()),
        )?;
    }
    Ok(())
}

fn render_large(
    out: &mut String,
    large: &[LargePlugin],
    skipped: Option<&str>,
) -> std::fmt::Result {
    if let Some(why) = skipped {
        return writeln!(out, "\n## Large plugins\n\nSkipped: {why}.");
    }
    if large.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n## Large plugins: the Python example (18 MiB) into an empty compile cache\n\n\
         Beside the Rust redis plugin, both answering a provision with one Redis PING. \
         Call p50: the plugin call alone (`plugin_call_duration_seconds`).\n\n\
         | compiler | exec to first Python call | RSS loaded | RSS warm restart | loaded/warm | Python call p50 | Rust call p50 | Python/Rust |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for l in large {
        writeln!(
            out,
            "| {} | {} | {:.1} MB | {:.1} MB | **{}** | {} ms | {} ms | **{}** |",
            l.compiler,
            seconds(l.first_call),
            l.loaded_kib as f64 * 1024.0 / 1e6,
            l.warm_kib as f64 * 1024.0 / 1e6,
            ratio(l.loaded_kib as f64, l.warm_kib as f64),
            ms(l.python_call_us),
            ms(l.rust_call_us),
            ratio(l.python_call_us, l.rust_call_us),
        )?;
    }
    Ok(())
}

fn targets(r: &Results) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(load) = &r.load {
        let throughput = |scenario: &str| {
            load.comparisons
                .iter()
                .find(|c| c.scenario == scenario)
                .map(|c| c.broker.per_second() / c.baseline.per_second())
        };
        if let Some(ratio) = throughput(crate::CATALOG) {
            targets.push(Target::at_least(
                "GET catalog req/s vs bare axum",
                ratio,
                0.9,
                "x",
            ));
        }
        if let Some(ratio) = throughput(crate::PROVISION) {
            let name = "provision+deprovision req/s vs bare state writes";
            targets.push(Target::at_least(name, ratio, 0.5, "x"));
        }
        let d = &load.durability;
        if let (Some(store), Some(bare)) = (d.store.cpu_us, d.bare.cpu_us) {
            targets.push(Target::at_most(
                "StateStore CPU per state change vs bare SQLite transaction",
                store / bare,
                2.0,
                "x",
                false,
            ));
        }
        if let Ok(pg) = &d.postgres
            && let (Some(store), Some(bare)) = (pg.store.cpu_us, pg.bare.cpu_us)
        {
            targets.push(Target::at_most(
                "StateStore CPU per state change vs bare PostgreSQL transaction",
                store / bare,
                2.0,
                "x",
                false,
            ));
        }
        if let Some(pairs) = pairs_at_64(load) {
            targets.push(Target::at_least(
                "durable provision+deprovision pairs/s at 64 conns vs fsync/s",
                pairs.per_second() / 2.0 / d.fsync.per_second(),
                1.0,
                "x",
            ));
            targets.push(Target::at_most(
                "provision p99 vs p50 at 64 conns",
                pairs.marked_p99_us() / pairs.marked_p50_us(),
                3.0,
                "x",
                false,
            ));
        }
    }
    if let Some(dispatch) = &r.dispatch {
        let p50 = dispatch.noop_wasm.p50_us();
        targets.push(Target::at_most(
            "plugin dispatch p50 (no-op)",
            p50,
            30.0,
            " us",
            false,
        ));
    }
    if let Some(cold_start) = &r.cold_start {
        let cached = cold_start.cached.as_secs_f64();
        targets.push(Target::at_most(
            "cold start, 50 plugins, cached",
            cached,
            1.0,
            " s",
            true,
        ));
    }
    if let Some(load) = &r.load {
        let reload = &load.reload;
        let slowest = reload
            .added
            .max(reload.replaced)
            .max(reload.replaced_cached)
            .max(reload.config_changed);
        let name = "hot reload (slowest of the three, and a broker.toml change)";
        targets.push(Target::at_most(
            name,
            slowest.as_secs_f64(),
            1.0,
            " s",
            true,
        ));
        let idle_mb = load.memory.idle_kib as f64 * 1024.0 / 1e6;
        targets.push(Target::at_most(
            "idle RSS, 4 plugins",
            idle_mb,
            60.0,
            " MB",
            true,
        ));
    }
    // The default compiler's figures (measured first).
    if let Some(l) = r.large.first() {
        targets.push(Target::at_most(
            &format!(
                "Python example, empty cache: exec to first call ({})",
                l.compiler
            ),
            l.first_call.as_secs_f64(),
            5.0,
            " s",
            true,
        ));
        targets.push(Target::at_most(
            "RSS after compiling the Python example vs a warm restart",
            l.loaded_kib as f64 / l.warm_kib as f64,
            1.5,
            "x",
            false,
        ));
        targets.push(Target::at_most(
            "Python example call p50 vs the Rust plugin's",
            l.python_call_us / l.rust_call_us,
            10.0,
            "x",
            false,
        ));
    }
    if let Some(s) = &r.scale {
        let fetch = s.fetch_full.p50_us() / s.fetch_empty.p50_us();
        targets.push(Target::at_most(
            "GET instance p50, full vs empty store",
            fetch,
            1.5,
            "x",
            false,
        ));
        let poll = s.poll_full.p50_us() / s.poll_empty.p50_us();
        targets.push(Target::at_most(
            "last_operation p50, full vs empty store",
            poll,
            1.5,
            "x",
            false,
        ));
    }
    targets
}
