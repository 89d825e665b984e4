//! The edge's small HTTP API: health, metrics, the widget, the demo page, upload URLs.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jack_proto::conversation::v1 as conversation;
use jack_proto::guest::v1 as guest;
use jack_proto::tonic::Code;
use jack_proto::upload::v1 as upload;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tower_http::timeout::TimeoutLayer;

use crate::context::Edge;
use crate::peer::{Peer, client_ip};
use crate::ws;

/// The widget's bundles (what a hotel page loads, and the chat window it loads on the first
/// open) and the demo hotel page, built into the binary.
const WIDGET_JS: &str = include_str!("../../../widget/dist/widget.js");
const WIDGET_CHAT_JS: &str = include_str!("../../../widget/dist/widget-chat.js");
const DEMO_PAGE: &str = include_str!("../../../widget/demo/index.html");

/// The largest body the JSON endpoints read (their requests are a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;

pub fn router(edge: Arc<Edge>) -> Router {
    // Every request, its body included, is answered (or refused with 408) in time; a
    // WebSocket's request is answered with its 101 at once, and lives on past it.
    let answer_in_time = TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, edge.settings.request_timeout);
    Router::new()
        .route(&edge.settings.ws_path.clone(), get(ws::upgrade))
        .route("/health/websocket", get(health))
        .route("/metrics", get(metrics))
        .route("/widget.js", get(|| script(WIDGET_JS)))
        .route("/widget-chat.js", get(|| script(WIDGET_CHAT_JS)))
        .route("/", get(demo_page))
        .route("/chat/upload-url", post(upload_url).layer(upload_cors()))
        .route("/chat/attachment-urls", post(attachment_urls).layer(upload_cors()))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(answer_in_time)
        .layer(axum::middleware::from_fn(crate::gate::hand_back))
        .with_state(edge)
}

/// Hotel pages on any origin ask for upload and download URLs; the visitor token in `Authorization` is the
/// permission (no cookies), so any origin may call, and the preflight is cached.
fn upload_cors() -> tower_http::cors::CorsLayer {
    use tower_http::cors::{Any, CorsLayer};
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([http::Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}

/// `GET /health/websocket`: 200 `healthy` with every delivery stream up, 200 `degraded` with
/// some (live messages still arrive: the relay publishes to a replica that answers), 503
/// `unavailable` with none (guests would get no live messages: a balancer should send them
/// to another edge).
async fn health(State(edge): State<Arc<Edge>>) -> Response {
    let (streams, up) = edge.hub.links();
    let (code, status) = match up {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        up if up == streams => (StatusCode::OK, "healthy"),
        _ => (StatusCode::OK, "degraded"),
    };
    let body = axum::Json(json!({
        "status": status,
        "connections": edge.connections.load(Ordering::Relaxed),
        "uptime": edge.started.elapsed().as_secs(),
        "sessions": edge.hub.sessions(),
        "deliveryStreams": streams,
        "deliveryStreamsUp": up,
    }));
    (code, body).into_response()
}

/// The metrics listener's routes (`EDGE_METRICS_ADDR`): `GET /metrics`, for Prometheus.
pub fn metrics_router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/metrics", get(|State(edge): State<Arc<Edge>>| async move { render_metrics(&edge) }))
        .with_state(edge)
}

fn render_metrics(edge: &Edge) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], edge.metrics.render()).into_response()
}

/// `GET /metrics` on the public port: only with `EDGE_METRICS_TOKEN` as a bearer token (what
/// hotels are connected, and how busy the edge is, is not for everyone).
async fn metrics(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Response {
    let Some(expected) = &edge.settings.metrics_token else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "a metrics token is required\n")
            .into_response();
    }
    render_metrics(&edge)
}

async fn script(source: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        source,
    )
        .into_response()
}

async fn demo_page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DEMO_PAGE).into_response()
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "error": code, "message": message }))).into_response()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadUrlRequest {
    filename: String,
    content_type: String,
    size: i64,
}

/// The guest whose visitor token is in `Authorization: Bearer …` and the address its request
/// came from (as per-address limits count it), or the response refusing: 429 for an address
/// calling too often, 401 without a valid token.
async fn visitor(edge: &Edge, peer: &Peer, headers: &HeaderMap) -> Result<(guest::Guest, IpAddr), Response> {
    let client = client_ip(peer.addr.ip(), headers, &edge.settings.trusted_proxies);
    if let Err(wait) = edge.per_address.api_call(client) {
        let retry = (header::RETRY_AFTER, HeaderValue::from(wait.seconds()));
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            [retry],
            axum::Json(
                json!({ "error": "RATE_LIMITED", "message": "too many requests from this address; retry later" }),
            ),
        )
            .into_response());
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a visitor token is required (Authorization: Bearer <visitorToken>)",
        ));
    };
    let verified = edge
        .backends
        .guest
        .clone()
        .verify_visitor_token(guest::VerifyVisitorTokenRequest { visitor_token: token.to_owned() })
        .await;
    match verified {
        Ok(r) => Ok((r.into_inner().guest.unwrap_or_default(), client)),
        Err(s) if s.code() == Code::Unauthenticated => {
            Err(json_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid visitor token"))
        }
        Err(_) => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the chat service is temporarily unavailable",
        )),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentUrlsRequest {
    attachment_ids: Vec<String>,
}

/// `POST /chat/attachment-urls {attachmentIds}`: short-lived download URLs for attachments
/// of the visitor's own conversation (ids of any other come back in `missing`).
async fn attachment_urls(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let guest = match visitor(&edge, &peer, &headers).await {
        Ok((guest, _)) => guest,
        Err(response) => return response,
    };
    let request: AttachmentUrlsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                &format!("expected {{attachmentIds: [...]}}: {e}"),
            );
        }
    };
    if request.attachment_ids.len() > 100 {
        return json_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "at most 100 attachment ids at once");
    }
    let active = conversation::GetActiveConversationRequest {
        hotel_id: guest.hotel_id,
        guest_id: guest.guest_id,
        channel: "webchat".into(),
        create: false,
    };
    let conversation_id = match edge.backends.conversation.clone().get_active_conversation(active).await {
        Ok(r) => r.into_inner().conversation_id,
        Err(s) if s.code() == Code::NotFound => String::new(),
        Err(_) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the chat service is temporarily unavailable",
            );
        }
    };
    if conversation_id.is_empty() {
        return axum::Json(json!({ "downloads": [], "missing": request.attachment_ids })).into_response();
    }
    let sign = upload::SignDownloadsRequest { conversation_id, attachment_ids: request.attachment_ids };
    match edge.backends.upload.clone().sign_downloads(sign).await {
        Ok(r) => {
            let r = r.into_inner();
            let downloads: Vec<_> = r
                .downloads
                .into_iter()
                .map(|d| {
                    json!({
                        "attachmentId": d.attachment_id,
                        "url": d.url,
                        "thumbnailUrl": d.thumbnail_url,
                        "expiresAt": jack_runtime::time::rfc3339_ms(d.expires_at_ms),
                        "filename": d.filename,
                        "contentType": d.content_type,
                        "size": d.size,
                    })
                })
                .collect();
            axum::Json(json!({ "downloads": downloads, "missing": r.missing })).into_response()
        }
        Err(_) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "the upload service is temporarily unavailable")
        }
    }
}

/// `POST /chat/upload-url`, authenticated by the visitor token.
async fn upload_url(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (guest, client) = match visitor(&edge, &peer, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let request: UploadUrlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                &format!("expected {{filename, contentType, size}}: {e}"),
            );
        }
    };
    let create = upload::CreateUploadRequest {
        hotel_id: guest.hotel_id,
        guest_id: guest.guest_id,
        filename: request.filename,
        content_type: request.content_type,
        size: request.size,
        client_address: jack_runtime::http::address_key(client).to_string(),
    };
    match edge.backends.upload.clone().create_upload(create).await {
        Ok(r) => {
            let r = r.into_inner();
            let attachment = r.attachment.unwrap_or_default();
            axum::Json(json!({
                "uploadUrl": r.upload_url,
                "attachmentId": attachment.attachment_id,
                "expiresAt": jack_runtime::time::rfc3339_ms(r.expires_at_ms),
            }))
            .into_response()
        }
        Err(s) if s.code() == Code::InvalidArgument => {
            json_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", s.message())
        }
        Err(s) if s.code() == Code::FailedPrecondition => {
            json_error(StatusCode::NOT_IMPLEMENTED, "UPLOADS_DISABLED", s.message())
        }
        Err(s) if s.code() == Code::ResourceExhausted => {
            json_error(StatusCode::TOO_MANY_REQUESTS, "QUOTA_EXCEEDED", s.message())
        }
        Err(_) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "the upload service is temporarily unavailable")
        }
    }
}
