//! The rules a plugin file must keep beyond what loading it checks, shared
//! by `plugins test` and `plugins check`: its file stem is its
//! `describe().name` (plugins/README.md), and its ids and names clash with
//! no plugin of the directory it would join.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use wasm_broker::catalog::{self, PluginCatalog};
use wasm_broker::config::Config;
use wasm_broker::model::{Catalog, PluginInfo};

use super::report::Outcome;
use super::scratch::Scratch;

/// The plugin name a file gives: its stem, for a `.wasm` file.
pub fn plugin_stem(file: &Path) -> anyhow::Result<&str> {
    file.file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|_| file.extension().is_some_and(|ext| ext == "wasm"))
        .ok_or_else(|| anyhow!("{} is not a .wasm file", file.display()))
}

/// `catalog::stem_names` as a check: the loader only warns, `plugins test`
/// and `plugins check` fail.
pub fn stem_rule(stem: &str, info: &PluginInfo) -> Outcome {
    if stem == info.name {
        Outcome::Pass(format!("{stem}.wasm reports name {:?}", info.name))
    } else if catalog::stem_names(stem, &info.name) {
        Outcome::Pass(format!(
            "{stem}.wasm reports name {:?} (`_` for `-`, as cargo names files)",
            info.name
        ))
    } else {
        Outcome::Fail(format!(
            "the file is {stem}.wasm but describe().name is {:?}: name the file {}.wasm \
             (broker.toml's [plugins.<name>], the kv store and the ids a plugin owns go by the file stem)",
            info.name, info.name
        ))
    }
}

/// No offering id, plan id or offering name of `candidate` is served by a
/// plugin of `dir`, other than one of the same stem (which the file would
/// replace). Loads those plugins as `serve` would.
pub async fn directory_clash(
    config: &Config,
    dir: &Path,
    candidate: &PluginCatalog,
) -> anyhow::Result<Outcome> {
    if !dir.is_dir() {
        return Ok(Outcome::Skip(format!(
            "{} is not a directory: no plugins to clash with",
            dir.display()
        )));
    }
    let others: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|error| anyhow!("cannot read {}: {error}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .filter_map(|path| {
            let stem = plugin_stem(&path).ok()?.to_owned();
            (stem != candidate.plugin).then_some((stem, path))
        })
        .collect();
    if others.is_empty() {
        return Ok(Outcome::Pass(format!(
            "{}: no other plugin there",
            dir.display()
        )));
    }
    let scratch = Scratch::load(config, &others).await?;
    let snapshot = scratch.runtime.catalog();
    let mut serving: Vec<PluginCatalog> = Vec::new();
    for offering in &snapshot.catalog.services {
        let Some((stem, info)) = snapshot.plugin_of(&offering.id) else {
            continue;
        };
        match serving.iter_mut().find(|plugin| plugin.plugin == stem) {
            Some(plugin) => plugin.catalog.services.push(offering.clone()),
            None => serving.push(PluginCatalog {
                plugin: stem.to_owned(),
                info: info.clone(),
                catalog: Catalog {
                    services: vec![offering.clone()],
                },
            }),
        }
    }
    let names: Vec<&str> = serving
        .iter()
        .map(|plugin| plugin.plugin.as_str())
        .collect();
    Ok(match catalog::find_clash(&serving, candidate) {
        Some(clash) => Outcome::Fail(format!("{}: {clash}", dir.display())),
        None => Outcome::Pass(format!(
            "{}: none with {}",
            dir.display(),
            if names.is_empty() {
                "(no plugin there loads)".to_owned()
            } else {
                names.join(", ")
            }
        )),
    })
}

/// Both rules for `plugins check`: a line per rule, and whether all held.
pub async fn check_rules(
    config: &Config,
    dir: &Path,
    candidate: &PluginCatalog,
) -> anyhow::Result<(Vec<String>, bool)> {
    let stem = stem_rule(&candidate.plugin, &candidate.info);
    let clash = directory_clash(config, dir, candidate).await?;
    let ok = !matches!(stem, Outcome::Fail(_)) && !matches!(clash, Outcome::Fail(_));
    let lines = [
        ("file stem = describe().name", stem),
        ("no clash with the plugin directory", clash),
    ]
    .into_iter()
    .map(|(rule, outcome)| format!("{rule}: {}", outcome.as_text()))
    .collect();
    Ok((lines, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> PluginInfo {
        PluginInfo {
            name: name.to_owned(),
            version: "1.0.0".to_owned(),
            description: String::new(),
        }
    }

    #[test]
    fn the_stem_is_the_name_or_cargos_spelling_of_it() {
        assert!(matches!(
            stem_rule("mysql", &info("mysql")),
            Outcome::Pass(_)
        ));
        assert!(matches!(
            stem_rule("slow_async", &info("slow-async")),
            Outcome::Pass(_)
        ));
        let Outcome::Fail(why) = stem_rule("version_two", &info("echo")) else {
            panic!("a file named after another plugin passed");
        };
        assert!(why.contains("name the file echo.wasm"), "{why}");
        assert!(matches!(
            stem_rule("my-sql", &info("my_sql")),
            Outcome::Fail(_)
        ));
    }
}
