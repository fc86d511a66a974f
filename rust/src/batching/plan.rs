//! The per-model batch plan: MindSpore's batch-size rules checked once at load (section 6 texts), the per-instance
//! input check run before queueing, and the stacking of instances into full-batch tensors (with padding) and the
//! split of outputs back into per-instance tensors. Pure data work, no threads: the batch thread calls it. Public
//! so the criterion benches can time stacking and splitting without a thread in between.

use bytes::BytesMut;

use super::BatchConfig;
use super::ModelSignature;
use super::policy::BatchPolicy;
use crate::error::ServeError;
use crate::tensor::{DType, Tensor, TensorData, element_count};

/// Batch size used for a symbolic batch dimension when `BatchConfig::max_batch_size` is `None`.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;

/// How a model takes instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMode {
    /// `with_batch_dim=False`: one instance per run, every input and output is a whole tensor.
    Whole,
    /// A static dim 0 of `N`: every run gets exactly `N` rows, padded with copies of the first instance.
    Fixed(usize),
    /// A symbolic dim 0: every run gets 1 to `max` rows, no padding.
    Dynamic(usize),
}

impl BatchMode {
    /// Most instances per run (1 for `Whole`).
    pub fn batch_size(self) -> usize {
        match self {
            BatchMode::Whole => 1,
            BatchMode::Fixed(n) | BatchMode::Dynamic(n) => n,
        }
    }
}

/// What one instance must supply for one model input.
#[derive(Clone, Debug)]
struct Slot {
    dtype: DType,
    /// Per-instance shape: the model shape minus dim 0 for batched inputs, the whole shape otherwise.
    shape: Vec<i64>,
    /// Stacked along a new dim 0 (false for `Whole` and for `without_batch_dim_inputs`).
    batched: bool,
    /// Element count when every dim of `shape` is static.
    elements: Option<usize>,
}

/// One checked instance: inputs reshaped to their slots, plus the key that decides which instances may share a run.
#[derive(Debug)]
pub struct CheckedInstance {
    /// The inputs, in model input order, reshaped to their per-instance slot shapes.
    pub inputs: Vec<Tensor>,
    /// Per-instance shapes of the batched inputs when some slot has a symbolic dim (empty otherwise): only
    /// instances with equal keys can be stacked into one tensor.
    pub key: Vec<Vec<i64>>,
}

/// The model's batching rules, computed once from its signature and `BatchConfig`.
#[derive(Debug)]
pub struct BatchPlan {
    pub(crate) mode: BatchMode,
    slots: Vec<Slot>,
    /// Some batched slot has a symbolic dim, so instances must be grouped by shape.
    pub(crate) group_by_shape: bool,
    outputs: usize,
    /// When to run and how many rows to take (`max_queue_delay`, preferred batch sizes).
    pub(crate) policy: BatchPolicy,
}

impl BatchPlan {
    /// Validates the signature against the config; errors are `Config` naming `model` (the model file).
    pub fn new(sig: &ModelSignature, cfg: &BatchConfig, model: &str) -> Result<BatchPlan, ServeError> {
        let fail = |text: String| ServeError::Config(format!("model file '{model}': {text}"));
        let inputs = sig.inputs.len();
        if let Some(&bad) = cfg.without_batch_dim_inputs.iter().find(|&&i| i >= inputs) {
            return Err(fail(format!(
                "without_batch_dim_inputs index {bad} is out of range, the model has {inputs} inputs"
            )));
        }
        if cfg.max_batch_size == Some(0) {
            return Err(fail("max_batch_size must be at least 1".to_owned()));
        }
        if !cfg.with_batch_dim {
            let slots = sig
                .inputs
                .iter()
                .map(|io| Slot {
                    dtype: io.dtype,
                    shape: io.shape.clone(),
                    batched: false,
                    elements: static_elements(&io.shape),
                })
                .collect();
            check_preferred(BatchMode::Whole, &cfg.preferred_batch_sizes).map_err(fail)?;
            return Ok(BatchPlan {
                mode: BatchMode::Whole,
                slots,
                group_by_shape: false,
                outputs: sig.outputs.len(),
                policy: BatchPolicy::new(1, Vec::new(), cfg.max_queue_delay),
            });
        }

        let batched = |i: usize| !cfg.without_batch_dim_inputs.contains(&i);
        if !(0..inputs).any(batched) {
            return Err(fail(format!(
                "with_batch_dim is true but every model input is listed in without_batch_dim_inputs {:?}",
                cfg.without_batch_dim_inputs
            )));
        }
        let batch = static_batch_size(sig, cfg).map_err(fail)?;
        // NOTE: a mix of static and symbolic dim 0 runs at the static size; the symbolic ones accept it.
        let mode = match batch {
            Some(n) => BatchMode::Fixed(n as usize),
            None => BatchMode::Dynamic(cfg.max_batch_size.unwrap_or(DEFAULT_MAX_BATCH_SIZE)),
        };
        let slots: Vec<Slot> = sig
            .inputs
            .iter()
            .enumerate()
            .map(|(i, io)| {
                let shape = if batched(i) {
                    io.shape[1..].to_vec()
                } else {
                    io.shape.clone()
                };
                Slot {
                    dtype: io.dtype,
                    elements: static_elements(&shape),
                    shape,
                    batched: batched(i),
                }
            })
            .collect();
        let group_by_shape = slots.iter().any(|s| s.batched && s.elements.is_none());
        let policy = BatchPolicy::new(
            mode.batch_size(),
            check_preferred(mode, &cfg.preferred_batch_sizes).map_err(fail)?,
            cfg.max_queue_delay,
        );
        Ok(BatchPlan {
            mode,
            slots,
            group_by_shape,
            outputs: sig.outputs.len(),
            policy,
        })
    }

    /// Most instances per run: 1 without a batch dim, `N` for a static dim 0, `max_batch_size` for a symbolic one.
    pub fn batch_size(&self) -> usize {
        self.mode.batch_size()
    }

    /// MindSpore's per-instance check (byte size and dtype, never the shape, for static slots; dtype and rank for
    /// symbolic ones). Reshapes each input to its slot, so a `[1, 2]` float32 instance fills a `[2]` slot.
    pub fn check_instance(&self, mut inputs: Vec<Tensor>) -> Result<CheckedInstance, ServeError> {
        let bad = |text: String| Err(ServeError::InvalidInput(text));
        if inputs.len() < self.slots.len() {
            return bad(format!(
                "Given model inputs size {} less than model inputs size {}",
                inputs.len(),
                self.slots.len()
            ));
        }
        // Like MindSpore, extra inputs are ignored.
        inputs.truncate(self.slots.len());
        for (i, (tensor, slot)) in inputs.iter_mut().zip(&self.slots).enumerate() {
            let dtype_error = || {
                format!(
                    "Given model input {i} data type {} not match the data type {} defined in model",
                    tensor.dtype.ms_name(),
                    slot.dtype.ms_name()
                )
            };
            match (slot.elements, slot.dtype.is_variable() || tensor.dtype.is_variable()) {
                (Some(elements), false) => {
                    // Numeric static slot: MindSpore compares the byte size first, then the dtype.
                    let want = elements * slot.dtype.item_size();
                    if tensor.byte_size() != want {
                        return bad(format!(
                            "Given model input {i} size {} not match the size {want} defined in model",
                            tensor.byte_size()
                        ));
                    }
                    if tensor.dtype != slot.dtype {
                        return bad(dtype_error());
                    }
                    if tensor.raw().is_none() {
                        return bad(format!(
                            "Given model input {i} has a payload that does not match its data type"
                        ));
                    }
                    tensor.shape.clone_from(&slot.shape);
                }
                (elements, _) => {
                    if tensor.dtype != slot.dtype {
                        return bad(dtype_error());
                    }
                    if let Some(elements) = elements {
                        // Static string slot: compare element counts (strings have no fixed byte size).
                        if tensor.num_elements() != elements {
                            return bad(format!(
                                "Given model input {i} size {} not match the size {elements} defined in model",
                                tensor.num_elements()
                            ));
                        }
                        tensor.shape.clone_from(&slot.shape);
                    } else if tensor.shape.len() != slot.shape.len()
                        || tensor.shape.iter().zip(&slot.shape).any(|(&g, &m)| m >= 0 && g != m)
                    {
                        // A symbolic dim has no size to compare: the instance's own shape goes to the model.
                        return bad(format!(
                            "Given model input {i} shape {:?} not match the shape {:?} defined in model",
                            tensor.shape, slot.shape
                        ));
                    }
                    check_payload(i, tensor)?;
                }
            }
        }
        let key = if self.group_by_shape {
            inputs
                .iter()
                .zip(&self.slots)
                .filter(|(_, s)| s.batched)
                .map(|(t, _)| t.shape.clone())
                .collect()
        } else {
            Vec::new()
        };
        Ok(CheckedInstance { inputs, key })
    }

    /// Rows the model gets for `real` instances (`real` plus padding for a fixed batch size).
    pub fn rows(&self, real: usize) -> usize {
        match self.mode {
            BatchMode::Whole | BatchMode::Dynamic(_) => real,
            BatchMode::Fixed(n) => n,
        }
    }

    /// Stacks the instances (same key, 1..=batch size of them) into full-batch inputs in model order. Batched
    /// inputs get a new dim 0 of `rows(instances.len())`, padded with the first instance; unbatched inputs are
    /// taken from the first instance.
    pub fn stack(&self, instances: &[Vec<Tensor>]) -> Result<Vec<Tensor>, String> {
        let first = instances.first().ok_or("empty batch")?;
        let rows = self.rows(instances.len());
        let mut stacked = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let head = &first[i];
            if !slot.batched {
                stacked.push(head.clone());
                continue;
            }
            let mut shape = Vec::with_capacity(head.shape.len() + 1);
            shape.push(rows as i64);
            shape.extend_from_slice(&head.shape);
            // Row j is instance j, or a copy of the first instance for padding rows.
            let row = |j: usize| instances.get(j).map_or(head, |inst| &inst[i]);
            let data = match &head.data {
                // One row needs no copy: the instance's bytes already are the batch.
                TensorData::Raw(raw) if rows == 1 => TensorData::Raw(raw.clone()),
                TensorData::Raw(raw) => {
                    let mut buf = BytesMut::with_capacity(raw.len() * rows);
                    for j in 0..rows {
                        let bytes = row(j).raw().ok_or_else(|| format!("input {i}: mixed payload kinds"))?;
                        if bytes.len() != raw.len() {
                            return Err(format!("input {i}: rows of different sizes cannot be stacked"));
                        }
                        buf.extend_from_slice(bytes);
                    }
                    TensorData::Raw(buf.freeze())
                }
                TensorData::Items(items) => {
                    let mut all = Vec::with_capacity(items.len() * rows);
                    for j in 0..rows {
                        let more = row(j)
                            .items()
                            .ok_or_else(|| format!("input {i}: mixed payload kinds"))?;
                        if more.len() != items.len() {
                            return Err(format!("input {i}: rows of different sizes cannot be stacked"));
                        }
                        all.extend_from_slice(more);
                    }
                    TensorData::Items(all)
                }
            };
            stacked.push(Tensor {
                dtype: head.dtype,
                shape,
                data,
            });
        }
        Ok(stacked)
    }

    /// Cuts full-batch outputs (model order) into per-instance outputs for the first `real` rows; padding rows are
    /// dropped. Uses the shapes ORT actually returned.
    pub fn split(&self, outputs: Vec<Tensor>, real: usize) -> Result<Vec<Vec<Tensor>>, String> {
        if outputs.len() != self.outputs {
            return Err(format!(
                "the model returned {} outputs, its signature has {}",
                outputs.len(),
                self.outputs
            ));
        }
        if self.mode == BatchMode::Whole {
            return if real == 1 {
                Ok(vec![outputs])
            } else {
                Err(format!("{real} instances in a whole-tensor run"))
            };
        }
        let rows = self.rows(real);
        let mut per_instance: Vec<Vec<Tensor>> = (0..real).map(|_| Vec::with_capacity(outputs.len())).collect();
        for (k, out) in outputs.into_iter().enumerate() {
            if out.shape.first().copied() != Some(rows as i64) {
                return Err(format!(
                    "output {k} has shape {:?}, but the batch has {rows} rows",
                    out.shape
                ));
            }
            let shape = out.shape[1..].to_vec();
            match &out.data {
                TensorData::Raw(raw) => {
                    let size = raw.len() / rows;
                    for (j, dest) in per_instance.iter_mut().enumerate() {
                        let data = TensorData::Raw(raw.slice(j * size..(j + 1) * size));
                        dest.push(Tensor {
                            dtype: out.dtype,
                            shape: shape.clone(),
                            data,
                        });
                    }
                }
                TensorData::Items(items) => {
                    let size = items.len() / rows;
                    for (j, dest) in per_instance.iter_mut().enumerate() {
                        let data = TensorData::Items(items[j * size..(j + 1) * size].to_vec());
                        dest.push(Tensor {
                            dtype: out.dtype,
                            shape: shape.clone(),
                            data,
                        });
                    }
                }
            }
        }
        Ok(per_instance)
    }
}

/// Preferred batch sizes only make sense for a symbolic dim 0, and each must fit `max_batch_size`.
fn check_preferred(mode: BatchMode, preferred: &[usize]) -> Result<Vec<usize>, String> {
    if preferred.is_empty() {
        return Ok(Vec::new());
    }
    match mode {
        BatchMode::Dynamic(max) => {
            if let Some(&bad) = preferred.iter().find(|&&p| p == 0 || p > max) {
                return Err(format!(
                    "preferred batch size {bad} is out of range: it must be in [1, max_batch_size {max}]"
                ));
            }
            Ok(preferred.to_vec())
        }
        BatchMode::Fixed(n) => Err(format!(
            "preferred_batch_sizes {preferred:?} needs a symbolic batch dimension, but the model's batch \
             dimension is static: every run has {n} rows"
        )),
        BatchMode::Whole => Err(format!(
            "preferred_batch_sizes {preferred:?} needs with_batch_dim=True: without a batch dimension every run has \
             one instance"
        )),
    }
}

/// Element count of a shape whose dims are all static, `None` when one is symbolic.
fn static_elements(shape: &[i64]) -> Option<usize> {
    if shape.iter().all(|&d| d >= 0) {
        element_count(shape)
    } else {
        None
    }
}

/// MindSpore's load-time rules for `with_batch_dim=True`: every batched input and every output has a dim 0, and all
/// static ones agree. Returns that static dim 0 (`None` when all are symbolic), or the MindSpore error text.
fn static_batch_size(sig: &ModelSignature, cfg: &BatchConfig) -> Result<Option<i64>, String> {
    let mut batch: Option<i64> = None;
    let mut check = |kind: &str, i: usize, shape: &[i64]| -> Result<(), String> {
        let Some(&dim0) = shape.first() else {
            return Err(if kind == "input" {
                format!(
                    "The shape of model input {i} cannot be empty, when with_batch_dim is true and \
                     without_batch_dim_inputs is {:?}",
                    cfg.without_batch_dim_inputs
                )
            } else {
                format!("The shape of model output {i} cannot be empty, when with_batch_dim is true")
            });
        };
        if dim0 == 0 || dim0 < -1 {
            return Err(format!("The shape of model {kind} {i} is invalid, shape: {shape:?}"));
        }
        match batch {
            _ if dim0 < 0 => {}
            None => batch = Some(dim0),
            Some(b) if b != dim0 => {
                return Err(format!(
                    "The shape {shape:?} of model {kind} {i} does not match current batch size {b}"
                ));
            }
            Some(_) => {}
        }
        Ok(())
    };
    for (i, io) in sig
        .inputs
        .iter()
        .enumerate()
        .filter(|(i, _)| !cfg.without_batch_dim_inputs.contains(i))
    {
        check("input", i, &io.shape)?;
    }
    for (i, io) in sig.outputs.iter().enumerate() {
        check("output", i, &io.shape)?;
    }
    Ok(batch)
}

/// Checks that a tensor's payload matches its own shape, and that strings can go to ONNX Runtime.
fn check_payload(i: usize, tensor: &Tensor) -> Result<(), ServeError> {
    let bad = |text: &str| Err(ServeError::InvalidInput(format!("Given model input {i} {text}")));
    let Some(count) = element_count(&tensor.shape) else {
        return bad(&format!("has an invalid shape {:?}", tensor.shape));
    };
    match &tensor.data {
        TensorData::Raw(raw) if !tensor.dtype.is_variable() => {
            if raw.len() != count * tensor.dtype.item_size() {
                return bad("has a data size that does not match its shape");
            }
        }
        TensorData::Items(items) if tensor.dtype.is_variable() => {
            if items.len() != count {
                return bad("has an item count that does not match its shape");
            }
            if tensor.dtype == DType::String {
                for item in items {
                    if std::str::from_utf8(item).is_err() {
                        return bad("holds a string that is not valid UTF-8");
                    }
                    if item.contains(&0) {
                        return bad("holds a string with a NUL character, which ONNX Runtime cannot take");
                    }
                }
            }
        }
        _ => return bad("has a payload that does not match its data type"),
    }
    Ok(())
}
