//! When a batch thread runs and how many rows it takes: a pure decision over (instances ready, age of the oldest,
//! now), so the timing rules are unit-tested with made-up instants instead of sleeps.
//!
//! Rules, in order:
//! 1. Enough rows to stop waiting (the largest preferred batch size, else the batch size), or no queue delay
//!    configured, or the oldest ready instance has waited `max_queue_delay`: run now.
//! 2. Otherwise wait until the oldest ready instance is `max_queue_delay` old (more instances may arrive).
//!
//! A run takes the largest preferred batch size that the ready instances fill, else all of them up to the batch
//! size. The delay is measured from the oldest instance's arrival, so an instance that already queued behind a
//! running batch never waits again.

use std::time::{Duration, Instant};

/// What the batch thread does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Run a batch of this many instances (1 ..= ready) now.
    Take(usize),
    /// Nothing to run yet: wait for more instances until this instant, then decide again.
    WaitUntil(Instant),
}

/// The scheduling knobs of one model queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BatchPolicy {
    /// Most instances per run.
    cap: usize,
    /// Preferred run sizes, ascending, each in `1..=cap`.
    preferred: Vec<usize>,
    /// Longest an instance waits for others to join its batch; zero never waits.
    delay: Duration,
}

impl BatchPolicy {
    /// `preferred` must be validated (`1..=cap`) by the caller; it is sorted and de-duplicated here.
    pub(crate) fn new(cap: usize, mut preferred: Vec<usize>, delay: Duration) -> BatchPolicy {
        preferred.sort_unstable();
        preferred.dedup();
        BatchPolicy {
            cap: cap.max(1),
            preferred,
            delay,
        }
    }

    /// How many ready instances end any wait at once.
    pub(crate) fn enough(&self) -> usize {
        self.preferred.last().copied().unwrap_or(self.cap)
    }

    /// Decides for `ready` (>= 1) instances that can share the next run, the oldest of them queued at `oldest`.
    pub(crate) fn decide(&self, ready: usize, oldest: Instant, now: Instant) -> Decision {
        if ready >= self.enough() || self.delay.is_zero() {
            return Decision::Take(self.size_for(ready));
        }
        let deadline = oldest.checked_add(self.delay).unwrap_or(now);
        if now >= deadline {
            Decision::Take(self.size_for(ready))
        } else {
            Decision::WaitUntil(deadline)
        }
    }

    /// Run size for `ready` instances: the largest preferred size they fill, else as many as fit.
    fn size_for(&self, ready: usize) -> usize {
        let fit = ready.clamp(1, self.cap);
        self.preferred.iter().rev().copied().find(|&p| p <= fit).unwrap_or(fit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_delay_takes_what_is_ready() {
        let policy = BatchPolicy::new(8, vec![], Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(policy.decide(1, t0, t0), Decision::Take(1));
        assert_eq!(policy.decide(5, t0, t0), Decision::Take(5));
        assert_eq!(policy.decide(20, t0, t0), Decision::Take(8), "capped at the batch size");
    }

    #[test]
    fn delay_waits_from_the_oldest_arrival_until_full_or_due() {
        let policy = BatchPolicy::new(4, vec![], 10 * MS);
        let t0 = Instant::now();
        assert_eq!(policy.decide(1, t0, t0), Decision::WaitUntil(t0 + 10 * MS));
        assert_eq!(policy.decide(3, t0, t0 + 4 * MS), Decision::WaitUntil(t0 + 10 * MS));
        assert_eq!(
            policy.decide(4, t0, t0 + 4 * MS),
            Decision::Take(4),
            "full: no more waiting"
        );
        assert_eq!(
            policy.decide(3, t0, t0 + 10 * MS),
            Decision::Take(3),
            "due: run what is there"
        );
        // an instance that queued behind a long run is already due
        assert_eq!(policy.decide(2, t0, t0 + 50 * MS), Decision::Take(2));
    }

    #[test]
    fn preferred_sizes_shape_runs_and_end_waits() {
        let policy = BatchPolicy::new(16, vec![8, 4, 8], Duration::ZERO);
        assert_eq!(policy.enough(), 8);
        let t0 = Instant::now();
        assert_eq!(
            policy.decide(3, t0, t0),
            Decision::Take(3),
            "no preferred size fits: take all"
        );
        assert_eq!(policy.decide(7, t0, t0), Decision::Take(4));
        assert_eq!(policy.decide(12, t0, t0), Decision::Take(8));
        assert_eq!(policy.decide(40, t0, t0), Decision::Take(8));

        let waiting = BatchPolicy::new(16, vec![4, 8], 5 * MS);
        assert_eq!(
            waiting.decide(4, t0, t0),
            Decision::WaitUntil(t0 + 5 * MS),
            "8 may still come"
        );
        assert_eq!(waiting.decide(8, t0, t0), Decision::Take(8));
        assert_eq!(waiting.decide(6, t0, t0 + 5 * MS), Decision::Take(4));
    }

    #[test]
    fn single_row_models_never_wait() {
        let policy = BatchPolicy::new(1, vec![], Duration::from_hours(1));
        let t0 = Instant::now();
        assert_eq!(policy.decide(1, t0, t0), Decision::Take(1));
    }
}
