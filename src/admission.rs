//! Connection admission: who may hold one of the guard's connections when it is full.
//!
//! Every connection registers under its client address as known at accept time
//! (the TCP peer, or the source a PROXY header carried). Ordinary addresses share
//! `max_connections - reserved_for_allowlisted` slots, each address at most
//! `max_connections_per_address`. Addresses an allow group admits, and trusted
//! proxies (whose clients are not known until a request arrives), are protected:
//! never capped per address, never shed, and they may use every slot. When a slot
//! is needed and none is free, the idlest connection (nothing of a request read,
//! nothing in flight) of the ordinary address holding the most is shed, the way
//! nginx drains reusable connections. What cannot be admitted is closed at once
//! (there is no request yet to answer) and counted by reason; it never waits in
//! the listen backlog.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::config::Limits;
use crate::conn::Activity;
use crate::policy::Policy;

/// Why a connection was closed by admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address already holds `max_connections_per_address`.
    PerAddress,
    /// No free slot, and no idle connection to shed.
    Full,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::PerAddress => "per_address_limit",
            Refused::Full => "connections_full",
        }
    }
}

/// Counters for /metrics and /status.
#[derive(Default)]
pub struct AdmissionCounters {
    pub refused_per_address: AtomicU64,
    pub refused_full: AtomicU64,
    /// Idle connections closed to make room for another.
    pub shed_idle: AtomicU64,
}

/// The per-address table of open connections.
#[derive(Default)]
pub struct Admission {
    table: Mutex<Table>,
    next_id: AtomicU64,
    pub counters: AdmissionCounters,
}

#[derive(Default)]
struct Table {
    /// Ordinary connections by client address.
    ordinary: HashMap<IpAddr, Vec<Arc<Slot>>>,
    ordinary_count: usize,
    protected_count: usize,
}

/// One admitted connection, as the table sees it.
struct Slot {
    id: u64,
    activity: Arc<Activity>,
    /// Set when admission wants the connection closed; it holds a permit, so a
    /// connection still in its TLS handshake sees it once it starts serving.
    shed: Notify,
}

/// Held by an admitted connection; dropping it frees the slot.
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
    slot: Arc<Slot>,
    protected: bool,
}

impl Ticket {
    /// Resolves when admission sheds this connection to make room.
    pub async fn shed(&self) {
        self.slot.shed.notified().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self.admission.table.lock().unwrap_or_else(|p| p.into_inner());
        if self.protected {
            t.protected_count -= 1;
            return;
        }
        t.remove(self.ip, self.slot.id);
    }
}

/// Addresses admission never caps nor sheds: members of a group some rule allows,
/// and trusted proxies.
pub fn is_protected(policy: &Policy, ip: IpAddr) -> bool {
    policy.client_ip.trusted_proxies.contains(ip)
        || policy.rules.iter().any(|r| r.allow.iter().any(|&g| policy.groups[g].set.contains(ip)))
}

impl Admission {
    /// Admits a connection from `ip` or says why not; may shed another to make room.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        protected: bool,
        activity: Arc<Activity>,
        limits: &Limits,
    ) -> Result<Ticket, Refused> {
        let ip = ip.to_canonical();
        let slot = Arc::new(Slot { id: self.next_id.fetch_add(1, Ordering::Relaxed), activity, shed: Notify::new() });
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if protected {
            if t.protected_count >= limits.max_connections {
                return Err(self.refuse(Refused::Full));
            }
            // Over the total, make room; an allowlisted client is admitted even when
            // every other connection is busy (bounded: others never exceed their share).
            if t.ordinary_count + t.protected_count >= limits.max_connections {
                self.shed_idlest(&mut t);
            }
            t.protected_count += 1;
        } else {
            if t.ordinary.get(&ip).map_or(0, Vec::len) >= limits.max_connections_per_address {
                return Err(self.refuse(Refused::PerAddress));
            }
            let share = limits.max_connections - limits.reserved_for_allowlisted;
            let total_full = t.ordinary_count + t.protected_count >= limits.max_connections;
            if (t.ordinary_count >= share || total_full) && !self.shed_idlest(&mut t) {
                return Err(self.refuse(Refused::Full));
            }
            t.ordinary.entry(ip).or_default().push(slot.clone());
            t.ordinary_count += 1;
        }
        drop(t);
        Ok(Ticket { admission: self.clone(), ip, slot, protected })
    }

    /// Ordinary and protected connections open now.
    pub fn open(&self) -> (usize, usize) {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        (t.ordinary_count, t.protected_count)
    }

    /// Refusals since start, by reason label.
    pub fn refused_by_reason(&self) -> [(&'static str, u64); 2] {
        [
            (Refused::PerAddress.as_str(), self.counters.refused_per_address.load(Ordering::Relaxed)),
            (Refused::Full.as_str(), self.counters.refused_full.load(Ordering::Relaxed)),
        ]
    }

    fn refuse(&self, why: Refused) -> Refused {
        let counter = match why {
            Refused::PerAddress => &self.counters.refused_per_address,
            Refused::Full => &self.counters.refused_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        why
    }

    /// Sheds the idlest idle connection of the ordinary address holding the most
    /// (the next one down if that address has none idle). True if one was shed.
    fn shed_idlest(&self, t: &mut Table) -> bool {
        let mut by_count: Vec<(usize, IpAddr)> = t.ordinary.iter().map(|(ip, v)| (v.len(), *ip)).collect();
        by_count.sort_unstable_by_key(|&(count, _)| std::cmp::Reverse(count));
        for (_, ip) in by_count {
            let idlest = t.ordinary.get(&ip).and_then(|slots| {
                slots
                    .iter()
                    .filter(|s| s.activity.is_idle())
                    .max_by_key(|s| s.activity.idle_for())
                    .map(|s| (s.id, s.clone()))
            });
            if let Some((id, slot)) = idlest {
                t.remove(ip, id);
                slot.shed.notify_one();
                self.counters.shed_idle.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }
}

impl Table {
    fn remove(&mut self, ip: IpAddr, id: u64) {
        let Some(slots) = self.ordinary.get_mut(&ip) else { return };
        let Some(at) = slots.iter().position(|s| s.id == id) else { return };
        slots.swap_remove(at);
        self.ordinary_count -= 1;
        if slots.is_empty() {
            self.ordinary.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max: usize, per_address: usize, reserved: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16384,
            max_body_bytes: 1024,
            min_body_rate: 1024,
            max_connections: max,
            max_connections_per_address: per_address,
            reserved_for_allowlisted: reserved,
            shutdown_grace: Duration::from_secs(1),
            tls_handshake_timeout: Duration::from_secs(1),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn busy() -> Arc<Activity> {
        let a = Arc::new(Activity::new());
        std::mem::forget(a.request());
        a
    }

    #[test]
    fn an_address_over_its_cap_is_refused_and_counted() {
        let adm = Arc::new(Admission::default());
        let l = limits(100, 2, 10);
        let _a = adm.admit(ip("192.0.2.1"), false, busy(), &l).unwrap();
        let _b = adm.admit(ip("192.0.2.1"), false, busy(), &l).unwrap();
        assert_eq!(adm.admit(ip("192.0.2.1"), false, busy(), &l).err(), Some(Refused::PerAddress));
        assert!(adm.admit(ip("192.0.2.2"), false, busy(), &l).is_ok());
        assert_eq!(adm.counters.refused_per_address.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_freed_slot_is_usable_again() {
        let adm = Arc::new(Admission::default());
        let l = limits(100, 1, 10);
        let a = adm.admit(ip("192.0.2.1"), false, busy(), &l).unwrap();
        assert_eq!(adm.admit(ip("192.0.2.1"), false, busy(), &l).err(), Some(Refused::PerAddress));
        drop(a);
        let _again = adm.admit(ip("192.0.2.1"), false, busy(), &l).unwrap();
        assert_eq!(adm.open(), (1, 0));
    }

    #[test]
    fn others_leave_the_reserve_free_and_shed_their_idlest_when_full() {
        let adm = Arc::new(Admission::default());
        let l = limits(4, 10, 2);
        let idle = Arc::new(Activity::new());
        let held_idle = adm.admit(ip("192.0.2.1"), false, idle, &l).unwrap();
        let _busy = adm.admit(ip("192.0.2.1"), false, busy(), &l).unwrap();
        // The ordinary share (4 - 2) is full: the idle one makes room.
        let _c = adm.admit(ip("192.0.2.2"), false, busy(), &l).unwrap();
        assert_eq!(adm.counters.shed_idle.load(Ordering::Relaxed), 1);
        // Now every ordinary connection is busy: refused.
        assert_eq!(adm.admit(ip("192.0.2.3"), false, busy(), &l).err(), Some(Refused::Full));
        drop(held_idle);
        assert_eq!(adm.open(), (2, 0));
    }

    #[test]
    fn allowlisted_addresses_get_in_when_every_other_slot_is_held() {
        let adm = Arc::new(Admission::default());
        let l = limits(3, 10, 1);
        let idle = (0..2).map(|_| adm.admit(ip("192.0.2.1"), false, Arc::new(Activity::new()), &l).unwrap());
        let _held: Vec<Ticket> = idle.collect();
        let _p1 = adm.admit(ip("127.0.0.1"), true, busy(), &l).unwrap();
        // Total full: the next allowlisted connection sheds an idle ordinary one.
        let _p2 = adm.admit(ip("127.0.0.1"), true, busy(), &l).unwrap();
        assert_eq!(adm.counters.shed_idle.load(Ordering::Relaxed), 1);
        assert_eq!(adm.open(), (1, 2));
    }
}
