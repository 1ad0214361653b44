//! Per-client rate limits ([`RateLimit`]): a token bucket for each client
//! address (GCRA, from `governor`), answered 429 past it.

use std::{
    hash::{BuildHasher, Hasher},
    net::{IpAddr, Ipv6Addr},
    sync::{
        OnceLock, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};
use http::HeaderMap;

use crate::config::RateLimit;

/// Checks between two looks at the table's size.
const SWEEP_EVERY: u64 = 4096;

/// A client's key: its address as IPv6 (IPv4 mapped), an IPv6 one cut to
/// its /64.
type Key = u128;

type Buckets = RateLimiter<
    Key,
    DashMapStateStore<Key, KeyHasher>,
    DefaultClock,
    NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

/// The buckets of one server.
#[derive(Debug)]
pub(crate) struct Limiter {
    config: RateLimit,
    quota: Quota,
    /// Replaced whole when it must be reset (see `sweep`).
    buckets: RwLock<Buckets>,
    checks: AtomicU64,
    limited: AtomicU64,
}

impl Limiter {
    pub(crate) fn new(config: RateLimit) -> Self {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        Self {
            buckets: RwLock::new(new_buckets(quota)),
            quota,
            config,
            checks: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        }
    }

    /// `Ok` when the client behind `peer` may send a request now; how long
    /// until it may otherwise.
    pub(crate) fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Duration> {
        let key = key_of(self.client(peer, headers));
        let verdict = self
            .buckets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()));
        if self.checks.fetch_add(1, Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        if verdict.is_err() {
            self.limited.fetch_add(1, Relaxed);
        }
        verdict
    }

    /// Requests refused so far.
    pub(crate) fn limited(&self) -> u64 {
        self.limited.load(Relaxed)
    }

    /// Forgets full buckets once the table is past half its bound; starts
    /// afresh if it is still past the bound.
    fn sweep(&self) {
        let clients = {
            let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
            if buckets.len() <= self.config.max_clients / 2 {
                return;
            }
            buckets.retain_recent();
            buckets.shrink_to_fit();
            buckets.len()
        };
        if clients > self.config.max_clients {
            tracing::warn!(
                clients,
                max_clients = self.config.max_clients,
                "rate.table_reset"
            );
            *self.buckets.write().unwrap_or_else(|e| e.into_inner()) = new_buckets(self.quota);
        }
    }

    fn trusted(&self, addr: &IpAddr) -> bool {
        self.config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(addr))
    }

    /// The client's address: the peer's, or, from a trusted proxy, the
    /// rightmost forwarded address that is not a trusted proxy.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.config.trusted_proxies.is_empty() || !self.trusted(&peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        let mut any = false;
        for value in headers.get_all("x-forwarded-for") {
            any = true;
            let Ok(value) = value.to_str() else {
                return peer;
            };
            for hop in value.split(',') {
                match parse_hop(hop) {
                    Some(addr) => hops.push(addr),
                    None => return peer,
                }
            }
        }
        if !any {
            for value in headers.get_all("forwarded") {
                let Ok(value) = value.to_str() else {
                    return peer;
                };
                for element in value.split(',') {
                    let Some(node) = element.split(';').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then_some(v)
                    }) else {
                        continue;
                    };
                    match parse_hop(node) {
                        Some(addr) => hops.push(addr),
                        None => return peer,
                    }
                }
            }
        }
        hops.into_iter()
            .rev()
            .find(|hop| !self.trusted(hop))
            .unwrap_or(peer)
    }
}

/// One forwarded address: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`, quoted or not. `None` for anything else (an
/// obfuscated `_name`, `unknown`, garbage).
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Some(addr.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The bucket an address counts in: itself for IPv4, its /64 for IPv6.
fn key_of(addr: IpAddr) -> Key {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
    }
}

fn new_buckets(quota: Quota) -> Buckets {
    RateLimiter::dashmap_with_clock_and_hasher(quota, DefaultClock::default(), KeyHasher::default())
}

/// Hashes a [`Key`] with a seed drawn once per process (std's SipHash cost
/// a fifth of the rate limit's work a request). The seed keeps a client
/// from choosing addresses that collide; one per process, so that every
/// copy of the hasher (one per map shard) hashes alike.
#[derive(Clone, Copy, Debug)]
struct KeyHasher {
    seed: u64,
}

impl Default for KeyHasher {
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        Self {
            seed: *SEED.get_or_init(|| fastrand::u64(..)),
        }
    }
}

impl BuildHasher for KeyHasher {
    type Hasher = KeyHash;

    fn build_hasher(&self) -> KeyHash {
        KeyHash(self.seed)
    }
}

#[derive(Debug)]
struct KeyHash(u64);

/// The finalizer of splitmix64: every input bit reaches every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Hasher for KeyHash {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = mix(self.0 ^ u64::from_le_bytes(word));
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = mix(mix(self.0 ^ n as u64) ^ (n >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn limiter(per_second: u32, burst: u32, trusted: &[&str]) -> Limiter {
        let mut config = RateLimit::per_second(NonZeroU32::new(per_second).unwrap())
            .burst(NonZeroU32::new(burst).unwrap());
        for t in trusted {
            config = config.trust_proxy(t.parse().unwrap());
        }
        Limiter::new(config)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_burst_then_refusals_with_a_wait_and_one_bucket_per_client() {
        let l = limiter(1, 3, &[]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let none = HeaderMap::new();
        for _ in 0..3 {
            assert!(l.check(a, &none).is_ok());
        }
        let wait = l.check(a, &none).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check("192.0.2.2".parse().unwrap(), &none).is_ok());
        assert_eq!(l.limited(), 1);
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let l = limiter(1, 1, &[]);
        let none = HeaderMap::new();
        assert!(l.check("2001:db8:1:2::1".parse().unwrap(), &none).is_ok());
        assert!(
            l.check("2001:db8:1:2::ffff".parse().unwrap(), &none)
                .is_err()
        );
        assert!(l.check("2001:db8:1:3::1".parse().unwrap(), &none).is_ok());
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        let l = limiter(1, 1, &["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 10.2.2.2")]);
        assert_eq!(
            l.client(proxy, &xff),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(l.client(stranger, &xff), stranger, "untrusted: ignored");
        let spoofed = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(
            l.client(proxy, &spoofed),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the rightmost untrusted hop, not what the client wrote first"
        );
        let fwd = headers(&[(
            "forwarded",
            r#"for="[2001:db8::5]:4711";proto=https, for=10.3.3.3"#,
        )]);
        assert_eq!(
            l.client(proxy, &fwd),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        let junk = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(l.client(proxy, &junk), proxy);
        assert_eq!(l.client(proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn hops_parse_or_are_refused() {
        for (raw, want) in [
            ("1.2.3.4", Some("1.2.3.4")),
            (" 1.2.3.4:80 ", Some("1.2.3.4")),
            ("\"[2001:db8::1]:443\"", Some("2001:db8::1")),
            ("::ffff:1.2.3.4", Some("1.2.3.4")),
            ("_hidden", None),
            ("unknown", None),
            ("1.2.3.4:99999", None),
        ] {
            assert_eq!(parse_hop(raw), want.map(|w| w.parse().unwrap()), "{raw}");
        }
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut config = RateLimit::per_second(NonZeroU32::new(1).unwrap());
        config = config.max_clients(1000);
        let l = Limiter::new(config);
        let none = HeaderMap::new();
        for i in 0..(3 * SWEEP_EVERY as u32) {
            let _ = l.check(IpAddr::from(std::net::Ipv4Addr::from(i)), &none);
        }
        let len = l.buckets.read().unwrap().len();
        assert!(len <= 1000 + SWEEP_EVERY as usize, "{len}");
    }
}
