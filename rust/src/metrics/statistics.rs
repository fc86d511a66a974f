//! The per-method counters of the Open Inference Protocol's statistics extension (`/v2/models/{m}/stats`, gRPC
//! `ModelStatistics`): counts and nanosecond totals in atomics, read as a `MethodSnapshot`. `/metrics` does not show
//! them; it has its own series (see `families.rs`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Count and total nanoseconds, as the statistics extension's `StatisticDuration`.
#[derive(Default)]
pub struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    fn add(&self, count: u64, ns: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// (count, ns).
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// Per-batch-size totals of the statistics extension (a "batch" is one request of that many instances).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStat {
    pub count: u64,
    pub input_ns: u64,
    pub infer_ns: u64,
    pub output_ns: u64,
}

/// A snapshot of one method's statistics-extension counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodSnapshot {
    /// Milliseconds since the epoch of the last successful request, 0 when none.
    pub last_inference_ms: u64,
    /// Instances answered successfully.
    pub inference_count: u64,
    /// Successful method executions (requests).
    pub execution_count: u64,
    /// (count, ns) each.
    pub success: (u64, u64),
    pub fail: (u64, u64),
    pub queue: (u64, u64),
    pub compute_input: (u64, u64),
    pub compute_infer: (u64, u64),
    pub compute_output: (u64, u64),
    /// Keyed by instances per request.
    pub batches: Vec<(u64, BatchStat)>,
}

/// One method's statistics-extension counters. Lock-free except for one short mutex on the per-batch-size table.
#[derive(Default)]
pub(super) struct Statistics {
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: DurationStat,
    fail: DurationStat,
    queue: DurationStat,
    compute_input: DurationStat,
    compute_infer: DurationStat,
    compute_output: DurationStat,
    batches: Mutex<BTreeMap<u64, BatchStat>>,
}

impl Statistics {
    /// A failed request that took `ns` in all.
    pub(super) fn failure(&self, ns: u64) {
        self.fail.add(1, ns);
    }

    /// A successful request of `instances` instances: `decode_ns` to decode it, `predict_ns` to run its method.
    pub(super) fn success(&self, instances: u64, decode_ns: u64, predict_ns: u64) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.inference_count.fetch_add(instances, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.success.add(1, decode_ns.saturating_add(predict_ns));
        // Requests are never held back before their stages run, so the scheduling queue time is zero; waiting in a
        // model's batch queue is part of compute_infer.
        self.queue.add(1, 0);
        self.compute_input.add(1, decode_ns);
        self.compute_infer.add(1, predict_ns);
        self.compute_output.add(1, 0);
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = batches.entry(instances).or_default();
        entry.count += 1;
        entry.input_ns += decode_ns;
        entry.infer_ns += predict_ns;
    }

    /// The time spent encoding a successful reply of `instances` instances.
    pub(super) fn output(&self, instances: u64, ns: u64) {
        self.compute_output.add(0, ns);
        self.success.add(0, ns);
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = batches.get_mut(&instances) {
            entry.output_ns += ns;
        }
    }

    pub(super) fn snapshot(&self) -> MethodSnapshot {
        let batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        MethodSnapshot {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: self.success.get(),
            fail: self.fail.get(),
            queue: self.queue.get(),
            compute_input: self.compute_input.get(),
            compute_infer: self.compute_infer.get(),
            compute_output: self.compute_output.get(),
            batches: batches.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }
}
