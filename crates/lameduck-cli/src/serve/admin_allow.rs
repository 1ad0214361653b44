//! Who may talk to the admin listener at all: `--admin-allow CIDR`
//! (loopback only by default). A source outside the list gets 403 before
//! any token is looked at, and is logged once a minute per address.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use ipnet::IpNet;

/// Addresses remembered for the once-a-minute log; past this, older
/// entries are dropped first, and a flood of new addresses is not logged
/// one by one (the refusal count still says it).
const REMEMBERED: usize = 4096;
/// How often one refused address is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct AdminAllow {
    nets: Vec<IpNet>,
    refused: AtomicU64,
    logged: Mutex<HashMap<IpAddr, Instant>>,
}

impl AdminAllow {
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        Self {
            nets,
            refused: AtomicU64::new(0),
            logged: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `peer` may use the admin listener; a refusal is counted, and
    /// logged unless this address was logged within the last minute.
    pub(crate) fn admits(&self, peer: IpAddr) -> bool {
        // A v4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        if self.nets.iter().any(|net| net.contains(&peer)) {
            return true;
        }
        let refused = self.refused.fetch_add(1, Relaxed) + 1;
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let due = logged
            .get(&peer)
            .is_none_or(|at| now.duration_since(*at) >= LOG_EVERY);
        if due {
            if logged.len() >= REMEMBERED {
                logged.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
            }
            if logged.len() < REMEMBERED {
                logged.insert(peer, now);
                tracing::warn!(peer = %peer, refused, "admin.refused_source");
            }
        }
        false
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }
}

/// The default allowlist: loopback, v4 and v6.
pub(crate) fn loopback() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("a valid network"),
        "::1/128".parse().expect("a valid network"),
    ]
}

/// `CIDR` or a bare address (one host), for `--admin-allow` and the like.
pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("{s:?} is not a network (expected CIDR such as 10.0.0.0/8, or an address)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_addresses_parse() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_net("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        for bad in ["", "10.0.0.0/33", "example.org", "10.0.0.0/"] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_sources_are_admitted_and_each_is_logged_once_a_minute() {
        let allow = AdminAllow::new(loopback());
        assert!(allow.admits("127.0.0.2".parse().unwrap()));
        assert!(allow.admits("::1".parse().unwrap()));
        assert!(allow.admits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allow.admits("10.0.0.1".parse().unwrap()));
        assert!(!allow.admits("10.0.0.1".parse().unwrap()));
        assert_eq!(allow.refused(), 2);
        assert_eq!(allow.logged.lock().unwrap().len(), 1);
        for i in 0..(REMEMBERED as u32 + 10) {
            assert!(!allow.admits(IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i))));
        }
        assert!(allow.logged.lock().unwrap().len() <= REMEMBERED);
    }
}
