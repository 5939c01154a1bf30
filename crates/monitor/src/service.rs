//! The monitor's state: a live window per (model, version), built on the
//! version's reference profile, which is read from its artifact in the
//! registry the first time the version is seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use evergreen_model::schema::Value;
use evergreen_model::Model;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::{version_ref, DownloadArtifactRequest, PredictionLog, VersionRef};
use tokio::sync::Mutex as AsyncMutex;
use tonic::transport::Channel;

use crate::drift::{dataset_drift, FeatureDrift};
use crate::window::{Answer, Window};

#[derive(Debug, Clone, thiserror::Error)]
pub enum MonitorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

struct Tracked {
    model: Arc<Model>,
    window: Window,
}

type Key = (String, u64);

pub struct Monitor {
    registry: AsyncMutex<RegistryClient<Channel>>,
    tracked: Mutex<HashMap<Key, Tracked>>,
    drift_share: f64,
}

/// One feature's line of a report.
pub struct FeatureLine {
    pub feature: String,
    pub verdict: FeatureDrift,
    pub psi: f64,
    pub count: u64,
    pub missing: u64,
}

pub struct Report {
    pub rows: u64,
    pub features: Vec<FeatureLine>,
    /// The model's answers vs its answers on the holdout.
    pub prediction: FeatureLine,
    pub dataset_drift: bool,
    pub drifted_share: f64,
}

/// Outcome of ingesting a batch.
#[derive(Default, Debug)]
pub struct Ingested {
    pub accepted: u64,
    /// Records of versions whose profile could not be loaded.
    pub skipped: u64,
}

fn to_value(v: &evergreen_proto::v1::Value) -> Value<'_> {
    match &v.kind {
        Some(evergreen_proto::v1::value::Kind::Number(x)) => Value::Number(*x),
        Some(evergreen_proto::v1::value::Kind::Category(s)) => Value::Text(s),
        None => Value::Missing,
    }
}

impl Monitor {
    pub fn new(registry: Channel, drift_share: f64) -> Self {
        Monitor {
            registry: AsyncMutex::new(RegistryClient::new(registry)),
            tracked: Mutex::new(HashMap::new()),
            drift_share,
        }
    }

    async fn load(&self, model: &str, version: u64) -> Result<Model, MonitorError> {
        let req = DownloadArtifactRequest {
            r#ref: Some(VersionRef {
                model: model.to_string(),
                selector: Some(version_ref::Selector::Version(version)),
            }),
        };
        let mut client = self.registry.lock().await.clone();
        let mut stream = client
            .download_artifact(req)
            .await
            .map_err(|e| MonitorError::Unavailable(format!("registry: {}", e.message())))?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(c) = stream
            .message()
            .await
            .map_err(|e| MonitorError::Unavailable(format!("registry: {}", e.message())))?
        {
            bytes.extend_from_slice(&c.data);
        }
        Model::from_bytes(&bytes)
            .map_err(|e| MonitorError::Unavailable(format!("{model}/{version}: {e}")))
    }

    /// Adds a batch of prediction-log records to their versions' windows.
    /// Shadow records count for the shadow version like any other.
    pub async fn ingest(&self, records: &[PredictionLog]) -> Ingested {
        let mut out = Ingested::default();
        let mut missing: Vec<Key> = Vec::new();
        {
            let tracked = self.tracked.lock().unwrap();
            for r in records {
                let key = (r.model.clone(), r.version);
                if !tracked.contains_key(&key) && !missing.contains(&key) {
                    missing.push(key);
                }
            }
        }
        for key in missing {
            match self.load(&key.0, key.1).await {
                Ok(model) => {
                    let window = Window::new(&model.profile);
                    self.tracked.lock().unwrap().entry(key).or_insert(Tracked {
                        model: Arc::new(model),
                        window,
                    });
                }
                Err(e) => {
                    tracing::warn!(model = %key.0, version = key.1, error = %e, "cannot load the reference profile; records skipped")
                }
            }
        }
        let mut tracked = self.tracked.lock().unwrap();
        let mut row: Vec<Value> = Vec::new();
        for r in records {
            let Some(t) = tracked.get_mut(&(r.model.clone(), r.version)) else {
                out.skipped += 1;
                continue;
            };
            row.clear();
            if let Some(f) = &r.features {
                row.extend(f.values.iter().map(to_value));
            }
            let model = t.model.clone();
            t.window.push(&model.profile, &row);
            if let Some(p) = &r.prediction {
                let answer = if model.schema.labels().is_some() {
                    Answer::Probabilities(&p.probabilities)
                } else {
                    Answer::Value(p.value)
                };
                t.window.push_answer(&model.profile, answer);
            }
            out.accepted += 1;
        }
        out
    }

    pub fn report(&self, model: &str, version: u64) -> Result<Report, MonitorError> {
        if version == 0 {
            return Err(MonitorError::InvalidArgument(
                "version is required: expected a version number (1, 2, ...)".into(),
            ));
        }
        let tracked = self.tracked.lock().unwrap();
        let Some(t) = tracked.get(&(model.to_string(), version)) else {
            return Err(MonitorError::NotFound(format!(
                "no predictions of {model}/{version} have been logged yet"
            )));
        };
        let lines: Vec<FeatureLine> = t
            .window
            .drift(&t.model.profile)
            .into_iter()
            .zip(&t.model.schema.features)
            .map(|((verdict, psi, count, missing), f)| FeatureLine {
                feature: f.name.clone(),
                verdict,
                psi,
                count,
                missing,
            })
            .collect();
        let (verdict, psi, count) = t.window.prediction_drift(&t.model.profile);
        let prediction = FeatureLine {
            feature: "prediction".into(),
            verdict,
            psi,
            count,
            missing: 0,
        };
        let verdicts: Vec<FeatureDrift> = lines.iter().map(|l| l.verdict.clone()).collect();
        let drifted = verdicts.iter().filter(|v| v.drifted).count();
        Ok(Report {
            rows: t.window.rows,
            prediction,
            dataset_drift: dataset_drift(&verdicts, self.drift_share),
            drifted_share: if verdicts.is_empty() {
                0.0
            } else {
                drifted as f64 / verdicts.len() as f64
            },
            features: lines,
        })
    }
}
