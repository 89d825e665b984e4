//! Identifiers: a short prefix that says what it names, then a time-ordered UUID (v7).

/// A new id such as `msg_0193…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A hard-to-guess random token part (UUID v4), for session ids and secrets.
pub fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
