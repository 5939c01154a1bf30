//! What the two hostile-input tables of issue #9 share: the daemons' table
//! (`tests/e2e/hostile.rs`: gRPC calls, status codes) and the CLI's
//! (`crates/cli/tests/hostile.rs`: the `evergreen` binary, exit codes).
//! Both start from wine/1 in production and served, and after every row
//! assert that nothing stored changed and that every daemon still answers
//! a real call. Each table keeps its own row type and its own check of
//! the answer: a status code and message are not an exit code and stderr.

use std::future::Future;
use std::time::{Duration, Instant};

use evergreen_proto::v1::{
    Event, GetPolicyRequest, GetReportRequest, HistoryRequest, JobState, ListJobsRequest,
    ListModelsRequest, ListServedRequest, ListSignalsRequest, ListVersionsRequest, Model,
    ModelVersion, Policy, PredictRequest, SetAliasRequest, Signal, TrainRequest, WindowKind,
};
use tonic::Code;

use crate::req::{row, WINE_ROW};
use crate::{dataset, train_version, Sandbox};

/// A depth-3 decision tree of `model` on the CSV `csv`.
pub fn train_request(model: &str, csv: &std::path::Path, target: &str) -> TrainRequest {
    TrainRequest {
        model: model.into(),
        dataset_uri: csv.display().to_string(),
        target: target.into(),
        algorithm: "decision_tree".into(),
        params: [("max_depth".to_string(), "3".to_string())].into(),
        ..Default::default()
    }
}

/// The tables' starting point: wine/1 (a depth-3 tree on wine.csv)
/// trained, in production, and served (20 s at most).
pub async fn wine_in_production(sb: &Sandbox) {
    let request = train_request("wine", &dataset("wine.csv"), "target");
    let version = train_version(&mut sb.trainer().await, request).await;
    assert_eq!(version, 1, "wine trained as version 1");
    sb.registry()
        .await
        .set_alias(SetAliasRequest {
            model: "wine".into(),
            alias: "production".into(),
            version: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut p = sb.predictor().await;
    while !p.list_served(ListServedRequest {}).await.is_ok_and(|r| {
        r.into_inner().models.iter().any(|m| {
            m.model == "wine"
                && m.versions
                    .iter()
                    .any(|v| v.version == 1 && v.aliases.iter().any(|a| a == "production"))
        })
    }) {
        assert!(Instant::now() < deadline, "wine/1 never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything stored that a refused input must leave alone.
#[derive(Debug, PartialEq)]
pub struct Stored {
    pub revision: u64,
    pub models: Vec<Model>,
    pub versions: Vec<Vec<ModelVersion>>,
    pub history: Vec<Vec<Event>>,
    /// Jobs that did not fail: (id, state, version). A refused request
    /// may leave only a FAILED job saying why.
    pub jobs: Vec<(String, i32, u64)>,
    /// With a monitor: what it holds.
    pub monitor: Option<Monitored>,
}

/// The monitor's share of `Stored`.
#[derive(Debug, PartialEq)]
pub struct Monitored {
    /// Rows and labels counted for wine/1.
    pub rows: u64,
    pub labeled: u64,
    pub signals: Vec<Signal>,
    /// wine's policy.
    pub policy: Policy,
}

/// A snapshot of what the sandbox's daemons store: the registry's models,
/// aliases, versions, audit history and revision, the trainer's jobs, and
/// (with a monitor) its counted rows and labels, signals and policy.
pub async fn stored(sb: &Sandbox) -> Stored {
    let mut r = sb.registry().await;
    let list = r
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut versions = Vec::new();
    let mut history = Vec::new();
    for m in &list.models {
        versions.push(
            r.list_versions(ListVersionsRequest {
                model: m.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .versions,
        );
        history.push(
            r.history(HistoryRequest {
                model: m.name.clone(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .entries,
        );
    }
    let jobs = sb
        .trainer()
        .await
        .list_jobs(ListJobsRequest {
            model: String::new(),
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .filter(|j| j.state != JobState::Failed as i32)
        .map(|j| (j.id, j.state, j.version))
        .collect();
    let monitor = match sb.monitor_addr {
        None => None,
        Some(_) => {
            let mut m = sb.monitor().await;
            let report = m
                .get_report(GetReportRequest {
                    model: "wine".into(),
                    version: 1,
                    window: WindowKind::Long as i32,
                })
                .await
                .unwrap()
                .into_inner();
            Some(Monitored {
                rows: report.drift.map_or(0, |d| d.rows),
                labeled: report.performance.map_or(0, |p| p.labeled),
                signals: m
                    .list_signals(ListSignalsRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .signals,
                policy: m
                    .get_policy(GetPolicyRequest {
                        model: "wine".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner(),
            })
        }
    };
    Stored {
        revision: list.revision,
        models: list.models,
        versions,
        history,
        jobs,
        monitor,
    }
}

/// Every daemon is running and answers a real call; the server predicts
/// WINE_ROW with wine/1; with a monitor, that prediction reaches it
/// (`served`: the predictions made so far, counted in all).
pub async fn all_serving(sb: &Sandbox, what: &str, served: &mut u64) {
    assert!(sb.is_running(), "{what}: the registry stopped");
    assert!(sb.trainer_running(), "{what}: the trainer stopped");
    assert!(sb.server_running(), "{what}: the server stopped");
    sb.registry()
        .await
        .list_models(ListModelsRequest {})
        .await
        .unwrap_or_else(|e| panic!("{what}: registry: {e:?}"));
    sb.trainer()
        .await
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{what}: trainer: {e:?}"));
    let p = sb
        .predictor()
        .await
        .predict(PredictRequest {
            model: "wine".into(),
            rows: vec![row(&WINE_ROW)],
            request_id: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: server: {e:?}"))
        .into_inner();
    assert_eq!((p.version, p.predictions.len()), (1, 1), "{what}");
    *served += 1;
    if sb.monitor_addr.is_none() {
        return;
    }
    assert!(sb.monitor_running(), "{what}: the monitor stopped");
    // The monitor counts it (and nothing else): wait for exactly `served`.
    let mut m = sb.monitor().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = match m
            .get_report(GetReportRequest {
                model: "wine".into(),
                version: 1,
                window: WindowKind::Long as i32,
            })
            .await
        {
            Ok(r) => r.into_inner().drift.map_or(0, |d| d.rows),
            // Before the first prediction arrives.
            Err(e) if e.code() == Code::NotFound && *served == 1 => 0,
            Err(e) => panic!("{what}: monitor: {e:?}"),
        };
        assert!(
            rows <= *served,
            "{what}: the monitor counted {rows} rows for {served} predictions"
        );
        if rows == *served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the monitor never counted prediction {served}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The runner of a table: each row's own check, then the shared ones
/// (nothing stored changed, every daemon serves); the failures of every
/// row are reported together at the end.
pub struct Table<'a> {
    sb: &'a Sandbox,
    served: u64,
    failures: Vec<String>,
}

impl<'a> Table<'a> {
    /// Checks that the starting point serves.
    pub async fn new(sb: &'a Sandbox) -> Table<'a> {
        let mut served = 0;
        all_serving(sb, "setup", &mut served).await;
        Table {
            sb,
            served,
            failures: Vec::new(),
        }
    }

    /// Runs the row `what`: `check` sends its input and returns what it
    /// got wrong (empty: nothing); then whether anything stored changed,
    /// and that every daemon still serves.
    pub async fn row(&mut self, what: &str, check: impl Future<Output = Vec<String>>) {
        let before = stored(self.sb).await;
        self.failures.extend(check.await);
        if stored(self.sb).await != before {
            self.failures.push(format!("{what}: stored data changed"));
        }
        all_serving(self.sb, what, &mut self.served).await;
    }

    /// Panics with every row's failures, if any.
    pub fn finish(self) {
        assert!(self.failures.is_empty(), "{}", self.failures.join("\n"));
    }
}
