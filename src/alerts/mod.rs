//! Alerts: telling the owner when something needs them, without a monitoring
//! stack. Events are raised where they happen (`raise`), rate-limited per kind
//! and key, queued, and delivered by one background task to every sink of the
//! current config (`alerts.sinks`: webhooks and commands, see `sinks`).
//!
//! Raising never blocks and never fails the caller: with no sinks it does
//! nothing, a full queue drops the alert (counted), a failing sink is counted
//! and shown in /status. `watch` raises the events nobody else notices (a
//! quiet group, an expiring certificate, overload shedding) and reloads when a
//! group file changes. For other modules the whole API is
//! `alerts::raise(&shared, Alert::new(kind, key, text))` or one of `Alert`'s constructors.

pub mod events;
pub mod sinks;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch as tokio_watch, Semaphore};

use crate::access_log::rfc3339;
use crate::config::{Config, SinkConfig};
use crate::state::Shared;
pub use events::{Alert, AlertKind};
pub use watch::{upstream_probed, watch, CERT_WARN_DAYS};

/// Alerts waiting for delivery; beyond this they are dropped (and counted).
const QUEUE: usize = 256;
/// Deliveries running at once (a slow sink must not hold up the next alert).
const PARALLEL: usize = 16;
/// Remembered (kind, key) pairs; the oldest are forgotten first.
const MAX_KEYS: usize = 10_000;

/// What outlives a config: the queue, the rate-limit memory and what each sink answered.
pub struct Alerts {
    queue: mpsc::Sender<Alert>,
    inbox: Mutex<Option<mpsc::Receiver<Alert>>>,
    ledger: Mutex<Ledger>,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Ledger {
    last_raised: HashMap<(AlertKind, String), Instant>,
    suppressed: BTreeMap<AlertKind, u64>,
    /// (sent, failed) by sink name and kind.
    counts: BTreeMap<(String, AlertKind), (u64, u64)>,
    sinks: BTreeMap<String, SinkStatus>,
}

/// One sink in /status: its last success and its last failure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SinkStatus {
    pub name: String,
    /// webhook or command (the URL is a secret and is not shown).
    pub kind: String,
    pub sent: u64,
    pub failed: u64,
    pub last_sent_at: Option<String>,
    pub last_sent_kind: Option<AlertKind>,
    pub last_answer: Option<String>,
    pub last_error_at: Option<String>,
    pub last_error: Option<String>,
}

/// How one sink fared with one kind of alert.
pub struct Deliveries {
    pub sink: String,
    pub kind: AlertKind,
    pub sent: u64,
    pub failed: u64,
}

/// The alerts part of /status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertsStatus {
    pub sinks: Vec<SinkStatus>,
    /// Alerts not sent because the same kind and key was sent within `alerts.repeat_after`.
    pub suppressed: u64,
    /// Alerts dropped because the queue was full.
    pub dropped: u64,
}

impl Default for Alerts {
    fn default() -> Self {
        let (queue, inbox) = mpsc::channel(QUEUE);
        Alerts { queue, inbox: Mutex::new(Some(inbox)), ledger: Mutex::default(), dropped: AtomicU64::new(0) }
    }
}

/// Raises `alert` under the current config: sent unless rate-limited or there are no sinks.
pub fn raise(shared: &Shared, alert: Alert) {
    let rt = shared.runtime.load();
    shared.alerts.raise(&rt.config, alert);
}

impl Alerts {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `alert` for every sink of `config`; returns false when it was not queued.
    pub fn raise(&self, config: &Config, alert: Alert) -> bool {
        if config.alerts.sinks.is_empty() {
            return false;
        }
        let now = Instant::now();
        {
            let mut ledger = self.ledger();
            let key = (alert.kind, alert.key.clone());
            if ledger.last_raised.get(&key).is_some_and(|t| now.duration_since(*t) < config.alerts.repeat_after) {
                *ledger.suppressed.entry(alert.kind).or_default() += 1;
                tracing::debug!(kind = alert.kind.as_str(), key = %alert.key, "alert suppressed: sent recently");
                return false;
            }
            if ledger.last_raised.len() >= MAX_KEYS {
                let window = config.alerts.repeat_after;
                ledger.last_raised.retain(|_, t| now.duration_since(*t) < window);
                if ledger.last_raised.len() >= MAX_KEYS {
                    *ledger.suppressed.entry(alert.kind).or_default() += 1;
                    return false;
                }
            }
            ledger.last_raised.insert(key, now);
        }
        tracing::info!(kind = alert.kind.as_str(), key = %alert.key, "alert: {}", alert.summary);
        if self.queue.try_send(alert).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn record(&self, sink: &SinkConfig, kind: AlertKind, result: &Result<String, String>) {
        let mut ledger = self.ledger();
        let counts = ledger.counts.entry((sink.name.clone(), kind)).or_default();
        match result {
            Ok(_) => counts.0 += 1,
            Err(_) => counts.1 += 1,
        }
        let s = ledger.sinks.entry(sink.name.clone()).or_default();
        let now = rfc3339(SystemTime::now());
        match result {
            Ok(answer) => {
                s.last_sent_at = Some(now);
                s.last_sent_kind = Some(kind);
                s.last_answer = Some(answer.clone());
            }
            Err(e) => {
                s.last_error_at = Some(now);
                s.last_error = Some(e.clone());
            }
        }
    }

    /// The sinks of `config` with what they did so far (by name, so counts survive reloads).
    pub fn status(&self, config: &Config) -> AlertsStatus {
        let ledger = self.ledger();
        let sinks = config
            .alerts
            .sinks
            .iter()
            .map(|sink| {
                let mut s = ledger.sinks.get(&sink.name).cloned().unwrap_or_default();
                s.name = sink.name.clone();
                s.kind = sink.target.kind().to_string();
                for ((name, _), (sent, failed)) in &ledger.counts {
                    if name == &sink.name {
                        s.sent += sent;
                        s.failed += failed;
                    }
                }
                s
            })
            .collect();
        AlertsStatus {
            sinks,
            suppressed: ledger.suppressed.values().sum(),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Deliveries by sink and kind, for /metrics.
    pub fn deliveries(&self) -> Vec<Deliveries> {
        let ledger = self.ledger();
        ledger
            .counts
            .iter()
            .map(|((sink, kind), (sent, failed))| Deliveries {
                sink: sink.clone(),
                kind: *kind,
                sent: *sent,
                failed: *failed,
            })
            .collect()
    }

    /// Alerts held back by the rate limit, by kind.
    pub fn suppressed(&self) -> Vec<(AlertKind, u64)> {
        self.ledger().suppressed.iter().map(|(k, n)| (*k, *n)).collect()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Delivers queued alerts to the sinks of the config current at delivery, until shutdown.
pub async fn deliver_queued(shared: Arc<Shared>, mut shutdown: tokio_watch::Receiver<bool>) {
    let Some(mut inbox) = shared.alerts.inbox.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let running = Arc::new(Semaphore::new(PARALLEL));
    loop {
        let alert = tokio::select! {
            a = inbox.recv() => match a { Some(a) => a, None => return },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let sinks = shared.runtime.load().config.alerts.sinks.clone();
        for sink in sinks {
            let Ok(permit) = running.clone().acquire_owned().await else { return };
            let (shared, alert) = (shared.clone(), alert.clone());
            tokio::spawn(async move {
                let result = sinks::deliver(&sink, &alert).await;
                match &result {
                    Ok(answer) => tracing::info!(sink = %sink.name, kind = alert.kind.as_str(), %answer, "alert sent"),
                    Err(error) => {
                        tracing::warn!(sink = %sink.name, kind = alert.kind.as_str(), %error, "alert not delivered")
                    }
                }
                shared.alerts.record(&sink, alert.kind, &result);
                drop(permit);
            });
        }
    }
}

/// `cartguard alert test`: one test alert to every sink of `config`, at once; (sink, kind, answer).
pub async fn test_all(config: &Config) -> Vec<(String, &'static str, Result<String, String>)> {
    let alert = Alert::test();
    let tasks: Vec<_> = config
        .alerts
        .sinks
        .iter()
        .map(|sink| {
            let (sink, alert) = (sink.clone(), alert.clone());
            tokio::spawn(async move { sinks::send_once(&sink, &alert).await })
        })
        .collect();
    let mut out = Vec::new();
    for (sink, task) in config.alerts.sinks.iter().zip(tasks) {
        let result = task.await.unwrap_or_else(|e| Err(format!("delivery task failed: {e}")));
        out.push((sink.name.clone(), sink.target.kind(), result));
    }
    out
}
