//! Method executor: walks a method's stages for the instances of one request. Stages run in order; within a
//! stage all live instances go together (model stages fan out to the model's batcher, which groups them with
//! other requests; a Python stage is one job on the GIL thread). An instance that fails drops out and keeps
//! its error; the others go on.

use crate::batching::{BatchNote, ModelQueue};
use crate::error::ServeError;
use crate::metrics::StuckCall;
use crate::request::InstanceResult;
use crate::spec::{FunctionId, MethodSpec, Source, StageKind};
use crate::tensor::Tensor;
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use std::collections::HashMap;
use std::sync::Arc;

/// The loaded models of one servable version; stages and `Model.call` find them by index or key.
#[derive(Default)]
pub struct ModelSet {
    /// `[model][subgraph]`.
    pub queues: Vec<Vec<Arc<ModelQueue>>>,
    pub by_key: HashMap<String, usize>,
}

impl ModelSet {
    /// The queue of a model's subgraph.
    pub fn queue(&self, model: usize, subgraph: usize) -> Option<&Arc<ModelQueue>> {
        self.queues.get(model).and_then(|subgraphs| subgraphs.get(subgraph))
    }

    /// Runs per-instance `inputs` on a declared model of `models` and waits for every result (blocking: call it with
    /// the GIL released, never on a tokio worker). The one implementation of `Model.call`'s checks and texts, for
    /// the GIL thread and for calls that worker processes send to the server.
    pub fn call(
        &self,
        model_key: &str,
        subgraph: usize,
        inputs: Vec<Vec<Tensor>>,
    ) -> Result<Vec<InstanceResult>, String> {
        let index = self
            .by_key
            .get(model_key)
            .copied()
            .ok_or_else(|| format!("the model is not declared, model: {model_key}"))?;
        let queue = self
            .queue(index, 0)
            .and_then(|_| self.queue(index, subgraph))
            .cloned()
            .ok_or_else(|| {
                let count = self.queues.get(index).map_or(0, Vec::len);
                format!(
                    "The model does not have subgraph of index {subgraph}, the subgraph count of the model is {count}"
                )
            })?;
        if inputs.is_empty() {
            return Err("Input instances count is 0".into());
        }
        let expected = queue.signature().inputs.len();
        if let Some((i, values)) = inputs.iter().enumerate().find(|(_, v)| v.len() != expected) {
            return Err(format!(
                "The inputs count {} of instance {i} is not equal to the inputs count {expected} of the model",
                values.len()
            ));
        }
        // Submit every instance first so they can share a batch, then wait.
        let pending: Vec<_> = inputs.into_iter().map(|x| queue.submit(x)).collect();
        Ok(pending
            .into_iter()
            .map(|rx| {
                rx.and_then(|rx| {
                    rx.blocking_recv()
                        .unwrap_or_else(|_| Err(ServeError::Unavailable("Servable stopped".into())))
                })
            })
            .collect())
    }
}

/// A method ready to run: its validated spec plus the models it uses.
pub struct MethodPlan {
    pub servable: String,
    pub version: u64,
    pub spec: MethodSpec,
    pub output_names: Arc<[String]>,
    pub models: Arc<ModelSet>,
}

/// One Python stage call for the live instances of a request.
pub struct FunctionCall {
    pub function: FunctionId,
    /// `<servable>.<function name>`, used in contract-violation texts.
    pub name: String,
    pub tag: String,
    pub method: String,
    /// 1-based stage index, as MindSpore reports it.
    pub stage_index: usize,
    pub outputs_count: usize,
    pub batch_size: Option<usize>,
    /// Per instance, the stage's inputs in order.
    pub instances: Vec<Vec<Tensor>>,
    /// Models of the calling servable, for `Model.call` inside the stage.
    pub models: Arc<ModelSet>,
}

/// Runs Python stage functions; implemented by the GIL-thread executor (and by fakes in tests).
pub trait PythonStages: Send + Sync {
    /// Calls the function for every instance; answers one result per instance, in order.
    fn submit(&self, call: FunctionCall) -> BoxFuture<'static, Vec<InstanceResult>>;

    /// The call stuck on the server's own Python thread, if one is.
    fn stuck(&self) -> Option<StuckCall> {
        None
    }
}

/// Runs `plan` for instances whose inputs are in the method's input order.
pub async fn run_method(
    plan: &MethodPlan,
    python: &dyn PythonStages,
    instances: Vec<Vec<Tensor>>,
) -> Vec<InstanceResult> {
    let n = instances.len();
    let stages = plan.spec.stages.len();
    let last_reads = LastReads::of(&plan.spec);
    // values[i][stage] = outputs of `stage` for instance i (stage 0 = method inputs).
    let mut values: Vec<Vec<Vec<Tensor>>> = instances
        .into_iter()
        .map(|inputs| {
            let mut stage_values = Vec::with_capacity(stages + 1);
            stage_values.push(inputs);
            stage_values
        })
        .collect();
    let mut errors: Vec<Option<ServeError>> = vec![None; n];
    for (k, stage) in plan.spec.stages.iter().enumerate() {
        let alive: Vec<usize> = (0..n).filter(|&i| errors[i].is_none()).collect();
        if alive.is_empty() {
            break;
        }
        let shares = matches!(stage.kind, StageKind::Function { .. });
        let inputs: Vec<Vec<Tensor>> = alive
            .iter()
            .map(|&i| {
                stage
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(j, src)| {
                        if shares {
                            // Python stages get the slot's own memory (see `python::convert`): align it once here,
                            // so the numpy array is not a copy that later readers would never see.
                            values[i][src.stage][src.index].align();
                        }
                        read(&mut values[i], *src, last_reads.stages[k][j])
                    })
                    .collect()
            })
            .collect();
        let results = run_stage(plan, python, k, inputs).await;
        if results.len() != alive.len() {
            let err = ServeError::Internal(format!(
                "stage {} answered {} results for {} instances",
                k + 1,
                results.len(),
                alive.len()
            ));
            for &i in &alive {
                errors[i] = Some(err.clone());
            }
            continue;
        }
        for (i, result) in alive.into_iter().zip(results) {
            match result {
                Ok(outputs) if outputs.len() == stage.outputs_count => values[i].push(outputs),
                Ok(outputs) => {
                    errors[i] = Some(ServeError::Stage(format!(
                        "Call {} Failed, method: '{}', stage index(begin with 1): {}, error msg: {} outputs returned, \
                         {} expected",
                        stage.tag,
                        plan.spec.name,
                        k + 1,
                        outputs.len(),
                        stage.outputs_count
                    )));
                }
                Err(err) => errors[i] = Some(err),
            }
        }
    }
    values
        .into_iter()
        .zip(errors)
        .map(|(mut vals, err)| match err {
            Some(err) => Err(err),
            None => Ok(method_outputs(plan, &last_reads, &mut vals)),
        })
        .collect()
}

/// Runs stage `k` of `plan` for the live instances' `inputs`; inside a traced request, records the stage's span.
async fn run_stage(
    plan: &MethodPlan,
    python: &dyn PythonStages,
    k: usize,
    inputs: Vec<Vec<Tensor>>,
) -> Vec<InstanceResult> {
    let stage = &plan.spec.stages[k];
    let count = inputs.len();
    let traced = crate::trace::start();
    match &stage.kind {
        StageKind::Model { model, subgraph } => match plan.models.queue(*model, *subgraph) {
            Some(queue) => {
                let note = traced.map(|_| Arc::new(BatchNote::default()));
                let results = queue.infer_all_noted(inputs, note.as_ref()).await;
                crate::trace::record_with("rustserve.stage.model", traced, || {
                    model_stage_attributes(k, queue, *subgraph, count, note.as_deref())
                });
                results
            }
            None => vec![Err(ServeError::Internal(format!("model {model} is not loaded"))); count],
        },
        StageKind::Function {
            function,
            name,
            batch_size,
        } => {
            let call = FunctionCall {
                function: *function,
                name: name.clone(),
                tag: stage.tag.clone(),
                method: plan.spec.name.clone(),
                stage_index: k + 1,
                outputs_count: stage.outputs_count,
                batch_size: *batch_size,
                instances: inputs,
                models: plan.models.clone(),
            };
            let results = python.submit(call).await;
            crate::trace::record_with("rustserve.stage.python", traced, || {
                vec![
                    KeyValue::new("rustserve.stage.index", (k + 1) as i64),
                    KeyValue::new("rustserve.function", name.clone()),
                    KeyValue::new("rustserve.instances", count as i64),
                ]
            });
            results
        }
    }
}

/// A model stage span's attributes: the model file (its name only), the request's instances, and the batch the first
/// of them ran in (its size, and how long that instance waited in the model's queue).
fn model_stage_attributes(
    k: usize,
    queue: &ModelQueue,
    subgraph: usize,
    instances: usize,
    note: Option<&BatchNote>,
) -> Vec<KeyValue> {
    let model = std::path::Path::new(queue.model())
        .file_name()
        .map_or_else(|| queue.model().to_owned(), |name| name.to_string_lossy().into_owned());
    let mut attributes = vec![
        KeyValue::new("rustserve.stage.index", (k + 1) as i64),
        KeyValue::new("rustserve.model", model),
        KeyValue::new("rustserve.subgraph", subgraph as i64),
        KeyValue::new("rustserve.instances", instances as i64),
    ];
    if let Some((size, wait)) = note.and_then(BatchNote::batch) {
        attributes.push(KeyValue::new("rustserve.batch_size", size as i64));
        attributes.push(KeyValue::new("rustserve.queue_wait_us", wait.as_micros() as i64));
    }
    attributes
}

fn method_outputs(plan: &MethodPlan, last_reads: &LastReads, values: &mut [Vec<Tensor>]) -> Vec<Tensor> {
    let reads = plan.spec.outputs.iter().zip(&last_reads.outputs);
    reads.map(|(src, &last)| read(values, *src, last)).collect()
}

/// For every read of a value (each stage input, then each method output, in order): whether no later read of that
/// value follows. The last read moves the tensor instead of cloning it, so a value is freed as soon as its last
/// reader is done with it (a model stage drops its inputs once they are stacked into a batch).
struct LastReads {
    stages: Vec<Vec<bool>>,
    outputs: Vec<bool>,
}

impl LastReads {
    fn of(spec: &MethodSpec) -> LastReads {
        let mut remaining: HashMap<Source, usize> = HashMap::new();
        let reads = spec.stages.iter().flat_map(|s| &s.inputs).chain(&spec.outputs);
        for src in reads {
            *remaining.entry(*src).or_default() += 1;
        }
        let mut last = |src: &Source| {
            let count = remaining.entry(*src).or_default();
            *count = count.saturating_sub(1);
            *count == 0
        };
        let stages = spec
            .stages
            .iter()
            .map(|s| s.inputs.iter().map(&mut last).collect())
            .collect();
        let outputs = spec.outputs.iter().map(&mut last).collect();
        LastReads { stages, outputs }
    }
}

/// Value `src` of one instance: moved out on its last read (an empty tensor is left behind), cloned otherwise.
fn read(values: &mut [Vec<Tensor>], src: Source, last: bool) -> Tensor {
    let slot = &mut values[src.stage][src.index];
    if last {
        std::mem::replace(slot, Tensor::placeholder())
    } else {
        slot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StageSpec;

    /// Answers each instance with its inputs summed elementwise (int32), as a Python stage would.
    struct Sum;

    impl PythonStages for Sum {
        fn submit(&self, call: FunctionCall) -> BoxFuture<'static, Vec<InstanceResult>> {
            let results = call
                .instances
                .iter()
                .map(|inputs| {
                    let total: i32 = inputs.iter().map(|t| t.to_values::<i32>().unwrap()[0]).sum();
                    Ok(vec![Tensor::from_values(vec![1], &[total]).unwrap()])
                })
                .collect();
            Box::pin(async move { results })
        }
    }

    fn function_stage(inputs: Vec<Source>) -> StageSpec {
        StageSpec {
            kind: StageKind::Function {
                function: FunctionId(0),
                name: "svc.sum".into(),
                batch_size: None,
            },
            inputs,
            outputs_count: 1,
            tag: "Function 'svc.sum'".into(),
        }
    }

    #[tokio::test]
    async fn values_read_again_are_cloned_and_the_last_read_moves() {
        let src = |stage, index| Source { stage, index };
        // x is read by both stages (twice by the second) and by the outputs; stage 1's value only by stage 2.
        let spec = MethodSpec {
            name: "m".into(),
            inputs: vec!["x".into()],
            output_names: vec!["x".into(), "s".into(), "x2".into()],
            outputs: vec![src(0, 0), src(2, 0), src(0, 0)],
            stages: vec![
                function_stage(vec![src(0, 0)]),
                function_stage(vec![src(1, 0), src(0, 0), src(0, 0)]),
            ],
        };
        let reads = LastReads::of(&spec);
        assert_eq!(reads.stages, vec![vec![false], vec![true, false, false]]);
        assert_eq!(reads.outputs, vec![false, true, true]);
        let plan = MethodPlan {
            servable: "svc".into(),
            version: 1,
            output_names: Arc::from(spec.output_names.clone()),
            spec,
            models: Arc::new(ModelSet::default()),
        };
        let x = |v: i32| vec![Tensor::from_values(vec![1], &[v]).unwrap()];
        let results = run_method(&plan, &Sum, vec![x(2), x(5)]).await;
        let values: Vec<Vec<i32>> = results
            .into_iter()
            .map(|r| r.unwrap().iter().map(|t| t.to_values::<i32>().unwrap()[0]).collect())
            .collect();
        // s = (x) + x + x = 3x; both reads of x in the outputs see the original value.
        assert_eq!(values, vec![vec![2, 6, 2], vec![5, 15, 5]]);
    }
}
