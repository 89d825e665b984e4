//! `UploadService` over gRPC.

use jack_proto::tonic::{self, Request, Response, Status};
use jack_proto::upload::v1 as pb;
use jack_proto::upload::v1::upload_service_server::UploadService;
use jack_runtime::{ids, time};

use crate::config::Settings;
use crate::domain;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct UploadApi {
    store: Store,
    max_file_size: u64,
    allowed_types: Vec<String>,
}

impl UploadApi {
    pub fn new(store: Store, settings: &Settings) -> Self {
        Self { store, max_file_size: settings.max_file_size, allowed_types: settings.allowed_types.clone() }
    }
}

fn storage(err: sqlx::Error) -> Status {
    tracing::error!(error = %err, "storage failed");
    Status::unavailable("storage unavailable")
}

#[tonic::async_trait]
impl UploadService for UploadApi {
    async fn create_upload(&self, request: Request<pb::CreateUploadRequest>) -> Result<Response<pb::CreateUploadResponse>, Status> {
        let req = request.into_inner();
        if req.hotel_id.is_empty() || req.guest_id.is_empty() {
            return Err(Status::invalid_argument("hotel_id and guest_id are required"));
        }
        domain::check_upload(&req.filename, &req.content_type, req.size, self.max_file_size, &self.allowed_types)
            .map_err(|refusal| Status::invalid_argument(refusal.to_string()))?;
        let attachment = pb::Attachment {
            attachment_id: ids::new_id("att"),
            hotel_id: req.hotel_id,
            guest_id: req.guest_id,
            filename: req.filename,
            content_type: req.content_type.trim().to_ascii_lowercase(),
            size: req.size,
            status: "pending".into(),
            created_at_ms: time::now_ms(),
        };
        self.store.insert(&attachment).await.map_err(storage)?;
        // No backend takes direct uploads yet: say so rather than hand out a dead URL.
        Err(Status::failed_precondition("file storage is not configured on this deployment"))
    }

    async fn resolve_attachments(&self, request: Request<pb::ResolveAttachmentsRequest>) -> Result<Response<pb::ResolveAttachmentsResponse>, Status> {
        let req = request.into_inner();
        if req.attachment_ids.len() > 10 {
            return Err(Status::invalid_argument("at most 10 attachments"));
        }
        let attachments = self.store.stored_of_guest(&req.hotel_id, &req.guest_id, &req.attachment_ids).await.map_err(storage)?;
        let missing = req.attachment_ids.iter().filter(|id| !attachments.iter().any(|a| &a.attachment_id == *id)).cloned().collect();
        Ok(Response::new(pb::ResolveAttachmentsResponse { attachments, missing }))
    }
}
