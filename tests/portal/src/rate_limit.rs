//! Rate limits in front of the portal API: token buckets, one per peer and
//! one per device.
//!
//! A bucket holds up to `burst` tokens and gains `per_second` tokens a
//! second; a call takes one, and a call that finds none is refused with
//! `RATE_LIMITED` and `retry_after_seconds` (when the next token comes).
//!
//! Who pays for a call:
//! - **The peer** (its IP address; IPv6 by its /64, the share one host
//!   usually gets) pays for every call that no registered device signed:
//!   `CheckCode`, `RegisterDevice` and `CompleteTpmActivation` (made by a
//!   device that is not registered yet, with a key anyone can make), and
//!   `EnrollUser`/`RevokeUser` calls that fail before the device signature
//!   verifies (unknown device, bad signature, malformed request).
//! - **The device** (its device id) pays for each `EnrollUser` and
//!   `RevokeUser` its registered key signed, and only those: a caller who
//!   merely names a device id cannot spend that device's tokens.
//!
//! So a device's signed calls are never slowed by anyone else's flood,
//! even from the same address. On loopback every local process is the
//! same peer (127.0.0.1, unless it binds another 127.x address), so a
//! local flood of `CheckCode` does delay a local device's `CheckCode`;
//! remote devices are told apart by their addresses.
//!
//! Memory is bounded: each table tracks at most [`MAX_TRACKED`] keys.
//! When full, buckets that have refilled completely (idle callers) are
//! dropped, and a key that still finds no room shares one overflow bucket.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleetkey_proto::{Failure, Reason};

/// Calls a bucket allows at once, by default.
pub const DEFAULT_BURST: u32 = 20;
/// Tokens a bucket gains per second, by default.
pub const DEFAULT_PER_SECOND: f64 = 5.0;
/// The most keys one table (peers or devices) tracks.
pub const MAX_TRACKED: usize = 16_384;
/// How often a full table is searched for idle buckets.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// A bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            burst: DEFAULT_BURST,
            per_second: DEFAULT_PER_SECOND,
        }
    }
}

impl RateLimit {
    /// Checks that the limit lets anything through at all.
    pub fn validate(self) -> Result<Self, String> {
        if self.burst == 0 {
            return Err("the burst must be at least 1".into());
        }
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err("the rate must be a positive number of calls per second".into());
        }
        Ok(self)
    }
}

/// A peer as the limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
    /// No address known (not a TCP connection): one shared bucket.
    Unknown,
}

impl Peer {
    pub fn of(addr: Option<SocketAddr>) -> Self {
        match addr.map(|a| a.ip()) {
            None => Peer::Unknown,
            Some(IpAddr::V4(v4)) => Peer::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Peer::V4(v4.octets()),
                None => {
                    let octets = v6.octets();
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&octets[..8]);
                    Peer::V6(prefix)
                }
            },
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::V4(octets) => write!(f, "{}", std::net::Ipv4Addr::from(*octets)),
            Peer::V6(prefix) => {
                let mut octets = [0u8; 16];
                octets[..8].copy_from_slice(prefix);
                write!(f, "{}/64", std::net::Ipv6Addr::from(octets))
            }
            Peer::Unknown => f.write_str("an unknown peer"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        self.at = now;
    }

    /// Ok when a token is there; else how long until one is.
    fn check(&self, limit: RateLimit) -> Result<(), Duration> {
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / limit.per_second,
            ))
        }
    }
}

#[derive(Debug)]
struct Buckets<K> {
    map: HashMap<K, Bucket>,
    overflow: Option<Bucket>,
    pruned_at: Option<Instant>,
}

impl<K: Eq + Hash> Buckets<K> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            overflow: None,
            pruned_at: None,
        }
    }

    /// The bucket of `key`, refilled to `now`.
    fn bucket(&mut self, key: K, limit: RateLimit, now: Instant) -> &mut Bucket {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_TRACKED {
            self.prune(limit, now);
        }
        let bucket = if self.map.contains_key(&key) || self.map.len() < MAX_TRACKED {
            self.map
                .entry(key)
                .or_insert_with(|| Bucket::full(limit, now))
        } else {
            self.overflow
                .get_or_insert_with(|| Bucket::full(limit, now))
        };
        bucket.refill(limit, now);
        bucket
    }

    /// Drops the buckets that have refilled completely (at most once per
    /// [`PRUNE_INTERVAL`], so a full table of busy callers costs one scan
    /// a second, not one per call).
    fn prune(&mut self, limit: RateLimit, now: Instant) {
        if self
            .pruned_at
            .is_some_and(|at| now.saturating_duration_since(at) < PRUNE_INTERVAL)
        {
            return;
        }
        self.pruned_at = Some(now);
        let burst = f64::from(limit.burst);
        self.map.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens + elapsed * limit.per_second < burst
        });
    }

    /// Takes a token from `key`'s bucket.
    fn take(&mut self, key: K, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let bucket = self.bucket(key, limit, now);
        bucket.check(limit)?;
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Whether `key`'s bucket has a token, without taking it.
    fn peek(&mut self, key: K, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        if !self.map.contains_key(&key) && self.map.len() < MAX_TRACKED {
            // An untracked key has a full bucket; do not start tracking it.
            return Ok(());
        }
        self.bucket(key, limit, now).check(limit)
    }
}

/// The limits the service applies.
#[derive(Debug)]
pub struct RateLimiter {
    limit: Option<RateLimit>,
    peers: Mutex<Buckets<Peer>>,
    devices: Mutex<Buckets<String>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(Some(RateLimit::default()))
    }
}

impl RateLimiter {
    /// Limits every peer and device to `limit`; `None`: no limits.
    pub fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit,
            peers: Mutex::new(Buckets::new()),
            devices: Mutex::new(Buckets::new()),
        }
    }

    /// The limit applied, if any.
    pub fn limit(&self) -> Option<RateLimit> {
        self.limit
    }

    /// Charges one `rpc` call to the peer at `addr`.
    pub fn charge_peer(&self, rpc: &str, addr: Option<SocketAddr>) -> Result<(), Failure> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let peer = Peer::of(addr);
        let result = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(peer, limit, Instant::now());
        result.map_err(|wait| refusal(rpc, &format!("from {peer}"), limit, wait))
    }

    /// Charges one `rpc` call, signed by its key, to device `device_id`.
    pub fn charge_device(&self, rpc: &str, device_id: &str) -> Result<(), Failure> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let result = self
            .devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(device_id.to_string(), limit, Instant::now());
        result.map_err(|wait| refusal(rpc, &format!("by device {device_id}"), limit, wait))
    }

    /// Refuses a call early when device `device_id` has no token left;
    /// takes nothing (only calls whose signature verifies are charged).
    pub fn device_has_room(&self, rpc: &str, device_id: &str) -> Result<(), Failure> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let result = self
            .devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .peek(device_id.to_string(), limit, Instant::now());
        result.map_err(|wait| refusal(rpc, &format!("by device {device_id}"), limit, wait))
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

fn refusal(rpc: &str, who: &str, limit: RateLimit, wait: Duration) -> Failure {
    let retry = retry_after_seconds(wait);
    Failure::new(
        Reason::RateLimited,
        format!(
            "too many {rpc} calls {who}: this portal allows a burst of {} and then {} a second; try again in {retry} s",
            limit.burst, limit.per_second
        ),
    )
    .with_meta("retry_after_seconds", retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        burst: 3,
        per_second: 2.0,
    };

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut buckets = Buckets::new();
        let start = Instant::now();
        for _ in 0..3 {
            buckets.take("a", LIMIT, start).unwrap();
        }
        let wait = buckets.take("a", LIMIT, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_seconds(wait), 1);
        // Another key is not affected.
        buckets.take("b", LIMIT, start).unwrap();
        // Half a second later one token is back, and only one.
        let later = start + Duration::from_millis(500);
        buckets.take("a", LIMIT, later).unwrap();
        assert!(buckets.take("a", LIMIT, later).is_err());
        // Never more than the burst, however long the wait.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..3 {
            buckets.take("a", LIMIT, much_later).unwrap();
        }
        assert!(buckets.take("a", LIMIT, much_later).is_err());
    }

    #[test]
    fn peeking_takes_nothing() {
        let mut buckets = Buckets::new();
        let now = Instant::now();
        for _ in 0..10 {
            buckets.peek("a", LIMIT, now).unwrap();
        }
        assert!(buckets.map.is_empty(), "peeking does not track keys");
        for _ in 0..3 {
            buckets.take("a", LIMIT, now).unwrap();
        }
        assert!(buckets.peek("a", LIMIT, now).is_err());
    }

    #[test]
    fn tables_stay_bounded() {
        let mut buckets = Buckets::new();
        let now = Instant::now();
        for key in 0..MAX_TRACKED + 100 {
            let _ = buckets.take(key, LIMIT, now);
        }
        assert_eq!(buckets.map.len(), MAX_TRACKED);
        // The keys that found no room share the overflow bucket, which
        // three calls empty.
        assert!(buckets.take(MAX_TRACKED + 200, LIMIT, now).is_err());
        // Once the tracked buckets have refilled they are dropped.
        let later = now + Duration::from_secs(10);
        buckets.take(MAX_TRACKED + 300, LIMIT, later).unwrap();
        assert_eq!(buckets.map.len(), 1);
    }

    #[test]
    fn peers_are_addresses_and_ipv6_prefixes() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        assert_eq!(Peer::of(Some(a)), Peer::of(Some(b)));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:3".parse().unwrap();
        assert_eq!(Peer::of(Some(mapped)), Peer::of(Some(a)));
        let x: SocketAddr = "[2001:db8:1:2::1]:1".parse().unwrap();
        let y: SocketAddr = "[2001:db8:1:2:ffff::9]:1".parse().unwrap();
        let z: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(Peer::of(Some(x)), Peer::of(Some(y)));
        assert_ne!(Peer::of(Some(x)), Peer::of(Some(z)));
        assert_eq!(Peer::of(Some(x)).to_string(), "2001:db8:1:2::/64");
        assert_eq!(Peer::of(None), Peer::Unknown);
    }

    #[test]
    fn refusals_say_when_to_come_back() {
        let limiter = RateLimiter::new(Some(LIMIT));
        for _ in 0..3 {
            limiter.charge_device("EnrollUser", "dev-a").unwrap();
        }
        let failure = limiter.charge_device("EnrollUser", "dev-a").unwrap_err();
        assert_eq!(failure.reason, Reason::RateLimited);
        assert_eq!(failure.meta("retry_after_seconds"), Some("1"));
        assert!(failure.message.contains("dev-a"), "{failure}");
        assert!(
            RateLimiter::new(None)
                .charge_peer("CheckCode", None)
                .is_ok()
        );
        assert!(
            RateLimit {
                burst: 0,
                per_second: 1.0
            }
            .validate()
            .is_err()
        );
    }
}
