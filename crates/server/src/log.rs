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
        let mut call =
            tokio::spawn(async move { client.log_predictions(ReceiverStream::new(brx)).await });
        let mut dropped_since = 0u64;
        loop {
            // Wait for a first record, then fill the batch until it is full
            // or `flush` has passed.
            let Some(first) = rx.recv().await else {
                // Every handle is gone (shutdown) and the queue is empty:
                // end the stream and wait for the monitor's answer, so the
                // last batches are not cut off.
                drop(btx);
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Ok(Ok(Ok(_))) => {}
                    Ok(Ok(Err(e))) => {
                        tracing::warn!(error = %e, "the monitor refused the last prediction-log batches")
                    }
                    _ => tracing::warn!("the prediction-log stream did not end within 5 s"),
                }
                return;
            };
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
            // A slow monitor holds batches here (the queue before it absorbs
            // the traffic, and drops what does not fit); one that takes no
            // batch for 5 s, or whose stream ended, gets a new stream.
            let sent = !call.is_finished()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(5), btx.send(msg)).await,
                    Ok(Ok(()))
                );
            if !sent {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                drop(btx);
                match tokio::time::timeout(Duration::from_secs(1), &mut call).await {
                    Ok(Ok(Err(e))) => {
                        tracing::warn!(error = %e, "prediction log stream to the monitor ended")
                    }
                    Err(_) => call.abort(),
                    _ => {}
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
