//! `mocse selftest`: every kernel against the cpu device on random inputs of several shapes.
//!
//! A case runs one op (forward, and backward from a random output gradient) on the cpu device
//! and on the device under test, with the same inputs, and reports the largest relative error
//! over the output and every input gradient. The same cases are the emulator tests of the test
//! suite, so every device runs the same test body.

use anyhow::{Context, Result};

use crate::attack::{BnMode, Norm};
use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, LaunchConfig, int};
use crate::nn::model::{Model, ModelConfig, ModelKind};
use crate::ops::aggregate::Aggregate;
use crate::ops::batchnorm::Activation;
use crate::ops::conv::{
    Conv2dParams, ConvGeometry, ConvImpl, check_shapes, conv2d_backward_data, conv2d_backward_weight,
    conv2d_forward, reference, set_conv_impl,
};
use crate::ops::sgd::{SgdConfig, sgd_step};
use crate::precision::{self, Precision};
use crate::rng::{Philox, Purpose};
use crate::tensor::Tensor;
use crate::train::{AdversarialTraining, TrainBatch, TrainingMode, train_step};

type OpFn = Box<dyn Fn(&Tape, &[Var]) -> Result<Var>>;

/// One op on fixed inputs.
pub struct Case {
    pub name: String,
    inputs: Vec<Tensor>,
    op: OpFn,
    pub tolerance: f64,
}

#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub max_relative_error: f64,
    pub tolerance: f64,
    /// Set when the case could not run at all.
    pub error: Option<String>,
    /// The kernels the case launched.
    pub kernels: std::collections::BTreeSet<String>,
    /// Whether what the device is compared with is an independent implementation (the cpu
    /// device's Rust, f64 sums, src/rng.rs); not so for the corruptions, whose cpu side runs
    /// the same kernels through the emulator.
    pub independent: bool,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.max_relative_error <= self.tolerance
    }
}

fn random(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = Philox::new(seed, Purpose::Init, u64::MAX - 1);
    Tensor::from_vec(shape, (0..shape.iter().product()).map(|_| rng.range(lo, hi)).collect())
}

/// Values of magnitude at least 0.2 (no relu kink within rounding).
fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let t = random(shape, seed, -1.0, 1.0);
    Tensor::from_vec(shape, t.as_slice().iter().map(|v| v.signum() * (0.2 + 0.8 * v.abs())).collect())
}

/// max |a - b| / max |b|; infinite when the lengths differ or a value is NaN on one side only
/// (`f64::max` would silently skip a NaN).
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        if x.is_nan() != y.is_nan() {
            return f64::INFINITY;
        }
        if !x.is_nan() {
            diff = diff.max((*x as f64 - *y as f64).abs());
            scale = scale.max(y.abs() as f64);
        }
    }
    diff / scale.max(1e-12)
}

fn case(
    name: impl Into<String>,
    inputs: Vec<Tensor>,
    op: impl Fn(&Tape, &[Var]) -> Result<Var> + 'static,
) -> Case {
    Case { name: name.into(), inputs, op: Box::new(op), tolerance: 1e-4 }
}

/// Every op family with the shapes that matter: odd sizes, groups 1 and N, stride 1 and 2, and
/// both tile shapes of the convolution kernels.
pub fn cases() -> Vec<Case> {
    let mut out = vec![
        case("relu", vec![away_from_zero(&[3, 5, 7, 4], 1)], |t, v| t.relu(&v[0])),
        case("add", vec![random(&[4, 9], 2, -1.0, 1.0), random(&[4, 9], 3, -1.0, 1.0)], |t, v| {
            t.add(&v[0], &v[1])
        }),
        case("scale", vec![random(&[2, 3, 4], 4, -1.0, 1.0)], |t, v| t.scale(&v[0], -1.5)),
        case("concat", vec![random(&[4, 2], 5, -1.0, 1.0), random(&[4, 3], 6, -1.0, 1.0)], |t, v| {
            t.concat_last(v)
        }),
        case("normalize", vec![random(&[2, 5, 5, 3], 7, 0.0, 1.0)], |t, v| {
            let mean = Tensor::from_vec(&[3], vec![0.5, 0.4, 0.3]).to_device(v[0].value().device())?;
            let std = Tensor::from_vec(&[3], vec![0.25, 0.2, 0.3]).to_device(v[0].value().device())?;
            t.normalize(&v[0], &mean, &std)
        }),
        case(
            "batch_norm_train",
            vec![random(&[3, 5, 3, 4], 8, -1.0, 1.0), random(&[4], 9, 0.5, 1.5), random(&[4], 10, -0.5, 0.5)],
            |t, v| Ok(t.batch_norm_train(&v[0], &v[1], &v[2], 1e-5, Activation::Identity)?.0),
        ),
        case(
            "batch_norm_train_many_rows",
            vec![
                random(&[8, 16, 16, 6], 11, -2.0, 3.0),
                random(&[6], 12, 0.5, 1.5),
                random(&[6], 13, -0.5, 0.5),
            ],
            |t, v| Ok(t.batch_norm_train(&v[0], &v[1], &v[2], 1e-5, Activation::Identity)?.0),
        ),
        case(
            "batch_norm_eval",
            vec![
                random(&[2, 3, 3, 5], 14, -1.0, 1.0),
                random(&[5], 15, 0.5, 1.5),
                random(&[5], 16, -0.5, 0.5),
            ],
            |t, v| {
                let d = v[0].value().device();
                let rm = random(&[5], 17, -0.2, 0.2).to_device(d)?;
                let rv = random(&[5], 18, 0.5, 2.0).to_device(d)?;
                t.batch_norm_eval(&v[0], &v[1], &v[2], &rm, &rv, 1e-5, Activation::Identity)
            },
        ),
        case(
            "batch_norm_relu_train",
            vec![
                random(&[8, 16, 16, 6], 51, -2.0, 3.0),
                random(&[6], 52, 0.5, 1.5),
                random(&[6], 53, -0.5, 0.5),
            ],
            |t, v| Ok(t.batch_norm_train(&v[0], &v[1], &v[2], 1e-5, Activation::Relu)?.0),
        ),
        case(
            "batch_norm_relu_eval",
            vec![
                random(&[2, 3, 3, 5], 54, -1.0, 1.0),
                random(&[5], 55, 0.5, 1.5),
                random(&[5], 56, -0.5, 0.5),
            ],
            |t, v| {
                let d = v[0].value().device();
                let rm = random(&[5], 57, -0.2, 0.2).to_device(d)?;
                let rv = random(&[5], 58, 0.5, 2.0).to_device(d)?;
                t.batch_norm_eval(&v[0], &v[1], &v[2], &rm, &rv, 1e-5, Activation::Relu)
            },
        ),
        case("global_avg_pool", vec![random(&[3, 4, 5, 6], 19, -1.0, 1.0)], |t, v| t.global_avg_pool(&v[0])),
        case(
            "grouped_linear_dense",
            vec![random(&[5, 7], 20, -1.0, 1.0), random(&[5, 7], 21, -1.0, 1.0), random(&[5], 22, -1.0, 1.0)],
            |t, v| t.grouped_linear(&v[0], &v[1], &v[2], 1),
        ),
        case(
            "grouped_linear_groups4",
            vec![
                random(&[5, 12], 23, -1.0, 1.0),
                random(&[8, 3], 24, -1.0, 1.0),
                random(&[8], 25, -1.0, 1.0),
            ],
            |t, v| t.grouped_linear(&v[0], &v[1], &v[2], 4),
        ),
        case("softmax_cross_entropy", vec![random(&[6, 5], 26, -3.0, 3.0)], |t, v| {
            t.softmax_cross_entropy(&v[0], &[0, 4, 2, 2, 1, 3])
        }),
        case("expert_bce_with_logits", vec![random(&[3, 4, 2], 27, -3.0, 3.0)], |t, v| {
            t.expert_bce_with_logits(&v[0], &[1, 3, 0])
        }),
        case("dlr_untargeted", vec![random(&[6, 10], 30, -3.0, 3.0)], |t, v| {
            t.dlr_loss(&v[0], &[0, 4, 2, 9, 1, 3], None)
        }),
        case("dlr_targeted", vec![random(&[6, 10], 31, -3.0, 3.0)], |t, v| {
            t.dlr_loss(&v[0], &[0, 4, 2, 9, 1, 3], Some(&[1, 5, 3, 0, 2, 7]))
        }),
        case(
            "kl_divergence",
            vec![random(&[5, 10], 32, -3.0, 3.0), random(&[5, 10], 33, -3.0, 3.0)],
            |t, v| t.kl_divergence(&v[0], &v[1]),
        ),
        case("jensen_shannon", vec![random(&[9, 10], 34, -6.0, 6.0)], |t, v| t.jensen_shannon(&v[0], 3)),
        case("leading_rows", vec![random(&[6, 3, 2], 35, -3.0, 3.0)], |t, v| t.leading_rows(&v[0], 2)),
        case("aggregate_prob", vec![random(&[3, 5, 2], 28, -3.0, 3.0)], |t, v| {
            t.aggregate(&v[0], Aggregate::Prob)
        }),
        case("aggregate_logodds", vec![random(&[3, 5, 2], 29, -3.0, 3.0)], |t, v| {
            t.aggregate(&v[0], Aggregate::LogOdds)
        }),
    ];
    // Whole networks, output and image gradient. Width 8 in training mode: at width 2 some
    // channels are nearly constant, and batch norm's 1/std amplifies the last-bit differences
    // of summation order to percent level; evaluation mode has no such amplification.
    for (train, width) in [(false, 2), (true, 8)] {
        let config = ModelConfig {
            kind: ModelKind::Mocse,
            num_classes: 10,
            width,
            aggregate: Aggregate::Prob,
            bce_weight: 1.0,
        };
        let model = Model::new(config);
        let w = model.fused().init_weights(4, [0.5; 3], [0.25; 3]);
        let mode = if train { "training" } else { "evaluation" };
        let name = format!("mocse network, width {width}, {mode} mode");
        out.push(case(name, vec![random(&[4, 32, 32, 3], 40, 0.0, 1.0)], move |t, v| {
            let d = v[0].value().device();
            let w = w.to_device(d)?;
            let params: Vec<Var> = w.params.iter().map(|p| t.leaf(p.clone(), false)).collect();
            model.forward(t, &params, &mut w.buffers.clone(), &v[0], train)
        }));
    }
    for (i, (xs, ws, cp)) in check_shapes().into_iter().enumerate() {
        let name = format!("conv2d {}", conv_label(xs, ws, cp));
        let inputs = vec![random(&xs, 100 + i as u64, -1.0, 1.0), random(&ws, 200 + i as u64, -0.5, 0.5)];
        out.push(case(name, inputs, move |t, v| t.conv2d(&v[0], &v[1], cp)));
    }
    out
}

/// The convolutions whose output sums `conv_sums_case` checks: every forward tile (64 x 64 and
/// 256 x 16 in f32; 128 x 64, 256 x 16 and `_any` in bf16), groups 1 and 10, stride 2, more
/// than one tile of rows with the last one partial.
fn conv_sums_shapes() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
    let p = |stride, padding, groups| Conv2dParams { stride, padding, groups };
    vec![
        ([4, 9, 7, 8], [32, 8, 3, 3], p(1, 1, 1)),
        ([3, 8, 8, 16], [80, 16, 3, 3], p(1, 1, 1)),
        ([3, 12, 11, 160], [160, 16, 3, 3], p(1, 1, 10)),
        ([6, 9, 9, 32], [64, 16, 3, 3], p(2, 1, 2)),
        ([2, 11, 6, 3], [16, 3, 3, 3], p(1, 1, 1)),
        ([4, 6, 6, 24], [24, 24, 1, 1], p(1, 0, 1)),
    ]
}

/// "x2x5x7x3 w4x3x3x3 s1 p1 g1": a convolution case's shapes in its name.
fn conv_label(x: [usize; 4], w: [usize; 4], p: Conv2dParams) -> String {
    let [b, h, wd, c] = x;
    let [o, i, k, l] = w;
    format!("x{b}x{h}x{wd}x{c} w{o}x{i}x{k}x{l} s{} p{} g{}", p.stride, p.padding, p.groups)
}

/// Output and input gradients of a case on `device`, copied back to the host.
fn evaluate(case: &Case, device: Device) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let tape = Tape::new();
    let vars: Vec<Var> =
        case.inputs.iter().map(|t| Ok(tape.leaf(t.to_device(device)?, true))).collect::<Result<_>>()?;
    let y = (case.op)(&tape, &vars)?;
    let output = y.value().to_host()?;
    let seed = random(y.shape(), 999, -1.0, 1.0).to_device(device)?;
    let grads = tape.backward_from(&y, seed)?;
    let input_grads =
        vars.iter().map(|v| grads.get(v).map_or(Ok(Vec::new()), Tensor::to_host)).collect::<Result<_>>()?;
    Ok((output, input_grads))
}

fn compare(case: &Case, device: Device) -> Result<f64> {
    let (out_cpu, grads_cpu) = evaluate(case, Device::Cpu)?;
    let (out_dev, grads_dev) = evaluate(case, device)?;
    let mut worst = relative_error(&out_dev, &out_cpu);
    for (a, b) in grads_dev.iter().zip(&grads_cpu) {
        worst = worst.max(relative_error(a, b));
    }
    Ok(worst)
}

/// One SGD update on the device against the cpu device.
fn sgd_case(device: Device) -> Result<f64> {
    let cfg = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    let run = |d: Device| -> Result<(Vec<f32>, Vec<f32>)> {
        let mut w = random(&[1000], 30, -1.0, 1.0).to_device(d)?;
        let mut v = random(&[1000], 31, -0.1, 0.1).to_device(d)?;
        let g = random(&[1000], 32, -1.0, 1.0).to_device(d)?;
        sgd_step(&mut w, &mut v, &g, 0.05, &cfg)?;
        Ok((w.to_host()?, v.to_host()?))
    };
    let (a, b) = (run(device)?, run(Device::Cpu)?);
    Ok(relative_error(&a.0, &b.0).max(relative_error(&a.1, &b.1)))
}

/// The adversarial training modes the self-test steps through: L2 attacks, whose steps move
/// continuously with the gradient (a sign step could flip where a gradient value is ~0 and
/// its last bits differ between devices; the sign is covered by the attack kernel tests).
fn adversarial_modes() -> Vec<(&'static str, TrainingMode)> {
    let attack = AdversarialTraining {
        norm: Norm::L2,
        eps: 0.5,
        alpha: 0.2,
        steps: 2,
        bn: BnMode::Train,
        eval_subset: 0,
        beta: None,
        early_stop: false,
    };
    vec![
        ("pgd", TrainingMode::Pgd(attack)),
        ("trades", TrainingMode::Trades(AdversarialTraining { beta: Some(6.0), bn: BnMode::Eval, ..attack })),
        ("fgsm-rs", TrainingMode::FgsmRs(AdversarialTraining { steps: 1, ..attack })),
    ]
}

/// A whole training step of a small model (width 8) in `mode`: the change of every parameter.
fn train_step_case(device: Device, kind: ModelKind, mode: &TrainingMode) -> Result<f64> {
    let config = ModelConfig { kind, num_classes: 10, width: 8, aggregate: Aggregate::Prob, bce_weight: 1.0 };
    let model = Model::new(config);
    let start = model.fused().init_weights(4, [0.5; 3], [0.25; 3]);
    let images = random(&[4, 32, 32, 3], 40, 0.0, 1.0).to_vec();
    let labels = [3, 0, 9, 3];
    let cfg = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false };
    let run = |d: Device| -> Result<Vec<Vec<f32>>> {
        let mut w = start.to_device(d)?;
        let mut v: Vec<Tensor> =
            w.params.iter().map(|p| Tensor::zeros_on(d, p.shape())).collect::<Result<_>>()?;
        let batch = TrainBatch::new(d, images.clone(), &labels)?;
        train_step(&model, &mut w, &mut v, &batch, 0.1, &cfg, mode, 0)?;
        w.params.iter().map(Tensor::to_host).collect()
    };
    let (a, b) = (run(device)?, run(Device::Cpu)?);
    Ok(largest_change_error(&a, &b, &start.params))
}

/// The largest relative error between two devices' changes of tensors from `before` (the
/// tensors after, on the device and on the cpu, in the same order).
fn largest_change_error(after_dev: &[Vec<f32>], after_cpu: &[Vec<f32>], before: &[Tensor]) -> f64 {
    let mut worst = 0.0f64;
    for ((dev, cpu), before) in after_dev.iter().zip(after_cpu).zip(before) {
        let delta =
            |after: &[f32]| -> Vec<f32> { after.iter().zip(before.as_slice()).map(|(x, y)| x - y).collect() };
        worst = worst.max(relative_error(&delta(dev), &delta(cpu)));
    }
    worst
}

/// Two training steps of a small model (width 8) in `mode` replayed from a graph of the step
/// on the device (`StepGraph`: on cuda a CUDA graph) against `train_step` on the cpu device,
/// at two learning rates and epochs: the change of every parameter and running statistic, as
/// `train_step_case`.
fn step_graph_case(device: Device, kind: ModelKind, mode: &TrainingMode) -> Result<f64> {
    use crate::step_graph::StepGraph;
    let config = ModelConfig { kind, num_classes: 10, width: 8, aggregate: Aggregate::Prob, bce_weight: 1.0 };
    let model = Model::new(config);
    let start = model.fused().init_weights(4, [0.5; 3], [0.25; 3]);
    let cfg = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false };
    let batches = [(41, [3, 0, 9, 3]), (42, [1, 1, 7, 2])];
    let run = |d: Device| -> Result<Vec<Vec<f32>>> {
        let mut w = start.to_device(d)?;
        let mut v: Vec<Tensor> =
            w.params.iter().map(|p| Tensor::zeros_on(d, p.shape())).collect::<Result<_>>()?;
        let graph = match d {
            Device::Cpu => None,
            _ => Some(StepGraph::capture(&model, &mut w, &mut v, 4, &cfg, mode, 0, d)?),
        };
        for (epoch, ((seed, labels), lr)) in batches.iter().zip([0.1, 0.05]).enumerate() {
            let mut batch = TrainBatch::new(d, random(&[4, 32, 32, 3], *seed, 0.0, 1.0).to_vec(), labels)?;
            batch.epoch = epoch as u32;
            match &graph {
                Some(g) => g.step(&mut w, &mut v, &batch, lr)?,
                None => train_step(&model, &mut w, &mut v, &batch, lr, &cfg, mode, 0)?,
            };
        }
        w.params.iter().chain(&w.buffers).map(Tensor::to_host).collect()
    };
    let (a, b) = (run(device)?, run(Device::Cpu)?);
    Ok(largest_change_error(&a, &b, &[start.params.as_slice(), start.buffers.as_slice()].concat()))
}

/// APGD's step (both norms) and the per-image select of the attacks, on the device against
/// the cpu device's twins. The gradient stays away from zero, so no sign depends on rounding.
fn apgd_and_select_case(device: Device) -> Result<f64> {
    use crate::attack::step::{apgd_step, select_images};
    let shape = [3, 4, 4, 3];
    let x = random(&shape, 91, 0.0, 1.0);
    let x_adv = random(&shape, 92, 0.0, 1.0);
    let x_prev = random(&shape, 93, 0.0, 1.0);
    let grad = away_from_zero(&shape, 94);
    let steps = [0.05f32, 0.2, 0.0];
    let on = |t: &Tensor| t.to_device(device);
    let mut worst = 0.0f64;
    for norm in [Norm::Linf, Norm::L2] {
        let eps = if norm == Norm::Linf { 8.0 / 255.0 } else { 0.5 };
        let got = apgd_step(&on(&x_adv)?, &on(&x_prev)?, &on(&grad)?, &on(&x)?, &steps, 0.75, eps, norm)?;
        let expected = apgd_step(&x_adv, &x_prev, &grad, &x, &steps, 0.75, eps, norm)?;
        worst = worst.max(relative_error(&got.to_host()?, expected.as_slice()));
    }
    let take = [true, false, true];
    let got = select_images(&take, &on(&x)?, &on(&x_adv)?)?.to_host()?;
    Ok(worst.max(relative_error(&got, select_images(&take, &x, &x_adv)?.as_slice())))
}

/// Batches assembled on the device from a resident data set (`assemble_batch_f32`) against
/// the host's `make_batch`, with and without the standard augmentation, two batches of an
/// epoch's shuffled order, each repeated twice, and their labels gathered there
/// (`batch_labels_u32`) against the set's: the number of differing values.
fn resident_batch_case(device: Device) -> Result<f64> {
    use crate::data::resident::ResidentSet;
    use crate::data::{Augment, DataSpec, Dataset, Split, epoch_order, make_batch};
    let ds = Dataset::load(&DataSpec::Synthetic, Split::Train, Some(64), crate::train::SYNTHETIC_SET_SEED)?;
    let set = ResidentSet::upload(&ds, device)?;
    let (seed, epoch) = (7, 3);
    let order = epoch_order(ds.len(), true, seed, epoch);
    let on_device = set.order(order.clone(), seed, epoch)?;
    let mut differing = 0usize;
    for augment in [Augment::None, Augment::Standard] {
        for (first, count) in [(0, 20), (20, 44)] {
            let got = set.batch(&on_device, first, count, 2, augment)?.to_host()?;
            let expected = make_batch(&ds, &order[first..first + count], augment, seed, epoch).images;
            differing += got.len().abs_diff(2 * expected.len());
            for copy in got.chunks(expected.len()) {
                differing += copy.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            }
            let labels = set.batch_labels(&on_device, first, count)?.download::<u32>()?;
            let expected = order[first..first + count].iter().map(|&i| u32::from(ds.label(i)));
            differing += labels.len().abs_diff(count);
            differing += labels.iter().zip(expected).filter(|(a, b)| **a != *b).count();
        }
    }
    Ok(differing as f64)
}

/// The device's count of correctly classified rows (`count_correct_into`, as a training step
/// counts) against the host's `count_correct`, on scores with ties and NaN rows: the difference.
fn count_correct_case(device: Device) -> Result<f64> {
    use crate::ops::loss::{count_correct, count_correct_into};
    let (b, k) = (300, 10);
    let mut scores = random(&[b, k], 95, -1.0, 1.0).into_vec();
    let mut labels: Vec<u32> = (0..b).map(|n| ((n * 7 + n / 3) % k) as u32).collect();
    for n in (0..b).step_by(7) {
        // A tie for the largest score between columns 1 and 3 (column 1 wins), labelled either.
        (scores[n * k + 1], scores[n * k + 3]) = (2.0, 2.0);
        labels[n] = if n % 2 == 0 { 1 } else { 3 };
    }
    for n in (0..b).step_by(11) {
        scores[n * k + (n % k)] = f32::NAN;
    }
    let scores = Tensor::from_vec(&[b, k], scores);
    let expected = count_correct(&scores, &labels)?;
    let out = GpuBuffer::zeros(device, 4)?;
    count_correct_into(&scores.to_device(device)?, &labels, out.address())?;
    Ok((out.download::<u32>()?[0] as f64 - expected as f64).abs())
}

/// The device's Philox streams against src/rng.rs: the number of differing words.
fn philox_case(device: Device) -> Result<f64> {
    let (seed, index, blocks) = (0x0123_4567_89ab_cdef_u64, 0x1_0000_0007_u64, 1000usize);
    let out = GpuBuffer::zeros(device, blocks * 16)?;
    let args = [out.arg(), Arg::U64(seed), Arg::U32(Purpose::Corruption.id()), Arg::U64(index), int(blocks)];
    gpu::launch(device, "philox_blocks_u32", LaunchConfig::for_elements(blocks), &args)?;
    let got = out.download::<u32>()?;
    let mut rng = Philox::new(seed, Purpose::Corruption, index);
    let differing = got.iter().filter(|&&word| word != rng.next_u32()).count();
    Ok(differing as f64)
}

/// cuDNN (`--conv-impl cudnn`) against the project's kernels on the cuda device, in all three
/// directions of one convolution.
fn cudnn_case(x_shape: [usize; 4], w_shape: [usize; 4], p: Conv2dParams) -> Result<f64> {
    let d = Device::Cuda;
    let g = ConvGeometry::new(&x_shape, &w_shape, p)?;
    let x = random(&x_shape, 41, -1.0, 1.0).to_device(d)?;
    let w = random(&w_shape, 42, -0.5, 0.5).to_device(d)?;
    let dy = random(&g.output_shape(), 43, -1.0, 1.0).to_device(d)?;
    let all = |choice: ConvImpl| -> Result<[Vec<f32>; 3]> {
        set_conv_impl(choice);
        let out = (|| {
            Ok([
                conv2d_forward(&x, &w, p, false)?.to_host()?,
                conv2d_backward_data(&dy, &w, &g, false)?.to_host()?,
                conv2d_backward_weight(&x, &dy, &g)?.to_host()?,
            ])
        })();
        set_conv_impl(ConvImpl::Kernels);
        out
    };
    let ours = all(ConvImpl::Kernels)?;
    let before = gpu::cudnn::calls();
    let cudnn = all(ConvImpl::Cudnn)?;
    // Else the kernels would be compared with themselves.
    let reached = gpu::cudnn::calls() - before;
    anyhow::ensure!(reached == 3, "--conv-impl cudnn reached cuDNN in {reached} of the 3 directions");
    Ok(ours.iter().zip(&cudnn).map(|(a, b)| relative_error(b, a)).fold(0.0, f64::max))
}

/// Values rounded to bf16 (to nearest even, as the kernels round their operands), back in f32.
fn bf16_rounded(values: &[f32]) -> Vec<f32> {
    values.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect()
}

/// The convolutions the bf16 cases run: `check_shapes` and every distinct convolution of both
/// models (PreAct-18 at width 64, the fused MoCSE at width 16) on one image.
pub fn bf16_check_shapes() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
    let mut shapes = check_shapes();
    for (kind, width) in [(ModelKind::Preact18, 64), (ModelKind::Mocse, 16)] {
        let config =
            ModelConfig { kind, num_classes: 10, width, aggregate: Aggregate::Prob, bce_weight: 1.0 };
        for layer in Model::new(config).fused().conv_layers() {
            let [o, i, k, l]: [usize; 4] = layer.weight_shape.try_into().expect("OIHW");
            let shape = (
                [1, layer.input_size, layer.input_size, i * layer.params.groups],
                [o, i, k, l],
                layer.params,
            );
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
    }
    shapes
}

/// A convolution's three directions in bf16 (`--precision bf16`) on `device` against the f64
/// reference of the same products: the reference takes the inputs rounded to bf16 on the host
/// (half::bf16, to nearest even, as the kernels round), so the products agree exactly and only
/// the f32 accumulation differs. For a reduction of length K (forward: taps x input channels
/// per group; backward data: taps x output channels per group; backward weight: output pixels)
/// that error is at most (2K + 16) * 2^-24 * sum_k |a_k b_k|: 2^-23 per addition (tensor cores
/// may truncate instead of rounding), and the same again inside each 16-term mma. Returns the
/// largest error as a fraction of its bound; a misplaced or missing term is off by far more.
fn conv_bf16_case(device: Device, x_shape: [usize; 4], w_shape: [usize; 4], p: Conv2dParams) -> Result<f64> {
    let g = ConvGeometry::new(&x_shape, &w_shape, p)?;
    let x = random(&x_shape, 61, -1.0, 1.0);
    let w = random(&w_shape, 62, -0.5, 0.5);
    let dy = random(&g.output_shape(), 63, -1.0, 1.0);
    let [y_dev, dx_dev, dw_dev] = precision::scoped(Precision::Bf16, || -> Result<[Vec<f32>; 3]> {
        let (xd, wd, dyd) = (x.to_device(device)?, w.to_device(device)?, dy.to_device(device)?);
        Ok([
            conv2d_forward(&xd, &wd, p, false)?.to_host()?,
            conv2d_backward_data(&dyd, &wd, &g, false)?.to_host()?,
            conv2d_backward_weight(&xd, &dyd, &g)?.to_host()?,
        ])
    })?;
    let rounded = |t: &Tensor| bf16_rounded(t.as_slice());
    let exact = reference::all_directions(&rounded(&x), &rounded(&w), &rounded(&dy), &g);
    let taps = g.kernel * g.kernel;
    let reductions =
        [taps * g.in_per_group(), taps * g.out_per_group(), g.batch * g.out_height * g.out_width];
    let mut worst = 0.0f64;
    for ((got, e), k) in [y_dev, dx_dev, dw_dev].iter().zip(&exact).zip(reductions) {
        if got.len() != e.value.len() {
            return Ok(f64::INFINITY);
        }
        let per_magnitude = (2 * k + 16) as f64 * 2f64.powi(-24);
        for ((v, exact), magnitude) in got.iter().zip(&e.value).zip(&e.magnitude) {
            let error = (*v as f64 - exact).abs();
            let fraction = if error == 0.0 { 0.0 } else { error / (per_magnitude * magnitude) };
            // A NaN fraction (a NaN result) must fail: f64::max would skip it.
            worst = if fraction.is_nan() { f64::INFINITY } else { worst.max(fraction) };
        }
    }
    Ok(worst)
}

/// The grouped linear layer (the classifier head) in bf16 on `device`, through the tape,
/// against f64 sums of the same products: x and w rounded to bf16 on the host for the
/// reference (the kernels round them as they read), the bias not (it is added in f32), and an
/// output gradient that is bf16 already, so that the bias gradient (its plain sum) agrees too.
/// Reductions of at most 12 terms: the f32 sums are within 1e-6 of the reference; a missed
/// rounding is off by up to 2^-9.
fn linear_bf16_case(device: Device, batch: usize, groups: usize, ins: usize, outs: usize) -> Result<f64> {
    let x = random(&[batch, groups * ins], 81, -1.0, 1.0);
    let w = random(&[groups * outs, ins], 82, -1.0, 1.0);
    let bias = random(&[groups * outs], 83, -1.0, 1.0);
    let dy = bf16_rounded(random(&[batch, groups * outs], 84, -1.0, 1.0).as_slice());
    let got = precision::scoped(Precision::Bf16, || -> Result<[Vec<f32>; 4]> {
        let tape = Tape::new();
        let leaf = |t: &Tensor| -> Result<Var> { Ok(tape.leaf(t.to_device(device)?, true)) };
        let (xv, wv, bv) = (leaf(&x)?, leaf(&w)?, leaf(&bias)?);
        let y = tape.grouped_linear(&xv, &wv, &bv, groups)?;
        let seed = Tensor::from_vec(y.shape(), dy.clone()).to_device(device)?;
        let grads = tape.backward_from(&y, seed)?;
        let grad = |v: &Var| -> Result<Vec<f32>> { grads.get(v).map_or(Ok(Vec::new()), Tensor::to_host) };
        Ok([y.value().to_host()?, grad(&xv)?, grad(&wv)?, grad(&bv)?])
    })?;
    let (xr, wr) = (bf16_rounded(x.as_slice()), bf16_rounded(w.as_slice()));
    let (mut y, mut dx) = (vec![0.0f64; batch * groups * outs], vec![0.0f64; batch * groups * ins]);
    let (mut dw, mut db) = (vec![0.0f64; groups * outs * ins], vec![0.0f64; groups * outs]);
    for b in 0..batch {
        for row in 0..groups * outs {
            let (g, d) = (row / outs, dy[b * groups * outs + row] as f64);
            y[b * groups * outs + row] += bias.as_slice()[row] as f64;
            db[row] += d;
            for i in 0..ins {
                let (xi, wi) = (b * groups * ins + g * ins + i, row * ins + i);
                y[b * groups * outs + row] += xr[xi] as f64 * wr[wi] as f64;
                dx[xi] += d * wr[wi] as f64;
                dw[wi] += d * xr[xi] as f64;
            }
        }
    }
    let exact = [y, dx, dw, db].map(|v| v.into_iter().map(|e| e as f32).collect::<Vec<f32>>());
    Ok(got.iter().zip(&exact).map(|(a, b)| relative_error(a, b)).fold(0.0, f64::max))
}

/// The bf16 conversions (`round_to_bf16`, `widen_bf16`) against half::bf16 bit for bit, over
/// values that round up, down, to even, overflow to infinity, and NaN: the number of differing
/// values.
fn bf16_rounding_case(device: Device) -> Result<f64> {
    let mut values: Vec<f32> = random(&[4096], 71, -1e4, 1e4).to_vec();
    let tie = f32::from_bits(0x3f80_8000); // exactly between two bf16: rounds to the even one
    values.extend([
        tie,
        -tie,
        f32::from_bits(0x3f81_8000),
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::NAN,
        0.0,
        -0.0,
    ]);
    values.extend([1e-40, -1e-40, f32::from_bits(0x3f80_7fff), f32::from_bits(0x3f80_8001)]);
    let x = Tensor::from_vec(&[values.len()], values.clone());
    let bits = crate::ops::elementwise::round_to_bf16(&x.to_device(device)?)?;
    let widened = crate::ops::elementwise::widen_bf16(&bits, x.shape())?.to_host()?;
    let got = bits.download::<u16>()?;
    let differing = values
        .iter()
        .zip(got.iter().zip(&widened))
        .filter(|(v, (b, w))| {
            let expected = half::bf16::from_f32(**v);
            let same_bits =
                expected.is_nan() && half::bf16::from_bits(**b).is_nan() || expected.to_bits() == **b;
            let same_value = expected.to_f32().to_bits() == w.to_bits() || expected.is_nan() && w.is_nan();
            !(same_bits && same_value)
        })
        .count();
    Ok(differing as f64)
}

/// The filter layouts cuDNN's NHWC path uses: OIHW -> OHWI -> OIHW must give the cpu device's
/// bits and the input back.
fn transpose_case(device: Device) -> Result<f64> {
    let (o, i, hw) = (5, 7, 9);
    let x = random(&[o, i, 3, 3], 21, -1.0, 1.0);
    let ohwi = crate::ops::elementwise::transpose_batched(&x.to_device(device)?, o, i, hw, &[o, 3, 3, i])?;
    let expected = crate::ops::elementwise::transpose_batched(&x, o, i, hw, &[o, 3, 3, i])?;
    let back = crate::ops::elementwise::transpose_batched(&ohwi, o, hw, i, &[o, i, 3, 3])?;
    Ok(relative_error(&ohwi.to_host()?, expected.as_slice())
        .max(relative_error(&back.to_host()?, x.as_slice())))
}

/// The tensor-core wrapper (`kernels/mma.cuh`): one warp's 16x16 by 16x8 bf16 product plus a
/// 16x8 f32 tile, against the same sums in f64. On cuda this checks the emulator's twin (and the
/// fragment tables both follow) against the hardware: a misplaced element is off by order 1.
fn mma_case(device: Device) -> Result<f64> {
    let to_bf16 =
        |t: Tensor| -> Vec<u16> { t.as_slice().iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect() };
    let (a, b) = (to_bf16(random(&[16, 16], 51, -1.0, 1.0)), to_bf16(random(&[16, 8], 52, -1.0, 1.0)));
    let c = random(&[16, 8], 53, -1.0, 1.0);
    let value = |bits: u16| half::bf16::from_bits(bits).to_f64();
    let expected: Vec<f32> = (0..16 * 8)
        .map(|at| {
            let (row, col) = (at / 8, at % 8);
            let sum: f64 = (0..16).map(|k| value(a[row * 16 + k]) * value(b[k * 8 + col])).sum();
            (c.as_slice()[at] as f64 + sum) as f32
        })
        .collect();
    let d = GpuBuffer::zeros(device, 16 * 8 * 4)?;
    let (ga, gb, gc) = (
        GpuBuffer::upload(device, &a)?,
        GpuBuffer::upload(device, &b)?,
        GpuBuffer::upload(device, c.as_slice())?,
    );
    let args = [d.arg(), ga.arg(), gb.arg(), gc.arg()];
    gpu::launch(device, "mma_bf16_m16n8k16_check", LaunchConfig::new([1, 1, 1], [32, 1, 1]), &args)?;
    Ok(relative_error(&d.download::<f32>()?, &expected))
}

/// ldmatrix_x4 against its table in the PTX ISA: lane t receives, from each of the four 8x8
/// matrices, word t % 4 of row t / 4. The count of words that differ.
fn ldmatrix_case(device: Device) -> Result<f64> {
    // Distinct words: matrix j, row r, word w holds j << 16 | r << 8 | w, plus a marker.
    let m: Vec<u32> =
        (0..128u32).map(|i| 0xA000_0000 | (i / 32) << 16 | (i / 4 % 8) << 8 | (i % 4)).collect();
    let out = GpuBuffer::zeros(device, 128 * 4)?;
    let input = GpuBuffer::upload(device, &m)?;
    gpu::launch(
        device,
        "ldmatrix_x4_check",
        LaunchConfig::new([1, 1, 1], [32, 1, 1]),
        &[out.arg(), input.arg()],
    )?;
    let got = out.download::<u32>()?;
    let wrong = (0..32usize)
        .flat_map(|t| (0..4usize).map(move |j| (t, j)))
        .filter(|&(t, j)| got[t * 4 + j] != m[j * 32 + (t / 4) * 4 + t % 4])
        .count();
    Ok(wrong as f64)
}

/// The cp.async wrapper (`kernels/async_copy.cuh`) against the PTX rules: what each lane reads
/// of its own copies once their group must have landed (the copied words, or zeros for a zero
/// fill), and the three shared slices after a barrier. While its group may be pending a slot may show either
/// contents on a GPU; the emulator's twin must show the old one (copies land as late as the
/// rules allow, so that a kernel missing a wait fails there). The count of words that differ.
fn cp_async_case(device: Device) -> Result<f64> {
    let input: Vec<u32> = (0..3 * 128u32).map(|i| 0x5000_0000 | i).collect();
    let marker = |i: usize| 0xDEAD_0000 | i as u32;
    let copied = |g: usize, t: usize, w: usize| {
        if (t + g).is_multiple_of(7) { 0 } else { input[4 * (32 * g + t) + w] }
    };
    let out = GpuBuffer::zeros(device, 8 * 128 * 4)?;
    let gin = GpuBuffer::upload(device, &input)?;
    gpu::launch(device, "cp_async_check", LaunchConfig::new([1, 1, 1], [32, 1, 1]), &[out.arg(), gin.arg()])?;
    let got = out.download::<u32>()?;
    let mut wrong = 0;
    for t in 0..32 {
        for w in 0..4 {
            for g in 0..3 {
                wrong += usize::from(got[128 * g + 4 * t + w] != copied(g, t, w));
                // Lane t's group-g copy lands in slot (5 t + g) % 32 of slice g.
                let at = 128 * g + 4 * ((5 * t + g) % 32) + w;
                wrong += usize::from(got[5 * 128 + at] != copied(g, t, w));
            }
            for g in 1..3 {
                let early = got[3 * 128 + 128 * (g - 1) + 4 * t + w];
                let old = marker(128 * g + 4 * ((5 * t + g) % 32) + w);
                let allowed = early == old || (device != Device::Emu && early == copied(g, t, w));
                wrong += usize::from(!allowed);
            }
        }
    }
    Ok(wrong as f64)
}

/// Batch norm's statistics from the sums a forward convolution takes as it writes its output
/// (`Tape::conv2d_for_batch_norm`; with `residual`, `Tape::bn_relu_conv2d`, which maps its input
/// and adds a residual as it writes) in `precision` on `device`, against two-pass f64 statistics
/// of the same output on the host: the largest error of a channel's mean (relative to the
/// channel's root mean square) or unbiased variance (relative to its mean square).
fn conv_sums_case(
    device: Device,
    precision: Precision,
    (x_shape, w_shape, p): ([usize; 4], [usize; 4], Conv2dParams),
    residual: bool,
) -> Result<f64> {
    precision::scoped(precision, || {
        let tape = Tape::new();
        let c = w_shape[0];
        let leaf = |t: Tensor| -> Result<Var> { Ok(tape.leaf(t.to_device(device)?, true)) };
        let x = leaf(random(&x_shape, 61, -1.0, 1.5))?;
        let w = leaf(random(&w_shape, 62, -0.5, 0.5))?;
        let y = if residual {
            let ci = x_shape[3];
            let (gamma, beta) = (leaf(random(&[ci], 63, 0.5, 1.5))?, leaf(random(&[ci], 64, -0.5, 0.5))?);
            let out = ConvGeometry::new(&x_shape, &w_shape, p)?.output_shape();
            let r = leaf(random(&out, 65, -1.0, 2.0))?;
            tape.bn_relu_conv2d(&x, &gamma, &beta, 1e-5, &w, p, Some(&r))?.0
        } else {
            tape.conv2d_for_batch_norm(&x, &w, p)?
        };
        let sums = tape.take_channel_sums(&y).context("the convolution took no sums of its output")?;
        let (mean, _, var) = sums.statistics(device, 1e-5)?;
        let (mean, var, y) = (mean.to_host()?, var.to_host()?, y.value().to_host()?);
        let rows = y.len() / c;
        let mut worst = 0.0f64;
        for ch in 0..c {
            let column = || y.iter().skip(ch).step_by(c).map(|&v| f64::from(v));
            let m = column().sum::<f64>() / rows as f64;
            let square = column().map(|v| v * v).sum::<f64>() / rows as f64;
            let v = column().map(|v| (v - m) * (v - m)).sum::<f64>() / (rows - 1) as f64;
            worst = worst.max((f64::from(mean[ch]) - m).abs() / square.sqrt().max(1e-30));
            worst = worst.max((f64::from(var[ch]) - v).abs() / square.max(1e-30));
        }
        Ok(worst)
    })
}

/// Kernel files whose independent checks are the outputs of other programs rather than a
/// selftest case (the cpu device runs these kernels through the emulator), and where.
pub const CHECKED_AGAINST_REFERENCE_OUTPUTS: &[(&str, &str)] = &[
    ("corrupt_", "tests/corruption_reference.rs: make_cifar_c.py's outputs, shipped in tests/data"),
    ("augmix.cu", "tests/augmix.rs: Pillow's outputs of the nine operations, shipped in tests/data"),
];

/// The kernels of kernels/ that no independent case of `results` launched (a run of every
/// case), leaving out the files of `CHECKED_AGAINST_REFERENCE_OUTPUTS`.
pub fn kernels_without_a_case(results: &[CaseResult]) -> Vec<&'static str> {
    let covered: std::collections::BTreeSet<&str> =
        results.iter().filter(|r| r.independent).flat_map(|r| r.kernels.iter().map(String::as_str)).collect();
    gpu::sources::KERNEL_SOURCES
        .iter()
        .filter(|(file, _, _)| {
            !CHECKED_AGAINST_REFERENCE_OUTPUTS.iter().any(|(prefix, _)| file.starts_with(prefix))
        })
        .flat_map(|(_, _, kernels)| kernels.iter().copied())
        .filter(|k| !covered.contains(k))
        .collect()
}

/// Runs every case whose name `wanted` accepts on `device` (anything but cpu).
pub fn run(
    device: Device,
    wanted: impl Fn(&str) -> bool,
    mut progress: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let mut results = Vec::new();
    let independent = std::cell::Cell::new(true);
    let mut check = |name: String, tolerance: f64, outcome: &dyn Fn() -> Result<f64>| {
        if !wanted(&name) {
            return;
        }
        let (outcome, kernels) = gpu::launches_of(outcome);
        let (max_relative_error, error) = match outcome {
            Ok(e) => (e, None),
            Err(e) => (f64::NAN, Some(format!("{e:#}"))),
        };
        let r = CaseResult {
            name,
            max_relative_error,
            tolerance,
            error,
            kernels,
            independent: independent.get(),
        };
        progress(&r);
        results.push(r);
    };
    for c in cases() {
        check(c.name.clone(), c.tolerance, &|| compare(&c, device));
    }
    check("transpose_batched".into(), 0.0, &|| transpose_case(device));
    check("bf16 rounding (differing values)".into(), 0.0, &|| bf16_rounding_case(device));
    for (batch, groups, ins, outs) in [(5, 1, 7, 5), (5, 4, 3, 2), (3, 10, 12, 2)] {
        check(format!("grouped_linear bf16 b{batch} g{groups} {ins}->{outs}"), 1e-5, &|| {
            linear_bf16_case(device, batch, groups, ins, outs)
        });
    }
    for (x, w, p) in bf16_check_shapes() {
        // The error as a fraction of its bound (see conv_bf16_case).
        check(format!("conv2d bf16 {}", conv_label(x, w, p)), 1.0, &|| conv_bf16_case(device, x, w, p));
    }
    // Sums of f32 values in f32 over up to 32 rows, then in double: a few 1e-7 of the mean
    // square; a misplaced or missing partial sum is off by percents.
    for precision in [Precision::F32, Precision::Bf16] {
        for (n, shapes) in conv_sums_shapes().into_iter().enumerate() {
            let residual = n % 2 == 1;
            let how = if residual { ", mapped, with a residual" } else { "" };
            let name = format!(
                "batch-norm sums in conv2d {precision} {}{how}",
                conv_label(shapes.0, shapes.1, shapes.2)
            );
            check(name, 1e-5, &|| conv_sums_case(device, precision, shapes, residual));
        }
    }
    // bf16 products are exact in f32; tensor cores may round the 16-term sums differently (a
    // misplaced element is off by order 1).
    check("mma.sync bf16 m16n8k16 (PTX fragment tables)".into(), 1e-4, &|| mma_case(device));
    check("ldmatrix x4 (PTX table; words that differ)".into(), 0.0, &|| ldmatrix_case(device));
    check("cp.async in groups (PTX rules; words that differ)".into(), 0.0, &|| cp_async_case(device));
    if device == Device::Cuda && gpu::cudnn::available() {
        for (x, w, p) in check_shapes() {
            check(format!("cudnn conv2d {}", conv_label(x, w, p)), 1e-4, &|| cudnn_case(x, w, p));
        }
    }
    check("sgd_update".into(), 1e-5, &|| sgd_case(device));
    check("apgd_step (L-inf, L2) and select_images".into(), 1e-5, &|| apgd_and_select_case(device));
    check("philox streams (differing words)".into(), 0.0, &|| philox_case(device));
    check("count_correct (difference)".into(), 0.0, &|| count_correct_case(device));
    check("batches from a resident data set (differing values)".into(), 0.0, &|| resident_batch_case(device));
    // A whole step chains ~60 ops through batch norm, and rounding differences reach a few 1e-6
    // by the last stage: one value that batch norm puts within that of zero (this case has one
    // at -3e-6 in the last stage) then falls on the other side of its relu with another
    // summation order, and moves that layer's update by up to 2e-2. A wrong kernel is off by
    // order 1.
    check("training step, mocse width 8".into(), 5e-2, &|| {
        train_step_case(device, ModelKind::Mocse, &TrainingMode::Standard)
    });
    check("training step graph (two replays), mocse width 8".into(), 5e-2, &|| {
        step_graph_case(device, ModelKind::Mocse, &TrainingMode::Standard)
    });
    // The adversarial steps on the standard network: an attack with batch statistics on an
    // untrained MoCSE of 4 images turns last-bit differences into percent-level input gradient
    // differences (near-constant expert channels), which the attack then follows. Even so an
    // attack amplifies summation-order differences (TRADES's KL between nearby predictions
    // most: a few 1e-3); a wrong kernel would be off by order 1.
    for (name, mode) in adversarial_modes() {
        check(format!("{name} training step, preact18 width 8"), 1e-2, &|| {
            train_step_case(device, ModelKind::Preact18, &mode)
        });
    }
    let (name, pgd) = &adversarial_modes()[0];
    check(format!("{name} training step graph (two replays), preact18 width 8"), 1e-2, &|| {
        step_graph_case(device, ModelKind::Preact18, pgd)
    });
    // The corruptions' cpu side is their kernels run by the emulator: on emu these cases show
    // that the kernels run, on cuda that the GPU agrees with the emulator. Their independent
    // checks are the reference generator's outputs (tests/corruption_reference.rs).
    independent.set(false);
    for c in crate::corrupt::Corruption::ALL {
        // A uint8 truncation may flip by one level where a transcendental function differs in
        // its last bit between the GPU and the host; more is a bug.
        check(format!("corruption {c}, severities 1-5"), 1.0 / 255.0, &|| corruption_case(device, c));
    }
    results
}

/// The largest difference, in units of the 0..255 range, between a corruption's kernels on
/// `device` and on the cpu device (which runs them through the emulator), on 8 random images.
fn corruption_case(device: Device, c: crate::corrupt::Corruption) -> Result<f64> {
    use crate::corrupt::{SEVERITIES, StreamKey, corrupt};
    let images = random(&[8, 32, 32, 3], 90 + c.id() as u64, 0.0, 256.0);
    let images =
        Tensor::from_vec(&[8, 32, 32, 3], images.as_slice().iter().map(|v| v.floor().min(255.0)).collect());
    let on_device = images.to_device(device)?;
    let mut worst = 0.0f64;
    for s in SEVERITIES {
        let key = StreamKey { seed: 5, first_image: 1000 };
        let expected = corrupt(&images, c, s, key)?.into_vec();
        let got = corrupt(&on_device, c, s, key)?.to_host()?;
        for (a, b) in got.iter().zip(&expected) {
            let d = if a.is_nan() || b.is_nan() { f64::INFINITY } else { f64::from((a - b).abs()) / 255.0 };
            worst = worst.max(d);
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::relative_error;

    #[test]
    fn relative_error_sees_nan_and_length() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_error(&[1.0, 2.2], &[1.0, 2.0]) - 0.1).abs() < 1e-6);
        assert_eq!(relative_error(&[f32::NAN, 2.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(relative_error(&[f32::NAN], &[f32::NAN]), 0.0);
    }
}
