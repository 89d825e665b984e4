//! The edge's gRPC clients, and how a backend's answer becomes what the guest sees.
//!
//! Every call carries the edge's deadline (`EDGE_BACKEND_TIMEOUT_MS`); a backend that is down
//! or slow becomes a retryable `UNAVAILABLE` error frame, never a hang.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jack_frames::ErrorCode;
use jack_frames::server::Error as ErrorFrame;
use jack_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use jack_proto::guest::v1 as guest_pb;
use jack_proto::guest::v1::guest_service_client::GuestServiceClient;
use jack_runtime::grpc::Traced;
use jack_proto::tonic::{Code, Status};
use jack_proto::upload::v1::upload_service_client::UploadServiceClient;
use jack_runtime::grpc;

use crate::config::Settings;

#[derive(Debug, Clone)]
pub struct Backends {
    pub guest: GuestServiceClient<Traced>,
    pub conversation: ConversationServiceClient<Traced>,
    pub upload: UploadServiceClient<Traced>,
}

impl Backends {
    pub fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let deadline = settings.backend_timeout;
        Ok(Self {
            guest: GuestServiceClient::new(grpc::channel(&settings.guest_url, deadline)?),
            conversation: ConversationServiceClient::new(grpc::channel(&settings.conversation_url, deadline)?),
            upload: UploadServiceClient::new(grpc::channel(&settings.upload_url, deadline)?),
        })
    }
}

/// The `error` frame for a failed backend call. Causes stay in the logs.
pub fn error_frame(status: &Status, client_message_id: Option<String>) -> ErrorFrame {
    let (code, message) = match status.code() {
        Code::InvalidArgument => (ErrorCode::InvalidFrame, status.message().to_owned()),
        Code::AlreadyExists => (ErrorCode::DuplicateMessageId, "clientMessageId was already used for a different message".to_owned()),
        Code::ResourceExhausted => (ErrorCode::RateLimited, "too many requests; retry later".to_owned()),
        Code::NotFound => (ErrorCode::InvalidFrame, status.message().to_owned()),
        _ => {
            tracing::warn!(code = ?status.code(), message = status.message(), "backend call failed");
            (ErrorCode::Unavailable, "the chat service is temporarily unavailable; retry shortly".to_owned())
        }
    };
    ErrorFrame::new(code, message, client_message_id)
}

/// A hotel's policy as the edge applies it at connect time.
#[derive(Debug, Clone, Default)]
pub struct HotelPolicy {
    pub registry_enabled: bool,
    pub known: bool,
    pub allowed_origins: Vec<String>,
}

/// Caches hotel policies for a short while, so a connect does not always cost a guest call.
#[derive(Debug)]
pub struct HotelPolicies {
    cache: Mutex<HashMap<String, (Instant, HotelPolicy)>>,
    ttl: Duration,
}

const POLICY_CACHE_MAX: usize = 10_000;

impl HotelPolicies {
    pub fn new(ttl: Duration) -> Self {
        Self { cache: Mutex::new(HashMap::new()), ttl }
    }

    /// The hotel's policy; `None` when the guest service cannot say (it is down).
    pub async fn get(&self, backends: &Backends, hotel_id: &str) -> Option<HotelPolicy> {
        if let Some((at, policy)) = self.cache.lock().expect("policy cache").get(hotel_id) {
            if at.elapsed() < self.ttl {
                return Some(policy.clone());
            }
        }
        let request = guest_pb::GetHotelPolicyRequest { hotel_id: hotel_id.to_owned() };
        match backends.guest.clone().get_hotel_policy(request).await {
            Ok(response) => {
                let p = response.into_inner();
                let policy = HotelPolicy { registry_enabled: p.registry_enabled, known: p.known, allowed_origins: p.allowed_origins };
                let mut cache = self.cache.lock().expect("policy cache");
                if cache.len() >= POLICY_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hotel_id.to_owned(), (Instant::now(), policy.clone()));
                Some(policy)
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "hotel policy lookup failed; applying the global origin list");
                None
            }
        }
    }
}
