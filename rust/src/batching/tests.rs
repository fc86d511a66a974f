//! Batcher tests: fake runners for the batching rules (padding, grouping, fan-out, cancellation), then the same
//! paths through real ONNX Runtime sessions on the models of `rust/tests_data/make_test_models.py`.

// Test data are small integers stored as f32, so the casts are exact and exact float comparison is intended.
#![allow(clippy::cast_precision_loss, clippy::float_cmp)]

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::IoInfo;
use super::*;
use crate::model::DeviceChoice;
use crate::model::test_support::{f32_tensor, model_path, ort_ready};
// Real ONNX files load the way a server loads them.
use crate::servable::loader::load_model_queue;
use crate::tensor::{DType, TensorData};

fn io(name: &str, dtype: DType, shape: &[i64]) -> IoInfo {
    IoInfo {
        name: name.to_owned(),
        dtype,
        shape: shape.to_vec(),
    }
}

fn sig(inputs: Vec<IoInfo>, outputs: Vec<IoInfo>) -> ModelSignature {
    ModelSignature { inputs, outputs }
}

fn batched(max: Option<usize>) -> BatchConfig {
    BatchConfig {
        max_batch_size: max,
        ..BatchConfig::default()
    }
}

fn row(values: &[f32]) -> Tensor {
    f32_tensor(vec![values.len() as i64], values)
}

fn strings(shape: Vec<i64>, items: &[&str]) -> Tensor {
    Tensor::new(
        DType::String,
        shape,
        TensorData::Items(items.iter().map(|s| Bytes::from(s.to_string())).collect()),
    )
    .unwrap()
}

type Calls = Arc<Mutex<Vec<Vec<Tensor>>>>;

/// A fake model whose first run blocks until released, so a test can queue work behind it deterministically.
struct Gated {
    queue: ModelQueue,
    calls: Calls,
    started: std_mpsc::Receiver<()>,
    release: std_mpsc::Sender<()>,
}

impl Gated {
    /// `respond` computes the outputs from the full-batch inputs; every call is recorded (the blocker's too).
    fn new(
        signature: ModelSignature,
        cfg: &BatchConfig,
        respond: impl Fn(&[Tensor]) -> Result<Vec<Tensor>, ServeError> + Send + 'static,
    ) -> Gated {
        let calls: Calls = Arc::default();
        let (started_tx, started) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel::<()>();
        let seen = Arc::clone(&calls);
        let mut first = true;
        let runner = move |inputs: Vec<Tensor>| {
            seen.lock().unwrap().push(inputs.clone());
            if first {
                first = false;
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            }
            respond(&inputs)
        };
        let queue = ModelQueue::new("/models/fake.onnx", signature, cfg.clone(), Box::new(runner)).unwrap();
        Gated {
            queue,
            calls,
            started,
            release,
        }
    }

    /// Occupies the batch thread with `blocker`, queues `instances`, releases; returns the results (blocker excluded)
    /// and the runner calls after the blocker's.
    fn run_behind_blocker(
        &self,
        blocker: Vec<Tensor>,
        instances: Vec<Vec<Tensor>>,
    ) -> (Vec<InstanceResult>, Vec<Vec<Tensor>>) {
        let first = self.queue.submit(blocker).unwrap();
        self.started.recv().unwrap();
        let receivers: Vec<_> = instances
            .into_iter()
            .map(|inst| self.queue.submit(inst).unwrap())
            .collect();
        assert_eq!(self.queue.queue_depth(), receivers.len());
        self.release.send(()).unwrap();
        first.blocking_recv().unwrap().unwrap();
        let results = receivers.into_iter().map(|rx| rx.blocking_recv().unwrap()).collect();
        let calls = self.calls.lock().unwrap()[1..].to_vec();
        (results, calls)
    }
}

/// Echo: output 0 = input 0 (fallible, to match the runner signature).
#[allow(clippy::unnecessary_wraps)]
fn echo(inputs: &[Tensor]) -> Result<Vec<Tensor>, ServeError> {
    Ok(vec![inputs[0].clone()])
}

fn fixed_sig(n: i64) -> ModelSignature {
    sig(
        vec![io("x", DType::Float32, &[n, 2])],
        vec![io("y", DType::Float32, &[n, 2])],
    )
}

// ---- load-time validation ----

#[test]
fn batch_sizes() {
    let plan = |s: &ModelSignature, c: &BatchConfig| BatchPlan::new(s, c, "m.onnx").unwrap().mode;
    assert_eq!(plan(&fixed_sig(4), &batched(None)), BatchMode::Fixed(4));
    assert_eq!(plan(&fixed_sig(4), &batched(Some(100))), BatchMode::Fixed(4));
    assert_eq!(
        plan(&fixed_sig(-1), &batched(None)),
        BatchMode::Dynamic(DEFAULT_MAX_BATCH_SIZE)
    );
    assert_eq!(plan(&fixed_sig(-1), &batched(Some(5))), BatchMode::Dynamic(5));
    let whole = BatchConfig {
        with_batch_dim: false,
        ..BatchConfig::default()
    };
    assert_eq!(plan(&fixed_sig(4), &whole), BatchMode::Whole);
    assert_eq!(BatchMode::Whole.batch_size(), 1);
    // static and symbolic dim 0 mixed: the static size wins
    let mixed = sig(
        vec![io("x", DType::Float32, &[-1, 2])],
        vec![io("y", DType::Float32, &[3, 2])],
    );
    assert_eq!(plan(&mixed, &batched(None)), BatchMode::Fixed(3));
}

#[test]
fn validation_texts_name_the_model_file() {
    let err = |s: ModelSignature, c: BatchConfig| match BatchPlan::new(&s, &c, "/srv/add.onnx").unwrap_err() {
        ServeError::Config(text) => {
            assert!(text.starts_with("model file '/srv/add.onnx': "), "{text}");
            text
        }
        other => panic!("{other:?}"),
    };
    let out = || vec![io("y", DType::Float32, &[2, 2])];
    let no_bdi = BatchConfig {
        without_batch_dim_inputs: vec![1],
        ..batched(None)
    };
    let text = err(
        sig(vec![io("x", DType::Float32, &[]), io("b", DType::Float32, &[2])], out()),
        no_bdi,
    );
    assert!(
        text.ends_with(
            "The shape of model input 0 cannot be empty, when with_batch_dim is true and without_batch_dim_inputs is [1]"
        ),
        "{text}"
    );
    let text = err(sig(vec![io("x", DType::Float32, &[0, 2])], out()), batched(None));
    assert!(
        text.ends_with("The shape of model input 0 is invalid, shape: [0, 2]"),
        "{text}"
    );
    let two = vec![io("a", DType::Float32, &[2, 2]), io("b", DType::Float32, &[3, 2])];
    let text = err(sig(two, out()), batched(None));
    assert!(
        text.ends_with("The shape [3, 2] of model input 1 does not match current batch size 2"),
        "{text}"
    );
    let text = err(
        sig(
            vec![io("x", DType::Float32, &[2, 2])],
            vec![io("y", DType::Float32, &[4])],
        ),
        batched(None),
    );
    assert!(
        text.ends_with("The shape [4] of model output 0 does not match current batch size 2"),
        "{text}"
    );
    let text = err(
        sig(
            vec![io("x", DType::Float32, &[2, 2])],
            vec![io("y", DType::Float32, &[])],
        ),
        batched(None),
    );
    assert!(
        text.ends_with("The shape of model output 0 cannot be empty, when with_batch_dim is true"),
        "{text}"
    );
    let text = err(
        fixed_sig(2),
        BatchConfig {
            without_batch_dim_inputs: vec![3],
            ..batched(None)
        },
    );
    assert!(
        text.contains("without_batch_dim_inputs index 3 is out of range"),
        "{text}"
    );
    let text = err(fixed_sig(-1), batched(Some(0)));
    assert!(text.contains("max_batch_size"), "{text}");
}

// ---- per-instance checks ----

#[test]
fn instance_check_texts() {
    let s = sig(
        vec![io("x", DType::Float32, &[2, 2]), io("z", DType::Float32, &[2, 2])],
        vec![io("y", DType::Float32, &[2, 2])],
    );
    let queue = ModelQueue::new("m.onnx", s, batched(None), Box::new(|i: Vec<Tensor>| echo(&i))).unwrap();
    let invalid = |inputs: Vec<Tensor>| match queue.submit(inputs) {
        Err(ServeError::InvalidInput(text)) => text,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        invalid(vec![row(&[1.0, 2.0])]),
        "Given model inputs size 1 less than model inputs size 2"
    );
    assert_eq!(
        invalid(vec![row(&[1.0, 2.0, 3.0]), row(&[1.0, 2.0])]),
        "Given model input 0 size 12 not match the size 8 defined in model"
    );
    let ints = Tensor::from_values(vec![2], &[1i32, 2]).unwrap();
    assert_eq!(
        invalid(vec![row(&[1.0, 2.0]), ints]),
        "Given model input 1 data type kMSI_Int32 not match the data type kMSI_Float32 defined in model"
    );
    let text = invalid(vec![row(&[1.0, 2.0]), Tensor::scalar_string("a")]);
    assert!(
        text.contains("data type kMSI_String not match the data type kMSI_Float32"),
        "{text}"
    );
    // the shape is not compared: a [1, 2] instance fills the [2] slot and gets the model's per-instance shape back;
    // extra inputs are ignored
    let out = queue
        .infer_blocking(vec![f32_tensor(vec![1, 2], &[1.0, 2.0]), row(&[3.0, 4.0]), row(&[9.0])])
        .unwrap();
    assert_eq!(out, vec![row(&[1.0, 2.0])]);
}

#[test]
fn symbolic_dims_check_dtype_and_rank() {
    let s = sig(
        vec![io("x", DType::Float32, &[-1, -1, 3])],
        vec![io("y", DType::Float32, &[-1, -1, 3])],
    );
    let queue = ModelQueue::new("m.onnx", s, batched(None), Box::new(|i: Vec<Tensor>| echo(&i))).unwrap();
    let text = match queue.submit(vec![row(&[1.0, 2.0, 3.0])]) {
        Err(ServeError::InvalidInput(text)) => text,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text,
        "Given model input 0 shape [3] not match the shape [-1, 3] defined in model"
    );
    assert!(queue.submit(vec![f32_tensor(vec![2, 2], &[0.0; 4])]).is_err());
    let ok = f32_tensor(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(queue.infer_blocking(vec![ok.clone()]).unwrap(), vec![ok]);
}

#[test]
fn string_inputs_must_be_utf8_without_nul() {
    let s = sig(vec![io("s", DType::String, &[-1])], vec![io("t", DType::String, &[-1])]);
    let queue = ModelQueue::new("m.onnx", s, batched(None), Box::new(|i: Vec<Tensor>| echo(&i))).unwrap();
    let bad = Tensor::new(
        DType::String,
        vec![],
        TensorData::Items(vec![Bytes::from_static(b"\xff")]),
    )
    .unwrap();
    assert!(matches!(queue.submit(vec![bad]), Err(ServeError::InvalidInput(t)) if t.contains("UTF-8")));
    let nul = Tensor::new(
        DType::String,
        vec![],
        TensorData::Items(vec![Bytes::from_static(b"a\0b")]),
    )
    .unwrap();
    assert!(matches!(queue.submit(vec![nul]), Err(ServeError::InvalidInput(t)) if t.contains("NUL")));
}

// ---- padding and batching ----

#[test]
fn fixed_batch_pads_with_the_first_instance() {
    const N: usize = 3;
    for count in [1, N - 1, N, N + 1, 3 * N + 1] {
        let gated = Gated::new(fixed_sig(N as i64), &batched(None), echo);
        let instances: Vec<Vec<Tensor>> = (0..count).map(|k| vec![row(&[k as f32, -(k as f32)])]).collect();
        let (results, calls) = gated.run_behind_blocker(vec![row(&[99.0, 99.0])], instances.clone());
        assert_eq!(calls.len(), count.div_ceil(N), "{count} instances");
        for (c, call) in calls.iter().enumerate() {
            let x = &call[0];
            assert_eq!(x.shape, vec![N as i64, 2], "the runner always sees exactly N rows");
            let values = x.to_values::<f32>().unwrap();
            let first = c * N;
            for r in 0..N {
                // real rows in FIFO order, padding rows copy the batch's first instance
                let k = if first + r < count { first + r } else { first };
                assert_eq!(
                    &values[2 * r..2 * r + 2],
                    &[k as f32, -(k as f32)],
                    "{count} instances, call {c}, row {r}"
                );
            }
        }
        // every caller gets its own row back, with the per-instance shape; padded rows are dropped
        assert_eq!(results.len(), count);
        for (k, result) in results.into_iter().enumerate() {
            assert_eq!(result.unwrap(), instances[k]);
        }
    }
}

#[test]
fn without_batch_dim_inputs_come_from_the_first_instance() {
    let s = sig(
        vec![io("x", DType::Float32, &[2, 2]), io("bias", DType::Float32, &[2])],
        vec![io("y", DType::Float32, &[2, 2])],
    );
    let cfg = BatchConfig {
        without_batch_dim_inputs: vec![1],
        ..batched(None)
    };
    let gated = Gated::new(s, &cfg, echo);
    let instances = vec![
        vec![row(&[1.0, 1.0]), row(&[10.0, 20.0])],
        vec![row(&[2.0, 2.0]), row(&[30.0, 40.0])],
    ];
    // the bias slot is the whole [2] tensor: a [3] one is a size error
    assert!(
        gated
            .queue
            .submit(vec![row(&[1.0, 1.0]), row(&[1.0, 2.0, 3.0])])
            .is_err()
    );
    let (results, calls) = gated.run_behind_blocker(vec![row(&[0.0, 0.0]), row(&[0.0, 0.0])], instances.clone());
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0][0], f32_tensor(vec![2, 2], &[1.0, 1.0, 2.0, 2.0]));
    assert_eq!(
        calls[0][1],
        row(&[10.0, 20.0]),
        "taken once, from the first instance, not stacked"
    );
    assert_eq!(results[1].clone().unwrap(), vec![row(&[2.0, 2.0])]);
}

#[test]
fn dynamic_batches_are_limited_and_unpadded() {
    let gated = Gated::new(fixed_sig(-1), &batched(Some(4)), echo);
    let instances: Vec<Vec<Tensor>> = (0..10).map(|k| vec![row(&[k as f32, 0.0])]).collect();
    let (results, calls) = gated.run_behind_blocker(vec![row(&[0.0, 0.0])], instances.clone());
    let rows: Vec<i64> = calls.iter().map(|c| c[0].shape[0]).collect();
    assert_eq!(rows, vec![4, 4, 2]);
    for (k, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), instances[k]);
    }
    assert_eq!(gated.queue.batch_size(), 4);
}

#[test]
fn dynamic_batches_never_mix_shapes() {
    let s = sig(
        vec![io("x", DType::Float32, &[-1, -1])],
        vec![io("y", DType::Float32, &[-1, -1])],
    );
    let gated = Gated::new(s, &batched(None), echo);
    let lengths = [2usize, 3, 2, 3, 2];
    let instances: Vec<Vec<Tensor>> = lengths
        .iter()
        .enumerate()
        .map(|(k, &n)| vec![row(&vec![k as f32; n])])
        .collect();
    let (results, calls) = gated.run_behind_blocker(vec![row(&[0.0])], instances.clone());
    let shapes: Vec<Vec<i64>> = calls.iter().map(|c| c[0].shape.clone()).collect();
    assert_eq!(
        shapes,
        vec![vec![3, 2], vec![2, 3]],
        "grouped by shape, FIFO by each group's first instance"
    );
    for (k, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), instances[k]);
    }
}

#[test]
fn strings_stack_and_split() {
    let s = sig(
        vec![io("s", DType::String, &[-1, 2])],
        vec![io("t", DType::String, &[-1, 2])],
    );
    let gated = Gated::new(s, &batched(None), echo);
    let instances = vec![
        vec![strings(vec![2], &["a", "b"])],
        vec![strings(vec![1, 2], &["c", "dé"])],
    ];
    let (results, calls) = gated.run_behind_blocker(vec![strings(vec![2], &["x", "y"])], instances);
    assert_eq!(calls[0][0], strings(vec![2, 2], &["a", "b", "c", "dé"]));
    assert_eq!(results[1].clone().unwrap(), vec![strings(vec![2], &["c", "dé"])]);
}

#[test]
fn whole_tensors_without_batch_dim() {
    let cfg = BatchConfig {
        with_batch_dim: false,
        max_batch_size: Some(8),
        ..BatchConfig::default()
    };
    let gated = Gated::new(fixed_sig(2), &cfg, echo);
    assert_eq!(gated.queue.batch_size(), 1);
    let instances: Vec<Vec<Tensor>> = (0..3)
        .map(|k| vec![f32_tensor(vec![1, 4], &[k as f32, 1.0, 2.0, 3.0])])
        .collect();
    let (results, calls) = gated.run_behind_blocker(vec![f32_tensor(vec![2, 2], &[0.0; 4])], instances);
    assert_eq!(calls.len(), 3, "one instance per run");
    for (k, result) in results.into_iter().enumerate() {
        assert_eq!(
            result.unwrap(),
            vec![f32_tensor(vec![2, 2], &[k as f32, 1.0, 2.0, 3.0])],
            "model's shape"
        );
    }
}

#[tokio::test]
async fn concurrent_callers_share_one_batch() {
    let gated = Gated::new(fixed_sig(-1), &batched(None), echo);
    let blocker = gated.queue.submit(vec![row(&[0.0, 0.0])]).unwrap();
    gated.started.recv().unwrap();
    let callers = (0..5).map(|k| gated.queue.infer(vec![row(&[k as f32, 1.0])]));
    let release = async {
        // release the blocker only once all five callers are queued
        while gated.queue.queue_depth() < 5 {
            tokio::task::yield_now().await;
        }
        gated.release.send(()).unwrap();
    };
    let (results, ()) = tokio::join!(futures::future::join_all(callers), release);
    blocker.await.unwrap().unwrap();
    for (k, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), vec![row(&[k as f32, 1.0])]);
    }
    let calls = gated.calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1][0].shape, vec![5, 2], "five callers, one run");
}

// ---- failures ----

#[test]
fn model_errors_reach_every_instance_of_the_batch() {
    let failing = |inputs: &[Tensor]| {
        let values = inputs[0].to_values::<f32>().unwrap();
        if values.contains(&13.0) {
            Err(ServeError::Model("unlucky row".into()))
        } else {
            echo(inputs)
        }
    };
    let gated = Gated::new(fixed_sig(2), &batched(None), failing);
    let instances: Vec<Vec<Tensor>> = [1.0, 13.0, 3.0].iter().map(|&v| vec![row(&[v, v])]).collect();
    let (results, _) = gated.run_behind_blocker(vec![row(&[0.0, 0.0])], instances);
    for result in &results[..2] {
        assert_eq!(
            result.clone().unwrap_err(),
            ServeError::Model("Predict failed, model '/models/fake.onnx': unlucky row".into())
        );
    }
    assert_eq!(
        results[2].clone().unwrap(),
        vec![row(&[3.0, 3.0])],
        "the next batch is unaffected"
    );
}

#[test]
fn runner_panics_and_bad_outputs_fail_the_batch_only() {
    let flaky = |inputs: &[Tensor]| {
        let v = inputs[0].to_values::<f32>().unwrap()[0];
        assert!(v != 1.0, "kernel exploded");
        if v == 2.0 {
            return Ok(vec![row(&[1.0, 2.0, 3.0])]); // dim 0 does not match the rows
        }
        if v == 3.0 {
            return Ok(vec![]); // wrong output count
        }
        echo(inputs)
    };
    let queue = ModelQueue::new(
        "/m/flaky.onnx",
        fixed_sig(-1),
        batched(None),
        Box::new(move |i: Vec<Tensor>| flaky(&i)),
    )
    .unwrap();
    let err = |v: f32| queue.infer_blocking(vec![row(&[v, 0.0])]).unwrap_err();
    assert!(matches!(err(1.0), ServeError::Model(t) if t.contains("flaky.onnx") && t.contains("kernel exploded")));
    assert!(matches!(err(2.0), ServeError::Model(t) if t.contains("output 0 has shape [3]")));
    assert!(matches!(err(3.0), ServeError::Model(t) if t.contains("0 outputs")));
    assert_eq!(
        queue.infer_blocking(vec![row(&[4.0, 0.0])]).unwrap(),
        vec![row(&[4.0, 0.0])]
    );
}

#[test]
fn cancelled_callers_are_skipped() {
    let gated = Gated::new(fixed_sig(-1), &batched(None), echo);
    let blocker = gated.queue.submit(vec![row(&[0.0, 0.0])]).unwrap();
    gated.started.recv().unwrap();
    let mut receivers: Vec<_> = (0..4)
        .map(|k| Some(gated.queue.submit(vec![row(&[k as f32, 0.0])]).unwrap()))
        .collect();
    receivers[0] = None; // the batch's would-be first instance goes away
    receivers[2] = None;
    gated.release.send(()).unwrap();
    blocker.blocking_recv().unwrap().unwrap();
    for (k, rx) in receivers.into_iter().enumerate() {
        if let Some(rx) = rx {
            assert_eq!(rx.blocking_recv().unwrap().unwrap(), vec![row(&[k as f32, 0.0])]);
        }
    }
    let calls = gated.calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1][0],
        f32_tensor(vec![2, 2], &[1.0, 0.0, 3.0, 0.0]),
        "only live instances run"
    );
    assert_eq!(gated.queue.queue_depth(), 0);
}

#[tokio::test]
async fn dropped_futures_do_not_break_the_batcher() {
    let gated = Gated::new(fixed_sig(-1), &batched(None), echo);
    let blocker = gated.queue.submit(vec![row(&[0.0, 0.0])]).unwrap();
    gated.started.recv().unwrap();
    {
        // poll once so the instance is queued, then drop the future
        let mut abandoned = Box::pin(gated.queue.infer(vec![row(&[5.0, 5.0])]));
        assert!(futures::poll!(&mut abandoned).is_pending());
        assert_eq!(gated.queue.queue_depth(), 1);
    }
    gated.release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    assert_eq!(
        gated.queue.infer(vec![row(&[6.0, 6.0])]).await.unwrap(),
        vec![row(&[6.0, 6.0])]
    );
}

#[test]
fn shutdown_finishes_queued_work_then_refuses() {
    let gated = Gated::new(fixed_sig(-1), &batched(None), echo);
    let blocker = gated.queue.submit(vec![row(&[0.0, 0.0])]).unwrap();
    gated.started.recv().unwrap();
    let queued = gated.queue.submit(vec![row(&[1.0, 2.0])]).unwrap();
    gated.release.send(()).unwrap();
    gated.queue.shutdown();
    assert!(blocker.blocking_recv().unwrap().is_ok());
    assert_eq!(queued.blocking_recv().unwrap().unwrap(), vec![row(&[1.0, 2.0])]);
    let err = gated.queue.infer_blocking(vec![row(&[1.0, 2.0])]).unwrap_err();
    assert!(
        matches!(&err, ServeError::Unavailable(t) if t.contains("fake.onnx")),
        "{err:?}"
    );
    gated.queue.shutdown();
}

// ---- scheduling: queue delay, preferred sizes, several runners ----

/// How long a step that must not block may take before the test calls it a hang (never a performance threshold).
const GUARD: Duration = Duration::from_mins(1);

/// Runs `f` on its own thread and fails the test if it has not finished within a minute: a guard against a hang
/// in code that must not wait (never a performance threshold).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(GUARD)
        .unwrap_or_else(|_| panic!("{what}: still blocked after 60 s"))
}

fn dynamic(max: usize, delay: Duration, preferred: &[usize]) -> BatchConfig {
    BatchConfig {
        max_batch_size: Some(max),
        max_queue_delay: delay,
        preferred_batch_sizes: preferred.to_vec(),
        ..BatchConfig::default()
    }
}

/// An echo runner that records the row count of every run.
fn counting_echo() -> (Box<dyn BatchRunner>, Arc<Mutex<Vec<i64>>>) {
    let rows: Arc<Mutex<Vec<i64>>> = Arc::default();
    let seen = Arc::clone(&rows);
    let runner = move |inputs: Vec<Tensor>| {
        seen.lock().unwrap().push(inputs[0].shape[0]);
        echo(&inputs)
    };
    (Box::new(runner), rows)
}

#[test]
fn preferred_sizes_are_validated_against_the_batch_mode() {
    let err = |s: ModelSignature, c: BatchConfig| match BatchPlan::new(&s, &c, "/srv/m.onnx").unwrap_err() {
        ServeError::Config(text) => text,
        other => panic!("{other:?}"),
    };
    let text = err(fixed_sig(-1), dynamic(8, Duration::ZERO, &[4, 9]));
    assert!(
        text.ends_with("preferred batch size 9 is out of range: it must be in [1, max_batch_size 8]"),
        "{text}"
    );
    let text = err(fixed_sig(-1), dynamic(8, Duration::ZERO, &[0]));
    assert!(text.contains("preferred batch size 0 is out of range"), "{text}");
    let text = err(fixed_sig(4), dynamic(8, Duration::ZERO, &[2]));
    assert!(
        text.contains("needs a symbolic batch dimension") && text.contains("every run has 4 rows"),
        "{text}"
    );
    let whole = BatchConfig {
        with_batch_dim: false,
        preferred_batch_sizes: vec![2],
        ..BatchConfig::default()
    };
    let text = err(fixed_sig(-1), whole);
    assert!(text.contains("needs with_batch_dim=True"), "{text}");
    // a static batch dimension takes a queue delay (it waits to fill its rows instead of padding)
    let plan = BatchPlan::new(&fixed_sig(4), &dynamic(8, Duration::from_millis(5), &[]), "m.onnx").unwrap();
    assert_eq!(plan.batch_size(), 4);
}

#[test]
fn queue_delay_waits_for_a_full_batch() {
    // With an hour of delay, nothing may run before four instances are there; the fourth runs them at once.
    let (runner, rows) = counting_echo();
    let cfg = dynamic(4, Duration::from_hours(1), &[]);
    let queue = ModelQueue::new("m.onnx", fixed_sig(-1), cfg, runner).unwrap();
    let receivers: Vec<_> = (0..4)
        .map(|k| queue.submit(vec![row(&[k as f32, 0.0])]).unwrap())
        .collect();
    let results = within("a full batch", move || {
        receivers
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect::<Vec<_>>()
    });
    for (k, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), vec![row(&[k as f32, 0.0])]);
    }
    assert_eq!(*rows.lock().unwrap(), vec![4], "one run, after the batch filled");
}

#[test]
fn queue_delay_runs_a_partial_batch_when_due() {
    let (runner, rows) = counting_echo();
    let queue = ModelQueue::new(
        "m.onnx",
        fixed_sig(-1),
        dynamic(4, Duration::from_millis(20), &[]),
        runner,
    )
    .unwrap();
    let pending = queue.submit(vec![row(&[1.0, 2.0])]).unwrap();
    let result = within("a due partial batch", move || pending.blocking_recv().unwrap());
    assert_eq!(result.unwrap(), vec![row(&[1.0, 2.0])]);
    assert_eq!(*rows.lock().unwrap(), vec![1]);
}

#[test]
fn shutdown_runs_waiting_instances_without_their_delay() {
    let (runner, rows) = counting_echo();
    let cfg = dynamic(4, Duration::from_hours(1), &[]);
    let queue = ModelQueue::new("m.onnx", fixed_sig(-1), cfg, runner).unwrap();
    let pending = queue.submit(vec![row(&[3.0, 4.0])]).unwrap();
    let result = within("shutdown", move || {
        queue.shutdown();
        pending.blocking_recv().unwrap()
    });
    assert_eq!(result.unwrap(), vec![row(&[3.0, 4.0])]);
    assert_eq!(*rows.lock().unwrap(), vec![1]);
}

#[test]
fn fixed_batches_wait_to_fill_instead_of_padding() {
    let (runner, rows) = counting_echo();
    let cfg = dynamic(8, Duration::from_hours(1), &[]);
    let queue = ModelQueue::new("m.onnx", fixed_sig(2), cfg, runner).unwrap();
    let a = queue.submit(vec![row(&[1.0, 1.0])]).unwrap();
    let b = queue.submit(vec![row(&[2.0, 2.0])]).unwrap();
    let (a, b) = within("a full fixed batch", move || {
        (a.blocking_recv().unwrap(), b.blocking_recv().unwrap())
    });
    assert_eq!(
        (a.unwrap(), b.unwrap()),
        (vec![row(&[1.0, 1.0])], vec![row(&[2.0, 2.0])])
    );
    assert_eq!(*rows.lock().unwrap(), vec![2]);
}

#[test]
fn preferred_sizes_split_what_is_queued() {
    let gated = Gated::new(fixed_sig(-1), &dynamic(8, Duration::ZERO, &[4]), echo);
    let instances: Vec<Vec<Tensor>> = (0..7).map(|k| vec![row(&[k as f32, 0.0])]).collect();
    let (results, calls) = gated.run_behind_blocker(vec![row(&[0.0, 0.0])], instances);
    for (k, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), vec![row(&[k as f32, 0.0])]);
    }
    let sizes: Vec<i64> = calls.iter().map(|c| c[0].shape[0]).collect();
    assert_eq!(sizes, vec![4, 3], "a preferred batch of 4 first, then the rest");
}

/// A runner that reports each run on `ran` and, for the first run only, blocks until `release` fires.
fn gated_runner(
    id: usize,
    ran: std_mpsc::Sender<(usize, Vec<f32>)>,
    release: Option<std_mpsc::Receiver<()>>,
) -> Box<dyn BatchRunner> {
    let mut release = release;
    Box::new(move |inputs: Vec<Tensor>| {
        ran.send((id, inputs[0].to_values::<f32>().unwrap())).unwrap();
        if let Some(gate) = release.take() {
            gate.recv().unwrap();
        }
        echo(&inputs)
    })
}

#[test]
fn idle_runners_take_the_next_batch() {
    let (ran_tx, ran) = std_mpsc::channel();
    let (release_0, gate_0) = std_mpsc::channel();
    let (release_1, gate_1) = std_mpsc::channel();
    let runners = vec![
        gated_runner(0, ran_tx.clone(), Some(gate_0)),
        gated_runner(1, ran_tx, Some(gate_1)),
    ];
    let queue = ModelQueue::with_runners("/m/two.onnx", fixed_sig(-1), batched(Some(4)), runners).unwrap();
    assert_eq!(queue.runners(), 2);
    let first = queue.submit(vec![row(&[1.0, 1.0])]).unwrap();
    let (busy, values) = ran.recv_timeout(GUARD).expect("the first batch runs");
    assert_eq!(values, vec![1.0, 1.0]);
    // `busy` is blocked inside its run: the next batch must start on the other runner meanwhile.
    let second = queue.submit(vec![row(&[2.0, 2.0])]).unwrap();
    let (other, values) = ran
        .recv_timeout(GUARD)
        .expect("the idle runner takes the second batch while the first runner is busy");
    assert_ne!(other, busy);
    assert_eq!(values, vec![2.0, 2.0]);
    release_0.send(()).unwrap();
    release_1.send(()).unwrap();
    let (first, second) = within("both runs", move || {
        (first.blocking_recv().unwrap(), second.blocking_recv().unwrap())
    });
    assert_eq!(first.unwrap(), vec![row(&[1.0, 1.0])]);
    assert_eq!(second.unwrap(), vec![row(&[2.0, 2.0])]);
    // Afterwards both keep serving; shutdown drains the queue through whichever runner is free.
    let receivers: Vec<_> = (0..6)
        .map(|k| queue.submit(vec![row(&[k as f32, 5.0])]).unwrap())
        .collect();
    let results = within("drain", move || {
        queue.shutdown();
        receivers
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect::<Vec<_>>()
    });
    for (k, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), vec![row(&[k as f32, 5.0])]);
    }
    let runs: Vec<usize> = ran.try_iter().map(|(id, _)| id).collect();
    assert!(!runs.is_empty() && runs.iter().all(|&id| id < 2), "{runs:?}");
}

#[test]
fn a_failing_runner_does_not_stop_the_others() {
    let broken = |_: Vec<Tensor>| -> Result<Vec<Tensor>, ServeError> { panic!("device lost") };
    let runners: Vec<Box<dyn BatchRunner>> = vec![Box::new(broken), Box::new(|i: Vec<Tensor>| echo(&i))];
    let queue = ModelQueue::with_runners("/m/two.onnx", fixed_sig(-1), batched(Some(1)), runners).unwrap();
    // Some instances may land on the broken runner and fail with its text; every one is answered, and the queue
    // keeps serving through the healthy runner.
    let mut ok = 0;
    for k in 0..20 {
        match queue.infer_blocking(vec![row(&[k as f32, 0.0])]) {
            Ok(out) => {
                assert_eq!(out, vec![row(&[k as f32, 0.0])]);
                ok += 1;
            }
            Err(ServeError::Model(text)) => assert!(text.contains("device lost"), "{text}"),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(ok > 0, "the healthy runner answered nothing");
    let err = ModelQueue::with_runners("/m/none.onnx", fixed_sig(-1), batched(None), Vec::new()).unwrap_err();
    assert!(
        matches!(&err, ServeError::Config(t) if t.contains("none.onnx") && t.contains("at least one runner")),
        "{err:?}"
    );
}

#[test]
fn default_intra_op_threads_share_the_cores() {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert_eq!(default_intra_op_threads(1), cores);
    assert_eq!(default_intra_op_threads(0), cores);
    assert_eq!(default_intra_op_threads(cores * 4), 1);
    assert_eq!(default_intra_op_threads(2), (cores / 2).max(1));
}

#[derive(Default)]
struct Recorder(Mutex<Vec<BatchRun>>);

impl BatchObserver for Recorder {
    fn batch_done(&self, run: &BatchRun) {
        self.0.lock().unwrap().push(*run);
    }
}

#[test]
fn observers_see_every_batch() {
    let failing = |inputs: &[Tensor]| {
        if inputs[0].to_values::<f32>().unwrap().contains(&13.0) {
            Err(ServeError::Model("unlucky".into()))
        } else {
            echo(inputs)
        }
    };
    let gated = Gated::new(fixed_sig(-1), &batched(Some(4)), failing);
    let recorder = Arc::new(Recorder::default());
    assert!(gated.queue.set_observer(recorder.clone()));
    assert!(
        !gated.queue.set_observer(Arc::new(Recorder::default())),
        "the first observer stays"
    );
    let instances: Vec<Vec<Tensor>> = [1.0, 2.0, 3.0].iter().map(|&v| vec![row(&[v, v])]).collect();
    let (results, _) = gated.run_behind_blocker(vec![row(&[0.0, 0.0])], instances);
    assert!(results.iter().all(Result::is_ok));
    assert!(gated.queue.infer_blocking(vec![row(&[13.0, 0.0])]).is_err());
    // The batch thread reports a run after answering it: wait for the last report.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while recorder.0.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let runs = recorder.0.lock().unwrap();
    let seen: Vec<(usize, bool)> = runs.iter().map(|r| (r.instances, r.ok)).collect();
    assert_eq!(seen, vec![(1, true), (3, true), (1, false)]);
}

/// A runner that records the name of the thread each run happens on, optionally sleeping first.
fn thread_recorder(sleep: Duration) -> (Box<dyn BatchRunner>, Arc<Mutex<Vec<String>>>) {
    let threads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&threads);
    let runner = move |inputs: Vec<Tensor>| {
        std::thread::sleep(sleep);
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        seen.lock().unwrap().push(name);
        echo(&inputs)
    };
    (Box::new(runner), threads)
}

/// Whether every run recorded from index `from` on happened on `thread`.
fn all_ran_on(threads: &Mutex<Vec<String>>, from: usize, thread: &str) -> bool {
    threads.lock().unwrap()[from..].iter().all(|t| t == thread)
}

fn whole() -> BatchConfig {
    BatchConfig {
        with_batch_dim: false,
        ..BatchConfig::default()
    }
}

#[test]
fn fast_whole_models_run_on_the_calling_thread() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let here = std::thread::current().name().unwrap_or("?").to_owned();
    let (runner, threads) = thread_recorder(Duration::ZERO);
    let queue = ModelQueue::new("/m/fast.onnx", fixed_sig(2), whole(), runner).unwrap();
    // The first run has no duration estimate yet, so it goes through the batch thread; once the moving average is
    // under the limit, the caller runs the model itself. (A run preempted on a busy machine can push the average up
    // for a few runs, hence the loop; 200 fast runs bring any start below the limit.)
    let mut inline_after = None;
    for k in 0..200 {
        let x = f32_tensor(vec![2, 2], &[k as f32, 1.0, 2.0, 3.0]);
        assert_eq!(runtime.block_on(queue.infer_all(vec![vec![x.clone()]]))[0], Ok(vec![x]));
        if threads.lock().unwrap().last() == Some(&here) {
            inline_after = Some(k);
            break;
        }
    }
    assert!(inline_after.is_some_and(|k| k > 0), "{inline_after:?}");
    assert_eq!(threads.lock().unwrap()[0], "rustserve-model-fast.onnx");
    // several instances of one request, and `infer` itself, always go through the queue
    let before = threads.lock().unwrap().len();
    let x = f32_tensor(vec![2, 2], &[7.0; 4]);
    let results = runtime.block_on(queue.infer_all(vec![vec![x.clone()], vec![x.clone()]]));
    assert_eq!(results, vec![Ok(vec![x.clone()]), Ok(vec![x.clone()])]);
    assert_eq!(runtime.block_on(queue.infer(vec![x.clone()])).unwrap(), vec![x]);
    assert!(all_ran_on(&threads, before, "rustserve-model-fast.onnx"));
    // bad input is still refused with the instance check's text on the inline path
    let err = runtime
        .block_on(queue.infer_all(vec![vec![row(&[1.0])]]))
        .remove(0)
        .unwrap_err();
    assert!(
        matches!(&err, ServeError::InvalidInput(t) if t.contains("size 4 not match the size 16")),
        "{err:?}"
    );
    queue.shutdown();
    let err = runtime
        .block_on(queue.infer_all(vec![vec![f32_tensor(vec![2, 2], &[0.0; 4])]]))
        .remove(0)
        .unwrap_err();
    assert!(
        matches!(err, ServeError::Unavailable(_)),
        "nothing runs after shutdown: {err:?}"
    );
}

#[test]
fn slow_or_batched_models_always_use_their_batch_thread() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    // a run that sleeps 2 ms can never average under the 100 µs inline limit
    let (runner, threads) = thread_recorder(Duration::from_millis(2));
    let queue = ModelQueue::new("/m/slow.onnx", fixed_sig(2), whole(), runner).unwrap();
    // a model with a batch dimension keeps every instance in the queue, where instances can share runs
    let (batched_runner, batched_threads) = thread_recorder(Duration::ZERO);
    let dynamic = ModelQueue::new("/m/dyn.onnx", fixed_sig(-1), batched(Some(4)), batched_runner).unwrap();
    // a model with a symbolic dimension: one large instance could take far longer than the average run
    let (symbolic_runner, symbolic_threads) = thread_recorder(Duration::ZERO);
    let symbolic = ModelQueue::new("/m/sym.onnx", fixed_sig(-1), whole(), symbolic_runner).unwrap();
    for k in 0..3 {
        let x = f32_tensor(vec![2, 2], &[k as f32; 4]);
        assert_eq!(runtime.block_on(queue.infer_all(vec![vec![x.clone()]]))[0], Ok(vec![x]));
        let r = row(&[k as f32, 0.0]);
        assert_eq!(
            runtime.block_on(dynamic.infer_all(vec![vec![r.clone()]]))[0],
            Ok(vec![r])
        );
    }
    // 40 fast runs bring the moving average far under the inline limit; the symbolic model still never inlines.
    for k in 0..40 {
        let x = f32_tensor(vec![3, 2], &[k as f32; 6]);
        assert_eq!(
            runtime.block_on(symbolic.infer_all(vec![vec![x.clone()]]))[0],
            Ok(vec![x])
        );
    }
    assert!(all_ran_on(&symbolic_threads, 0, "rustserve-model-sym.onnx"));
    assert!(all_ran_on(&threads, 0, "rustserve-model-slow.onnx"));
    assert!(all_ran_on(&batched_threads, 0, "rustserve-model-dyn.onnx"));
}

// ---- real ONNX Runtime sessions ----

fn load(name: &str, cfg: &BatchConfig) -> ModelQueue {
    load_model_queue(&model_path(name), cfg.clone(), &[DeviceChoice::Cpu], Some(1)).unwrap()
}

#[tokio::test]
async fn ort_add_fixed_batch() {
    ort_ready();
    let queue = load("add_fixed", &batched(None));
    assert_eq!(queue.batch_mode(), BatchMode::Fixed(2));
    let calls = (0..5).map(|k| {
        let k = k as f32;
        queue.infer(vec![row(&[k, 1.0]), row(&[10.0, 20.0 * k])])
    });
    for (k, result) in futures::future::join_all(calls).await.into_iter().enumerate() {
        let k = k as f32;
        assert_eq!(result.unwrap(), vec![row(&[k + 10.0, 1.0 + 20.0 * k])]);
    }
    let text = match queue.submit(vec![row(&[1.0, 2.0]), row(&[1.0, 2.0, 3.0, 4.0])]) {
        Err(ServeError::InvalidInput(t)) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text,
        "Given model input 1 size 16 not match the size 8 defined in model"
    );
}

#[tokio::test]
async fn ort_dynamic_batch_and_bias() {
    ort_ready();
    let queue = load("mul_dynamic", &batched(Some(3)));
    assert_eq!(queue.batch_mode(), BatchMode::Dynamic(3));
    let calls = (0..7).map(|k| queue.infer(vec![row(&[k as f32, 1.0, -2.0])]));
    for (k, result) in futures::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(result.unwrap(), vec![row(&[2.0 * k as f32, 2.0, -4.0])]);
    }
    let cfg = BatchConfig {
        without_batch_dim_inputs: vec![1],
        ..batched(None)
    };
    let queue = load("add_bias_fixed", &cfg);
    assert_eq!(queue.batch_size(), 2);
    let out = queue
        .infer(vec![row(&[1.0, 2.0, 3.0]), row(&[0.5, 0.5, 0.5])])
        .await
        .unwrap();
    assert_eq!(out, vec![row(&[1.5, 2.5, 3.5])]);
}

#[tokio::test]
async fn ort_strings_f16_and_bool() {
    ort_ready();
    let queue = load("string_identity", &batched(None));
    let a = queue.infer(vec![strings(vec![2], &["héllo", ""])]);
    let b = queue.infer(vec![strings(vec![2], &["x", "yz"])]);
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a.unwrap(), vec![strings(vec![2], &["héllo", ""])]);
    assert_eq!(b.unwrap(), vec![strings(vec![2], &["x", "yz"])]);

    let queue = load("f16_cast", &batched(None));
    assert_eq!(queue.batch_mode(), BatchMode::Fixed(2));
    let halves: Vec<half::f16> = [1.0f32, -0.5, 8.0].iter().map(|&v| half::f16::from_f32(v)).collect();
    let x = Tensor::from_values(vec![3], &halves).unwrap();
    let out = queue.infer(vec![x.clone()]).await.unwrap();
    assert_eq!(out, vec![x, row(&[1.0, -0.5, 8.0])]);

    let queue = load("bool_not", &batched(None));
    let out = queue
        .infer(vec![Tensor::from_values(vec![2], &[true, false]).unwrap()])
        .await
        .unwrap();
    assert_eq!(out[0].to_values::<bool>().unwrap(), vec![false, true]);
}

#[tokio::test]
async fn ort_runtime_error_names_the_model_and_shapes_are_grouped() {
    ort_ready();
    let queue = load("add_symbolic", &batched(None));
    let err = queue
        .infer(vec![row(&[1.0, 2.0]), row(&[1.0, 2.0, 3.0])])
        .await
        .unwrap_err();
    assert!(
        // The file name only: client-facing texts never show the server's directories.
        matches!(&err, ServeError::Model(t) if t.starts_with("Predict failed, model 'add_symbolic.onnx': ")),
        "{err:?}"
    );
    // different per-instance shapes run in separate batches, so both succeed
    let a = queue.infer(vec![row(&[1.0, 2.0]), row(&[10.0, 20.0])]);
    let b = queue.infer(vec![row(&[1.0, 2.0, 3.0]), row(&[1.0, 1.0, 1.0])]);
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a.unwrap(), vec![row(&[11.0, 22.0])]);
    assert_eq!(b.unwrap(), vec![row(&[2.0, 3.0, 4.0])]);
}

#[test]
fn ort_validation_error_names_the_file() {
    ort_ready();
    let cfg = BatchConfig {
        without_batch_dim_inputs: vec![0, 1],
        ..batched(None)
    };
    let err = load_model_queue(&model_path("add_fixed"), cfg, &[DeviceChoice::Cpu], None).unwrap_err();
    assert!(
        matches!(&err, ServeError::Config(t) if t.contains("add_fixed.onnx")),
        "{err:?}"
    );
}
