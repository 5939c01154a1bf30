//! The prediction log: records go through a bounded queue to a task that
//! batches them and sends each batch to the monitor as its own
//! `LogPredictions` call, whose answer confirms the monitor ingested it. A
//! batch without an answer goes again (three attempts, a backoff apart);
//! what the queue cannot hold, a batch the monitor refuses, and one never
//! confirmed are dropped and counted, and the count reaches the monitor with
//! the next batch (or alone at shutdown). Prediction never waits on the
//! monitor. Delivery is at least once: a batch the monitor ingested but
//! whose answer was lost is sent again.
//!
//! The request id travels in each record (`PredictionLog.request_id`), not
//! as `x-request-id` metadata of the LogPredictions call: one batch holds
//! the rows of many requests, so no single id describes a call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::{PredictionLog, PredictionLogBatch};
use evergreen_runtime::client::Channel;
use tokio::sync::mpsc;

use crate::catalog::stable_hash;
use crate::config::LogConfig;

#[derive(Default)]
pub struct LogStats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct LogShipper {
    tx: mpsc::Sender<PredictionLog>,
    sample_rate: f64,
    pub stats: Arc<LogStats>,
    capacity: usize,
}

impl LogShipper {
    /// Starts the sender task; records flow to `monitor` (a lazy channel).
    /// The task ends once every `LogShipper` handle is gone and what was
    /// queued has been sent (await it at shutdown: that is the flush).
    pub fn start(
        monitor: Channel,
        config: &LogConfig,
    ) -> (Arc<LogShipper>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue);
        let stats = Arc::new(LogStats::default());
        let task = tokio::spawn(ship(
            monitor,
            rx,
            stats.clone(),
            config.batch,
            Duration::from_millis(config.flush_ms),
        ));
        let shipper = Arc::new(LogShipper {
            tx,
            sample_rate: config.sample_rate,
            stats,
            capacity: config.queue,
        });
        (shipper, task)
    }

    /// Whether this request is in the sample (stable per request id).
    pub fn sampled(&self, request_id: &str) -> bool {
        self.sample_rate >= 1.0
            || (stable_hash(request_id) % 10_000) < (self.sample_rate * 10_000.0) as u64
    }

    /// Queues a record, or drops and counts it when the queue is full.
    pub fn offer(&self, record: PredictionLog) {
        if self.tx.try_send(record).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn queued(&self) -> u64 {
        (self.capacity - self.tx.capacity()) as u64
    }
}

/// Attempts at a batch the monitor did not confirm before it is dropped
/// (and counted), a backoff apart; once shutting down, one.
const ATTEMPTS: u32 = 3;

/// Longest one batch's call may take (a stalled or black-holed monitor).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A batch the monitor has not confirmed, and the calls that failed it.
struct Unsent {
    records: Vec<PredictionLog>,
    attempts: u32,
}

/// How one batch's call ended.
enum Sent {
    /// The monitor answered: it ingested the batch.
    Confirmed,
    /// The monitor refused it (a bad batch): sending it again cannot help.
    Refused(tonic::Status),
    /// No answer (unreachable, stalled, shutting down): it may go again.
    Failed(String),
}

/// Sends one batch as its own LogPredictions call: the monitor's answer,
/// which comes after it ingested the batch, is the acknowledgement. A
/// long-lived stream has none, so what a failing stream had buffered would
/// be lost without a count.
async fn send(client: &mut MonitorClient<Channel>, batch: PredictionLogBatch) -> Sent {
    let call = client.log_predictions(tokio_stream::once(batch));
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(_)) => Sent::Confirmed,
        Ok(Err(s))
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::Unimplemented
            ) =>
        {
            Sent::Refused(s)
        }
        Ok(Err(s)) => Sent::Failed(s.to_string()),
        Err(_) => Sent::Failed(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

async fn ship(
    monitor: Channel,
    mut rx: mpsc::Receiver<PredictionLog>,
    stats: Arc<LogStats>,
    batch: usize,
    flush: Duration,
) {
    let mut client = MonitorClient::new(monitor);
    let mut backoff = Duration::from_millis(100);
    // The drop count the monitor has been told about.
    let mut reported = 0u64;
    let mut retry: Option<Unsent> = None;
    let mut closed = false;
    loop {
        let next = match retry.take() {
            Some(u) => u,
            None => {
                // Wait for a first record, then fill the batch until it is
                // full or `flush` has passed.
                let first = if closed { None } else { rx.recv().await };
                let Some(first) = first else {
                    // Every handle is gone (shutdown) and the queue is
                    // drained: tell the monitor the drops it has not heard of.
                    let dropped = stats.dropped.load(Ordering::Relaxed) - reported;
                    if dropped > 0 {
                        let last = PredictionLogBatch {
                            records: Vec::new(),
                            dropped,
                        };
                        if !matches!(send(&mut client, last).await, Sent::Confirmed) {
                            tracing::warn!(dropped, "the monitor was not told of the last dropped prediction-log records");
                        }
                    }
                    return;
                };
                let mut records = vec![first];
                let deadline = tokio::time::Instant::now() + flush;
                while records.len() < batch {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => records.push(r),
                        Ok(None) => {
                            closed = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                Unsent {
                    records,
                    attempts: 0,
                }
            }
        };
        let n = next.records.len() as u64;
        let dropped_now = stats.dropped.load(Ordering::Relaxed);
        let msg = PredictionLogBatch {
            records: next.records.clone(),
            dropped: dropped_now - reported,
        };
        let failure = match send(&mut client, msg).await {
            Sent::Confirmed => {
                reported = dropped_now;
                stats.sent.fetch_add(n, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                continue;
            }
            Sent::Refused(s) => {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(records = n, error = %s, "the monitor refused a prediction-log batch; dropped");
                continue;
            }
            Sent::Failed(e) => e,
        };
        let attempts = next.attempts + 1;
        if attempts < ATTEMPTS && !closed {
            tracing::debug!(records = n, attempts, error = %failure, "prediction-log batch not confirmed; sending it again");
            retry = Some(Unsent { attempts, ..next });
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(records = n, error = %failure, "the monitor confirmed no prediction-log batch in {attempts} attempts; dropped");
        }
    }
}
