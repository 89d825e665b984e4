//! Settings come from environment variables. Each service reads them into one typed struct at
//! start-up; a bad value stops start-up with one line naming the variable and the problem.
//!
//! [`Env`] is a snapshot, so the launcher and tests can pass variables without touching the
//! process environment.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A bad setting, shown to the operator as one line.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct SettingsError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl SettingsError {
    pub fn new(name: &str, value: &str, reason: impl Display) -> Self {
        Self { name: name.to_owned(), value: value.to_owned(), reason: reason.to_string() }
    }
}

/// A snapshot of environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Self { vars: std::env::vars().collect() }
    }

    /// Only the given variables (tests, the launcher).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// Sets a variable unless it is already set.
    pub fn with_default(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.entry(name.to_owned()).or_insert_with(|| value.into());
        self
    }

    /// Sets a variable, replacing any value.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    /// The value, when set and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// Parses the variable, or returns `default` when it is unset.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| SettingsError::new(name, raw, e)),
        }
    }

    /// A whole number within `min..=max`.
    pub fn number(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, SettingsError> {
        let value: u64 = self.parse(name, default)?;
        if value < min || value > max {
            let raw = self.get(name).unwrap_or_default();
            return Err(SettingsError::new(name, raw, format!("expected a number from {min} to {max}")));
        }
        Ok(value)
    }

    /// Milliseconds, as the documented variables give them (e.g. `WEBSOCKET_PING_INTERVAL=30000`).
    pub fn millis(&self, name: &str, default_ms: u64, min_ms: u64) -> Result<Duration, SettingsError> {
        self.number(name, default_ms, min_ms, 24 * 3600 * 1000).map(Duration::from_millis)
    }

    /// A comma-separated list; empty when unset.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.list_or(name, "")
    }

    /// A comma-separated list, or `default` (also comma-separated) when unset.
    pub fn list_or(&self, name: &str, default: &str) -> Vec<String> {
        let raw = self.get(name).unwrap_or(default);
        raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }

    /// A `host:port` socket address to listen on.
    pub fn socket_addr(&self, name: &str, default: &str) -> Result<std::net::SocketAddr, SettingsError> {
        let raw = self.get(name).unwrap_or(default);
        raw.parse().map_err(|_| SettingsError::new(name, raw, "expected host:port, e.g. 127.0.0.1:50051"))
    }

    /// An `http://host:port` URL of another service.
    pub fn url(&self, name: &str, default: &str) -> Result<String, SettingsError> {
        let raw = self.get(name).unwrap_or(default);
        check_url(name, raw)?;
        Ok(raw.to_owned())
    }

    /// A comma-separated list of addresses or CIDRs (`10.0.0.0/8`, `2001:db8::1`); empty when unset.
    pub fn cidrs(&self, name: &str) -> Result<Vec<ipnet::IpNet>, SettingsError> {
        self.list(name)
            .into_iter()
            .map(|item| {
                let net =
                    item.parse::<ipnet::IpNet>().or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                net.map_err(|_| SettingsError::new(name, &item, "expected addresses or CIDRs, e.g. 10.0.0.0/8"))
            })
            .collect()
    }

    /// A comma-separated list of URLs; `default` when unset.
    pub fn urls(&self, name: &str, default: &str) -> Result<Vec<String>, SettingsError> {
        let list = if self.get(name).is_some() { self.list(name) } else { vec![default.to_owned()] };
        for url in &list {
            check_url(name, url)?;
        }
        if list.is_empty() {
            return Err(SettingsError::new(name, "", "expected at least one URL"));
        }
        Ok(list)
    }
}

fn check_url(name: &str, raw: &str) -> Result<(), SettingsError> {
    let host = raw.strip_prefix("http://").or_else(|| raw.strip_prefix("https://"));
    match host {
        Some(rest) if !rest.trim_end_matches('/').is_empty() => Ok(()),
        _ => Err(SettingsError::new(name, raw, "expected a URL like http://127.0.0.1:50051")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_numbers_name_the_variable() {
        let env = Env::from_pairs([("WEBSOCKET_PORT", "abc")]);
        let err = env.number("WEBSOCKET_PORT", 3001, 0, 65535).unwrap_err();
        assert_eq!(err.to_string(), "invalid WEBSOCKET_PORT=\"abc\": invalid digit found in string");
        let env = Env::from_pairs([("WEBSOCKET_PORT", "70000")]);
        assert!(env.number("WEBSOCKET_PORT", 3001, 0, 65535).unwrap_err().to_string().contains("from 0 to 65535"));
    }

    #[test]
    fn lists_and_urls() {
        let env = Env::from_pairs([("A", " x, y ,,z"), ("U", "http://a:1,ftp://b")]);
        assert_eq!(env.list("A"), ["x", "y", "z"]);
        assert!(env.urls("U", "http://c:1").is_err());
        assert_eq!(env.urls("MISSING", "http://c:1").unwrap(), ["http://c:1"]);
    }
}
