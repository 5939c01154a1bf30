//! Bearer tokens with roles, checked for every call before it reaches a
//! daemon's service.
//!
//! [`RPC_ROLES`] is the one table of every RPC Evergreen serves and the role
//! it needs; a unit test fails when an RPC of the compiled contracts is
//! missing from it, so a new RPC cannot be served unprotected. gRPC health
//! and reflection stay open (Kubernetes probes, grpcurl discovery).
//!
//! Rules: `admin` may call everything; every role may call what needs
//! `reader`; otherwise the token must hold the role the RPC needs. A token
//! may hold several roles (one line per role). Tokens are compared as
//! SHA-256 digests in constant time and never logged or echoed.
//!
//! A line of the tokens file may end with `expires=<RFC 3339 time>`: from
//! then on that line's role no longer counts, and a token with no live
//! line left is refused as expired (UNAUTHENTICATED, naming the time). The
//! file is read again when its content changes ([`AuthLayer::reload`]), so
//! tokens are added, rotated and revoked without a restart; a file that
//! cannot be used is logged and the tokens in force stay.

use std::fmt;
use std::future::Ready;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{anyhow, bail};
use arc_swap::ArcSwap;
use futures::future::Either;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::shell::AuthConfig;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Read anything, watch, predict, reports; log predictions.
    Reader,
    /// Register versions, upload artifacts, train and retrain, send labels.
    Trainer,
    /// Aliases, traffic policies, lifecycle (deprecate, retire, archive,
    /// restore, phase-out), monitoring policies.
    Deployer,
    /// Everything, including deletes.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Trainer, Role::Deployer, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Trainer => "trainer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

use Role::{Admin, Deployer, Reader, Trainer};

/// Every RPC and the role it needs (path as on the wire).
pub const RPC_ROLES: &[(&str, Role)] = &[
    // Registry: models.
    ("/evergreen.v1.Registry/CreateModel", Trainer),
    ("/evergreen.v1.Registry/GetModel", Reader),
    ("/evergreen.v1.Registry/ListModels", Reader),
    ("/evergreen.v1.Registry/UpdateModel", Deployer),
    ("/evergreen.v1.Registry/DeleteModel", Admin),
    // Registry: versions.
    ("/evergreen.v1.Registry/RegisterVersion", Trainer),
    ("/evergreen.v1.Registry/GetVersion", Reader),
    ("/evergreen.v1.Registry/ListVersions", Reader),
    ("/evergreen.v1.Registry/DownloadArtifact", Reader),
    ("/evergreen.v1.Registry/SetVersionStatus", Deployer),
    ("/evergreen.v1.Registry/DeleteVersion", Admin),
    ("/evergreen.v1.Registry/Archive", Deployer),
    ("/evergreen.v1.Registry/Restore", Deployer),
    // Registry: aliases, traffic, history, phase-out, watch.
    ("/evergreen.v1.Registry/SetAlias", Deployer),
    ("/evergreen.v1.Registry/DeleteAlias", Deployer),
    ("/evergreen.v1.Registry/RollbackAlias", Deployer),
    ("/evergreen.v1.Registry/SetTrafficPolicy", Deployer),
    ("/evergreen.v1.Registry/History", Reader),
    ("/evergreen.v1.Registry/StartPhaseout", Deployer),
    ("/evergreen.v1.Registry/GetPhaseout", Reader),
    ("/evergreen.v1.Registry/UpdatePhaseout", Deployer),
    ("/evergreen.v1.Registry/Watch", Reader),
    // Trainer.
    ("/evergreen.v1.Trainer/Train", Trainer),
    ("/evergreen.v1.Trainer/SubmitJob", Trainer),
    ("/evergreen.v1.Trainer/GetJob", Reader),
    ("/evergreen.v1.Trainer/ListJobs", Reader),
    ("/evergreen.v1.Trainer/CancelJob", Trainer),
    ("/evergreen.v1.Trainer/WatchJob", Reader),
    ("/evergreen.v1.Trainer/Retrain", Trainer),
    // Prediction server: Evergreen's API and the Open Inference Protocol.
    ("/evergreen.v1.Predictor/Predict", Reader),
    ("/evergreen.v1.Predictor/ListServed", Reader),
    ("/inference.GRPCInferenceService/ServerLive", Reader),
    ("/inference.GRPCInferenceService/ServerReady", Reader),
    ("/inference.GRPCInferenceService/ModelReady", Reader),
    ("/inference.GRPCInferenceService/ServerMetadata", Reader),
    ("/inference.GRPCInferenceService/ModelMetadata", Reader),
    ("/inference.GRPCInferenceService/ModelInfer", Reader),
    // Every daemon: what it is and holds (`evergreen status`).
    ("/evergreen.v1.Status/GetStatus", Reader),
    // Monitor. The server's prediction log needs only `reader`: a reader
    // can already put any traffic in it by calling Predict. Labels change
    // realized performance (and so rollbacks), so they need `trainer`.
    ("/evergreen.v1.Monitor/LogPredictions", Reader),
    ("/evergreen.v1.Monitor/RecordFeedback", Trainer),
    ("/evergreen.v1.Monitor/GetDrift", Reader),
    ("/evergreen.v1.Monitor/GetReport", Reader),
    ("/evergreen.v1.Monitor/SetPolicy", Deployer),
    ("/evergreen.v1.Monitor/GetPolicy", Reader),
    ("/evergreen.v1.Monitor/ListSignals", Reader),
    ("/evergreen.v1.Monitor/WatchSignals", Reader),
];

/// Services callable without a token.
pub const OPEN_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The role `path` ("/package.Service/Method") needs: `None` for the open
/// services; an RPC missing from the table needs `admin` (deny by default).
pub fn required_role(path: &str) -> Option<Role> {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if OPEN_SERVICES.contains(&service) {
        return None;
    }
    Some(
        RPC_ROLES
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, r)| *r)
            .unwrap_or(Admin),
    )
}

/// A set of roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |acc, r| acc | r.bit()))
    }

    pub fn contains(self, r: Role) -> bool {
        self.0 & r.bit() != 0
    }

    /// Whether these roles may call an RPC that needs `needed`.
    pub fn allow(self, needed: Role) -> bool {
        self.contains(Admin) || self.contains(needed) || (needed == Reader && self.0 != 0)
    }

    fn names(self) -> String {
        let v: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| self.contains(*r))
            .map(Role::name)
            .collect();
        v.join(", ")
    }
}

/// One line of the tokens: a token's digest, a role, and when it ends.
struct Entry {
    digest: [u8; 32],
    roles: Roles,
    /// Unix seconds from which this line no longer counts.
    expires: Option<i64>,
}

/// The accepted tokens (SHA-256 digests) and their roles.
pub struct Tokens {
    entries: Vec<Entry>,
}

/// What a presented token is worth now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lookup {
    /// The roles of its live lines (empty: refused).
    pub roles: Roles,
    /// The latest expiry among its expired lines (`None`: no such line).
    pub expired: Option<i64>,
}

/// A token and one of its roles, as read from config.
struct Line {
    role: Role,
    token: String,
    expires: Option<i64>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} tokens, <redacted>)", self.entries.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// The tokens of `[section.auth]`; `None` when both sources are empty
    /// (auth off). Errors name the key, file and line — never the token.
    pub fn load(section: &str, auth: &AuthConfig) -> anyhow::Result<Option<Tokens>> {
        let mut pairs: Vec<Line> = Vec::new();
        if !auth.tokens_file.as_os_str().is_empty() {
            let key = format!("{section}.auth.tokens_file");
            pairs.extend(parse_file(&key, &auth.tokens_file)?);
        }
        if !auth.tokens.trim().is_empty() {
            let key = format!("{section}.auth.tokens");
            for (i, item) in auth.tokens.split(',').enumerate() {
                let item = item.trim();
                let (role, token) = item
                    .split_once(':')
                    .ok_or_else(|| anyhow!("invalid {key}: entry {} is not ROLE:TOKEN", i + 1))?;
                let at = format!("entry {}", i + 1);
                check_token(&key, &at, token.trim())?;
                pairs.push(Line {
                    role: parse_role(&key, &at, role.trim())?,
                    token: token.trim().to_string(),
                    expires: None,
                });
            }
        }
        if pairs.is_empty() {
            if !auth.tokens_file.as_os_str().is_empty() {
                bail!(
                    "{section}.auth.tokens_file {} holds no token: expected lines `ROLE TOKEN [expires=TIME]`",
                    auth.tokens_file.display()
                );
            }
            return Ok(None);
        }
        Ok(Some(Tokens {
            entries: pairs
                .into_iter()
                .map(|l| Entry {
                    digest: digest(l.token.as_bytes()),
                    roles: Roles::of(&[l.role]),
                    expires: l.expires,
                })
                .collect(),
        }))
    }

    /// What `token` is worth at `now` (unix seconds). Every entry is
    /// compared, in constant time, whatever matches; whether a line has
    /// expired depends on the line, not on the token.
    pub fn lookup(&self, token: &str, now: i64) -> Lookup {
        let d = digest(token.as_bytes());
        let mut roles = 0u8;
        let mut expired = i64::MIN;
        for e in &self.entries {
            let hit = e.digest.ct_eq(&d);
            let ended = e.expires.filter(|t| now >= *t);
            let live = subtle::Choice::from(ended.is_none() as u8);
            roles |= u8::conditional_select(&0, &e.roles.0, hit & live);
            let at = ended.unwrap_or(i64::MIN).max(expired);
            expired = i64::conditional_select(&expired, &at, hit & !live);
        }
        Lookup {
            roles: Roles(roles),
            expired: (expired != i64::MIN).then_some(expired),
        }
    }

    /// The roles of `token` now (empty when unknown or expired).
    pub fn roles(&self, token: &str) -> Roles {
        self.lookup(token, unix_now()).roles
    }

    /// How many distinct tokens (a token may have several lines).
    pub fn len(&self) -> usize {
        let distinct: std::collections::HashSet<&[u8; 32]> =
            self.entries.iter().map(|e| &e.digest).collect();
        distinct.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_role(key: &str, at: &str, s: &str) -> anyhow::Result<Role> {
    Role::parse(s).ok_or_else(|| {
        anyhow!(
            "invalid {key}: {at}: unknown role {s:?}; expected reader, trainer, deployer or admin"
        )
    })
}

fn check_token(key: &str, at: &str, token: &str) -> anyhow::Result<()> {
    if token.is_empty() {
        bail!("invalid {key}: {at}: empty token");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("invalid {key}: {at}: a token is printable ASCII without spaces");
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

fn parse_expiry(key: &str, at: &str, s: &str) -> anyhow::Result<i64> {
    let value = s.strip_prefix("expires=").ok_or_else(|| {
        anyhow!("invalid {key}: {at}: expected `ROLE TOKEN` or `ROLE TOKEN expires=TIME`")
    })?;
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|d| d.timestamp())
        .map_err(|e| {
            anyhow!(
                "invalid {key}: {at}: expires={value:?} is not an RFC 3339 time ({e}); expected e.g. expires=2027-01-31T00:00:00Z"
            )
        })
}

fn parse_file(key: &str, path: &Path) -> anyhow::Result<Vec<Line>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read {key} {}: {e}", path.display()))?;
    let key = format!("{key} {}", path.display());
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("line {}", n + 1);
        let mut parts = line.split_whitespace();
        let (Some(role), Some(token), expires, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("invalid {key}: {at}: expected `ROLE TOKEN` or `ROLE TOKEN expires=TIME`");
        };
        let role = parse_role(&key, &at, role)?;
        check_token(&key, &at, token)?;
        let expires = expires.map(|e| parse_expiry(&key, &at, e)).transpose()?;
        out.push(Line {
            role,
            token: token.to_string(),
            expires,
        });
    }
    Ok(out)
}

/// The decision for one call: `Ok` to pass it on, or the status to answer.
pub fn check(
    tokens: &Tokens,
    path: &str,
    authorization: Option<&[u8]>,
) -> Result<(), tonic::Status> {
    let Some(needed) = required_role(path) else {
        return Ok(());
    };
    let Some(value) = authorization else {
        return Err(tonic::Status::unauthenticated(
            "missing bearer token: set --token or EVERGREEN_TOKEN",
        ));
    };
    let token = std::str::from_utf8(value)
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or_else(|| {
            tonic::Status::unauthenticated(
                "malformed authorization header: expected `Bearer <token>`",
            )
        })?;
    let Lookup { roles, expired } = tokens.lookup(token, unix_now());
    if roles == Roles::default() {
        return Err(tonic::Status::unauthenticated(match expired {
            Some(t) => format!(
                "bearer token expired at {}: ask for a new token",
                rfc3339(t)
            ),
            None => "unknown bearer token".to_string(),
        }));
    }
    if roles.allow(needed) {
        return Ok(());
    }
    let method = path.trim_start_matches('/');
    let needs = match needed {
        Admin => "the admin role".to_string(),
        r => format!("the {r} role (or admin)"),
    };
    Err(tonic::Status::permission_denied(format!(
        "{method} needs {needs}; this token has {}",
        roles.names()
    )))
}

/// How often [`AuthLayer::reload`] looks at the tokens file.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The tower layer [`crate::serve`] puts in front of every service. `None`
/// tokens = auth off (everything passes).
#[derive(Clone, Default)]
pub struct AuthLayer {
    tokens: Option<Arc<ArcSwap<Tokens>>>,
    /// Where the tokens came from (daemon section, its `[auth]`), to read
    /// them again.
    source: Option<(&'static str, AuthConfig)>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Tokens>) -> Self {
        Self {
            tokens: tokens.map(|t| Arc::new(ArcSwap::from_pointee(t))),
            source: None,
        }
    }

    /// Reads the tokens file again whenever its content changes (every
    /// [`RELOAD_EVERY`]), until the returned guard is dropped. A file
    /// that cannot be read or used (a bad line, no token left) is logged
    /// with the reason, and the tokens in force stay. Auth that was off at
    /// start stays off. `None`: nothing to watch (auth off, or inline
    /// tokens only).
    pub fn reload(&self) -> Option<Reloading> {
        self.reload_every(RELOAD_EVERY)
    }

    fn reload_every(&self, every: std::time::Duration) -> Option<Reloading> {
        let tokens = self.tokens.clone()?;
        let (section, auth) = self.source.clone()?;
        if auth.tokens_file.as_os_str().is_empty() {
            return None;
        }
        let path = auth.tokens_file.clone();
        // What was read at start-up (now, not when the task first runs).
        let mut seen = std::fs::read(&path).map(|b| digest(&b)).ok();
        let task = tokio::spawn(async move {
            let mut unreadable = false;
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) => {
                        if !unreadable {
                            tracing::error!(daemon = section, file = %path.display(), error = %e, "cannot read the tokens file; the tokens in force stay");
                        }
                        unreadable = true;
                        continue;
                    }
                };
                unreadable = false;
                let now = Some(digest(&bytes));
                if now == seen {
                    continue;
                }
                seen = now;
                match Tokens::load(section, &auth) {
                    Ok(Some(t)) => {
                        tracing::info!(daemon = section, file = %path.display(), tokens = t.len(), "tokens file changed: reloaded");
                        tokens.store(Arc::new(t));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(daemon = section, error = %e, "tokens file changed but cannot be used; the tokens in force stay");
                    }
                }
            }
        });
        Some(Reloading(task))
    }
}

/// Stops [`AuthLayer::reload`]'s task when dropped.
pub struct Reloading(tokio::task::JoinHandle<()>);

impl Drop for Reloading {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            tokens: self.tokens.clone(),
            inner,
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    tokens: Option<Arc<ArcSwap<Tokens>>>,
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<R>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if let Err(status) = check(&tokens.load(), req.uri().path(), header) {
                return Either::Right(std::future::ready(Ok(status.into_http())));
            }
        }
        Either::Left(self.inner.call(req))
    }
}

/// What [`crate::serve`] applies besides the routes: TLS and the auth
/// layer, read from a daemon's [`crate::Shell`] and checked once.
#[derive(Debug)]
pub struct Security {
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    pub auth: AuthLayer,
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tokens {
            Some(t) => write!(f, "AuthLayer({:?})", t.load()),
            None => f.write_str("AuthLayer(off)"),
        }
    }
}

impl Security {
    /// Reads the TLS files, the tokens and the client settings of `shell`
    /// (errors name the key and path), and refuses a non-loopback `listen`
    /// without auth unless `insecure`. [`crate::daemon_main`] calls it
    /// before binding (exit code 2); `serve` calls it again.
    pub fn prepare(shell: &crate::Shell, listen: std::net::SocketAddr) -> anyhow::Result<Security> {
        let section = shell.name;
        let tls = crate::tls::server_tls(section, &shell.tls)?;
        let tokens = Tokens::load(section, &shell.auth)?;
        crate::client::Client::new(
            &shell.client,
            &crate::client::Keys::Config(format!("{section}.client")),
        )?;
        if tokens.is_none() && !listen.ip().is_loopback() && !shell.insecure {
            bail!(
                "refusing to serve on {listen} (not a loopback address) without auth: set {section}.auth.tokens_file or EVERGREEN_{}__AUTH__TOKENS, or pass --insecure ({section}.insecure = true) to serve it open",
                section.to_uppercase()
            );
        }
        let mut auth = AuthLayer::new(tokens);
        auth.source = Some((section, shell.auth.clone()));
        Ok(Security { tls, auth })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every RPC the daemons serve (from the compiled contracts) is in
    /// [`RPC_ROLES`], and every row of the table is a real RPC.
    #[test]
    fn every_rpc_has_a_role() {
        let fds = prost_types::FileDescriptorSet::decode(evergreen_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut served = Vec::new();
        for file in &fds.file {
            for service in &file.service {
                for method in &service.method {
                    served.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        assert!(served.len() > 40, "{served:?}");
        let missing: Vec<&String> = served
            .iter()
            .filter(|p| !RPC_ROLES.iter().any(|(r, _)| r == p))
            .collect();
        assert!(
            missing.is_empty(),
            "RPCs without a role in auth::RPC_ROLES (add them): {missing:?}"
        );
        let stale: Vec<&str> = RPC_ROLES
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !served.iter().any(|s| s == p))
            .collect();
        assert!(
            stale.is_empty(),
            "rows for RPCs that do not exist: {stale:?}"
        );
        let mut seen = std::collections::HashSet::new();
        for (p, _) in RPC_ROLES {
            assert!(seen.insert(p), "{p} is in the table twice");
        }
    }

    #[test]
    fn open_services_and_deny_by_default() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_role("/evergreen.v1.Registry/GetModel"),
            Some(Reader)
        );
        assert_eq!(required_role("/evergreen.v1.Registry/Nope"), Some(Admin));
        assert_eq!(required_role("/something.Else/X"), Some(Admin));
    }

    /// The tokens of `[section.auth] tokens_file = f`.
    fn from_file(section: &str, f: &Path) -> anyhow::Result<Option<Tokens>> {
        Tokens::load(
            section,
            &AuthConfig {
                tokens_file: f.to_path_buf(),
                ..Default::default()
            },
        )
    }

    fn tokens(s: &str) -> Tokens {
        Tokens::load(
            "registry",
            &AuthConfig {
                tokens: s.into(),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn decisions() {
        let t = tokens("reader:r1, trainer:t1,deployer:d1,admin:a1,trainer:td,deployer:td");
        let code = |path: &str, h: Option<&str>| {
            check(&t, path, h.map(|s| s.as_bytes()))
                .map_err(|s| (s.code(), s.message().to_string()))
        };
        // Open services need nothing.
        assert!(code("/grpc.health.v1.Health/Check", None).is_ok());
        assert_eq!(
            code("/evergreen.v1.Registry/GetModel", None).unwrap_err(),
            (
                tonic::Code::Unauthenticated,
                "missing bearer token: set --token or EVERGREEN_TOKEN".into()
            )
        );
        assert_eq!(
            code("/evergreen.v1.Registry/GetModel", Some("Bearer nope")).unwrap_err(),
            (tonic::Code::Unauthenticated, "unknown bearer token".into())
        );
        assert_eq!(
            code("/evergreen.v1.Registry/GetModel", Some("Basic r1"))
                .unwrap_err()
                .0,
            tonic::Code::Unauthenticated
        );
        // Everyone reads; the scheme is case-insensitive.
        for tok in ["r1", "t1", "d1", "a1"] {
            code(
                "/evergreen.v1.Registry/GetModel",
                Some(&format!("bearer {tok}")),
            )
            .unwrap();
        }
        assert_eq!(
            code("/evergreen.v1.Registry/SetAlias", Some("Bearer t1")).unwrap_err(),
            (
                tonic::Code::PermissionDenied,
                "evergreen.v1.Registry/SetAlias needs the deployer role (or admin); this token has trainer".into()
            )
        );
        assert_eq!(
            code("/evergreen.v1.Registry/DeleteModel", Some("Bearer d1")).unwrap_err(),
            (
                tonic::Code::PermissionDenied,
                "evergreen.v1.Registry/DeleteModel needs the admin role; this token has deployer"
                    .into()
            )
        );
        code("/evergreen.v1.Registry/DeleteModel", Some("Bearer a1")).unwrap();
        code("/evergreen.v1.Registry/RegisterVersion", Some("Bearer t1")).unwrap();
        code("/evergreen.v1.Registry/RegisterVersion", Some("Bearer r1")).unwrap_err();
        // Several roles on one token.
        code("/evergreen.v1.Registry/SetAlias", Some("Bearer td")).unwrap();
        code("/evergreen.v1.Trainer/Retrain", Some("Bearer td")).unwrap();
        assert_eq!(
            code("/evergreen.v1.Registry/DeleteVersion", Some("Bearer td")).unwrap_err().1,
            "evergreen.v1.Registry/DeleteVersion needs the admin role; this token has trainer, deployer"
        );
    }

    #[test]
    fn token_file_and_inline_errors_name_the_place_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(
            &f,
            "# the stack's tokens\n\nreader  alpha\nadmin omega # not a comment\n",
        )
        .unwrap();
        let e = from_file("server", &f).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "invalid server.auth.tokens_file {}: line 4: expected `ROLE TOKEN` or `ROLE TOKEN expires=TIME`",
                f.display()
            )
        );
        std::fs::write(&f, "reader alpha\nroot sekrit\n").unwrap();
        let e = from_file("server", &f).unwrap_err().to_string();
        assert!(e.contains("line 2: unknown role \"root\""), "{e}");
        assert!(!e.contains("sekrit"), "{e}");
        std::fs::write(&f, "# only comments\n").unwrap();
        let e = from_file("server", &f).unwrap_err().to_string();
        assert!(e.contains("holds no token"), "{e}");

        // File and inline together.
        std::fs::write(&f, "reader alpha\n").unwrap();
        let t = Tokens::load(
            "server",
            &AuthConfig {
                tokens_file: f.clone(),
                tokens: "admin:omega".into(),
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.roles("alpha"), Roles::of(&[Reader]));
        assert_eq!(t.roles("omega"), Roles::of(&[Admin]));
        assert_eq!(t.roles("alph"), Roles::default());
        assert!(!format!("{t:?}").contains("alpha"));

        let e = Tokens::load(
            "server",
            &AuthConfig {
                tokens: "reader:a,sekrit".into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "invalid server.auth.tokens: entry 2 is not ROLE:TOKEN");
        assert!(Tokens::load("server", &AuthConfig::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn expired_lines_stop_counting_and_the_refusal_names_the_time() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(
            &f,
            "reader old expires=2020-01-01T00:00:00Z\n\
             reader mixed\n\
             admin mixed expires=2021-06-30T12:00:00+02:00\n\
             deployer later expires=2999-01-01T00:00:00Z\n",
        )
        .unwrap();
        let t = from_file("registry", &f).unwrap().unwrap();
        let jan_2020 = 1_577_836_800;
        // Before its expiry a line counts; from that second on it does not.
        assert_eq!(t.lookup("old", jan_2020 - 1).roles, Roles::of(&[Reader]));
        assert_eq!(
            t.lookup("old", jan_2020),
            Lookup {
                roles: Roles::default(),
                expired: Some(jan_2020)
            }
        );
        // An expired role goes; the live one stays.
        assert_eq!(t.roles("mixed"), Roles::of(&[Reader]));
        assert_eq!(t.roles("later"), Roles::of(&[Deployer]));
        assert_eq!(t.lookup("nope", 0), Lookup::default());

        let code = |path: &str, tok: &str| {
            check(&t, path, Some(format!("Bearer {tok}").as_bytes()))
                .map_err(|s| (s.code(), s.message().to_string()))
        };
        assert_eq!(
            code("/evergreen.v1.Registry/GetModel", "old").unwrap_err(),
            (
                tonic::Code::Unauthenticated,
                "bearer token expired at 2020-01-01T00:00:00Z: ask for a new token".into()
            )
        );
        code("/evergreen.v1.Registry/GetModel", "mixed").unwrap();
        assert_eq!(
            code("/evergreen.v1.Registry/DeleteModel", "mixed")
                .unwrap_err()
                .0,
            tonic::Code::PermissionDenied
        );
        code("/evergreen.v1.Registry/SetAlias", "later").unwrap();

        // A bad expiry names the file, the line and the expected form.
        std::fs::write(&f, "reader a\nreader sekrit expires=tomorrow\n").unwrap();
        let e = from_file("registry", &f).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "invalid registry.auth.tokens_file {}: line 2: expires=\"tomorrow\" is not an RFC 3339 time",
                f.display()
            )),
            "{e}"
        );
        assert!(
            e.contains("expected e.g. expires=2027-01-31T00:00:00Z"),
            "{e}"
        );
        assert!(!e.contains("sekrit"), "{e}");
        std::fs::write(&f, "reader sekrit until=2027-01-01T00:00:00Z\n").unwrap();
        let e = from_file("registry", &f).unwrap_err().to_string();
        assert!(
            e.ends_with("line 1: expected `ROLE TOKEN` or `ROLE TOKEN expires=TIME`"),
            "{e}"
        );
    }

    /// Waits (up to 10 s) until `ok` holds.
    async fn eventually(ok: impl Fn() -> bool) {
        for _ in 0..200 {
            if ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the change was not picked up within 10 s");
    }

    #[tokio::test]
    async fn the_tokens_file_is_read_again_when_it_changes_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "reader first\n").unwrap();
        let auth = AuthConfig {
            tokens_file: f.clone(),
            ..Default::default()
        };
        let mut layer = AuthLayer::new(Tokens::load("server", &auth).unwrap());
        layer.source = Some(("server", auth));
        let tokens = layer.tokens.clone().unwrap();
        let every = std::time::Duration::from_millis(50);
        let _reloading = layer.reload_every(every).expect("a file to watch");
        let get = "/evergreen.v1.Registry/GetModel";
        let allowed = |tok: &str| {
            check(
                &tokens.load(),
                get,
                Some(format!("Bearer {tok}").as_bytes()),
            )
            .is_ok()
        };
        assert!(allowed("first") && !allowed("second"));
        let wait = || tokio::time::sleep(every * 6);

        // Rotation: the new token in, the old one out, no restart.
        std::fs::write(&f, "reader second\n").unwrap();
        eventually(|| allowed("second") && !allowed("first")).await;
        // A broken file (or one without tokens, or none at all) changes
        // nothing.
        for broken in ["reader second\nroot x\n", "# nobody\n"] {
            std::fs::write(&f, broken).unwrap();
            wait().await;
            assert!(allowed("second"), "after {broken:?}");
        }
        std::fs::remove_file(&f).unwrap();
        wait().await;
        assert!(allowed("second"));
        // Back with a revocation by expiry.
        std::fs::write(
            &f,
            "reader second expires=2020-01-01T00:00:00Z\nreader third\n",
        )
        .unwrap();
        eventually(|| !allowed("second") && allowed("third")).await;
        // Inline tokens only: nothing to watch.
        let inline = AuthConfig {
            tokens: "reader:x".into(),
            ..Default::default()
        };
        let mut layer = AuthLayer::new(Tokens::load("server", &inline).unwrap());
        layer.source = Some(("server", inline));
        assert!(layer.reload().is_none());
        assert!(AuthLayer::new(None).reload().is_none());
    }

    #[test]
    fn a_public_address_needs_auth_or_insecure() {
        let mut shell = crate::Shell {
            name: "registry",
            listen: "0.0.0.0:7400".parse().unwrap(),
            metrics_listen: String::new(),
            insecure: false,
            shutdown_grace_seconds: 1,
            shutdown_delay_ms: 0,
            tls: Default::default(),
            auth: Default::default(),
            client: Default::default(),
            limits: Default::default(),
            health: crate::Health::new(),
            metrics: crate::Metrics::new("registry"),
        };
        let e = Security::prepare(&shell, shell.listen)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "refusing to serve on 0.0.0.0:7400 (not a loopback address) without auth: set registry.auth.tokens_file or EVERGREEN_REGISTRY__AUTH__TOKENS, or pass --insecure (registry.insecure = true) to serve it open"
        );
        Security::prepare(&shell, "127.0.0.1:7400".parse().unwrap()).unwrap();
        Security::prepare(&shell, "[::1]:7400".parse().unwrap()).unwrap();
        shell.insecure = true;
        Security::prepare(&shell, shell.listen).unwrap();
        shell.insecure = false;
        shell.auth.tokens = "admin:x".into();
        Security::prepare(&shell, shell.listen).unwrap();
    }
}
