//! The one entry point every ingress calls: route a decoded request to its servable version and method,
//! check the request as a whole (instance count, input names, in-flight limit), run the method, and hand
//! back per-instance results. Protocol-free: codecs do the wire work on either side.

use crate::error::ServeError;
use crate::pipeline::{PythonStages, run_method};
use crate::request::{PredictReply, PredictRequest};
use crate::servable::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// MindSpore's default `set_max_enqueued_requests`.
pub const DEFAULT_MAX_ENQUEUED_REQUESTS: usize = 10_000;

/// Routing table plus the executors requests need.
pub struct Service {
    pub registry: Registry,
    pub python: Arc<dyn PythonStages>,
    max_enqueued: usize,
    in_flight: AtomicUsize,
}

/// Decrements the in-flight count even when the request future is dropped (client went away).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Service {
    pub fn new(python: Arc<dyn PythonStages>, max_enqueued: usize) -> Service {
        Service {
            registry: Registry::default(),
            python,
            max_enqueued,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Answers one predict request.
    pub async fn predict(&self, request: PredictRequest) -> PredictReply {
        let previous = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _guard = InFlight(&self.in_flight);
        if previous >= self.max_enqueued {
            return PredictReply::Failed(ServeError::Overloaded(format!(
                "Serving Error: enqueued requests count exceeds the limit {}",
                self.max_enqueued
            )));
        }
        let target = &request.target;
        let Some(servable) = self.registry.get(&target.servable, target.version) else {
            return PredictReply::Failed(ServeError::InvalidInput(format!(
                "Request {}, servable is not available",
                target.spec_text()
            )));
        };
        let Some(plan) = servable.methods.get(&target.method).cloned() else {
            return PredictReply::Failed(ServeError::InvalidInput(format!(
                "Request {}, method is not available",
                target.spec_text()
            )));
        };
        if request.instances.is_empty() {
            return PredictReply::Failed(ServeError::InvalidInput(format!(
                "Instances count of request cannot be 0, servable: {}, method: {}",
                target.servable, target.method
            )));
        }
        let mut ordered = Vec::with_capacity(request.instances.len());
        for mut instance in request.instances {
            let mut inputs = Vec::with_capacity(plan.spec.inputs.len());
            for name in &plan.spec.inputs {
                // Extra input names are ignored, as in MindSpore.
                match instance.remove(name) {
                    Some(tensor) => inputs.push(tensor),
                    None => {
                        return PredictReply::Failed(ServeError::InvalidInput(format!(
                            "Cannot find input {name} in instance input , servable {}, method {}",
                            target.servable, target.method
                        )));
                    }
                }
            }
            ordered.push(inputs);
        }
        let results = run_method(&plan, self.python.as_ref(), ordered).await;
        PredictReply::Instances {
            output_names: plan.output_names.clone(),
            results,
        }
    }
}
