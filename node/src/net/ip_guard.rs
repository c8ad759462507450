//! Per-IP admission for one listener: a connection-rate token bucket and a failed-auth block
//! with exponential backoff (issue: hostile-input limits).
//!
//! Both run at accept time, before TLS, HTTP parsing or password hashing, so a flood from one
//! address costs the node one table lookup per connection. The table is bounded: when it is full
//! and nothing in it is stale, a new address is admitted untracked rather than evicting an
//! address that is being limited — an attacker with many addresses must not be able to free
//! itself (or another address) from a block by filling the table. `max_connections` still bounds
//! what untracked addresses can open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::core::node::Node;

/// Addresses tracked at once per listener.
const MAX_TRACKED: usize = 16_384;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Tokens per second and bucket size.
    pub rate: f64,
    pub burst: f64,
    /// Failures before the first block.
    pub failures: u32,
    pub block: Duration,
    pub block_max: Duration,
}

/// Why a connection is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// More new connections than the bucket allows.
    Rate,
    /// Blocked after failed authentications, for this much longer.
    Blocked(Duration),
}

#[derive(Debug)]
struct Entry {
    tokens: f64,
    refilled: Instant,
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

pub struct IpGuard {
    limits: Limits,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl IpGuard {
    pub fn new(limits: Limits) -> IpGuard {
        IpGuard {
            limits,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Admits (and counts) one new connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = entry(&mut table, ip, now, &self.limits) else {
            return Ok(());
        };
        if let Some(until) = e.blocked_until {
            if now < until {
                return Err(Refusal::Blocked(until - now));
            }
            e.blocked_until = None;
        }
        let elapsed = now.saturating_duration_since(e.refilled).as_secs_f64();
        e.tokens = (e.tokens + elapsed * self.limits.rate).min(self.limits.burst);
        e.refilled = now;
        if e.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        e.tokens -= 1.0;
        Ok(())
    }

    /// How much longer `ip` is blocked after failed authentications, if it is. A lookup only:
    /// for callers that check per request rather than per connection (the admin API).
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let until = table.get(&ip)?.blocked_until?;
        (now < until).then(|| until - now)
    }

    /// Records a failed authentication; returns the block it started, if any.
    pub fn auth_failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let limits = self.limits;
        let e = entry(&mut table, ip, now, &limits)?;
        // Failures long ago are forgiven: a charger with a stale password that is fixed a day
        // later starts from zero.
        if now.saturating_duration_since(e.last_failure) > limits.block_max {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        if e.failures < limits.failures {
            return None;
        }
        let doublings = (e.failures - limits.failures).min(20);
        let block = limits
            .block
            .saturating_mul(1 << doublings)
            .min(limits.block_max);
        e.blocked_until = Some(now + block);
        Some(block)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// The entry for `ip`, created if there is room (after dropping stale entries when full).
fn entry<'t>(
    table: &'t mut HashMap<IpAddr, Entry>,
    ip: IpAddr,
    now: Instant,
    limits: &Limits,
) -> Option<&'t mut Entry> {
    if !table.contains_key(&ip) && table.len() >= MAX_TRACKED {
        // Stale = not blocked, bucket refilled, no failure worth remembering.
        table.retain(|_, e| {
            let idle = now.saturating_duration_since(e.refilled).as_secs_f64();
            let full = e.tokens + idle * limits.rate >= limits.burst;
            let blocked = e.blocked_until.is_some_and(|u| u > now);
            let remembered =
                e.failures > 0 && now.saturating_duration_since(e.last_failure) <= limits.block_max;
            !(full && !blocked && !remembered)
        });
        if table.len() >= MAX_TRACKED {
            return None;
        }
    }
    Some(table.entry(ip).or_insert(Entry {
        tokens: limits.burst,
        refilled: now,
        failures: 0,
        last_failure: now,
        blocked_until: None,
    }))
}

/// Counts a failed login (password, or client certificate) against the peer's address, and
/// records the block it may start.
pub fn failed_login(node: &Node, guard: &IpGuard, peer: std::net::SocketAddr) {
    if let Some(block) = guard.auth_failed(peer.ip(), std::time::Instant::now()) {
        node.security_event(
            "ip_blocked",
            format_args!(
                "{} blocked for {}s after repeated failed authentication",
                peer.ip(),
                block.as_secs()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn limits() -> Limits {
        Limits {
            rate: 2.0,
            burst: 5.0,
            failures: 3,
            block: Duration::from_secs(10),
            block_max: Duration::from_secs(35),
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
    }

    #[test]
    fn burst_then_rate() {
        let g = IpGuard::new(limits());
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(g.admit(ip(2), t), Ok(()));
        }
        assert_eq!(g.admit(ip(2), t), Err(Refusal::Rate));
        // Another address has its own bucket.
        assert_eq!(g.admit(ip(3), t), Ok(()));
        // Two tokens per second come back.
        let t1 = t + Duration::from_millis(1000);
        assert_eq!(g.admit(ip(2), t1), Ok(()));
        assert_eq!(g.admit(ip(2), t1), Ok(()));
        assert_eq!(g.admit(ip(2), t1), Err(Refusal::Rate));
    }

    #[test]
    fn failures_block_with_doubling_backoff() {
        let g = IpGuard::new(limits());
        let t = Instant::now();
        assert_eq!(g.auth_failed(ip(2), t), None);
        assert_eq!(g.auth_failed(ip(2), t), None);
        assert_eq!(g.auth_failed(ip(2), t), Some(Duration::from_secs(10)));
        assert_eq!(
            g.admit(ip(2), t + Duration::from_secs(4)),
            Err(Refusal::Blocked(Duration::from_secs(6)))
        );
        assert_eq!(g.admit(ip(3), t), Ok(()));
        let t1 = t + Duration::from_secs(11);
        assert_eq!(g.admit(ip(2), t1), Ok(()));
        assert_eq!(g.auth_failed(ip(2), t1), Some(Duration::from_secs(20)));
        assert_eq!(
            g.auth_failed(ip(2), t1),
            Some(Duration::from_secs(35)),
            "capped"
        );
        // Forgiven after block_max without failures.
        let t2 = t1 + Duration::from_secs(80);
        assert_eq!(g.admit(ip(2), t2), Ok(()));
        assert_eq!(g.auth_failed(ip(2), t2), None);
    }

    #[test]
    fn table_is_bounded_and_keeps_limited_addresses() {
        let g = IpGuard::new(limits());
        let t = Instant::now();
        let blocked = ip(2);
        for _ in 0..3 {
            g.auth_failed(blocked, t);
        }
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let _ = g.admit(addr, t);
        }
        assert!(g.tracked() <= MAX_TRACKED);
        assert!(matches!(g.admit(blocked, t), Err(Refusal::Blocked(_))));
    }
}
