//! `plugins new`: writes a ready plugin project from the templates built
//! into the binary (`plugins/templates/<language>/`, one directory per
//! language), so an author needs nothing but this binary and the
//! language's toolchain.
//!
//! Every template file is written at its relative path, `.tmpl` stripped
//! from its name (a template `Cargo.toml` would otherwise look like a crate
//! of this repository), with these placeholders replaced:
//! `{{name}}` the plugin's name, `{{name_snake}}` the same with `_` for `-`,
//! `{{service_id}}` and `{{plan_id}}` fresh UUIDs (the catalog's ids must be
//! unique among every broker's plugins).
//!
//! A Rust project also gets a copy of the SDK (`wasm-broker-sdk/`),
//! depended on by path: the crate is not published, and a checkout of this
//! repository may not be on the author's machine, so the copy this binary
//! carries (the SDK of the contract it implements) is what works anywhere.
//! A Python or JavaScript project gets the helper module of its language
//! (`plugins/sdk-python`, `plugins/sdk-js`) and the WIT (`wit/v0.1.0`), taken
//! from where they live, so the templates hold no copies to keep in step.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use include_dir::{Dir, DirEntry, include_dir};

static TEMPLATES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../plugins/templates");
static SDK: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../plugins/sdk");
static WIT: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../wit/v0.1.0");
static PYTHON_HELPER: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../plugins/sdk-python/wasm_broker_sdk.py"
));
static JS_HELPER: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../plugins/sdk-js/wasm-broker-sdk.js"
));

/// The parts of the SDK a project needs (no build output, no editor files).
const SDK_PARTS: [&str; 3] = ["Cargo.toml", "src", "wit"];

/// Writes the project `name` in `language` to `dir/name` (`dir`: the
/// current directory when `None`) and returns where.
pub fn new_project(name: &str, language: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let template = TEMPLATES.get_dir(language).ok_or_else(|| {
        anyhow!(
            "no template for language {language:?}; this broker has templates for: {}",
            languages().join(", ")
        )
    })?;
    check_name(name, language)?;
    let parent = match dir {
        Some(dir) => dir.to_owned(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let project = parent.join(name);
    if project.exists() {
        bail!("{} already exists", project.display());
    }
    let values = Values::fresh(name);
    write_dir(template, template.path(), &project, &|text| {
        values.apply(text)
    })?;
    let helper = match language {
        "rust" => {
            let sdk = project.join("wasm-broker-sdk");
            for part in SDK_PARTS {
                match SDK.get_entry(part) {
                    Some(DirEntry::Dir(dir)) => write_dir(dir, SDK.path(), &sdk, &str::to_owned)?,
                    Some(DirEntry::File(file)) => write_file(file.contents(), &sdk.join(part))?,
                    None => bail!("this binary carries no SDK {part}"),
                }
            }
            None
        }
        "python" => Some((PYTHON_HELPER, "wasm_broker_sdk.py")),
        "js" => Some((JS_HELPER, "wasm-broker-sdk.js")),
        _ => None,
    };
    if let Some((contents, file_name)) = helper {
        write_file(contents.as_bytes(), &project.join(file_name))?;
        write_dir(&WIT, WIT.path(), &project.join("wit"), &str::to_owned)?;
    }
    Ok(project)
}

/// The languages this binary has templates for, sorted.
pub fn languages() -> Vec<String> {
    let mut names: Vec<String> = TEMPLATES
        .dirs()
        .filter_map(|dir| dir.path().file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The broker's plugin name rule (`[a-z0-9-]+`, the `.wasm` file's stem),
/// starting with a letter so it is a package name in every language; Rust
/// library names (hence the `.wasm` file's name) cannot hold `-`.
fn check_name(name: &str, language: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("{name:?} is not a plugin name: a lowercase letter, then up to 62 of a-z, 0-9 and -");
    }
    if language == "rust" && name.contains('-') {
        bail!(
            "{name:?}: a Rust plugin's name cannot contain `-` (cargo names the .wasm file \
             after the library, whose name turns `-` into `_`); try {:?}",
            name.replace('-', "")
        );
    }
    Ok(())
}

/// What the placeholders stand for in one project.
struct Values {
    name: String,
    service_id: String,
    plan_id: String,
}

impl Values {
    fn fresh(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            service_id: uuid::Uuid::new_v4().to_string(),
            plan_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn apply(&self, text: &str) -> String {
        text.replace("{{name}}", &self.name)
            .replace("{{name_snake}}", &self.name.replace('-', "_"))
            .replace("{{service_id}}", &self.service_id)
            .replace("{{plan_id}}", &self.plan_id)
    }
}

/// Writes every file below `dir` to `target`, at its path relative to
/// `root`, text files passed through `fill`.
fn write_dir(
    dir: &Dir<'_>,
    root: &Path,
    target: &Path,
    fill: &dyn Fn(&str) -> String,
) -> anyhow::Result<()> {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(sub) => write_dir(sub, root, target, fill)?,
            DirEntry::File(file) => {
                let relative = file.path().strip_prefix(root).unwrap_or(file.path());
                let mut path = target.join(relative);
                if path.extension().is_some_and(|ext| ext == "tmpl") {
                    path.set_extension("");
                }
                match std::str::from_utf8(file.contents()) {
                    Ok(text) => write_file(fill(text).as_bytes(), &path)?,
                    Err(_) => write_file(file.contents(), &path)?,
                }
            }
        }
    }
    Ok(())
}

fn write_file(contents: &[u8], path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_plugin_rule_and_rust_refuses_dashes() {
        assert!(check_name("demo2", "rust").is_ok());
        assert!(check_name("my-plugin", "python").is_ok());
        for bad in ["", "Demo", "2demo", "de_mo", "de mo", "dé"] {
            assert!(check_name(bad, "python").is_err(), "{bad:?}");
        }
        let error = check_name("my-plugin", "rust").expect_err("refused");
        assert!(error.to_string().contains("\"myplugin\""), "{error}");
    }

    #[test]
    fn an_absent_language_names_the_present_ones() {
        let scratch = tempfile::tempdir().expect("a temp dir");
        let error = new_project("demo", "cobol", Some(scratch.path())).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("\"cobol\"") && text.contains("rust"),
            "{text}"
        );
        assert!(!scratch.path().join("demo").exists());
    }

    #[test]
    fn a_rust_project_is_filled_in_and_carries_the_sdk() {
        let scratch = tempfile::tempdir().expect("a temp dir");
        let project = new_project("demo", "rust", Some(scratch.path())).expect("written");
        let manifest = std::fs::read_to_string(project.join("Cargo.toml")).expect("a manifest");
        assert!(manifest.contains("name = \"demo\""), "{manifest}");
        let source = std::fs::read_to_string(project.join("src/lib.rs")).expect("lib.rs");
        assert!(!source.contains("{{"), "a placeholder is left: {source}");
        let config =
            std::fs::read_to_string(project.join(".cargo/config.toml")).expect("cargo config");
        assert!(config.contains("target = \"wasm32-wasip2\""), "{config}");
        for part in [
            "Cargo.toml",
            "src/lib.rs",
            "src/testing/mod.rs",
            "wit/world.wit",
        ] {
            assert!(
                project.join("wasm-broker-sdk").join(part).is_file(),
                "{part}"
            );
        }
        // Each project gets ids of its own.
        let other = new_project("other", "rust", Some(scratch.path())).expect("written");
        let other_source = std::fs::read_to_string(other.join("src/lib.rs")).expect("lib.rs");
        let service_id = |text: &str| {
            text.lines()
                .find(|line| line.starts_with("const SERVICE_ID"))
                .map(str::to_owned)
        };
        assert_ne!(service_id(&source), service_id(&other_source));
        assert!(
            new_project("demo", "rust", Some(scratch.path())).is_err(),
            "exists"
        );
    }
}
