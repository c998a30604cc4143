//! Benchmarks of whole training and inference steps: images per second and achieved FLOP/s,
//! warm-up first, then the median of several timed steps.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::device::Device;
use crate::eval::class_scores;
use crate::nn::model::{Model, ModelConfig, ModelKind, Network, split_experts};
use crate::nn::preact_resnet::Weights;
use crate::ops::sgd::SgdConfig;
use crate::rng::{Philox, Purpose};
use crate::tensor::Tensor;
use crate::train::sgd_train_step;

#[derive(Debug, Serialize)]
pub struct TrainStepBench {
    pub what: &'static str,
    pub model: String,
    pub model_description: String,
    pub fused: bool,
    pub width: usize,
    pub batch_size: usize,
    pub device: String,
    pub threads: usize,
    pub timed_steps: usize,
    pub train_images_per_s: f64,
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
    let reference = Model::new(config);
    let mut weights = reference.fused().init_weights(0, [0.5; 3], [0.25; 3]);
    let model = if fused {
        reference
    } else {
        let experts = split_experts(reference.fused(), &weights);
        weights = Weights {
            params: experts.iter().flat_map(|e| e.params.clone()).collect(),
            buffers: experts.iter().flat_map(|e| e.buffers.clone()).collect(),
        };
        Model::new_unfused(config)?
    };
    let flops = match &model.network {
        Network::Fused(net) => net.flops_per_image(),
        Network::Unfused(nets) => nets.iter().map(|n| n.flops_per_image()).sum(),
    };
    let mut rng = Philox::new(1, Purpose::Init, u64::MAX);
    let images: Vec<f32> = (0..batch_size * 32 * 32 * 3).map(|_| rng.uniform()).collect();
    let labels: Vec<u32> = (0..batch_size).map(|_| rng.below(config.num_classes as u32)).collect();
    let mut weights = weights.to_device(device)?;
    let mut velocity: Vec<Tensor> =
        weights.params.iter().map(|p| Tensor::zeros_on(device, p.shape())).collect::<Result<_>>()?;
    let sgd = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false };

    let mut train_times = Vec::new();
    for i in 0..warmup + steps {
        let start = Instant::now();
        sgd_train_step(&model, &mut weights, &mut velocity, images.clone(), &labels, 1e-3, &sgd)?;
        if i >= warmup {
            train_times.push(start.elapsed().as_secs_f64());
        }
    }
    let mut infer_times = Vec::new();
    for i in 0..warmup + steps {
        let start = Instant::now();
        class_scores(&model, &weights, Tensor::from_vec(&[batch_size, 32, 32, 3], images.clone()))?;
        if i >= warmup {
            infer_times.push(start.elapsed().as_secs_f64());
        }
    }
    let (train, infer) = (median(train_times), median(infer_times));
    let b = batch_size as f64;
    Ok(TrainStepBench {
        what: "train-step",
        model: config.kind.to_string(),
        model_description: config.describe(),
        fused: fused || config.kind == ModelKind::Preact18,
        width: config.width,
        batch_size,
        device: device.to_string(),
        threads: rayon::current_num_threads(),
        timed_steps: steps,
        train_images_per_s: b / train,
        infer_images_per_s: b / infer,
        train_gflop_per_s: 3.0 * flops * b / train / 1e9,
        infer_gflop_per_s: flops * b / infer / 1e9,
        forward_gflop_per_image: flops / 1e9,
        mocse: crate::BUILD,
    })
}
