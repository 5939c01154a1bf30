//! The trainer's domain metrics (the RPC and process ones come from the
//! runtime): jobs queued and running now, jobs finished by outcome and how
//! long they trained.

use std::sync::Arc;

use evergreen_runtime::metrics::prometheus_client::metrics::counter::Counter;
use evergreen_runtime::metrics::prometheus_client::metrics::family::Family;
use evergreen_runtime::metrics::prometheus_client::metrics::histogram::Histogram;
use evergreen_runtime::metrics::{Labels, Metrics};

use crate::jobs::{JobState, Jobs};

/// Seconds, from a small tree to a long hyperparameter search.
const BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// Counters the job runner updates.
#[derive(Clone)]
pub struct JobMetrics {
    pub finished: Family<Labels, Counter>,
    pub seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            finished: Family::default(),
            seconds: Family::new_with_constructor(histogram as fn() -> Histogram),
        }
    }
}

pub fn outcome(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

impl JobMetrics {
    /// A job ended in `state` after training `seconds` (None: it never
    /// left the queue).
    pub fn finished(&self, state: JobState, seconds: Option<f64>) {
        let labels = vec![("outcome", outcome(state).to_string())];
        self.finished.get_or_create(&labels).inc();
        if let Some(s) = seconds {
            self.seconds.get_or_create(&labels).observe(s);
        }
    }
}

/// Registers the counters of `jobs` and the scrape-time gauge of jobs
/// queued and running (held weakly: the job database closes with `run`).
pub fn register(metrics: &Metrics, jobs: &Arc<Jobs>) {
    metrics.register(
        "evergreen_trainer_jobs_finished",
        "Training jobs ended, by outcome (succeeded, failed, cancelled)",
        jobs.metrics.finished.clone(),
    );
    metrics.register(
        "evergreen_trainer_job_duration_seconds",
        "Time a job spent training (from leaving the queue to its end), by outcome",
        jobs.metrics.seconds.clone(),
    );
    let w = Arc::downgrade(jobs);
    metrics.register_gauges(
        "evergreen_trainer_jobs",
        "Training jobs queued or running now, by state",
        move || {
            let Some(jobs) = w.upgrade() else {
                return Vec::new();
            };
            let (queued, running) = jobs.live_counts();
            vec![
                (vec![("state", "queued".to_string())], queued as f64),
                (vec![("state", "running".to_string())], running as f64),
            ]
        },
    );
}
