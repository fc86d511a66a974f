//! The Python stage executor's busy clock: wall time during which it had at least one job, recorded by the
//! dispatcher and read at scrape time (`rustserve_python_busy_seconds_total`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Wall time during which the Python executor had at least one job (its busy time; jobs run one at a time).
#[derive(Debug, Default)]
pub struct BusyClock {
    state: Mutex<(usize, Option<Instant>)>,
    total_ns: AtomicU64,
}

/// Marks one job in flight on a `BusyClock` until dropped.
pub struct BusyGuard(Arc<BusyClock>);

impl BusyClock {
    /// Starts one job; the clock runs while any guard is alive.
    pub fn enter(self: &Arc<Self>) -> BusyGuard {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 == 0 {
            state.1 = Some(Instant::now());
        }
        state.0 += 1;
        BusyGuard(self.clone())
    }

    /// Busy time so far, the running stretch included.
    pub fn total(&self) -> Duration {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let running = state.1.map_or(Duration::ZERO, |since| since.elapsed());
        Duration::from_nanos(self.total_ns.load(Ordering::Relaxed)) + running
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(1);
        if state.0 == 0
            && let Some(since) = state.1.take()
        {
            self.0
                .total_ns
                .fetch_add(super::nanos(since.elapsed()), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_clock_counts_overlapping_jobs_once() {
        let clock = Arc::new(BusyClock::default());
        let a = clock.enter();
        let b = clock.enter();
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
        std::thread::sleep(Duration::from_millis(20));
        drop(b);
        let busy = clock.total();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.total(), busy, "idle time is not busy time");
        assert!(busy >= Duration::from_millis(40), "{busy:?}");
    }
}
