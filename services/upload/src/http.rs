//! The upload service's HTTP listener: browsers PUT files here on the local backend's signed
//! URLs (with S3 they PUT to the store itself), and download files and previews on signed,
//! short-lived URLs from either backend. CORS is open: the signature is the permission, and
//! hotel pages live on any origin.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
use tower_http::cors::{Any, CorsLayer};
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutError};

use crate::domain;
use crate::downloads::{Downloads, Variant, get_parts};
use crate::storage::local::put_parts;
use crate::storage::{LocalDisk, Storage};
use crate::store::Store;

/// What the handlers need.
#[derive(Clone)]
pub struct HttpState {
    /// The local backend, which takes uploads here (None on S3).
    pub disk: Option<Arc<LocalDisk>>,
    pub downloads: Downloads,
    pub store: Store,
    pub storage: Storage,
    /// Downloads being sent at once (`UPLOAD_MAX_DOWNLOADS`); beyond it, 503.
    pub downloads_in_flight: Arc<Semaphore>,
    /// Uploads being received (see [`Receiving`]).
    pub receiving: Receiving,
    /// `UPLOAD_BODY_TIMEOUT_MS`: the longest an upload may send nothing, and the least time it
    /// is given when it starts just before its URL expires.
    pub body_timeout: Duration,
}

/// Uploads being received: one at a time on each URL (a second gets 409 while the first goes
/// on), and at most `UPLOAD_MAX_UPLOADS` in all (then 503), so that what is written to
/// temporary files at once stays bounded.
#[derive(Debug, Clone)]
pub struct Receiving {
    keys: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    slots: Arc<Semaphore>,
}

/// An upload being received; its URL and place are free again when it is dropped.
struct Receipt {
    receiving: Receiving,
    key: String,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Receipt {
    fn drop(&mut self) {
        self.receiving.keys.lock().expect("receiving lock").remove(&self.key);
    }
}

impl Receiving {
    pub fn new(max_uploads: usize) -> Self {
        Self { keys: Arc::default(), slots: Arc::new(Semaphore::new(max_uploads)) }
    }

    /// The receipt of an upload starting on `key`, or the answer refusing it.
    fn start(&self, key: &str) -> Result<Receipt, Box<Response>> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            let busy = (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "too many uploads at once; retry shortly\n",
            );
            return Err(Box::new(busy.into_response()));
        };
        if !self.keys.lock().expect("receiving lock").insert(key.to_owned()) {
            return Err(Box::new(refuse(StatusCode::CONFLICT, "this file is being uploaded already")));
        }
        Ok(Receipt { receiving: self.clone(), key: key.to_owned(), _slot: slot })
    }
}

#[derive(serde::Deserialize)]
pub struct Signed {
    #[serde(rename = "type")]
    content_type: String,
    size: String,
    expires: String,
    signature: String,
}

/// The routes; an upload that sends no data for `body_timeout` is refused with 408.
pub fn router(state: HttpState) -> Router {
    let body_timeout = state.body_timeout;
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([http::Method::PUT, http::Method::GET])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600));
    Router::new()
        .route("/upload/{folder}/{name}", put(upload).layer(RequestBodyTimeoutLayer::new(body_timeout)))
        .route("/files/{id}", get(download))
        .layer(cors)
        .with_state(state)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response()
}

/// `PUT /upload/incoming/{id}?type&size&expires&signature`: exactly the declared bytes, once.
async fn upload(
    State(state): State<HttpState>,
    Path((folder, name)): Path<(String, String)>,
    query: Result<Query<Signed>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(disk) = state.disk else {
        return refuse(StatusCode::NOT_FOUND, "uploads go to the S3 store on this deployment");
    };
    let key = format!("{folder}/{name}");
    let Ok(Query(signed)) = query else {
        return refuse(StatusCode::FORBIDDEN, "this URL is not signed");
    };
    if folder != "incoming"
        || !disk
            .signer()
            .verify(&put_parts(&key, &signed.content_type, &signed.size, &signed.expires), &signed.signature)
    {
        return refuse(StatusCode::FORBIDDEN, "the signature does not match this upload");
    }
    let (Ok(size), Ok(expires)) = (signed.size.parse::<u64>(), signed.expires.parse::<i64>()) else {
        return refuse(StatusCode::FORBIDDEN, "the signature does not match this upload");
    };
    if jack_runtime::time::now_ms() > expires {
        return refuse(StatusCode::FORBIDDEN, "this upload URL has expired; ask for a new one");
    }
    let sent_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !sent_type.trim().eq_ignore_ascii_case(&signed.content_type) {
        return refuse(StatusCode::BAD_REQUEST, &format!("Content-Type must be {}", signed.content_type));
    }
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if length != Some(size) {
        return refuse(StatusCode::BAD_REQUEST, &format!("Content-Length must be {size}, as declared"));
    }
    let Some(target) = disk.path(&key) else {
        return refuse(StatusCode::FORBIDDEN, "the signature does not match this upload");
    };
    let kept = disk.path(&format!("files/{name}")).is_some_and(|p| p.exists());
    if kept || target.exists() {
        return refuse(StatusCode::CONFLICT, "this file was already uploaded");
    }
    let _receipt = match state.receiving.start(&key) {
        Ok(receipt) => receipt,
        Err(response) => return *response,
    };
    // An upload must be done by the time its URL expires (one that starts at the last moment
    // gets the body timeout), however steadily it trickles: a place is not held for ever.
    let left = Duration::from_millis(u64::try_from(expires - jack_runtime::time::now_ms()).unwrap_or(0))
        .max(state.body_timeout);
    match tokio::time::timeout(left, receive(&disk, body, size, &target)).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(response)) => response,
        Err(_) => refuse(StatusCode::REQUEST_TIMEOUT, "the upload took longer than its URL lasts; upload again"),
    }
}

/// Streams the body to a temporary file, at most `size` bytes, then links it into place
/// unless a file is already there (a second PUT on the same URL loses).
async fn receive(disk: &LocalDisk, body: Body, size: u64, target: &std::path::Path) -> Result<(), Response> {
    let tmp = disk.temp_path();
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"))?;
        let mut stream = body.into_data_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| match err.into_inner().downcast::<TimeoutError>() {
                Ok(_) => refuse(StatusCode::REQUEST_TIMEOUT, "no data came for too long; upload again"),
                Err(_) => refuse(StatusCode::BAD_REQUEST, "the upload was interrupted"),
            })?;
            written += chunk.len() as u64;
            if written > size {
                return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, &format!("more than the {size} bytes declared")));
            }
            file.write_all(&chunk).await.map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"))?;
        }
        if written != size {
            return Err(refuse(StatusCode::BAD_REQUEST, &format!("{written} bytes received, {size} declared")));
        }
        file.sync_all().await.map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"))?;
        // A hard link fails when the target exists: of two racing PUTs, one wins.
        tokio::fs::hard_link(&tmp, target).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => refuse(StatusCode::CONFLICT, "this file was already uploaded"),
            _ => refuse(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"),
        })
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    result
}

#[derive(serde::Deserialize)]
pub struct SignedGet {
    variant: String,
    expires: String,
    signature: String,
}

/// `GET /files/{id}?variant&expires&signature`: the file (images inline, anything else as a
/// download) or its preview, never sniffed into something else by the browser.
async fn download(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    query: Result<Query<SignedGet>, QueryRejection>,
) -> Response {
    let Ok(Query(signed)) = query else {
        return refuse(StatusCode::FORBIDDEN, "this URL is not signed");
    };
    if !state.downloads.signer().verify(&get_parts(&id, &signed.variant, &signed.expires), &signed.signature) {
        return refuse(StatusCode::FORBIDDEN, "the signature does not match this file");
    }
    let (Some(variant), Ok(expires)) = (Variant::parse(&signed.variant), signed.expires.parse::<i64>()) else {
        return refuse(StatusCode::FORBIDDEN, "the signature does not match this file");
    };
    if jack_runtime::time::now_ms() > expires {
        return refuse(StatusCode::FORBIDDEN, "this download URL has expired");
    }
    let attachment = match state.store.get(&id).await {
        Ok(Some(a)) if a.status == "stored" => a,
        Ok(_) => return refuse(StatusCode::NOT_FOUND, "no such file"),
        Err(_) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"),
    };
    let (key, content_type) = match variant {
        Variant::File => (domain::file_key(&id), attachment.content_type.clone()),
        Variant::Thumbnail => (domain::thumbnail_key(&id), "image/jpeg".to_owned()),
    };
    // Each download is read from storage as the browser takes it, a chunk at a time; how many
    // run at once is bounded, and one whose browser stops reading is dropped by the listener's
    // write-stall limit.
    let Ok(sending) = state.downloads_in_flight.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many downloads at once; retry shortly\n",
        )
            .into_response();
    };
    let (len, chunks) = match state.storage.stream(&key).await {
        Ok(Some(object)) => object,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such file"),
        Err(_) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"),
    };
    // The permit goes with the body: it is given back when the download ends, however it ends.
    let body = Body::from_stream(chunks.map(move |chunk| {
        let _sending = &sending;
        chunk
    }));
    let disposition = match variant {
        Variant::File => domain::content_disposition(&attachment.content_type, &attachment.filename),
        Variant::Thumbnail => "inline".to_owned(),
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            // Even opened directly, a file cannot run anything.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox".to_owned(),
            ),
            (header::CACHE_CONTROL, "private, max-age=3600".to_owned()),
        ],
        body,
    )
        .into_response();
    if let Some(len) = len {
        response.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    }
    response
}
