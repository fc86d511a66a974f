//! Request, stage, batch and queue metrics, recorded as requests are answered. `GET /metrics` is rendered by the
//! prometheus-client crate in the Prometheus text format (0.0.4): the families recorded on the request path
//! (`families.rs`) plus the values read at scrape time (`scrape.rs`). The per-method counters behind the Open
//! Inference Protocol's statistics extension (`/v2/models/{m}/stats`, gRPC `ModelStatistics`) are `statistics.rs`.
//!
//! Recording takes one read lock to find a method's counters (nested maps, so the lookup borrows the request's names
//! instead of allocating a key); after that it is atomics, one short mutex per histogram and one for the per-batch-size
//! table of the statistics extension.

mod busy;
mod families;
mod scrape;
mod statistics;

pub use busy::{BusyClock, BusyGuard};
pub use scrape::{QueueDepth, StuckCall};
pub use statistics::{BatchStat, DurationStat, MethodSnapshot};

use crate::batching::{BatchObserver, BatchRun};
use families::{Families, MethodLabels, ModelLabels, ModelSeries, ProtocolSeries};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use scrape::ScrapeTime;
use statistics::Statistics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

/// The wire a request came in on (the `protocol` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    MindsporeGrpc,
    MindsporeRest,
    KserveGrpc,
    KserveRest,
    /// Called from inside the process (tests, tools).
    Other,
}

impl Protocol {
    const ALL: [Protocol; 5] = [
        Protocol::MindsporeGrpc,
        Protocol::MindsporeRest,
        Protocol::KserveGrpc,
        Protocol::KserveRest,
        Protocol::Other,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::MindsporeGrpc => "mindspore_grpc",
            Protocol::MindsporeRest => "mindspore_rest",
            Protocol::KserveGrpc => "kserve_grpc",
            Protocol::KserveRest => "kserve_rest",
            Protocol::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Everything recorded for one method of one servable version. Its `/metrics` series are created on first use, so
/// only the protocols and stage kinds a method has answered on are listed.
pub struct MethodStats {
    has_python: bool,
    has_model: bool,
    labels: MethodLabels,
    families: Arc<Families>,
    protocols: [OnceLock<ProtocolSeries>; 5],
    instances: OnceLock<Histogram>,
    python_stage: OnceLock<Histogram>,
    model_stage: OnceLock<Histogram>,
    statistics: Statistics,
}

/// What one answered request contributes (see `MethodStats::record`).
#[derive(Clone, Copy, Debug)]
pub struct RequestRecord {
    pub protocol: Protocol,
    pub instances: usize,
    pub ok: bool,
    /// Decoding the wire request into instances (before `Service::predict`).
    pub decode: Duration,
    /// `Service::predict` from routing to the last stage.
    pub predict: Duration,
    /// Time inside Python stages (wall time, including waiting for the Python thread).
    pub python: Duration,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn seconds(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64()
}

#[allow(clippy::cast_precision_loss)] // instance counts are far below 2^52
fn instances(n: usize) -> f64 {
    n as f64
}

impl MethodStats {
    /// Records one answered request. The encode time of the reply is added later with `record_output`.
    pub fn record(&self, r: &RequestRecord) {
        let (decode, predict) = (nanos(r.decode), nanos(r.predict));
        let total = decode.saturating_add(predict);
        let series =
            self.protocols[r.protocol.index()].get_or_init(|| self.families.protocol(&self.labels, r.protocol));
        series.requests.inc();
        series.latency.observe(seconds(total));
        if !r.ok {
            series.failures.inc();
            self.statistics.failure(total);
            return;
        }
        let python = nanos(r.python).min(predict);
        self.instances
            .get_or_init(|| self.families.request_size(&self.labels))
            .observe(instances(r.instances));
        if self.has_python {
            self.python_stage
                .get_or_init(|| self.families.stage(&self.labels, "python"))
                .observe(seconds(python));
        }
        if self.has_model {
            // NOTE: the model stages' wall time, batch queue wait included: everything that is not Python.
            self.model_stage
                .get_or_init(|| self.families.stage(&self.labels, "model"))
                .observe(seconds(predict - python));
        }
        self.statistics.success(r.instances as u64, decode, predict);
    }

    /// Adds the time spent encoding a successful reply of `instances` instances.
    pub fn record_output(&self, instances: usize, encode: Duration) {
        self.statistics.output(instances as u64, nanos(encode));
    }

    /// The statistics-extension counters.
    pub fn snapshot(&self) -> MethodSnapshot {
        self.statistics.snapshot()
    }
}

/// Batch metrics of one model file (subgraph) of one servable version.
pub struct ModelStats {
    series: ModelSeries,
    failures: AtomicU64,
}

impl BatchObserver for ModelStats {
    fn batch_done(&self, run: &BatchRun) {
        self.series.batch_size.observe(instances(run.instances));
        self.series.queue_wait.observe(seconds(nanos(run.queue_wait)));
        self.series.run.observe(seconds(nanos(run.run)));
        if !run.ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type ByMethod<T> = HashMap<String, HashMap<u64, HashMap<String, Arc<T>>>>;

/// The server's metrics registry; one per `Service`.
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    methods: RwLock<ByMethod<MethodStats>>,
    models: RwLock<ByMethod<ModelStats>>,
    rejected: [Counter; 5],
    /// Python executor busy time.
    pub python_busy: Arc<BusyClock>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let families = Families::new(&mut registry);
        // Every protocol's rejections are listed from the start, 0 or not.
        let rejected = Protocol::ALL.map(|p| families.rejected(p));
        Metrics {
            registry,
            families: Arc::new(families),
            methods: RwLock::default(),
            models: RwLock::default(),
            rejected,
            python_busy: Arc::default(),
        }
    }
}

fn lookup<T>(map: &RwLock<ByMethod<T>>, servable: &str, version: u64, name: &str) -> Option<Arc<T>> {
    let map = map.read().unwrap_or_else(PoisonError::into_inner);
    map.get(servable)?.get(&version)?.get(name).cloned()
}

fn insert<T>(map: &RwLock<ByMethod<T>>, servable: &str, version: u64, name: &str, make: impl FnOnce() -> T) -> Arc<T> {
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    map.entry(servable.to_owned())
        .or_default()
        .entry(version)
        .or_default()
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

impl Metrics {
    /// The counters of a method, created on first use. `has_python` / `has_model` say which stage kinds it has.
    pub fn method(
        &self,
        servable: &str,
        version: u64,
        method: &str,
        has_python: bool,
        has_model: bool,
    ) -> Arc<MethodStats> {
        lookup(&self.methods, servable, version, method).unwrap_or_else(|| {
            insert(&self.methods, servable, version, method, || MethodStats {
                has_python,
                has_model,
                labels: MethodLabels {
                    servable: servable.to_owned(),
                    version,
                    method: method.to_owned(),
                },
                families: self.families.clone(),
                protocols: Default::default(),
                instances: OnceLock::new(),
                python_stage: OnceLock::new(),
                model_stage: OnceLock::new(),
                statistics: Statistics::default(),
            })
        })
    }

    /// The counters of a method when it has recorded anything.
    pub fn method_if_seen(&self, servable: &str, version: u64, method: &str) -> Option<Arc<MethodStats>> {
        lookup(&self.methods, servable, version, method)
    }

    /// The batch observer of a model file (`model` is the declare_model key, `subgraph` the file index). Its series
    /// are listed from now on, before the first batch.
    pub fn model(&self, servable: &str, version: u64, model: &str, subgraph: usize) -> Arc<ModelStats> {
        let name = format!("{model}\u{0}{subgraph}");
        lookup(&self.models, servable, version, &name).unwrap_or_else(|| {
            insert(&self.models, servable, version, &name, || ModelStats {
                series: self.families.model(&ModelLabels {
                    servable: servable.to_owned(),
                    version,
                    model: model.to_owned(),
                    subgraph,
                }),
                failures: AtomicU64::new(0),
            })
        })
    }

    /// Counts a request that never reached a method (unknown servable or method, server overloaded).
    pub fn reject(&self, protocol: Protocol) {
        self.rejected[protocol.index()].inc();
    }

    /// The Prometheus text exposition (format 0.0.4). `queues`, `in_flight` and `stuck` are read by the caller at
    /// scrape time.
    pub fn render(&self, queues: &[QueueDepth], in_flight: usize, stuck: Option<&StuckCall>) -> String {
        // The scrape-time values come from the caller, so their collector lives in a registry of this scrape only.
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(ScrapeTime {
            queues: queues.to_vec(),
            in_flight,
            busy: self.python_busy.clone(),
            stuck: stuck.cloned(),
        }));
        let mut out = String::with_capacity(8192);
        for registry in [&self.registry, &scrape] {
            // Writing to a String cannot fail, nor can the crate's metrics or ours; log rather than hide it if it did.
            if let Err(err) = prometheus_text::encode(&mut out, registry) {
                tracing::error!("rendering /metrics failed: {err}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ok: bool, instances: usize, predict_ms: u64, python_ms: u64) -> RequestRecord {
        RequestRecord {
            protocol: Protocol::KserveRest,
            instances,
            ok,
            decode: Duration::from_millis(1),
            predict: Duration::from_millis(predict_ms),
            python: Duration::from_millis(python_ms),
        }
    }

    fn render(metrics: &Metrics) -> String {
        metrics.render(&[], 0, None)
    }

    /// The value of the sample line that starts with `series` (name and labels).
    fn sample(text: &str, series: &str) -> f64 {
        let line = text
            .lines()
            .find(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
            .unwrap_or_else(|| panic!("no {series} in {text}"));
        line[series.len() + 1..].parse().expect("a number")
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
        let metrics = Metrics::default();
        let stats = metrics.method("s", 1, "m", false, false);
        for n in [1, 2, 3, 1000] {
            stats.record(&record(true, n, 1, 0));
        }
        let out = render(&metrics);
        let x = "rustserve_request_size_instances";
        let labels = "servable=\"s\",version=\"1\",method=\"m\"";
        assert!(out.contains(&format!("{x}_bucket{{{labels},le=\"1\"}} 1\n")), "{out}");
        assert!(out.contains(&format!("{x}_bucket{{{labels},le=\"2\"}} 2\n")), "{out}");
        assert!(out.contains(&format!("{x}_bucket{{{labels},le=\"4\"}} 3\n")), "{out}");
        assert!(out.contains(&format!("{x}_bucket{{{labels},le=\"512\"}} 3\n")), "{out}");
        assert!(
            out.contains(&format!("{x}_bucket{{{labels},le=\"+Inf\"}} 4\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{x}_sum{{{labels}}} 1006.0\n")), "{out}");
        assert!(out.contains(&format!("{x}_count{{{labels}}} 4\n")), "{out}");
        assert!(out.contains(&format!("# TYPE {x} histogram\n")), "{out}");
    }

    #[test]
    fn durations_render_in_seconds() {
        let metrics = Metrics::default();
        metrics.method("s", 1, "m", false, false).record(&RequestRecord {
            predict: Duration::from_micros(500),
            ..record(true, 1, 0, 0)
        });
        let out = render(&metrics);
        let d = "rustserve_request_duration_seconds";
        let labels = "servable=\"s\",version=\"1\",method=\"m\",protocol=\"kserve_rest\"";
        assert!(
            out.contains(&format!("{d}_bucket{{{labels},le=\"0.001\"}} 0\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{d}_bucket{{{labels},le=\"0.0025\"}} 1\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{d}_sum{{{labels}}} 0.0015\n")), "{out}");
    }

    #[test]
    fn statistics_split_success_failure_and_batch_sizes() {
        let metrics = Metrics::default();
        let stats = metrics.method("s", 1, "m", true, true);
        stats.record(&record(true, 2, 10, 4));
        stats.record(&record(true, 2, 20, 4));
        stats.record(&record(true, 1, 5, 1));
        stats.record(&record(false, 3, 7, 0));
        stats.record_output(2, Duration::from_millis(2));
        let snap = stats.snapshot();
        assert_eq!(snap.execution_count, 3);
        assert_eq!(snap.inference_count, 5);
        assert_eq!(snap.success.0, 3);
        assert_eq!(snap.success.1, (11 + 21 + 6 + 2) * 1_000_000);
        assert_eq!(snap.fail, (1, 8_000_000));
        assert_eq!(snap.compute_infer, (3, 35_000_000));
        assert_eq!(snap.compute_output, (3, 2_000_000));
        assert_eq!(snap.batches.len(), 2);
        assert_eq!(snap.batches[1].0, 2);
        assert_eq!(snap.batches[1].1.count, 2);
        assert_eq!(snap.batches[1].1.output_ns, 2_000_000);
        assert!(snap.last_inference_ms > 0);
        let out = render(&metrics);
        let stage = "rustserve_stage_duration_seconds";
        let labels = "servable=\"s\",version=\"1\",method=\"m\"";
        assert!(
            out.contains(&format!("{stage}_count{{{labels},stage=\"python\"}} 3\n")),
            "{out}"
        );
        // Sums are f64 seconds: exact to well within the nanosecond the durations were recorded in.
        let model_sum = sample(&out, &format!("{stage}_sum{{{labels},stage=\"model\"}}"));
        assert!((model_sum - f64::from(6 + 16 + 4) / 1e3).abs() < 1e-9, "{model_sum}");
    }

    #[test]
    fn render_names_labels_and_escapes() {
        let metrics = Metrics::default();
        metrics
            .method("a\"b", 2, "m", false, true)
            .record(&record(true, 1, 1, 0));
        metrics.reject(Protocol::MindsporeGrpc);
        metrics.model("a\"b", 2, "x.onnx", 0).batch_done(&BatchRun {
            instances: 3,
            queue_wait: Duration::from_micros(50),
            run: Duration::from_micros(500),
            ok: true,
        });
        let text = metrics.render(
            &[QueueDepth {
                servable: "s".into(),
                version: 1,
                model: "x.onnx".into(),
                subgraph: 0,
                depth: 7,
            }],
            4,
            Some(&StuckCall {
                servable: "s".into(),
                function: "s.f\"g".into(),
                method: "m".into(),
                running_for: Duration::from_millis(2500),
            }),
        );
        assert!(
            text.contains(
                "rustserve_python_stuck_call_seconds{servable=\"s\",function=\"s.f\\\"g\",method=\"m\"} 2.5\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "{text}");
        assert!(
            text.contains(
                "rustserve_requests_total{servable=\"a\\\"b\",version=\"2\",method=\"m\",protocol=\"kserve_rest\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("rustserve_requests_rejected_total{protocol=\"mindspore_grpc\"} 1\n"));
        assert!(text.contains("rustserve_batch_size_instances_bucket{servable=\"a\\\"b\",version=\"2\",model=\"x.onnx\",subgraph=\"0\",le=\"4\"} 1\n"), "{text}");
        assert!(text.contains(
            "rustserve_queue_depth_instances{servable=\"s\",version=\"1\",model=\"x.onnx\",subgraph=\"0\"} 7\n"
        ));
        assert!(text.contains("rustserve_requests_in_flight_requests 4\n"));
        assert!(!text.contains("stage=\"python\"}"), "no Python stage, no python series");
        assert!(text.contains("method=\"m\",stage=\"model\"} 1\n"), "{text}");
    }

    #[test]
    fn families_keep_their_names_types_and_help() {
        let metrics = Metrics::default();
        metrics.method("s", 1, "m", true, true).record(&record(true, 1, 2, 1));
        metrics.model("s", 1, "x.onnx", 0);
        let text = render(&metrics);
        for (name, kind) in [
            ("rustserve_requests_total", "counter"),
            ("rustserve_request_failures_total", "counter"),
            ("rustserve_requests_rejected_total", "counter"),
            ("rustserve_request_duration_seconds", "histogram"),
            ("rustserve_stage_duration_seconds", "histogram"),
            ("rustserve_request_size_instances", "histogram"),
            ("rustserve_batch_size_instances", "histogram"),
            ("rustserve_batch_queue_duration_seconds", "histogram"),
            ("rustserve_batch_run_duration_seconds", "histogram"),
            ("rustserve_queue_depth_instances", "gauge"),
            ("rustserve_requests_in_flight_requests", "gauge"),
            ("rustserve_python_busy_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_cpu_seconds_total", "counter"),
        ] {
            assert!(text.contains(&format!("\n# TYPE {name} {kind}\n")), "{name}: {text}");
        }
        assert!(text.starts_with(
            "# HELP rustserve_requests_total Requests answered, by servable, version, method and protocol.\n"
        ));
        assert!(text.contains(
            "# HELP rustserve_stage_duration_seconds Time per successful request in its Python stages \
             (stage=\"python\", waiting for the Python thread included) and in its model stages (stage=\"model\", \
             batch queue wait included).\n"
        ));
        assert!(text.contains(
            "# HELP rustserve_python_busy_seconds_total Wall time during which the Python stage executor had work.\n"
        ));
        assert!(!text.contains("# EOF"), "the Prometheus text format, not OpenMetrics");
        assert!(
            !text.contains("rustserve_python_stuck_call_seconds"),
            "absent when none"
        );
    }
}
