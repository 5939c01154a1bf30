//! The registry's side of the monitor contract: before each phase-out step
//! after the first, `Monitor/GetReport` (last closed window) of the version
//! taking over says whether it is healthy.

use std::time::Duration;

use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::{GetReportRequest, WindowKind};
use evergreen_runtime::client::Channel;
use tonic::Code;

/// How long one health check may take before it counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the monitor said about a version.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// The last closed window has no breach (the note says which window).
    Healthy(String),
    /// The monitor has no closed window of it yet: treated as healthy, and
    /// the note says so.
    NoData(String),
    /// The last closed window breached the model's policy.
    Regressed { note: String, breaches: Vec<String> },
    /// No answer (down, timed out, or an error): do not advance; retry.
    Unreachable(String),
    /// No monitor is configured (`registry.monitor_url = ""`).
    Unchecked,
}

/// The registry's channel to the monitor at `url` ("" = none): lazily
/// connected (an unreachable monitor only shows when it is asked), TLS and
/// token per `[registry.client]`; used by the health checks and by the
/// archive manifest's monitoring history.
pub fn channel(
    client: &evergreen_runtime::client::Client,
    url: &str,
) -> anyhow::Result<Option<Channel>> {
    if url.is_empty() {
        return Ok(None);
    }
    let endpoint = client
        .endpoint("registry.monitor_url", url)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(CHECK_TIMEOUT);
    Ok(Some(client.lazy(endpoint)))
}

/// A lazily connected client; `None` when no monitor is configured.
#[derive(Clone)]
pub struct HealthCheck {
    client: Option<(String, MonitorClient<Channel>)>,
}

impl HealthCheck {
    /// Checks against the monitor at `url` over `channel` (see
    /// [`channel`]); `None` = no checks.
    pub fn new(url: &str, channel: Option<Channel>) -> Self {
        Self {
            client: channel.map(|c| (url.to_string(), MonitorClient::new(c))),
        }
    }

    pub fn disabled() -> Self {
        Self { client: None }
    }

    /// Whether `model/version` is healthy according to its last closed
    /// monitoring window.
    pub async fn check(&self, model: &str, version: u64) -> Health {
        let Some((url, client)) = &self.client else {
            return Health::Unchecked;
        };
        let request = GetReportRequest {
            model: model.to_string(),
            version,
            window: WindowKind::Last as i32,
        };
        let answer = tokio::time::timeout(CHECK_TIMEOUT, client.clone().get_report(request)).await;
        let report = match answer {
            Err(_) => {
                return Health::Unreachable(format!(
                    "monitor at {url} did not answer within {}s",
                    CHECK_TIMEOUT.as_secs()
                ))
            }
            Ok(Err(s)) if s.code() == Code::NotFound => {
                return Health::NoData(format!(
                    "no monitoring window of {model}/{version} closed yet ({}): treated as healthy",
                    s.message()
                ))
            }
            Ok(Err(s)) => {
                return Health::Unreachable(format!(
                    "monitor at {url} answered {}: {}",
                    evergreen_proto::codes::name(s.code()),
                    s.message()
                ))
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let Some(w) = report.summary else {
            return Health::NoData(format!(
                "the monitor reported no window of {model}/{version}: treated as healthy"
            ));
        };
        let labeled = w.performance.as_ref().map_or(0, |p| p.labeled);
        let window = format!(
            "window {} of {model}/{version} ({} rows, {labeled} labeled)",
            w.seq, w.rows
        );
        if w.breaches.is_empty() {
            Health::Healthy(format!("healthy: {window} had no breach"))
        } else {
            Health::Regressed {
                note: format!("regression: {window} breached: {}", w.breaches.join("; ")),
                breaches: w.breaches,
            }
        }
    }
}
