//! The whole product in one process. Each service keeps its own port, settings and
//! shutdown, so a test can stop one (as if it crashed) and start it again on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use jack_runtime::CancellationToken;
use jack_runtime::callers::{CallerEntry, Role};
use jack_runtime::grpc::Credentials;
use jack_runtime::settings::Env;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Guest,
    Conversation,
    Delivery,
    Upload,
    Edge,
}

struct Running {
    token: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Runs one service alone, configured only by `env` (what each service's own binary does).
pub async fn run_one(service: Service, env: &Env, shutdown: CancellationToken) -> anyhow::Result<()> {
    match service {
        Service::Guest => {
            jack_guest::GuestServer::build(jack_guest::Settings::from_env(env)?).await?.run(shutdown).await
        }
        Service::Conversation => {
            jack_conversation::ConversationServer::build(jack_conversation::Settings::from_env(env)?)
                .await?
                .run(shutdown)
                .await
        }
        Service::Delivery => {
            jack_delivery::DeliveryServer::build(jack_delivery::Settings::from_env(env)?).await?.run(shutdown).await
        }
        Service::Upload => {
            jack_upload::UploadServer::build(jack_upload::Settings::from_env(env)?).await?.run(shutdown).await
        }
        Service::Edge => jack_edge::EdgeServer::build(jack_edge::Settings::from_env(env)?).await?.run(shutdown).await,
    }
}

/// All five services, started from one environment.
pub struct Stack {
    env: Env,
    addrs: HashMap<Service, SocketAddr>,
    edge_grpc: Option<SocketAddr>,
    edge_metrics: Option<SocketAddr>,
    upload_http: Option<SocketAddr>,
    running: HashMap<Service, Running>,
    shutdown: CancellationToken,
    edge_threads: EdgeThreads,
    /// Where `jack up` keeps the gRPC tokens it made ([`credentials`]), unless the operator
    /// gave callers of their own or turned checking off.
    credentials_dir: Option<PathBuf>,
}

/// Whether the gRPC health service at `url` says `service` is serving (`jack health`).
pub async fn health(env: &Env, url: &str, service: &str) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let tls = jack_runtime::grpc::Tls::from_env(env)?;
    let channel =
        jack_runtime::grpc::channel(url, std::time::Duration::from_secs(3), &Credentials::none().with_tls(tls))?;
    let answer = HealthClient::new(channel).check(HealthCheckRequest { service: service.to_owned() }).await;
    let name = if service.is_empty() { "the service" } else { service };
    let answer = answer.map_err(|s| anyhow::anyhow!("{url}: {name}: {}", s.message()))?;
    let status = tonic_health::pb::health_check_response::ServingStatus::try_from(answer.into_inner().status)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN");
    anyhow::ensure!(status == "SERVING", "{url}: {name} is {status}");
    Ok(())
}

/// The gRPC credentials `jack up` makes for itself when `GRPC_CALLERS_FILE` names none of
/// the operator's (and `GRPC_AUTH` is not `off`): one token per role in
/// `DIR/credentials/<role>.token`, made once, readable only by their owner, and kept across
/// restarts; and `DIR/credentials/callers.json`, written at every start from the tokens
/// there, which the services check callers against. An AI responder or a dashboard on this
/// machine uses `responder.token` or `dashboard.token`; deleting a token file replaces that
/// token at the next start.
pub fn credentials(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = data_dir.join("credentials");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut callers = Vec::new();
    for role in Role::ALL {
        let path = dir.join(format!("{role}.token"));
        let token = match std::fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
            Ok(_) | Err(_) => {
                let token = jack_runtime::callers::new_token();
                let mut file =
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path);
                file.as_mut()
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .and_then(|f| Ok(writeln!(f, "{token}")?))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                token
            }
        };
        callers.push(CallerEntry::new(&format!("jack up {role}"), role, &token));
    }
    let list = dir.join("callers.json");
    std::fs::write(&list, serde_json::to_string_pretty(&callers)?)
        .with_context(|| format!("cannot write {}", list.display()))?;
    Ok(dir)
}

/// How many tokio workers `jack up` gives the backends (guest, conversation, delivery,
/// upload and the demo concierge share them): half the cores, at least one. The edge has
/// threads of its own ([`EdgeThreads`], [`edge_workers`]), and the SQLite connections each
/// have theirs. Fewer backend workers than cores cost less CPU a message with the same chat
/// latency and ceiling (tests/loadgen/RESULTS.md). `TOKIO_WORKER_THREADS` overrides both counts: then `None` (tokio reads it itself).
pub fn backend_workers() -> Option<usize> {
    workers(|cores| (cores / 2).max(1))
}

/// How many tokio workers `jack up` gives the edge: twice the cores. While thousands of
/// guests reconnect at once, each worker's queue is thousands of handshake, identify and
/// replay tasks, and what is due to the guests already connected — the delivery stream's
/// batches, then each guest's socket — waits behind them. With twice as many workers as
/// cores those live messages are late by far less, the storm takes as long, and chat,
/// outbound and the ceiling stay as they were; the price is a little more CPU during the
/// storm and a little memory a guest (tests/loadgen/RESULTS.md). `TOKIO_WORKER_THREADS`
/// overrides it: then `None`.
pub fn edge_workers() -> Option<usize> {
    workers(|cores| cores * 2)
}

/// A worker count from the cores, unless `TOKIO_WORKER_THREADS` sets it.
fn workers(of_cores: impl Fn(usize) -> usize) -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var_os("TOKIO_WORKER_THREADS").is_none().then(|| of_cores(cores))
}

/// The edge's own tokio threads. The edge holds every guest's socket: when a Wi-Fi blip
/// brings thousands of guests back at once, their handshakes, identifies and replays are
/// thousands of runnable tasks. On threads shared with the backends, a responder's
/// `SendMessage` queued behind all of them, and was answered late for as long as the storm
/// lasted. On threads of its own the edge is as apart
/// from the backends as in a deployment of separate processes, and the kernel shares the
/// cores between the two.
struct EdgeThreads(Option<tokio::runtime::Runtime>);

impl EdgeThreads {
    fn new() -> std::io::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(workers) = edge_workers() {
            builder.worker_threads(workers);
        }
        let runtime = builder.thread_name("edge").enable_all().build()?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("the edge's threads run until the stack is dropped").handle()
    }
}

impl Drop for EdgeThreads {
    fn drop(&mut self) {
        // The stack is dropped inside the main runtime, where a runtime may not block on
        // its threads; the edge has stopped by then (or the process is ending).
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Stack {
    /// Starts every service. Unset addresses and database URLs default to the embedded
    /// layout: loopback gRPC ports 50051–50055 and SQLite files under `data_dir`.
    pub async fn start(env: Env, data_dir: &Path, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let db = |name: &str| format!("sqlite:{}", data_dir.join(format!("{name}.db")).display());
        let env = env
            .with_default("GUEST_DATABASE_URL", db("guest"))
            .with_default("CONVERSATION_DATABASE_URL", db("conversation"))
            .with_default("UPLOAD_DATABASE_URL", db("upload"))
            .with_default("UPLOAD_DIR", data_dir.join("uploads").display().to_string())
            // One process on one machine: at Ctrl-C its guests have no other edge to go to.
            .with_default("EDGE_DRAIN_MS", "0");
        let mut env = env;
        let mut credentials_dir = None;
        if env.get("GRPC_AUTH") != Some("off") && env.get("GRPC_CALLERS_FILE").is_none() {
            let dir = credentials(data_dir)?;
            let file = |name: &str| dir.join(name).display().to_string();
            env = env
                .with("GRPC_CALLERS_FILE", file("callers.json"))
                .with_default("EDGE_GRPC_TOKEN_FILE", file("edge.token"))
                .with_default("CONVERSATION_GRPC_TOKEN_FILE", file("conversation.token"))
                .with_default("JACK_CONCIERGE_TOKEN_FILE", file("responder.token"));
            credentials_dir = Some(dir);
        }
        let edge_threads = EdgeThreads::new().map_err(|e| anyhow::anyhow!("cannot start the edge's threads: {e}"))?;
        let mut stack = Self {
            env,
            addrs: HashMap::new(),
            edge_grpc: None,
            edge_metrics: None,
            upload_http: None,
            running: HashMap::new(),
            shutdown,
            edge_threads,
            credentials_dir,
        };
        for service in [Service::Delivery, Service::Guest, Service::Upload, Service::Conversation, Service::Edge] {
            stack.start_service(service).await?;
        }
        Ok(stack)
    }

    /// The credentials of one role that this stack made for itself ([`credentials`]); none
    /// when the operator gave callers of their own or turned checking off.
    pub fn credentials(&self, role: Role) -> Credentials {
        let tls = jack_runtime::grpc::Tls::from_env(&self.env).expect("the services started with these TLS files");
        let Some(dir) = &self.credentials_dir else { return Credentials::none().with_tls(tls) };
        let token =
            std::fs::read_to_string(dir.join(format!("{role}.token"))).expect("the stack's token files are readable");
        Credentials::bearer(&token).expect("the stack's tokens are ASCII").with_tls(tls)
    }

    /// Where the tokens this stack made are ([`credentials`]).
    pub fn credentials_dir(&self) -> Option<&Path> {
        self.credentials_dir.as_deref()
    }

    /// The environment the services were started with (with the credentials' files).
    pub fn env(&self) -> &Env {
        &self.env
    }

    pub fn addr(&self, service: Service) -> SocketAddr {
        self.addrs[&service]
    }

    pub fn url(&self, service: Service) -> String {
        self.url_of(self.addr(service))
    }

    /// A gRPC URL: `https://` when the services serve TLS (`GRPC_TLS_CERT_FILE`).
    fn url_of(&self, addr: SocketAddr) -> String {
        let scheme = if self.env.get("GRPC_TLS_CERT_FILE").is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    pub fn edge_grpc_addr(&self) -> SocketAddr {
        self.edge_grpc.expect("the edge is started")
    }

    /// The edge's status API (`EdgeService`), as a URL.
    pub fn edge_grpc_url(&self) -> String {
        self.url_of(self.edge_grpc_addr())
    }

    /// Where the edge serves `GET /metrics` for Prometheus, unless `EDGE_METRICS_ADDR=off`.
    pub fn edge_metrics_addr(&self) -> Option<SocketAddr> {
        self.edge_metrics
    }

    /// The edge's own threads (see [`EdgeThreads`]).
    pub fn edge_runtime(&self) -> &tokio::runtime::Handle {
        self.edge_threads.handle()
    }

    /// Where browsers upload files to (the local storage backend).
    pub fn upload_http_addr(&self) -> SocketAddr {
        self.upload_http.expect("upload is started")
    }

    /// The environment a service is started with: the stack's, plus where the others are
    /// (and, on a restart, its own previous address).
    fn env_for(&self, service: Service) -> Env {
        let mut env = self.env.clone();
        if let Some(addr) = self.addrs.get(&service) {
            let name = match service {
                Service::Guest => "GUEST_GRPC_ADDR",
                Service::Conversation => "CONVERSATION_GRPC_ADDR",
                Service::Delivery => "DELIVERY_GRPC_ADDR",
                Service::Upload => "UPLOAD_GRPC_ADDR",
                Service::Edge => "WEBSOCKET_PORT",
            };
            env = match service {
                Service::Edge => env.with("WEBSOCKET_HOST", addr.ip().to_string()).with(name, addr.port().to_string()),
                _ => env.with(name, addr.to_string()),
            };
            if let (Service::Edge, Some(grpc)) = (service, self.edge_grpc) {
                env = env.with("EDGE_GRPC_ADDR", grpc.to_string());
            }
            if let (Service::Edge, Some(metrics)) = (service, self.edge_metrics) {
                env = env.with("EDGE_METRICS_ADDR", metrics.to_string());
            }
            if let (Service::Upload, Some(http)) = (service, self.upload_http) {
                env = env.with("UPLOAD_HTTP_ADDR", http.to_string());
            }
        }
        if let Some(d) = self.addrs.get(&Service::Delivery) {
            env = env
                .with_default("CONVERSATION_DELIVERY_URLS", self.url_of(*d))
                .with_default("EDGE_DELIVERY_URLS", self.url_of(*d));
        }
        for (service, name) in [
            (Service::Guest, "EDGE_GUEST_URL"),
            (Service::Conversation, "EDGE_CONVERSATION_URL"),
            (Service::Upload, "EDGE_UPLOAD_URL"),
            (Service::Upload, "CONVERSATION_UPLOAD_URL"),
        ] {
            if let Some(addr) = self.addrs.get(&service) {
                env = env.with_default(name, self.url_of(*addr));
            }
        }
        env
    }

    /// Starts one service (again), on its previous port if it had one.
    pub async fn start_service(&mut self, service: Service) -> anyhow::Result<()> {
        anyhow::ensure!(!self.running.contains_key(&service), "{service:?} is already running");
        let env = self.env_for(service);
        let token = self.shutdown.child_token();
        let (addr, task) = match service {
            Service::Guest => {
                let server = jack_guest::GuestServer::build(jack_guest::Settings::from_env(&env)?).await?;
                (server.local_addr(), tokio::spawn(server.run(token.clone())))
            }
            Service::Conversation => {
                let server =
                    jack_conversation::ConversationServer::build(jack_conversation::Settings::from_env(&env)?).await?;
                (server.local_addr(), tokio::spawn(server.run(token.clone())))
            }
            Service::Delivery => {
                let server = jack_delivery::DeliveryServer::build(jack_delivery::Settings::from_env(&env)?).await?;
                (server.local_addr(), tokio::spawn(server.run(token.clone())))
            }
            Service::Upload => {
                let server = jack_upload::UploadServer::build(jack_upload::Settings::from_env(&env)?).await?;
                self.upload_http = Some(server.http_addr());
                (server.local_addr(), tokio::spawn(server.run(token.clone())))
            }
            Service::Edge => {
                // Built on its threads too: its sockets and gRPC channels belong to them.
                let threads = self.edge_threads.handle();
                let server =
                    threads.spawn(jack_edge::EdgeServer::build(jack_edge::Settings::from_env(&env)?)).await??;
                self.edge_grpc = Some(server.grpc_addr());
                self.edge_metrics = server.metrics_addr();
                (server.local_addr(), threads.spawn(server.run(token.clone())))
            }
        };
        self.addrs.insert(service, addr);
        self.running.insert(service, Running { token, task });
        Ok(())
    }

    /// Stops one service and waits until it is gone (its port is free again).
    pub async fn stop_service(&mut self, service: Service) -> anyhow::Result<()> {
        if let Some(running) = self.running.remove(&service) {
            running.token.cancel();
            running.task.await??;
        }
        Ok(())
    }

    /// Waits until shutdown and every service has stopped; the first failure wins.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for service in [Service::Edge, Service::Conversation, Service::Guest, Service::Upload, Service::Delivery] {
            if let Some(running) = self.running.remove(&service) {
                let outcome = running.task.await.map_err(anyhow::Error::from).and_then(|r| r);
                if let Err(err) = outcome {
                    tracing::error!(?service, error = %err, "service failed");
                    self.shutdown.cancel();
                    if result.is_ok() {
                        result = Err(err);
                    }
                }
            }
        }
        result
    }
}
