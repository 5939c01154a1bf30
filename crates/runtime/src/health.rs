//! A daemon's health: the standard `grpc.health.v1.Health` service (which
//! [`crate::serve`] adds to the daemon's routes) plus what `/readyz`
//! answers. Daemons set their services' status as with tonic-health's
//! `HealthReporter`; once shutdown began ([`Health::drain`]) every service
//! and the server as a whole ("") report NOT_SERVING and later calls to
//! set a status are ignored, so a late "ready" cannot undo the drain.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Shared handle on one daemon's health (cheap to clone).
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    state: Arc<tokio::sync::Mutex<State>>,
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    add: Arc<dyn Fn(&mut RoutesBuilder) + Send + Sync>,
}

#[derive(Default)]
struct State {
    services: BTreeSet<String>,
    draining: bool,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.is_ready())
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A new health state: the server as a whole ("") SERVING, no service
    /// named yet.
    pub fn new() -> Self {
        let (reporter, server) = tonic_health::server::health_reporter();
        Health {
            reporter,
            state: Default::default(),
            ready: Arc::new(AtomicBool::new(true)),
            draining: Arc::new(AtomicBool::new(false)),
            add: Arc::new(move |routes: &mut RoutesBuilder| {
                routes.add_service(server.clone());
            }),
        }
    }

    pub async fn set_serving<S: NamedService>(&self) {
        self.set_service_status(S::NAME, ServingStatus::Serving)
            .await;
    }

    pub async fn set_not_serving<S: NamedService>(&self) {
        self.set_service_status(S::NAME, ServingStatus::NotServing)
            .await;
    }

    /// Sets `service`'s status ("" = the server as a whole, which is what
    /// `/readyz` reports). Ignored once shutdown began.
    pub async fn set_service_status(&self, service: impl AsRef<str>, status: ServingStatus) {
        let service = service.as_ref();
        let mut state = self.state.lock().await;
        if state.draining {
            return;
        }
        if service.is_empty() {
            self.ready
                .store(status == ServingStatus::Serving, Ordering::SeqCst);
        } else {
            state.services.insert(service.to_string());
        }
        self.reporter.set_service_status(service, status).await;
    }

    /// `/readyz`: the server as a whole is SERVING and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Shutdown began: every service and "" go NOT_SERVING (watchers are
    /// told), `/readyz` answers 503, and later status changes are ignored.
    pub async fn drain(&self) {
        let mut state = self.state.lock().await;
        state.draining = true;
        self.draining.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
        self.reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for s in &state.services {
            self.reporter
                .set_service_status(s, ServingStatus::NotServing)
                .await;
        }
    }

    /// Ends every `Health/Watch` stream (after [`Health::drain`] told them
    /// NOT_SERVING), so that a health watcher does not hold the drain for
    /// the whole grace period. Checks answer NOT_FOUND afterwards; the
    /// listener is closed by then.
    pub async fn close_watches(&self) {
        let state = self.state.lock().await;
        let mut reporter = self.reporter.clone();
        reporter.clear_service_status("").await;
        for s in &state.services {
            reporter.clear_service_status(s).await;
        }
    }

    /// Adds the `grpc.health.v1.Health` service to `routes`.
    pub(crate) fn add_to(&self, routes: &mut RoutesBuilder) {
        (self.add)(routes);
    }
}
