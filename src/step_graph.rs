//! A training step on a kernel device as a graph (`gpu::graph`): captured once, on the first
//! full batch, and replayed for every other, so a step costs the host one replay, one write of
//! its inputs and one read of its results instead of some 300 launches (many more with an
//! attack), their uploads and their bookkeeping. The cuda device replays a CUDA graph; the
//! emulator replays the same launches, recorded (which tests that the step is fit for a graph).
//!
//! A graph replays fixed addresses, so everything the step reads or writes that outlives it
//! stays in place: the parameters, their momentum buffers and the batch-norm running statistics
//! are updated in place (the running statistics copied over unless the step was refused); the
//! batch, its labels, an adversarial mode's attack start (random, keyed by the images' indices
//! and the epoch, so made from the batch before each replay) and a control block (the learning
//! rate in, the step's checks out) are written before each replay. The checks are
//! `train_step`'s, made on the device: a non-finite loss or gradient refuses the update there
//! (nothing changes), a non-finite result is reported. The same values as `train_step`, bit
//! for bit (tested on the emulator in every training mode).

use std::sync::Arc;

use anyhow::{Context, Result, ensure};

use crate::device::Device;
use crate::gpu::GpuBuffer;
use crate::gpu::graph::Graph;
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::conv::{ConvEngine, conv_engine};
use crate::ops::elementwise::{copy_unless_flagged, flag_nonfinite, scale_tensor_into};
use crate::ops::loss::{ClassLabels, Labels, count_correct_into};
use crate::ops::sgd::{SgdConfig, sgd_update_in_place};
use crate::precision::{self, Precision};
use crate::tensor::Tensor;
use crate::train::{TrainBatch, TrainingMode, ensure_finite_step, ensure_finite_update, loss_and_gradients};

/// The control block's u32 words: the learning rate (an f32) in; the step's results out.
const LR: u64 = 0;
const CORRECT: u64 = 1;
const REFUSED: u64 = 2;
const NOT_FINITE_AFTER: u64 = 3;
const LOSS: u64 = 4;
const WORDS: usize = 5;

/// What a step's replay reads and writes in place, allocated before the capture.
struct StepState {
    weights: Weights,
    velocity: Vec<Tensor>,
    images: Tensor,
    labels: Arc<GpuBuffer>,
    /// An adversarial mode's attack start (made from the batch before each replay).
    start: Option<Tensor>,
    control: GpuBuffer,
}

pub struct StepGraph {
    state: StepState,
    graph: Graph,
    batch_size: usize,
    precision: Precision,
    sgd: SgdConfig,
    mode: TrainingMode,
    seed: u64,
    classes: usize,
}

/// Whether training replays graphs of its steps where they fit: unless `MOCSE_STEP_GRAPH=0`
/// (every step then runs `train_step`, for comparisons).
pub fn wanted() -> bool {
    std::env::var("MOCSE_STEP_GRAPH").map_or(true, |v| v != "0")
}

/// Whether a training step can run as a graph on `device`: any mode (an adversarial one's
/// attack starts from a point made before each replay), without AugMix's consistency views
/// (three times the batch), on the project's kernels (not cuDNN).
pub fn fits(device: Device, jsd: bool) -> Result<bool> {
    Ok(device != Device::Cpu && !jsd && matches!(conv_engine(device)?, ConvEngine::Kernels(_)))
}

impl StepGraph {
    /// Captures the step of `mode` (its attacks keyed by `seed`) for batches of `batch_size` on
    /// `device`, on copies of `weights` and `velocity` which then replace them (so the caller's
    /// tensors are the ones the replays update).
    #[allow(clippy::too_many_arguments)]
    pub fn capture(
        model: &Model,
        weights: &mut Weights,
        velocity: &mut [Tensor],
        batch_size: usize,
        sgd: &SgdConfig,
        mode: &TrainingMode,
        seed: u64,
        device: Device,
    ) -> Result<StepGraph> {
        let batch_shape = [batch_size, 32, 32, 3];
        let copies =
            |ts: &[Tensor]| -> Result<Vec<Tensor>> { ts.iter().map(|t| copy_on(t, device)).collect() };
        let state = StepState {
            weights: Weights { params: copies(&weights.params)?, buffers: copies(&weights.buffers)? },
            velocity: copies(velocity)?,
            images: Tensor::zeros_on(device, &batch_shape)?,
            labels: Arc::new(GpuBuffer::zeros(device, batch_size * 4)?),
            start: match mode.is_standard() {
                true => None,
                false => Some(Tensor::zeros_on(device, &batch_shape)?),
            },
            control: GpuBuffer::zeros(device, WORDS * 4)?,
        };
        let (graph, ()) =
            Graph::capture(device, || step_launches(model, &state, batch_size, sgd, mode, seed))
                .context("capturing the training step as a graph")?;
        let classes = model.config.num_classes;
        let precision = precision::current();
        let (sgd, mode) = (*sgd, *mode);
        let g = StepGraph { state, graph, batch_size, precision, sgd, mode, seed, classes };
        g.share_into(weights, velocity);
        Ok(g)
    }

    /// Whether this graph runs `batch_size` batches of `mode` (keyed by `seed`) on `device`
    /// with `sgd` at the current precision.
    pub fn runs(
        &self,
        batch_size: usize,
        device: Device,
        sgd: &SgdConfig,
        mode: &TrainingMode,
        seed: u64,
    ) -> bool {
        self.batch_size == batch_size
            && self.state.images.device() == device
            && self.precision == precision::current()
            && self.sgd == *sgd
            && self.mode == *mode
            && self.seed == seed
    }

    /// One training step on `batch` (of the captured size) at learning rate `lr`, updating
    /// `weights` and `velocity` (the caller's, which a step run another way may have replaced:
    /// their values are copied in first). Returns (loss, correctly classified), or
    /// `train_step`'s errors.
    pub fn step(
        &self,
        weights: &mut Weights,
        velocity: &mut [Tensor],
        batch: &TrainBatch,
        lr: f32,
    ) -> Result<(f32, usize)> {
        let s = &self.state;
        ensure!(
            batch.labels.len() == self.batch_size,
            "a batch of {} for a graph of {}",
            batch.labels.len(),
            self.batch_size
        );
        ensure!(
            batch.images.shape() == s.images.shape(),
            "a batch of images {:?} for a graph of {:?}",
            batch.images.shape(),
            s.images.shape()
        );
        ensure!(batch.jsd.is_none(), "the step graph has no AugMix consistency views");
        // The losses check labels as they are recorded, so the capture checked only its own.
        ensure!(
            batch.labels.iter().all(|&y| (y as usize) < self.classes),
            "a label is not below {}",
            self.classes
        );
        let theirs = weights.params.iter().chain(&weights.buffers).chain(velocity.iter());
        ensure!(
            s.tensors().map(Tensor::shape).eq(theirs.clone().map(Tensor::shape)),
            "weights of another model than the graph's"
        );
        for (mine, theirs) in s.tensors().zip(theirs) {
            if mine.address() != theirs.address() {
                buffer(mine)?.copy_from(buffer(theirs)?)?;
            }
        }
        buffer(&s.images)?.copy_from(buffer(&batch.images)?)?;
        if let Some(start) = &s.start {
            let made = self.mode.attack_start(batch, self.seed)?.context("an adversarial mode's start")?;
            buffer(start)?.copy_from(buffer(&made)?)?;
        }
        s.labels.copy_from(&*batch.labels.on(s.labels.device())?)?;
        let mut control = [0u32; WORDS];
        control[LR as usize] = lr.to_bits();
        s.control.write(&control)?;
        self.graph.replay()?;
        let control = s.control.download::<u32>()?;
        // The caller's tensors are the ones replayed into (also after a refused step: unchanged).
        self.share_into(weights, velocity);
        let loss = f32::from_bits(control[LOSS as usize]);
        ensure_finite_step(loss, control[REFUSED as usize] == 0)?;
        ensure_finite_update(control[NOT_FINITE_AFTER as usize] == 0, &s.weights.params, &s.velocity)?;
        Ok((loss, control[CORRECT as usize] as usize))
    }

    fn share_into(&self, weights: &mut Weights, velocity: &mut [Tensor]) {
        weights.params.clone_from(&self.state.weights.params);
        weights.buffers.clone_from(&self.state.weights.buffers);
        velocity.clone_from_slice(&self.state.velocity);
    }
}

fn buffer(t: &Tensor) -> Result<&GpuBuffer> {
    t.gpu_buffer().context("a step graph's tensor is not on a kernel device")
}

/// A copy of `t` on `device` in memory of its own.
fn copy_on(t: &Tensor, device: Device) -> Result<Tensor> {
    let t = t.to_device(device)?;
    let copy = Tensor::output_on(device, t.shape())?;
    buffer(&copy)?.copy_from(buffer(&t)?)?;
    Ok(copy)
}

/// The step's launches, on `state`'s tensors: `train_step`'s loss and gradients
/// (`loss_and_gradients`), its checks written to the control block, its update and running
/// statistics in place.
fn step_launches(
    model: &Model,
    s: &StepState,
    batch_size: usize,
    sgd: &SgdConfig,
    mode: &TrainingMode,
    seed: u64,
) -> Result<()> {
    let word = |i: u64| s.control.address() + 4 * i;
    let mut buffers = s.weights.buffers.clone();
    // The labels' values matter only on the device; the host's are checked against the classes.
    let batch = TrainBatch {
        images: s.images.clone(),
        labels: Labels::sharing(vec![0; batch_size], s.labels.clone())?,
        index: Vec::new(),
        epoch: 0,
        jsd: None,
    };
    let (loss, scores, grads) =
        loss_and_gradients(model, &s.weights, &mut buffers, mode, &batch, s.start.as_ref(), seed)?;
    count_correct_into(&scores, &batch.labels, word(CORRECT))?;
    flag_nonfinite(&[grads.as_slice(), std::slice::from_ref(&loss)].concat(), word(REFUSED))?;
    sgd_update_in_place(&s.weights.params, &s.velocity, &grads, word(LR), sgd, Some(word(REFUSED)))?;
    for (running, new) in s.weights.buffers.iter().zip(&buffers) {
        if running.address() != new.address() {
            copy_unless_flagged(running, new, word(REFUSED))?;
        }
    }
    flag_nonfinite(&s.tensors().cloned().collect::<Vec<_>>(), word(NOT_FINITE_AFTER))?;
    scale_tensor_into(&loss, 1.0, word(LOSS))
}

impl StepState {
    /// The step's parameters, running statistics and momentum buffers, in that order.
    fn tensors(&self) -> impl Iterator<Item = &Tensor> + Clone {
        self.weights.params.iter().chain(&self.weights.buffers).chain(&self.velocity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::{BnMode, Norm};
    use crate::nn::model::{ModelConfig, ModelKind};
    use crate::ops::aggregate::Aggregate;
    use crate::rng::{Philox, Purpose};
    use crate::train::{AdversarialTraining, train_step};

    fn batch(device: Device, n: usize, seed: u64, nan: bool) -> TrainBatch {
        let mut rng = Philox::new(seed, Purpose::Init, 5);
        let mut images: Vec<f32> = (0..n * 32 * 32 * 3).map(|_| rng.range(0.0, 1.0)).collect();
        if nan {
            images[11] = f32::NAN;
        }
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7 + seed as u32) % 10).collect();
        TrainBatch::new(device, images, &labels).unwrap()
    }

    fn host(ts: &[Tensor]) -> Vec<Vec<u32>> {
        ts.iter().map(|t| t.to_host().unwrap().iter().map(|v| v.to_bits()).collect()).collect()
    }

    /// The values whose bits differ between two lists of tensors.
    fn differing(a: &[Tensor], b: &[Tensor]) -> usize {
        let (a, b) = (host(a), host(b));
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| x.iter().zip(y).filter(|(p, q)| p != q).count() + x.len().abs_diff(y.len()))
            .sum()
    }

    /// The adversarial modes with a 2-step L-inf attack (batch norm in training mode for PGD).
    fn adversarial_modes() -> [TrainingMode; 3] {
        let attack = AdversarialTraining {
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
            alpha: 2.0 / 255.0,
            steps: 2,
            bn: BnMode::Train,
            eval_subset: 0,
            beta: None,
            early_stop: false,
        };
        [
            TrainingMode::Pgd(attack),
            TrainingMode::Trades(AdversarialTraining { beta: Some(6.0), bn: BnMode::Eval, ..attack }),
            TrainingMode::FgsmRs(AdversarialTraining { steps: 1, ..attack }),
        ]
    }

    /// Replays of the captured step give `train_step`'s values bit for bit (loss, count,
    /// parameters, momentum, running statistics), in standard and adversarial training (whose
    /// random starts change with the epoch), at a learning rate that changes between them,
    /// after a step `train_step` made on the same tensors (the graph copies its result in), and
    /// through a refused step (a NaN image: an error, and nothing changes).
    #[test]
    fn replays_equal_train_step_bit_for_bit() {
        let d = Device::Emu;
        let sgd = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true };
        let cases =
            [(ModelKind::Mocse, TrainingMode::Standard), (ModelKind::Preact18, TrainingMode::Standard)]
                .into_iter()
                .chain(adversarial_modes().map(|m| (ModelKind::Preact18, m)));
        for (kind, mode) in cases {
            let model = Model::new(ModelConfig {
                kind,
                num_classes: 10,
                width: 4,
                aggregate: Aggregate::Prob,
                bce_weight: 1.0,
            });
            let start = model.fused().init_weights(9, [0.5; 3], [0.25; 3]).to_device(d).unwrap();
            let zeros = |w: &Weights| -> Vec<Tensor> {
                w.params.iter().map(|p| Tensor::zeros_on(d, p.shape()).unwrap()).collect()
            };
            let (mut ew, mut gw) = (start.clone(), start.clone());
            let (mut ev, mut gv) = (zeros(&start), zeros(&start));
            let seed = 3;
            let g = StepGraph::capture(&model, &mut gw, &mut gv, 6, &sgd, &mode, seed, d).unwrap();
            assert!(g.runs(6, d, &sgd, &mode, seed) && !g.runs(6, d, &sgd, &mode, seed + 1));
            for (step, lr) in [0.1f32, 0.05, 0.02, 0.07].into_iter().enumerate() {
                let mut b = batch(d, 6, step as u64, false);
                b.epoch = step as u32;
                let expected = train_step(&model, &mut ew, &mut ev, &b, lr, &sgd, &mode, seed).unwrap();
                let got = if step == 2 {
                    train_step(&model, &mut gw, &mut gv, &b, lr, &sgd, &mode, seed).unwrap()
                } else {
                    g.step(&mut gw, &mut gv, &b, lr).unwrap()
                };
                assert_eq!(
                    (got.0.to_bits(), got.1),
                    (expected.0.to_bits(), expected.1),
                    "{kind:?} {mode:?} step {step}"
                );
                assert_eq!(differing(&gw.params, &ew.params), 0, "{kind:?} {mode:?} step {step}: parameters");
                assert_eq!(
                    differing(&gw.buffers, &ew.buffers),
                    0,
                    "{kind:?} {mode:?} step {step}: running statistics"
                );
                assert_eq!(differing(&gv, &ev), 0, "{kind:?} {mode:?} step {step}: momentum");
            }
            // (An attack's projection into the image range takes a NaN pixel out of its examples.)
            if mode.is_standard() {
                let before = (host(&gw.params), host(&gw.buffers), host(&gv));
                let err = g.step(&mut gw, &mut gv, &batch(d, 6, 9, true), 0.1).unwrap_err();
                assert!(format!("{err:#}").contains("the loss became NaN"), "{err:#}");
                assert!(
                    (host(&gw.params), host(&gw.buffers), host(&gv)) == before,
                    "{kind:?} {mode:?}: a refused step changed something"
                );
            }
            assert!(
                g.step(&mut gw, &mut gv, &batch(d, 5, 1, false), 0.1).is_err(),
                "a batch of another size"
            );
            let mut bad = batch(d, 6, 1, false);
            bad.labels = Labels::new(vec![0, 1, 2, 10, 4, 5]);
            let err = g.step(&mut gw, &mut gv, &bad, 0.1).unwrap_err();
            assert!(format!("{err:#}").contains("not below 10"), "{err:#}");
        }
    }
}
