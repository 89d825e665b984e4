//! Who may call which gRPC method.
//!
//! Every caller of a service's gRPC API presents a bearer token (`authorization: Bearer …`).
//! The service knows its callers from a callers file (`GRPC_CALLERS_FILE`): a JSON list of
//! `{ "name", "role", "tokenSha256" }`, the token's SHA-256 in hex, so the file holds no
//! secret. A caller's role decides which methods it may call ([`allowed`]):
//!
//! - `edge`: the WebSocket edge, the only caller of guest identify, guest-message writes and
//!   delivery's edge stream;
//! - `conversation`: the conversation service's relay, the only publisher to delivery;
//! - `responder`: an AI responder (watch, send as the assistant, typing, reads, files);
//! - `dashboard`: a staff dashboard (subscribe, send as staff, typing, reads, files);
//! - `admin`: the hotel registry, guest records and the edge's status.
//!
//! A missing, malformed or unknown token is `UNAUTHENTICATED`; a known caller calling a method
//! outside its role is `PERMISSION_DENIED`. Health checks and server reflection need no token:
//! probes and tools call them, and they reveal nothing about hotels or guests.
//!
//! [`Authenticate`] is a tower layer that checks every request before it reaches a service and
//! puts the [`Caller`] into the request's extensions, where a method that depends on the role
//! (who may send as staff, who may mark a guest's reads) finds it with [`caller`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use tonic::Status;

use crate::grpc::Credentials;
use crate::settings::{Env, SettingsError};

/// What a caller is for; decides which methods it may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Edge,
    Conversation,
    Responder,
    Dashboard,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Edge, Role::Conversation, Role::Responder, Role::Dashboard, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Conversation => "conversation",
            Role::Responder => "responder",
            Role::Dashboard => "dashboard",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller, as the callers file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The hotels it may act for; `None`: every hotel.
    pub hotels: Option<Vec<String>>,
}

impl Caller {
    /// Whether it may act for `hotel_id`.
    pub fn serves(&self, hotel_id: &str) -> bool {
        self.hotels.as_ref().is_none_or(|hotels| hotels.iter().any(|h| h == hotel_id))
    }
}

/// The callers of the gRPC methods this service has, by role. Methods not listed are refused
/// to everyone but through [`PUBLIC`].
const METHODS: &[(&str, &[Role])] = {
    use Role::*;
    &[
        ("/jack.guest.v1.GuestService/Identify", &[Edge]),
        ("/jack.guest.v1.GuestService/VerifyVisitorToken", &[Edge]),
        ("/jack.guest.v1.GuestService/MarkEngaged", &[Edge]),
        ("/jack.guest.v1.GuestService/GetHotelPolicy", &[Edge, Admin]),
        ("/jack.guest.v1.GuestService/GetGuest", &[Edge, Responder, Dashboard, Admin]),
        ("/jack.guest.v1.GuestService/UpdateGuest", &[Dashboard, Admin]),
        ("/jack.guest.v1.GuestService/RevokeVisitorTokens", &[Dashboard, Admin]),
        ("/jack.guest.v1.GuestService/UpsertHotel", &[Admin]),
        ("/jack.conversation.v1.ConversationService/GetActiveConversation", &[Edge]),
        ("/jack.conversation.v1.ConversationService/GetConversation", &[Edge, Responder, Dashboard]),
        ("/jack.conversation.v1.ConversationService/AddGuestMessage", &[Edge]),
        ("/jack.conversation.v1.ConversationService/AddGuestMessageBatches", &[Edge]),
        ("/jack.conversation.v1.ConversationService/SendMessage", &[Responder, Dashboard]),
        ("/jack.conversation.v1.ConversationService/ListMessages", &[Edge, Responder, Dashboard]),
        ("/jack.conversation.v1.ConversationService/SetTyping", &[Edge, Responder, Dashboard]),
        ("/jack.conversation.v1.ConversationService/MarkRead", &[Edge, Responder, Dashboard]),
        ("/jack.conversation.v1.ConversationService/WatchMessages", &[Responder, Dashboard]),
        ("/jack.delivery.v1.DeliveryService/EdgeStream", &[Edge]),
        ("/jack.delivery.v1.DeliveryService/Publish", &[Conversation]),
        ("/jack.delivery.v1.DeliveryService/PublishStream", &[Conversation]),
        ("/jack.delivery.v1.DeliveryService/Subscribe", &[Dashboard]),
        ("/jack.upload.v1.UploadService/CreateUpload", &[Edge]),
        ("/jack.upload.v1.UploadService/ResolveAttachments", &[Edge, Conversation]),
        ("/jack.upload.v1.UploadService/PutAttachment", &[Responder, Dashboard]),
        ("/jack.upload.v1.UploadService/SignDownloads", &[Edge, Responder, Dashboard]),
        ("/jack.upload.v1.UploadService/GetLimits", &[Edge, Responder, Dashboard]),
        ("/jack.edge.v1.EdgeService/GetStatus", &[Admin]),
    ]
};

/// Services anyone may call: health checks and server reflection.
const PUBLIC: &[&str] =
    &["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// Whether `role` may call the method at `path` (`/package.Service/Method`).
pub fn allowed(role: Role, path: &str) -> bool {
    METHODS.iter().any(|(method, roles)| *method == path && roles.contains(&role))
}

/// Every method with an access rule (the table-driven tests walk it).
pub fn methods() -> impl Iterator<Item = (&'static str, &'static [Role])> {
    METHODS.iter().copied()
}

/// One entry of a callers file.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallerEntry {
    pub name: String,
    pub role: Role,
    /// The token's SHA-256, 64 hex digits.
    pub token_sha256: String,
    /// The hotels this caller may act for (a responder or dashboard of one hotel's team);
    /// every hotel when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotels: Option<Vec<String>>,
}

impl CallerEntry {
    pub fn new(name: &str, role: Role, token: &str) -> Self {
        Self { name: name.to_owned(), role, token_sha256: hex(&Sha256::digest(token.as_bytes())), hotels: None }
    }

    /// The same caller, for these hotels only.
    pub fn for_hotels(mut self, hotels: &[&str]) -> Self {
        self.hotels = Some(hotels.iter().map(|h| (*h).to_owned()).collect());
        self
    }
}

/// The known callers, by their token's hash.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    by_hash: HashMap<[u8; 32], Arc<Caller>>,
}

impl Callers {
    pub fn new(entries: impl IntoIterator<Item = CallerEntry>) -> anyhow::Result<Self> {
        let mut by_hash = HashMap::new();
        for entry in entries {
            anyhow::ensure!(!entry.name.trim().is_empty(), "a caller has no name");
            let hash = unhex(&entry.token_sha256)
                .with_context(|| format!("caller {:?}: tokenSha256 must be 64 hex digits", entry.name))?;
            anyhow::ensure!(
                entry.hotels.as_ref().is_none_or(|h| !h.is_empty()),
                "caller {:?}: hotels, when given, must name at least one",
                entry.name
            );
            let caller = Arc::new(Caller { name: entry.name.clone(), role: entry.role, hotels: entry.hotels.clone() });
            anyhow::ensure!(
                by_hash.insert(hash, caller).is_none(),
                "caller {:?}: another caller has the same token",
                entry.name
            );
        }
        Ok(Self { by_hash })
    }

    /// Reads a callers file (`GRPC_CALLERS_FILE`).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read GRPC_CALLERS_FILE {}", path.display()))?;
        let entries: Vec<CallerEntry> =
            serde_json::from_str(&text).with_context(|| format!("invalid GRPC_CALLERS_FILE {}", path.display()))?;
        Self::new(entries).with_context(|| format!("invalid GRPC_CALLERS_FILE {}", path.display()))
    }

    /// The caller presenting `token`, if known.
    pub fn find(&self, token: &str) -> Option<&Arc<Caller>> {
        // Looked up by the token's hash: the time taken tells nothing about how much of a
        // guessed token matched.
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash)
    }

    /// Checks one request: `Ok(None)` for a public method, `Ok(Some(caller))` for a caller
    /// allowed to call it, or the status to answer with.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Arc<Caller>>, Status> {
        if PUBLIC.iter().any(|prefix| path.starts_with(prefix)) {
            return Ok(None);
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated("missing credentials: send `authorization: Bearer <token>`"));
        };
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Status::unauthenticated("malformed credentials: expected `authorization: Bearer <token>`"));
        };
        let Some(caller) = self.find(token) else {
            return Err(Status::unauthenticated("unknown credentials"));
        };
        if !allowed(caller.role, path) {
            return Err(Status::permission_denied(format!(
                "{} (role {}) may not call {path}",
                caller.name, caller.role
            )));
        }
        Ok(Some(caller.clone()))
    }
}

/// How a service authenticates its gRPC callers: `GRPC_CALLERS_FILE`, or not at all with
/// `GRPC_AUTH=off` (development only: anyone who reaches the port can do anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSettings {
    Callers(PathBuf),
    Off,
}

impl AuthSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        match env.get("GRPC_AUTH") {
            Some("off") => return Ok(Self::Off),
            Some("on") | None => {}
            Some(other) => return Err(SettingsError::new("GRPC_AUTH", other, "expected on or off")),
        }
        match env.get("GRPC_CALLERS_FILE") {
            Some(path) => Ok(Self::Callers(PathBuf::from(path))),
            None => Err(SettingsError::new(
                "GRPC_CALLERS_FILE",
                "",
                "must name the file of the gRPC API's callers (README, \"Authentication\"); GRPC_AUTH=off serves without (development only)",
            )),
        }
    }

    /// The layer that checks every request, with the callers file read now.
    pub fn layer(&self) -> anyhow::Result<Authenticate> {
        match self {
            Self::Callers(path) => Ok(Authenticate::new(Some(Callers::from_file(path)?))),
            Self::Off => {
                tracing::warn!("GRPC_AUTH=off: the gRPC API serves every caller without credentials");
                Ok(Authenticate::new(None))
            }
        }
    }

    /// The credentials this service presents to the others: the token in `name` or in the file
    /// `{name}_FILE`; required unless `GRPC_AUTH=off`.
    pub fn credentials(&self, env: &Env, name: &str) -> Result<Credentials, SettingsError> {
        credentials(env, name, *self == Self::Off)
    }
}

/// A client's credentials: the token in `name` or in the file `{name}_FILE` (when neither is
/// set, none if `optional`, else an error naming both), with the TLS of `GRPC_TLS_*` for
/// `https://` URLs.
pub fn credentials(env: &Env, name: &str, optional: bool) -> Result<Credentials, SettingsError> {
    let file_name = format!("{name}_FILE");
    let token = match (env.get(name), env.get(&file_name)) {
        (Some(token), _) => Some(token.to_owned()),
        (None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| SettingsError::new(&file_name, path, e))?),
        (None, None) => None,
    };
    let credentials = match token {
        Some(token) => Credentials::bearer(token.trim()).map_err(|e| SettingsError::new(name, "(hidden)", e))?,
        None if optional => Credentials::none(),
        None => {
            return Err(SettingsError::new(
                name,
                "",
                format!("must be set (or {file_name}): this service's token for calling the others"),
            ));
        }
    };
    Ok(credentials.with_tls(crate::grpc::Tls::from_env(env)?))
}

/// A new random token: 32 bytes from the OS's CSPRNG, URL-safe base64.
pub fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// The caller a request was authenticated as, when the service checks callers.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Arc<Caller>>().map(|c| c.as_ref())
}

/// Refuses a request unless its caller (when callers are checked) has one of `roles`:
/// for what depends on the request's content, such as the role a message is sent as.
pub fn require<T>(request: &tonic::Request<T>, roles: &[Role], what: &str) -> Result<(), Status> {
    match caller(request) {
        Some(c) if !roles.contains(&c.role) => {
            Err(Status::permission_denied(format!("{} (role {}) may not {what}", c.name, c.role)))
        }
        _ => Ok(()),
    }
}

/// Refuses a request that names a hotel its caller may not act for (`PERMISSION_DENIED`).
pub fn require_hotel<T>(request: &tonic::Request<T>, hotel_id: &str) -> Result<(), Status> {
    match caller(request) {
        Some(c) if !c.serves(hotel_id) => {
            Err(Status::permission_denied(format!("{} may not act for hotel {hotel_id:?}", c.name)))
        }
        _ => Ok(()),
    }
}

/// The hotels a request's caller is limited to, if it is.
pub fn hotels<T>(request: &tonic::Request<T>) -> Option<&[String]> {
    caller(request).and_then(|c| c.hotels.as_deref())
}

/// The hotel a stream of a limited caller is about: the one it names, which must be one of
/// the caller's; or, when it names none, the caller's only hotel. Unlimited callers get what
/// they asked for.
pub fn scoped_hotel<T>(request: &tonic::Request<T>, asked: Option<&str>) -> Result<Option<String>, Status> {
    let Some(c) = caller(request) else { return Ok(asked.map(str::to_owned)) };
    match (asked, c.hotels.as_deref()) {
        (asked, None) => Ok(asked.map(str::to_owned)),
        (Some(hotel), Some(_)) if c.serves(hotel) => Ok(Some(hotel.to_owned())),
        (Some(hotel), Some(_)) => Err(Status::permission_denied(format!("{} may not act for hotel {hotel:?}", c.name))),
        (None, Some([only])) => Ok(Some(only.clone())),
        (None, Some(_)) => {
            Err(Status::permission_denied(format!("{} acts for several hotels: name one (hotel_id)", c.name)))
        }
    }
}

/// The tower layer that authenticates every request of a gRPC server.
#[derive(Debug, Clone)]
pub struct Authenticate {
    callers: Option<Arc<Callers>>,
}

impl Authenticate {
    /// Checks every request against `callers`; `None` lets every request through (only when
    /// `GRPC_AUTH=off`).
    pub fn new(callers: Option<Callers>) -> Self {
        Self { callers: callers.map(Arc::new) }
    }
}

impl<S> tower::Layer<S> for Authenticate {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated { inner, callers: self.callers.clone() }
    }
}

/// A service behind [`Authenticate`].
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    callers: Option<Arc<Callers>>,
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, std::future::Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        let Some(callers) = &self.callers else {
            return Either::Left(self.inner.call(request));
        };
        match callers.check(request.uri().path(), request.headers()) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Either::Left(self.inner.call(request))
            }
            Err(status) => {
                tracing::debug!(path = %request.uri().path(), code = ?status.code(), "gRPC call refused");
                Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn tokens_are_checked_by_hash_and_roles_by_method() {
        let callers = Callers::new([CallerEntry::new("ai", Role::Responder, "secret-token")]).unwrap();
        let send = "/jack.conversation.v1.ConversationService/SendMessage";
        let identify = "/jack.guest.v1.GuestService/Identify";
        assert_eq!(callers.check(send, &headers("Bearer secret-token")).unwrap().unwrap().name, "ai");
        assert_eq!(
            callers.check(identify, &headers("Bearer secret-token")).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        for bad in ["Bearer wrong", "secret-token", "Bearer ", "Basic c2VjcmV0"] {
            assert_eq!(callers.check(send, &headers(bad)).unwrap_err().code(), tonic::Code::Unauthenticated, "{bad}");
        }
        assert_eq!(callers.check(send, &http::HeaderMap::new()).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(callers.check("/grpc.health.v1.Health/Check", &http::HeaderMap::new()).unwrap().is_none());
        // An unknown method is refused even to a known caller.
        assert_eq!(
            callers.check("/jack.guest.v1.GuestService/Nope", &headers("Bearer secret-token")).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn a_callers_file_is_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callers.json");
        std::fs::write(&path, r#"[{"name":"edge","role":"edge","tokenSha256":"abc"}]"#).unwrap();
        let err = format!("{:#}", Callers::from_file(&path).unwrap_err());
        assert!(err.contains("64 hex digits"), "{err}");
        std::fs::write(&path, r#"[{"name":"x","role":"root","tokenSha256":""}]"#).unwrap();
        assert!(format!("{:#}", Callers::from_file(&path).unwrap_err()).contains("unknown variant `root`"));
        let twice =
            serde_json::to_string(&[CallerEntry::new("a", Role::Edge, "t"), CallerEntry::new("b", Role::Admin, "t")])
                .unwrap();
        std::fs::write(&path, twice).unwrap();
        assert!(format!("{:#}", Callers::from_file(&path).unwrap_err()).contains("same token"));
        let nowhere = serde_json::to_string(&[CallerEntry::new("a", Role::Responder, "t").for_hotels(&[])]).unwrap();
        std::fs::write(&path, nowhere).unwrap();
        assert!(format!("{:#}", Callers::from_file(&path).unwrap_err()).contains("at least one"));
    }

    #[test]
    fn new_tokens_differ_and_carry_256_bits() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }
}
