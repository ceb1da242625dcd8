//! The allow groups' requests over the last 24 hours, by hour and outcome: the status
//! page's "is the integration getting through?" chart. Fixed size, one slot per hour.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub const HOURS: usize = 24;

/// How one request of an allowlisted client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The cart answered below 500.
    Served,
    /// The guard answered it (refused, bad request, ...).
    Refused,
    /// A 5xx: the cart failed, or the guard could not reach it (502/503/504).
    Failed,
}

impl Outcome {
    pub fn of(status: u16, from_upstream: bool) -> Outcome {
        match (from_upstream, status) {
            (_, 500..) if from_upstream || matches!(status, 502..=504) => Outcome::Failed,
            (true, _) => Outcome::Served,
            (false, _) => Outcome::Refused,
        }
    }
}

/// One hour of the chart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourCount {
    /// Unix time of the hour's start.
    pub hour_start: u64,
    pub served: u64,
    pub refused: u64,
    pub failed: u64,
}

#[derive(Default)]
pub struct Timeline {
    /// Indexed by (unix hour % HOURS); a slot whose hour is stale counts as empty.
    slots: Mutex<[HourCount; HOURS]>,
}

impl Timeline {
    pub fn record(&self, at_unix: u64, outcome: Outcome) {
        let hour_start = at_unix - at_unix % 3600;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[(hour_start / 3600) as usize % HOURS];
        if slot.hour_start != hour_start {
            *slot = HourCount { hour_start, ..HourCount::default() };
        }
        match outcome {
            Outcome::Served => slot.served += 1,
            Outcome::Refused => slot.refused += 1,
            Outcome::Failed => slot.failed += 1,
        }
    }

    /// The 24 hours ending with the current one, oldest first (empty hours included).
    pub fn last_24h(&self, now_unix: u64) -> Vec<HourCount> {
        let current = now_unix - now_unix % 3600;
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        (0..HOURS as u64)
            .rev()
            .map(|ago| {
                let hour_start = current.saturating_sub(ago * 3600);
                let slot = &slots[(hour_start / 3600) as usize % HOURS];
                if slot.hour_start == hour_start {
                    slot.clone()
                } else {
                    HourCount { hour_start, ..HourCount::default() }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_classified_by_who_answered() {
        assert_eq!(Outcome::of(200, true), Outcome::Served);
        assert_eq!(Outcome::of(404, true), Outcome::Served);
        assert_eq!(Outcome::of(500, true), Outcome::Failed);
        assert_eq!(Outcome::of(502, false), Outcome::Failed);
        assert_eq!(Outcome::of(504, false), Outcome::Failed);
        assert_eq!(Outcome::of(401, false), Outcome::Refused);
        assert_eq!(Outcome::of(400, false), Outcome::Refused);
    }

    #[test]
    fn hours_roll_over_and_old_counts_drop_out() {
        let t = Timeline::default();
        let day0: u64 = 500_000 * 3600;
        t.record(day0 + 10, Outcome::Served);
        t.record(day0 + 3599, Outcome::Refused);
        t.record(day0 + 3600, Outcome::Failed);
        let view = t.last_24h(day0 + 3600 + 5);
        assert_eq!(view.len(), HOURS);
        assert_eq!(view[HOURS - 1], HourCount { hour_start: day0 + 3600, served: 0, refused: 0, failed: 1 });
        assert_eq!(view[HOURS - 2], HourCount { hour_start: day0, served: 1, refused: 1, failed: 0 });
        // A day later the same slot is reused for a new hour: the old counts are gone.
        t.record(day0 + 24 * 3600, Outcome::Served);
        let view = t.last_24h(day0 + 24 * 3600);
        assert_eq!(view[HOURS - 1], HourCount { hour_start: day0 + 24 * 3600, served: 1, refused: 0, failed: 0 });
        assert_eq!(view[0].hour_start, day0 + 3600);
        assert_eq!(view[0].failed, 1);
        assert_eq!(view.iter().map(|h| h.served + h.refused + h.failed).sum::<u64>(), 2);
    }
}
