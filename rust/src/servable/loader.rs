//! Turns a recorded `ServableSpec` into a `ServableVersion`: loads every model file into a batching queue (one ORT
//! session per device, all fed from the model's one queue), then checks each method against the models' real
//! inputs and outputs, with MindSpore's start-up texts.
//! Blocking (ONNX Runtime builds sessions here): call it with the GIL released.

use super::ServableVersion;
use crate::batching::{BatchConfig, BatchRunner, ModelQueue, default_intra_op_threads};
use crate::error::ServeError;
use crate::model::{DeviceChoice, OrtRunner};
use crate::pipeline::{MethodPlan, ModelSet};
use crate::spec::{DeviceKind, ServableSpec, StageKind};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Loads the models of `spec` and builds its method plans.
pub fn load(spec: ServableSpec) -> Result<ServableVersion, ServeError> {
    let context = |msg: String| ServeError::Config(format!("servable '{}' version {}: {msg}", spec.name, spec.version));
    if spec.methods.is_empty() {
        return Err(context("There is no method registered for servable".into()));
    }
    let mut models = ModelSet::default();
    // Sessions of this servable that may run at once: one per model file and device. Without
    // `Context(thread_num=...)`, each gets an equal share of the cores for its intra-op threads.
    let sessions: usize = spec
        .models
        .iter()
        .map(|m| m.files.len() * devices_of(&m.device).len())
        .sum();
    let default_threads = default_intra_op_threads(sessions);
    for (index, model) in spec.models.iter().enumerate() {
        let devices = devices_of(&model.device);
        let config = BatchConfig {
            with_batch_dim: model.with_batch_dim,
            without_batch_dim_inputs: model.without_batch_dim_inputs.clone(),
            max_batch_size: model.max_batch_size,
            max_queue_delay: model.max_queue_delay,
            preferred_batch_sizes: model.preferred_batch_sizes.clone(),
        };
        let threads = model.intra_op_threads.unwrap_or(default_threads);
        let mut subgraphs = Vec::with_capacity(model.files.len().max(1));
        if let Some(layout) = model.distributed {
            let queue =
                crate::distributed::load_queue(&spec.name, layout.rank_size, layout.stage_size, config.clone())?;
            subgraphs.push(Arc::new(queue));
        }
        for file in &model.files {
            let queue = load_model_queue(file, config.clone(), &devices, Some(threads))
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
        attached: Vec::new(),
    })
}

/// One session per listed CUDA device (device 0 when none is listed); one CPU session otherwise.
fn devices_of(device: &DeviceKind) -> Vec<DeviceChoice> {
    match device {
        DeviceKind::Cpu => vec![DeviceChoice::Cpu],
        DeviceKind::Gpu(ids) if ids.is_empty() => vec![DeviceChoice::Cuda(0)],
        DeviceKind::Gpu(ids) => ids.iter().map(|&id| DeviceChoice::Cuda(id)).collect(),
    }
}

/// Loads `path` once per device (one ONNX Runtime session each) and starts a batch queue with one batch thread per
/// session, all fed from the model's one queue. Needs `model::init_onnxruntime` first; `devices` must not be empty.
/// Validation errors are `ServeError::Config` with MindSpore's texts, naming the file.
pub fn load_model_queue(
    path: &Path,
    cfg: BatchConfig,
    devices: &[DeviceChoice],
    intra_op_threads: Option<usize>,
) -> Result<ModelQueue, ServeError> {
    let mut runners: Vec<Box<dyn BatchRunner>> = Vec::with_capacity(devices.len());
    let mut signature = None;
    for &device in devices {
        let runner = OrtRunner::load(path, device, intra_op_threads)?;
        signature.get_or_insert_with(|| runner.signature().clone());
        runners.push(Box::new(runner));
    }
    let signature = signature
        .ok_or_else(|| ServeError::Config(format!("model file '{}': no device to load it on", path.display())))?;
    // NOTE: the name appears in client-facing errors, so the file name only, never the server's directory layout.
    let name = path
        .file_name()
        .map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned());
    ModelQueue::with_runners(&name, signature, cfg, runners)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::batching::BatchMode;
    use crate::model::test_support::model_path;
    use crate::spec::{MethodSpec, ModelSpec, Source, StageSpec};

    #[test]
    fn one_session_per_gpu_device() {
        assert_eq!(devices_of(&DeviceKind::Cpu), vec![DeviceChoice::Cpu]);
        assert_eq!(devices_of(&DeviceKind::Gpu(vec![])), vec![DeviceChoice::Cuda(0)]);
        assert_eq!(
            devices_of(&DeviceKind::Gpu(vec![1, 0])),
            vec![DeviceChoice::Cuda(1), DeviceChoice::Cuda(0)]
        );
    }

    /// A one-model servable: `model` (inputs x1[, x2]) with one method that runs it.
    fn spec(file: &str, inputs: usize, model: ModelSpec) -> ServableSpec {
        let names: Vec<String> = (1..=inputs).map(|i| format!("x{i}")).collect();
        let method = MethodSpec {
            name: "run".into(),
            inputs: names,
            output_names: vec!["y".into()],
            outputs: vec![Source { stage: 1, index: 0 }],
            stages: vec![StageSpec {
                kind: StageKind::Model { model: 0, subgraph: 0 },
                inputs: (0..inputs).map(|index| Source { stage: 0, index }).collect(),
                outputs_count: 1,
                tag: format!("Model '{file}'"),
            }],
        };
        ServableSpec {
            name: "svc".into(),
            version: 1,
            models: vec![ModelSpec {
                key: format!("{file}.onnx"),
                files: vec![model_path(file)],
                ..model
            }],
            methods: vec![method],
        }
    }

    fn model_spec(device: DeviceKind) -> ModelSpec {
        ModelSpec {
            key: String::new(),
            files: Vec::new(),
            with_batch_dim: true,
            without_batch_dim_inputs: Vec::new(),
            max_batch_size: Some(8),
            max_queue_delay: Duration::from_millis(3),
            preferred_batch_sizes: vec![4, 2],
            device,
            intra_op_threads: None,
            distributed: None,
        }
    }

    #[test]
    fn scheduling_knobs_reach_the_queue() {
        let version = load(spec("mul_dynamic", 1, model_spec(DeviceKind::Cpu))).unwrap();
        let queue = version.models.queue(0, 0).unwrap();
        assert_eq!(queue.batch_mode(), BatchMode::Dynamic(8));
        assert_eq!(queue.config().max_queue_delay, Duration::from_millis(3));
        assert_eq!(queue.config().preferred_batch_sizes, vec![4, 2]);
        assert_eq!(queue.runners(), 1);
        // preferred sizes on a static batch dimension: refused at load, naming the servable and the file
        let err = load(spec("add_fixed", 2, model_spec(DeviceKind::Cpu))).err().unwrap();
        let text = err.message();
        assert!(
            text.starts_with("servable 'svc' version 1: model file '")
                && text.contains("add_fixed.onnx")
                && text.contains("needs a symbolic batch dimension"),
            "{text}"
        );
    }

    #[test]
    fn gpu_devices_get_one_session_each_or_a_clear_error() {
        let gpu = ModelSpec {
            preferred_batch_sizes: Vec::new(),
            ..model_spec(DeviceKind::Gpu(vec![0, 1]))
        };
        match load(spec("mul_dynamic", 1, gpu)) {
            // No usable CUDA here (CPU wheel, or no GPU): start-up fails and says which device and why.
            Err(ServeError::Config(text)) => {
                assert!(
                    text.starts_with("servable 'svc' version 1: model file '") && text.contains("CUDA device"),
                    "{text}"
                );
            }
            Err(other) => panic!("{other:?}"),
            // Two usable GPUs: one session (and batch thread) per device behind the model's one queue.
            Ok(version) => assert_eq!(version.models.queue(0, 0).unwrap().runners(), 2),
        }
    }
}
