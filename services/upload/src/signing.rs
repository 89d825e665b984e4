//! Signed URLs of the local backend: an HMAC-SHA256 over everything the URL allows (method,
//! object, type, size, expiry), so a URL is good for exactly one upload of the declared file
//! until it expires, and cannot be bent to another object or a bigger file.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

impl Signer {
    pub fn new(secret: &str) -> Self {
        Self { key: secret.as_bytes().to_vec() }
    }

    fn mac(&self, parts: &[&str]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in parts {
            // Length-prefixed, so no two different part lists sign the same bytes.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    pub fn sign(&self, parts: &[&str]) -> String {
        hex(&self.mac(parts).finalize().into_bytes())
    }

    /// Constant-time check of a hex signature.
    pub fn verify(&self, parts: &[&str], signature: &str) -> bool {
        match unhex(signature) {
            Some(bytes) => self.mac(parts).verify_slice(&bytes).is_ok(),
            None => false,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_every_part() {
        let signer = Signer::new("0123456789abcdef0123456789abcdef");
        let sig = signer.sign(&["PUT", "incoming/att_1", "image/png", "10", "99"]);
        assert!(signer.verify(&["PUT", "incoming/att_1", "image/png", "10", "99"], &sig));
        assert!(!signer.verify(&["PUT", "incoming/att_2", "image/png", "10", "99"], &sig));
        assert!(!signer.verify(&["PUT", "incoming/att_1", "image/png", "11", "99"], &sig));
        assert!(!signer.verify(&["PUT", "incoming/att_1image/png", "", "10", "99"], &sig), "parts cannot be shifted");
        assert!(!signer.verify(&["PUT", "incoming/att_1", "image/png", "10", "99"], "zz"));
        assert!(
            !Signer::new("another secret of at least 32 chars")
                .verify(&["PUT", "incoming/att_1", "image/png", "10", "99"], &sig)
        );
    }
}
