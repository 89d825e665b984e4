//! The identity rules, free of I/O.
//!
//! A visitor token binds a visitor id to a hotel: `base64url(hotel "\n" visitor) "." base64url(mac)`
//! with an HMAC-SHA256 under the service's secret. A client that only knows somebody's visitor
//! id cannot produce it. A user hash is the hotel's own proof: hex HMAC-SHA256 of the hotel's
//! identity secret over the visitor id, as a hotel's booking site can issue it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::GuestError;

type HmacSha256 = Hmac<Sha256>;

pub const MAX_ID_LEN: usize = 128;
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_EMAIL_LEN: usize = 254;

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
        mac.update(b"jack visitor token v1\n");
        mac.update(payload);
        mac
    }

    pub fn sign(&self, hotel_id: &str, visitor_id: &str) -> String {
        let payload = format!("{hotel_id}\n{visitor_id}");
        let tag = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The (hotel, visitor) a token was issued for, when its signature holds.
    pub fn verify(&self, token: &str) -> Option<(String, String)> {
        let (payload, tag) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(&payload).verify_slice(&tag).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let (hotel, visitor) = payload.split_once('\n')?;
        Some((hotel.to_owned(), visitor.to_owned()))
    }

    /// Whether `token` was issued for exactly this hotel and visitor.
    pub fn proves(&self, token: &str, hotel_id: &str, visitor_id: &str) -> bool {
        self.verify(token).is_some_and(|(h, v)| h == hotel_id && v == visitor_id)
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
        Err(GuestError::InvalidArgument(format!("{what} must be 1 to {MAX_ID_LEN} printable characters without spaces")))
    }
}

pub fn check_name(name: &str) -> Result<(), GuestError> {
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(GuestError::InvalidArgument(format!("name must be at most {MAX_NAME_LEN} characters, without control characters")));
    }
    Ok(())
}

pub fn check_email(email: &str) -> Result<(), GuestError> {
    let valid = email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.'));
    if valid { Ok(()) } else { Err(GuestError::InvalidArgument("email is not a valid address".into())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_hotel_and_visitor() {
        let signer = TokenSigner::new("a-secret-of-at-least-32-characters!!");
        let token = signer.sign("hotel_1", "visitor_1");
        assert!(signer.proves(&token, "hotel_1", "visitor_1"));
        assert!(!signer.proves(&token, "hotel_1", "visitor_2"));
        assert!(!signer.proves(&token, "hotel_2", "visitor_1"));
        let other = TokenSigner::new("another-secret-of-at-least-32-chars!");
        assert!(!other.proves(&token, "hotel_1", "visitor_1"));
        let mut forged = token.clone();
        forged.pop();
        assert!(signer.verify(&forged).is_none());
        assert!(signer.verify("garbage").is_none());
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
