//! The events nobody else notices, checked once a second: an expected group
//! that went quiet (and came back), a certificate within 14 days of expiry
//! (once a day each), and a group file that changed on disk (the config is
//! reloaded as on SIGHUP; a bad file keeps the last good list and the failed
//! reload raises its alert), and overload: the guard shedding idle connections,
//! refusing new ones because it is full, or refusing logins because the
//! verification queue is full. Also the upstream probe's transitions.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch::Receiver;

use super::{raise, Alert};
use crate::config::FileStamp;
use crate::state::Shared;

const TICK: Duration = Duration::from_secs(1);
/// Certificates closer than this to expiry raise an alert.
pub const CERT_WARN_DAYS: i64 = 14;
const CERT_REPEAT: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct Memory {
    quiet: HashSet<String>,
    certs_warned: HashMap<String, Instant>,
    /// The stamp of each group file a reload was last tried for.
    files_tried: HashMap<PathBuf, Option<FileStamp>>,
    overload: OverloadTracker,
}

/// Runs the checks every second until shutdown.
pub async fn watch(shared: Arc<Shared>, mut shutdown: Receiver<bool>) {
    let mut memory = Memory::default();
    loop {
        groups(&shared, &mut memory);
        certificates(&shared, &mut memory);
        group_files(&shared, &mut memory);
        overload(&shared, &mut memory);
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

fn groups(shared: &Shared, memory: &mut Memory) {
    let overdue: Vec<_> = crate::status::group_freshness(shared).into_iter().filter(|g| g.stale).collect();
    for o in &overdue {
        if memory.quiet.insert(o.group.clone()) {
            raise(shared, Alert::group_quiet(&o.group, o.within, o.last_seen_ago));
        }
    }
    let rt = shared.runtime.load();
    let back: Vec<String> = memory.quiet.iter().filter(|g| !overdue.iter().any(|o| &o.group == *g)).cloned().collect();
    for group in back {
        memory.quiet.remove(&group);
        let expected = rt.config.status.expect.iter().any(|e| e.group == group);
        let Some(i) = rt.config.policy.group_index(&group).filter(|_| expected) else {
            continue; // no longer expected: nothing came back
        };
        let last = rt.group_stats[i].last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        raise(shared, Alert::group_recovered(&group, last.as_ref().map(|l| l.client_ip.as_str())));
    }
}

fn certificates(shared: &Shared, memory: &mut Memory) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    for (listener, info) in shared.tls.infos() {
        let days_left = (info.not_after_unix - now).div_euclid(86_400);
        if days_left >= CERT_WARN_DAYS {
            continue;
        }
        let key = format!("{listener} {}", info.file);
        if memory.certs_warned.get(&key).is_some_and(|t| t.elapsed() < CERT_REPEAT) {
            continue;
        }
        memory.certs_warned.insert(key, Instant::now());
        raise(shared, Alert::certificate_expiring(&listener, &info.file, &info.not_after, days_left));
    }
}

fn group_files(shared: &Shared, memory: &mut Memory) {
    let rt = shared.runtime.load();
    let changed = rt.config.group_files.iter().find_map(|f| {
        let now = FileStamp::of(&f.path);
        let tried = memory.files_tried.get(&f.path);
        (now != f.stamp && tried != Some(&now)).then(|| (f.path.clone(), f.group.clone(), now))
    });
    let Some((path, group, stamp)) = changed else { return };
    memory.files_tried.insert(path.clone(), stamp);
    let config = rt.config.source.path.clone();
    drop(rt);
    tracing::info!(group = %group, file = %path.display(), "group file changed: reloading");
    // A failure is logged, kept for /status and raises reload_failed inside `reload`.
    let _ = crate::reload(shared, &config);
}

/// How long the guard must go without shedding or refusing before "overload is over".
const OVERLOAD_CALM: Duration = Duration::from_secs(60);

/// The counters that only move when the guard sheds load. Per-address refusals are
/// left out: they hold one greedy client to its share, the guard is not full.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SheddingCounts {
    shed_idle: u64,
    refused_full: u64,
    logins_refused: u64,
}

impl SheddingCounts {
    fn read(shared: &Shared) -> SheddingCounts {
        let adm = &shared.admission.counters;
        SheddingCounts {
            shed_idle: adm.shed_idle.load(Ordering::Relaxed),
            refused_full: adm.refused_full.load(Ordering::Relaxed),
            logins_refused: shared.verify_pool.refused.load(Ordering::Relaxed),
        }
    }

    fn since(self, before: SheddingCounts) -> SheddingCounts {
        SheddingCounts {
            shed_idle: self.shed_idle.saturating_sub(before.shed_idle),
            refused_full: self.refused_full.saturating_sub(before.refused_full),
            logins_refused: self.logins_refused.saturating_sub(before.logins_refused),
        }
    }

    fn describe(self) -> String {
        format!(
            "{} idle connections shed, {} connections refused because the guard was full, {} logins refused because the verification queue was full",
            self.shed_idle, self.refused_full, self.logins_refused
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
enum OverloadChange {
    Started(String),
    Stopped(String),
}

/// Turns the shedding counters into one "started" and one "stopped" per episode.
#[derive(Debug, Default)]
struct OverloadTracker {
    /// Counters at the last tick (None before the first).
    last: Option<SheddingCounts>,
    /// While shedding: when the episode began, its counters then, and the last tick that shed.
    episode: Option<(SheddingCounts, Instant)>,
    last_shed_at: Option<Instant>,
}

impl OverloadTracker {
    fn step(&mut self, now_counts: SheddingCounts, now: Instant) -> Option<OverloadChange> {
        let last = self.last.replace(now_counts)?;
        let shed = now_counts != last;
        if shed {
            self.last_shed_at = Some(now);
        }
        match self.episode {
            None if shed => {
                self.episode = Some((last, now));
                Some(OverloadChange::Started(now_counts.since(last).describe()))
            }
            Some((at_start, began)) if !shed && self.last_shed_at.is_some_and(|t| now - t >= OVERLOAD_CALM) => {
                self.episode = None;
                let lasted = self.last_shed_at.map(|t| t - began).unwrap_or_default().as_secs();
                Some(OverloadChange::Stopped(format!("after {lasted}s: {}", now_counts.since(at_start).describe())))
            }
            _ => None,
        }
    }
}

fn overload(shared: &Shared, memory: &mut Memory) {
    match memory.overload.step(SheddingCounts::read(shared), Instant::now()) {
        Some(OverloadChange::Started(detail)) => raise(shared, Alert::overload_started(&detail)),
        Some(OverloadChange::Stopped(detail)) => raise(shared, Alert::overload_stopped(&detail)),
        None => {}
    }
}

/// Called by the upstream probe after each probe: alerts on a change of reachability.
/// `was_up` and `first` describe the state before this probe.
pub fn upstream_probed(shared: &Shared, authority: &str, was_up: bool, first: bool) {
    let up = &shared.stats.upstream;
    let now_up = up.reachable.load(Ordering::Relaxed);
    if !now_up && (was_up || first) {
        let error = up.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        raise(shared, Alert::upstream_down(authority, &error));
    } else if now_up && !was_up && !first {
        raise(shared, Alert::upstream_recovered(authority));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(shed_idle: u64, refused_full: u64, logins_refused: u64) -> SheddingCounts {
        SheddingCounts { shed_idle, refused_full, logins_refused }
    }

    #[test]
    fn one_started_and_one_stopped_per_shedding_episode() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = OverloadTracker::default();
        assert_eq!(t.step(counts(0, 0, 0), at(0)), None, "the first tick only sets the baseline");
        assert_eq!(t.step(counts(0, 0, 0), at(1)), None);
        let started = t.step(counts(3, 1, 0), at(2));
        assert!(
            matches!(&started, Some(OverloadChange::Started(d)) if d.starts_with("3 idle connections shed, 1 connections refused")),
            "{started:?}"
        );
        // Still shedding, then calm but not for long enough: nothing new.
        assert_eq!(t.step(counts(5, 1, 2), at(3)), None);
        assert_eq!(t.step(counts(5, 1, 2), at(30)), None);
        let stopped = t.step(counts(5, 1, 2), at(3 + OVERLOAD_CALM.as_secs()));
        assert!(
            matches!(&stopped, Some(OverloadChange::Stopped(d)) if d == "after 1s: 5 idle connections shed, 1 connections refused because the guard was full, 2 logins refused because the verification queue was full"),
            "{stopped:?}"
        );
        assert_eq!(t.step(counts(5, 1, 2), at(200)), None, "stopped once");
        assert!(matches!(t.step(counts(5, 1, 3), at(201)), Some(OverloadChange::Started(_))), "a new episode");
    }

    #[test]
    fn counters_that_start_above_zero_are_not_an_episode() {
        let now = Instant::now();
        let mut t = OverloadTracker::default();
        assert_eq!(t.step(counts(9, 9, 9), now), None);
        assert_eq!(t.step(counts(9, 9, 9), now + Duration::from_secs(1)), None);
    }
}
