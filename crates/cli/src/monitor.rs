//! `health`, `versions compare`, `signals` and `monitoring get|set`: talk to
//! the monitor (and to the registry for versions and aliases).

use crate::commands::Channel;
use clap::{ArgAction, Args, ValueEnum};
use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::{
    GetPolicyRequest, GetReportRequest, ListSignalsRequest, Policy, Report, SetPolicyRequest,
    WatchSignalsRequest, WindowKind,
};
use serde_json::Value;
use tonic::Code;

use crate::commands::Ctx;
use crate::monitor_output::{self as out, Compared};
use crate::output::{emit, emit_json};

/// The drift tests a `--test` override may name (monitor.proto, `Policy.tests`).
pub const DRIFT_TESTS: &[&str] = &["psi", "ks", "wasserstein", "jensen_shannon", "chi2"];

#[derive(Clone, Copy, Default, ValueEnum)]
pub enum WindowArg {
    /// The window being filled.
    #[default]
    Current,
    /// The most recently closed window.
    Last,
    /// Everything since the version was first seen.
    Long,
}

impl From<WindowArg> for WindowKind {
    fn from(w: WindowArg) -> Self {
        match w {
            WindowArg::Current => WindowKind::Current,
            WindowArg::Last => WindowKind::Last,
            WindowArg::Long => WindowKind::Long,
        }
    }
}

/// The flags of `monitoring set`; each one given replaces that field of the
/// current policy.
#[derive(Args, Default, Debug, PartialEq)]
pub struct PolicyEdits {
    /// Rows a window needs for a verdict (0 = default, 100).
    #[arg(long, value_name = "N")]
    pub min_rows: Option<u64>,
    /// Labels a window needs for a realized-performance verdict (0 = default, 50).
    #[arg(long, value_name = "N")]
    pub min_labels: Option<u64>,
    /// Dataset drift at this share of drifted features, 0..1 (0 = the monitor's config).
    #[arg(long, value_name = "X", value_parser = parse_share)]
    pub drift_share: Option<f64>,
    /// Breach when the primary metric is this far below training (0 = default, 0.05).
    #[arg(long, value_name = "X", value_parser = parse_non_negative)]
    pub max_metric_drop: Option<f64>,
    /// Whether dataset or prediction drift alone breaches (default true).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub drift_breaches: Option<bool>,
    /// Breached windows in a row before a signal (0 = default, 2).
    #[arg(long, value_name = "N")]
    pub consecutive: Option<u32>,
    /// No further action on the model for this long: 30s, 10m, 1h30m (0 = default, 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub cooldown: Option<u64>,
    /// Retrain on a breach (default true).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub retrain: Option<bool>,
    /// Roll back a promotion that performs worse (default true).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub rollback: Option<bool>,
    /// Retire a version that keeps breaching (default false).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    pub retire: Option<bool>,
    /// The alias the actions concern (default production).
    #[arg(long, value_name = "ALIAS", value_parser = parse_alias)]
    pub alias: Option<String>,
    /// Roll back when the new version's metric is below its predecessor's by
    /// more than this (0 = default, 0.05).
    #[arg(long, value_name = "X", value_parser = parse_non_negative)]
    pub rollback_margin: Option<f64>,
    /// A retrained version must improve the primary metric by this (default 0).
    #[arg(long, value_name = "X", value_parser = parse_non_negative)]
    pub min_improvement: Option<f64>,
    /// Drift test of one feature: psi, ks, wasserstein, jensen_shannon, chi2;
    /// FEATURE= removes the override (repeatable).
    #[arg(long = "test", value_name = "FEATURE=TEST", value_parser = parse_test)]
    pub tests: Vec<(String, Option<String>)>,
    /// Drift threshold of one feature; FEATURE= removes the override (repeatable).
    #[arg(long = "threshold", value_name = "FEATURE=X", value_parser = parse_threshold)]
    pub thresholds: Vec<(String, Option<f64>)>,
}

impl PolicyEdits {
    /// No flag given: nothing to change.
    pub fn is_empty(&self) -> bool {
        *self == PolicyEdits::default()
    }
}

/// Applies the given flags to `p`; fields not given keep their value.
pub fn apply_edits(p: &mut Policy, e: &PolicyEdits) {
    if let Some(x) = e.min_rows {
        p.min_rows = x;
    }
    if let Some(x) = e.min_labels {
        p.min_labels = x;
    }
    if let Some(x) = e.drift_share {
        p.drift_share = x;
    }
    if let Some(x) = e.max_metric_drop {
        p.max_metric_drop = x;
    }
    if e.drift_breaches.is_some() {
        p.drift_breaches = e.drift_breaches;
    }
    if let Some(x) = e.consecutive {
        p.consecutive = x;
    }
    if let Some(x) = e.cooldown {
        p.cooldown_seconds = x;
    }
    if e.retrain.is_some() {
        p.retrain = e.retrain;
    }
    if e.rollback.is_some() {
        p.rollback = e.rollback;
    }
    if e.retire.is_some() {
        p.retire = e.retire;
    }
    if let Some(a) = &e.alias {
        p.alias = a.clone();
    }
    if let Some(x) = e.rollback_margin {
        p.rollback_margin = x;
    }
    if let Some(x) = e.min_improvement {
        p.min_improvement = x;
    }
    for (feature, test) in &e.tests {
        match test {
            Some(t) => p.tests.insert(feature.clone(), t.clone()),
            None => p.tests.remove(feature),
        };
    }
    for (feature, threshold) in &e.thresholds {
        match threshold {
            Some(x) => p.thresholds.insert(feature.clone(), *x),
            None => p.thresholds.remove(feature),
        };
    }
}

// --------------------------------------------------------------- parsers ---

/// `FEATURE=VALUE` with a non-empty feature; `None` for an empty value.
fn feature_pair<'a>(s: &'a str, shape: &str) -> Result<(String, Option<&'a str>), String> {
    match s.split_once('=') {
        Some((f, v)) if !f.trim().is_empty() => {
            let v = v.trim();
            Ok((f.trim().to_string(), (!v.is_empty()).then_some(v)))
        }
        _ => Err(format!("{shape}, got {s:?}")),
    }
}

/// `--test FEATURE=TEST` (`FEATURE=` removes the override).
pub fn parse_test(s: &str) -> Result<(String, Option<String>), String> {
    let shape = format!(
        "expected FEATURE=TEST with TEST one of {} (e.g. age=ks; age= removes the override)",
        DRIFT_TESTS.join(", ")
    );
    let (feature, test) = feature_pair(s, &shape)?;
    match test {
        Some(t) if !DRIFT_TESTS.contains(&t) => {
            Err(format!("{shape}, got {s:?}: unknown test {t:?}"))
        }
        t => Ok((feature, t.map(str::to_string))),
    }
}

/// `--threshold FEATURE=X` (`FEATURE=` removes the override).
pub fn parse_threshold(s: &str) -> Result<(String, Option<f64>), String> {
    let shape = "expected FEATURE=NUMBER (e.g. age=0.1; age= removes the override)";
    let (feature, x) = feature_pair(s, shape)?;
    let x = x
        .map(|x| match x.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(format!(
                "{shape}, got {s:?}: {x:?} is not a non-negative number"
            )),
        })
        .transpose()?;
    Ok((feature, x))
}

/// `--cooldown`: `30s`, `10m`, `2h`, `1d`, combinations like `1h30m`, or
/// plain seconds. Returns seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let shape = format!("expected a duration like 30s, 10m, 1h30m (units s, m, h, d), got {s:?}");
    let s = s.trim();
    if s.is_empty() {
        return Err(shape);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(shape),
        };
        let n: u64 = digits.parse().map_err(|_| shape.clone())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| shape.clone())?;
    }
    if !digits.is_empty() {
        return Err(shape);
    }
    Ok(total)
}

fn parse_number(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("expected a number, got {s:?}"))
}

/// A finite number >= 0.
pub fn parse_non_negative(s: &str) -> Result<f64, String> {
    let x = parse_number(s)?;
    if x < 0.0 {
        return Err(format!("expected a number >= 0, got {s:?}"));
    }
    Ok(x)
}

/// A share of features, 0..=1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let x = parse_number(s)?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!(
            "expected a share between 0 and 1 (e.g. 0.5), got {s:?}"
        ));
    }
    Ok(x)
}

fn parse_alias(s: &str) -> Result<String, String> {
    evergreen_proto::names::check_name("alias", s)?;
    Ok(s.to_string())
}

// --------------------------------------------------------------- context ---

pub struct MonitorCtx {
    client: MonitorClient<Channel>,
    json: bool,
}

impl MonitorCtx {
    pub async fn connect(url: &str, json: bool) -> anyhow::Result<Self> {
        let channel = crate::commands::connect(url, "monitor").await?;
        Ok(Self {
            client: MonitorClient::new(channel),
            json,
        })
    }

    fn show(&self, json: impl FnOnce() -> Value, human: impl FnOnce() -> String) {
        if self.json {
            emit_json(&json());
        } else {
            emit(human());
        }
    }

    async fn report(
        &mut self,
        model: &str,
        version: u64,
        window: WindowKind,
    ) -> Result<Report, tonic::Status> {
        let req = GetReportRequest {
            model: model.to_string(),
            version,
            window: window as i32,
        };
        Ok(self.client.get_report(req).await?.into_inner())
    }

    /// `health`: the report of one version. `resolved` says how the
    /// version was picked (`production`, `latest`; empty when given).
    pub async fn health(
        &mut self,
        model: String,
        version: u64,
        resolved: &str,
        window: WindowArg,
    ) -> anyhow::Result<()> {
        let r = self.report(&model, version, window.into()).await?;
        self.show(|| out::report_json(&r), || out::render_report(&r, resolved));
        Ok(())
    }

    /// `versions compare`: registry records plus long-window reports; a
    /// version the monitor has not seen (NOT_FOUND) has no report.
    pub async fn compare(
        &mut self,
        registry: &mut Ctx,
        model: String,
        v1: u64,
        v2: u64,
    ) -> anyhow::Result<()> {
        let mut sides = Vec::with_capacity(2);
        for v in [v1, v2] {
            let version = registry.fetch_version(&model, v).await?;
            let report = match self.report(&model, v, WindowKind::Long).await {
                Ok(r) => Some(r),
                Err(s) if s.code() == Code::NotFound => None,
                Err(s) => return Err(s.into()),
            };
            sides.push(Compared { version, report });
        }
        let (a, b) = (&sides[0], &sides[1]);
        self.show(|| out::compare_json(a, b), || out::render_compare(a, b));
        Ok(())
    }

    /// `signals`: the newest `limit` (0 = all), oldest first; with `watch`,
    /// then every new one as it arrives, until interrupted.
    pub async fn signals(
        &mut self,
        model: Option<String>,
        limit: u32,
        watch: bool,
    ) -> anyhow::Result<()> {
        let model = model.unwrap_or_default();
        let req = ListSignalsRequest {
            model: model.clone(),
            limit,
        };
        let signals = self.client.list_signals(req).await?.into_inner().signals;
        if !watch {
            self.show(
                || Value::Array(signals.iter().map(out::signal_json).collect()),
                || match (signals.is_empty(), model.is_empty()) {
                    (true, true) => "no signals".to_string(),
                    (true, false) => format!("no signals for {model}"),
                    _ => out::signals_table(&signals, true),
                },
            );
            return Ok(());
        }
        let print = |s: &evergreen_proto::v1::Signal| {
            if self.json {
                emit_json(&out::signal_json(s));
            } else {
                emit(out::signal_line(s));
            }
        };
        signals.iter().for_each(print);
        // Resume after the last one listed, so nothing raised in between is
        // missed (after 0 = everything, when nothing was listed).
        let after_id = Some(signals.last().map_or(0, |s| s.id));
        let mut stream = self
            .client
            .clone()
            .watch_signals(WatchSignalsRequest { model, after_id })
            .await?
            .into_inner();
        if !self.json {
            eprintln!("watching signals (Ctrl-C to stop)");
        }
        loop {
            match stream.message().await? {
                Some(s) => print(&s),
                None => return Err(anyhow::anyhow!("the monitor closed the signal stream")),
            }
        }
    }

    async fn get_policy_raw(&mut self, model: &str) -> anyhow::Result<Policy> {
        let req = GetPolicyRequest {
            model: model.to_string(),
        };
        Ok(self.client.get_policy(req).await?.into_inner())
    }

    fn show_policy(&self, p: &Policy) {
        self.show(|| out::policy_json(p), || out::render_policy(p));
    }

    pub async fn get_policy(&mut self, model: String) -> anyhow::Result<()> {
        let p = self.get_policy_raw(&model).await?;
        self.show_policy(&p);
        Ok(())
    }

    /// Read, change the given fields, write back; prints what the monitor
    /// answers (the effective policy).
    pub async fn set_policy(&mut self, model: String, edits: PolicyEdits) -> anyhow::Result<()> {
        let mut p = self.get_policy_raw(&model).await?;
        p.model = model;
        apply_edits(&mut p, &edits);
        let req = SetPolicyRequest { policy: Some(p) };
        let p = self.client.set_policy(req).await?.into_inner();
        self.show_policy(&p);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_overrides_parse() {
        assert_eq!(parse_test("age=ks"), Ok(("age".into(), Some("ks".into()))));
        assert_eq!(
            parse_test(" age = chi2 "),
            Ok(("age".into(), Some("chi2".into())))
        );
        assert_eq!(parse_test("age="), Ok(("age".into(), None)));
        let err = parse_test("age").unwrap_err();
        assert!(err.contains("expected FEATURE=TEST"), "{err}");
        assert!(parse_test("=ks").unwrap_err().contains("FEATURE=TEST"));
        let err = parse_test("age=t-test").unwrap_err();
        assert!(
            err.contains("unknown test \"t-test\"") && err.contains("jensen_shannon"),
            "{err}"
        );
    }

    #[test]
    fn threshold_overrides_parse() {
        assert_eq!(parse_threshold("age=0.1"), Ok(("age".into(), Some(0.1))));
        assert_eq!(parse_threshold("age="), Ok(("age".into(), None)));
        let err = parse_threshold("age=high").unwrap_err();
        assert!(
            err.contains("expected FEATURE=NUMBER") && err.contains("\"high\""),
            "{err}"
        );
        assert!(parse_threshold("age=-1").is_err());
        assert!(parse_threshold("age=nan").is_err());
        assert!(parse_threshold("0.1")
            .unwrap_err()
            .contains("FEATURE=NUMBER"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("1h30m"), Ok(5_400));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert_eq!(parse_duration("45"), Ok(45));
        for bad in ["", "m", "10x", "1.5h", "10m5", "-5s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("expected a duration like 30s, 10m"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn shares_and_margins_are_checked() {
        assert_eq!(parse_share("0.5"), Ok(0.5));
        assert!(parse_share("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(parse_non_negative("-0.1").is_err());
        assert!(parse_non_negative("inf").is_err());
    }

    #[test]
    fn edits_change_only_what_is_given() {
        let mut p = Policy {
            model: "churn".into(),
            min_rows: 200,
            retire: Some(false),
            tests: [("age".to_string(), "ks".to_string())].into(),
            thresholds: [("age".to_string(), 0.05)].into(),
            ..Default::default()
        };
        let edits = PolicyEdits {
            min_labels: Some(30),
            cooldown: Some(1800),
            retire: Some(true),
            tests: vec![("age".into(), None), ("plan".into(), Some("chi2".into()))],
            thresholds: vec![("age".into(), Some(0.2))],
            ..Default::default()
        };
        apply_edits(&mut p, &edits);
        assert_eq!(p.min_rows, 200);
        assert_eq!(p.min_labels, 30);
        assert_eq!(p.cooldown_seconds, 1800);
        assert_eq!(p.retire, Some(true));
        assert_eq!(p.retrain, None);
        assert_eq!(p.tests.get("age"), None);
        assert_eq!(p.tests.get("plan").map(String::as_str), Some("chi2"));
        assert_eq!(p.thresholds.get("age"), Some(&0.2));
    }
}
