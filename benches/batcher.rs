//! Batcher hot paths: per-instance check, stacking instances into a batch (with fixed-batch padding), splitting
//! outputs back per instance, and a full trip through a model queue and its batch thread with an echo runner (no
//! ONNX Runtime, so what is timed is rustserve's own work). Run with `make bench`; compare revisions on one machine.

// Bench data are small counts turned into f32 values; precision is not a concern.
#![allow(clippy::cast_precision_loss)]

use std::hint::black_box;
use std::time::Duration;

use _rustserve::batching::{BatchConfig, BatchPlan, CheckedInstance, ModelQueue};
use _rustserve::batching::{IoInfo, ModelSignature};
use _rustserve::tensor::{DType, Tensor};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn signature(dim0: i64, row: &[i64]) -> ModelSignature {
    let mut shape = vec![dim0];
    shape.extend_from_slice(row);
    let io = |name: &str| IoInfo {
        name: name.to_owned(),
        dtype: DType::Float32,
        shape: shape.clone(),
    };
    ModelSignature {
        inputs: vec![io("x")],
        outputs: vec![io("y")],
    }
}

fn instance(row: &[i64], value: f32) -> Vec<Tensor> {
    let count = row.iter().product::<i64>() as usize;
    vec![Tensor::from_values(row.to_vec(), &vec![value; count]).expect("values match the shape")]
}

fn checked(plan: &BatchPlan, row: &[i64], count: usize) -> Vec<Vec<Tensor>> {
    (0..count)
        .map(|k| {
            let CheckedInstance { inputs, .. } = plan.check_instance(instance(row, k as f32)).expect("valid instance");
            inputs
        })
        .collect()
}

fn bench_plan(c: &mut Criterion) {
    // (label, dim 0 of the model: -1 symbolic, row shape, instances per batch)
    let cases: [(&str, i64, &[i64], usize); 3] = [
        ("dynamic 32x[2,2]f32", -1, &[2, 2], 32),
        ("dynamic 8x[3,224,224]f32", -1, &[3, 224, 224], 8),
        ("fixed 8, 3x[3,224,224]f32 (5 padded)", 8, &[3, 224, 224], 3),
    ];
    for (label, dim0, row, count) in cases {
        let cfg = BatchConfig {
            max_batch_size: Some(32),
            ..BatchConfig::default()
        };
        let plan = BatchPlan::new(&signature(dim0, row), &cfg, "bench.onnx").expect("valid plan");
        let one = instance(row, 1.0);
        c.bench_function(&format!("check {label}"), |b| {
            b.iter_batched(
                || one.clone(),
                |inputs| plan.check_instance(black_box(inputs)),
                BatchSize::SmallInput,
            );
        });
        let instances = checked(&plan, row, count);
        c.bench_function(&format!("stack {label}"), |b| {
            b.iter(|| plan.stack(black_box(&instances)));
        });
        let outputs = plan.stack(&instances).expect("stackable");
        c.bench_function(&format!("split {label}"), |b| {
            b.iter_batched(
                || outputs.clone(),
                |out| plan.split(black_box(out), count),
                BatchSize::SmallInput,
            );
        });
    }
}

fn bench_queue(c: &mut Criterion) {
    let cfg = BatchConfig {
        max_batch_size: Some(32),
        max_queue_delay: Duration::ZERO,
        ..BatchConfig::default()
    };
    let echo = |inputs: Vec<Tensor>| Ok(inputs);
    let queue = ModelQueue::new("echo.onnx", signature(-1, &[2, 2]), cfg, Box::new(echo)).expect("queue starts");
    let one = instance(&[2, 2], 1.0);
    c.bench_function("queue round trip 1x[2,2]f32 (submit, batch thread, reply)", |b| {
        b.iter(|| queue.infer_blocking(black_box(one.clone())).expect("echo answers"));
    });
    c.bench_function("queue round trip 32x[2,2]f32 submitted together", |b| {
        b.iter(|| {
            let receivers: Vec<_> = (0..32).map(|_| queue.submit(one.clone()).expect("queued")).collect();
            for rx in receivers {
                black_box(rx.blocking_recv().expect("answered").expect("echo answers"));
            }
        });
    });
}

criterion_group!(benches, bench_plan, bench_queue);
criterion_main!(benches);
