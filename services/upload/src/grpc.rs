//! `UploadService` over gRPC.

use std::sync::Arc;

use jack_proto::tonic::{self, Request, Response, Status};
use jack_proto::upload::v1 as pb;
use jack_proto::upload::v1::upload_service_server::UploadService;
use jack_runtime::{ids, time};
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::domain::{self, Mismatch};
use crate::downloads::Downloads;
use crate::storage::{Object, Storage, StorageError};
use crate::store::{Exceeded, Store};

/// Files verified at once: each is read whole (at most `WIDGET_MAX_FILE_SIZE`), so this
/// bounds the memory verification takes.
const VERIFYING: usize = 8;
/// Previews made at once: each may decode up to `UPLOAD_PREVIEW_MAX_BYTES`.
const PREVIEWING: usize = 2;
/// Attachments on one message.
const MAX_ATTACHMENTS: usize = 10;

#[derive(Debug, Clone)]
pub struct UploadApi {
    store: Store,
    storage: Storage,
    downloads: Downloads,
    settings: Arc<Settings>,
    verifying: Arc<Semaphore>,
    previewing: Arc<Semaphore>,
}

impl UploadApi {
    /// The butler side's attachments for a message in `conversation_id`: files stored for
    /// it (with PutAttachment, or a guest's already sent in it), of its hotel. Anything else
    /// is missing, whatever it is, so ids of other conversations cannot be probed.
    async fn resolve_for_butler(
        &self,
        req: pb::ResolveAttachmentsRequest,
    ) -> Result<pb::ResolveAttachmentsResponse, Status> {
        if req.conversation_id.is_empty() {
            return Err(Status::invalid_argument("conversation_id is required"));
        }
        let found = self.store.of_conversation(&req.conversation_id, &req.attachment_ids).await.map_err(storage)?;
        let mut response = pb::ResolveAttachmentsResponse::default();
        for id in &req.attachment_ids {
            match found.iter().find(|a| &a.attachment_id == id && a.hotel_id == req.hotel_id) {
                Some(attachment) => response.attachments.push(attachment.clone()),
                None => {
                    response.missing.push(id.clone());
                    let message = format!(
                        "attachment {id} not found in this conversation (store it first with UploadService.PutAttachment)"
                    );
                    response.problems.push(pb::AttachmentProblem {
                        attachment_id: id.clone(),
                        problem: pb::Problem::NotFound as i32,
                        message,
                    });
                }
            }
        }
        Ok(response)
    }

    pub fn new(store: Store, storage: Storage, downloads: Downloads, settings: &Settings) -> Self {
        let (verifying, previewing) = (Arc::new(Semaphore::new(VERIFYING)), Arc::new(Semaphore::new(PREVIEWING)));
        Self { store, storage, downloads, settings: Arc::new(settings.clone()), verifying, previewing }
    }

    /// Keeps checked bytes under the attachment's file key, with a preview for images;
    /// whether a preview was made.
    async fn keep(&self, attachment_id: &str, content_type: &str, bytes: bytes::Bytes) -> Result<bool, Status> {
        let preview = if domain::served_inline(content_type) {
            let _permit = self.previewing.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
            let (source, max) = (bytes.clone(), self.settings.preview_max_bytes);
            tokio::task::spawn_blocking(move || crate::thumbnail::make(&source, max)).await.unwrap_or(None)
        } else {
            None
        };
        self.storage.put(&domain::file_key(attachment_id), bytes, content_type).await.map_err(unavailable)?;
        if let Some(preview) = &preview {
            self.storage
                .put(&domain::thumbnail_key(attachment_id), preview.clone().into(), "image/jpeg")
                .await
                .map_err(unavailable)?;
        }
        Ok(preview.is_some())
    }

    /// Verifies an uploaded file against its record and keeps it: the bytes checked are the
    /// bytes kept, under a key no upload URL can write.
    async fn verify(
        &self,
        attachment: &pb::Attachment,
        conversation_id: &str,
    ) -> Result<Result<bool, (pb::Problem, String)>, Status> {
        let _permit = self.verifying.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        let incoming = domain::incoming_key(&attachment.attachment_id);
        let declared = attachment.size.max(0) as u64;
        let bytes = match self.storage.get(&incoming, declared).await.map_err(unavailable)? {
            None => {
                return Ok(Err((
                    pb::Problem::NotUploaded,
                    format!("attachment {} has not been uploaded", attachment.attachment_id),
                )));
            }
            Some(Object::TooBig(actual)) => {
                let mismatch = Mismatch::Size { declared: attachment.size, actual };
                return Ok(Err((pb::Problem::SizeMismatch, mismatch.to_string())));
            }
            Some(Object::Bytes(bytes)) => bytes,
        };
        if let Err(mismatch) = domain::check_file(&attachment.content_type, attachment.size, &bytes) {
            let problem = match mismatch {
                Mismatch::Size { .. } => pb::Problem::SizeMismatch,
                Mismatch::Type { .. } => pb::Problem::TypeMismatch,
            };
            tracing::info!(attachment_id = %attachment.attachment_id, %mismatch, "uploaded file refused");
            return Ok(Err((problem, mismatch.to_string())));
        }
        let has_thumbnail = self.keep(&attachment.attachment_id, &attachment.content_type, bytes).await?;
        self.store.mark_stored(&attachment.attachment_id, conversation_id, has_thumbnail).await.map_err(storage)?;
        if let Err(err) = self.storage.delete(&incoming).await {
            tracing::warn!(attachment_id = %attachment.attachment_id, error = %err, "could not remove the uploaded copy");
        }
        Ok(Ok(has_thumbnail))
    }
}

fn storage(err: sqlx::Error) -> Status {
    tracing::error!(error = %err, "storage failed");
    Status::unavailable("storage unavailable")
}

fn unavailable(err: StorageError) -> Status {
    tracing::error!(error = %err, "file storage failed");
    Status::unavailable("file storage unavailable")
}

#[tonic::async_trait]
impl UploadService for UploadApi {
    async fn create_upload(
        &self,
        request: Request<pb::CreateUploadRequest>,
    ) -> Result<Response<pb::CreateUploadResponse>, Status> {
        jack_runtime::callers::require_hotel(&request, &request.get_ref().hotel_id)?;
        let req = request.into_inner();
        if req.hotel_id.is_empty() || req.guest_id.is_empty() {
            return Err(Status::invalid_argument("hotel_id and guest_id are required"));
        }
        let filename = domain::clean_filename(&req.filename);
        domain::check_upload(
            &filename,
            &req.content_type,
            req.size,
            self.settings.max_file_size,
            &self.settings.allowed_types,
        )
        .map_err(|refusal| Status::invalid_argument(refusal.to_string()))?;
        let attachment = pb::Attachment {
            attachment_id: ids::new_id("att"),
            hotel_id: req.hotel_id,
            guest_id: req.guest_id,
            filename,
            content_type: req.content_type.trim().to_ascii_lowercase(),
            size: req.size,
            status: "pending".into(),
            created_at_ms: time::now_ms(),
            conversation_id: String::new(),
            has_thumbnail: false,
        };
        let key = domain::incoming_key(&attachment.attachment_id);
        let url = self
            .storage
            .presign_put(&key, &attachment.content_type, attachment.size, self.settings.url_ttl)
            .await
            .map_err(unavailable)?;
        if let Some(exceeded) =
            self.store.insert_pending(&attachment, &req.client_address, &self.settings.quota).await.map_err(storage)?
        {
            tracing::info!(guest_id = %attachment.guest_id, hotel_id = %attachment.hotel_id, ?exceeded, "upload refused: quota");
            let why = match exceeded {
                Exceeded::GuestFiles | Exceeded::GuestBytes => {
                    "too many files are waiting to be sent; send them, or wait until unsent ones are forgotten"
                }
                Exceeded::AddressBytes => "too many files from this address are waiting to be sent; retry later",
                Exceeded::HotelBytes => "this hotel has too many files waiting to be sent; retry later",
            };
            return Err(Status::resource_exhausted(why));
        }
        Ok(Response::new(pb::CreateUploadResponse {
            attachment: Some(attachment),
            upload_url: url.url,
            expires_at_ms: url.expires_at_ms,
        }))
    }

    async fn resolve_attachments(
        &self,
        request: Request<pb::ResolveAttachmentsRequest>,
    ) -> Result<Response<pb::ResolveAttachmentsResponse>, Status> {
        jack_runtime::callers::require_hotel(&request, &request.get_ref().hotel_id)?;
        let req = request.into_inner();
        if req.attachment_ids.len() > MAX_ATTACHMENTS {
            return Err(Status::invalid_argument(format!("at most {MAX_ATTACHMENTS} attachments")));
        }
        if req.guest_id.is_empty() {
            return self.resolve_for_butler(req).await.map(Response::new);
        }
        let found = self.store.of_guest(&req.hotel_id, &req.guest_id, &req.attachment_ids).await.map_err(storage)?;
        let mut response = pb::ResolveAttachmentsResponse::default();
        for id in &req.attachment_ids {
            let Some(attachment) = found.iter().find(|a| &a.attachment_id == id) else {
                // Unknown, or another guest's: the same answer, so ids cannot be probed.
                response.missing.push(id.clone());
                response.problems.push(pb::AttachmentProblem {
                    attachment_id: id.clone(),
                    problem: pb::Problem::NotFound as i32,
                    message: format!("attachment {id} not found"),
                });
                continue;
            };
            let verdict = if attachment.status == "stored" {
                self.store.bind_conversation(id, &req.conversation_id).await.map_err(storage)?;
                Ok(attachment.has_thumbnail)
            } else {
                self.verify(attachment, &req.conversation_id).await?
            };
            match verdict {
                Ok(has_thumbnail) => response.attachments.push(pb::Attachment {
                    status: "stored".into(),
                    has_thumbnail,
                    ..attachment.clone()
                }),
                Err((problem, message)) => {
                    response.missing.push(id.clone());
                    response.problems.push(pb::AttachmentProblem {
                        attachment_id: id.clone(),
                        problem: problem as i32,
                        message,
                    });
                }
            }
        }
        Ok(Response::new(response))
    }

    async fn put_attachment(
        &self,
        request: Request<pb::PutAttachmentRequest>,
    ) -> Result<Response<pb::PutAttachmentResponse>, Status> {
        jack_runtime::callers::require_hotel(&request, &request.get_ref().hotel_id)?;
        let req = request.into_inner();
        if req.hotel_id.is_empty() || req.conversation_id.is_empty() {
            return Err(Status::invalid_argument("hotel_id and conversation_id are required"));
        }
        let content_type = req.content_type.trim().to_ascii_lowercase();
        let filename = domain::clean_filename(&req.filename);
        domain::check_upload(
            &filename,
            &content_type,
            req.data.len() as i64,
            self.settings.max_file_size,
            &self.settings.allowed_types,
        )
        .map_err(|refusal| Status::invalid_argument(refusal.to_string()))?;
        domain::check_file(&content_type, req.data.len() as i64, &req.data)
            .map_err(|mismatch| Status::invalid_argument(mismatch.to_string()))?;
        let _permit = self.verifying.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        let mut attachment = pb::Attachment {
            attachment_id: ids::new_id("att"),
            hotel_id: req.hotel_id,
            guest_id: String::new(),
            filename,
            content_type,
            size: req.data.len() as i64,
            status: "stored".into(),
            created_at_ms: time::now_ms(),
            conversation_id: req.conversation_id,
            has_thumbnail: false,
        };
        attachment.has_thumbnail =
            self.keep(&attachment.attachment_id, &attachment.content_type, req.data.into()).await?;
        self.store.insert(&attachment).await.map_err(storage)?;
        Ok(Response::new(pb::PutAttachmentResponse { attachment: Some(attachment) }))
    }

    async fn get_limits(
        &self,
        _request: Request<pb::GetLimitsRequest>,
    ) -> Result<Response<pb::GetLimitsResponse>, Status> {
        Ok(Response::new(pb::GetLimitsResponse {
            max_file_size: self.settings.max_file_size as i64,
            allowed_types: self.settings.allowed_types.clone(),
        }))
    }

    async fn sign_downloads(
        &self,
        request: Request<pb::SignDownloadsRequest>,
    ) -> Result<Response<pb::SignDownloadsResponse>, Status> {
        let caller = jack_runtime::callers::caller(&request).cloned();
        let req = request.into_inner();
        if req.conversation_id.is_empty() {
            return Err(Status::invalid_argument("conversation_id is required"));
        }
        if req.attachment_ids.len() > 100 {
            return Err(Status::invalid_argument("at most 100 attachments at once"));
        }
        let mut found = self.store.of_conversation(&req.conversation_id, &req.attachment_ids).await.map_err(storage)?;
        // Another hotel's files look exactly like files that do not exist.
        found.retain(|a| caller.as_ref().is_none_or(|c| c.serves(&a.hotel_id)));
        let missing =
            req.attachment_ids.iter().filter(|id| !found.iter().any(|a| &a.attachment_id == *id)).cloned().collect();
        let downloads = found.iter().map(|a| self.downloads.sign(a)).collect();
        Ok(Response::new(pb::SignDownloadsResponse { downloads, missing }))
    }
}
