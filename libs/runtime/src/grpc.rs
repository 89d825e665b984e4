//! gRPC plumbing shared by every service: binding, serving with shutdown and caller
//! authentication, health, and client channels that carry a deadline and the caller's
//! credentials on every call.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server};
use tower::layer::util::{Identity, Stack};

use crate::callers::Authenticate;
use crate::trace_context;

/// What a client presents on every call (`authorization: Bearer …`) and, for `https://`
/// URLs, which servers it trusts and the certificate it shows them ([`Tls`]).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
    tls: Tls,
}

impl Credentials {
    /// A bearer token, as a callers file knows it (see [`crate::callers`]).
    pub fn bearer(token: &str) -> anyhow::Result<Self> {
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| anyhow::anyhow!("a gRPC token must be printable ASCII"))?;
        Ok(Self { authorization: Some(value), tls: Tls::default() })
    }

    /// No credentials (for a service that checks none: `GRPC_AUTH=off`).
    pub fn none() -> Self {
        Self::default()
    }

    /// The same, with this TLS for `https://` URLs.
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }
}

/// TLS of the gRPC API (`GRPC_TLS_*`, PEM files): this service's certificate and key, served on
/// its listener and shown to the services it calls when they ask for one (mutual TLS); the CA
/// it trusts for `https://` URLs of other services (the system's roots when unset); and, for
/// mutual TLS, the CA whose client certificates its listener requires.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    identity: Option<tonic::transport::Identity>,
    ca: Option<tonic::transport::Certificate>,
    client_ca: Option<tonic::transport::Certificate>,
}

impl Tls {
    /// `GRPC_TLS_CERT_FILE` and `GRPC_TLS_KEY_FILE` (both or neither), `GRPC_TLS_CA_FILE`,
    /// `GRPC_TLS_CLIENT_CA_FILE` (needs a certificate of its own).
    pub fn from_env(env: &crate::settings::Env) -> Result<Self, crate::settings::SettingsError> {
        use crate::settings::SettingsError;
        let read = |name: &str| -> Result<Option<Vec<u8>>, SettingsError> {
            let Some(path) = env.get(name) else { return Ok(None) };
            let pem = std::fs::read(path).map_err(|e| SettingsError::new(name, path, e))?;
            if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(SettingsError::new(name, path, "expected a PEM file"));
            }
            Ok(Some(pem))
        };
        let identity = match (read("GRPC_TLS_CERT_FILE")?, read("GRPC_TLS_KEY_FILE")?) {
            (Some(cert), Some(key)) => Some(tonic::transport::Identity::from_pem(cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(SettingsError::new("GRPC_TLS_KEY_FILE", "", "must be set with GRPC_TLS_CERT_FILE"));
            }
            (None, Some(_)) => {
                return Err(SettingsError::new("GRPC_TLS_CERT_FILE", "", "must be set with GRPC_TLS_KEY_FILE"));
            }
        };
        let client_ca = read("GRPC_TLS_CLIENT_CA_FILE")?.map(tonic::transport::Certificate::from_pem);
        if client_ca.is_some() && identity.is_none() {
            return Err(SettingsError::new(
                "GRPC_TLS_CLIENT_CA_FILE",
                env.get("GRPC_TLS_CLIENT_CA_FILE").unwrap_or_default(),
                "needs GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE: mutual TLS is TLS first",
            ));
        }
        let ca = read("GRPC_TLS_CA_FILE")?.map(tonic::transport::Certificate::from_pem);
        Ok(Self { identity, ca, client_ca })
    }

    /// Whether the listener serves TLS.
    pub fn serves(&self) -> bool {
        self.identity.is_some()
    }

    fn server_config(&self) -> Option<tonic::transport::ServerTlsConfig> {
        let identity = self.identity.clone()?;
        let config = tonic::transport::ServerTlsConfig::new().identity(identity);
        Some(match &self.client_ca {
            Some(ca) => config.client_ca_root(ca.clone()),
            None => config,
        })
    }

    fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(ca.clone()),
            None => config.with_native_roots(),
        };
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

/// rustls needs one process-wide choice of cryptography when more than one is built in.
fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a client adds to every call: the current span's trace context and its credentials.
#[derive(Debug, Clone)]
pub struct Outgoing(Credentials);

impl tonic::service::Interceptor for Outgoing {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        trace_context::inject(request)
    }
}

/// A client channel that carries the caller's trace context and credentials on every call.
pub type Traced = InterceptedService<Channel, Outgoing>;

fn traced(channel: Channel, credentials: &Credentials) -> Traced {
    InterceptedService::new(channel, Outgoing(credentials.clone()))
}

/// What every server puts in front of its services: caller authentication, then the
/// caller's deadline.
pub type Layers = Stack<Deadlines, Stack<Authenticate, Identity>>;
/// A server with [`Layers`], and what it becomes with services added.
pub type Builder = Server<Layers>;
pub type Router = tonic::transport::server::Router<Layers>;

/// Answers a call whose deadline (`grpc-timeout`) passes before its answer is ready with
/// `DEADLINE_EXCEEDED`, as gRPC clients expect. (tonic's own check, outside the services,
/// answers `CANCELLED "Timeout expired"`: this one sits inside it and fires a millisecond
/// sooner.) What the call started may still complete: a `SendMessage` that timed out may have
/// been stored, which is why a retry carries the same `client_message_id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadlines;

impl<S> tower::Layer<S> for Deadlines {
    type Service = WithDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithDeadline(inner)
    }
}

/// A service behind [`Deadlines`].
#[derive(Debug, Clone)]
pub struct WithDeadline<S>(S);

type BoxedResponse<E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for WithDeadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, BoxedResponse<S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        let deadline = request.headers().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
        let answer = self.0.call(request);
        match deadline {
            None => Either::Left(answer),
            Some(deadline) => Either::Right(Box::pin(async move {
                match tokio::time::timeout(deadline.saturating_sub(Duration::from_millis(1)), answer).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        Ok(tonic::Status::deadline_exceeded("the call's deadline passed before its answer was ready")
                            .into_http())
                    }
                }
            })),
        }
    }
}

/// A `grpc-timeout` value: at most eight digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of a unary call when the caller sets none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// The accept queue asked for by [`bind`]; the kernel caps it at `net.core.somaxconn`
/// (4096 by default on Linux).
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Binds a listener, with an error that names what failed to bind.
///
/// Its accept queue is as long as the kernel allows, not tokio's 128: when thousands of
/// guests reconnect at once (an edge restart, a hotel's Wi-Fi coming back), the handshakes
/// the queue cannot hold are dropped and each such guest waits for its SYN to be sent again,
/// a second or more later.
pub async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    let listen = || {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // As `TcpListener::bind` does: a restarted service can bind while old connections
        // to its port are still in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("failed to bind {what} on {addr}"))
}

/// A server builder with our transport settings: no Nagle, HTTP/2 keep-alives so dead peers
/// are noticed, TLS when `tls` has a certificate, and every request checked by `auth` before
/// it reaches a service.
pub fn server(auth: Authenticate, tls: &Tls) -> anyhow::Result<Builder> {
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .trace_fn(trace_context::server_span);
    if let Some(config) = tls.server_config() {
        crypto();
        builder = builder
            .tls_config(config)
            .map_err(|e| anyhow::anyhow!("invalid GRPC_TLS_CERT_FILE/GRPC_TLS_KEY_FILE: {e}"))?;
    }
    Ok(builder.layer(auth).layer(Deadlines))
}

fn endpoint(url: &str, credentials: &Credentials) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned())?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    crypto();
    Ok(endpoint.tls_config(credentials.tls.client_config())?)
}

/// How often a service checks whether it is ready.
const READY_EVERY: Duration = Duration::from_secs(2);

/// gRPC health, in two parts. The empty service name is liveness: `SERVING` while the process
/// serves, with nothing else checked (restarting a service because its database is down
/// only adds restarts). `name` (the service's own, e.g. `jack.guest.v1.GuestService`) is
/// readiness: `SERVING` while `ready` says so (its database answers, the streams it needs are
/// up), checked every [`READY_EVERY`] and watched by `Watch` callers; `NOT_SERVING` from the
/// moment shutdown begins.
pub async fn health<F, R>(
    name: &'static str,
    shutdown: CancellationToken,
    ready: F,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>
where
    F: Fn() -> R + Send + 'static,
    R: std::future::Future<Output = bool> + Send,
{
    use tonic_health::ServingStatus::{NotServing, Serving};
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", Serving).await;
    let status = |ready: bool| if ready { Serving } else { NotServing };
    reporter.set_service_status(name, status(ready().await)).await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(READY_EVERY) => {}
                _ = shutdown.cancelled() => break,
            }
            let now = ready().await;
            if !now {
                tracing::warn!(service = name, "not ready");
            }
            reporter.set_service_status(name, status(now)).await;
        }
        reporter.set_service_status(name, NotServing).await;
    });
    service
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(jack_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// gRPC server reflection (v1) of every Jack contract and of health checks, so that grpcurl,
/// Postman or Evans can list and call the services without the proto files.
pub fn reflection()
-> tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection> {
    reflection_builder().build_v1().expect("the compiled descriptor sets are valid")
}

/// The same, in the v1alpha protocol that older clients (grpcurl before 1.9) speak.
pub fn reflection_v1alpha()
-> tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection> {
    reflection_builder().build_v1alpha().expect("the compiled descriptor sets are valid")
}

/// Serves a router on a bound listener until `shutdown` is cancelled.
///
/// The accepted connections get `TCP_NODELAY` here: the builder's own setting applies only to
/// listeners tonic binds itself. Without it a small response or stream message written
/// behind an unacknowledged one waited for the peer's delayed ACK, about 40 ms.
pub async fn serve(router: Router, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
    Ok(())
}

/// A lazily connecting channel to another service. Unary calls time out after `deadline`;
/// a service that is down fails fast with `Unavailable` instead of hanging.
pub fn channel(url: &str, deadline: Duration, credentials: &Credentials) -> anyhow::Result<Traced> {
    Ok(traced(unary(endpoint(url, credentials)?, deadline).connect_lazy(), credentials))
}

/// A channel for long-lived streams: no per-call timeout, keep-alives to notice a dead peer.
pub fn stream_channel(url: &str, credentials: &Credentials) -> anyhow::Result<Traced> {
    Ok(traced(streaming(endpoint(url, credentials)?).connect_lazy(), credentials))
}

fn unary(endpoint: Endpoint, deadline: Duration) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(2).min(deadline))
        .timeout(deadline)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
}

fn streaming(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
}

/// [`channel`] to every replica of one service: `urls` are one or more `http(s)://host:port`,
/// and a host name may stand for several addresses (a Kubernetes headless Service, a compose
/// service with replicas). Calls are balanced over the replicas that accept connections
/// ([`replicas`]). One URL with an IP address is a plain [`channel`].
pub fn channel_to(urls: &[String], deadline: Duration, credentials: &Credentials) -> anyhow::Result<Traced> {
    replicas(urls, credentials, move |endpoint| unary(endpoint, deadline))
}

/// [`stream_channel`] to every replica of one service, as [`channel_to`]: each new stream goes
/// to a replica that accepts connections, so a stream broken by a replica's end reopens on
/// another.
pub fn stream_channel_to(urls: &[String], credentials: &Credentials) -> anyhow::Result<Traced> {
    replicas(urls, credentials, streaming)
}

/// How often a channel to replicas resolves their names and tries each address.
const DISCOVERY_EVERY: Duration = Duration::from_secs(1);
/// How long an address may take to accept a connection before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One URL of a replicated service.
#[derive(Debug, Clone)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().map_err(|e| anyhow::anyhow!("{url} is not a URL: {e}"))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_owned();
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("{url} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self { scheme, host, port })
    }

    /// The endpoint of one of its addresses; TLS still checks the certificate against the
    /// URL's host name.
    fn endpoint(&self, addr: SocketAddr, credentials: &Credentials) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(format!("{}://{addr}", self.scheme))?;
        if self.scheme != "https" {
            return Ok(endpoint);
        }
        crypto();
        Ok(endpoint.tls_config(credentials.tls.client_config().domain_name(self.host.clone()))?)
    }
}

/// A channel balanced (tower's power of two choices) over the replicas behind `urls`. A task
/// resolves the names and tries each address every [`DISCOVERY_EVERY`]: an address that stops
/// accepting connections leaves the balance (a replica that died, or went away with a scale
/// down), new and returning ones join, so a dead replica costs its callers at most about that
/// long of failed calls. Until the names first resolve, the URLs themselves are the balance;
/// while no address answers, all stay in, so calls fail at once with `UNAVAILABLE` rather
/// than wait for a replica. The task ends with the channel.
fn replicas(
    urls: &[String],
    credentials: &Credentials,
    configure: impl Fn(Endpoint) -> Endpoint + Send + 'static,
) -> anyhow::Result<Traced> {
    let targets = urls.iter().map(|url| Target::parse(url)).collect::<anyhow::Result<Vec<_>>>()?;
    if let [one] = targets.as_slice()
        && one.host.parse::<std::net::IpAddr>().is_ok()
    {
        return Ok(traced(configure(endpoint(&urls[0], credentials)?).connect_lazy(), credentials));
    }
    let (channel, changes) = Channel::balance_channel(urls.len().max(16));
    let mut live = std::collections::BTreeSet::new();
    for url in urls {
        if changes
            .try_send(tonic::transport::channel::Change::Insert(url.clone(), configure(endpoint(url, credentials)?)))
            .is_ok()
        {
            live.insert(url.clone());
        }
    }
    tokio::spawn(discover(targets, credentials.clone(), configure, changes, live));
    Ok(traced(channel, credentials))
}

/// Each of `targets`' names resolved (`None`: the name did not resolve), in order.
async fn resolve(targets: &[Target]) -> Vec<Option<Vec<SocketAddr>>> {
    let mut resolved = Vec::with_capacity(targets.len());
    for target in targets {
        resolved.push(match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
            Ok(addrs) => Some(addrs.collect()),
            Err(err) => {
                tracing::debug!(host = %target.host, error = %err, "cannot resolve a replica's name");
                None
            }
        });
    }
    resolved
}

/// Whether each address accepts a TCP connection within [`PROBE_TIMEOUT`].
async fn probe(addrs: impl Iterator<Item = SocketAddr>) -> Vec<bool> {
    let probes = addrs.map(|addr| async move {
        matches!(tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
    });
    futures_util::future::join_all(probes).await
}

async fn discover(
    targets: Vec<Target>,
    credentials: Credentials,
    configure: impl Fn(Endpoint) -> Endpoint,
    changes: tokio::sync::mpsc::Sender<tonic::transport::channel::Change<String, Endpoint>>,
    mut live: std::collections::BTreeSet<String>,
) {
    use std::collections::{BTreeMap, BTreeSet};
    use tonic::transport::channel::Change;

    while !changes.is_closed() {
        let resolved = resolve(&targets).await;
        let found: BTreeMap<String, (SocketAddr, &Target)> = targets
            .iter()
            .zip(&resolved)
            .flat_map(|(target, addrs)| addrs.iter().flatten().map(move |addr| (addr.to_string(), (*addr, target))))
            .collect();
        let up = probe(found.values().map(|(addr, _)| *addr)).await;
        let reachable: BTreeSet<String> =
            found.keys().zip(up).filter(|(_, up)| *up).map(|(key, _)| key.clone()).collect();
        let wanted = match (reachable.is_empty(), found.is_empty()) {
            (false, _) => reachable,
            (true, false) => found.keys().cloned().collect(),
            // Nothing resolved (DNS is down): keep what there was.
            (true, true) => live.clone(),
        };
        for key in wanted.difference(&live) {
            let Some((addr, target)) = found.get(key) else { continue };
            match target.endpoint(*addr, &credentials) {
                Ok(endpoint) => {
                    tracing::debug!(%addr, host = %target.host, "replica joins the balance");
                    if changes.send(Change::Insert(key.clone(), configure(endpoint))).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(%addr, error = %err, "cannot make an endpoint for a replica"),
            }
        }
        for key in live.difference(&wanted) {
            tracing::debug!(replica = %key, "replica leaves the balance");
            if changes.send(Change::Remove(key.clone())).await.is_err() {
                return;
            }
        }
        live = wanted;
        tokio::time::sleep(DISCOVERY_EVERY).await;
    }
}

/// Every replica of a service, each with a [`stream_channel`] of its own, by a name for logs
/// (the URL, or `scheme://address` of a replica found by a name).
pub type Members = std::collections::BTreeMap<String, Traced>;

/// Probes in a row a replica found by a name may fail before it leaves [`members`]: a
/// replica busy for a moment keeps its place (its callers' streams to it stay up).
const MISSED_PROBES: u32 = 3;

/// The replicas of a service that a caller reaches one by one rather than balanced (delivery:
/// an edge keeps a stream to each, and the relay copies events to each for its own staff
/// subscriptions), kept current: a URL with an IP address is a member for good (its callers
/// retry it while it is down); a host name stands for every address it resolves to that
/// accepts connections (a Kubernetes headless Service, a compose service with replicas),
/// resolved again every [`DISCOVERY_EVERY`], so that scaling the service is a replica count.
/// An address joins once it accepts connections and leaves when its name no longer resolves
/// to it or after [`MISSED_PROBES`] failed probes in a row; while a name does not resolve at
/// all (DNS down), its members stay. The task ends with the last receiver.
pub fn members(urls: &[String], credentials: &Credentials) -> anyhow::Result<tokio::sync::watch::Receiver<Members>> {
    let mut fixed = Members::new();
    let mut named = Vec::new();
    for url in urls {
        let target = Target::parse(url)?;
        if target.host.parse::<std::net::IpAddr>().is_ok() {
            fixed.insert(url.clone(), stream_channel(url, credentials)?);
        } else {
            named.push(target);
        }
    }
    let (members, receiver) = tokio::sync::watch::channel(fixed);
    if !named.is_empty() {
        tokio::spawn(follow_members(named, credentials.clone(), members));
    }
    Ok(receiver)
}

async fn follow_members(targets: Vec<Target>, credentials: Credentials, members: tokio::sync::watch::Sender<Members>) {
    use std::collections::BTreeMap;
    // The members found by a name: their target and failed probes in a row.
    let mut found_by_name: BTreeMap<String, (usize, u32)> = BTreeMap::new();
    while !members.is_closed() {
        let resolved = resolve(&targets).await;
        let scheme = |i: usize| targets[i].scheme.as_str();
        let addrs: BTreeMap<String, (SocketAddr, usize)> = resolved
            .iter()
            .enumerate()
            .flat_map(|(i, addrs)| {
                addrs.iter().flatten().map(move |addr| (format!("{}://{addr}", scheme(i)), (*addr, i)))
            })
            .collect();
        let up = probe(addrs.values().map(|(addr, _)| *addr)).await;
        let mut joined = Members::new();
        for ((key, (addr, i)), up) in addrs.iter().zip(up) {
            match found_by_name.get_mut(key) {
                Some((_, missed)) => *missed = if up { 0 } else { *missed + 1 },
                None if up => match targets[*i].endpoint(*addr, &credentials) {
                    Ok(endpoint) => {
                        tracing::info!(%addr, host = %targets[*i].host, "a replica joins");
                        found_by_name.insert(key.clone(), (*i, 0));
                        joined.insert(key.clone(), traced(streaming(endpoint).connect_lazy(), &credentials));
                    }
                    Err(err) => tracing::warn!(%addr, error = %err, "cannot make an endpoint for a replica"),
                },
                None => {}
            }
        }
        // Gone from its name (unless the name did not resolve at all), or not answering.
        let left: Vec<String> = found_by_name
            .iter()
            .filter(|(key, (i, missed))| {
                (resolved[*i].is_some() && !addrs.contains_key(*key)) || *missed >= MISSED_PROBES
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &left {
            tracing::info!(replica = %key, "a replica leaves");
            found_by_name.remove(key);
        }
        if !joined.is_empty() || !left.is_empty() {
            members.send_modify(|members| {
                members.extend(joined);
                for key in &left {
                    members.remove(key);
                }
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(DISCOVERY_EVERY) => {}
            _ = members.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accept queue the kernel gave a listening socket (`ss` shows it as Send-Q).
    fn backlog_of(addr: SocketAddr) -> u32 {
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{}", addr.port())])
            .output()
            .expect("`ss` (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next().unwrap_or_else(|| panic!("ss lists no listener on {addr}: {text:?}"));
        line.split_whitespace().nth(2).and_then(|q| q.parse().ok()).unwrap_or_else(|| panic!("no Send-Q in {line:?}"))
    }

    /// A health service on `addr`, until `stop`.
    async fn replica(addr: &str, stop: CancellationToken) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = bind("a replica", addr.parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Server::builder().add_service(health("replica", stop.clone(), || async { true }).await);
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        (
            addr,
            tokio::spawn(async move {
                router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await.unwrap()
            }),
        )
    }

    #[tokio::test]
    async fn a_channel_to_replicas_goes_on_when_one_stops_and_takes_one_that_starts() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;

        let (first_stop, second_stop) = (CancellationToken::new(), CancellationToken::new());
        let (first, first_task) = replica("127.0.0.1:0", first_stop.clone()).await;
        let (second, second_task) = replica("127.0.0.1:0", second_stop.clone()).await;
        // One by a name (`localhost` also resolves to ::1, where nothing listens), one by address.
        let urls = [format!("http://localhost:{}", first.port()), format!("http://127.0.0.1:{}", second.port())];
        let mut client = HealthClient::new(channel_to(&urls, Duration::from_secs(2), &Credentials::none()).unwrap());
        let check = HealthCheckRequest { service: "replica".into() };
        // Every call succeeds once the balance holds only replicas that answer.
        async fn all_succeed(client: &mut HealthClient<Traced>, check: &HealthCheckRequest) {
            let started = std::time::Instant::now();
            let mut in_a_row = 0;
            while in_a_row < 40 {
                assert!(started.elapsed() < Duration::from_secs(15), "calls keep failing");
                if client.check(check.clone()).await.is_ok() {
                    in_a_row += 1;
                } else {
                    in_a_row = 0;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        all_succeed(&mut client, &check).await;

        // The first replica stops: the second answers every call.
        first_stop.cancel();
        first_task.await.unwrap();
        all_succeed(&mut client, &check).await;
        // It comes back on its port and the second stops: calls go to the first again.
        let first_stop = CancellationToken::new();
        let (_, again) = replica(&first.to_string(), first_stop.clone()).await;
        tokio::time::sleep(DISCOVERY_EVERY * 2).await;
        second_stop.cancel();
        second_task.await.unwrap();
        all_succeed(&mut client, &check).await;
        first_stop.cancel();
        again.await.unwrap();
    }

    #[tokio::test]
    async fn listeners_take_as_many_pending_connections_as_the_kernel_allows() {
        let listener = bind("a test listener", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
        assert_eq!(backlog_of(listener.local_addr().unwrap()), LISTEN_BACKLOG.min(somaxconn));
    }

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_gives_them() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "5x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn binding_a_taken_port_names_what_failed() {
        let taken = bind("a test listener", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind("the edge gRPC API", addr).await.unwrap_err();
        assert_eq!(err.to_string(), format!("failed to bind the edge gRPC API on {addr}"));
    }
}
