//! Who a connection comes from, and what one address may do.
//!
//! A connection's address is its TCP peer's, unless that peer is a trusted reverse proxy
//! (`EDGE_TRUSTED_PROXIES`): then it is the nearest address in `X-Forwarded-For` that is not a
//! trusted proxy itself (anything further left was written by the client and proves nothing).
//! Limits count IPv4 addresses one by one and IPv6 addresses by their /64, the network one
//! subscriber gets (a client with one has 2^64 addresses to spread over).
//!
//! Per address: at most `EDGE_MAX_CONNECTIONS_PER_IP` connections at a time (TCP connections
//! by peer as they are accepted, see `jack_runtime::http::PerPeer`; WebSockets by client),
//! `EDGE_CONNECTS_PER_IP` new WebSockets a second (bursts of five seconds' worth),
//! `EDGE_NEW_VISITORS_PER_IP` new visitors — the guest records an identify creates — a minute
//! (bursts of a minute's worth), `EDGE_MESSAGES_PER_IP` guest messages a second and
//! `EDGE_API_CALLS_PER_IP` calls of the HTTP API a second (both in bursts of five seconds'
//! worth). Guests who come back with their token are never counted as new. The limits are
//! per edge; 0 turns one off.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;
use jack_runtime::http::address_key;

use crate::gate::Slot;

/// What the listener knows of a connection; it travels with each request as `ConnectInfo<Peer>`.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub slot: Slot,
}

/// The client's address: the peer's, or behind trusted proxies the nearest untrusted address
/// in `X-Forwarded-For` (the one a trusted proxy saw connect to it).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut nearest = peer;
    for hop in forwarded.iter().rev() {
        // Some proxies write the port too; what cannot be read at all leaves the nearest
        // trusted proxy's own address as the best known.
        let Some(ip) = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip())) else {
            return nearest;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// A refusal: how long until the same address may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, at least one, for a `Retry-After` header.
    pub fn seconds(self) -> u64 {
        (self.0.as_secs_f64().ceil() as u64).max(1)
    }
}

/// What one address may do; 0 turns a limit off.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressLimits {
    /// WebSockets at a time.
    pub max_connections: usize,
    /// New WebSockets a second (bursts of five seconds' worth).
    pub connects_per_second: u32,
    /// New visitors a minute (bursts of a minute's worth).
    pub new_visitors_per_minute: u32,
    /// Guest messages a second (bursts of five seconds' worth).
    pub messages_per_second: u32,
    /// Calls of the HTTP API a second (bursts of five seconds' worth).
    pub api_calls_per_second: u32,
}

/// A keyed token bucket of `rate` a second with bursts of five seconds' worth, unless 0.
fn per_second(rate: u32) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
    NonZeroU32::new(rate).map(|rate| {
        RateLimiter::keyed(
            Quota::per_second(rate).allow_burst(rate.saturating_mul(NonZeroU32::new(5).expect("5 is not 0"))),
        )
    })
}

/// Takes one from `limiter`'s bucket for `ip`, or says how long until one is there.
fn take(limiter: &Option<DefaultKeyedRateLimiter<IpAddr>>, ip: IpAddr) -> Result<(), RetryAfter> {
    match limiter {
        Some(limiter) => limiter
            .check_key(&address_key(ip))
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(limiter.clock().now()))),
        None => Ok(()),
    }
}

/// The per-address limits of one edge.
#[derive(Debug)]
pub struct PerAddress {
    max_connections: usize,
    connections: Mutex<HashMap<IpAddr, usize>>,
    connects: Option<DefaultKeyedRateLimiter<IpAddr>>,
    new_visitors: Option<DefaultKeyedRateLimiter<IpAddr>>,
    messages: Option<DefaultKeyedRateLimiter<IpAddr>>,
    api_calls: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl PerAddress {
    pub fn new(limits: AddressLimits) -> Self {
        Self {
            max_connections: limits.max_connections,
            connections: Mutex::default(),
            connects: per_second(limits.connects_per_second),
            new_visitors: NonZeroU32::new(limits.new_visitors_per_minute)
                .map(|rate| RateLimiter::keyed(Quota::per_minute(rate))),
            messages: per_second(limits.messages_per_second),
            api_calls: per_second(limits.api_calls_per_second),
        }
    }

    /// A new WebSocket from `ip`: its place among the address's connections (given back when
    /// dropped), or how long to wait.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Result<AddressConnection, RetryAfter> {
        let key = address_key(ip);
        take(&self.connects, ip)?;
        if self.max_connections > 0 {
            let mut connections = self.connections.lock().expect("connections lock");
            let count = connections.entry(key).or_default();
            if *count >= self.max_connections {
                if *count == 0 {
                    connections.remove(&key);
                }
                // A place frees when one of the address's connections closes.
                return Err(RetryAfter(Duration::from_secs(1)));
            }
            *count += 1;
        }
        Ok(AddressConnection { limits: self.clone(), key })
    }

    /// One more new visitor from `ip`, or how long to wait.
    pub fn new_visitor(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        take(&self.new_visitors, ip)
    }

    /// One more guest message from `ip`, or how long to wait.
    pub fn message(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        take(&self.messages, ip)
    }

    /// One more call of the HTTP API from `ip`, or how long to wait.
    pub fn api_call(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        take(&self.api_calls, ip)
    }

    /// Whether new visitors are limited at all (else identifies need not be told apart).
    pub fn limits_new_visitors(&self) -> bool {
        self.new_visitors.is_some()
    }

    /// Forgets the addresses whose buckets are full again (run now and then).
    pub fn sweep(&self) {
        for limiter in [&self.connects, &self.new_visitors, &self.messages, &self.api_calls].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// A WebSocket counted against its address; the count goes down when this is dropped.
#[derive(Debug)]
pub struct AddressConnection {
    limits: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for AddressConnection {
    fn drop(&mut self) {
        if self.limits.max_connections == 0 {
            return;
        }
        let mut connections = self.limits.connections.lock().expect("connections lock");
        if let Some(count) = connections.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                connections.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in xff {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Not from a proxy: the header is the client's own words.
        assert_eq!(client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &proxies), ip("203.0.113.9"));
        // From a proxy: the nearest address it did not add itself.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4, 198.51.100.7"]), &proxies), ip("198.51.100.7"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4", "198.51.100.7, 10.0.0.5"]), &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&[]), &proxies), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["nonsense, 10.0.0.5"]), &proxies), ip("10.0.0.5"));
        assert_eq!(client_ip(ip("::1"), &headers(&["2001:db8::1"]), &proxies), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["198.51.100.7:51234"]), &proxies), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["[2001:db8::7]:443"]), &proxies), ip("2001:db8::7"));
        // Without trusted proxies the header is never read.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4"]), &[]), ip("10.0.0.2"));
    }

    #[test]
    fn connections_per_address_are_counted_and_given_back() {
        let limits = Arc::new(PerAddress::new(AddressLimits { max_connections: 2, ..AddressLimits::default() }));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = limits.connect(ip).unwrap();
        let _b = limits.connect(ip).unwrap();
        assert!(limits.connect(ip).is_err());
        assert!(limits.connect("192.0.2.2".parse().unwrap()).is_ok(), "another address has its own count");
        drop(a);
        assert!(limits.connect(ip).is_ok());
    }

    #[test]
    fn new_visitors_are_limited_per_minute_and_say_when_to_retry() {
        let limits = PerAddress::new(AddressLimits { new_visitors_per_minute: 3, ..AddressLimits::default() });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.new_visitor(ip).is_ok());
        }
        let RetryAfter(wait) = limits.new_visitor(ip).unwrap_err();
        assert!(wait > Duration::from_secs(10) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limits.new_visitor("192.0.2.2".parse().unwrap()).is_ok());
        assert!(PerAddress::new(AddressLimits::default()).new_visitor(ip).is_ok(), "0 turns the limit off");
    }
}
