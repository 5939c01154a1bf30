//! `evergreen.v1.Status`, the tiny service every daemon serves for
//! `evergreen status`: its name, build version, start time, and a few
//! (key, value) counts of what it holds, given by the daemon as a closure.

use std::sync::Arc;
use std::time::SystemTime;

use evergreen_proto::v1::status_server::{Status as StatusApi, StatusServer};
use evergreen_proto::v1::{DaemonStatus, GetStatusRequest, Holding};
use tonic::{Request, Response, Status};

/// What a daemon holds, as (key, value) pairs in display order, e.g.
/// `[("models", "3"), ("versions", "7")]`.
pub type Holdings = Vec<(String, String)>;

type HoldingsFn = dyn Fn() -> anyhow::Result<Holdings> + Send + Sync;

/// The service; build it with [`service`].
pub struct StatusService {
    name: &'static str,
    started_at: SystemTime,
    holdings: Arc<HoldingsFn>,
}

/// The Status service of daemon `name` ("registry", "trainer", "server",
/// "monitor"), started now. `holdings` is called on each request, on a
/// blocking thread (it may read sled); an error is INTERNAL naming the
/// daemon.
pub fn service<F>(name: &'static str, holdings: F) -> StatusServer<StatusService>
where
    F: Fn() -> anyhow::Result<Holdings> + Send + Sync + 'static,
{
    StatusServer::new(StatusService::new(name, holdings))
}

impl StatusService {
    /// The bare service (see [`service`]).
    pub fn new<F>(name: &'static str, holdings: F) -> Self
    where
        F: Fn() -> anyhow::Result<Holdings> + Send + Sync + 'static,
    {
        StatusService {
            name,
            started_at: SystemTime::now(),
            holdings: Arc::new(holdings),
        }
    }
}

/// The build's version, the same for every Evergreen crate.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[tonic::async_trait]
impl StatusApi for StatusService {
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<DaemonStatus>, Status> {
        let f = self.holdings.clone();
        let name = self.name;
        let holdings = tokio::task::spawn_blocking(move || f())
            .await
            .map_err(|e| Status::internal(format!("the {name}'s status task failed: {e}")))?
            .map_err(|e| Status::internal(format!("cannot read what the {name} holds: {e:#}")))?;
        let since = self
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Response::new(DaemonStatus {
            name: name.to_string(),
            version: VERSION.to_string(),
            started_at: Some(evergreen_proto::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
            }),
            holdings: holdings
                .into_iter()
                .map(|(key, value)| Holding { key, value })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_with_name_version_start_and_holdings() {
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let svc = StatusService::new("registry", || {
            Ok(vec![("models".to_string(), "2".to_string())])
        });
        let s = svc
            .get_status(Request::new(GetStatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.name, "registry");
        assert_eq!(s.version, VERSION);
        assert!(s.started_at.unwrap().seconds >= before);
        assert_eq!(
            s.holdings,
            vec![Holding {
                key: "models".into(),
                value: "2".into()
            }]
        );
    }

    #[tokio::test]
    async fn a_failed_read_is_internal_naming_the_daemon() {
        let svc = StatusService::new("trainer", || Err(anyhow::anyhow!("sled is gone")));
        let e = svc
            .get_status(Request::new(GetStatusRequest {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert_eq!(
            e.message(),
            "cannot read what the trainer holds: sled is gone"
        );
    }
}
