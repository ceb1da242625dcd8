//! Failed-login accounting: after `max_failures` within `failure_window`, a
//! client address is answered 429 for `ban`, right password or not.
//!
//! The table is bounded: an attacker rotating addresses cannot grow it past
//! `CAPACITY`; when full, expired entries are swept, and if it is still full new
//! addresses are not tracked (and a warning is logged) rather than evicting bans.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    banned_at: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy)]
pub struct BanPolicy {
    pub max_failures: u32,
    pub window: Duration,
    pub ban: Duration,
}

#[derive(Default)]
pub struct BanTable {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    capacity_override: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BanView {
    pub ip: String,
    pub seconds_left: u64,
    /// When the ban started (RFC 3339).
    pub since: String,
}

impl BanTable {
    pub fn with_capacity(capacity: usize) -> BanTable {
        BanTable { entries: Mutex::default(), capacity_override: Some(capacity) }
    }

    fn capacity(&self) -> usize {
        self.capacity_override.unwrap_or(CAPACITY)
    }

    /// Time left on a ban, if the address is banned now.
    pub fn banned(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(&ip).and_then(|e| e.banned_until).filter(|&until| until > now).map(|until| until - now)
    }

    /// Counts a failure; returns true when this failure starts a ban.
    pub fn record_failure(&self, ip: IpAddr, policy: BanPolicy, now: Instant) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.contains_key(&ip) && entries.len() >= self.capacity() {
            let horizon = policy.window.max(policy.ban);
            entries
                .retain(|_, e| now.duration_since(e.window_start) < horizon || e.banned_until.is_some_and(|u| u > now));
            if entries.len() >= self.capacity() {
                tracing::warn!(capacity = self.capacity(), "failed-login table is full; not tracking a new address");
                return false;
            }
        }
        let entry =
            entries.entry(ip).or_insert(Entry { failures: 0, window_start: now, banned_until: None, banned_at: None });
        if now.duration_since(entry.window_start) >= policy.window {
            entry.failures = 0;
            entry.window_start = now;
        }
        entry.failures += 1;
        if entry.failures >= policy.max_failures && entry.banned_until.is_none_or(|u| u <= now) {
            entry.banned_until = Some(now + policy.ban);
            entry.banned_at = Some(SystemTime::now());
            entry.failures = 0;
            entry.window_start = now;
            return true;
        }
        false
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn active(&self, now: Instant) -> Vec<BanView> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<BanView> = entries
            .iter()
            .filter_map(|(ip, e)| {
                let until = e.banned_until.filter(|&u| u > now)?;
                Some(BanView {
                    ip: ip.to_string(),
                    seconds_left: (until - now).as_secs(),
                    since: crate::access_log::rfc3339(e.banned_at.unwrap_or(SystemTime::UNIX_EPOCH)),
                })
            })
            .collect();
        out.sort_by(|a, b| a.ip.cmp(&b.ip));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: BanPolicy = BanPolicy { max_failures: 3, window: Duration::from_secs(60), ban: Duration::from_secs(120) };

    #[test]
    fn bans_after_max_failures_within_window() {
        let t = BanTable::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        assert!(!t.record_failure(ip, P, now));
        assert!(!t.record_failure(ip, P, now));
        assert!(t.banned(ip, now).is_none());
        assert!(t.record_failure(ip, P, now));
        assert_eq!(t.banned(ip, now), Some(Duration::from_secs(120)));
        assert!(t.banned(ip, now + Duration::from_secs(121)).is_none());
        assert!(t.banned("192.0.2.2".parse().unwrap(), now).is_none());
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = BanTable::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        t.record_failure(ip, P, now);
        t.record_failure(ip, P, now);
        assert!(!t.record_failure(ip, P, now + Duration::from_secs(61)));
        assert!(t.banned(ip, now + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn table_is_bounded_and_keeps_existing_bans() {
        let t = BanTable::with_capacity(100);
        let now = Instant::now();
        let victim: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            t.record_failure(victim, P, now);
        }
        for i in 0..10_000u32 {
            t.record_failure(IpAddr::V4((0x0a000000 + i).into()), P, now);
        }
        assert!(t.len() <= 100);
        assert!(t.banned(victim, now).is_some());
        // Once the window has passed, old entries are swept to make room.
        let later = now + Duration::from_secs(200);
        t.record_failure("203.0.113.1".parse().unwrap(), P, later);
        assert!(t.len() <= 2, "{}", t.len());
    }
}
