//! The training job: epochs of SGD over a data set, an evaluation on the test split after
//! each epoch, a log line and a checkpoint per epoch, and exact resumption.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::atomic_file::{append_line_synced, remove_stale_temporaries, write_atomic};
use crate::attack::evaluate::attack_dataset;
use crate::attack::gradient::{AttackLoss, scores_in_mode};
use crate::attack::pgd::{pgd, pgd_examples, start};
use crate::attack::step::gaussian_start;
use crate::attack::{AttackKind, BnMode, Norm, PgdConfig};
use crate::autograd::{Tape, Var};
use crate::checkpoint::{self, MODEL_FILE, Progress, RunRecord};
use crate::data::resident::ResidentSet;
use crate::data::{Augment, DataSpec, Dataset, Split, augmix, batches, epoch_order, make_batch};
use crate::device::Device;
use crate::dir_lock::DirLock;
use crate::eval::confusion_on;
use crate::fault;
use crate::gpu::GpuBuffer;
use crate::input_file::read_text;
use crate::nn::model::{Model, ModelConfig};
use crate::nn::preact_resnet::Weights;
use crate::ops::elementwise::{all_finite, flag_nonfinite};
use crate::ops::loss::{Labels, count_correct, count_correct_into};
use crate::ops::sgd::{SgdConfig, sgd_step_all};
use crate::precision::{self, Precision};
use crate::progress;
use crate::step_graph::{self, StepGraph};
use crate::tensor::Tensor;

pub const CONFIG_FILE: &str = "config.json";
pub const LOG_FILE: &str = "log.jsonl";
/// Written when `--early-stop` ended a run: the run is finished at the epoch before.
pub const EARLY_STOP_FILE: &str = "early-stop.json";

/// Which synthetic set every run uses, so that runs with different seeds see the same data.
pub const SYNTHETIC_SET_SEED: u64 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// lr * (1 + cos(pi * step / total_steps)) / 2, per step.
    Cosine,
    /// lr, then lr / 10 from 50% of the epochs and lr / 100 from 75%.
    Multistep,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "multistep" => Ok(Schedule::Multistep),
            _ => Err(format!("unknown schedule '{s}'; expected cosine or multistep")),
        }
    }
}

impl Schedule {
    pub fn lr(self, base: f32, epoch: usize, step: u64, epochs: usize, steps_per_epoch: usize) -> f32 {
        match self {
            Schedule::Cosine => {
                let total = (epochs * steps_per_epoch) as f64;
                (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total).cos())) as f32
            }
            Schedule::Multistep => {
                let passed = [0.5, 0.75].iter().filter(|m| epoch as f64 >= **m * epochs as f64).count();
                base * 0.1f32.powi(passed as i32)
            }
        }
    }
}

/// How a training batch becomes a loss. A config.json without a `mode` is standard training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TrainingMode {
    /// The model's criterion (CE, plus the experts' BCE for MoCSE) on the batch.
    #[default]
    Standard,
    /// PGD adversarial training (Madry et al. 2018): the criterion on the last iterate of a PGD
    /// attack on the batch, from a random start that is new every epoch.
    Pgd(AdversarialTraining),
    /// Fast adversarial training (Wong et al. 2020): one signed-gradient step of `alpha`
    /// (1.25 eps by default) from a uniform random start, projected onto the eps-ball.
    FgsmRs(AdversarialTraining),
    /// TRADES (Zhang et al. 2019): the criterion on the clean batch plus beta times the KL
    /// divergence from the clean to the adversarial prediction (batch mean, the clean
    /// prediction not detached); the adversarial examples maximise that KL by PGD from
    /// x + 0.001 N(0, 1).
    Trades(AdversarialTraining),
}

/// The attack that adversarial training trains against.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdversarialTraining {
    pub norm: Norm,
    pub eps: f32,
    pub alpha: f32,
    pub steps: usize,
    /// Batch norm while attacking; training mode by default, as in Rice et al. 2020.
    pub bn: BnMode,
    /// Every epoch, robust accuracy under PGD-10 on the first N test images (0: never).
    pub eval_subset: usize,
    /// TRADES: the weight of the KL term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f32>,
    /// FGSM-RS: stop at catastrophic overfitting, when accuracy under PGD-5 on an epoch's first
    /// batch falls by more than [`EARLY_STOP_DROP`] from the epoch before (Wong et al.).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub early_stop: bool,
}

/// The fall of first-batch PGD-5 accuracy that stops FGSM-RS training with `--early-stop`.
pub const EARLY_STOP_DROP: f64 = 0.2;
/// The standard deviation of TRADES's Gaussian start.
pub const TRADES_START_SIGMA: f32 = 0.001;

impl AdversarialTraining {
    /// The attack of epoch `epoch`'s batches; the random starts come from the run's seed.
    pub fn attack(&self, seed: u64) -> PgdConfig {
        PgdConfig {
            norm: self.norm,
            eps: self.eps,
            alpha: self.alpha,
            steps: self.steps,
            restarts: 1,
            random_start: true,
            bn: self.bn,
            seed,
        }
    }

    /// The per-epoch robust check: PGD-10 at the training eps, step eps/4, batch norm in
    /// evaluation mode, one restart.
    pub fn test_attack(&self, seed: u64) -> PgdConfig {
        PgdConfig { alpha: self.eps / 4.0, steps: 10, bn: BnMode::Eval, ..self.attack(seed) }
    }

    /// The early-stopping check of FGSM-RS: PGD-5 of step 2/255 with the training attack's batch
    /// norm (Wong et al.).
    pub fn early_stop_attack(&self, seed: u64) -> PgdConfig {
        PgdConfig { alpha: 2.0 / 255.0, steps: 5, ..self.attack(seed) }
    }
}

/// The adversarial training methods `train --adv` offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdversarialMethod {
    Pgd,
    FgsmRs,
    Trades,
}

impl std::str::FromStr for AdversarialMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pgd" => Ok(AdversarialMethod::Pgd),
            "fgsm-rs" => Ok(AdversarialMethod::FgsmRs),
            "trades" => Ok(AdversarialMethod::Trades),
            _ => Err(format!("unknown adversarial training '{s}'; expected pgd, trades or fgsm-rs")),
        }
    }
}

impl TrainingMode {
    pub fn is_standard(&self) -> bool {
        *self == TrainingMode::Standard
    }

    pub fn adversarial(&self) -> Option<&AdversarialTraining> {
        match self {
            TrainingMode::Standard => None,
            TrainingMode::Pgd(a) | TrainingMode::FgsmRs(a) | TrainingMode::Trades(a) => Some(a),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let Some(a) = self.adversarial() else { return Ok(()) };
        a.attack(0).validate()?;
        if let TrainingMode::FgsmRs(a) = self {
            ensure!(a.steps == 1, "fgsm-rs takes one step (got steps {})", a.steps);
        }
        match (self, a.beta) {
            (TrainingMode::Trades(_), Some(beta)) => {
                ensure!(beta.is_finite() && beta >= 0.0, "--beta must be a number >= 0, got {beta}")
            }
            (TrainingMode::Trades(_), None) => bail!("trades needs its --beta"),
            (_, Some(_)) => bail!("--beta applies to --adv trades only"),
            (_, None) => {}
        }
        ensure!(
            !a.early_stop || matches!(self, TrainingMode::FgsmRs(_)),
            "--early-stop applies to --adv fgsm-rs only"
        );
        Ok(())
    }

    /// Where an adversarial mode's attack on `batch` starts (random, keyed by the images'
    /// indices and the epoch); None for standard training.
    pub fn attack_start(&self, batch: &TrainBatch, seed: u64) -> Result<Option<Tensor>> {
        Ok(match self {
            TrainingMode::Standard => None,
            TrainingMode::Pgd(a) | TrainingMode::FgsmRs(a) => {
                Some(start(&batch.images, &batch.index, &a.attack(seed), batch.epoch)?)
            }
            TrainingMode::Trades(_) => {
                Some(gaussian_start(&batch.images, &batch.index, TRADES_START_SIGMA, seed, batch.epoch)?)
            }
        })
    }

    /// The objective of one step: the loss on `tape` for `batch` with the current weights
    /// (`params` on the tape, `buffers` the batch-norm statistics the forward pass updates), and
    /// the class scores the step's accuracy counts. Adversarial examples are made first, off
    /// the tape, from the same weights, from `x_start` (`attack_start`'s point): every launch
    /// depends on the batch only through device memory (a step graph replays it).
    #[allow(clippy::too_many_arguments)]
    pub fn objective_from(
        &self,
        model: &Model,
        weights: &Weights,
        tape: &Tape,
        params: &[Var],
        buffers: &mut [Tensor],
        batch: &TrainBatch,
        x_start: Option<&Tensor>,
        seed: u64,
    ) -> Result<(Var, Var)> {
        let images = &batch.images;
        let labels = &batch.labels;
        let start_point = || x_start.cloned().context("an adversarial step needs its start");
        let adversarial = match self {
            TrainingMode::Standard => images.clone(),
            TrainingMode::Pgd(a) | TrainingMode::FgsmRs(a) => {
                let cfg = a.attack(seed);
                pgd_examples(model, weights, images, start_point()?, labels, &cfg, AttackLoss::CrossEntropy)?
            }
            TrainingMode::Trades(a) => {
                let cfg = a.attack(seed);
                // The KL from the clean prediction in the attack's batch-norm mode (evaluation by
                // default, as Zhang et al.), a constant while attacking.
                let clean = scores_in_mode(model, weights, images, cfg.bn)?;
                pgd_examples(model, weights, images, start_point()?, labels, &cfg, AttackLoss::Kl(&clean))?
            }
        };
        let forward = |buffers: &mut [Tensor], images: Tensor| -> Result<Var> {
            model.forward(tape, params, buffers, &tape.leaf(images, false), true)
        };
        match self {
            TrainingMode::Trades(a) => {
                let clean_out = forward(buffers, images.clone())?;
                let natural = model.loss(tape, &clean_out, labels)?;
                let clean_scores = model.scores(tape, &clean_out)?;
                let adv_scores = model.scores(tape, &forward(buffers, adversarial)?)?;
                let robust = tape.kl_divergence(&clean_scores, &adv_scores)?;
                let beta = a.beta.context("trades needs its beta")?;
                Ok((tape.add(&natural, &tape.scale(&robust, beta)?)?, adv_scores))
            }
            TrainingMode::Standard if batch.jsd.is_some() => {
                // One forward of the batch and its AugMix views (batch statistics over all three,
                // as AugMix); the criterion on the clean third, plus the views' consistency.
                let out = forward(buffers, adversarial)?;
                let clean = tape.leading_rows(&out, labels.len())?;
                let consistency = tape.jensen_shannon(&model.scores(tape, &out)?, JSD_VIEWS)?;
                let weight = batch.jsd.unwrap_or_default();
                let loss =
                    tape.add(&model.loss(tape, &clean, labels)?, &tape.scale(&consistency, weight)?)?;
                Ok((loss, model.scores(tape, &clean)?))
            }
            _ => {
                let out = forward(buffers, adversarial)?;
                Ok((model.loss(tape, &out, labels)?, model.scores(tape, &out)?))
            }
        }
    }
}

/// The views of a batch with AugMix's consistency loss: the clean batch and two AugMix views.
pub const JSD_VIEWS: usize = 3;

/// A training batch: images [B, 32, 32, 3] in [0, 1] on the training device, their labels,
/// their indices in the training set and the epoch (which key adversarial random starts).
pub struct TrainBatch {
    pub images: Tensor,
    /// On the host and, once the loss reads them, on the device (gathered there from a resident
    /// set, else uploaded once).
    pub labels: Labels,
    pub index: Vec<u32>,
    pub epoch: u32,
    /// With AugMix's consistency loss, its weight: then `images` holds [3 B] images, the batch
    /// and its two AugMix views, one after the other.
    pub jsd: Option<f32>,
}

impl TrainBatch {
    /// Images from the host; indices 0..B and epoch 0 unless set.
    pub fn new(device: Device, images: Vec<f32>, labels: &[u32]) -> Result<TrainBatch> {
        Ok(TrainBatch {
            images: Tensor::from_vec_on(device, &[labels.len(), 32, 32, 3], images)?,
            labels: Labels::new(labels.to_vec()),
            index: (0..labels.len() as u32).collect(),
            epoch: 0,
            jsd: None,
        })
    }
}

/// Everything a run is defined by; written to RUN_DIR/config.json. Unknown keys are refused: a
/// misspelt setting must not be silently ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    /// `synthetic` or `cifar10:DIR`.
    pub data: String,
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    /// `standard`, `augmix` or `none`.
    pub augment: String,
    /// With `augment` augmix: each batch also goes through in two AugMix views, and the loss
    /// adds this weight times the Jensen-Shannon divergence of the three predictions (absent:
    /// no consistency loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsd: Option<f32>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub sgd: SgdConfig,
    pub schedule: Schedule,
    pub seed: u64,
    /// Keep the model of every K-th epoch as `epoch-NNNN.safetensors` (absent: keep none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_every: Option<usize>,
    /// Standard or adversarial training (absent: standard).
    #[serde(default, skip_serializing_if = "TrainingMode::is_standard")]
    pub mode: TrainingMode,
    /// The mocse build that started the run.
    #[serde(default)]
    pub created_by: String,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        ensure!(self.epochs >= 1, "--epochs must be at least 1");
        ensure!(self.batch_size >= 2, "--batch-size must be at least 2 (batch norm needs a batch)");
        ensure!(self.lr.is_finite() && self.lr > 0.0, "--lr must be a positive number, got {}", self.lr);
        ensure!(
            (0.0..1.0).contains(&self.sgd.momentum),
            "--momentum must be in [0, 1), got {}",
            self.sgd.momentum
        );
        ensure!(
            self.sgd.weight_decay.is_finite() && self.sgd.weight_decay >= 0.0,
            "--weight-decay must be >= 0, got {}",
            self.sgd.weight_decay
        );
        ensure!(!self.sgd.nesterov || self.sgd.momentum > 0.0, "--nesterov needs a momentum above 0");
        ensure!(self.save_every != Some(0), "--save-every must be at least 1");
        self.mode.validate()?;
        self.data_spec()?;
        if let Some(weight) = self.jsd {
            ensure!(weight.is_finite() && weight >= 0.0, "--jsd must be a number >= 0, got {weight}");
            ensure!(
                self.augment()? == Augment::AugMix,
                "--jsd is AugMix's consistency loss; give --augment augmix"
            );
            ensure!(self.mode.is_standard(), "--jsd applies to standard training, not to --adv");
        }
        self.augment()?;
        Ok(())
    }

    /// The most images a training step takes: the batch size, or all images when fewer; three
    /// times that with the AugMix views of --jsd.
    pub fn largest_batch(&self) -> usize {
        let batch = self.batch_size.min(self.train_subset.unwrap_or(crate::data::SYNTHETIC_TRAIN_LEN));
        if self.jsd.is_some() { JSD_VIEWS * batch } else { batch }
    }

    pub fn data_spec(&self) -> Result<DataSpec> {
        Ok(self.data.parse()?)
    }

    pub fn augment(&self) -> Result<Augment> {
        Ok(self.augment.parse()?)
    }
}

/// One line of RUN_DIR/log.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub lr: f32,
    /// Wall-clock time of the epoch, and its training throughput. `null` only in a line that a
    /// crash lost and `--resume` restored from the checkpoint, which records the deterministic
    /// fields alone (so identical runs write identical checkpoints).
    pub seconds: Option<f64>,
    pub images_per_s: Option<f64>,
    /// Adversarial training: accuracy under PGD-10 on the first `eval_subset` test images (the
    /// train accuracy is then on the batches' adversarial examples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust_test_accuracy: Option<f64>,
    /// FGSM-RS with `--early-stop`: accuracy under PGD-5 on the epoch's first training batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_batch_robust_accuracy: Option<f64>,
    /// The arithmetic the epoch trained in (`--precision`; absent in logs of older builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

/// Why and where `--early-stop` ended a run (RUN_DIR/early-stop.json).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStop {
    /// The epoch whose training overfitted; its weights were not kept.
    pub epoch: usize,
    pub first_batch_robust_accuracy: f64,
    pub previous_first_batch_robust_accuracy: f64,
    /// The epoch whose model the run keeps (model.safetensors).
    pub kept_epoch: usize,
}

impl EarlyStop {
    pub fn describe(&self) -> String {
        format!(
            "catastrophic overfitting in epoch {}: PGD-5 accuracy on the epoch's first batch fell from {:.2}% to \
             {:.2}%; training stopped, and the run keeps epoch {}'s model",
            self.epoch,
            100.0 * self.previous_first_batch_robust_accuracy,
            100.0 * self.first_batch_robust_accuracy,
            self.kept_epoch
        )
    }

    fn read(run_dir: &Path) -> Result<Option<EarlyStop>> {
        let path = run_dir.join(EARLY_STOP_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = read_text(&path, "early-stop record")?;
        Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?))
    }
}

/// The training set resident on a kernel device (none on the cpu).
fn resident_set(train: &Dataset, device: Device) -> Result<Option<ResidentSet>> {
    if device == Device::Cpu {
        return Ok(None);
    }
    let set = ResidentSet::upload(train, device)
        .with_context(|| format!("uploading the {} training images to the {device} device", train.len()))?;
    Ok(Some(set))
}

/// Loads the split a config names, with the config's subset.
pub fn load_split(config: &TrainConfig, split: Split, subset: Option<usize>) -> Result<Dataset> {
    let spec = config.data_spec()?;
    Dataset::load(&spec, split, subset, SYNTHETIC_SET_SEED)
        .with_context(|| format!("loading the {split} split of {spec}"))
}

pub fn read_config(run_dir: &Path) -> Result<TrainConfig> {
    let path = run_dir.join(CONFIG_FILE);
    let text = read_text(&path, "run configuration").with_context(|| {
        format!("{} is not a mocse run directory, or its configuration is unreadable", run_dir.display())
    })?;
    let config: TrainConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid mocse run configuration", path.display()))?;
    config.validate().with_context(|| format!("{} holds invalid settings", path.display()))?;
    Ok(config)
}

/// A run in progress: model, weights, optimizer state and data. It holds the run directory's
/// lock for as long as it lives, so no second process writes the same run.
pub struct Trainer {
    pub config: TrainConfig,
    pub run_dir: PathBuf,
    pub device: Device,
    pub model: Model,
    pub weights: Weights,
    velocity: Vec<Tensor>,
    pub progress: Progress,
    /// Set when `--early-stop` ended the run.
    pub early_stop: Option<EarlyStop>,
    train: Dataset,
    /// On a kernel device: the training set uploaded there, batches assembled there.
    resident: Option<ResidentSet>,
    /// On a kernel device: the step as a graph, captured on the first full batch and replayed
    /// for the others (`step_graph::fits` says which runs).
    step_graph: Option<StepGraph>,
    /// Whether full batches replay the step's graph where it fits (`step_graph::wanted`).
    pub step_graphs: bool,
    test: Dataset,
    _lock: DirLock,
}

impl Trainer {
    /// Starts a new run in `run_dir`, which must be new or empty.
    pub fn create(config: TrainConfig, run_dir: &Path, device: Device) -> Result<Trainer> {
        config.validate()?;
        config.model.check_fits(config.largest_batch(), device)?;
        let already_a_run = || run_dir.join(CONFIG_FILE).exists() || run_dir.join(MODEL_FILE).exists();
        let refuse_run = || {
            anyhow::anyhow!(
                "{} already holds a run; continue it with --resume, or choose another --out",
                run_dir.display()
            )
        };
        if run_dir.exists() {
            if !run_dir.is_dir() {
                bail!("--out {} exists and is not a directory", run_dir.display());
            }
            if already_a_run() {
                return Err(refuse_run());
            }
            if crate::dir_lock::holds_other_files(run_dir)? {
                // A run starting here this moment (its lock held, its config still being
                // written) is another writer, not foreign files: say so.
                if run_dir.join(crate::dir_lock::LOCK_FILE).exists() {
                    DirLock::acquire(run_dir, "training")?;
                }
                bail!(
                    "--out {} already holds other files; a new run needs a new or empty directory",
                    run_dir.display()
                );
            }
        }
        fs::create_dir_all(run_dir)
            .with_context(|| format!("could not create run directory {}", run_dir.display()))?;
        let lock = DirLock::acquire(run_dir, "training")?;
        // Another process may have started a run here between the checks above and the lock.
        if already_a_run() {
            return Err(refuse_run());
        }
        // The data and the weights first: a run directory is written only for a run that can start.
        let trainer = Trainer::start(config, run_dir, device, lock)?;
        write_atomic(&run_dir.join(CONFIG_FILE), serde_json::to_string_pretty(&trainer.config)?.as_bytes())?;
        write_atomic(&run_dir.join(LOG_FILE), b"")?;
        Ok(trainer)
    }

    /// A run at epoch 0: fresh weights from the config's seed, zero velocities.
    fn start(config: TrainConfig, run_dir: &Path, device: Device, lock: DirLock) -> Result<Trainer> {
        let train = load_split(&config, Split::Train, config.train_subset)?;
        let test = load_split(&config, Split::Test, config.test_subset)?;
        ensure!(
            train.num_classes() == config.model.num_classes,
            "the data has {} classes",
            train.num_classes()
        );
        let model = Model::new(config.model);
        let (mean, std) = train.channel_stats();
        let std = std.map(|s| if s > 1e-6 { s } else { 1.0 });
        let weights = model.fused().init_weights(config.seed, mean, std).to_device(device)?;
        let velocity =
            weights.params.iter().map(|p| Tensor::zeros_on(device, p.shape())).collect::<Result<_>>()?;
        Ok(Trainer {
            step_graph: None,
            step_graphs: step_graph::wanted(),
            config,
            run_dir: run_dir.to_path_buf(),
            device,
            model,
            weights,
            velocity,
            progress: Progress { epoch: 0, step: 0 },
            early_stop: None,
            resident: resident_set(&train, device)?,
            train,
            test,
            _lock: lock,
        })
    }

    /// Continues the run in `run_dir` from its last complete checkpoint (from the start if no
    /// epoch finished), with the settings it was started with.
    pub fn resume(run_dir: &Path, device: Device) -> Result<Trainer> {
        if !run_dir.is_dir() {
            bail!("{} is not a directory; --resume continues an existing run", run_dir.display());
        }
        let lock = DirLock::acquire(run_dir, "training (resumed)")?;
        remove_stale_temporaries(run_dir)?;
        let config = read_config(run_dir)?;
        config.model.check_fits(config.largest_batch(), device)?;
        let model = Model::new(config.model);
        let Some(saved) = checkpoint::load_checkpoint(run_dir, model.fused())? else {
            eprintln!("{} has no finished epoch yet; starting it from the beginning", run_dir.display());
            let log = LogFile::read(run_dir)?;
            log.rewrite(run_dir, &[])?;
            return Trainer::start(config, run_dir, device, lock);
        };
        if let Some(why) = &saved.fell_back {
            eprintln!(
                "warning: the last save of {} did not complete ({why}); continuing from the checkpoint before it (epoch {})",
                run_dir.display(),
                saved.progress.epoch
            );
        }
        if let Some(recorded) = &saved.record.config {
            check_config_unchanged(run_dir, &config, recorded, saved.progress.epoch)?;
        }
        // Epochs after the checkpoint never happened as far as the resumed run is concerned; the
        // checkpoint's own line is restored from the checkpoint if a crash lost it.
        let log = LogFile::read(run_dir)?;
        let mut kept: Vec<EpochLog> =
            log.entries.into_iter().filter(|e| e.epoch <= saved.progress.epoch).collect();
        let restored = saved.record.epoch_log.as_deref().and_then(|l| serde_json::from_str(l).ok());
        if let Some(line) = restored.filter(|_| !kept.iter().any(|e| e.epoch == saved.progress.epoch)) {
            kept.push(line);
        }
        LogFile::rewrite_entries(run_dir, &kept, &log.skipped)?;
        let train = load_split(&config, Split::Train, config.train_subset)?;
        let test = load_split(&config, Split::Test, config.test_subset)?;
        Ok(Trainer {
            step_graph: None,
            step_graphs: step_graph::wanted(),
            config,
            run_dir: run_dir.to_path_buf(),
            device,
            model,
            weights: saved.weights.to_device(device)?,
            velocity: saved.velocity.iter().map(|v| v.to_device(device)).collect::<Result<Vec<_>>>()?,
            progress: saved.progress,
            early_stop: EarlyStop::read(run_dir)?,
            resident: resident_set(&train, device)?,
            train,
            test,
            _lock: lock,
        })
    }

    pub fn steps_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.config.batch_size)
    }

    pub fn is_finished(&self) -> bool {
        self.progress.epoch >= self.config.epochs || self.early_stop.is_some()
    }

    /// What a failure now leaves behind, for messages.
    fn kept_checkpoint(&self) -> String {
        if self.progress.epoch == 0 {
            format!("no epoch of {} is complete yet", self.run_dir.display())
        } else {
            format!(
                "the last good checkpoint (epoch {}) in {} is kept",
                self.progress.epoch,
                self.run_dir.display()
            )
        }
    }

    /// One training step on a batch; returns (loss, correctly classified).
    pub fn step(&mut self, batch: &TrainBatch, lr: f32) -> Result<(f32, usize)> {
        let result = train_step(
            &self.model,
            &mut self.weights,
            &mut self.velocity,
            batch,
            lr,
            &self.config.sgd,
            &self.config.mode,
            self.config.seed,
        );
        self.stepped(result, lr)
    }

    /// `step` replayed from the step's graph (captured first where there is none for this
    /// batch size, device and precision): the same values.
    fn graph_step(&mut self, batch: &TrainBatch, lr: f32) -> Result<(f32, usize)> {
        let size = batch.labels.len();
        let (mode, seed) = (self.config.mode, self.config.seed);
        if !self.step_graph.as_ref().is_some_and(|g| g.runs(size, self.device, &self.config.sgd, &mode, seed))
        {
            self.step_graph = None;
            let captured = StepGraph::capture(
                &self.model,
                &mut self.weights,
                &mut self.velocity,
                size,
                &self.config.sgd,
                &mode,
                seed,
                self.device,
            );
            match captured {
                Ok(g) => self.step_graph = Some(g),
                // Training goes on op by op, saying why (a driver without stream-ordered
                // allocation, say); the values are the same.
                Err(e) => {
                    eprintln!(
                        "warning: the training step could not be captured as a graph ({e:#}); it runs op by op"
                    );
                    self.step_graphs = false;
                    return self.step(batch, lr);
                }
            }
        }
        let graph = self.step_graph.as_ref().context("a captured step graph")?;
        let result = graph.step(&mut self.weights, &mut self.velocity, batch, lr);
        self.stepped(result, lr)
    }

    /// Whether the last full batch was a replay of the step's graph.
    pub fn replays_step_graph(&self) -> bool {
        self.step_graphs && self.step_graph.is_some()
    }

    /// A step's result, its failure explained; counts the step.
    fn stepped(&mut self, result: Result<(f32, usize)>, lr: f32) -> Result<(f32, usize)> {
        let result = result.with_context(|| {
            format!(
                "training stopped at epoch {} step {} (lr {lr}); {}; try a lower --lr",
                self.progress.epoch + 1,
                self.progress.step + 1,
                self.kept_checkpoint()
            )
        })?;
        self.progress.step += 1;
        Ok(result)
    }

    /// Trains one epoch, evaluates, logs and checkpoints; with `show_progress`, a progress bar
    /// (log lines without a terminal) while it runs. None when `--early-stop` found the epoch
    /// overfitted: then nothing of it is kept and the run is finished.
    pub fn run_epoch(&mut self, show_progress: bool) -> Result<Option<EpochLog>> {
        let epoch = self.progress.epoch;
        let (epochs, spe) = (self.config.epochs, self.steps_per_epoch());
        let augment = self.config.augment()?;
        let order = epoch_order(self.train.len(), true, self.config.seed, epoch as u64);
        let resident_order = self
            .resident
            .as_ref()
            .map(|r| r.order(order.clone(), self.config.seed, epoch as u64))
            .transpose()?;
        let prefix = format!("epoch {}/{epochs}", epoch + 1);
        let bar = if show_progress {
            progress::bar_with_prefix(self.train.len() as u64, "images", &prefix)
        } else {
            ProgressBar::hidden().with_prefix(prefix)
        };
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        // Full batches replay a graph of the step (the last, smaller one runs `train_step`).
        let graph_fits = self.step_graphs && step_graph::fits(self.device, self.config.jsd.is_some())?;
        let mut lr = self.config.lr;
        let mut first_batch: Option<(Tensor, Vec<u32>, Vec<u32>)> = None;
        for (nth, idx) in batches(&order, self.config.batch_size).enumerate() {
            lr = self.config.schedule.lr(self.config.lr, epoch, self.progress.step, epochs, spe);
            let index: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            let labels: Vec<u32> = idx.iter().map(|&i| u32::from(self.train.label(i))).collect();
            let (seed, jsd) = (self.config.seed, self.config.jsd);
            // The crops (and the JSD's copies of them), assembled on the device where the set
            // is resident there, else on the host and uploaded.
            let copies = if augment == Augment::AugMix && jsd.is_some() { JSD_VIEWS } else { 1 };
            let crops = match (&self.resident, &resident_order) {
                (Some(set), Some(on_device)) => {
                    let first = nth * self.config.batch_size;
                    set.batch(on_device, first, idx.len(), copies, augment)?
                }
                _ => {
                    let batch = make_batch(&self.train, idx, augment, seed, epoch as u64);
                    let images = batch.images.repeat(copies);
                    Tensor::from_vec_on(self.device, &[copies * batch.size, 32, 32, 3], images)?
                }
            };
            let images = match (augment, jsd) {
                (Augment::AugMix, None) => augmix::augment_batch(&crops, &index, seed, epoch as u64)?,
                (Augment::AugMix, Some(_)) => {
                    augmix::clean_and_augmented_views(&crops, &index, seed, epoch as u64)?
                }
                _ => crops,
            };
            // The labels gathered where the images were, or uploaded once for the step's losses.
            let labels = match (&self.resident, &resident_order) {
                (Some(set), Some(on_device)) => {
                    let first = nth * self.config.batch_size;
                    Labels::with_device_copy(labels, set.batch_labels(on_device, first, idx.len())?)?
                }
                _ => Labels::new(labels),
            };
            let batch = TrainBatch { images, labels, index, epoch: epoch as u32, jsd };
            if first_batch.is_none() {
                first_batch = Some((batch.images.clone(), batch.labels.to_vec(), batch.index.clone()));
            }
            let (loss, c) = match graph_fits && idx.len() == self.config.batch_size {
                true => self.graph_step(&batch, lr)?,
                false => self.step(&batch, lr)?,
            };
            loss_sum += loss as f64 * idx.len() as f64;
            correct += c;
            seen += idx.len();
            bar.set_position(seen as u64);
            bar.set_message(format!(
                "loss {:.4}, accuracy {:.2}%",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64
            ));
        }
        let train_seconds = start.elapsed().as_secs_f64();
        bar.set_message(format!("trained; now testing on {} images", self.test.len()));
        let test_correct = confusion_on(
            &self.model,
            &self.weights,
            &self.test,
            self.config.batch_size.max(128),
            None,
            None,
        )?
        .correct();
        let robust_test_accuracy = match self.config.mode.adversarial() {
            Some(adv) if adv.eval_subset > 0 => {
                let n = adv.eval_subset.min(self.test.len());
                bar.set_message(format!("trained; now attacking {n} test images (PGD-10)"));
                let attack = adv.test_attack(self.config.seed);
                let batch_size = self.config.batch_size.max(128);
                let counts = attack_dataset(
                    &self.model,
                    &self.weights,
                    &self.test,
                    n,
                    batch_size,
                    AttackKind::Pgd,
                    &attack,
                    false,
                    None,
                )?;
                Some(counts.robust as f64 / n as f64)
            }
            _ => None,
        };
        // Early stopping (Wong et al.): PGD-5 on the epoch's first batch, with this epoch's weights.
        let first_batch_robust_accuracy = match (self.config.mode.adversarial(), &first_batch) {
            (Some(adv), Some((images, labels, index))) if adv.early_stop => {
                let attack = adv.early_stop_attack(self.config.seed);
                let outcome = pgd(&self.model, &self.weights, images, labels, index, &attack)?;
                Some(outcome.robust.iter().filter(|&&r| r).count() as f64 / labels.len() as f64)
            }
            _ => None,
        };
        bar.finish_and_clear();
        let previous = read_log(&self.run_dir)?.last().and_then(|e| e.first_batch_robust_accuracy);
        if let (Some(now), Some(before)) = (first_batch_robust_accuracy, previous)
            && now - before < -EARLY_STOP_DROP
        {
            let stop = EarlyStop {
                epoch: epoch + 1,
                first_batch_robust_accuracy: now,
                previous_first_batch_robust_accuracy: before,
                kept_epoch: epoch,
            };
            write_atomic(
                &self.run_dir.join(EARLY_STOP_FILE),
                serde_json::to_string_pretty(&stop)?.as_bytes(),
            )?;
            self.early_stop = Some(stop);
            return Ok(None);
        }
        let entry = EpochLog {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_accuracy: test_correct as f64 / self.test.len() as f64,
            lr,
            seconds: Some(start.elapsed().as_secs_f64()),
            images_per_s: Some(seen as f64 / train_seconds),
            robust_test_accuracy,
            first_batch_robust_accuracy,
            precision: Some(precision::current()),
        };
        // Whether this epoch is the most robust so far, against the earlier lines of the log
        // (read before this epoch's line is appended; only adversarial runs have such lines).
        let most_robust = match robust_test_accuracy {
            Some(r) => {
                let best =
                    read_log(&self.run_dir)?.iter().filter_map(|e| e.robust_test_accuracy).reduce(f64::max);
                best.is_none_or(|b| r > b)
            }
            None => false,
        };
        self.save_epoch(&entry).with_context(|| {
            format!(
                "could not save epoch {}; {}; after fixing the cause (a full disk?), continue with --resume",
                epoch + 1,
                self.kept_checkpoint()
            )
        })?;
        self.progress.epoch += 1;
        if most_robust {
            checkpoint::keep_best(&self.run_dir)?;
        }
        if self.config.save_every.is_some_and(|k| self.progress.epoch.is_multiple_of(k)) {
            checkpoint::keep_epoch(&self.run_dir, self.progress.epoch)?;
        }
        Ok(Some(entry))
    }

    /// The log line first, then the checkpoint (which carries the line too): a crash in between
    /// leaves a line for an epoch that --resume drops and trains again.
    /// If the checkpoint cannot be written (a full disk), the line is taken back.
    fn save_epoch(&self, entry: &EpochLog) -> Result<()> {
        let line = serde_json::to_string(entry)?;
        let log_path = self.run_dir.join(LOG_FILE);
        let log_len = fs::metadata(&log_path).map_or(0, |m| m.len());
        append_line_synced(&log_path, &line)?;
        fault::point(fault::points::EPOCH_LOGGED);
        let deterministic = EpochLog { seconds: None, images_per_s: None, ..entry.clone() };
        let record = RunRecord {
            config: Some(serde_json::to_string(&self.config)?),
            epoch_log: Some(serde_json::to_string(&deterministic)?),
        };
        let progress = Progress { epoch: entry.epoch, step: self.progress.step };
        let net = self.model.fused();
        let saved =
            checkpoint::save_checkpoint(&self.run_dir, net, &self.weights, &self.velocity, progress, &record);
        if saved.is_err() {
            let _ = fs::OpenOptions::new().write(true).open(&log_path).and_then(|f| f.set_len(log_len));
        }
        saved
    }

    /// Trains until the configured number of epochs, or `max_epochs` more of them. With
    /// `show_progress`, progress while an epoch runs and a summary line after each, on stderr.
    pub fn run(&mut self, max_epochs: Option<usize>, show_progress: bool) -> Result<Vec<EpochLog>> {
        let mut logs = Vec::new();
        let stop_at =
            max_epochs.map_or(self.config.epochs, |m| (self.progress.epoch + m).min(self.config.epochs));
        while self.progress.epoch < stop_at {
            let Some(e) = self.run_epoch(show_progress)? else {
                if let Some(stop) = &self.early_stop {
                    eprintln!("{}", stop.describe());
                }
                break;
            };
            if show_progress {
                eprintln!(
                    "epoch {}/{}: train loss {:.4}, train accuracy {:.2}%, test accuracy {:.2}%, lr {:.5}, {:.1} s, {:.0} images/s",
                    e.epoch,
                    self.config.epochs,
                    e.train_loss,
                    100.0 * e.train_accuracy,
                    100.0 * e.test_accuracy,
                    e.lr,
                    e.seconds.unwrap_or(f64::NAN),
                    e.images_per_s.unwrap_or(f64::NAN)
                );
                if let Some(r) = e.robust_test_accuracy {
                    eprintln!(
                        "epoch {}/{}: robust test accuracy (PGD-10) {:.2}%",
                        e.epoch,
                        self.config.epochs,
                        100.0 * r
                    );
                }
                if let Some(r) = e.first_batch_robust_accuracy {
                    eprintln!(
                        "epoch {}/{}: PGD-5 accuracy on the epoch's first batch (early stopping) {:.2}%",
                        e.epoch,
                        self.config.epochs,
                        100.0 * r
                    );
                }
            }
            logs.push(e);
        }
        Ok(logs)
    }
}

/// One training step: the mode's objective on the batch (forward in training mode, updating
/// the batch-norm running statistics), backward, then the SGD update. Returns (loss, correctly
/// classified). A non-finite loss or gradient is an error, and then nothing has been updated;
/// so is a non-finite parameter, momentum buffer or running statistic after the update (the
/// caller then must not save these weights).
///
/// On a kernel device the step's checks are made there and read back once, at its end (one
/// wait for the device per step): the correct count, whether the loss or a gradient is not
/// finite (then the update keeps every parameter as it was, on the device) and whether what
/// the update produced is not finite. The cpu checks as it goes.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &Model,
    weights: &mut Weights,
    velocity: &mut [Tensor],
    batch: &TrainBatch,
    lr: f32,
    sgd: &SgdConfig,
    mode: &TrainingMode,
    seed: u64,
) -> Result<(f32, usize)> {
    let mut buffers = weights.buffers.clone();
    let x_start = mode.attack_start(batch, seed)?;
    let (loss, scores, grads) =
        loss_and_gradients(model, weights, &mut buffers, mode, batch, x_start.as_ref(), seed)?;
    let (loss_value, correct) = match loss.device() {
        Device::Cpu => {
            let correct = count_correct(&scores, &batch.labels)?;
            drop(scores);
            let loss_value = loss.scalar_value()?;
            ensure_finite_step(loss_value, all_finite(&grads)?)?;
            sgd_step_all(&mut weights.params, velocity, &grads, lr, sgd, None)?;
            let produced: Vec<Tensor> =
                weights.params.iter().chain(velocity.iter()).chain(&buffers).cloned().collect();
            let produced_finite = all_finite(&produced)?;
            drop(produced);
            ensure_finite_update(produced_finite, &weights.params, velocity)?;
            (loss_value, correct)
        }
        d => {
            // u32 slots there: [correct, loss or gradient not finite, product not finite].
            let report = GpuBuffer::zeros(d, 12)?;
            let slot = |i: u64| report.address() + 4 * i;
            count_correct_into(&scores, &batch.labels, slot(0))?;
            drop(scores);
            flag_nonfinite(&[grads.as_slice(), std::slice::from_ref(&loss)].concat(), slot(1))?;
            sgd_step_all(&mut weights.params, velocity, &grads, lr, sgd, Some(slot(1)))?;
            let produced: Vec<Tensor> =
                weights.params.iter().chain(velocity.iter()).chain(&buffers).cloned().collect();
            flag_nonfinite(&produced, slot(2))?;
            drop(produced);
            let checks = report.download::<u32>()?;
            let loss_value = loss.scalar_value()?;
            ensure_finite_step(loss_value, checks[1] == 0)?;
            ensure_finite_update(checks[2] == 0, &weights.params, velocity)?;
            (loss_value, checks[0] as usize)
        }
    };
    weights.buffers = buffers;
    Ok((loss_value, correct))
}

/// The objective's loss and class scores on `batch` (its attack, if any, from `x_start`) and
/// every parameter's gradient, in order; the tape is gone by then, so an update may write over
/// the parameters. `buffers` get the batch-norm running statistics the forward pass updates.
pub(crate) fn loss_and_gradients(
    model: &Model,
    weights: &Weights,
    buffers: &mut [Tensor],
    mode: &TrainingMode,
    batch: &TrainBatch,
    x_start: Option<&Tensor>,
    seed: u64,
) -> Result<(Tensor, Tensor, Vec<Tensor>)> {
    let tape = Tape::new();
    let params: Vec<Var> = weights.params.iter().map(|p| tape.leaf(p.clone(), true)).collect();
    let (loss, scores) =
        mode.objective_from(model, weights, &tape, &params, buffers, batch, x_start, seed)?;
    let mut grads = tape.backward(&loss)?;
    let grads: Vec<Tensor> =
        params.iter().map(|p| grads.take(p).context("a parameter got no gradient")).collect::<Result<_>>()?;
    Ok((loss.value().clone(), scores.value().clone(), grads))
}

/// A step's loss and gradients as its error where they are not finite (the update is then
/// refused: nothing has changed).
pub(crate) fn ensure_finite_step(loss: f32, gradients_finite: bool) -> Result<()> {
    if !loss.is_finite() {
        bail!("the loss became {loss}");
    }
    ensure!(gradients_finite, "a gradient became infinite or NaN");
    Ok(())
}

/// What an update made non-finite, as the step's error, its kind looked up only when something
/// was (`produced_finite` false): the parameters, the momentum buffers, else the batch-norm
/// running statistics.
pub(crate) fn ensure_finite_update(
    produced_finite: bool,
    params: &[Tensor],
    velocity: &[Tensor],
) -> Result<()> {
    if produced_finite {
        return Ok(());
    }
    ensure!(all_finite(params)?, "the update made a parameter infinite or NaN");
    ensure!(all_finite(velocity)?, "the update made an SGD momentum buffer infinite or NaN");
    bail!("a batch-norm running statistic became infinite or NaN")
}

/// Every entry of RUN_DIR/log.jsonl, failing on a line that is not one.
pub fn read_log(run_dir: &Path) -> Result<Vec<EpochLog>> {
    let log = LogFile::read(run_dir)?;
    if let Some((n, _)) = log.skipped.first() {
        bail!("{} line {n} is not a log entry", run_dir.join(LOG_FILE).display());
    }
    Ok(log.entries)
}

/// RUN_DIR/log.jsonl as read for resuming: the entries, and the lines that are not entries
/// (a line torn by a crash, or garbage), which must not stop a run whose checkpoint is intact.
struct LogFile {
    entries: Vec<EpochLog>,
    /// (line number, text) of each line that did not parse.
    skipped: Vec<(usize, String)>,
}

impl LogFile {
    fn read(run_dir: &Path) -> Result<LogFile> {
        let path = run_dir.join(LOG_FILE);
        let text = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            _ => {
                let bytes = crate::input_file::read_input(
                    &path,
                    "training log",
                    crate::input_file::SMALL_FILE_LIMIT,
                )?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        let mut log = LogFile { entries: Vec::new(), skipped: Vec::new() };
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(entry) => log.entries.push(entry),
                Err(_) => log.skipped.push((i + 1, line.to_string())),
            }
        }
        Ok(log)
    }

    /// Rewrites the log with `entries`, saying which unreadable lines were left out.
    fn rewrite_entries(run_dir: &Path, entries: &[EpochLog], skipped: &[(usize, String)]) -> Result<()> {
        let path = run_dir.join(LOG_FILE);
        for (n, line) in skipped {
            let shown: String = line.chars().take(80).collect();
            eprintln!("warning: {} line {n} is not a log entry and is left out: {shown:?}", path.display());
        }
        let text: String =
            entries.iter().map(|e| serde_json::to_string(e).map(|s| s + "\n")).collect::<Result<_, _>>()?;
        write_atomic(&path, text.as_bytes())
    }

    fn rewrite(&self, run_dir: &Path, entries: &[EpochLog]) -> Result<()> {
        LogFile::rewrite_entries(run_dir, entries, &self.skipped)
    }
}

/// Refuses to resume (or evaluate) when config.json differs from the settings recorded in the
/// checkpoint: an edited learning rate or epoch count would silently change the schedule
/// mid-run, an edited aggregation would silently evaluate another model.
pub fn check_config_unchanged(
    run_dir: &Path,
    current: &TrainConfig,
    recorded: &str,
    epoch: usize,
) -> Result<()> {
    let path = run_dir.join(CONFIG_FILE);
    let recorded: TrainConfig = serde_json::from_str(recorded).with_context(|| {
        format!("the settings recorded in the checkpoint of {} are unreadable", run_dir.display())
    })?;
    if recorded == *current {
        return Ok(());
    }
    // Through JSON text, so that f32 settings print as written (0.1, not 0.10000000149).
    let as_value = |c: &TrainConfig| -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&serde_json::to_string(c)?)?)
    };
    let (recorded_value, current_value) = (as_value(&recorded)?, as_value(current)?);
    let mut changes = Vec::new();
    diff_values("", &recorded_value, &current_value, &mut changes);
    bail!(
        "{} was changed after the checkpoint of epoch {epoch} was written: {}. A run keeps the settings it was \
         started with (they are recorded in its checkpoint): put those values back, or train a new run (--out \
         elsewhere) with the new settings",
        path.display(),
        changes.join(", ")
    )
}

/// "key: recorded -> now" for every leaf where two JSON values differ.
pub(crate) fn diff_values(
    prefix: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                diff_values(&name, a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if old != new => out.push(format!("{prefix} was {old}, is now {new}")),
        _ => {}
    }
}
