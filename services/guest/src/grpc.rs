//! `GuestService` over gRPC: checks the wire input, applies the identity rules, stores.

use std::time::Duration;

use jack_proto::guest::v1 as pb;
use jack_proto::guest::v1::guest_service_server::GuestService;
use jack_proto::tonic::{self, Request, Response, Status};
use jack_runtime::{ids, time};

use crate::domain::{self, Binding, Claims, Proof, TokenSigner};
use crate::error::GuestError;
use crate::store::{HotelRecord, Store, StoredGuest};

/// The longest user hash read (a real one is 64 hex digits).
const MAX_USER_HASH_LEN: usize = 128;

#[derive(Debug, Clone)]
pub struct GuestApi {
    store: Store,
    signer: TokenSigner,
    token_ttl: Duration,
}

impl GuestApi {
    pub fn new(store: Store, signer: TokenSigner, token_ttl: Duration) -> Self {
        Self { store, signer, token_ttl }
    }

    /// A fresh token for the guest: (token, expiry).
    fn token_for(&self, guest: &StoredGuest) -> (String, i64) {
        let expires_at_ms = time::now_ms() + self.token_ttl.as_millis() as i64;
        let claims = Claims {
            hotel_id: guest.guest.hotel_id.clone(),
            guest_id: guest.guest.guest_id.clone(),
            epoch: guest.token_epoch,
            expires_at_ms,
        };
        (self.signer.sign(&claims), expires_at_ms)
    }

    /// For a caller limited to some hotels: the guest must be one of theirs (another hotel's
    /// looks exactly like one that does not exist).
    async fn in_scope<T>(&self, request: &Request<T>, guest_id: &str) -> Result<(), Status> {
        let Some(caller) = jack_runtime::callers::caller(request).filter(|c| c.hotels.is_some()) else { return Ok(()) };
        let guest = self.store.guest(guest_id).await.map_err(GuestError::from)?;
        match guest {
            Some(g) if caller.serves(&g.guest.hotel_id) => Ok(()),
            _ => Err(GuestError::GuestNotFound.into()),
        }
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
        if req.user_hash.as_ref().is_some_and(|h| h.len() > MAX_USER_HASH_LEN) {
            return Err(GuestError::InvalidArgument(format!(
                "userHash must be at most {MAX_USER_HASH_LEN} characters"
            )));
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
        let secret = hotel.as_ref().and_then(|h| h.identity_secret.as_deref());

        let mut replaced_visitor = false;
        let mut result = None;
        if let Some(visitor_id) = &requested {
            let claims = req.visitor_token.as_deref().and_then(|t| self.signer.verify(t, time::now_ms()));
            let first_format = req
                .visitor_token
                .as_deref()
                .and_then(|t| self.signer.verify_first_format(t))
                .filter(|(h, v)| *h == req.hotel_id && v == visitor_id);
            let by_hash = match (req.user_hash.as_deref(), secret) {
                (Some(hash), Some(secret)) => domain::user_hash_matches(secret, visitor_id, hash),
                _ => false,
            };
            let proof_for = |held: Option<&StoredGuest>| Proof {
                by_token: held.zip(claims.as_ref()).is_some_and(|(g, c)| holds(g, c))
                    || held.is_some_and(|g| first_format.is_some() && opens_with_first_format(g)),
                by_hash,
                hash_refused: req.user_hash.is_some() && !by_hash,
            };
            let anonymous = domain::is_anonymous_id(visitor_id);
            let mut held = lookup.guest;
            // Twice at most: a write that loses a race for the id decides again on the record
            // that won it.
            for _ in 0..2 {
                let binding = domain::binding(
                    held.as_ref().map(|g| g.guest.verified),
                    proof_for(held.as_ref()),
                    secret.is_some(),
                    anonymous,
                );
                let won = match binding {
                    Binding::Resume { verify } => {
                        result = held.take().map(|g| (g, false, verify));
                        break;
                    }
                    Binding::Replace => break,
                    Binding::TakeOver => {
                        let unproven = held.as_ref().map(|g| g.guest.guest_id.clone()).unwrap_or_default();
                        let guest = new_guest(&req.hotel_id, &channel, visitor_id, true);
                        let won = self.store.take_over(&unproven, &ids::new_id("vis"), &guest).await?;
                        if won {
                            tracing::info!(hotel_id = %req.hotel_id, unproven_guest_id = %unproven, guest_id = %guest.guest_id, "a proven login took its visitor id over from a record bound without proof");
                        }
                        won.then_some(guest)
                    }
                    Binding::Bind { verified } => {
                        if req.no_new_visitor && !verified {
                            return Err(GuestError::WouldCreate);
                        }
                        let guest = new_guest(&req.hotel_id, &channel, visitor_id, verified);
                        self.store.insert_guest(&guest).await?.then_some(guest)
                    }
                };
                if let Some(guest) = won {
                    result = Some((StoredGuest { guest, token_epoch: 0 }, true, false));
                    break;
                }
                held = self.store.find_guest(&req.hotel_id, &channel, visitor_id).await?;
            }
            replaced_visitor = result.is_none();
        }
        let (guest, created, verify) = match result {
            Some(found) => found,
            None if req.no_new_visitor => return Err(GuestError::WouldCreate),
            None => {
                let guest = new_guest(&req.hotel_id, &channel, &ids::new_id("vis"), false);
                self.store.insert_guest(&guest).await?;
                (StoredGuest { guest, token_epoch: 0 }, true, false)
            }
        };
        let name = req.name.as_deref().filter(|n| !n.is_empty());
        let email = req.email.as_deref().filter(|e| !e.is_empty());
        let guest = if name.is_some() || email.is_some() || (verify && !guest.guest.verified) {
            self.store
                .update_guest(&guest.guest.guest_id, name, email, verify)
                .await?
                .ok_or(GuestError::GuestNotFound)?
        } else {
            guest
        };
        let (visitor_token, visitor_token_expires_at_ms) = self.token_for(&guest);
        Ok(pb::IdentifyResponse {
            guest: Some(guest.guest),
            visitor_token,
            created,
            replaced_visitor,
            visitor_token_expires_at_ms,
        })
    }

    /// The guest a token opens, if it still does.
    async fn token_guest(&self, token: &str) -> Result<StoredGuest, GuestError> {
        if let Some(claims) = self.signer.verify(token, time::now_ms()) {
            let guest = self.store.guest(&claims.guest_id).await?;
            return guest.filter(|g| holds(g, &claims)).ok_or(GuestError::InvalidToken);
        }
        let (hotel_id, visitor_id) = self.signer.verify_first_format(token).ok_or(GuestError::InvalidToken)?;
        let guest = self.store.find_guest(&hotel_id, "webchat", &visitor_id).await?;
        guest.filter(opens_with_first_format).ok_or(GuestError::InvalidToken)
    }
}

/// Whether a token of the first format (see `TokenSigner::verify_first_format`) still opens
/// this record.
fn opens_with_first_format(guest: &StoredGuest) -> bool {
    !guest.guest.verified && guest.token_epoch == 0
}

/// Whether a token's claims open this record: same hotel and guest, not revoked since.
fn holds(guest: &StoredGuest, claims: &Claims) -> bool {
    claims.hotel_id == guest.guest.hotel_id
        && claims.guest_id == guest.guest.guest_id
        && claims.epoch == guest.token_epoch
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
        engaged: false,
    }
}

#[tonic::async_trait]
impl GuestService for GuestApi {
    async fn identify(&self, request: Request<pb::IdentifyRequest>) -> Result<Response<pb::IdentifyResponse>, Status> {
        jack_runtime::callers::require_hotel(&request, &request.get_ref().hotel_id)?;
        Ok(Response::new(GuestApi::identify(self, request.into_inner()).await?))
    }

    async fn update_guest(&self, request: Request<pb::UpdateGuestRequest>) -> Result<Response<pb::Guest>, Status> {
        self.in_scope(&request, &request.get_ref().guest_id).await?;
        let req = request.into_inner();
        if let Some(name) = &req.name {
            domain::check_name(name)?;
        }
        if let Some(email) = &req.email {
            domain::check_email(email)?;
        }
        let guest = self
            .store
            .update_guest(&req.guest_id, req.name.as_deref(), req.email.as_deref(), false)
            .await
            .map_err(GuestError::from)?;
        Ok(Response::new(guest.ok_or(GuestError::GuestNotFound)?.guest))
    }

    async fn get_guest(&self, request: Request<pb::GetGuestRequest>) -> Result<Response<pb::Guest>, Status> {
        let guest = self.store.guest(&request.get_ref().guest_id).await.map_err(GuestError::from)?;
        // Another hotel's guest looks exactly like one that does not exist.
        let guest =
            guest.filter(|g| jack_runtime::callers::caller(&request).is_none_or(|c| c.serves(&g.guest.hotel_id)));
        Ok(Response::new(guest.ok_or(GuestError::GuestNotFound)?.guest))
    }

    async fn verify_visitor_token(
        &self,
        request: Request<pb::VerifyVisitorTokenRequest>,
    ) -> Result<Response<pb::IdentifyResponse>, Status> {
        let token = request.into_inner().visitor_token;
        let guest = self.token_guest(&token).await?;
        let expires_at_ms = self.signer.verify(&token, 0).map_or(0, |c| c.expires_at_ms);
        Ok(Response::new(pb::IdentifyResponse {
            guest: Some(guest.guest),
            visitor_token: token,
            created: false,
            replaced_visitor: false,
            visitor_token_expires_at_ms: expires_at_ms,
        }))
    }

    async fn mark_engaged(&self, request: Request<pb::MarkEngagedRequest>) -> Result<Response<pb::Guest>, Status> {
        let guest_id = request.into_inner().guest_id;
        let guest =
            self.store.mark_engaged(&guest_id).await.map_err(GuestError::from)?.ok_or(GuestError::GuestNotFound)?;
        Ok(Response::new(guest.guest))
    }

    async fn revoke_visitor_tokens(
        &self,
        request: Request<pb::RevokeVisitorTokensRequest>,
    ) -> Result<Response<pb::Guest>, Status> {
        self.in_scope(&request, &request.get_ref().guest_id).await?;
        let guest_id = request.into_inner().guest_id;
        let guest =
            self.store.revoke_tokens(&guest_id).await.map_err(GuestError::from)?.ok_or(GuestError::GuestNotFound)?;
        tracing::info!(%guest_id, "visitor tokens revoked");
        Ok(Response::new(guest.guest))
    }

    async fn get_hotel_policy(
        &self,
        request: Request<pb::GetHotelPolicyRequest>,
    ) -> Result<Response<pb::HotelPolicy>, Status> {
        jack_runtime::callers::require_hotel(&request, &request.get_ref().hotel_id)?;
        let hotel_id = request.into_inner().hotel_id;
        let lookup = self.store.lookup(&hotel_id, None).await.map_err(GuestError::from)?;
        Ok(Response::new(pb::HotelPolicy {
            registry_enabled: lookup.registry_enabled,
            known: lookup.hotel.is_some(),
            allowed_origins: lookup.hotel.map(|h| h.allowed_origins).unwrap_or_default(),
        }))
    }

    async fn upsert_hotel(&self, request: Request<pb::UpsertHotelRequest>) -> Result<Response<pb::Hotel>, Status> {
        jack_runtime::callers::require_hotel(&request, &request.get_ref().hotel_id)?;
        let req = request.into_inner();
        domain::check_id("hotelId", &req.hotel_id)?;
        let hotel = HotelRecord {
            hotel_id: req.hotel_id,
            name: req.name,
            allowed_origins: req.allowed_origins,
            identity_secret: req.identity_secret.filter(|s| !s.is_empty()),
        };
        self.store.upsert_hotel(&hotel, time::now_ms()).await.map_err(GuestError::from)?;
        let stored =
            self.store.hotel(&hotel.hotel_id).await.map_err(GuestError::from)?.ok_or(GuestError::UnknownHotel)?;
        Ok(Response::new(pb::Hotel {
            hotel_id: stored.hotel_id,
            name: stored.name,
            allowed_origins: stored.allowed_origins,
            has_identity_secret: stored.identity_secret.is_some(),
        }))
    }
}
