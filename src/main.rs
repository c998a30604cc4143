//! The `mocse` command line: train, evaluate (clean and corrupted), corrupt, compare, benchmark and
//! check the kernels.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use mocse::atomic_file::write_atomic;
use mocse::attack::apgd::INITIAL_STEP;
use mocse::attack::evaluate::{AttackReports, save_adversarial};
use mocse::attack::{AttackKind, BnMode, Norm, PgdConfig, parse_pixel_amount};
use mocse::bench::bench_train_step;
use mocse::checkpoint::MODEL_FILE;
use mocse::compare::{
    Column, TableOptions, chart_data, default_labels, incomparabilities, read_report, read_robust_report,
    severity_chart_data, table1_markdown,
};
use mocse::corrupt::export::{CleanImages, ExportSettings, ImageInput, export};
use mocse::corrupt::{CorruptionList, SEVERITIES, SeverityList};
use mocse::curves::{CURVES_FILE, write_run_curves};
use mocse::data::DataSpec;
use mocse::data::cifar10c::Cifar10C;
use mocse::data::cifar10c::MANIFEST_FILE;
use mocse::device::{Device, DeviceChoice};
use mocse::diagnostics::figures::{figure_names, write_eval_figures, write_figures};
use mocse::dir_lock::{DirLock, holds_other_files};
use mocse::eval::EvalReport;
use mocse::eval_job::{EvalJob, EvalTarget};
use mocse::input_file::files_in;
use mocse::nn::model::{ModelConfig, ModelKind};
use mocse::ops::aggregate::Aggregate;
use mocse::ops::conv::{ConvImpl, set_conv_impl};
use mocse::ops::sgd::SgdConfig;
use mocse::output_paths::check_outputs;
use mocse::precision::{self, Precision};
use mocse::progress;
use mocse::raster::{bar_chart_png, gallery_png, line_chart_png};
use mocse::reproduce::{
    Cell, CellOutcome, Estimate, Overrides, Preset, Reproduction, Settings, duration_text,
};
use mocse::robustness::{CorruptedSource, report_value};
use mocse::train::{
    AdversarialMethod, AdversarialTraining, SYNTHETIC_SET_SEED, Schedule, TrainConfig, Trainer, TrainingMode,
    read_config,
};

// Large tensors are allocated and freed every step; mimalloc keeps those pages mapped instead
// of returning them to the system and faulting them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mocse",
    version = mocse::BUILD,
    about = "Train and evaluate PreAct ResNet-18 and its Mixture of Class-Specific Experts (MoCSE)",
    long_about = "Train and evaluate PreAct ResNet-18 and its Mixture of Class-Specific Experts \
                  (MoCSE): N binary class experts run as one fused grouped network, their \"True\" \
                  probabilities aggregated into class scores."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; writes config.json, log.jsonl and checkpoints into the run directory.
    Train(TrainArgs),
    /// Evaluate a trained run's last checkpoint on a test set, clean and (--corruptions) corrupted.
    Eval(EvalArgs),
    /// Measure speed: training and inference, each convolution layer, or the corruptions (images per second).
    Bench(BenchArgs),
    /// Check every kernel against the cpu device, or (--compile-only) compile every kernel with NVRTC.
    Selftest(SelftestArgs),
    /// Write corrupted copies of a set of images (the 19 CIFAR-10-C corruptions) in the CIFAR-10-C layout.
    Corrupt(CorruptArgs),
    /// Render corruption reports of several runs side by side as the paper's Table 1, and a bar chart.
    Compare(CompareArgs),
    /// The paper's Table 1 end to end: train and evaluate its six cells, write the table with the
    /// paper's numbers beside ours (resumable; cells can run as separate processes).
    Reproduce(ReproduceArgs),
    /// Draw a run's training curves (loss, clean and robust accuracy per epoch) as a PNG.
    Plot(PlotArgs),
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    settings: RunSettings,
    #[command(flatten)]
    run_on: DeviceArgs,
    /// Run directory for config.json, log.jsonl and the checkpoints
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint, with the settings in its config.json
    /// (none of the run's settings may be given with it)
    #[arg(long)]
    resume: bool,
    /// Stop after N more epochs; the run can then be continued with --resume
    #[arg(long, value_name = "N")]
    stop_after: Option<usize>,
}

/// The settings a run is defined by, written to its config.json. `--resume` takes them all from
/// there, so each conflicts with it (a test checks that none is forgotten).
#[derive(Args)]
struct RunSettings {
    /// Model: preact18 (the standard network) or mocse (N class experts, fused)
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    model: Option<ModelKind>,
    /// Training data: `synthetic` (built in, 50,000 train / 10,000 test images) or
    /// `cifar10:DIR` (the CIFAR-10 binary version: DIR holds data_batch_1.bin .. test_batch.bin)
    #[arg(long, default_value = "synthetic", conflicts_with = "resume")]
    data: DataSpec,
    /// Number of epochs
    #[arg(long, default_value_t = 30, conflicts_with = "resume")]
    epochs: usize,
    /// Images per SGD step
    #[arg(long, default_value_t = 128, conflicts_with = "resume")]
    batch_size: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = 0.1, conflicts_with = "resume")]
    lr: f32,
    /// SGD momentum
    #[arg(long, default_value_t = 0.9, conflicts_with = "resume")]
    momentum: f32,
    /// L2 weight decay, applied to every parameter
    #[arg(long, default_value_t = 5e-4, conflicts_with = "resume")]
    weight_decay: f32,
    /// Use Nesterov momentum
    #[arg(long, conflicts_with = "resume")]
    nesterov: bool,
    /// Learning-rate schedule: cosine (per step, to zero) or multistep (/10 at 50% and 75% of the epochs)
    #[arg(long, default_value = "cosine", conflicts_with = "resume")]
    schedule: Schedule,
    /// Seed of the weight initialisation, the shuffling and the augmentation
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    seed: u64,
    /// Training augmentation: standard (4-pixel zero pad, random 32x32 crop, horizontal flip),
    /// augmix (standard, then AugMix of the operations that overlap no test corruption, on the
    /// training device: "CIFAR-10 Augmented") or none
    #[arg(long, default_value = "standard", conflicts_with = "resume")]
    augment: mocse::data::Augment,
    /// With --augment augmix: AugMix's Jensen-Shannon consistency loss with this weight (AugMix
    /// uses 12): every batch also goes through in two AugMix views, in the same forward pass
    #[arg(long, value_name = "LAMBDA", allow_hyphen_values = true, conflicts_with = "resume")]
    jsd: Option<f32>,
    /// Train on the first N training images only [default: all]
    #[arg(long, conflicts_with = "resume")]
    train_subset: Option<usize>,
    /// Evaluate after each epoch on the first N test images only [default: all]
    #[arg(long, conflicts_with = "resume")]
    test_subset: Option<usize>,
    /// preact18: base width of the network (channels 1x, 2x, 4x, 8x of it) [default: 64]
    #[arg(long, conflicts_with = "resume")]
    width: Option<usize>,
    /// mocse: base width of every expert [default: 16]
    #[arg(long, conflicts_with = "resume")]
    expert_width: Option<usize>,
    /// mocse: class scores from the experts: prob (p_n = softmax(expert n)[True], the paper's
    /// wording) or logodds (l_True - l_False) [default: prob]
    #[arg(long, conflicts_with = "resume")]
    aggregate: Option<Aggregate>,
    /// mocse: weight lambda of the experts' mean binary cross-entropy in CE + lambda * BCE [default: 1.0]
    #[arg(long, conflicts_with = "resume")]
    bce_weight: Option<f32>,
    /// Also keep the model of every K-th epoch, as RUN_DIR/epoch-NNNN.safetensors (evaluate one
    /// with `mocse eval --checkpoint`) [default: only the last]
    #[arg(long, value_name = "K", conflicts_with = "resume")]
    save_every: Option<usize>,
    /// Adversarial training: pgd (the loss on PGD adversarial examples of every batch, Madry et
    /// al.), trades (clean loss plus beta times the KL to the prediction on adversarial examples,
    /// Zhang et al.) or fgsm-rs (one step from a random start, Wong et al.) [default: standard
    /// training]
    #[arg(long, value_name = "METHOD", conflicts_with = "resume")]
    adv: Option<AdversarialMethod>,
    /// --adv: the perturbation bound, in pixel units of [0, 1] (a number or a fraction)
    #[arg(long, value_parser = pixel_amount, default_value = "8/255", requires = "adv", allow_hyphen_values = true, conflicts_with = "resume")]
    eps: f32,
    /// --adv: the attack's step size [default: 2/255 for pgd, 0.007 for trades, 1.25 eps for fgsm-rs]
    #[arg(long, value_parser = pixel_amount, requires = "adv", allow_hyphen_values = true, conflicts_with = "resume")]
    alpha: Option<f32>,
    /// --adv pgd, trades: the attack's gradient steps [default: 10; fgsm-rs takes one]
    #[arg(long, requires = "adv", conflicts_with = "resume")]
    steps: Option<usize>,
    /// --adv: the threat model, linf or l2
    #[arg(long, default_value = "linf", requires = "adv", conflicts_with = "resume")]
    norm: Norm,
    /// --adv: batch norm while attacking: train (batch statistics) or eval [default: train for pgd
    /// and fgsm-rs, as Rice et al.; eval for trades, as Zhang et al.]
    #[arg(long, requires = "adv", conflicts_with = "resume")]
    attack_bn: Option<BnMode>,
    /// --adv trades: the weight beta of the KL term [default: 6]
    #[arg(long, requires = "adv", allow_hyphen_values = true, conflicts_with = "resume")]
    beta: Option<f32>,
    /// --adv fgsm-rs: stop when accuracy under PGD-5 on an epoch's first batch falls by more than
    /// 0.2 from the epoch before (catastrophic overfitting, Wong et al.); the run keeps the model
    /// of the epoch before
    #[arg(long, requires = "adv", conflicts_with = "resume")]
    early_stop: bool,
    /// --adv: after every epoch, robust accuracy under PGD-10 on the first N test images (0: never)
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "adv", conflicts_with = "resume")]
    adv_eval_subset: usize,
}

/// Where a job runs; shared by train, eval and bench.
#[derive(Args)]
struct DeviceArgs {
    /// Device: auto (the GPU when one is usable, else cpu), cpu, cuda, or emu (the CUDA kernels
    /// on the CPU through the emulator; slow)
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Convolutions on the cuda device: kernels (the project's) or cudnn (the baseline)
    #[arg(long, default_value = "kernels")]
    conv_impl: ConvImpl,
    /// Arithmetic of the convolutions and the classifier head: f32, or bf16 operands with f32
    /// accumulation (tensor cores; batch norm, loss and SGD stay f32) [default: bf16 on cuda,
    /// f32 on cpu and emu]
    #[arg(long)]
    precision: Option<Precision>,
}

impl DeviceArgs {
    /// The device, a line that says which and why, and the precision: the choices applied to
    /// this thread (`--conv-impl`, `--precision`).
    fn apply(&self) -> Result<(Device, String, Precision)> {
        let (device, why) = self.device.resolve()?;
        use_conv_impl(self.conv_impl, device)?;
        let precision = self.precision.unwrap_or_else(|| Precision::default_for(device));
        precision.check_device(device)?;
        precision::set(precision);
        Ok((device, format!("{why}, {precision} arithmetic"), precision))
    }
}

#[derive(Args)]
struct EvalArgs {
    /// Run directory written by `mocse train`: its last checkpoint is evaluated
    #[arg(long, required_unless_present = "checkpoint", conflicts_with = "checkpoint")]
    run: Option<PathBuf>,
    /// Evaluate this checkpoint file instead: any mocse model file (an earlier epoch kept by
    /// --save-every, a run's model.prev.safetensors) or a state_dict saved elsewhere with the
    /// same tensor names (PyTorch's safetensors.torch.save_file). The model comes from the
    /// config.json beside it, else from --model and its flags
    #[arg(long, value_name = "FILE.safetensors")]
    checkpoint: Option<PathBuf>,
    /// With --checkpoint and no config.json beside it: preact18 or mocse
    #[arg(long, requires = "checkpoint")]
    model: Option<ModelKind>,
    /// With --checkpoint --model preact18: base width [default: 64]
    #[arg(long, requires = "model")]
    width: Option<usize>,
    /// With --checkpoint --model mocse: base width of every expert [default: 16]
    #[arg(long, requires = "model")]
    expert_width: Option<usize>,
    /// With --checkpoint --model mocse: prob or logodds [default: prob]
    #[arg(long, requires = "model")]
    aggregate: Option<Aggregate>,
    /// Test data: `synthetic`, `cifar10:DIR`, or `npy:DIR` (a test set of your own: DIR/images.npy,
    /// uint8 (N, 32, 32, 3) RGB, and DIR/labels.npy, uint8 (N,)) [default: the data the run was
    /// trained on]
    #[arg(long)]
    data: Option<DataSpec>,
    /// Evaluate the first N test images only [default: all]
    #[arg(long)]
    test_subset: Option<usize>,
    /// Images per forward pass
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[command(flatten)]
    run_on: DeviceArgs,
    /// Also evaluate on corrupted test images: `all` or a comma-separated list of names
    /// (gaussian_noise, shot_noise, impulse_noise, speckle_noise, defocus_blur, glass_blur,
    /// motion_blur, zoom_blur, gaussian_blur, snow, frost, fog, spatter, brightness, contrast,
    /// elastic_transform, pixelate, jpeg_compression, saturate). Generated on the device batch by
    /// batch unless --cifar10c is given [default with --cifar10c: those the directory holds]
    #[arg(long, value_name = "NAMES")]
    corruptions: Option<CorruptionList>,
    /// With corruptions: severities to evaluate, K, A-B or K,L,.. within 1-5 [default: 1-5; with
    /// --cifar10c: those the directory holds]
    #[arg(long)]
    severities: Option<SeverityList>,
    /// Seed of the generated corruptions (the same seed gives the same corrupted images) or of
    /// the attack's random starts [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// Read the corrupted images from a CIFAR-10-C directory (<corruption>.npy and labels.npy,
    /// as published or as written by `mocse corrupt`) instead of generating them
    #[arg(long, value_name = "DIR")]
    cifar10c: Option<PathBuf>,
    /// Also write the report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// With corruptions or an attack: also write the report as a Markdown table to FILE
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// With corruptions or an attack: also write the report as CSV (one accuracy per line) to FILE
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Also write every image's label, predicted class and class scores, clean and per
    /// corruption and severity, to FILE.npz (arrays labels, <condition>_scores,
    /// <condition>_predicted) or FILE.csv (a row per image and condition)
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
    /// Also draw the evaluation's pictures as PNG files into DIR (made if missing):
    /// confusion.png (the clean confusion matrix); with corruptions also predicted_class.png
    /// (condition x predicted class share) and, for MoCSE, expert_scores.png (condition x mean
    /// expert probability)
    #[arg(long, value_name = "DIR")]
    figures: Option<PathBuf>,
    #[command(flatten)]
    attack: AttackArgs,
}

/// The attack of a robust evaluation.
#[derive(Args)]
struct AttackArgs {
    /// Also evaluate under attack: pgd (projected gradient descent, Madry et al.); apgd-ce,
    /// apgd-dlr or apgd-t (APGD on the cross-entropy, the difference-of-logits ratio, or the
    /// targeted DLR towards each of the 9 runner-up classes; Croce & Hein); aa-lite (APGD-CE,
    /// then APGD-T on the images still robust: AutoAttack without its black-box attacks)
    /// (several, comma-separated, run one after the other with the same settings)
    #[arg(long, value_delimiter = ',', value_name = "ATTACK,..")]
    attack: Option<Vec<AttackKind>>,
    /// The perturbation bound, in pixel units of [0, 1]: a number or a fraction such as 8/255
    #[arg(long, value_parser = pixel_amount, default_value = "8/255", requires = "attack", allow_hyphen_values = true)]
    eps: f32,
    /// pgd: the step size [default: eps / 4]. The APGD attacks set their own (2 eps, halved at
    /// checkpoints) and ignore it
    #[arg(long, value_parser = pixel_amount, requires = "attack", allow_hyphen_values = true)]
    alpha: Option<f32>,
    /// Gradient steps per restart (per target class for apgd-t) [default: 20 for pgd, 100 for
    /// the APGD attacks]
    #[arg(long, requires = "attack")]
    steps: Option<usize>,
    /// Restarts from independent random starts; an image counts as broken when any iterate of
    /// any restart is misclassified
    #[arg(long, default_value_t = 1, requires = "attack")]
    restarts: usize,
    /// The threat model: linf or l2
    #[arg(long, default_value = "linf", requires = "attack")]
    norm: Norm,
    /// Batch norm while attacking: eval (running statistics) or train (batch statistics; the
    /// running statistics are not changed). Robustness is always judged in eval mode
    #[arg(long, default_value = "eval", requires = "attack")]
    attack_bn: BnMode,
    /// Start from the image itself instead of a random point of the eps-ball
    #[arg(long, requires = "attack")]
    no_random_start: bool,
    /// Also write the adversarial images (float32 in [0, 1]), labels, predictions on them and
    /// the robust flags to FILE.npz, to re-check the attack elsewhere
    #[arg(long, value_name = "FILE.npz", requires = "attack")]
    save_adversarial: Option<PathBuf>,
}

fn pixel_amount(s: &str) -> std::result::Result<f32, String> {
    parse_pixel_amount(s).map_err(|e| format!("{e:#}"))
}

#[derive(Args)]
struct CorruptArgs {
    /// Images to corrupt: FILE.npy (uint8, shape (N, 32, 32, 3), RGB), cifar10:DIR (the test
    /// split of the CIFAR-10 binary version) or synthetic (the built-in test set)
    #[arg(long)]
    input: ImageInput,
    /// Corruptions: `all` or a comma-separated list of names (see `mocse eval --help`)
    #[arg(long, visible_alias = "corruption", value_name = "NAMES", default_value = "all")]
    corruptions: CorruptionList,
    /// Severities: K, A-B or K,L,.. within 1-5; rows are written in ascending order
    #[arg(long, visible_alias = "severity", default_value = "1-5")]
    severities: SeverityList,
    /// Seed of the random corruptions (the same seed gives the same output on every device)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory: <corruption>.npy per corruption, labels.npy when the labels are
    /// known, and corrupt.json (how the set was made)
    #[arg(long)]
    out: PathBuf,
    /// Corrupt only the first N images of the input
    #[arg(long, visible_alias = "limit", value_name = "N")]
    test_subset: Option<usize>,
    /// Also draw a labelled picture grid to FILE.png: a row per corruption, columns clean and
    /// each severity
    #[arg(long, value_name = "FILE.png")]
    gallery: Option<PathBuf>,
    /// Which input image the gallery shows (0-based)
    #[arg(long, default_value_t = 0)]
    gallery_image: usize,
    /// Images per device batch
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Device: auto (the GPU when one is usable, else cpu), cpu, cuda, or emu (the cpu device
    /// also runs the corruption kernels through the emulator)
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct CompareArgs {
    /// Reports written by `mocse eval --corruptions ... --json FILE`, one column each
    #[arg(required = true, value_name = "REPORT.json")]
    reports: Vec<PathBuf>,
    /// Column names, comma-separated, one per report [default: each run directory's name]
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Write the Markdown table to FILE instead of standard output
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Also draw a bar chart of the per-corruption accuracy of every run to FILE.png
    #[arg(long, value_name = "FILE.png")]
    chart: Option<PathBuf>,
    /// Also draw accuracy against severity (clean, 1-5) for every run to FILE.png, each point the
    /// mean over the corruptions all reports evaluated
    #[arg(long, value_name = "FILE.png")]
    severity_chart: Option<PathBuf>,
    /// Add a column per report after the first: its accuracy minus the first report's, in
    /// percentage points
    #[arg(long)]
    difference: bool,
    /// Robust evaluations (`mocse eval --attack ... --json FILE`), comma-separated, one per report
    /// in the same order: a row per attack under the corruption averages. Reports evaluated with
    /// --corruptions and --attack together show their attacks without it
    #[arg(long, value_delimiter = ',', value_name = "REPORT.json,..")]
    robust: Option<Vec<PathBuf>>,
    /// Compare reports measured on different test data, numbers of images, severities or
    /// corrupted images (refused otherwise); the table then says what differs
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ReproduceArgs {
    /// quick: a smoke test of the whole pipeline on a CPU in minutes (PreAct-18 width 8, experts
    /// of width 4, 3 epochs of 2,000 images, 100 test images, aa-lite with 10 steps); its numbers
    /// are not the paper's. paper: the paper's recipe (width 64, experts of width 16, 200 epochs,
    /// batch 128, SGD 0.1 momentum 0.9 weight decay 5e-4, PGD-10 training at 8/255), for a GPU.
    /// Needed to start a reproduction; a rerun over the same --out may leave it out
    #[arg(long)]
    preset: Option<Preset>,
    /// Data: synthetic (built in) or cifar10:DIR (the CIFAR-10 binary version) [default: synthetic]
    #[arg(long)]
    data: Option<DataSpec>,
    /// Read the corrupted test images from this CIFAR-10-C directory (all 19 corruptions,
    /// severities 1-5) instead of generating them
    #[arg(long, value_name = "DIR")]
    cifar10c: Option<PathBuf>,
    /// Output directory: reproduce.json, cells/NAME/ (each cell's run and reports) and
    /// table1.{md,csv,json,png}
    #[arg(long)]
    out: PathBuf,
    /// Run only these cells, comma-separated: std-preact18, std-mocse, adv-preact18, adv-mocse,
    /// aug-preact18, aug-mocse [default: all]
    #[arg(long, value_name = "CELL,..")]
    cells: Option<String>,
    /// Override the preset: epochs of every cell
    #[arg(long, requires = "preset")]
    epochs: Option<usize>,
    /// Override the preset: train on the first N training images
    #[arg(long, requires = "preset", value_name = "N")]
    train_subset: Option<usize>,
    /// Override the preset: test (during training and in the evaluation) on the first N test images
    #[arg(long, requires = "preset", value_name = "N")]
    test_subset: Option<usize>,
    /// Override the preset: base width of the standard network
    #[arg(long, requires = "preset")]
    width: Option<usize>,
    /// Override the preset: base width of every MoCSE expert
    #[arg(long, requires = "preset")]
    expert_width: Option<usize>,
    /// Override the preset: seed of every cell's training
    #[arg(long, requires = "preset")]
    seed: Option<u64>,
    /// Override the preset: gradient steps of the evaluation's attacks (PGD and each aa-lite stage)
    #[arg(long, requires = "preset", value_name = "N")]
    attack_steps: Option<usize>,
    #[command(flatten)]
    run_on: DeviceArgs,
}

#[derive(Args)]
struct PlotArgs {
    /// Run directory written by `mocse train`
    run: PathBuf,
    /// Where to write the PNG [default: RUN/curves.png]
    #[arg(long, value_name = "FILE.png")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure: train-step (a whole training step and an inference pass),
    /// conv-layers (every distinct convolution of the model, forward, backward data and backward
    /// weight; for mocse fused vs the experts one by one vs a dense conv of equal FLOPs),
    /// corrupt (images/s of every corruption at every severity) or pgd (an attack step against a
    /// training step, and PGD-10 adversarial training)
    #[arg(long, default_value = "train-step")]
    what: String,
    /// Model: preact18 or mocse (train-step and conv-layers)
    #[arg(long)]
    model: Option<ModelKind>,
    /// corrupt: which corruptions, `all` or a comma-separated list
    #[arg(long, default_value = "all")]
    corruptions: CorruptionList,
    /// preact18: base width
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// mocse: base width of every expert
    #[arg(long, default_value_t = 16)]
    expert_width: usize,
    /// mocse: run the experts as N separate networks one after another instead of fused
    #[arg(long)]
    unfused: bool,
    /// Images per step [default: 64; corrupt: 1000]
    #[arg(long)]
    batch_size: Option<usize>,
    /// Untimed steps before measuring
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps; the median is reported
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[command(flatten)]
    run_on: DeviceArgs,
    /// Also write the result as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// train-step: also write the benchmark's weights, batch, output and loss to DIR, for a
    /// twin network elsewhere (benches/pytorch_peer.py) to check that it computes the same
    #[arg(long, value_name = "DIR")]
    twin: Option<PathBuf>,
    /// conv-layers: instead of measuring, print the design on paper for an NVIDIA H200 (no GPU
    /// needed, NVRTC is): per layer and direction the kernel and tile, FLOPs, bytes, arithmetic
    /// intensity, the occupancy ptxas's registers and shared memory imply, and the time at the
    /// card's peak. Precision: --precision (default bf16, the GPU's)
    #[arg(long)]
    plan: bool,
    /// With --plan: the architecture NVRTC compiles for
    #[arg(long, default_value = "sm_90", requires = "plan")]
    arch: String,
}

/// `mi_option_purge_delay` in mimalloc.h (v2): how long freed memory stays committed.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[derive(Args)]
struct SelftestArgs {
    /// Device whose kernels are checked against the cpu device: cuda or emu (the kernels on
    /// the CPU through the emulator) [default: cuda when a GPU is usable, else emu]
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Only compile every kernel with NVRTC (no GPU needed) and print each kernel's registers,
    /// shared memory and spills
    #[arg(long)]
    compile_only: bool,
    /// With --compile-only: target architectures, comma-separated
    #[arg(long, default_value = "sm_90,sm_80", value_delimiter = ',')]
    arch: Vec<String>,
    /// Only the cases whose names contain one of these words, comma-separated (e.g. `conv2d` or
    /// `snow,frost`, for a slow checker such as compute-sanitizer) [default: every case]
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn main() -> ExitCode {
    // Never hand freed pages back: the next step allocates tensors of the same sizes, and
    // faulting fresh zeroed pages in cost a quarter of a training step.
    // SAFETY: sets a global allocator option before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // Output into a closed pipe (`mocse ... | head`) ends the process quietly, as for other
    // command-line tools, instead of a panic in println!.
    // SAFETY: restores the default disposition of one signal before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args),
        Command::Selftest(args) => selftest(args),
        Command::Corrupt(args) => corrupt_images(args),
        Command::Compare(args) => compare(args),
        Command::Reproduce(args) => reproduce(args),
        Command::Plot(args) => plot(args),
    }
}

/// A model from the command line's model flags (train, and eval of a bare checkpoint).
fn model_config(
    kind: ModelKind,
    width: Option<usize>,
    expert_width: Option<usize>,
    aggregate: Option<Aggregate>,
    bce_weight: Option<f32>,
) -> Result<ModelConfig> {
    match kind {
        ModelKind::Preact18 if expert_width.is_some() || aggregate.is_some() || bce_weight.is_some() => {
            bail!("--expert-width, --aggregate and --bce-weight apply to --model mocse only")
        }
        ModelKind::Mocse if width.is_some() => {
            bail!("--width applies to --model preact18; use --expert-width for mocse")
        }
        _ => {}
    }
    let config = ModelConfig {
        kind,
        num_classes: 10,
        width: match kind {
            ModelKind::Preact18 => width.unwrap_or(64),
            ModelKind::Mocse => expert_width.unwrap_or(16),
        },
        aggregate: aggregate.unwrap_or(Aggregate::Prob),
        bce_weight: bce_weight.unwrap_or(1.0),
    };
    config.validate()?;
    Ok(config)
}

fn new_run_config(a: &RunSettings) -> Result<TrainConfig> {
    let Some(kind) = a.model else {
        bail!("--model is required for a new run (preact18 or mocse)");
    };
    let config = TrainConfig {
        model: model_config(kind, a.width, a.expert_width, a.aggregate, a.bce_weight)?,
        data: a.data.to_string(),
        train_subset: a.train_subset,
        test_subset: a.test_subset,
        augment: a.augment.to_string(),
        jsd: a.jsd,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        sgd: SgdConfig { momentum: a.momentum, weight_decay: a.weight_decay, nesterov: a.nesterov },
        schedule: a.schedule,
        seed: a.seed,
        save_every: a.save_every,
        mode: match a.adv {
            None => TrainingMode::Standard,
            Some(method) => {
                let attack = |alpha: f32, steps: usize, bn: BnMode| AdversarialTraining {
                    norm: a.norm,
                    eps: a.eps,
                    alpha: a.alpha.unwrap_or(alpha),
                    steps,
                    bn: a.attack_bn.unwrap_or(bn),
                    eval_subset: a.adv_eval_subset,
                    beta: None,
                    early_stop: a.early_stop,
                };
                if a.beta.is_some() && method != AdversarialMethod::Trades {
                    bail!("--beta applies to --adv trades only");
                }
                if a.early_stop && method != AdversarialMethod::FgsmRs {
                    bail!("--early-stop applies to --adv fgsm-rs only");
                }
                let steps = a.steps.unwrap_or(10);
                match method {
                    AdversarialMethod::Pgd => TrainingMode::Pgd(attack(2.0 / 255.0, steps, BnMode::Train)),
                    AdversarialMethod::Trades => TrainingMode::Trades(AdversarialTraining {
                        beta: Some(a.beta.unwrap_or(6.0)),
                        ..attack(0.007, steps, BnMode::Eval)
                    }),
                    AdversarialMethod::FgsmRs => {
                        if a.steps.is_some() {
                            bail!(
                                "--adv fgsm-rs takes a single step; --steps applies to --adv pgd and trades"
                            );
                        }
                        TrainingMode::FgsmRs(attack(1.25 * a.eps, 1, BnMode::Train))
                    }
                }
            }
        },
        created_by: format!("mocse {}", mocse::BUILD),
    };
    config.validate()?;
    Ok(config)
}

fn train(a: TrainArgs) -> Result<()> {
    if a.stop_after == Some(0) {
        bail!("--stop-after must be at least 1 (it counts epochs to train before stopping)");
    }
    let (device, why, _) = a.run_on.apply()?;
    let mut trainer = if a.resume {
        Trainer::resume(&a.out, device)?
    } else {
        Trainer::create(new_run_config(&a.settings)?, &a.out, device)?
    };
    if let Some(stop) = &trainer.early_stop {
        eprintln!("{} already finished early ({}); nothing to do", a.out.display(), stop.describe());
        return Ok(());
    }
    if trainer.is_finished() {
        eprintln!("{} already finished all {} epochs; nothing to do", a.out.display(), trainer.config.epochs);
        return Ok(());
    }
    eprintln!(
        "{}; {} on {} ({} parameters), epochs {}..{} of {}, {} steps per epoch",
        why,
        trainer.config.model.describe(),
        trainer.config.data,
        trainer.model.fused().num_parameters(),
        trainer.progress.epoch + 1,
        trainer.config.epochs,
        trainer.config.epochs,
        trainer.steps_per_epoch()
    );
    eprintln!("writing to {}", a.out.display());
    let logs = trainer.run(a.stop_after, true)?;
    let curves = a.out.join(CURVES_FILE);
    write_run_curves(&a.out, &curves)?;
    eprintln!("wrote the training curves to {}", curves.display());
    if let Some(last) = logs.last() {
        println!(
            "epoch {}/{}: test accuracy {:.2}%  (checkpoint {})",
            last.epoch,
            trainer.config.epochs,
            100.0 * last.test_accuracy,
            a.out.join(MODEL_FILE).display()
        );
    }
    if !trainer.is_finished() {
        eprintln!(
            "stopped after epoch {}; continue with: mocse train --resume --out {}",
            trainer.progress.epoch,
            a.out.display()
        );
    }
    Ok(())
}

/// The model `bench` measures: --width for preact18, --expert-width for mocse.
fn bench_model_config(a: &BenchArgs, model: ModelKind) -> ModelConfig {
    ModelConfig {
        kind: model,
        num_classes: 10,
        width: if model == ModelKind::Mocse { a.expert_width } else { a.width },
        aggregate: Aggregate::Prob,
        bce_weight: 1.0,
    }
}

/// `bench --what conv-layers --plan`: the kernels' design for the GPU, on paper.
fn conv_plan(a: &BenchArgs, model: ModelKind, batch_size: usize) -> Result<()> {
    let config = bench_model_config(a, model);
    config.validate()?;
    let precision = a.run_on.precision.unwrap_or(Precision::Bf16);
    let card = &mocse::bench::H200;
    let rows = mocse::bench::conv_plan(config, batch_size, precision, &a.arch, card)?;
    println!(
        "{} at batch {batch_size}, {precision}, kernels compiled for {}, on paper for an {} ({} SMs, {} TFLOP/s \
         f32 and {} bf16 dense, {} TB/s)",
        config.describe(),
        a.arch,
        card.name,
        card.sms,
        card.f32_tflops,
        card.bf16_tflops,
        card.memory_tb_per_s
    );
    println!(
        "{:<20} {:>2} {:<15} {:<30} {:>8} {:>6} {:>4} {:>6} {:>3} {:>5} {:>9} {:>7} {:>7} {:>6} {:>8} {:<7}",
        "layer",
        "n",
        "direction",
        "kernel",
        "tile",
        "blocks",
        "regs",
        "smem",
        "b/SM",
        "occ",
        "waves",
        "GFLOP",
        "MB",
        "FLOP/B",
        "us@peak",
        "bound"
    );
    for r in &rows {
        println!(
            "{:<20} {:>2} {:<15} {:<30} {:>8} {:>6} {:>4} {:>5}K {:>3} {:>4.0}% {:>3} ({:>3.0}%) {:>7.2} {:>7.1} {:>6.1} \
             {:>8.1} {:<7}",
            r.layer,
            r.count,
            r.direction,
            r.kernel,
            format!("{}x{}", r.tile[0], r.tile[1]),
            r.blocks,
            r.registers,
            r.shared_bytes.div_ceil(1024),
            r.blocks_per_sm,
            100.0 * r.occupancy,
            r.waves,
            100.0 * r.wave_efficiency,
            r.gflop,
            r.megabytes,
            r.flop_per_byte,
            r.microseconds_at_peak,
            r.bound
        );
    }
    let at_peak: f64 = rows.iter().map(|r| r.microseconds_at_peak * r.count as f64).sum();
    println!("all convolutions of a training step at the card's peak: {:.0} us", at_peak);
    if let Some(path) = &a.json {
        let report = serde_json::json!({
            "what": "conv-layers-plan",
            "model": config.describe(),
            "batch_size": batch_size,
            "precision": precision,
            "arch": a.arch,
            "card": card.name,
            "mocse": mocse::BUILD,
            "rows": rows,
        });
        write_json(path, &report)?;
    }
    Ok(())
}

/// Applies `--conv-impl`: cuDNN exists on the cuda device only.
fn use_conv_impl(choice: ConvImpl, device: Device) -> Result<()> {
    if choice == ConvImpl::Cudnn && device != Device::Cuda {
        bail!("--conv-impl cudnn runs on the cuda device only (this run uses {device})");
    }
    set_conv_impl(choice);
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    write_atomic(path, text.as_bytes())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// What `eval` evaluates, from `--run` or `--checkpoint` and the model flags.
fn eval_target(a: &EvalArgs) -> Result<EvalTarget> {
    if let Some(run) = &a.run {
        return EvalTarget::run(run);
    }
    let file = a.checkpoint.as_deref().context("give --run or --checkpoint")?;
    let model =
        a.model.map(|kind| model_config(kind, a.width, a.expert_width, a.aggregate, None)).transpose()?;
    EvalTarget::checkpoint_file(
        file,
        model,
        "--model preact18 [--width W] or --model mocse [--expert-width W] [--aggregate prob|logodds]",
    )
}

fn eval(a: EvalArgs) -> Result<()> {
    let (device, why, _) = a.run_on.apply()?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let corrupted = a.corruptions.is_some() || a.cifar10c.is_some();
    if !corrupted && a.severities.is_some() {
        bail!("--severities applies to corruption evaluation; give --corruptions (or --cifar10c) too");
    }
    if !corrupted && a.attack.attack.is_none() && (a.markdown.is_some() || a.csv.is_some()) {
        bail!("--markdown and --csv write corruption or attack reports; give --corruptions or --attack too");
    }
    if a.seed.is_some() && a.corruptions.is_none() && a.cifar10c.is_none() && a.attack.attack.is_none() {
        bail!(
            "--seed seeds generated corruptions or an attack's random starts; give --corruptions or --attack too"
        );
    }
    if a.cifar10c.is_some() && a.seed.is_some() {
        bail!("--seed chooses generated corruptions; the files of --cifar10c are fixed");
    }
    let seed = a.seed.unwrap_or(0);
    let target = eval_target(&a)?;
    // A CIFAR-10-C directory holds the corruptions and severities it holds: they are the
    // defaults, and severities it lacks are refused before any work.
    let files = a.cifar10c.as_deref().map(Cifar10C::open).transpose()?;
    let corruptions = match (&a.corruptions, &files) {
        (Some(c), _) => Some(c.0.clone()),
        (None, Some(f)) => Some(f.corruptions().to_vec()),
        (None, None) => None,
    };
    let severities = match (&a.severities, &files) {
        (Some(asked), Some(f)) => {
            if let Some(missing) = asked.0.iter().find(|s| !f.severities().contains(s)) {
                bail!(
                    "--severities asks for {missing}, but {} holds severities {:?}",
                    f.dir().display(),
                    f.severities()
                );
            }
            asked.0.clone()
        }
        (Some(asked), None) => asked.0.clone(),
        (None, Some(f)) => f.severities().to_vec(),
        (None, None) => SEVERITIES.collect(),
    };
    let spec = match &a.data {
        Some(d) => d.clone(),
        None => target.default_data()?,
    };
    let mut inputs = target.inputs.clone();
    inputs.extend(spec.files());
    if let Some(dir) = &a.cifar10c {
        inputs.extend(files_in(dir));
    }
    let mut outputs = given([
        ("--json", &a.json),
        ("--markdown", &a.markdown),
        ("--csv", &a.csv),
        ("--predictions", &a.predictions),
        ("--save-adversarial", &a.attack.save_adversarial),
    ]);
    let figures = match &a.figures {
        Some(dir) => figure_outputs(dir, corruptions.is_some(), target.model.kind == ModelKind::Mocse)?,
        None => Vec::new(),
    };
    outputs.extend(figures.iter().map(|p| ("--figures", p.as_path())));
    check_outputs(&outputs, &inputs)?;
    if let Some(path) = &a.predictions {
        mocse::predictions::check_path(path)?;
    }
    let job = EvalJob::load(&target, spec.clone(), a.test_subset, a.batch_size, device)?;
    let (model_config, test, epoch) = (target.model, &job.test, job.epoch);
    let at_epoch = epoch.map_or_else(|| "epoch unknown".to_string(), |e| format!("epoch {e}"));
    let mut predictions = a
        .predictions
        .as_ref()
        .map(|_| mocse::predictions::Predictions::new(test.labels(), model_config.num_classes));
    let attacks = attack_settings(&a.attack, seed)?;
    let Some(corruptions) = corruptions else {
        eprintln!(
            "{why}; evaluating {} ({at_epoch}) on {} test images of {spec}",
            model_config.describe(),
            test.len()
        );
        let clean = job.clean_evaluation(a.batch_size, predictions.as_mut())?;
        let correct = clean.counts.correct();
        println!(
            "clean accuracy: {:.2}% ({correct}/{} images)",
            100.0 * correct as f64 / test.len() as f64,
            test.len()
        );
        if let Some(experts) = &clean.experts {
            println!("{}", experts.summary());
        }
        let adversarial = run_attacks(&job, &attacks, &a, correct, true)?;
        let report = EvalReport {
            run: job.run.clone(),
            clean_accuracy: report_value(correct as f64 / test.len() as f64),
            num_images: test.len(),
            per_class: Some(clean.per_class),
            adversarial,
            experts: clean.experts,
            mocse: mocse::BUILD.to_string(),
        };
        if let Some(path) = &a.json {
            write_json(path, &report)?;
        }
        write_text_reports(&a, &report.to_markdown(), &report.to_csv())?;
        if let Some(dir) = &a.figures {
            report_written(&write_eval_figures(dir, &report)?);
        }
        return write_predictions(a.predictions.as_deref(), predictions.as_ref());
    };
    let (source, described) = match &files {
        Some(f) => (CorruptedSource::Files(f), format!("cifar10c:{}", f.dir().display())),
        None => (CorruptedSource::Generate { seed }, format!("generated on {device} (seed {seed})")),
    };
    eprintln!(
        "{why}; evaluating {} ({at_epoch}) on {} test images of {spec}, clean and {} corruptions x severities {:?} \
         ({described})",
        model_config.describe(),
        test.len(),
        corruptions.len(),
        severities
    );
    let (mut report, clean_correct) =
        job.corruptions(&corruptions, &severities, &source, described, a.batch_size, predictions.as_mut())?;
    report.adversarial = run_attacks(&job, &attacks, &a, clean_correct, false)?;
    print!("{}", report.to_markdown());
    if let Some(path) = &a.json {
        write_json(path, &report)?;
    }
    write_text_reports(&a, &report.to_markdown(), &report.to_csv())?;
    if let Some(dir) = &a.figures {
        report_written(&write_figures(dir, &report)?);
    }
    write_predictions(a.predictions.as_deref(), predictions.as_ref())
}

/// The files `--figures DIR` will write, to check with the other outputs before the work: when
/// DIR exists, each figure in it (none may be an input); when it does not, DIR itself (its
/// parent must exist; it is made at the end).
fn figure_outputs(dir: &Path, corruptions: bool, mocse: bool) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    if !dir.is_dir() {
        bail!("--figures {} exists and is not a directory", dir.display());
    }
    Ok(figure_names(corruptions, mocse).into_iter().map(|name| dir.join(name)).collect())
}

fn report_written(paths: &[PathBuf]) {
    for path in paths {
        eprintln!("wrote {}", path.display());
    }
}

/// The attacks `--attack` asks for, with their settings.
fn attack_settings(a: &AttackArgs, seed: u64) -> Result<Vec<(AttackKind, PgdConfig)>> {
    let kinds = a.attack.clone().unwrap_or_default();
    if let Some(kind) = kinds.iter().enumerate().find_map(|(i, k)| kinds[..i].contains(k).then_some(k)) {
        bail!("--attack names {kind} twice");
    }
    if let (Some(_), Some(kind)) = (a.alpha, kinds.first())
        && !kinds.contains(&AttackKind::Pgd)
    {
        bail!("--alpha is the step of pgd; {kind} sets its own (2 eps, halved at checkpoints)");
    }
    if a.save_adversarial.is_some() && kinds.len() > 1 {
        bail!("--save-adversarial saves the images of one attack; give --attack one attack");
    }
    kinds
        .into_iter()
        .map(|kind| {
            let alpha = match (kind.is_apgd(), a.alpha) {
                (true, _) => INITIAL_STEP * a.eps,
                (false, alpha) => alpha.unwrap_or(a.eps / 4.0),
            };
            let settings = PgdConfig {
                norm: a.norm,
                eps: a.eps,
                alpha,
                steps: a.steps.unwrap_or(kind.default_steps()),
                restarts: a.restarts,
                random_start: !a.no_random_start,
                bn: a.attack_bn,
                seed,
            };
            settings.validate().map(|()| (kind, settings))
        })
        .collect()
}

/// Runs each attack on the clean test images (`clean_correct` of them classified correctly);
/// saves the adversarial images when asked, and prints each result (`print`) and every warning.
fn run_attacks(
    job: &EvalJob,
    attacks: &[(AttackKind, PgdConfig)],
    a: &EvalArgs,
    clean_correct: usize,
    print: bool,
) -> Result<AttackReports> {
    let save = a.attack.save_adversarial.as_deref();
    job.attacks(attacks, a.batch_size, clean_correct, save.is_some(), |report, counts| {
        if let Some(path) = save {
            save_adversarial(path, counts, &job.test.labels())?;
            eprintln!("wrote the adversarial images to {}", path.display());
        }
        if print {
            println!("{}", report.summary());
            if !report.stages.is_empty() {
                let stages: Vec<String> =
                    report.stages.iter().map(|c| format!("{} {}", c.stage, c.robust_images)).collect();
                println!("robust images after each stage: {}", stages.join(", "));
            }
            println!("sanity: {}", report.sanity.summary());
        }
        for w in &report.sanity.warnings {
            eprintln!("warning: {}: {w}", report.attack);
        }
        Ok(())
    })
}

/// Writes `--markdown` and `--csv` when given.
fn write_text_reports(a: &EvalArgs, markdown: &str, csv: &str) -> Result<()> {
    for (path, text) in [(&a.markdown, markdown), (&a.csv, csv)] {
        if let Some(path) = path {
            write_atomic(path, text.as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn write_predictions(
    path: Option<&Path>,
    predictions: Option<&mocse::predictions::Predictions>,
) -> Result<()> {
    if let (Some(path), Some(p)) = (path, predictions) {
        p.write(path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The output flags that were given, as (flag, path).
fn given<'a, const N: usize>(
    flags: [(&'static str, &'a Option<PathBuf>); N],
) -> Vec<(&'static str, &'a Path)> {
    flags.into_iter().filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p))).collect()
}

/// `corrupt --out` must be new, empty, or an earlier `mocse corrupt` output (which it updates);
/// anything else (a published CIFAR-10-C folder, `/`, a home directory) is not ours to write.
fn check_corrupt_out(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    if holds_other_files(out)? && !out.join(MANIFEST_FILE).exists() {
        bail!(
            "--out {} already holds files and is not a directory written by `mocse corrupt` (no {MANIFEST_FILE}); \
             choose a new or empty directory",
            out.display()
        );
    }
    Ok(())
}

fn corrupt_images(a: CorruptArgs) -> Result<()> {
    let (device, why) = a.device.resolve()?;
    check_corrupt_out(&a.out)?;
    let inputs = match &a.input {
        ImageInput::Npy(p) => vec![p.clone()],
        ImageInput::Data(spec) => spec.files(),
    };
    // The files --out will receive (only an existing directory can hold an input).
    let mut planned: Vec<PathBuf> =
        a.corruptions.0.iter().map(|c| a.out.join(format!("{}.npy", c.name()))).collect();
    planned.extend([a.out.join("labels.npy"), a.out.join(MANIFEST_FILE)]);
    let mut outputs: Vec<(&str, &Path)> =
        if a.out.exists() { planned.iter().map(|p| ("--out", p.as_path())).collect() } else { Vec::new() };
    outputs.extend(given([("--gallery", &a.gallery)]));
    check_outputs(&outputs, &inputs)?;
    let images = CleanImages::load(&a.input, a.test_subset, SYNTHETIC_SET_SEED)?;
    if a.gallery.is_some() && a.gallery_image >= images.len {
        bail!("--gallery-image {} is out of range: the input has {} images", a.gallery_image, images.len);
    }
    let settings = ExportSettings {
        corruptions: &a.corruptions.0,
        severities: &a.severities.0,
        seed: a.seed,
        out_dir: &a.out,
        batch_size: a.batch_size,
        device,
        input_name: a.input.to_string(),
    };
    eprintln!(
        "{why}; corrupting {} images of {} with {} corruptions at severities {:?} (seed {})",
        images.len,
        a.input,
        a.corruptions.0.len(),
        a.severities.0,
        a.seed
    );
    // What the corruptions need (frost's photographs) before the directory is made.
    mocse::corrupt::prepare(&a.corruptions.0)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let _one_writer = DirLock::acquire(&a.out, "corrupt")?;
    eprintln!("writing to {}", a.out.display());
    let total = (images.len * a.corruptions.0.len() * a.severities.0.len()) as u64;
    let bar = progress::bar(total, "images");
    let start = std::time::Instant::now();
    let kept = export(&images, &settings, a.gallery_image, &bar)?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "wrote {} corruptions x {} severities x {} images to {} in {seconds:.1} s ({:.0} images/s)",
        a.corruptions.0.len(),
        a.severities.0.len(),
        images.len,
        a.out.display(),
        total as f64 / seconds
    );
    if let Some(path) = &a.gallery {
        let mut columns = vec!["clean".to_string()];
        columns.extend(a.severities.0.iter().map(|s| format!("severity {s}")));
        let clean = images.image(a.gallery_image);
        let rows: Vec<String> = kept.iter().map(|(c, _)| c.name().to_string()).collect();
        let cells: Vec<Vec<&[u8]>> = kept
            .iter()
            .map(|(_, versions)| std::iter::once(clean).chain(versions.iter().map(Vec::as_slice)).collect())
            .collect();
        write_atomic(path, &gallery_png(&rows, &columns, &cells, 3)?)?;
        println!("wrote the gallery to {}", path.display());
    }
    Ok(())
}

fn compare(a: CompareArgs) -> Result<()> {
    let outputs = given([("--out", &a.out), ("--chart", &a.chart), ("--severity-chart", &a.severity_chart)]);
    let inputs: Vec<PathBuf> = a.reports.iter().chain(a.robust.iter().flatten()).cloned().collect();
    check_outputs(&outputs, &inputs)?;
    let reports = a.reports.iter().map(|p| read_report(p)).collect::<Result<Vec<_>>>()?;
    let labels = match a.labels {
        Some(l) if l.len() != reports.len() => {
            bail!("--labels names {} columns but {} reports are given", l.len(), reports.len())
        }
        Some(l) => l,
        None => default_labels(&reports),
    };
    let robust: Vec<Option<EvalReport>> = match &a.robust {
        Some(paths) if paths.len() != reports.len() => {
            bail!("--robust names {} reports but {} corruption reports are given", paths.len(), reports.len())
        }
        Some(paths) => paths.iter().map(|p| read_robust_report(p).map(Some)).collect::<Result<_>>()?,
        None => vec![None; reports.len()],
    };
    for ((report, robust), path) in reports.iter().zip(&robust).zip(&a.reports) {
        if robust.is_some() && !report.adversarial.is_empty() {
            bail!(
                "{} holds its own attacks (it was evaluated with --attack), so --robust cannot add others to it",
                path.display()
            );
        }
    }
    let columns: Vec<Column> = labels
        .into_iter()
        .zip(reports)
        .zip(robust)
        .map(|((label, report), robust)| Column { label, report, robust })
        .collect();
    let differences = incomparabilities(&columns);
    if !differences.is_empty() {
        let list = differences.iter().map(|d| format!("  - {d}")).collect::<Vec<_>>().join("\n");
        if !a.force {
            bail!(
                "these reports were not measured on the same images, so their differences would not \
                 be the models':\n{list}\nEvaluate them alike (same --data, --test-subset, --severities \
                 and --seed or --cifar10c), or give --force to compare them anyway (the table then says \
                 what differs)"
            );
        }
        eprintln!("warning: comparing reports measured on different images (--force):\n{list}");
    }
    let severity_chart = match &a.severity_chart {
        Some(_) => Some(severity_chart_data(&columns)?),
        None => None,
    };
    let options = TableOptions { difference: a.difference, accepted_incomparabilities: differences };
    let table = table1_markdown(&columns, &options)?;
    match &a.out {
        Some(path) => {
            write_atomic(path, table.as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{table}"),
    }
    if let Some(path) = &a.chart {
        let (categories, series) = chart_data(&columns);
        write_atomic(
            path,
            &bar_chart_png("Accuracy per corruption (mean over severities, %)", &categories, &series)?,
        )?;
        eprintln!("wrote {}", path.display());
    }
    if let (Some(path), Some(chart)) = (&a.severity_chart, severity_chart) {
        let title = format!("Accuracy (%) against severity, mean over {} corruptions", chart.corruptions);
        write_atomic(path, &line_chart_png(&title, "severity", &chart.points, &chart.series)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn plot(a: PlotArgs) -> Result<()> {
    read_config(&a.run)?;
    let out = a.out.unwrap_or_else(|| a.run.join(CURVES_FILE));
    check_outputs(&[("--out", &out)], &files_in(&a.run))?;
    let epochs = write_run_curves(&a.run, &out)?;
    println!("wrote the curves of {epochs} epochs to {}", out.display());
    Ok(())
}

fn reproduce(a: ReproduceArgs) -> Result<()> {
    let overrides = Overrides {
        epochs: a.epochs,
        train_subset: a.train_subset,
        test_subset: a.test_subset,
        width: a.width,
        expert_width: a.expert_width,
        seed: a.seed,
        attack_steps: a.attack_steps,
    };
    let settings = match a.preset {
        Some(p) => Some(Settings::new(
            p,
            a.data.as_ref().unwrap_or(&DataSpec::Synthetic),
            a.cifar10c.as_deref(),
            &overrides,
        )?),
        None if a.data.is_some() || a.cifar10c.is_some() || overrides.any() => {
            bail!(
                "--data, --cifar10c and the preset's overrides define a new reproduction: give --preset with them"
            )
        }
        None => None,
    };
    let cells = match &a.cells {
        Some(list) => Cell::parse_list(list)?,
        None => Cell::ALL.to_vec(),
    };
    let (device, why, _) = a.run_on.apply()?;
    let repro = Reproduction::open(&a.out, settings)?;
    repro.check_inputs()?;
    let s = &repro.settings;
    match s.preset {
        Preset::Quick => println!(
            "preset quick: a smoke test of the pipeline (PreAct-18 width {}, experts of width {}, {} epochs on {}); \
             its numbers are not the paper's",
            s.width, s.expert_width, s.epochs, s.data
        ),
        Preset::Paper => println!(
            "preset paper: PreAct-18 width {}, MoCSE experts of width {}, {} epochs on {}",
            s.width, s.expert_width, s.epochs, s.data
        ),
    }
    eprintln!("{why}; writing to {}", a.out.display());
    let pending: Vec<Cell> = cells.iter().copied().filter(|&c| !repro.report_path(c).exists()).collect();
    if !pending.is_empty() {
        eprintln!("timing a few training steps of each network to estimate the time...");
        let estimate = Estimate::measure(s, &pending, device)?;
        let each: Vec<String> = estimate
            .seconds_per_cell
            .iter()
            .map(|(c, t)| format!("{} {}", c.name(), duration_text(*t)))
            .collect();
        println!(
            "estimated time on {device}: {} for {} cell(s) ({})",
            duration_text(estimate.total()),
            pending.len(),
            each.join(", ")
        );
        if s.preset == Preset::Paper && device != Device::Cuda {
            eprintln!("warning: the paper preset is meant for a GPU; on {device} it takes the time above");
        }
    }
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (k, &cell) in cells.iter().enumerate() {
        eprintln!("cell {}/{}: {} ({})", k + 1, cells.len(), cell.name(), cell.title());
        match repro.run_cell(cell, device, &|line| eprintln!("{line}")) {
            Ok(outcome) => outcomes.push((cell, outcome)),
            Err(e) => {
                eprintln!("error: cell {} failed: {e:#}", cell.name());
                failures.push(format!("{}: {e:#}", cell.name()));
            }
        }
    }
    println!(
        "\n| cell | | this run | clean | mean of 19 | {} |",
        s.attacks.iter().map(|x| x.attack.to_string()).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|---|---:|---:|{}", "---:|".repeat(s.attacks.len()));
    for cell in Cell::ALL {
        let status = match outcomes.iter().find(|(c, _)| *c == cell).map(|(_, o)| o) {
            Some(CellOutcome::Ran(seconds)) => format!("ran here ({})", duration_text(*seconds)),
            Some(CellOutcome::AlreadyDone) => "done before".to_string(),
            Some(CellOutcome::Busy(holder)) => format!("running elsewhere ({holder})"),
            None if failures.iter().any(|f| f.starts_with(&format!("{}:", cell.name()))) => {
                "FAILED".to_string()
            }
            None => "not asked for".to_string(),
        };
        let report = repro.report(cell)?;
        let pct = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{:.2}", 100.0 * v));
        let attacks: Vec<String> = s
            .attacks
            .iter()
            .map(|x| {
                pct(report.as_ref().and_then(|r| r.adversarial.get(&x.attack)).map(|r| r.robust_accuracy))
            })
            .collect();
        println!(
            "| {} | {} | {status} | {} | {} | {} |",
            cell.name(),
            cell.title(),
            pct(report.as_ref().map(|r| r.clean_accuracy)),
            pct(report.as_ref().and_then(|r| r.mean_19)),
            attacks.join(" | ")
        );
    }
    match repro.write_table()? {
        Some(files) => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            println!("\nwrote {}", names.join(", "));
        }
        None => {
            let missing: Vec<&str> =
                Cell::ALL.iter().filter(|&&c| !repro.report_path(c).exists()).map(|c| c.name()).collect();
            println!(
                "\nthe table needs all six cells; not done yet: {}. Whichever process finishes the last cell writes \
                 it; to run them here: mocse reproduce --out {}",
                missing.join(", "),
                a.out.display()
            );
        }
    }
    if !failures.is_empty() {
        bail!("{} cell(s) failed:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    if !["train-step", "conv-layers", "corrupt", "pgd"].contains(&a.what.as_str()) {
        bail!("unknown --what '{}'; expected train-step, conv-layers, corrupt or pgd", a.what);
    }
    check_outputs(&given([("--json", &a.json)]), &[])?;
    if a.what == "corrupt" {
        return bench_corrupt(a);
    }
    let Some(model) = a.model else {
        bail!("--what {} needs --model preact18 or --model mocse", a.what);
    };
    let batch_size = a.batch_size.unwrap_or(64);
    if batch_size < 2 || a.steps == 0 {
        bail!("--batch-size must be at least 2 and --steps at least 1");
    }
    if a.twin.is_some() && a.what != "train-step" {
        bail!("--twin applies to --what train-step only");
    }
    if a.unfused && (model != ModelKind::Mocse || a.what != "train-step") {
        bail!("--unfused applies to --model mocse --what train-step only");
    }
    if a.what == "conv-layers" && a.run_on.conv_impl == ConvImpl::Cudnn {
        bail!("--what conv-layers measures cuDNN beside the kernels by itself; leave out --conv-impl");
    }
    if a.plan {
        if a.what != "conv-layers" {
            bail!("--plan applies to --what conv-layers only");
        }
        return conv_plan(&a, model, batch_size);
    }
    let (device, why, _) = a.run_on.apply()?;
    let config = bench_model_config(&a, model);
    config.check_fits(batch_size, device)?;
    eprintln!(
        "{why}; measuring {} of {} at batch {} ({} warm-up + {} timed runs, median)",
        a.what,
        config.describe(),
        batch_size,
        a.warmup,
        a.steps
    );
    if a.what == "conv-layers" {
        let rows = mocse::bench::bench_conv_layers(config, batch_size, device, a.warmup, a.steps)?;
        println!(
            "{:<20} {:>3} {:<16} {:<20} {:>7} {:>9} {:>10}",
            "layer", "n", "direction", "implementation", "launch", "ms", "GFLOP/s"
        );
        for r in &rows {
            println!(
                "{:<20} {:>3} {:<16} {:<20} {:>7} {:>9.3} {:>10.1}",
                r.layer,
                r.count,
                r.direction,
                r.implementation,
                r.launches,
                r.seconds * 1e3,
                r.gflop_per_s
            );
        }
        if let Some(path) = &a.json {
            let report = serde_json::json!({
                "what": "conv-layers",
                "model": config.describe(),
                "device": device.to_string(),
                "precision": precision::current(),
                "batch_size": batch_size,
                "mocse": mocse::BUILD,
                "rows": rows,
            });
            write_json(path, &report)?;
        }
        return Ok(());
    }
    if a.what == "pgd" {
        let r = mocse::bench::bench_pgd(config, batch_size, device, a.warmup, a.steps)?;
        println!(
            "{}: training step {:.1} ms, PGD step {:.1} ms ({:.2} of a training step; {:.1} images/s), \
             PGD-10 adversarial training {:.2} images/s, {} threads",
            r.model_description,
            r.train_step_seconds * 1e3,
            r.attack_step_seconds * 1e3,
            r.attack_to_train_step,
            r.attack_images_per_s,
            r.adversarial_train_images_per_s,
            r.threads
        );
        if let Some(path) = &a.json {
            write_json(path, &r)?;
        }
        return Ok(());
    }
    if let Some(dir) = &a.twin {
        mocse::bench::write_twin_check(dir, config, !a.unfused, batch_size, device)?;
        eprintln!("wrote the twin check to {}", dir.display());
    }
    let r = bench_train_step(config, !a.unfused, batch_size, device, a.warmup, a.steps)?;
    println!(
        "{}{}: train {:.1} images/s ({:.1} GFLOP/s), inference {:.1} images/s ({:.1} GFLOP/s), {} threads",
        r.model_description,
        match (model, a.unfused) {
            (ModelKind::Mocse, true) => ", unfused",
            (ModelKind::Mocse, false) => ", fused",
            _ => "",
        },
        r.train_images_per_s,
        r.train_gflop_per_s,
        r.infer_images_per_s,
        r.infer_gflop_per_s,
        r.threads
    );
    if let Some(graph) = r.train_graph_images_per_s {
        println!("  train, the step replayed from its graph: {graph:.1} images/s");
    }
    if let Some(path) = &a.json {
        write_json(path, &r)?;
    }
    Ok(())
}

fn bench_corrupt(a: BenchArgs) -> Result<()> {
    if a.model.is_some() || a.unfused {
        bail!("--what corrupt measures the corruptions alone; leave out --model and --unfused");
    }
    let batch_size = a.batch_size.unwrap_or(1000);
    if batch_size == 0 || a.steps == 0 {
        bail!("--batch-size and --steps must be at least 1");
    }
    let (device, why) = a.run_on.device.resolve()?;
    eprintln!(
        "{why}; measuring {} corruptions x 5 severities on {batch_size} images ({} warm-up + {} timed runs, median)",
        a.corruptions.0.len(),
        a.warmup,
        a.steps
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "corruption", "s1", "s2", "s3", "s4", "s5", "img/s", "seconds"
    );
    let rows =
        mocse::bench::bench_corruptions(&a.corruptions.0, batch_size, device, a.warmup, a.steps, |r| {
            let per: Vec<String> = r.images_per_s.iter().map(|v| format!("{v:>9.0}")).collect();
            println!(
                "{:<18} {} {:>10.0} {:>9.3}",
                r.corruption,
                per.join(" "),
                r.mean_images_per_s,
                r.seconds
            );
        })?;
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    println!(
        "all {} x 5 on {batch_size} images: {total:.3} s ({:.3} s per 10,000 images)",
        rows.len(),
        total * 10_000.0 / batch_size as f64
    );
    if let Some(path) = &a.json {
        let report = serde_json::json!({
            "what": "corrupt",
            "device": device.to_string(),
            "batch_size": batch_size,
            "emulator_workers": (device != Device::Cuda).then(mocse::gpu::emu::workers),
            "total_seconds": total,
            "mocse": mocse::BUILD,
            "rows": rows,
        });
        write_json(path, &report)?;
    }
    Ok(())
}

fn selftest(a: SelftestArgs) -> Result<()> {
    if a.compile_only {
        return compile_kernels(&a.arch);
    }
    let (device, description) = match a.device {
        Some(DeviceChoice::Exact(Device::Cpu)) => {
            bail!("selftest compares a kernel device with the cpu device; use --device cuda or emu")
        }
        Some(choice) => choice.resolve()?,
        None => match DeviceChoice::Auto.resolve()? {
            (Device::Cpu, _) => (Device::Emu, "device emu (auto: no GPU)".to_string()),
            found => found,
        },
    };
    println!("selftest: kernels on {device} against the cpu device ({description})");
    println!("{:<52} {:>14} {:>10}  result", "case", "max rel error", "tolerance");
    let wanted = |name: &str| a.only.is_empty() || a.only.iter().any(|w| name.contains(w.as_str()));
    let results = mocse::selftest::run(device, wanted, |r| {
        let verdict = if r.passed() { "pass" } else { "FAIL" };
        println!("{:<52} {:>14.3e} {:>10.0e}  {verdict}", r.name, r.max_relative_error, r.tolerance);
        if let Some(e) = &r.error {
            println!("    {e}");
        }
    });
    if results.is_empty() {
        bail!("no selftest case name contains any of {:?}", a.only);
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!("{} passed, {} failed", results.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} kernel check(s) failed on {device}");
    }
    Ok(())
}

fn compile_kernels(archs: &[String]) -> Result<()> {
    use mocse::gpu::nvrtc;
    if !nvrtc::available() {
        bail!("{}", nvrtc::missing_message());
    }
    let mut failures = Vec::new();
    for arch in archs {
        println!("NVRTC, {arch}:");
        println!("  {:<34} {:>5} {:>9} {:>7} {:>13}", "kernel", "regs", "smem B", "stack B", "spill st/ld B");
        for (_, _, compiled) in nvrtc::compile_all(arch) {
            match compiled {
                Ok(compiled) => {
                    for k in nvrtc::parse_resources(&compiled.log) {
                        println!(
                            "  {:<34} {:>5} {:>9} {:>7} {:>6}/{:<6}",
                            k.name,
                            k.registers,
                            k.shared_bytes,
                            k.stack_bytes,
                            k.spill_store_bytes,
                            k.spill_load_bytes
                        );
                        // The convolutions are the hot kernels: a spill there is a bug.
                        if k.name.starts_with("conv2d") && (k.spill_store_bytes > 0 || k.spill_load_bytes > 0)
                        {
                            failures.push(format!("{} spills on {arch}", k.name));
                        }
                    }
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    if !failures.is_empty() {
        bail!("kernel compilation failed:\n{}", failures.join("\n"));
    }
    println!("every kernel compiled for {}", archs.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// `--resume` takes every setting from the run's config.json: a new setting that does not
    /// conflict with it would be silently ignored on resume.
    #[test]
    fn every_run_setting_conflicts_with_resume() {
        let cli = Cli::command();
        let train = cli.find_subcommand("train").unwrap();
        let group = train.get_groups().find(|g| g.get_id() == "RunSettings").unwrap();
        let members: Vec<_> = group.get_args().collect();
        assert!(members.len() >= 25, "{members:?}");
        for id in members {
            let arg = train.get_arguments().find(|a| a.get_id() == id).unwrap();
            let conflicts = train.get_arg_conflicts_with(arg);
            assert!(
                conflicts.iter().any(|c| c.get_id() == "resume"),
                "--{id} does not conflict with --resume"
            );
        }
    }
}
