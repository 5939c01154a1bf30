//! Rendering of registry objects: aligned tables and `key: value` lines for
//! people, `serde_json` values for scripts (`--json`).

use std::collections::HashMap;
use std::fmt::Display;
use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use evergreen_proto::v1::{
    Alias, Event, EventKind, Model, ModelVersion, TrafficPolicy, VersionStatus,
};
use evergreen_proto::Timestamp;
use serde_json::{json, Map, Value};

/// Writes one line to stdout. A closed pipe (`evergreen watch | head -1`)
/// ends the process quietly instead of panicking like `println!`.
pub fn emit(line: impl Display) {
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Prints a JSON value on one line.
pub fn emit_json(v: &Value) {
    emit(v);
}

// ---------------------------------------------------------------- tables ---

/// A table whose column widths come from its content.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered lines, header first; the last column is not padded.
    pub fn lines(&self) -> Vec<String> {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|row| {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate().take(cols) {
                    if i + 1 == cols {
                        line.push_str(cell);
                    } else {
                        let pad = widths[i] - cell.chars().count();
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad + 2));
                    }
                }
                line.trim_end().to_string()
            })
            .collect()
    }

    pub fn print(&self) {
        for line in self.lines() {
            emit(line);
        }
    }
}

/// Prints `key: value` lines with the values aligned.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        emit(format!("{:<width$} {v}", format!("{k}:"), width = width + 1).trim_end());
    }
}

// --------------------------------------------------------------- helpers ---

/// RFC 3339 in UTC (`2024-05-01T12:00:00.123Z`), or `None` when absent.
pub fn rfc3339(ts: Option<&Timestamp>) -> Option<String> {
    let ts = ts?;
    let nanos = u32::try_from(ts.nanos).unwrap_or(0);
    DateTime::<Utc>::from_timestamp(ts.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Seconds precision for tables: `2024-05-01 12:00:00`.
pub fn short_time(ts: Option<&Timestamp>) -> String {
    ts.and_then(|ts| DateTime::<Utc>::from_timestamp(ts.seconds, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// `ACTIVE` for `VERSION_STATUS_ACTIVE`.
pub fn status_name(status: i32) -> String {
    match VersionStatus::try_from(status) {
        Ok(s) => s.short_name().to_string(),
        Err(_) => format!("UNKNOWN({status})"),
    }
}

/// `ALIAS_SET` for `EVENT_KIND_ALIAS_SET`.
pub fn kind_name(kind: i32) -> String {
    match EventKind::try_from(kind) {
        Ok(k) => k.short_name().to_string(),
        Err(_) => format!("UNKNOWN({kind})"),
    }
}

/// `k1=v1,k2=v2`, sorted by key.
fn pairs<V: Display>(map: &HashMap<String, V>) -> String {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metrics people look for first, in this order.
const HEADLINE: &[&str] = &["accuracy", "f1_macro", "roc_auc", "r2", "rmse", "auc"];

/// A number as people read it: at most 4 decimals, no trailing zeros.
pub fn short_number(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// All metrics, sorted, 4 decimals.
fn metric_pairs(map: &HashMap<String, f64>) -> String {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
        .iter()
        .map(|(k, v)| format!("{k}={}", short_number(**v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The headline metrics (or the first three), and how many more there are.
fn headline_metrics(map: &HashMap<String, f64>) -> String {
    let mut shown: Vec<&str> = HEADLINE
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .take(3)
        .collect();
    if shown.is_empty() {
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort();
        shown = keys.into_iter().take(3).collect();
    }
    let mut out: Vec<String> = shown
        .iter()
        .map(|k| format!("{k}={}", short_number(map[*k])))
        .collect();
    if map.len() > shown.len() {
        out.push(format!("+{} more", map.len() - shown.len()));
    }
    out.join(" ")
}

fn string_map(map: &HashMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect::<Map<_, _>>(),
    )
}

fn number_map<V: Copy + Into<Value>>(map: &HashMap<String, V>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect::<Map<_, _>>(),
    )
}

/// `1536` -> `1.5 KiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", UNITS[unit])
}

/// An event's `before`/`after` state: parsed JSON, `null` when empty.
fn state(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(s).unwrap_or_else(|_| Value::from(s))
    }
}

// ---------------------------------------------------------------- models ---

pub fn model_json(m: &Model) -> Value {
    json!({
        "name": m.name,
        "description": m.description,
        "tags": string_map(&m.tags),
        "latest_version": m.latest_version,
        "aliases": number_map(&m.aliases),
        "policy": m.policy.as_ref().map(policy_json),
        "created_at": rfc3339(m.created_at.as_ref()),
        "updated_at": rfc3339(m.updated_at.as_ref()),
    })
}

pub fn policy_json(p: &TrafficPolicy) -> Value {
    json!({
        "weights": p.weights.iter().map(|w| json!({"version": w.version, "weight": w.weight})).collect::<Vec<_>>(),
        "shadow_version": p.shadow_version,
    })
}

/// `3=90 4=10, shadow 5`.
pub fn policy_text(p: &Option<TrafficPolicy>) -> String {
    let Some(p) = p else { return String::new() };
    let mut parts: Vec<String> = p
        .weights
        .iter()
        .map(|w| format!("{}={}", w.version, w.weight))
        .collect();
    if p.shadow_version > 0 {
        parts.push(format!("shadow {}", p.shadow_version));
    }
    parts.join(" ")
}

pub fn print_model(m: &Model) {
    print_fields(&[
        ("name", m.name.clone()),
        ("description", m.description.clone()),
        ("latest version", m.latest_version.to_string()),
        ("aliases", pairs(&m.aliases)),
        ("traffic policy", policy_text(&m.policy)),
        ("tags", pairs(&m.tags)),
        (
            "created",
            rfc3339(m.created_at.as_ref()).unwrap_or_default(),
        ),
        (
            "updated",
            rfc3339(m.updated_at.as_ref()).unwrap_or_default(),
        ),
    ]);
}

pub fn print_models(models: &[Model]) {
    let mut t = Table::new(&["NAME", "LATEST", "ALIASES", "DESCRIPTION"]);
    for m in models {
        t.row(vec![
            m.name.clone(),
            m.latest_version.to_string(),
            pairs(&m.aliases),
            m.description.clone(),
        ]);
    }
    t.print();
}

// -------------------------------------------------------------- versions ---

pub fn version_json(v: &ModelVersion) -> Value {
    let artifact = v.artifact.clone().unwrap_or_default();
    let lineage = v.lineage.as_ref().map(|l| {
        json!({
            "run_id": l.run_id,
            "dataset_sha256": l.dataset_sha256,
            "dataset_uri": l.dataset_uri,
            "parent_version": l.parent_version,
            "producer": l.producer,
        })
    });
    let schema = v.schema.as_ref().map(|s| {
        let feature = |f: &evergreen_proto::v1::Feature| {
            json!({
                "name": f.name,
                "type": f.r#type().short_name(),
                "categories": f.categories,
            })
        };
        json!({
            "features": s.features.iter().map(feature).collect::<Vec<_>>(),
            "target": s.target.as_ref().map(feature),
        })
    });
    json!({
        "model": v.model,
        "version": v.version,
        "status": status_name(v.status),
        "status_reason": v.status_reason,
        "sunset_at": rfc3339(v.sunset_at.as_ref()),
        "replacement_version": (v.replacement_version > 0).then_some(v.replacement_version),
        "archive_uri": (!v.archive_uri.is_empty()).then_some(v.archive_uri.as_str()),
        "sha256": artifact.sha256,
        "size_bytes": artifact.size_bytes,
        "aliases": v.aliases,
        "metrics": number_map(&v.metrics),
        "params": string_map(&v.params),
        "tags": string_map(&v.tags),
        "description": v.description,
        "lineage": lineage,
        "schema": schema,
        "created_at": rfc3339(v.created_at.as_ref()),
        "created_by": v.created_by,
    })
}

pub fn print_version(v: &ModelVersion) {
    let artifact = v.artifact.clone().unwrap_or_default();
    let mut status = status_name(v.status);
    if !v.status_reason.is_empty() {
        status = format!("{status} ({})", v.status_reason);
    }
    if let Some(t) = rfc3339(v.sunset_at.as_ref()) {
        status = format!("{status}, sunset {t}");
    }
    if v.replacement_version > 0 {
        status = format!(
            "{status}, replaced by {}/{}",
            v.model, v.replacement_version
        );
    }
    let mut fields = vec![
        ("model", v.model.clone()),
        ("version", v.version.to_string()),
        ("status", status),
    ];
    if !v.archive_uri.is_empty() {
        let note = if v.status == VersionStatus::Archived as i32 {
            " (artifact not held here: `evergreen restore` brings it back)"
        } else {
            ""
        };
        fields.push(("archive", format!("{}{note}", v.archive_uri)));
    }
    fields.extend([
        ("aliases", v.aliases.join(",")),
        ("sha256", artifact.sha256),
        (
            "size",
            format!(
                "{} ({} bytes)",
                human_size(artifact.size_bytes),
                artifact.size_bytes
            ),
        ),
        ("metrics", metric_pairs(&v.metrics)),
        ("params", pairs(&v.params)),
        ("tags", pairs(&v.tags)),
        ("description", v.description.clone()),
    ]);
    if let Some(l) = &v.lineage {
        let parent = match l.parent_version {
            0 => String::new(),
            p => p.to_string(),
        };
        let lineage = [
            ("run id", l.run_id.clone()),
            ("dataset", l.dataset_uri.clone()),
            ("dataset sha256", l.dataset_sha256.clone()),
            ("parent version", parent),
            ("producer", l.producer.clone()),
        ];
        fields.extend(lineage.into_iter().filter(|(_, v)| !v.is_empty()));
    }
    fields.extend([
        (
            "created",
            rfc3339(v.created_at.as_ref()).unwrap_or_default(),
        ),
        ("created by", v.created_by.clone()),
    ]);
    print_fields(&fields);
}

/// The ARCHIVE column appears when some version has been archived.
pub fn print_versions(versions: &[ModelVersion]) {
    let archives = versions.iter().any(|v| !v.archive_uri.is_empty());
    let mut header = vec![
        "VERSION", "STATUS", "ALIASES", "SHA256", "SIZE", "CREATED", "METRICS",
    ];
    if archives {
        header.push("ARCHIVE");
    }
    let mut t = Table::new(&header);
    for v in versions {
        let artifact = v.artifact.clone().unwrap_or_default();
        let mut row = vec![
            v.version.to_string(),
            status_name(v.status),
            v.aliases.join(","),
            artifact.sha256.chars().take(12).collect(),
            human_size(artifact.size_bytes),
            short_time(v.created_at.as_ref()),
            headline_metrics(&v.metrics),
        ];
        if archives {
            row.push(v.archive_uri.clone());
        }
        t.row(row);
    }
    t.print();
}

// --------------------------------------------------------------- aliases ---

pub fn alias_json(a: &Alias) -> Value {
    json!({
        "model": a.model,
        "alias": a.alias,
        "version": a.version,
        "revision": a.revision,
    })
}

pub fn print_alias(a: &Alias) {
    print_fields(&[
        ("model", a.model.clone()),
        ("alias", a.alias.clone()),
        ("version", a.version.to_string()),
        ("revision", a.revision.to_string()),
    ]);
}

// ---------------------------------------------------------------- events ---

pub fn event_json(e: &Event) -> Value {
    json!({
        "revision": e.revision,
        "time": rfc3339(e.time.as_ref()),
        "kind": kind_name(e.kind),
        "model": e.model,
        "version": e.version,
        "alias": e.alias,
        "actor": e.actor,
        "reason": e.reason,
        "before": state(&e.before),
        "after": state(&e.after),
    })
}

/// What an event is about: `demo`, `demo/3`, `demo@production -> 3`.
fn subject(e: &Event) -> String {
    match (e.alias.is_empty(), e.version) {
        (true, 0) => e.model.clone(),
        (true, v) => format!("{}/{v}", e.model),
        (false, 0) => format!("{}@{}", e.model, e.alias),
        (false, v) => format!("{}@{} -> {v}", e.model, e.alias),
    }
}

/// A status change in words, from an event's `before`/`after`:
/// `ACTIVE -> DEPRECATED`, `RETIRED -> ARCHIVED at s3://b/m/3/ (with data)`,
/// `ARCHIVED -> ACTIVE, restored from file:///…/m/3/`; "" for other kinds.
pub fn change(e: &Event) -> String {
    let (before, after) = (state(&e.before), state(&e.after));
    let (from, to) = (
        before["status"].as_str().unwrap_or("?"),
        after["status"].as_str().unwrap_or("?"),
    );
    match EventKind::try_from(e.kind) {
        Ok(EventKind::VersionStatusChanged) => format!("{from} -> {to}"),
        Ok(EventKind::VersionArchived) => {
            let data = if after["data"]["included"] == true {
                " (with data)"
            } else {
                ""
            };
            format!(
                "{from} -> {to} at {}{data}",
                after["uri"].as_str().unwrap_or("?")
            )
        }
        Ok(EventKind::VersionRestored) => format!(
            "{from} -> {to}, restored from {}",
            before["uri"].as_str().unwrap_or("?")
        ),
        _ => String::new(),
    }
}

pub fn print_events(events: &[Event]) {
    let mut t = Table::new(&[
        "REV", "TIME", "KIND", "SUBJECT", "CHANGE", "ACTOR", "REASON",
    ]);
    for e in events {
        t.row(vec![
            e.revision.to_string(),
            short_time(e.time.as_ref()),
            kind_name(e.kind),
            subject(e),
            change(e),
            e.actor.clone(),
            e.reason.clone(),
        ]);
    }
    t.print();
}

/// One line per event, for `watch`.
pub fn event_line(e: &Event) -> String {
    let mut line = format!(
        "{:>6}  {}  {:<24} {}  by {}",
        e.revision,
        short_time(e.time.as_ref()),
        kind_name(e.kind),
        subject(e),
        if e.actor.is_empty() { "?" } else { &e.actor },
    );
    let change = change(e);
    if !change.is_empty() {
        line.push_str(&format!(" ({change})"));
    }
    if !e.reason.is_empty() {
        line.push_str(&format!(": {}", e.reason));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_widths_come_from_content() {
        let mut t = Table::new(&["NAME", "LATEST", "DESCRIPTION"]);
        t.row(vec!["a-long-name".into(), "3".into(), "first".into()]);
        t.row(vec!["b".into(), "12".into(), String::new()]);
        assert_eq!(
            t.lines(),
            vec![
                "NAME         LATEST  DESCRIPTION",
                "a-long-name  3       first",
                "b            12",
            ]
        );
    }

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        let ts = Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(rfc3339(Some(&ts)).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(None), None);
    }

    #[test]
    fn enum_names_lose_their_prefix() {
        assert_eq!(status_name(VersionStatus::Deprecated as i32), "DEPRECATED");
        assert_eq!(kind_name(EventKind::AliasSet as i32), "ALIAS_SET");
        assert_eq!(kind_name(99), "UNKNOWN(99)");
    }

    #[test]
    fn version_lists_show_headline_metrics() {
        let m: HashMap<String, f64> = [
            ("accuracy", 0.97660818),
            ("log_loss", 0.28),
            ("f1_macro", 0.5),
            ("train_rows", 398.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(headline_metrics(&m), "accuracy=0.9766 f1_macro=0.5 +2 more");
        let m: HashMap<String, f64> = [("zeta".to_string(), 1.0)].into();
        assert_eq!(headline_metrics(&m), "zeta=1");
        assert_eq!(metric_pairs(&m), "zeta=1");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn event_json_parses_state() {
        let e = Event {
            revision: 7,
            kind: EventKind::AliasSet as i32,
            model: "demo".into(),
            version: 3,
            alias: "production".into(),
            after: r#"{"version":3}"#.into(),
            ..Default::default()
        };
        let j = event_json(&e);
        assert_eq!(j["kind"], "ALIAS_SET");
        assert_eq!(j["before"], Value::Null);
        assert_eq!(j["after"]["version"], 3);
        assert_eq!(subject(&e), "demo@production -> 3");
        assert_eq!(change(&e), "");
    }

    #[test]
    fn lifecycle_events_say_what_changed() {
        let mut e = Event {
            kind: EventKind::VersionArchived as i32,
            model: "demo".into(),
            version: 3,
            before: r#"{"status":"RETIRED"}"#.into(),
            after: r#"{"status":"ARCHIVED","uri":"s3://b/demo/3/","data":{"included":true}}"#
                .into(),
            ..Default::default()
        };
        assert_eq!(kind_name(e.kind), "VERSION_ARCHIVED");
        assert_eq!(
            change(&e),
            "RETIRED -> ARCHIVED at s3://b/demo/3/ (with data)"
        );
        e.kind = EventKind::VersionRestored as i32;
        e.before = r#"{"status":"ARCHIVED","uri":"s3://b/demo/3/"}"#.into();
        e.after = r#"{"status":"ACTIVE"}"#.into();
        assert_eq!(kind_name(e.kind), "VERSION_RESTORED");
        assert_eq!(
            change(&e),
            "ARCHIVED -> ACTIVE, restored from s3://b/demo/3/"
        );
        e.kind = EventKind::VersionStatusChanged as i32;
        e.before = r#"{"status":"DEPRECATED"}"#.into();
        e.after = r#"{"status":"RETIRED"}"#.into();
        assert_eq!(change(&e), "DEPRECATED -> RETIRED");
        assert!(event_line(&e).contains("(DEPRECATED -> RETIRED)"));
    }
}
