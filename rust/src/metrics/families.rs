//! The `/metrics` families recorded on the request path: names, HELP texts, label sets and bucket layouts, held in
//! prometheus-client `Family`s and registered once in the server's `Registry`. Callers create a series the first
//! time it has something to count and keep its handle, so recording never looks a label set up again.

use super::Protocol;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::fmt::Write as _;

/// Upper bounds of the duration histograms, in seconds (100 µs .. 10 s).
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the size histograms (instances per request or per batch).
const SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

fn durations() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn sizes() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.label())
    }
}

/// The labels of one method of one servable version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MethodLabels {
    pub servable: String,
    pub version: u64,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    #[prometheus(flatten)]
    method: MethodLabels,
    protocol: Protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    #[prometheus(flatten)]
    method: MethodLabels,
    stage: &'static str,
}

/// The labels of one model file (subgraph) of one servable version; also those of its queue depth.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ModelLabels {
    pub servable: String,
    pub version: u64,
    pub model: String,
    pub subgraph: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    protocol: Protocol,
}

/// Registers a handle on `family` (clones share their series) and hands the family back.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, family: M) -> M {
    registry.register(name, help, family.clone());
    family
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every family recorded on the request path.
pub(super) struct Families {
    requests: Family<ProtocolLabels, Counter>,
    failures: Family<ProtocolLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    latency: Histograms<ProtocolLabels>,
    stages: Histograms<StageLabels>,
    request_size: Histograms<MethodLabels>,
    batch_size: Histograms<ModelLabels>,
    batch_queue: Histograms<ModelLabels>,
    batch_run: Histograms<ModelLabels>,
}

/// One method's series on one protocol.
pub(super) struct ProtocolSeries {
    pub requests: Counter,
    pub failures: Counter,
    pub latency: Histogram,
}

/// One model file's batch series.
pub(super) struct ModelSeries {
    pub batch_size: Histogram,
    pub queue_wait: Histogram,
    pub run: Histogram,
}

impl Families {
    /// Creates the families and registers them in `registry`, in the order `/metrics` lists them. Counter names
    /// leave out `_total`, which the encoder appends; the registry appends the HELP texts' final full stop.
    pub(super) fn new(registry: &mut Registry) -> Families {
        Families {
            requests: registered(
                registry,
                "rustserve_requests",
                "Requests answered, by servable, version, method and protocol",
                Family::default(),
            ),
            failures: registered(
                registry,
                "rustserve_request_failures",
                "Requests that failed (any instance failed), by servable, version, method and protocol",
                Family::default(),
            ),
            rejected: registered(
                registry,
                "rustserve_requests_rejected",
                "Requests that reached no method (unknown servable or method, overload), by protocol",
                Family::default(),
            ),
            latency: registered(
                registry,
                "rustserve_request_duration_seconds",
                "Request latency inside the server (decode and method run), by protocol",
                Family::new_with_constructor(durations),
            ),
            stages: registered(
                registry,
                "rustserve_stage_duration_seconds",
                "Time per successful request in its Python stages (stage=\"python\", waiting for the Python thread \
                 included) and in its model stages (stage=\"model\", batch queue wait included)",
                Family::new_with_constructor(durations),
            ),
            request_size: registered(
                registry,
                "rustserve_request_size_instances",
                "Instances per successful request",
                Family::new_with_constructor(sizes),
            ),
            batch_size: registered(
                registry,
                "rustserve_batch_size_instances",
                "Instances per model run (padding rows not counted)",
                Family::new_with_constructor(sizes),
            ),
            batch_queue: registered(
                registry,
                "rustserve_batch_queue_duration_seconds",
                "How long the oldest instance of each model run waited in the model's queue",
                Family::new_with_constructor(durations),
            ),
            batch_run: registered(
                registry,
                "rustserve_batch_run_duration_seconds",
                "Model run time per batch",
                Family::new_with_constructor(durations),
            ),
        }
    }

    /// A method's request, failure and latency series on `protocol`. The failure count is listed with the requests,
    /// 0 or not.
    pub(super) fn protocol(&self, method: &MethodLabels, protocol: Protocol) -> ProtocolSeries {
        let labels = ProtocolLabels {
            method: method.clone(),
            protocol,
        };
        ProtocolSeries {
            requests: self.requests.get_or_create_owned(&labels),
            failures: self.failures.get_or_create_owned(&labels),
            latency: self.latency.get_or_create_owned(&labels),
        }
    }

    /// The time a method spends in its `stage` kind ("python" or "model").
    pub(super) fn stage(&self, method: &MethodLabels, stage: &'static str) -> Histogram {
        self.stages.get_or_create_owned(&StageLabels {
            method: method.clone(),
            stage,
        })
    }

    /// A method's instances per request.
    pub(super) fn request_size(&self, method: &MethodLabels) -> Histogram {
        self.request_size.get_or_create_owned(method)
    }

    /// The rejected-request counter of `protocol`.
    pub(super) fn rejected(&self, protocol: Protocol) -> Counter {
        self.rejected.get_or_create_owned(&RejectLabels { protocol })
    }

    /// A model file's batch series.
    pub(super) fn model(&self, labels: &ModelLabels) -> ModelSeries {
        ModelSeries {
            batch_size: self.batch_size.get_or_create_owned(labels),
            queue_wait: self.batch_queue.get_or_create_owned(labels),
            run: self.batch_run.get_or_create_owned(labels),
        }
    }
}
