//! The keys every daemon's table shares (besides `listen`): metrics, TLS,
//! auth, how it calls the other daemons, limits and shutdown. Each daemon's
//! config struct carries these fields under the same names, so
//! `[registry.tls]`, `[server.tls]`, ... all mean the same thing, and hands
//! them to [`crate::serve`] as one [`Shell`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::health::Health;
use crate::metrics::Metrics;

/// Server-side TLS (rustls). Empty `cert` = plaintext.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain served to clients ("" = no TLS).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate signed
    /// by it (mutual TLS).
    pub client_ca: PathBuf,
}

/// Bearer tokens with roles. Both sources empty = auth off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of `ROLE TOKEN [expires=RFC3339]` lines (`#` comments), e.g. a
    /// mounted Kubernetes Secret. Roles: reader, trainer, deployer, admin.
    /// Read again within 2 s of a change (rotation without restart); a
    /// file that cannot be used is logged and the tokens in force stay.
    pub tokens_file: PathBuf,
    /// The same inline, `ROLE:TOKEN` pairs separated by commas (for
    /// `EVERGREEN_<DAEMON>__AUTH__TOKENS` from a Secret).
    pub tokens: String,
}

/// How this daemon calls the other daemons.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// PEM CA bundle that signs the other daemons' certificates
    /// ("" = the built-in web PKI roots, used for `https://` URLs).
    pub ca: PathBuf,
    /// Client certificate and key for mutual TLS ("" = none).
    pub cert: PathBuf,
    /// PEM private key of the client certificate.
    pub key: PathBuf,
    /// This daemon's own bearer token, from a file ("" = none) ...
    pub token_file: PathBuf,
    /// ... or inline ("" = none).
    pub token: String,
}

/// Limits, each with a clear error when hit (RESOURCE_EXHAUSTED naming the
/// key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest gRPC request message, in bytes (each message of a stream
    /// counts alone). Defaults: registry 16 MiB (artifacts arrive in 1 MiB
    /// chunks), trainer 256 MiB (a retrain's labeled rows), server and
    /// monitor 64 MiB.
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams (in-flight calls) per connection, and
    /// long-lived streams (Watch, WatchSignals, LogPredictions, Train,
    /// WatchJob) open at once on the daemon; health Watch streams (no token
    /// needed) have a cap of the same size of their own.
    pub max_concurrent_streams: u32,
    /// Seconds between HTTP/2 pings to each client connection; a ping not
    /// answered within as long again closes the connection and its calls,
    /// so a client that vanished (host gone, flow dropped) frees its
    /// long-lived stream slots. 0 = no pings.
    pub keepalive_seconds: u64,
    /// Client connections open at once; a connection beyond it is closed
    /// as soon as it is accepted (the client sees UNAVAILABLE; the daemon
    /// logs this key) and the ones open are not affected. 0 = no cap.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 20,
            max_concurrent_streams: 1024,
            keepalive_seconds: 30,
            max_connections: 4096,
        }
    }
}

impl LimitsConfig {
    /// The defaults with another message size limit.
    pub fn with_max_message_bytes(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            ..Self::default()
        }
    }
}

/// Everything [`crate::serve`] needs besides the routes: the shared keys,
/// plus the daemon's live [`Health`] and [`Metrics`]. Make it once per
/// `run` (`DaemonConfig::shell`), hand `metrics` to the daemon's parts
/// that count things, set service statuses on `health`, then pass it to
/// `serve` (which adds the health service to the routes).
#[derive(Debug, Clone)]
pub struct Shell {
    /// "registry", "trainer", "server" or "monitor".
    pub name: &'static str,
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address ("" = off).
    pub metrics_listen: String,
    /// Allow a non-loopback listen address without auth.
    pub insecure: bool,
    /// In-flight calls get this long to finish after SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// After SIGTERM, how long the daemon keeps accepting calls while
    /// health says NOT_SERVING, before it closes its listener.
    pub shutdown_delay_ms: u64,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    /// How this daemon calls the others (checked at start-up).
    pub client: ClientConfig,
    pub limits: LimitsConfig,
    /// gRPC health and `/readyz`.
    pub health: Health,
    /// This daemon's metrics registry.
    pub metrics: Metrics,
}

/// Default shutdown grace period.
pub const DEFAULT_GRACE_SECONDS: u64 = 20;

/// The default metrics address of the daemon whose gRPC port is `grpc_port`:
/// 7400 -> 127.0.0.1:9400, and so on.
pub fn default_metrics_listen(grpc_port: u16) -> String {
    format!("127.0.0.1:{}", grpc_port + 2000)
}

/// Implements [`crate::DaemonConfig::shell`] for a config struct that has
/// the shared fields (`listen`, `metrics_listen`, `insecure`,
/// `shutdown_grace_seconds`, `shutdown_delay_ms`, `tls`, `auth`, `client`,
/// `limits`). Each call makes a new health state and metrics registry.
#[macro_export]
macro_rules! shell_of {
    ($name:literal, $cfg:expr) => {
        $crate::Shell {
            name: $name,
            listen: $cfg.listen,
            metrics_listen: $cfg.metrics_listen.clone(),
            insecure: $cfg.insecure,
            shutdown_grace_seconds: $cfg.shutdown_grace_seconds,
            shutdown_delay_ms: $cfg.shutdown_delay_ms,
            tls: $cfg.tls.clone(),
            auth: $cfg.auth.clone(),
            client: $cfg.client.clone(),
            limits: $cfg.limits.clone(),
            health: $crate::Health::new(),
            metrics: $crate::Metrics::new($name),
        }
    };
}
