//! `GuestService` over gRPC: checks the wire input, applies the identity rules, stores.

use jack_proto::guest::v1 as pb;
use jack_proto::guest::v1::guest_service_server::GuestService;
use jack_proto::tonic::{self, Request, Response, Status};
use jack_runtime::{ids, time};

use crate::domain::{self, TokenSigner};
use crate::error::GuestError;
use crate::store::{HotelRecord, Store};

#[derive(Debug, Clone)]
pub struct GuestApi {
    store: Store,
    signer: TokenSigner,
}

impl GuestApi {
    pub fn new(store: Store, signer: TokenSigner) -> Self {
        Self { store, signer }
    }

    async fn identify(&self, req: pb::IdentifyRequest) -> Result<pb::IdentifyResponse, GuestError> {
        domain::check_id("hotelId", &req.hotel_id)?;
        let channel = if req.channel.is_empty() { "webchat".to_owned() } else { req.channel };
        domain::check_id("channel", &channel)?;
        if let Some(name) = &req.name {
            domain::check_name(name)?;
        }
        if let Some(email) = req.email.as_deref().filter(|e| !e.is_empty()) {
            domain::check_email(email)?;
        }
        let requested = req.visitor_id.filter(|v| !v.is_empty());
        if let Some(visitor_id) = &requested {
            domain::check_id("visitorId", visitor_id)?;
        }
        let lookup = self.store.lookup(&req.hotel_id, requested.as_deref().map(|v| (channel.as_str(), v))).await?;
        let hotel = lookup.hotel;
        if hotel.is_none() && lookup.registry_enabled {
            return Err(GuestError::UnknownHotel);
        }

        let mut replaced_visitor = false;
        let mut result = None;
        if let Some(visitor_id) = &requested {
            let by_token = req.visitor_token.as_deref().is_some_and(|t| self.signer.proves(t, &req.hotel_id, visitor_id));
            let by_hash = match (req.user_hash.as_deref(), hotel.as_ref().and_then(|h| h.identity_secret.as_deref())) {
                (Some(hash), Some(secret)) => domain::user_hash_matches(secret, visitor_id, hash),
                _ => false,
            };
            // A user hash that does not match is no proof at all, so such a visitor id
            // is never bound to the caller.
            let hash_refused = req.user_hash.is_some() && !by_hash;
            match lookup.guest {
                Some(guest) if by_token || by_hash => result = Some((guest, false, by_hash)),
                Some(_) => replaced_visitor = true,
                None if hash_refused => replaced_visitor = true,
                None => {
                    let guest = new_guest(&req.hotel_id, &channel, visitor_id, by_hash);
                    if self.store.insert_guest(&guest).await? {
                        result = Some((guest, true, false));
                    } else if let Some(existing) = self.store.find_guest(&req.hotel_id, &channel, visitor_id).await?.filter(|_| by_token) {
                        result = Some((existing, false, false));
                    } else {
                        // Someone bound this visitor id a moment ago; it is not ours.
                        replaced_visitor = true;
                    }
                }
            }
        }
        let (guest, created, verify) = match result {
            Some(found) => found,
            None => {
                let guest = new_guest(&req.hotel_id, &channel, &ids::new_id("vis"), false);
                self.store.insert_guest(&guest).await?;
                (guest, true, false)
            }
        };
        let name = req.name.as_deref().filter(|n| !n.is_empty());
        let email = req.email.as_deref().filter(|e| !e.is_empty());
        let guest = if name.is_some() || email.is_some() || (verify && !guest.verified) {
            self.store.update_guest(&guest.guest_id, name, email, verify).await?.ok_or(GuestError::GuestNotFound)?
        } else {
            guest
        };
        let visitor_token = self.signer.sign(&guest.hotel_id, &guest.visitor_id);
        Ok(pb::IdentifyResponse { guest: Some(guest), visitor_token, created, replaced_visitor })
    }
}

fn new_guest(hotel_id: &str, channel: &str, visitor_id: &str, verified: bool) -> pb::Guest {
    pb::Guest {
        guest_id: ids::new_id("gst"),
        hotel_id: hotel_id.to_owned(),
        channel: channel.to_owned(),
        visitor_id: visitor_id.to_owned(),
        name: None,
        email: None,
        verified,
        created_at_ms: time::now_ms(),
    }
}

#[tonic::async_trait]
impl GuestService for GuestApi {
    async fn identify(&self, request: Request<pb::IdentifyRequest>) -> Result<Response<pb::IdentifyResponse>, Status> {
        Ok(Response::new(GuestApi::identify(self, request.into_inner()).await?))
    }

    async fn update_guest(&self, request: Request<pb::UpdateGuestRequest>) -> Result<Response<pb::Guest>, Status> {
        let req = request.into_inner();
        if let Some(name) = &req.name {
            domain::check_name(name)?;
        }
        if let Some(email) = &req.email {
            domain::check_email(email)?;
        }
        let guest = self.store.update_guest(&req.guest_id, req.name.as_deref(), req.email.as_deref(), false).await.map_err(GuestError::from)?;
        Ok(Response::new(guest.ok_or(GuestError::GuestNotFound)?))
    }

    async fn get_guest(&self, request: Request<pb::GetGuestRequest>) -> Result<Response<pb::Guest>, Status> {
        let guest = self.store.guest(&request.into_inner().guest_id).await.map_err(GuestError::from)?;
        Ok(Response::new(guest.ok_or(GuestError::GuestNotFound)?))
    }

    async fn verify_visitor_token(&self, request: Request<pb::VerifyVisitorTokenRequest>) -> Result<Response<pb::IdentifyResponse>, Status> {
        let token = request.into_inner().visitor_token;
        let (hotel_id, visitor_id) = self.signer.verify(&token).ok_or(GuestError::InvalidToken)?;
        let guest = self.store.find_guest(&hotel_id, "webchat", &visitor_id).await.map_err(GuestError::from)?;
        let guest = guest.ok_or(GuestError::InvalidToken)?;
        Ok(Response::new(pb::IdentifyResponse { guest: Some(guest), visitor_token: token, created: false, replaced_visitor: false }))
    }

    async fn get_hotel_policy(&self, request: Request<pb::GetHotelPolicyRequest>) -> Result<Response<pb::HotelPolicy>, Status> {
        let hotel_id = request.into_inner().hotel_id;
        let lookup = self.store.lookup(&hotel_id, None).await.map_err(GuestError::from)?;
        Ok(Response::new(pb::HotelPolicy {
            registry_enabled: lookup.registry_enabled,
            known: lookup.hotel.is_some(),
            allowed_origins: lookup.hotel.map(|h| h.allowed_origins).unwrap_or_default(),
        }))
    }

    async fn upsert_hotel(&self, request: Request<pb::UpsertHotelRequest>) -> Result<Response<pb::Hotel>, Status> {
        let req = request.into_inner();
        domain::check_id("hotelId", &req.hotel_id)?;
        let hotel = HotelRecord {
            hotel_id: req.hotel_id,
            name: req.name,
            allowed_origins: req.allowed_origins,
            identity_secret: req.identity_secret.filter(|s| !s.is_empty()),
        };
        self.store.upsert_hotel(&hotel, time::now_ms()).await.map_err(GuestError::from)?;
        let stored = self.store.hotel(&hotel.hotel_id).await.map_err(GuestError::from)?.ok_or(GuestError::UnknownHotel)?;
        Ok(Response::new(pb::Hotel {
            hotel_id: stored.hotel_id,
            name: stored.name,
            allowed_origins: stored.allowed_origins,
            has_identity_secret: stored.identity_secret.is_some(),
        }))
    }
}
