//! Open connections per client address (`server.max_connections_per_ip`).
//!
//! The acceptor takes a place before it hands a socket to a shard; the shard gives it
//! back when the connection goes (`Shard::uncount`). The counts live in 64 stripes of
//! small maps, so the acceptor and the shards rarely meet on one lock, and an address
//! with no connection has no entry (memory follows the open connections, not the
//! addresses ever seen). IPv6 clients are counted per /64: one host usually holds a
//! whole /64, so counting single addresses would let it open 2^64 × the cap.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;

use parking_lot::Mutex;

const STRIPES: usize = 64;

pub struct IpLimit {
    /// 0 = no cap (counting is skipped entirely).
    max: u32,
    stripes: Vec<Mutex<HashMap<IpAddr, u32>>>,
    hasher: std::collections::hash_map::RandomState,
}

/// The key an address is counted under: itself for IPv4, its /64 for IPv6 (an IPv4-mapped
/// IPv6 address counts as the IPv4 address).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl IpLimit {
    pub fn new(max: u32) -> IpLimit {
        IpLimit {
            max,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn stripe(&self, k: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.stripes[self.hasher.hash_one(k) as usize % STRIPES]
    }

    /// Take a place for a connection from `ip`. `false`: the address is at its cap.
    pub fn try_acquire(&self, ip: IpAddr) -> bool {
        if self.max == 0 {
            return true;
        }
        let k = key(ip);
        let mut m = self.stripe(&k).lock();
        let n = m.entry(k).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Give back the place taken by `try_acquire` for a connection from `ip`.
    pub fn release(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let k = key(ip);
        let mut m = self.stripe(&k).lock();
        if let Some(n) = m.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&k);
            }
        }
    }

    /// Connections counted for `ip` (for tests and metrics).
    pub fn count(&self, ip: IpAddr) -> u32 {
        let k = key(ip);
        self.stripe(&k).lock().get(&k).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_per_address_and_places_come_back() {
        let l = IpLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.try_acquire(a) && l.try_acquire(a));
        assert!(!l.try_acquire(a));
        assert!(l.try_acquire(b));
        l.release(a);
        assert!(l.try_acquire(a));
        l.release(a);
        l.release(a);
        assert_eq!(l.count(a), 0);
        assert!(
            l.stripes.iter().all(|s| !s.lock().contains_key(&a)),
            "no entry left"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = IpLimit::new(1);
        assert!(l.try_acquire("2001:db8:1:2::1".parse().unwrap()));
        assert!(!l.try_acquire("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert!(l.try_acquire("2001:db8:1:3::1".parse().unwrap()));
        assert!(l.try_acquire("192.0.2.7".parse().unwrap()));
        assert!(!l.try_acquire("::ffff:192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn zero_means_no_cap() {
        let l = IpLimit::new(0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..10_000).all(|_| l.try_acquire(a)));
    }
}
