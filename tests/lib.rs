//! The end-to-end sandbox: real Evergreen daemons, started in-process on
//! 127.0.0.1:0 with temp dirs, reached over real gRPC.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use evergreen_proto::v1::predictor_client::PredictorClient;
use evergreen_proto::v1::registry_client::RegistryClient;
use evergreen_proto::v1::trainer_client::TrainerClient;
use evergreen_registry::RegistryConfig;
use evergreen_server::ServerConfig;
use evergreen_trainer::TrainerConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod hostile;
pub mod process;
pub mod proxy;
pub mod secure;

use proxy::Proxy;
use secure::{tokens, Secure};

/// What the sandbox's clients use: with `SandboxBuilder::secure`, TLS and
/// the admin token on every call.
pub use evergreen_runtime::client::Channel;

/// Every sandbox daemon serves metrics on a port of its own.
const METRICS: &str = "127.0.0.1:0";

/// A running registry, and a trainer when asked for.
pub struct Sandbox {
    pub registry_addr: SocketAddr,
    pub trainer_addr: Option<SocketAddr>,
    trainer: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    trainer_config: Option<TrainerConfig>,
    pub server_addr: Option<SocketAddr>,
    pub monitor_addr: Option<SocketAddr>,
    server: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    server_config: Option<ServerConfig>,
    monitor: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    monitor_config: Option<evergreen_monitor::MonitorConfig>,
    /// Bound before the registry starts (which needs the monitor's URL).
    monitor_listener: Option<TcpListener>,
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    /// "http", or "https" with `SandboxBuilder::secure`: the scheme of the
    /// URLs the daemons are given for each other.
    scheme: &'static str,
    secure: Option<Secure>,
    /// What the sandbox's own clients (`registry()`, ...) connect with.
    client: evergreen_runtime::client::Client,
    config: RegistryConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// With `SandboxBuilder::proxied`: what the server, trainer and
    /// monitor reach the registry through.
    registry_proxy: Option<Proxy>,
    /// With `SandboxBuilder::proxied` and a monitor: what the server ships
    /// its prediction log through.
    monitor_proxy: Option<Proxy>,
}

type ConfigTweak = Box<dyn FnOnce(&mut RegistryConfig)>;

type ServerTweak = Box<dyn FnOnce(&mut ServerConfig)>;

type MonitorTweak = Box<dyn FnOnce(&mut evergreen_monitor::MonitorConfig)>;

type TrainerTweak = Box<dyn FnOnce(&mut TrainerConfig)>;

#[derive(Default)]
pub struct SandboxBuilder {
    tweak: Option<ConfigTweak>,
    trainer: bool,
    trainer_tweak: Option<TrainerTweak>,
    server: Option<ServerTweak>,
    monitor: Option<MonitorTweak>,
    secure: bool,
    proxied: bool,
}

impl SandboxBuilder {
    /// Adjusts the registry's config before start.
    pub fn registry(mut self, f: impl FnOnce(&mut RegistryConfig) + 'static) -> Self {
        self.tweak = Some(Box::new(f));
        self
    }

    /// Mutual TLS and tokens on every daemon ([`Secure`]): each daemon
    /// calls the others at `https://` URLs with its own token (see
    /// [`secure::tokens`]); the sandbox's clients use the admin token.
    /// Tweaks run after, so a test can change any of it.
    pub fn secure(mut self) -> Self {
        self.secure = true;
        self
    }

    /// Puts a fault-injecting [`Proxy`] between the daemons: the server,
    /// trainer and monitor reach the registry through
    /// [`Sandbox::registry_proxy`], the server reaches the monitor through
    /// [`Sandbox::monitor_proxy`]. The sandbox's own clients connect
    /// directly.
    pub fn proxied(mut self) -> Self {
        self.proxied = true;
        self
    }

    /// Also start a trainer that registers into this registry.
    pub fn trainer(mut self) -> Self {
        self.trainer = true;
        self
    }

    /// A trainer with an adjusted config (data dir and registry URL are the
    /// sandbox's).
    pub fn trainer_with(mut self, f: impl FnOnce(&mut TrainerConfig) + 'static) -> Self {
        self.trainer = true;
        self.trainer_tweak = Some(Box::new(f));
        self
    }

    /// Also start a monitor; a server (if any) logs its predictions to it.
    pub fn monitor(self) -> Self {
        self.monitor_with(|_| {})
    }

    /// A monitor with an adjusted config (data dir, registry and trainer
    /// URLs are the sandbox's).
    pub fn monitor_with(
        mut self,
        f: impl FnOnce(&mut evergreen_monitor::MonitorConfig) + 'static,
    ) -> Self {
        self.monitor = Some(Box::new(f));
        self
    }

    /// Also start a prediction server following this registry.
    pub fn server(mut self, f: impl FnOnce(&mut ServerConfig) + 'static) -> Self {
        self.server = Some(Box::new(f));
        self
    }

    pub async fn start(self) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let scheme = if self.secure { "https" } else { "http" };
        let secure = self
            .secure
            .then(|| Secure::generate(&dir.path().join("secure")));
        // Sets a daemon config's tls, auth and client (with `token`).
        macro_rules! secured {
            ($c:expr, $token:expr) => {
                if let Some(s) = &secure {
                    $c.tls = s.tls();
                    $c.auth = s.auth();
                    $c.client = s.pki.client($token);
                }
            };
        }
        // The registry asks the monitor about phase-out steps, and starts
        // first: the monitor's port is bound now so its URL is known.
        let monitor_listener = match self.monitor {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
            None => None,
        };
        let monitor_addr = monitor_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound"));
        let mut config = RegistryConfig {
            metrics_listen: METRICS.into(),
            data_dir: dir.path().join("registry"),
            // No monitor in the sandbox: no health checks.
            monitor_url: monitor_addr
                .map(|a| format!("{scheme}://{a}"))
                .unwrap_or_default(),
            ..Default::default()
        };
        secured!(config, tokens::REGISTRY_DAEMON);
        if let Some(f) = self.tweak {
            f(&mut config);
        }
        let data_dir = config.data_dir.clone();
        let trainer_config = self.trainer.then(|| {
            let mut c = TrainerConfig {
                metrics_listen: METRICS.into(),
                data_dir: dir.path().join("trainer"),
                ..Default::default()
            };
            secured!(c, tokens::TRAINER_DAEMON);
            if let Some(f) = self.trainer_tweak {
                f(&mut c);
            }
            c
        });
        let monitor_config = self.monitor.map(|f| {
            let mut c = evergreen_monitor::MonitorConfig {
                metrics_listen: METRICS.into(),
                data_dir: dir.path().join("monitor"),
                ..Default::default()
            };
            secured!(c, tokens::MONITOR_DAEMON);
            f(&mut c);
            c
        });
        let server_config = self.server.map(|f| {
            let mut c = ServerConfig {
                metrics_listen: METRICS.into(),
                ..Default::default()
            };
            secured!(c, tokens::SERVER_DAEMON);
            f(&mut c);
            c
        });
        let mut sandbox = Sandbox {
            registry_addr: "127.0.0.1:0".parse().unwrap(),
            trainer_addr: None,
            trainer: None,
            trainer_config,
            server_addr: None,
            monitor_addr,
            monitor: None,
            monitor_config,
            monitor_listener,
            server: None,
            server_config,
            dir: Some(dir),
            data_dir,
            scheme,
            client: secure
                .as_ref()
                .map(|s| s.client(tokens::ADMIN))
                .unwrap_or_default(),
            secure,
            config,
            stop: None,
            task: None,
            registry_proxy: None,
            monitor_proxy: None,
        };
        sandbox.boot().await;
        if self.proxied {
            sandbox.registry_proxy = Some(Proxy::start(sandbox.registry_addr).await);
            if let Some(m) = monitor_addr {
                sandbox.monitor_proxy = Some(Proxy::start(m).await);
            }
        }
        if sandbox.trainer_config.is_some() {
            sandbox.boot_trainer().await;
        }
        if sandbox.monitor_config.is_some() {
            sandbox.boot_monitor().await;
        }
        if sandbox.server_config.is_some() {
            sandbox.boot_server().await;
        }
        sandbox
    }
}

impl Sandbox {
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    pub async fn start() -> Sandbox {
        Self::builder().start().await
    }

    async fn boot(&mut self) {
        // Bound before spawning: clients connect to the real address, no
        // sleeps. A restart binds the same port, so other daemons find it.
        let listener = TcpListener::bind(self.registry_addr).await.expect("bind");
        self.registry_addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.task = Some(tokio::spawn(async move {
            evergreen_registry::run(config, listener, async {
                let _ = rx.await;
            })
            .await
        }));
        self.stop = Some(tx);
    }

    async fn boot_trainer(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.trainer_addr = Some(listener.local_addr().unwrap());
        let mut config = self
            .trainer_config
            .clone()
            .expect("a trainer was asked for");
        config.registry_url = self.registry_url_for_daemons();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            evergreen_trainer::run(config, listener, async {
                let _ = rx.await;
            })
            .await
        });
        self.trainer = Some((tx, task));
    }

    async fn boot_server(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.server_addr = Some(listener.local_addr().unwrap());
        let mut config = self.server_config.clone().expect("a server was asked for");
        config.registry_url = self.registry_url_for_daemons();
        if let Some(m) = self.monitor_addr {
            let m = self.monitor_proxy.as_ref().map_or(m, Proxy::addr);
            config.monitor_url = format!("{}://{m}", self.scheme);
            config.log.flush_ms = 20;
        }
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            evergreen_server::run(config, listener, async {
                let _ = rx.await;
            })
            .await
        });
        self.server = Some((tx, task));
    }

    async fn boot_monitor(&mut self) {
        // A restart binds the same port, so the server's log stream finds it.
        let listener = match self.monitor_listener.take() {
            Some(l) => l,
            None => TcpListener::bind(self.monitor_addr.unwrap_or(([127, 0, 0, 1], 0).into()))
                .await
                .expect("bind"),
        };
        self.monitor_addr = Some(listener.local_addr().unwrap());
        let mut config = self
            .monitor_config
            .clone()
            .expect("a monitor was asked for");
        config.registry_url = self.registry_url_for_daemons();
        config.trainer_url = self
            .trainer_addr
            .map(|a| format!("{}://{a}", self.scheme))
            .unwrap_or_default();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            evergreen_monitor::run(config, listener, async {
                let _ = rx.await;
            })
            .await
        });
        self.monitor = Some((tx, task));
    }

    /// Stops the monitor gracefully (it flushes its windows) and starts it
    /// again on the same port and data dir.
    pub async fn restart_monitor(&mut self) {
        if let Some((tx, task)) = self.monitor.take() {
            let _ = tx.send(());
            task.await
                .expect("monitor task panicked")
                .expect("monitor stopped cleanly");
        }
        self.boot_monitor().await;
    }

    /// Whether the monitor task is still running.
    pub fn monitor_running(&self) -> bool {
        self.monitor.as_ref().is_some_and(|(_, t)| !t.is_finished())
    }

    pub async fn monitor(&self) -> evergreen_proto::v1::monitor_client::MonitorClient<Channel> {
        evergreen_proto::v1::monitor_client::MonitorClient::new(
            self.connect(&self.monitor_url()).await,
        )
    }

    pub fn monitor_url(&self) -> String {
        format!(
            "{}://{}",
            self.scheme,
            self.monitor_addr.expect("sandbox started with .monitor()")
        )
    }

    pub fn server_url(&self) -> String {
        format!(
            "{}://{}",
            self.scheme,
            self.server_addr.expect("sandbox started with .server()")
        )
    }

    pub async fn server_channel(&self) -> Channel {
        self.connect(&self.server_url()).await
    }

    pub async fn predictor(&self) -> PredictorClient<Channel> {
        PredictorClient::new(self.server_channel().await)
    }

    /// Starts a graceful stop of the server and returns its `run` task
    /// (await it for what `run` returned).
    pub fn begin_stop_server(&mut self) -> JoinHandle<anyhow::Result<()>> {
        let (tx, task) = self.server.take().expect("a server is running");
        let _ = tx.send(());
        task
    }

    /// Whether the server task is still running.
    pub fn server_running(&self) -> bool {
        self.server.as_ref().is_some_and(|(_, t)| !t.is_finished())
    }

    /// Stops the registry (the other daemons keep running).
    pub async fn stop_registry(&mut self) {
        self.stop().await.expect("registry stopped cleanly");
    }

    /// Starts the registry again on the same address and data dir.
    pub async fn start_registry(&mut self) {
        self.boot().await;
    }

    pub fn trainer_url(&self) -> String {
        format!(
            "{}://{}",
            self.scheme,
            self.trainer_addr.expect("sandbox started with .trainer()")
        )
    }

    pub async fn trainer(&self) -> TrainerClient<Channel> {
        TrainerClient::new(self.connect(&self.trainer_url()).await)
    }

    /// Stops the trainer gracefully and starts it again on the same data dir.
    pub async fn restart_trainer(&mut self) {
        if let Some((tx, task)) = self.trainer.take() {
            let _ = tx.send(());
            task.await
                .expect("trainer task panicked")
                .expect("trainer stopped cleanly");
        }
        self.boot_trainer().await;
    }

    /// Whether the trainer task is still running.
    pub fn trainer_running(&self) -> bool {
        self.trainer.as_ref().is_some_and(|(_, t)| !t.is_finished())
    }

    pub fn registry_url(&self) -> String {
        format!("{}://{}", self.scheme, self.registry_addr)
    }

    /// The registry's URL as the other daemons are given it (through the
    /// proxy with `SandboxBuilder::proxied`).
    fn registry_url_for_daemons(&self) -> String {
        match &self.registry_proxy {
            Some(p) => format!("{}://{}", self.scheme, p.addr()),
            None => self.registry_url(),
        }
    }

    /// The proxy in front of the registry (`SandboxBuilder::proxied`).
    pub fn registry_proxy(&self) -> &Proxy {
        self.registry_proxy
            .as_ref()
            .expect("sandbox started with .proxied()")
    }

    /// The proxy in front of the monitor (`SandboxBuilder::proxied` with
    /// `.monitor()`).
    pub fn monitor_proxy(&self) -> &Proxy {
        self.monitor_proxy
            .as_ref()
            .expect("sandbox started with .proxied() and .monitor()")
    }

    /// A channel to `url` with the sandbox's client (TLS and the admin
    /// token when secure).
    pub async fn connect(&self, url: &str) -> Channel {
        self.client.connect("url", url).await.expect("connect")
    }

    /// The certificates and tokens (with `SandboxBuilder::secure`).
    pub fn secure(&self) -> &Secure {
        self.secure
            .as_ref()
            .expect("sandbox started with .secure()")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub async fn channel(&self) -> Channel {
        self.connect(&self.registry_url()).await
    }

    pub async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel().await)
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("registry task panicked"),
            None => Ok(()),
        }
    }

    /// Stops the registry and starts it again on the same data dir.
    pub async fn restart(&mut self) {
        self.stop().await.expect("registry stopped cleanly");
        self.boot().await;
    }

    /// The metrics endpoint of the daemon serving gRPC on `grpc`.
    pub async fn metrics_addr(&self, grpc: SocketAddr) -> SocketAddr {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            evergreen_runtime::metrics_addr(grpc),
        )
        .await
        .expect("the metrics endpoint is bound within 10 s")
        .expect("the daemon serves metrics")
    }

    /// `/metrics` of the daemon serving gRPC on `grpc`.
    pub async fn scrape(&self, grpc: SocketAddr) -> String {
        let (code, body) = http_get(self.metrics_addr(grpc).await, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Whether the registry task is still running (it must survive bad input).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let mut tasks = Vec::new();
        for (tx, task) in [self.server.take(), self.monitor.take(), self.trainer.take()]
            .into_iter()
            .flatten()
        {
            let _ = tx.send(());
            tasks.push(task);
        }
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tasks.extend(self.task.take());
        // The data dir goes only once every daemon has stopped (or its task
        // was dropped with the test's runtime): deleting it under a daemon
        // still flushing made its shutdown persist fail and sled's final
        // flush hang (seen in CI at the end of e2e tests).
        let dir = self.dir.take();
        std::thread::spawn(move || {
            // Any executor can wait on a JoinHandle.
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() {
                rt.block_on(async {
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            }
            drop(dir);
        });
    }
}

/// A plain HTTP/1.0 GET: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// The value of one sample (`name{labels}` exactly as rendered, or a bare
/// name) in a Prometheus text page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A stand-in monitor that records the prediction log it receives, to
/// assert what the server ships (the real monitor is `Sandbox::monitor`).
pub mod monitor {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use evergreen_proto::v1::monitor_server::{Monitor, MonitorServer};
    use evergreen_proto::v1::{
        DriftReport, GetDriftRequest, GetPolicyRequest, GetReportRequest, ListSignalsRequest,
        ListSignalsResponse, LogPredictionsResponse, Policy, PredictionLog, PredictionLogBatch,
        RecordFeedbackRequest, RecordFeedbackResponse, Report, SetPolicyRequest, Signal,
        WatchSignalsRequest,
    };
    use tonic::{Request, Response, Status, Streaming};

    #[derive(Clone, Default)]
    pub struct Received {
        pub records: Arc<Mutex<Vec<PredictionLog>>>,
        pub batches: Arc<Mutex<Vec<u64>>>,
    }

    #[tonic::async_trait]
    impl Monitor for Received {
        async fn log_predictions(
            &self,
            req: Request<Streaming<PredictionLogBatch>>,
        ) -> Result<Response<LogPredictionsResponse>, Status> {
            let mut s = req.into_inner();
            let mut n = 0;
            while let Some(b) = s.message().await? {
                n += b.records.len() as u64;
                self.batches.lock().unwrap().push(b.records.len() as u64);
                self.records.lock().unwrap().extend(b.records);
            }
            Ok(Response::new(LogPredictionsResponse { accepted: n }))
        }
        async fn record_feedback(
            &self,
            _: Request<RecordFeedbackRequest>,
        ) -> Result<Response<RecordFeedbackResponse>, Status> {
            Err(Status::unimplemented("test monitor"))
        }
        async fn get_drift(
            &self,
            _: Request<GetDriftRequest>,
        ) -> Result<Response<DriftReport>, Status> {
            Err(Status::unimplemented("test monitor"))
        }
        async fn get_report(
            &self,
            _: Request<GetReportRequest>,
        ) -> Result<Response<Report>, Status> {
            Err(Status::unimplemented("test monitor"))
        }
        async fn set_policy(
            &self,
            _: Request<SetPolicyRequest>,
        ) -> Result<Response<Policy>, Status> {
            Err(Status::unimplemented("test monitor"))
        }
        async fn get_policy(
            &self,
            _: Request<GetPolicyRequest>,
        ) -> Result<Response<Policy>, Status> {
            Err(Status::unimplemented("test monitor"))
        }
        async fn list_signals(
            &self,
            _: Request<ListSignalsRequest>,
        ) -> Result<Response<ListSignalsResponse>, Status> {
            Err(Status::unimplemented("test monitor"))
        }
        type WatchSignalsStream = tokio_stream::wrappers::ReceiverStream<Result<Signal, Status>>;
        async fn watch_signals(
            &self,
            _: Request<WatchSignalsRequest>,
        ) -> Result<Response<Self::WatchSignalsStream>, Status> {
            Err(Status::unimplemented("test monitor"))
        }
    }

    /// Starts one on 127.0.0.1:0.
    pub async fn start() -> (SocketAddr, Received) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let svc = MonitorServer::new(received.clone());
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
        });
        (addr, received)
    }
}

/// Trains through the trainer's Train stream, following it to its end;
/// returns the version the job registered (asserted > 0).
pub async fn train_version(
    t: &mut TrainerClient<Channel>,
    r: evergreen_proto::v1::TrainRequest,
) -> u64 {
    let mut s = t.train(r).await.unwrap().into_inner();
    let mut version = 0;
    while let Some(ev) = s.message().await.unwrap() {
        if let Some(evergreen_proto::v1::train_event::Kind::Done(j)) = ev.kind {
            version = j.version;
        }
    }
    assert!(version > 0, "the job registered a version");
    version
}

/// A dataset that ships in the repository (`data/`).
pub fn dataset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(name)
}

/// Helpers for building requests in tests.
pub mod req {
    use evergreen_proto::v1::{
        register_version_request::Part, value, version_ref::Selector, CreateModelRequest,
        RegisterVersionRequest, Row, Value, VersionHeader, VersionRef,
    };

    /// The first row of wine.csv (class 0), by position.
    pub const WINE_ROW: [f64; 13] = [
        14.23, 1.71, 2.43, 15.6, 127.0, 2.8, 3.06, 0.28, 2.29, 5.64, 1.04, 3.92, 1065.0,
    ];

    /// A number as a prediction value.
    pub fn num(x: f64) -> Value {
        Value {
            kind: Some(value::Kind::Number(x)),
        }
    }

    /// A row of numbers, by position.
    pub fn row(values: &[f64]) -> Row {
        Row {
            values: values.iter().map(|x| num(*x)).collect(),
            named: Default::default(),
        }
    }

    pub fn create(name: &str) -> CreateModelRequest {
        CreateModelRequest {
            name: name.into(),
            ..Default::default()
        }
    }

    /// A RegisterVersion stream: header then the artifact in `chunk`-byte pieces.
    pub fn register(
        header: VersionHeader,
        artifact: &[u8],
        chunk: usize,
    ) -> Vec<RegisterVersionRequest> {
        let mut msgs = vec![RegisterVersionRequest {
            part: Some(Part::Header(header)),
        }];
        msgs.extend(
            artifact
                .chunks(chunk.max(1))
                .map(|c| RegisterVersionRequest {
                    part: Some(Part::Chunk(c.to_vec())),
                }),
        );
        msgs
    }

    pub fn header(model: &str) -> VersionHeader {
        VersionHeader {
            model: model.into(),
            ..Default::default()
        }
    }

    pub fn version(model: &str, v: u64) -> Option<VersionRef> {
        Some(VersionRef {
            model: model.into(),
            selector: Some(Selector::Version(v)),
        })
    }

    pub fn spec(s: &str) -> Option<VersionRef> {
        Some(VersionRef {
            model: s.into(),
            selector: None,
        })
    }
}
