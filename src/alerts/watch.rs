//! The events nobody else notices, checked once a second: an expected group
//! that went quiet (and came back), a certificate within 14 days of expiry
//! (once a day each), and a group file that changed on disk (the config is
//! reloaded as on SIGHUP; a bad file keeps the last good list and the failed
//! reload raises its alert). Also the upstream probe's transitions.

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
}

/// Runs the checks every second until shutdown.
pub async fn watch(shared: Arc<Shared>, mut shutdown: Receiver<bool>) {
    let mut memory = Memory::default();
    loop {
        groups(&shared, &mut memory);
        certificates(&shared, &mut memory);
        group_files(&shared, &mut memory);
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

fn groups(shared: &Shared, memory: &mut Memory) {
    let overdue = crate::status::overdue_groups(shared);
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
