//! Benchmarks of whole training and inference steps: images per second and achieved FLOP/s,
//! warm-up first, then the median of several timed steps.

use std::time::Instant;

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::atomic_file::write_atomic;
use crate::attack::gradient::{AttackLoss, input_gradient};
use crate::attack::step::pgd_step;
use crate::attack::{BnMode, Norm};
use crate::autograd::{Tape, Var};
use crate::checkpoint::{MODEL_FILE, Progress, save_model};
use crate::device::Device;
use crate::eval::class_scores;
use crate::nn::model::{Model, ModelConfig, ModelKind, Network, split_experts};
use crate::nn::preact_resnet::Weights;
use crate::npy::npy_bytes;
use crate::ops::conv::{
    Conv2dParams, ConvGeometry, ConvImpl, conv2d_backward_data, conv2d_backward_weight, conv2d_forward,
    set_conv_impl,
};
use crate::ops::sgd::SgdConfig;
use crate::precision::{self, Precision};
use crate::rng::{Philox, Purpose};
use crate::step_graph::{self, StepGraph};
use crate::tensor::Tensor;
use crate::train::{AdversarialTraining, TrainBatch, TrainingMode, train_step};

#[derive(Debug, Serialize)]
pub struct TrainStepBench {
    pub what: &'static str,
    pub model: String,
    pub model_description: String,
    pub fused: bool,
    pub width: usize,
    pub batch_size: usize,
    pub device: String,
    /// The arithmetic of the convolutions and the head (`--precision`).
    pub precision: Precision,
    /// Who ran the convolutions on a GPU device: "kernels" (the project's) or "cudnn".
    pub conv_impl: &'static str,
    pub threads: usize,
    pub timed_steps: usize,
    pub train_images_per_s: f64,
    /// The same step replayed from its graph (`StepGraph`, as training runs full batches on a
    /// kernel device); absent where the step runs no graph (the cpu, cuDNN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_graph_images_per_s: Option<f64>,
    pub infer_images_per_s: f64,
    /// Forward + backward counted as 3x the forward FLOPs.
    pub train_gflop_per_s: f64,
    pub infer_gflop_per_s: f64,
    pub forward_gflop_per_image: f64,
    pub mocse: &'static str,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The median wall-clock seconds of `steps` calls of `work` after `warmup` untimed ones.
fn median_seconds(warmup: usize, steps: usize, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let start = Instant::now();
        work()?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

/// The benchmarks' batch: `batch_size` random images in [0, 1] (NHWC) and their labels.
fn bench_batch(batch_size: usize, classes: usize) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Philox::new(1, Purpose::Init, u64::MAX);
    let images: Vec<f32> = (0..batch_size * 32 * 32 * 3).map(|_| rng.uniform()).collect();
    let labels: Vec<u32> = (0..batch_size).map(|_| rng.below(classes as u32)).collect();
    (images, labels)
}

/// The benchmarked model and its initial weights (seed 0): fused, or the same weights split
/// into the N experts' networks.
fn bench_model(config: ModelConfig, fused: bool) -> Result<(Model, Weights)> {
    let model = Model::new(config);
    let weights = model.fused().init_weights(0, [0.5; 3], [0.25; 3]);
    if fused {
        return Ok((model, weights));
    }
    let experts = split_experts(model.fused(), &weights);
    let weights = Weights {
        params: experts.iter().flat_map(|e| e.params.clone()).collect(),
        buffers: experts.iter().flat_map(|e| e.buffers.clone()).collect(),
    };
    Ok((Model::new_unfused(config)?, weights))
}

/// What `bench --twin DIR` records for a twin network in another framework to check itself
/// against: the benchmark's own weights and batch, and what mocse computes from them in the
/// training step's mode (batch statistics).
#[derive(Debug, Serialize)]
pub struct TwinRecord {
    pub model: ModelConfig,
    pub fused: bool,
    pub batch_size: usize,
    /// The training loss of the first step (before any update).
    pub loss: f32,
    pub files: [&'static str; 4],
}

/// Writes DIR/model.safetensors (the benchmark's initial weights, in their fused form),
/// DIR/images.npy (float32 [B, 3, 32, 32], NCHW as PyTorch takes it),
/// DIR/labels.npy (int64), DIR/output.npy (the network's raw output in training mode) and
/// DIR/twin.json (the model's settings and the loss). The unfused model's output is its experts' outputs side by side.
pub fn write_twin_check(
    dir: &Path,
    config: ModelConfig,
    fused: bool,
    batch_size: usize,
    device: Device,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let fused_model = Model::new(config);
    let weights = fused_model.fused().init_weights(0, [0.5; 3], [0.25; 3]);
    save_model(&dir.join(MODEL_FILE), fused_model.fused(), &weights, Progress::default())?;
    let (model, run_weights) = bench_model(config, fused)?;
    let (images, labels) = bench_batch(batch_size, config.num_classes);
    let run_weights = run_weights.to_device(device)?;
    let tape = Tape::new();
    let params: Vec<Var> = run_weights.params.iter().map(|p| tape.leaf(p.clone(), false)).collect();
    let mut buffers = run_weights.buffers.clone();
    let x = tape.leaf(Tensor::from_vec_on(device, &[batch_size, 32, 32, 3], images.clone())?, false);
    let output = model.forward(&tape, &params, &mut buffers, &x, true)?;
    let loss = model.loss(&tape, &output, &labels)?.value().scalar_value()?;
    let output_shape = output.shape().to_vec();
    let output = output.value().to_host()?;
    // NHWC -> NCHW.
    let mut nchw = vec![0.0f32; images.len()];
    for (i, v) in images.iter().enumerate() {
        let (c, pixel, b) = (i % 3, (i / 3) % 1024, i / 3072);
        nchw[(b * 3 + c) * 1024 + pixel] = *v;
    }
    let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    write_atomic(&dir.join("images.npy"), &npy_bytes(&[batch_size, 3, 32, 32], &nchw)?)?;
    write_atomic(&dir.join("labels.npy"), &npy_bytes(&[batch_size], &labels)?)?;
    write_atomic(&dir.join("output.npy"), &npy_bytes(&output_shape, &output)?)?;
    let record = TwinRecord {
        model: config,
        fused,
        batch_size,
        loss,
        files: [MODEL_FILE, "images.npy", "labels.npy", "output.npy"],
    };
    write_atomic(&dir.join("twin.json"), (serde_json::to_string_pretty(&record)? + "\n").as_bytes())?;
    Ok(())
}

/// Times `steps` training steps (forward, backward, SGD) and `steps` inference passes on random
/// images, after `warmup` untimed ones of each.
pub fn bench_train_step(
    config: ModelConfig,
    fused: bool,
    batch_size: usize,
    device: Device,
    warmup: usize,
    steps: usize,
) -> Result<TrainStepBench> {
    let (model, weights) = bench_model(config, fused)?;
    let flops = match &model.network {
        Network::Fused(net) => net.flops_per_image(),
        Network::Unfused(nets) => nets.iter().map(|n| n.flops_per_image()).sum(),
    };
    let (images, labels) = bench_batch(batch_size, config.num_classes);
    let mut weights = weights.to_device(device)?;
    let mut velocity: Vec<Tensor> =
        weights.params.iter().map(|p| Tensor::zeros_on(device, p.shape())).collect::<Result<_>>()?;
    let sgd = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false };

    let train = median_seconds(warmup, steps, || {
        let batch = TrainBatch::new(device, images.clone(), &labels)?;
        train_step(&model, &mut weights, &mut velocity, &batch, 1e-3, &sgd, &TrainingMode::Standard, 0)?;
        Ok(())
    })?;
    // The graph's step from the same batch made on the host: capture, then replays.
    let graph = if step_graph::fits(device, false)? {
        let standard = TrainingMode::Standard;
        let g =
            StepGraph::capture(&model, &mut weights, &mut velocity, batch_size, &sgd, &standard, 0, device)?;
        let seconds = median_seconds(warmup, steps, || {
            let batch = TrainBatch::new(device, images.clone(), &labels)?;
            g.step(&mut weights, &mut velocity, &batch, 1e-3)?;
            Ok(())
        })?;
        Some(seconds)
    } else {
        None
    };
    let infer = median_seconds(warmup, steps, || {
        class_scores(&model, &weights, Tensor::from_vec(&[batch_size, 32, 32, 3], images.clone()))?;
        Ok(())
    })?;
    let b = batch_size as f64;
    Ok(TrainStepBench {
        what: "train-step",
        model: config.kind.to_string(),
        model_description: config.describe(),
        fused: fused || config.kind == ModelKind::Preact18,
        width: config.width,
        batch_size,
        device: device.to_string(),
        precision: precision::current(),
        conv_impl: crate::ops::conv::conv_impl().name(),
        threads: rayon::current_num_threads(),
        timed_steps: steps,
        train_images_per_s: b / train,
        train_graph_images_per_s: graph.map(|t| b / t),
        infer_images_per_s: b / infer,
        train_gflop_per_s: 3.0 * flops * b / train / 1e9,
        infer_gflop_per_s: flops * b / infer / 1e9,
        forward_gflop_per_image: flops / 1e9,
        mocse: crate::BUILD,
    })
}

/// What `mocse bench --what pgd` measures: one attack step against one training step, and
/// PGD adversarial training as a whole.
#[derive(Debug, Serialize)]
pub struct PgdBench {
    pub what: &'static str,
    pub model: String,
    pub model_description: String,
    pub batch_size: usize,
    pub device: String,
    /// The arithmetic of the convolutions and the head (`--precision`).
    pub precision: Precision,
    pub threads: usize,
    pub timed_steps: usize,
    /// A standard training step (forward, backward with weight gradients, SGD), seconds.
    pub train_step_seconds: f64,
    /// One PGD step (forward, backward for the input gradient only, the fused step), seconds.
    pub attack_step_seconds: f64,
    /// `attack_step_seconds / train_step_seconds`: about 2/3 when weight gradients are skipped.
    pub attack_to_train_step: f64,
    /// Images attacked by one step, per second.
    pub attack_images_per_s: f64,
    /// PGD-10 adversarial training (`train --adv pgd`): images per second.
    pub adversarial_train_images_per_s: f64,
    pub mocse: &'static str,
}

/// Times PGD steps, standard training steps and PGD-10 adversarial training steps on random
/// images, the median of `steps` after `warmup` untimed ones of each.
pub fn bench_pgd(
    config: ModelConfig,
    batch_size: usize,
    device: Device,
    warmup: usize,
    steps: usize,
) -> Result<PgdBench> {
    let model = Model::new(config);
    let mut weights = model.fused().init_weights(0, [0.5; 3], [0.25; 3]).to_device(device)?;
    let mut velocity: Vec<Tensor> =
        weights.params.iter().map(|p| Tensor::zeros_on(device, p.shape())).collect::<Result<_>>()?;
    let (images, labels) = bench_batch(batch_size, config.num_classes);
    let batch = TrainBatch::new(device, images, &labels)?;
    let sgd = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false };
    let attack = AdversarialTraining {
        norm: Norm::Linf,
        eps: 8.0 / 255.0,
        alpha: 2.0 / 255.0,
        steps: 10,
        bn: BnMode::Train,
        eval_subset: 0,
        beta: None,
        early_stop: false,
    };
    let cfg = attack.attack(0);
    let x = batch.images.clone();
    let attack_step = median_seconds(warmup, steps, || {
        let (_, grad) =
            input_gradient(&model, &weights, &x, &labels, BnMode::Eval, AttackLoss::CrossEntropy)?;
        // Reading the result back waits for the device, as the training step's checks do.
        pgd_step(&x, &grad, &x, cfg.alpha, cfg.eps, cfg.norm)?.to_host()?;
        Ok(())
    })?;
    let mut step_with = |mode: &TrainingMode| -> Result<f64> {
        median_seconds(warmup, steps, || {
            train_step(&model, &mut weights, &mut velocity, &batch, 1e-3, &sgd, mode, 0)?;
            Ok(())
        })
    };
    let train = step_with(&TrainingMode::Standard)?;
    let adversarial = step_with(&TrainingMode::Pgd(attack))?;
    Ok(PgdBench {
        what: "pgd",
        model: config.kind.to_string(),
        model_description: config.describe(),
        batch_size,
        device: device.to_string(),
        precision: precision::current(),
        threads: rayon::current_num_threads(),
        timed_steps: steps,
        train_step_seconds: train,
        attack_step_seconds: attack_step,
        attack_to_train_step: attack_step / train,
        attack_images_per_s: batch_size as f64 / attack_step,
        adversarial_train_images_per_s: batch_size as f64 / adversarial,
        mocse: crate::BUILD,
    })
}

/// One measurement of `mocse bench --what conv-layers`.
#[derive(Debug, Serialize)]
pub struct ConvBenchRow {
    pub layer: String,
    /// How many convolutions of the network have this shape.
    pub count: usize,
    pub direction: &'static str,
    pub implementation: &'static str,
    /// The arithmetic (`--precision`) of the kernels and of cuDNN alike.
    pub precision: Precision,
    pub input: [usize; 4],
    pub weight: [usize; 4],
    pub stride: usize,
    pub groups: usize,
    /// Launches per measurement (N for the experts one by one).
    pub launches: usize,
    pub seconds: f64,
    pub gflop_per_s: f64,
}

/// The seconds one call of `work` takes on `device`: CUDA events on a GPU, the wall clock
/// elsewhere; the median of `steps` calls after `warmup` untimed ones.
fn time_median(
    device: Device,
    warmup: usize,
    steps: usize,
    mut work: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let seconds = if device == Device::Cuda {
            crate::gpu::cuda::timed(&mut work)?.1
        } else {
            let start = Instant::now();
            work()?;
            start.elapsed().as_secs_f64()
        };
        if i >= warmup {
            times.push(seconds);
        }
    }
    Ok(median(times))
}

fn random_on(device: Device, shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = Philox::new(seed, Purpose::Init, u64::MAX - 2);
    Tensor::from_vec_on(device, shape, (0..shape.iter().product()).map(|_| rng.range(-1.0, 1.0)).collect())
}

/// A set of convolutions run together: one fused grouped conv, or N separate ones.
struct ConvJob {
    xs: Vec<Tensor>,
    ws: Vec<Tensor>,
    dys: Vec<Tensor>,
    params: Conv2dParams,
}

impl ConvJob {
    fn new(
        device: Device,
        batch: usize,
        size: usize,
        weight: [usize; 4],
        params: Conv2dParams,
        copies: usize,
    ) -> Result<ConvJob> {
        let cin = weight[1] * params.groups;
        let out = (size + 2 * params.padding - weight[2]) / params.stride + 1;
        let mut job = ConvJob { xs: vec![], ws: vec![], dys: vec![], params };
        for c in 0..copies as u64 {
            job.xs.push(random_on(device, &[batch, size, size, cin], 10 + c)?);
            job.ws.push(random_on(device, &weight, 100 + c)?);
            job.dys.push(random_on(device, &[batch, out, out, weight[0]], 1000 + c)?);
        }
        Ok(job)
    }

    fn run(&self, direction: &str) -> Result<()> {
        for ((x, w), dy) in self.xs.iter().zip(&self.ws).zip(&self.dys) {
            let g = ConvGeometry::new(x.shape(), w.shape(), self.params)?;
            match direction {
                "forward" => drop(conv2d_forward(x, w, self.params, false)?),
                "backward-data" => drop(conv2d_backward_data(dy, w, &g, false)?),
                _ => drop(conv2d_backward_weight(x, dy, &g)?),
            }
        }
        Ok(())
    }

    /// FLOPs of one run (the same in every direction).
    fn flops(&self) -> Result<f64> {
        let mut total = 0.0;
        for (x, w) in self.xs.iter().zip(&self.ws) {
            total += ConvGeometry::new(x.shape(), w.shape(), self.params)?.flops();
        }
        Ok(total)
    }
}

/// Per-layer convolution timings of a model's distinct layer shapes. For MoCSE: the fused
/// grouped conv (all experts, one launch), the N experts' convs one by one, and a dense conv
/// of equal FLOPs; for the standard network, its dense convs.
pub fn bench_conv_layers(
    config: ModelConfig,
    batch: usize,
    device: Device,
    warmup: usize,
    steps: usize,
) -> Result<Vec<ConvBenchRow>> {
    let experts = if config.kind == ModelKind::Mocse { config.num_classes } else { 1 };
    let mut rows = Vec::new();
    for (layer, count) in distinct_conv_layers(config) {
        let w: [usize; 4] = layer.weight_shape.clone().try_into().expect("conv weights are 4-D");
        let p = layer.params;
        let mut jobs: Vec<(&'static str, ConvJob)> = vec![(
            if experts > 1 { "fused grouped" } else { "dense" },
            ConvJob::new(device, batch, layer.input_size, w, p, 1)?,
        )];
        if experts > 1 {
            // Each expert's own conv: its slice of the output channels, dense over its inputs.
            let per_expert = [w[0] / experts, w[1], w[2], w[3]];
            let one = Conv2dParams { groups: 1, ..p };
            jobs.push((
                "experts one by one",
                ConvJob::new(device, batch, layer.input_size, per_expert, one, experts)?,
            ));
            // A dense conv of the same FLOPs: channels scaled by 1/sqrt(N) on both sides.
            let scale =
                |c: usize| ((c as f64 * p.groups as f64 / (experts as f64).sqrt()).round() as usize).max(1);
            let cin = if p.groups > 1 { scale(w[1]) } else { w[1] };
            let cout = if p.groups > 1 { scale(w[0] / p.groups) } else { w[0] };
            jobs.push((
                "dense equal FLOPs",
                ConvJob::new(device, batch, layer.input_size, [cout, cin, w[2], w[3]], one, 1)?,
            ));
        }
        // cuDNN runs the same fused (grouped) convolution, when it can.
        let with_cudnn = device == Device::Cuda && crate::gpu::cudnn::available();
        let mut variants: Vec<(&'static str, &ConvJob, ConvImpl)> =
            jobs.iter().map(|(name, job)| (*name, job, ConvImpl::Kernels)).collect();
        if with_cudnn {
            variants.insert(
                1,
                (if experts > 1 { "cudnn grouped" } else { "cudnn" }, &jobs[0].1, ConvImpl::Cudnn),
            );
        }
        for (implementation, job, conv_impl) in variants {
            let flops = job.flops()?;
            for direction in ["forward", "backward-data", "backward-weight"] {
                set_conv_impl(conv_impl);
                let timed = time_median(device, warmup, steps, || job.run(direction));
                set_conv_impl(ConvImpl::Kernels);
                let seconds = timed?;
                rows.push(ConvBenchRow {
                    layer: layer.name.clone(),
                    count,
                    direction,
                    implementation,
                    precision: precision::current(),
                    input: [batch, layer.input_size, layer.input_size, job.xs[0].shape()[3]],
                    weight: job.ws[0].shape().try_into().expect("4-D"),
                    stride: p.stride,
                    groups: job.params.groups,
                    launches: job.xs.len(),
                    seconds,
                    gflop_per_s: flops / seconds / 1e9,
                });
            }
        }
    }
    Ok(rows)
}

/// Speed of one corruption over severities 1-5.
#[derive(Debug, Serialize)]
pub struct CorruptionBenchRow {
    pub corruption: &'static str,
    /// Images per second at severity 1..5.
    pub images_per_s: Vec<f64>,
    /// All five severities together: 5 * batch / total time (the reference's convention:
    /// CORRUPTIONS.md section 8 averages its rates over the 5 severities).
    pub mean_images_per_s: f64,
    /// Seconds for all five severities of this batch.
    pub seconds: f64,
}

/// Times every corruption at every severity on `batch_size` synthetic test images already on
/// `device` (median of `steps` after `warmup`).
pub fn bench_corruptions(
    corruptions: &[crate::corrupt::Corruption],
    batch_size: usize,
    device: Device,
    warmup: usize,
    steps: usize,
    mut progress: impl FnMut(&CorruptionBenchRow),
) -> Result<Vec<CorruptionBenchRow>> {
    use crate::corrupt::{SEVERITIES, StreamKey, corrupt, prepare};
    use crate::data::{DataSpec, Dataset, IMAGE_LEN, Split};
    prepare(corruptions)?;
    let data =
        Dataset::load(&DataSpec::Synthetic, Split::Test, Some(batch_size), crate::train::SYNTHETIC_SET_SEED)?;
    let mut pixels = vec![0u8; batch_size * IMAGE_LEN];
    data.images_u8(0, &mut pixels);
    let images = crate::corrupt::upload_images(&pixels, device)?;
    let mut rows = Vec::new();
    for &c in corruptions {
        let mut times = Vec::new();
        for s in SEVERITIES {
            let key = StreamKey { seed: 0, first_image: 0 };
            times.push(time_median(device, warmup, steps, || corrupt(&images, c, s, key).map(drop))?);
        }
        let seconds: f64 = times.iter().sum();
        let row = CorruptionBenchRow {
            corruption: c.name(),
            images_per_s: times.iter().map(|t| batch_size as f64 / t).collect(),
            mean_images_per_s: (times.len() * batch_size) as f64 / seconds,
            seconds,
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// The card a `--plan` designs for: an NVIDIA H200 SXM (Hopper, sm_90), dense peaks.
pub struct Card {
    pub name: &'static str,
    pub sms: usize,
    pub registers_per_sm: usize,
    pub shared_bytes_per_sm: usize,
    /// Shared memory the runtime reserves per block on sm_90.
    pub reserved_shared_per_block: usize,
    pub max_threads_per_sm: usize,
    pub max_blocks_per_sm: usize,
    pub f32_tflops: f64,
    pub bf16_tflops: f64,
    pub memory_tb_per_s: f64,
}

pub const H200: Card = Card {
    name: "NVIDIA H200 SXM (sm_90)",
    sms: 132,
    registers_per_sm: 65536,
    shared_bytes_per_sm: 228 * 1024,
    reserved_shared_per_block: 1024,
    max_threads_per_sm: 2048,
    max_blocks_per_sm: 32,
    f32_tflops: 67.0,
    bf16_tflops: 989.0,
    memory_tb_per_s: 4.8,
};

/// One direction of one layer on paper: what `--plan` prints.
#[derive(Debug, Serialize)]
pub struct PlanRow {
    pub layer: String,
    pub count: usize,
    pub direction: &'static str,
    pub precision: Precision,
    pub kernel: String,
    pub tile: [usize; 2],
    pub blocks: usize,
    pub registers: u32,
    pub shared_bytes: u32,
    pub blocks_per_sm: usize,
    /// Resident warps over the SM's 64.
    pub occupancy: f64,
    pub waves: usize,
    /// Blocks over the waves' slots: the last wave's idle SMs.
    pub wave_efficiency: f64,
    pub gflop: f64,
    /// Each operand read once and the result written once (f32 in memory), plus backward
    /// weight's partial sums written and read back.
    pub megabytes: f64,
    pub flop_per_byte: f64,
    /// max(FLOPs at the precision's peak, bytes at the memory bandwidth).
    pub microseconds_at_peak: f64,
    pub bound: &'static str,
}

/// The distinct convolutions of a model (weight shape, parameters, input size) with how many
/// layers share each, in execution order.
fn distinct_conv_layers(config: ModelConfig) -> Vec<(crate::nn::preact_resnet::ConvSpec, usize)> {
    let layers = Model::new(config).fused().conv_layers();
    let key = |l: &crate::nn::preact_resnet::ConvSpec| (l.weight_shape.clone(), l.params, l.input_size);
    let mut out: Vec<(crate::nn::preact_resnet::ConvSpec, usize)> = Vec::new();
    for layer in layers {
        match out.iter_mut().find(|(l, _)| key(l) == key(&layer)) {
            Some((_, count)) => *count += 1,
            None => out.push((layer, 1)),
        }
    }
    out
}

/// The performance design of a model's convolutions on `card`, without a GPU: per distinct
/// layer and direction the kernel and tile `ConvLaunch` picks, its FLOPs and bytes, the
/// occupancy that NVRTC's register and shared-memory report for `arch` implies, and the time
/// at the card's peak.
pub fn conv_plan(
    config: ModelConfig,
    batch: usize,
    precision: Precision,
    arch: &str,
    card: &Card,
) -> Result<Vec<PlanRow>> {
    use crate::gpu::{nvrtc, sources::KERNEL_SOURCES};
    use crate::ops::conv::{ConvLaunch, Direction};
    anyhow::ensure!(nvrtc::available(), "{}", nvrtc::missing_message());
    let file = match precision {
        Precision::F32 => "conv2d.cu",
        Precision::Bf16 => "conv2d_bf16.cu",
    };
    let (_, source, _) =
        KERNEL_SOURCES.iter().find(|(f, _, _)| *f == file).context("the convolution kernels are indexed")?;
    let resources = nvrtc::parse_resources(&nvrtc::compile(file, source, arch)?.log);
    let peak = match precision {
        Precision::F32 => card.f32_tflops,
        Precision::Bf16 => card.bf16_tflops,
    } * 1e12;
    let mut rows = Vec::new();
    for (layer, count) in distinct_conv_layers(config) {
        let w: [usize; 4] = layer.weight_shape.clone().try_into().expect("conv weights are 4-D");
        let x = [batch, layer.input_size, layer.input_size, w[1] * layer.params.groups];
        let g = ConvGeometry::new(&x, &w, layer.params)?;
        let [input, weight, output] =
            [g.input_len(), w.iter().product(), g.output_shape().iter().product::<usize>()];
        for (direction, name) in [
            (Direction::Forward, "forward"),
            (Direction::BackwardData, "backward-data"),
            (Direction::BackwardWeight, "backward-weight"),
        ] {
            let launch = ConvLaunch::of(direction, precision, &g);
            let r = resources
                .iter()
                .find(|r| r.name == launch.kernel)
                .with_context(|| format!("ptxas reported no {} for {arch}", launch.kernel))?;
            let threads = 256;
            let by_registers =
                card.registers_per_sm / ((r.registers as usize).div_ceil(8) * 8 * threads).max(1);
            let by_shared =
                card.shared_bytes_per_sm / (r.shared_bytes as usize + card.reserved_shared_per_block);
            let blocks_per_sm = by_registers
                .min(by_shared)
                .min(card.max_threads_per_sm / threads)
                .min(card.max_blocks_per_sm);
            let blocks = launch.grid.iter().map(|&d| d as usize).product::<usize>();
            let slots = (card.sms * blocks_per_sm).max(1);
            let waves = blocks.div_ceil(slots);
            let partials = if launch.splits > 1 { 2 * launch.splits * weight } else { 0 };
            let bytes = 4.0 * (input + weight + output + partials) as f64;
            let flops = g.flops();
            let (compute, memory) = (flops / peak, bytes / (card.memory_tb_per_s * 1e12));
            rows.push(PlanRow {
                layer: layer.name.clone(),
                count,
                direction: name,
                precision,
                kernel: launch.kernel,
                tile: launch.tile,
                blocks,
                registers: r.registers,
                shared_bytes: r.shared_bytes,
                blocks_per_sm,
                occupancy: (blocks_per_sm * threads) as f64 / card.max_threads_per_sm as f64,
                waves,
                wave_efficiency: blocks as f64 / (waves * slots) as f64,
                gflop: flops / 1e9,
                megabytes: bytes / 1e6,
                flop_per_byte: flops / bytes,
                microseconds_at_peak: compute.max(memory) * 1e6,
                bound: if compute >= memory { "compute" } else { "memory" },
            });
        }
    }
    Ok(rows)
}
