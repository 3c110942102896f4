//! `plugins list` against the running broker: its `/admin/plugins`, at the
//! address and with the credentials of the same broker.toml.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{Context, bail};

use wasm_broker::config::Config;
use wasm_broker::osb::admin::{PLUGINS, PluginReport, PluginsReport};
use wasm_broker::runtime::PluginState;

/// Long enough for a loaded broker on a busy machine, short enough that
/// `plugins list` without a broker falls back at once (a refused connect
/// returns before it anyway).
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// The running broker's report, and the URL it came from.
pub async fn report(config: &Config) -> anyhow::Result<(String, PluginsReport)> {
    let server = &config.server;
    let mut address = server.listen;
    // A broker listening on every address is asked on loopback.
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{address}{PLUGINS}");
    let mut client = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .connect_timeout(ANSWER_WITHIN);
    if let Some(tls) = &server.tls {
        // The broker's own certificate is the one trusted root.
        let pem =
            std::fs::read(&tls.cert).with_context(|| format!("reading {}", tls.cert.display()))?;
        let certificate = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("reading {}", tls.cert.display()))?;
        client = client
            .tls_built_in_root_certs(false)
            .add_root_certificate(certificate);
    }
    let response = client
        .build()?
        .get(&url)
        .basic_auth(&config.auth.username, Some(&config.auth.password))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    let report = response
        .json()
        .await
        .with_context(|| format!("the answer of GET {url}"))?;
    Ok((url, report))
}

/// One line per plugin, then a line for what the report could not tell.
pub fn describe(report: &PluginsReport) -> Vec<String> {
    let mut lines: Vec<String> = report.plugins.iter().map(describe_plugin).collect();
    if report.loading {
        lines.push("(the broker is still loading its plugins)".to_owned());
    }
    if let Some(error) = &report.store_error {
        lines.push(format!("(instances unknown: {error})"));
    }
    lines
}

fn describe_plugin(plugin: &PluginReport) -> String {
    let state = match plugin.state {
        PluginState::Serving => "serving",
        PluginState::Refused => "REFUSED",
        PluginState::Retired => "RETIRED",
    };
    let mut line = format!(
        "{name:<16} {version:<10} wit {wit:<8} {state:<9} services: {services}",
        name = plugin.name,
        version = plugin.version.as_deref().unwrap_or("-"),
        wit = plugin.wit_version.as_deref().unwrap_or("-"),
        services = if plugin.services.is_empty() {
            "-".to_owned()
        } else {
            plugin.services.join(", ")
        },
    );
    if let Some(instances) = plugin.instances {
        let s = if instances == 1 { "" } else { "s" };
        let left = if plugin.state == PluginState::Retired {
            " left"
        } else {
            ""
        };
        line.push_str(&format!(" ({instances} instance{s}{left})"));
    }
    if let Some(digest) = &plugin.digest {
        line.push_str(&format!(
            " sha256 {}",
            digest.chars().take(12).collect::<String>()
        ));
    }
    match (&plugin.error, plugin.state) {
        (Some(error), PluginState::Serving) => {
            line.push_str(&format!(" (replacement refused: {error})"))
        }
        (Some(error), _) => line.push_str(&format!(": {error}")),
        (None, _) => {}
    }
    line
}
