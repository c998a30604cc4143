//! The two models a user trains: the standard PreAct ResNet-18, and MoCSE, N class experts run
//! as one fused grouped network (or, as the benchmark baseline and the correctness anchor, as
//! N separate networks run one after another from the same weights).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::nn::expert_slices;
use crate::nn::preact_resnet::{NetShape, PreActResNet, Weights};
use crate::ops::aggregate::Aggregate;
use crate::ops::loss::ClassLabels;
use crate::tensor::Tensor;

/// Bounds that keep every size computation far from overflow; real models are much smaller.
pub const MAX_WIDTH: usize = 4096;
pub const MAX_CLASSES: usize = 1000;

/// Total physical memory (`MemTotal` of /proc/meminfo), when it can be read.
fn physical_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Preact18,
    Mocse,
}

impl FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "preact18" => Ok(ModelKind::Preact18),
            "mocse" => Ok(ModelKind::Mocse),
            _ => Err(format!("unknown model '{s}'; expected preact18 or mocse")),
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::Preact18 => "preact18",
            ModelKind::Mocse => "mocse",
        })
    }
}

/// Everything that defines a model's architecture and loss; stored in a run's config.json.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub num_classes: usize,
    /// Base width of the standard network, or of each expert.
    pub width: usize,
    /// MoCSE only.
    pub aggregate: Aggregate,
    /// MoCSE only: lambda in CE(aggregate) + lambda * mean BCE(expert).
    pub bce_weight: f32,
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (2..=MAX_CLASSES).contains(&self.num_classes),
            "a classifier needs 2 to {MAX_CLASSES} classes, got {}",
            self.num_classes
        );
        ensure!(
            (1..=MAX_WIDTH).contains(&self.width),
            "the width must be 1 to {MAX_WIDTH}, got {} (PreAct ResNet-18 uses 64; at width {MAX_WIDTH} one \
             standard network already has about 45 billion parameters)",
            self.width
        );
        ensure!(
            self.bce_weight.is_finite() && self.bce_weight >= 0.0,
            "--bce-weight must be a finite number >= 0, got {}",
            self.bce_weight
        );
        Ok(())
    }

    /// Refuses a model that cannot run at `batch_size` on `device`, before anything is
    /// allocated: on the kernel devices every tensor must have fewer than 2^31 elements (the
    /// kernels index with 32-bit integers), and weights, gradients, momentum and the
    /// activations of one step must fit in this machine's memory.
    pub fn check_fits(&self, batch_size: usize, device: Device) -> Result<()> {
        self.validate()?;
        let s = self.net_shape();
        let (g, w, b) = (s.groups as u128, s.width as u128, batch_size as u128);
        // The largest activation (the stem's output at 32x32) and weight (a last-stage conv).
        let largest_activation = b * 32 * 32 * g * w;
        let largest_weight = g * 8 * w * 8 * w * 9;
        if device != Device::Cpu {
            let limit = crate::gpu::MAX_ELEMENTS as u128;
            ensure!(
                largest_activation <= limit && largest_weight <= limit,
                "{} at batch {batch_size} has a tensor of {} elements; the {device} device's kernels index \
                 tensors with 32-bit integers (at most {limit} elements); use a smaller width or batch",
                self.describe(),
                largest_activation.max(largest_weight)
            );
        }
        let needed = self.memory_estimate(batch_size);
        if let Some(available) = physical_memory_bytes() {
            ensure!(
                needed <= available as u128,
                "{} at batch {batch_size} needs at least {:.1} GiB of memory (weights, gradients, momentum \
                 and one step's activations), more than this machine's {:.1} GiB; use a smaller width or batch",
                self.describe(),
                needed as f64 / (1u64 << 30) as f64,
                available as f64 / (1u64 << 30) as f64
            );
        }
        Ok(())
    }

    /// A lower bound of the bytes one training step holds: parameters three times (weights,
    /// gradients, momentum) and about ten activations of each stage's size per image.
    fn memory_estimate(&self, batch_size: usize) -> u128 {
        let s = self.net_shape();
        let (g, w, b) = (s.groups as u128, s.width as u128, batch_size as u128);
        let stages: u128 =
            [(32u128, 1u128), (16, 2), (8, 4), (4, 8)].iter().map(|(hw, m)| hw * hw * g * w * m).sum();
        let conv_params: u128 = 3 * 9 * g * w
            + [(1u128, 1u128), (2, 2), (4, 4), (8, 8)]
                .iter()
                .map(|(i, o)| 4 * 9 * g * w * i * w * o)
                .sum::<u128>();
        4 * (3 * conv_params + 10 * b * stages)
    }

    /// The fused network: groups = number of experts for MoCSE.
    pub fn net_shape(&self) -> NetShape {
        match self.kind {
            ModelKind::Preact18 => NetShape { groups: 1, width: self.width, outputs: self.num_classes },
            ModelKind::Mocse => NetShape { groups: self.num_classes, width: self.width, outputs: 2 },
        }
    }

    pub fn describe(&self) -> String {
        match self.kind {
            ModelKind::Preact18 => format!("PreAct ResNet-18, width {}", self.width),
            ModelKind::Mocse => format!(
                "MoCSE, {} experts of width {} (aggregate {}, BCE weight {})",
                self.num_classes, self.width, self.aggregate, self.bce_weight
            ),
        }
    }
}

/// How the N experts are executed.
pub enum Network {
    /// One network; grouped when it is MoCSE.
    Fused(PreActResNet),
    /// N separate single-expert networks, run one after another.
    Unfused(Vec<PreActResNet>),
}

pub struct Model {
    pub config: ModelConfig,
    pub network: Network,
}

impl Model {
    pub fn new(config: ModelConfig) -> Model {
        Model { config, network: Network::Fused(PreActResNet::new(config.net_shape())) }
    }

    /// MoCSE as N separate expert networks; takes weights from `split_experts`.
    pub fn new_unfused(config: ModelConfig) -> Result<Model> {
        ensure!(config.kind == ModelKind::Mocse, "only MoCSE has an unfused form");
        let expert = NetShape { groups: 1, width: config.width, outputs: 2 };
        Ok(Model {
            config,
            network: Network::Unfused((0..config.num_classes).map(|_| PreActResNet::new(expert)).collect()),
        })
    }

    /// The fused network (its names and shapes are those of the checkpoints).
    pub fn fused(&self) -> &PreActResNet {
        match &self.network {
            Network::Fused(net) => net,
            Network::Unfused(_) => panic!("the unfused form has no single network"),
        }
    }

    /// Images [B, 32, 32, 3] in [0, 1] to the model's raw output: class logits [B, K] for the
    /// standard network, expert logits [B, N, 2] for MoCSE. `params`/`buffers` are one set for
    /// the fused form and the experts' sets one after another for the unfused form.
    pub fn forward(
        &self,
        tape: &Tape,
        params: &[Var],
        buffers: &mut [Tensor],
        images: &Var,
        train: bool,
    ) -> Result<Var> {
        let b = images.shape()[0];
        match &self.network {
            Network::Fused(net) => {
                let out = match expert_slices::applies(net, tape, params, images, train) {
                    true => expert_slices::forward_by_slices(net, tape, params, buffers, images)?,
                    false => net.forward(tape, params, buffers, images, train)?,
                };
                match self.config.kind {
                    ModelKind::Preact18 => Ok(out),
                    ModelKind::Mocse => tape.reshape(&out, &[b, self.config.num_classes, 2]),
                }
            }
            Network::Unfused(experts) => {
                let (np, nb) = (experts[0].param_specs().len(), experts[0].buffer_specs().len());
                let mut outs = Vec::with_capacity(experts.len());
                for (n, net) in experts.iter().enumerate() {
                    outs.push(net.forward(
                        tape,
                        &params[n * np..(n + 1) * np],
                        &mut buffers[n * nb..(n + 1) * nb],
                        images,
                        train,
                    )?);
                }
                let out = tape.concat_last(&outs)?;
                tape.reshape(&out, &[b, experts.len(), 2])
            }
        }
    }

    /// Class scores [B, K] from the raw output: what argmax predicts with.
    pub fn scores(&self, tape: &Tape, output: &Var) -> Result<Var> {
        match self.config.kind {
            ModelKind::Preact18 => Ok(output.clone()),
            ModelKind::Mocse => tape.aggregate(output, self.config.aggregate),
        }
    }

    /// The training loss: CE for the standard network; CE on the aggregated scores plus
    /// lambda times the experts' mean BCE for MoCSE.
    pub fn loss(&self, tape: &Tape, output: &Var, labels: &(impl ClassLabels + ?Sized)) -> Result<Var> {
        let scores = self.scores(tape, output)?;
        let ce = tape.softmax_cross_entropy(&scores, labels)?;
        match self.config.kind {
            ModelKind::Preact18 => Ok(ce),
            ModelKind::Mocse => {
                let bce = tape.expert_bce_with_logits(output, labels)?;
                let weighted = tape.scale(&bce, self.config.bce_weight)?;
                tape.add(&ce, &weighted)
            }
        }
    }
}

/// Splits fused MoCSE tensors into the N experts' tensors (`expert_slices::split_groups` with
/// slices of one expert).
pub fn split_experts(net: &PreActResNet, fused: &Weights) -> Vec<Weights> {
    let experts: Vec<_> = (0..net.shape.groups).map(|e| e..e + 1).collect();
    expert_slices::split_groups(net, fused, &experts)
}

/// The inverse of `split_experts` for parameters (or their gradients).
pub fn join_experts(net: &PreActResNet, experts: &[Vec<Tensor>]) -> Vec<Tensor> {
    net.param_specs()
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut data = Vec::with_capacity(spec.shape.iter().product());
            for e in experts {
                data.extend_from_slice(e[i].as_slice());
            }
            Tensor::from_vec(&spec.shape, data)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::random_tensor;

    fn small_mocse() -> (Model, Weights) {
        let config = ModelConfig {
            kind: ModelKind::Mocse,
            num_classes: 3,
            width: 2,
            aggregate: Aggregate::LogOdds,
            bce_weight: 0.5,
        };
        let model = Model::new(config);
        let mut w = model.fused().init_weights(5, [0.5; 3], [0.25; 3]);
        for (spec, t) in model.fused().buffer_specs().iter().zip(w.buffers.iter_mut()) {
            if spec.name.ends_with("running_var") {
                *t = Tensor::full(t.shape(), 0.7);
            }
        }
        (model, w)
    }

    #[test]
    fn weight_gradients_can_be_switched_off() {
        let (model, w) = small_mocse();
        let images = random_tensor(&[2, 32, 32, 3], 4);
        let input_grad = |weights_need_grad: bool| {
            let tape = Tape::new();
            let params: Vec<Var> = w.params.iter().map(|p| tape.leaf(p.clone(), weights_need_grad)).collect();
            let x = tape.leaf(images.clone(), true);
            let out = model.forward(&tape, &params, &mut w.buffers.clone(), &x, false).unwrap();
            let loss = model.loss(&tape, &out, &[0, 2]).unwrap();
            let recorded = tape.recorded();
            let grads = tape.backward(&loss).unwrap();
            assert_eq!(tape.recorded(), 0, "backward must free every node");
            let param_grads = params.iter().filter(|p| grads.get(p).is_some()).count();
            (grads.get(&x).unwrap().clone(), param_grads, recorded)
        };
        let (with, n_with, rec_with) = input_grad(true);
        let (without, n_without, rec_without) = input_grad(false);
        assert_eq!(n_with, w.params.len());
        assert_eq!(n_without, 0);
        assert!(rec_without < rec_with, "weights that need no gradient are not recorded");
        assert_eq!(with.as_slice(), without.as_slice());
    }

    #[test]
    fn no_grad_records_nothing() {
        let (model, w) = small_mocse();
        let tape = Tape::no_grad();
        let params: Vec<Var> = w.params.iter().map(|p| tape.leaf(p.clone(), true)).collect();
        let x = tape.leaf(random_tensor(&[2, 32, 32, 3], 1), true);
        let out = model.forward(&tape, &params, &mut w.buffers.clone(), &x, false).unwrap();
        assert!(!out.requires_grad());
        assert_eq!(tape.recorded(), 0);
    }
}
