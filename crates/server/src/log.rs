//! The prediction log: records go through a bounded queue to a task that
//! batches them and streams them to the monitor (client-streaming
//! `LogPredictions`). A full queue drops records and counts them, and so
//! does a monitor that takes no batch in three attempts (each on a new
//! stream); the count reaches the monitor with the next batch, or alone at
//! shutdown. Prediction never waits on the monitor.
//!
//! The request id travels in each record (`PredictionLog.request_id`), not
//! as `x-request-id` metadata of the LogPredictions call: one call is a
//! long-lived stream carrying many batches, and one batch holds the rows
//! of many requests, so no single id describes a call or a batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use evergreen_proto::v1::monitor_client::MonitorClient;
use evergreen_proto::v1::{LogPredictionsResponse, PredictionLog, PredictionLogBatch};
use evergreen_runtime::client::Channel;
use futures::future::{Fuse, FutureExt};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

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

/// Attempts at a batch the monitor did not take before it is dropped (and
/// counted): each attempt is on a new stream, after a backoff.
const ATTEMPTS: u32 = 3;

/// A batch not yet handed to a working stream, and the streams that failed
/// to take it.
struct Unsent {
    records: Vec<PredictionLog>,
    attempts: u32,
}

type Answer = Result<tonic::Response<LogPredictionsResponse>, tonic::Status>;

/// One LogPredictions call and the batches put on it. Batches the
/// transport pulled from the channel went out on an open stream; ones
/// still in the channel when the call fails never left this process, so
/// they are sent again on the next stream.
struct Stream {
    tx: mpsc::Sender<PredictionLogBatch>,
    call: Fuse<JoinHandle<Answer>>,
    abort: AbortHandle,
    ended: Option<Result<Answer, JoinError>>,
    pulled: Arc<AtomicU64>,
    pushed: u64,
    /// Batches put in the channel (numbered from 0) that may not have been
    /// pulled yet, each with the drop count it carried.
    in_channel: VecDeque<(u64, Unsent, u64)>,
}

impl Stream {
    fn open(monitor: &Channel) -> Stream {
        let (tx, rx) = mpsc::channel::<PredictionLogBatch>(4);
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = pulled.clone();
        let body = ReceiverStream::new(rx).map(move |b| {
            counter.fetch_add(1, Ordering::Relaxed);
            b
        });
        let mut client = MonitorClient::new(monitor.clone());
        let handle = tokio::spawn(async move { client.log_predictions(body).await });
        Stream {
            tx,
            abort: handle.abort_handle(),
            call: handle.fuse(),
            ended: None,
            pulled,
            pushed: 0,
            in_channel: VecDeque::new(),
        }
    }

    /// Batches in the channel the transport has not pulled.
    fn unpulled(&self) -> u64 {
        self.pushed - self.pulled.load(Ordering::Relaxed)
    }

    /// Resolves when the call has ended (keeps its answer).
    async fn ended(&mut self) {
        if self.ended.is_none() {
            self.ended = Some((&mut self.call).await);
        }
    }

    /// Puts `next` on the stream, or hands it back when the call has ended
    /// or took nothing for 5 s (a stalled monitor).
    async fn send(
        &mut self,
        next: Unsent,
        stats: &LogStats,
        reported: &mut u64,
    ) -> Result<(), Unsent> {
        if self.ended.is_some() || self.abort.is_finished() {
            return Err(next);
        }
        let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_secs(5), self.tx.reserve()).await
        else {
            return Err(next);
        };
        let dropped_now = stats.dropped.load(Ordering::Relaxed);
        let carried = dropped_now - *reported;
        permit.send(PredictionLogBatch {
            records: next.records.clone(),
            dropped: carried,
        });
        *reported = dropped_now;
        stats
            .sent
            .fetch_add(next.records.len() as u64, Ordering::Relaxed);
        self.in_channel.push_back((self.pushed, next, carried));
        self.pushed += 1;
        let seen = self.pulled.load(Ordering::Relaxed);
        while self.in_channel.front().is_some_and(|(i, _, _)| *i < seen) {
            self.in_channel.pop_front();
        }
        Ok(())
    }

    /// Ends the call (waiting `wait` at most) and returns the batches that
    /// never left the channel, oldest first, with their counts taken back.
    async fn close(mut self, wait: Duration, stats: &LogStats, reported: &mut u64) -> Vec<Unsent> {
        drop(self.tx);
        if self.ended.is_none() {
            match tokio::time::timeout(wait, &mut self.call).await {
                Ok(r) => self.ended = Some(r),
                Err(_) => self.abort.abort(),
            }
        }
        match &self.ended {
            // The monitor ended it (it is stopping): what it did not pull
            // goes again, below.
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "prediction log stream to the monitor ended")
            }
            Some(Err(_)) => tracing::warn!("prediction log stream to the monitor failed"),
            None => {
                tracing::warn!("prediction log stream to the monitor did not end within {wait:?}")
            }
        }
        let seen = self.pulled.load(Ordering::Relaxed);
        let mut back = Vec::new();
        for (i, u, carried) in self.in_channel {
            if i >= seen {
                *reported -= carried;
                stats
                    .sent
                    .fetch_sub(u.records.len() as u64, Ordering::Relaxed);
                back.push(u);
            }
        }
        back
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
    // The drop count the monitor has been told about.
    let mut reported = 0u64;
    // Batches to send again, oldest first.
    let mut retry: VecDeque<Unsent> = VecDeque::new();
    loop {
        let mut stream = Stream::open(&monitor);
        // Feed the stream until it fails (`Some(batch it refused)` or
        // `None`) or the queue is closed and drained (shutdown).
        let refused = loop {
            let next = match retry.pop_front() {
                Some(u) => u,
                None => {
                    // Wait for a first record, then fill the batch until it
                    // is full or `flush` has passed. A stream that fails
                    // while batches wait in its channel is noticed now.
                    let first = tokio::select! {
                        r = rx.recv() => r,
                        () = stream.ended(), if stream.unpulled() > 0 => break None,
                    };
                    let Some(first) = first else {
                        // Shutdown: tell the monitor the last drops, end the
                        // stream and wait for its answer, so the last
                        // batches are not cut off.
                        let dropped = stats.dropped.load(Ordering::Relaxed) - reported;
                        if dropped > 0 {
                            let last = Unsent {
                                records: Vec::new(),
                                attempts: 0,
                            };
                            let _ = stream.send(last, &stats, &mut reported).await;
                        }
                        let lost: usize = stream
                            .close(Duration::from_secs(5), &stats, &mut reported)
                            .await
                            .iter()
                            .map(|u| u.records.len())
                            .sum();
                        stats.dropped.fetch_add(lost as u64, Ordering::Relaxed);
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
                    Unsent {
                        records,
                        attempts: 0,
                    }
                }
            };
            match stream.send(next, &stats, &mut reported).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(u) => break Some(u),
            }
        };
        // What the failed stream did not take goes again on the next one
        // (oldest first), up to ATTEMPTS streams per batch.
        let mut again = stream
            .close(Duration::from_secs(1), &stats, &mut reported)
            .await;
        again.extend(refused);
        for mut u in again.into_iter().rev() {
            let n = u.records.len() as u64;
            u.attempts += 1;
            if u.attempts < ATTEMPTS {
                retry.push_front(u);
            } else {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    records = n,
                    "no stream to the monitor took a prediction-log batch in {ATTEMPTS} attempts; dropped"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
