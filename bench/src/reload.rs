//! Hot reload: from the moment a plugin file is renamed into the watched
//! directory to the first provision the new version serves. The echo
//! fixture reports its version in the provision's metadata (`served_by`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::load::{Connection, Endpoint};
use crate::prepare::Artifacts;
use crate::scenarios::{Ids, Plan, instance_path, provision_body};

const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(2);

pub struct HotReload {
    /// A `[plugins.echo]` change saved in broker.toml (written beside,
    /// renamed over it) to the first call that sees it.
    pub config_changed: Duration,
    /// A new plugin added (compiled on the spot).
    pub added: Duration,
    /// A plugin replaced by a version never seen (compiled on the spot).
    pub replaced: Duration,
    /// A plugin replaced by a version in the compile cache.
    pub replaced_cached: Duration,
}

fn echo_plan() -> Plan {
    Plan {
        service_id: "d4a7f4e4-3344-44c5-a9e0-e71290823c71".to_owned(),
        plan_id: "d887ddca-3b57-43fb-ba6b-a2ca0416f942".to_owned(),
    }
}

pub async fn measure(
    artifacts: &Artifacts,
    endpoint: &Arc<Endpoint>,
    plugin_dir: &Path,
    config: &Path,
) -> anyhow::Result<HotReload> {
    let mut connection = Connection::open(endpoint).await?;
    let mut ids = Ids::new("reload".to_owned());
    let added = swap_in(
        &mut connection,
        &mut ids,
        plugin_dir,
        &artifacts.echo,
        "1.0.0",
    )
    .await?;
    let replaced = swap_in(
        &mut connection,
        &mut ids,
        plugin_dir,
        &artifacts.version_two,
        "2.0.0",
    )
    .await?;
    let replaced_cached = swap_in(
        &mut connection,
        &mut ids,
        plugin_dir,
        &artifacts.echo,
        "1.0.0",
    )
    .await?;
    let config_changed = change_config(&mut connection, &mut ids, config).await?;
    Ok(HotReload {
        config_changed,
        added,
        replaced,
        replaced_cached,
    })
}

/// Installs `source` as `echo.wasm` the way an operator should (written
/// beside, renamed into place) and provisions fresh instances until one is
/// served by `version`.
async fn swap_in(
    connection: &mut Connection,
    ids: &mut Ids,
    plugin_dir: &Path,
    source: &Path,
    version: &str,
) -> anyhow::Result<Duration> {
    let partial = plugin_dir.join(".echo.wasm.partial");
    std::fs::copy(source, &partial)?;
    let dropped = Instant::now();
    std::fs::rename(&partial, plugin_dir.join("echo.wasm"))?;
    first_provision_where(connection, ids, dropped, "served_by", version)
        .await
        .with_context(|| format!("echo {version}, its file dropped in"))
}

/// Appends `[plugins.echo.config] marker = ...` to broker.toml the way an
/// operator's tooling should (a new file renamed over the old) and
/// provisions until the echo plugin reports the new marker.
async fn change_config(
    connection: &mut Connection,
    ids: &mut Ids,
    config: &Path,
) -> anyhow::Result<Duration> {
    let marker = format!("bench-{}", std::process::id());
    let mut text = std::fs::read_to_string(config)?;
    text.push_str(&format!("\n[plugins.echo.config]\nmarker = \"{marker}\"\n"));
    let partial = config.with_extension("toml.partial");
    std::fs::write(&partial, text)?;
    let saved = Instant::now();
    std::fs::rename(&partial, config)?;
    first_provision_where(connection, ids, saved, "marker", &marker)
        .await
        .context("the broker.toml change")
}

/// Provisions fresh echo instances until one reports `attribute` = `value`
/// in its metadata; the time since `since`.
async fn first_provision_where(
    connection: &mut Connection,
    ids: &mut Ids,
    since: Instant,
    attribute: &str,
    value: &str,
) -> anyhow::Result<Duration> {
    let plan = echo_plan();
    loop {
        let (status, body) = connection
            .send(
                Method::PUT,
                &instance_path(&ids.fresh()),
                Some(provision_body(&plan)),
            )
            .await?;
        if status == StatusCode::CREATED {
            let answer: Value = serde_json::from_slice(&body)?;
            if answer["metadata"]["attributes"][attribute] == value {
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > GIVE_UP_AFTER {
            bail!("not served within {GIVE_UP_AFTER:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
