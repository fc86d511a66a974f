//! Turns a recorded `ServableSpec` into a `ServableVersion`: loads every model file into a batching queue,
//! then checks each method against the models' real inputs and outputs, with MindSpore's start-up texts.
//! Blocking (ONNX Runtime builds sessions here): call it with the GIL released.

use super::ServableVersion;
use super::spec::{DeviceKind, ServableSpec, StageKind};
use crate::batching::{BatchConfig, ModelQueue};
use crate::error::ServeError;
use crate::model::DeviceChoice;
use crate::pipeline::{MethodPlan, ModelSet};
use std::collections::HashMap;
use std::sync::Arc;

/// Loads the models of `spec` and builds its method plans.
pub fn load(spec: ServableSpec) -> Result<ServableVersion, ServeError> {
    let context = |msg: String| ServeError::Config(format!("servable '{}' version {}: {msg}", spec.name, spec.version));
    if spec.methods.is_empty() {
        return Err(context("There is no method registered for servable".into()));
    }
    let mut models = ModelSet::default();
    for (index, model) in spec.models.iter().enumerate() {
        let device = match &model.device {
            DeviceKind::Cpu => DeviceChoice::Cpu,
            DeviceKind::Gpu(ids) => DeviceChoice::Cuda(ids.first().copied().unwrap_or(0)),
        };
        let config = BatchConfig {
            with_batch_dim: model.with_batch_dim,
            without_batch_dim_inputs: model.without_batch_dim_inputs.clone(),
            max_batch_size: model.max_batch_size,
        };
        let mut subgraphs = Vec::with_capacity(model.files.len());
        for file in &model.files {
            let queue = ModelQueue::load(file, config.clone(), device, model.intra_op_threads)
                .map_err(|e| context(e.message().to_string()))?;
            subgraphs.push(Arc::new(queue));
        }
        if let Some(first) = subgraphs.first()
            && let Some(other) = subgraphs.iter().find(|q| q.batch_size() != first.batch_size())
        {
            return Err(context(format!(
                "the subgraphs of model '{}' disagree on batch size: {} vs {}",
                model.key,
                first.batch_size(),
                other.batch_size()
            )));
        }
        models.by_key.insert(model.key.clone(), index);
        models.queues.push(subgraphs);
    }
    let models = Arc::new(models);
    let mut methods = HashMap::new();
    for method in spec.methods {
        method.check_sources().map_err(&context)?;
        for stage in &method.stages {
            if let StageKind::Model { model, subgraph } = stage.kind {
                let key = spec.models.get(model).map_or("?", |m| m.key.as_str());
                let queue = models.queue(model, subgraph).ok_or_else(|| {
                    context(format!(
                        "The model does not have subgraph of index {subgraph}, model: {key}, method: {}",
                        method.name
                    ))
                })?;
                let signature = queue.signature();
                let check = |what: &str, ours: usize, theirs: usize| {
                    if ours == theirs {
                        Ok(())
                    } else {
                        Err(context(format!(
                            "The {what} count {ours} in register_method not equal to the count {theirs} defined in \
                             model, model info: {key}, subgraph: {subgraph}"
                        )))
                    }
                };
                check("inputs", stage.inputs.len(), signature.inputs.len())?;
                check("outputs", stage.outputs_count, signature.outputs.len())?;
            }
        }
        let plan = MethodPlan {
            servable: spec.name.clone(),
            version: spec.version,
            output_names: Arc::from(method.output_names.clone()),
            spec: method,
            models: models.clone(),
        };
        methods.insert(plan.spec.name.clone(), Arc::new(plan));
    }
    Ok(ServableVersion {
        name: spec.name,
        version: spec.version,
        models,
        methods,
    })
}
