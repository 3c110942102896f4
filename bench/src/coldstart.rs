//! Cold start: from `exec` of `wasm-broker serve` with 50 plugins to its
//! first answer (the broker loads every plugin before it listens), without
//! and with the compile cache.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::load::Connection;
use crate::prepare::Artifacts;
use crate::servers::{NoopCopy, ServerProcess, broker_command, free_address, write_broker_config};

pub const PLUGINS: usize = 50;
const CACHED_STARTS: usize = 3;

pub struct ColdStart {
    pub uncached: Duration,
    /// Median of a few starts.
    pub cached: Duration,
}

/// The component with a custom section naming its copy appended: 50
/// distinct files, as 50 real plugins would be, so the compile cache (keyed
/// by the file's digest) cannot serve 49 of them from the first one's code.
fn distinct_copy(component: &[u8], number: usize) -> Vec<u8> {
    let name = b"wasm-broker-bench-copy";
    let payload = number.to_le_bytes();
    let mut content = leb128(name.len());
    content.extend_from_slice(name);
    content.extend_from_slice(&payload);
    let mut bytes = component.to_vec();
    // Section id 0: a custom section, valid anywhere in a component.
    bytes.push(0);
    bytes.extend(leb128(content.len()));
    bytes.extend(content);
    bytes
}

fn leb128(mut value: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(low);
            return bytes;
        }
        bytes.push(low | 0x80);
    }
}

pub async fn measure(artifacts: &Artifacts, dir: &Path) -> anyhow::Result<ColdStart> {
    let component = std::fs::read(&artifacts.noop)?;
    let copies: Vec<NoopCopy> = (1..=PLUGINS).map(NoopCopy::numbered).collect();
    let cache_dir = dir.join("compiled");
    let mut starts = Vec::new();
    for attempt in 0..=CACHED_STARTS {
        // A fresh state store each time: only the cache differs.
        let run_dir = dir.join(format!("start-{attempt}"));
        let address = free_address()?;
        let config = write_broker_config(&run_dir, address, &cache_dir, &copies)?;
        for (number, copy) in copies.iter().enumerate() {
            std::fs::write(
                run_dir.join("plugins").join(format!("{}.wasm", copy.stem)),
                distinct_copy(&component, number),
            )?;
        }
        let (broker, elapsed) = ServerProcess::start(
            broker_command(&artifacts.broker, &config),
            address,
            run_dir.join("broker.log"),
        )
        .await?;
        let mut connection = Connection::open(&broker.endpoint).await?;
        let (status, body) = connection.send(Method::GET, "/v2/catalog", None).await?;
        ensure!(
            status == StatusCode::OK,
            "catalog after cold start: {status}"
        );
        let catalog: Value = serde_json::from_slice(&body)?;
        let services = catalog["services"].as_array().map_or(0, Vec::len);
        ensure!(
            services == PLUGINS,
            "cold start served {services} offerings, not {PLUGINS}:\n{}",
            broker.log_tail()
        );
        starts.push(elapsed);
    }
    let uncached = starts[0];
    let mut cached = starts[1..].to_vec();
    cached.sort();
    Ok(ColdStart {
        uncached,
        cached: cached[cached.len() / 2],
    })
}
