//! A guest's connection as the load generator holds it: small buffers, a chosen source
//! address (so that many connections are not limited by one address's port range), and
//! helpers for protocol v1's core frames.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<tokio::net::TcpStream>;

/// How long a single protocol step may take before the client counts it as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where guests connect: `ws://host:port/path?hotelId=…`.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("ws://").context("the target URL must start with ws://")?;
        let hostport = rest.split('/').next().unwrap_or_default();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .with_context(|| format!("cannot resolve {hostport}"))?
            .next()
            .context("no address for the target")?;
        Ok(Self { url: url.to_owned(), addr })
    }
}

/// A guest after `identified`.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub visitor_id: String,
    /// Protocol v1 extras (absent on a server that speaks only protocol v1's core frames).
    pub visitor_token: Option<String>,
    pub conversation_id: Option<String>,
    pub protocol: Option<u64>,
}

pub fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0).max_message_size(Some(16 << 20))
}

/// Opens a WebSocket from `source` (port chosen by the kernel).
pub async fn open(target: &Target, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let socket = if target.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("cannot bind source address {ip}"))?;
    }
    let stream = socket.connect(target.addr).await.context("connect failed")?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(config()))
        .await
        .context("WebSocket handshake failed")?;
    Ok(ws)
}

pub async fn send(ws: &mut Ws, frame: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(frame.to_string())).await.context("send failed")
}

/// The next JSON text frame.
pub async fn recv(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.context("timed out waiting for a frame")?;
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(text.as_str()).context("frame is not JSON"),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// Opens, reads `connected`, identifies, and returns the frames that came before
/// `identified` (e.g. `history`) along with the identity.
pub async fn connect_and_identify(
    target: &Target,
    source: Option<IpAddr>,
    identify: Value,
) -> anyhow::Result<(Ws, Identity, Vec<Value>)> {
    let mut ws = open(target, source).await?;
    let connected = recv(&mut ws).await?;
    if connected["type"] != "connected" {
        bail!("expected connected, got {connected}");
    }
    let protocol = connected["protocol"].as_u64();
    send(&mut ws, &identify).await?;
    let mut before = Vec::new();
    loop {
        let frame = recv(&mut ws).await?;
        match frame["type"].as_str() {
            Some("identified") => {
                let identity = Identity {
                    visitor_id: frame["visitorId"]
                        .as_str()
                        .or(identify["visitorId"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    visitor_token: frame["visitorToken"].as_str().map(str::to_owned),
                    conversation_id: frame["conversationId"].as_str().map(str::to_owned),
                    protocol,
                };
                return Ok((ws, identity, before));
            }
            Some("error") => bail!("identify refused: {frame}"),
            _ => before.push(frame),
        }
    }
}

/// The source addresses to spread connections over, from a list like `127.0.0.1-127.0.0.8`
/// or `127.0.0.1,127.0.0.2`.
pub fn parse_sources(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((from, to)) = part.split_once('-') {
            let (from, to): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (from.parse()?, to.parse()?);
            let (a, b) = (u32::from(from), u32::from(to));
            if b < a || b - a > 254 {
                bail!("bad address range {part}");
            }
            out.extend((a..=b).map(|n| IpAddr::V4(n.into())));
        } else {
            out.push(part.parse()?);
        }
    }
    Ok(out)
}

/// An identify frame of the spec (a fresh visitor).
pub fn identify_frame(visitor_id: &str) -> Value {
    json!({"type": "identify", "visitorId": visitor_id})
}
