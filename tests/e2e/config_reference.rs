//! docs/CONFIG.md is checked against the code: every key each daemon reads
//! (its config struct's `Default`, serialized) has a row with the same
//! default and environment variable name, and no row names a key that does
//! not exist. `EVERGREEN_BLESS=1 cargo test -p evergreen-e2e config_reference`
//! rewrites the key, default and env columns (keeping the descriptions; a
//! new key gets an empty one, which still fails until it is written).
//! evergreen.example.toml must load in every daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use evergreen_runtime::{load_config, ConfigSources};
use serde::Serialize;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// (section, key within it) -> rendered default, for every leaf key.
fn code_keys() -> Vec<(&'static str, Vec<(String, String)>)> {
    fn leaves<T: Serialize>(value: T) -> Vec<(String, String)> {
        let mut out = Vec::new();
        flatten("", &serde_json::to_value(value).unwrap(), &mut out);
        out
    }
    vec![
        (
            "registry",
            leaves(evergreen_registry::RegistryConfig::default()),
        ),
        (
            "trainer",
            leaves(evergreen_trainer::TrainerConfig::default()),
        ),
        ("server", leaves(evergreen_server::ServerConfig::default())),
        (
            "monitor",
            leaves(evergreen_monitor::MonitorConfig::default()),
        ),
    ]
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, child, out);
            }
        }
        Value::Object(_) => out.push((prefix.to_string(), "{}".into())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn env_name(section: &str, key: &str) -> String {
    format!(
        "EVERGREEN_{}__{}",
        section.to_uppercase(),
        key.replace('.', "__").to_uppercase()
    )
}

struct Row {
    key: String,
    default: String,
    env: String,
    description: String,
}

fn cell(s: &str) -> String {
    s.trim().trim_matches('`').to_string()
}

/// The tables of docs/CONFIG.md: `## [section]` headings, then rows
/// "| `key` | `default` | `ENV` | description |".
fn parse_doc(text: &str) -> BTreeMap<String, Vec<Row>> {
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut section = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## [") {
            section = rest.split(']').next().map(str::to_string);
            continue;
        }
        if line.starts_with("## ") {
            section = None;
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        let row = format!("`{row}");
        let cols: Vec<&str> = row.split(" | ").collect();
        assert!(cols.len() >= 4, "malformed row in docs/CONFIG.md: {line}");
        out.entry(section.clone()).or_default().push(Row {
            key: cell(cols[0]),
            default: cell(cols[1]),
            env: cell(cols[2]),
            description: cols[3..]
                .join(" | ")
                .trim_end_matches('|')
                .trim()
                .to_string(),
        });
    }
    out
}

fn render_table(section: &str, keys: &[(String, String)], old: &[Row]) -> String {
    let mut s =
        String::from("| Key | Default | Environment variable | Meaning |\n|---|---|---|---|\n");
    for (key, default) in keys {
        let description = old
            .iter()
            .find(|r| &r.key == key)
            .map(|r| r.description.clone())
            .unwrap_or_default();
        s.push_str(&format!(
            "| `{key}` | `{default}` | `{}` | {description} |\n",
            env_name(section, key)
        ));
    }
    s
}

/// Replaces each `## [section]` table with the one rendered from the code.
fn bless(text: &str, code: &[(&'static str, Vec<(String, String)>)]) -> String {
    let doc = parse_doc(text);
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        let Some(section) = line.strip_prefix("## [").and_then(|r| r.split(']').next()) else {
            continue;
        };
        let Some((_, keys)) = code.iter().find(|(s, _)| *s == section) else {
            continue;
        };
        // Keep the prose up to the table, drop the old table.
        while let Some(l) = lines.peek() {
            if l.starts_with('|') || l.starts_with("## ") {
                break;
            }
            out.push_str(l);
            out.push('\n');
            lines.next();
        }
        while lines.peek().is_some_and(|l| l.starts_with('|')) {
            lines.next();
        }
        let empty = Vec::new();
        out.push_str(&render_table(
            section,
            keys,
            doc.get(section).unwrap_or(&empty),
        ));
    }
    out
}

#[test]
fn config_reference_matches_the_code() {
    let path = repo_root().join("docs/CONFIG.md");
    let mut text = std::fs::read_to_string(&path).expect("docs/CONFIG.md");
    let code = code_keys();
    if std::env::var_os("EVERGREEN_BLESS").is_some() {
        text = bless(&text, &code);
        std::fs::write(&path, &text).unwrap();
    }
    let doc = parse_doc(&text);
    let mut problems = Vec::new();
    for (section, keys) in &code {
        let Some(rows) = doc.get(*section) else {
            problems.push(format!("no `## [{section}]` table"));
            continue;
        };
        for (key, default) in keys {
            match rows.iter().find(|r| &r.key == key) {
                None => problems.push(format!("{section}.{key}: missing")),
                Some(r) => {
                    if &r.default != default {
                        problems.push(format!(
                            "{section}.{key}: default is {default}, the doc says {}",
                            r.default
                        ));
                    }
                    if r.env != env_name(section, key) {
                        problems.push(format!(
                            "{section}.{key}: env should be {}",
                            env_name(section, key)
                        ));
                    }
                    if r.description.is_empty() {
                        problems.push(format!("{section}.{key}: no description"));
                    }
                }
            }
        }
        for r in rows {
            if !keys.iter().any(|(k, _)| k == &r.key) {
                problems.push(format!(
                    "{section}.{}: documented but not in the code",
                    r.key
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/CONFIG.md is out of date (EVERGREEN_BLESS=1 rewrites the key/default/env columns):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn example_config_loads_in_every_daemon() {
    let sources = ConfigSources {
        file: Some(repo_root().join("evergreen.example.toml")),
        ..Default::default()
    };
    let r: evergreen_registry::RegistryConfig = load_config("registry", &sources).unwrap();
    let t: evergreen_trainer::TrainerConfig = load_config("trainer", &sources).unwrap();
    let s: evergreen_server::ServerConfig = load_config("server", &sources).unwrap();
    let m: evergreen_monitor::MonitorConfig = load_config("monitor", &sources).unwrap();
    for (name, valid) in [
        ("registry", r.validate().map(|_| ())),
        ("trainer", t.validate().map(|_| ())),
        ("server", s.validate().map(|_| ())),
        ("monitor", m.validate().map(|_| ())),
    ] {
        valid.unwrap_or_else(|e| {
            panic!("evergreen.example.toml: [{name}] does not validate: {e:#}")
        });
    }
}
