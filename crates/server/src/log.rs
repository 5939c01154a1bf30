//! The prediction log: records go through a bounded queue to a task that
//! batches them and streams them to the monitor (client-streaming
//! `LogPredictions`). A full queue or an unreachable monitor drops records
//! and counts them; prediction never waits on the monitor.
//!
//! The request id travels in each record (`PredictionLog.request_id`), not
//! as `x-request-id` metadata of the LogPredictions call: one call is a
//! long-lived stream carrying many batches, and one batch holds the rows
//! of many requests, so no single id describes a call or a batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::{PredictionLog, PredictionLogBatch};
use evergreen_runtime::client::Channel;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

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
    pub fn start(monitor: Channel, config: &LogConfig) -> Arc<LogShipper> {
        let (tx, rx) = mpsc::channel(config.queue);
        let stats = Arc::new(LogStats::default());
        tokio::spawn(ship(
            monitor,
            rx,
            stats.clone(),
            config.batch,
            Duration::from_millis(config.flush_ms),
        ));
        Arc::new(LogShipper {
            tx,
            sample_rate: config.sample_rate,
            stats,
            capacity: config.queue,
        })
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

async fn ship(
    monitor: Channel,
    mut rx: mpsc::Receiver<PredictionLog>,
    stats: Arc<LogStats>,
    batch: usize,
    flush: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        let (btx, brx) = mpsc::channel::<PredictionLogBatch>(4);
        let mut client = MonitorClient::new(monitor.clone());
        let call =
            tokio::spawn(async move { client.log_predictions(ReceiverStream::new(brx)).await });
        let mut dropped_since = 0u64;
        loop {
            // Wait for a first record, then fill the batch until it is full
            // or `flush` has passed.
            let Some(first) = rx.recv().await else { return };
            let mut records = vec![first];
            let deadline = tokio::time::Instant::now() + flush;
            while records.len() < batch {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => records.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
            let n = records.len() as u64;
            let dropped_now = stats.dropped.load(Ordering::Relaxed);
            let msg = PredictionLogBatch {
                records,
                dropped: dropped_now - dropped_since,
            };
            if call.is_finished() || btx.try_send(msg).is_err() {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                drop(btx);
                if let Ok(Err(e)) = call.await {
                    tracing::debug!(error = %e, "prediction log stream to the monitor ended");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'connect;
            }
            dropped_since = dropped_now;
            backoff = Duration::from_millis(100);
            stats.sent.fetch_add(n, Ordering::Relaxed);
        }
    }
}
