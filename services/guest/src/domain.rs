//! The identity rules, free of I/O.
//!
//! A visitor token names one guest record: `base64url(claims) "." base64url(mac)`, an
//! HMAC-SHA256 under the service's secret over the hotel, the guest id, the record's token
//! epoch and an expiry. A token proves nothing once it has expired, once the record's epoch
//! has moved on (its tokens were revoked), or for any other record — in particular not for a
//! record that later took over the same visitor id. A client that only knows somebody's
//! visitor id cannot produce one.
//!
//! A user hash is the hotel's own proof: hex HMAC-SHA256 of the hotel's identity secret over
//! the visitor id, as a hotel's booking site can issue it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::GuestError;

type HmacSha256 = Hmac<Sha256>;

pub const MAX_ID_LEN: usize = 128;
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_EMAIL_LEN: usize = 254;
/// The longest visitor token the service reads (real ones are about 150 characters).
pub const MAX_TOKEN_LEN: usize = 512;

/// What a visitor token says: which guest record it opens, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub hotel_id: String,
    pub guest_id: String,
    /// The record's token epoch when the token was issued; revoking tokens moves it on.
    pub epoch: i64,
    pub expires_at_ms: i64,
}

/// Signs and checks visitor tokens.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    pub fn new(secret: &str) -> Self {
        Self { key: secret.as_bytes().to_vec() }
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"jack visitor token v2\n");
        mac.update(payload);
        mac
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let payload =
            format!("2\n{}\n{}\n{}\n{}", claims.hotel_id, claims.guest_id, claims.epoch, claims.expires_at_ms);
        let tag = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The (hotel, visitor id) of a token of the first format, an HMAC over the two that never
    /// expires: such a token still opens the record holding that visitor id while the record is
    /// unverified and its tokens were never revoked, so that visitors from before keep their
    /// conversation; every identify then gives them a token of this format. (A record that
    /// proof has touched since — taken over, verified or revoked — no longer opens with one.)
    pub fn verify_first_format(&self, token: &str) -> Option<(String, String)> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (payload, tag) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"jack visitor token v1\n");
        mac.update(&payload);
        mac.verify_slice(&tag).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let (hotel, visitor) = payload.split_once('\n')?;
        Some((hotel.to_owned(), visitor.to_owned()))
    }

    /// The claims of a token whose signature holds and which has not expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Option<Claims> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (payload, tag) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(&payload).verify_slice(&tag).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let mut parts = payload.split('\n');
        let (Some("2"), Some(hotel_id), Some(guest_id), Some(epoch), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let claims = Claims {
            hotel_id: hotel_id.to_owned(),
            guest_id: guest_id.to_owned(),
            epoch: epoch.parse().ok()?,
            expires_at_ms: expires.parse().ok()?,
        };
        (claims.expires_at_ms > now_ms).then_some(claims)
    }
}

/// Whether a visitor id has the form of an anonymous visitor's own random id: `vis_` and at
/// least 16 more characters, as the widget and this service make them. At a hotel with an
/// identity secret these are the only ids bound without a user hash, so that an id the hotel
/// issues (a booking number, an account id) can never be claimed before its guest arrives.
pub fn is_anonymous_id(visitor_id: &str) -> bool {
    visitor_id.strip_prefix("vis_").is_some_and(|rest| {
        rest.len() >= 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// What a caller proves about the visitor id it asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Proof {
    /// A visitor token of the record that holds the id.
    pub by_token: bool,
    /// A user hash that matches the hotel's identity secret.
    pub by_hash: bool,
    /// A user hash that does not match: no proof, and a sign that the id is not the caller's.
    pub hash_refused: bool,
}

/// What an identify that names a visitor id does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The record holding the id is the caller's: resume it (marking it verified when `verify`).
    Resume { verify: bool },
    /// The record was bound without proof and the caller proves the id with a user hash: the
    /// id passes to a new, verified record. The old one may have been bound by anyone who knew
    /// the id first, so the proven guest must never join it.
    TakeOver,
    /// Nobody holds the id: bind it to the caller.
    Bind { verified: bool },
    /// The caller cannot have this id and starts as a new anonymous visitor.
    Replace,
}

/// The identity rules for a requested visitor id. `held_verified` is whether a record holds
/// the id already, and whether that record is verified.
pub fn binding(held_verified: Option<bool>, proof: Proof, hotel_has_secret: bool, anonymous_id: bool) -> Binding {
    match held_verified {
        Some(verified) if proof.by_token => Binding::Resume { verify: proof.by_hash && !verified },
        Some(true) if proof.by_hash => Binding::Resume { verify: false },
        Some(false) if proof.by_hash => Binding::TakeOver,
        Some(_) => Binding::Replace,
        None if proof.hash_refused => Binding::Replace,
        None if proof.by_hash => Binding::Bind { verified: true },
        // A hotel that proves its guests' ids keeps them for its guests.
        None if hotel_has_secret && !anonymous_id => Binding::Replace,
        None => Binding::Bind { verified: false },
    }
}

/// Checks a hotel-issued user hash in constant time.
pub fn user_hash_matches(identity_secret: &str, visitor_id: &str, user_hash: &str) -> bool {
    let Some(expected) = decode_hex(user_hash.trim()) else { return false };
    let mut mac = HmacSha256::new_from_slice(identity_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(visitor_id.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

/// The user hash a hotel would issue (for tests and hotel tooling).
pub fn user_hash(identity_secret: &str, visitor_id: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(identity_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(visitor_id.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Hotel and visitor ids: 1 to 128 printable ASCII characters without spaces.
pub fn check_id(what: &str, value: &str) -> Result<(), GuestError> {
    let ok = !value.is_empty() && value.len() <= MAX_ID_LEN && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(GuestError::InvalidArgument(format!(
            "{what} must be 1 to {MAX_ID_LEN} printable characters without spaces"
        )))
    }
}

pub fn check_name(name: &str) -> Result<(), GuestError> {
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(GuestError::InvalidArgument(format!(
            "name must be at most {MAX_NAME_LEN} characters, without control characters"
        )));
    }
    Ok(())
}

pub fn check_email(email: &str) -> Result<(), GuestError> {
    let valid = email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        });
    if valid { Ok(()) } else { Err(GuestError::InvalidArgument("email is not a valid address".into())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(guest_id: &str, epoch: i64, expires_at_ms: i64) -> Claims {
        Claims { hotel_id: "hotel_1".into(), guest_id: guest_id.into(), epoch, expires_at_ms }
    }

    #[test]
    fn tokens_name_one_record_until_they_expire() {
        let signer = TokenSigner::new("a-secret-of-at-least-32-characters!!");
        let token = signer.sign(&claims("gst_1", 3, 10_000));
        assert_eq!(signer.verify(&token, 9_999), Some(claims("gst_1", 3, 10_000)));
        assert_eq!(signer.verify(&token, 10_000), None, "expired");
        let other = TokenSigner::new("another-secret-of-at-least-32-chars!");
        assert_eq!(other.verify(&token, 0), None);
        let mut forged = token.clone();
        forged.pop();
        assert!(signer.verify(&forged, 0).is_none());
        assert!(signer.verify("garbage", 0).is_none());
        assert!(signer.verify(&"a.b".repeat(300), 0).is_none());
        // A token of the first format (hotel and visitor id only) is not one of these, and is
        // told apart; tokens of either format are never taken for the other.
        let mut mac = HmacSha256::new_from_slice(b"a-secret-of-at-least-32-characters!!").unwrap();
        mac.update(b"jack visitor token v1\nhotel_1\nvisitor_1");
        let v1 = format!("{}.{}", B64.encode("hotel_1\nvisitor_1"), B64.encode(mac.finalize().into_bytes()));
        assert!(signer.verify(&v1, 0).is_none());
        assert_eq!(signer.verify_first_format(&v1), Some(("hotel_1".into(), "visitor_1".into())));
        assert_eq!(other.verify_first_format(&v1), None);
        assert_eq!(signer.verify_first_format(&token), None);
    }

    #[test]
    fn a_proven_login_never_joins_a_record_bound_without_proof() {
        let token = Proof { by_token: true, ..Proof::default() };
        let hash = Proof { by_hash: true, ..Proof::default() };
        let none = Proof::default();
        let wrong_hash = Proof { hash_refused: true, ..Proof::default() };
        assert_eq!(binding(Some(false), hash, true, false), Binding::TakeOver);
        assert_eq!(binding(Some(true), hash, true, false), Binding::Resume { verify: false });
        assert_eq!(binding(Some(false), token, true, false), Binding::Resume { verify: false });
        assert_eq!(
            binding(Some(false), Proof { by_token: true, by_hash: true, hash_refused: false }, true, false),
            Binding::Resume { verify: true }
        );
        assert_eq!(binding(Some(true), none, true, false), Binding::Replace);
        assert_eq!(binding(Some(false), none, false, false), Binding::Replace);
        // Unbound ids: a hotel with a secret binds only proven or anonymous ones.
        assert_eq!(binding(None, none, true, false), Binding::Replace);
        assert_eq!(binding(None, none, true, true), Binding::Bind { verified: false });
        assert_eq!(binding(None, hash, true, false), Binding::Bind { verified: true });
        assert_eq!(binding(None, wrong_hash, true, false), Binding::Replace);
        // Without a secret (protocol v1's original behaviour) the first caller binds any id.
        assert_eq!(binding(None, none, false, false), Binding::Bind { verified: false });
    }

    #[test]
    fn anonymous_ids_are_long_random_vis_ids() {
        assert!(is_anonymous_id("vis_0193a1b2c3d4e5f60718293a4b5c6d7e"));
        assert!(!is_anonymous_id("vis_short"));
        assert!(!is_anonymous_id("booking-609585"));
        assert!(!is_anonymous_id("v_0193a1b2c3d4e5f60718293a4b5c6d7e"));
        assert!(!is_anonymous_id("vis_0193a1b2c3d4e5f6/../../etc"));
    }

    #[test]
    fn user_hashes_are_checked() {
        let hash = user_hash("hotel-secret", "booking-42");
        assert!(user_hash_matches("hotel-secret", "booking-42", &hash));
        assert!(user_hash_matches("hotel-secret", "booking-42", &hash.to_uppercase()));
        assert!(!user_hash_matches("hotel-secret", "booking-43", &hash));
        assert!(!user_hash_matches("hotel-secret", "booking-42", "zz"));
    }

    #[test]
    fn inputs_are_bounded() {
        assert!(check_id("visitorId", "visitor_1").is_ok());
        assert!(check_id("visitorId", "").is_err());
        assert!(check_id("visitorId", "a b").is_err());
        assert!(check_id("visitorId", &"x".repeat(129)).is_err());
        assert!(check_email("guest@hotel.com").is_ok());
        assert!(check_email("nope").is_err());
        assert!(check_name("Test Guest").is_ok());
        assert!(check_name("bad\u{0}name").is_err());
    }
}
