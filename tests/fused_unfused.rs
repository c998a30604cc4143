//! The correctness anchor of expert fusion: the fused grouped MoCSE network and N separately
//! built expert networks holding the same weights give the same outputs, loss, gradients for
//! every parameter and the input image, and running statistics, in training and in evaluation mode.

use mocse::autograd::{Tape, Var};
use mocse::device::Device;
use mocse::nn::model::{Model, ModelConfig, ModelKind, join_experts, split_experts};
use mocse::nn::preact_resnet::Weights;
use mocse::ops::aggregate::Aggregate;
use mocse::rng::{Philox, Purpose};
use mocse::tensor::Tensor;

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    mocse::selftest::relative_error(a.as_slice(), b.as_slice())
}

fn random(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = Philox::new(seed, Purpose::Init, 0);
    Tensor::from_vec(shape, (0..shape.iter().product()).map(|_| rng.range(lo, hi)).collect())
}

/// Fresh weights with non-trivial batch-norm affine parameters and running statistics.
fn weights(model: &Model) -> Weights {
    let net = model.fused();
    let mut w = net.init_weights(3, [0.5, 0.45, 0.4], [0.25, 0.24, 0.26]);
    for (i, (spec, t)) in net.param_specs().iter().zip(w.params.iter_mut()).enumerate() {
        if spec.name.contains("bn") {
            *t = random(t.shape(), 100 + i as u64, 0.5, 1.5);
        }
    }
    for (i, (spec, t)) in net.buffer_specs().iter().zip(w.buffers.iter_mut()).enumerate() {
        if spec.name.ends_with("running_mean") {
            *t = random(t.shape(), 500 + i as u64, -0.2, 0.2);
        } else if spec.name.ends_with("running_var") {
            *t = random(t.shape(), 500 + i as u64, 0.5, 2.0);
        }
    }
    w
}

struct Run {
    output: Tensor,
    input_grad: Tensor,
    loss: f32,
    grads: Vec<Tensor>,
    buffers: Vec<Tensor>,
}

/// Runs on `device` and brings everything back to the cpu for comparison.
fn run(
    device: Device,
    model: &Model,
    params: &[Tensor],
    buffers: &[Tensor],
    images: &Tensor,
    labels: &[u32],
    train: bool,
) -> Run {
    let on = |t: &Tensor| t.to_device(device).unwrap();
    let back = |t: &Tensor| t.to_device(Device::Cpu).unwrap();
    let tape = Tape::new();
    let vars: Vec<Var> = params.iter().map(|p| tape.leaf(on(p), true)).collect();
    let x = tape.leaf(on(images), true);
    let mut buffers: Vec<Tensor> = buffers.iter().map(on).collect();
    let out = model.forward(&tape, &vars, &mut buffers, &x, train).unwrap();
    let loss = model.loss(&tape, &out, labels).unwrap();
    let grads = tape.backward(&loss).unwrap();
    Run {
        output: back(out.value()),
        input_grad: back(grads.get(&x).expect("the image gets a gradient")),
        loss: loss.value().scalar_value().unwrap(),
        grads: vars.iter().map(|v| back(grads.get(v).expect("every parameter gets a gradient"))).collect(),
        buffers: buffers.iter().map(back).collect(),
    }
}

fn check(device: Device, aggregate: Aggregate, train: bool) {
    let config =
        ModelConfig { kind: ModelKind::Mocse, num_classes: 10, width: 4, aggregate, bce_weight: 0.7 };
    let fused = Model::new(config);
    let unfused = Model::new_unfused(config).unwrap();
    let w = weights(&fused);
    let experts = split_experts(fused.fused(), &w);
    let expert_params: Vec<Tensor> = experts.iter().flat_map(|e| e.params.clone()).collect();
    let expert_buffers: Vec<Tensor> = experts.iter().flat_map(|e| e.buffers.clone()).collect();

    let images = random(&[6, 32, 32, 3], 9, 0.0, 1.0);
    let labels = [0, 3, 9, 3, 7, 1];
    let a = run(device, &fused, &w.params, &w.buffers, &images, &labels, train);
    let b = run(device, &unfused, &expert_params, &expert_buffers, &images, &labels, train);

    assert_eq!(a.output.shape(), &[6, 10, 2]);
    assert!(relative_error(&a.output, &b.output) < 1e-4, "outputs differ");
    assert!(((a.loss - b.loss) / b.loss).abs() < 1e-4, "loss {} vs {}", a.loss, b.loss);
    // The gradient with respect to the image (what attacks use) too.
    assert!(relative_error(&a.input_grad, &b.input_grad) < 1e-4, "input gradients differ");

    let per_expert = fused.fused().param_specs().len();
    let expert_grads: Vec<Vec<Tensor>> = b.grads.chunks(per_expert).map(|c| c.to_vec()).collect();
    let joined = join_experts(fused.fused(), &expert_grads);
    for ((spec, ga), gb) in fused.fused().param_specs().iter().zip(&a.grads).zip(&joined) {
        let e = relative_error(ga, gb);
        assert!(e < 1e-4, "gradient of {} differs: relative error {e}", spec.name);
    }

    // Running statistics: after a training step they moved, identically in both forms.
    let fused_after = Weights { params: w.params.clone(), buffers: a.buffers };
    let split_after = split_experts(fused.fused(), &fused_after);
    let per_buffers = split_after[0].buffers.len();
    for (n, expert) in split_after.iter().enumerate() {
        for (i, t) in expert.buffers.iter().enumerate() {
            assert!(relative_error(t, &b.buffers[n * per_buffers + i]) < 1e-4, "buffer {i} of expert {n}");
        }
    }
}

#[test]
fn fused_equals_unfused_in_training_mode() {
    check(Device::Cpu, Aggregate::Prob, true);
    check(Device::Cpu, Aggregate::LogOdds, true);
}

#[test]
fn fused_equals_unfused_in_evaluation_mode() {
    check(Device::Cpu, Aggregate::Prob, false);
    check(Device::Cpu, Aggregate::LogOdds, false);
}

/// The same identity through the CUDA kernels, run by the emulator.
#[test]
fn fused_equals_unfused_on_emu() {
    check(Device::Emu, Aggregate::Prob, true);
    check(Device::Emu, Aggregate::LogOdds, false);
}

#[test]
fn split_and_join_are_inverse() {
    let config = ModelConfig {
        kind: ModelKind::Mocse,
        num_classes: 10,
        width: 4,
        aggregate: Aggregate::Prob,
        bce_weight: 1.0,
    };
    let model = Model::new(config);
    let w = weights(&model);
    let experts = split_experts(model.fused(), &w);
    assert_eq!(experts.len(), 10);
    let joined = join_experts(model.fused(), &experts.iter().map(|e| e.params.clone()).collect::<Vec<_>>());
    for (a, b) in joined.iter().zip(&w.params) {
        assert_eq!(a.as_slice(), b.as_slice());
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
fn fused_equals_unfused_on_cuda() {
    mocse::gpu::cuda::probe().expect("a usable GPU");
    check(Device::Cuda, Aggregate::Prob, true);
    check(Device::Cuda, Aggregate::LogOdds, false);
    mocse::precision::scoped(mocse::precision::Precision::Bf16, || {
        check(Device::Cuda, Aggregate::Prob, true)
    });
}

/// And in bf16 (`--precision bf16`): both forms round the same values to bf16, so they still
/// differ only in the order of f32 additions.
#[test]
fn fused_equals_unfused_in_bf16_on_emu() {
    mocse::precision::scoped(mocse::precision::Precision::Bf16, || {
        check(Device::Emu, Aggregate::Prob, true);
        check(Device::Emu, Aggregate::LogOdds, false);
    });
}
