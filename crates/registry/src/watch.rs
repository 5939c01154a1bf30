//! Fan-out of committed events to watchers.
//!
//! The writer publishes each batch after it is durable: it raises
//! `published` and sends the events on a broadcast ring. A watcher subscribes
//! to the ring *before* reading the retained history up to `published`, so
//! there is no gap between history and live events; revisions it has already
//! sent are skipped, so there are no duplicates. The ring never blocks the
//! writer: a watcher that falls `buffer` events behind gets `Lagged` and its
//! stream ends with a status telling it where to resume.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use evergreen_proto::v1::Event;
use evergreen_runtime::metrics::prometheus_client::metrics::counter::Counter;
use evergreen_runtime::metrics::prometheus_client::metrics::family::Family;
use evergreen_runtime::metrics::Labels;
use tokio::sync::{broadcast, mpsc};

use crate::error::{RegistryError, Result};
use crate::store::Reader;

pub struct Hub {
    ring: broadcast::Sender<Arc<Event>>,
    /// Events published, by kind (for `/metrics`).
    pub events: Family<Labels, Counter>,
    published: AtomicU64,
    compacted: AtomicU64,
    closed: AtomicBool,
    closing: tokio::sync::Notify,
}

impl Hub {
    pub fn new(revision: u64, compacted: u64, buffer: usize) -> Self {
        Self {
            ring: broadcast::channel(buffer.max(1)).0,
            events: Family::default(),
            published: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            closed: AtomicBool::new(false),
            closing: tokio::sync::Notify::new(),
        }
    }

    /// Highest durable revision.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Events up to and including this revision are no longer retained.
    pub fn compacted(&self) -> u64 {
        self.compacted.load(Ordering::Acquire)
    }

    pub(crate) fn publish(&self, events: Vec<Event>, history: u64) {
        let Some(last) = events.last().map(|e| e.revision) else {
            return;
        };
        self.published.store(last, Ordering::Release);
        self.compacted
            .store(last.saturating_sub(history), Ordering::Release);
        for e in events {
            let kind = evergreen_proto::v1::EventKind::try_from(e.kind)
                .map(|k| k.short_name())
                .unwrap_or("UNKNOWN");
            self.events
                .get_or_create(&vec![("kind", kind.to_string())])
                .inc();
            let _ = self.ring.send(Arc::new(e)); // Err = no watchers
        }
    }

    /// Watch streams following the ring now.
    pub fn watchers(&self) -> usize {
        self.ring.receiver_count()
    }

    /// Ends every watch stream (daemon shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
    }
}

/// What a watch stream carries.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// First item: events after this revision follow.
    Start(u64),
    Event(Arc<Event>),
    /// The requested history is gone; the stream ends after this.
    Compacted {
        compact_revision: u64,
        current_revision: u64,
    },
}

/// Starts a watcher task and returns the receiving end of its stream.
/// `from` = None watches from the current revision on.
pub fn watch(
    hub: Arc<Hub>,
    reader: Reader,
    from: Option<u64>,
    model: String,
) -> Result<mpsc::Receiver<Result<WatchItem>>> {
    // Subscribe first, then read `published`: everything after it arrives on
    // the ring.
    let mut ring = hub.ring.subscribe();
    let current = hub.published();
    let from = from.unwrap_or(current);
    if from > current {
        return Err(RegistryError::FutureRevision {
            requested: from,
            current,
        });
    }
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let wanted = |e: &Event| model.is_empty() || e.model == model;
        let compacted_answer = |hub: &Hub| {
            Ok(WatchItem::Compacted {
                compact_revision: hub.compacted(),
                current_revision: hub.published(),
            })
        };
        if from < hub.compacted() {
            let _ = tx.send(compacted_answer(&hub)).await;
            return;
        }
        if tx.send(Ok(WatchItem::Start(from))).await.is_err() {
            return;
        }
        // Retained history in (from, current]. Compaction may race with the
        // scan: a missing revision means the history is gone after all.
        let mut last = from;
        for event in reader.events_between(from, current) {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if event.revision != last + 1 {
                let _ = tx.send(compacted_answer(&hub)).await;
                return;
            }
            last = event.revision;
            if wanted(&event)
                && tx
                    .send(Ok(WatchItem::Event(Arc::new(event))))
                    .await
                    .is_err()
            {
                return;
            }
        }
        if last != current {
            let _ = tx.send(compacted_answer(&hub)).await;
            return;
        }
        loop {
            if hub.closed.load(Ordering::Acquire) {
                return;
            }
            let received = tokio::select! {
                r = ring.recv() => r,
                _ = hub.closing.notified() => return,
                _ = tx.closed() => return,
            };
            match received {
                Ok(event) => {
                    if event.revision <= last {
                        continue;
                    }
                    last = event.revision;
                    if wanted(&event) && tx.send(Ok(WatchItem::Event(event))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx
                        .send(Err(RegistryError::WatcherLagged { resume_from: last }))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(rx)
}
