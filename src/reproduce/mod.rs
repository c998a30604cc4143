//! `mocse reproduce`: the paper's Table 1 end to end. Six cells, {standard network, MoCSE} x
//! {standard training, PGD adversarial training, standard training on the augmented set},
//! each trained and then evaluated on clean data, the 19 corruptions x 5 severities, PGD-20 and
//! aa-lite. The output directory is laid out as
//!
//! - `DIR/reproduce.json`: the settings (a rerun with other settings is refused);
//! - `DIR/cells/NAME/run/`: the cell's training run, resumable like any run;
//! - `DIR/cells/NAME/report.{md,csv,json}`, `curves.png`, `figures/`: its evaluation (with the
//!   confusion matrix and, for MoCSE, the expert heatmaps); report.json is written last, so its
//!   presence marks the cell done;
//! - `DIR/table1.{md,csv,json,png}`: the table, with the paper's numbers beside ours.
//!
//! A cell's directory is locked while a process works on it, so processes sharing DIR (several
//! machines on one file system, a Slurm array, GNU parallel) never run a cell twice; whichever
//! finds all six reports written writes the table.

pub mod paper;
pub mod table;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomic;
use crate::attack::apgd::INITIAL_STEP;
use crate::attack::{AttackKind, BnMode, Norm, PgdConfig};
use crate::corrupt::{Corruption, SEVERITIES};
use crate::curves::{CURVES_FILE, write_run_curves};
use crate::data::cifar10c::Cifar10C;
use crate::data::{DataSpec, SYNTHETIC_TEST_LEN, SYNTHETIC_TRAIN_LEN, Split};
use crate::device::Device;
use crate::dir_lock::DirLock;
use crate::eval_job::{EvalJob, EvalTarget};
use crate::input_file::read_text;
use crate::nn::model::{ModelConfig, ModelKind};
use crate::ops::aggregate::Aggregate;
use crate::ops::sgd::SgdConfig;
use crate::robustness::{CorruptedSource, CorruptionReport};
use crate::train::{
    AdversarialTraining, CONFIG_FILE, SYNTHETIC_SET_SEED, Schedule, TrainConfig, Trainer, TrainingMode,
    diff_values, read_config,
};

pub const SETTINGS_FILE: &str = "reproduce.json";
/// The cell's report: its presence marks the cell done.
pub const REPORT_FILE: &str = "report.json";

/// A recipe of the paper's Table 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Standard training on CIFAR-10 (crop and flip).
    Standard,
    /// PGD adversarial training (Madry et al.).
    Adversarial,
    /// Standard training on "CIFAR-10 Augmented": crop, flip, then AugMix (`--augment augmix`).
    Augmented,
}

/// One column of Table 1: a recipe and a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub recipe: Recipe,
    pub model: ModelKind,
}

impl Cell {
    /// The paper's column order.
    pub const ALL: [Cell; 6] = [
        Cell { recipe: Recipe::Standard, model: ModelKind::Preact18 },
        Cell { recipe: Recipe::Standard, model: ModelKind::Mocse },
        Cell { recipe: Recipe::Adversarial, model: ModelKind::Preact18 },
        Cell { recipe: Recipe::Adversarial, model: ModelKind::Mocse },
        Cell { recipe: Recipe::Augmented, model: ModelKind::Preact18 },
        Cell { recipe: Recipe::Augmented, model: ModelKind::Mocse },
    ];

    pub fn index(self) -> usize {
        Cell::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    /// The name of `--cells` and of the cell's directory.
    pub fn name(self) -> &'static str {
        match (self.recipe, self.model) {
            (Recipe::Standard, ModelKind::Preact18) => "std-preact18",
            (Recipe::Standard, ModelKind::Mocse) => "std-mocse",
            (Recipe::Adversarial, ModelKind::Preact18) => "adv-preact18",
            (Recipe::Adversarial, ModelKind::Mocse) => "adv-mocse",
            (Recipe::Augmented, ModelKind::Preact18) => "aug-preact18",
            (Recipe::Augmented, ModelKind::Mocse) => "aug-mocse",
        }
    }

    /// The column's heading, as the paper's.
    pub fn title(self) -> &'static str {
        match (self.recipe, self.model) {
            (Recipe::Standard, ModelKind::Preact18) => "CIFAR-10 std / standard",
            (Recipe::Standard, ModelKind::Mocse) => "CIFAR-10 std / MoCSE",
            (Recipe::Adversarial, ModelKind::Preact18) => "CIFAR-10 adv / standard",
            (Recipe::Adversarial, ModelKind::Mocse) => "CIFAR-10 adv / MoCSE",
            (Recipe::Augmented, ModelKind::Preact18) => "Augmented std / standard",
            (Recipe::Augmented, ModelKind::Mocse) => "Augmented std / MoCSE",
        }
    }

    /// Parses `--cells`: comma-separated names, each once.
    pub fn parse_list(text: &str) -> Result<Vec<Cell>> {
        let mut cells = Vec::new();
        for name in text.split(',').map(str::trim) {
            let Some(&cell) = Cell::ALL.iter().find(|c| c.name() == name) else {
                bail!("unknown cell '{name}'; the cells are {}", Cell::ALL.map(Cell::name).join(", "));
            };
            if cells.contains(&cell) {
                bail!("--cells names {name} twice");
            }
            cells.push(cell);
        }
        Ok(cells)
    }
}

/// A ready-made set of settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Small widths, a few epochs, 2,000 training images: a smoke test of the whole pipeline on
    /// a CPU in minutes. Its numbers are not the paper's.
    Quick,
    /// The paper's recipe: PreAct-18 width 64, experts of width 16, 200 epochs; for a GPU.
    Paper,
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Quick => "quick",
            Preset::Paper => "paper",
        })
    }
}

/// Settings that override the preset's (`reproduce --epochs` and so on).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub epochs: Option<usize>,
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    pub width: Option<usize>,
    pub expert_width: Option<usize>,
    pub seed: Option<u64>,
    pub attack_steps: Option<usize>,
}

impl Overrides {
    pub fn any(&self) -> bool {
        let Overrides { epochs, train_subset, test_subset, width, expert_width, seed, attack_steps } = self;
        epochs.is_some()
            || train_subset.is_some()
            || test_subset.is_some()
            || width.is_some()
            || expert_width.is_some()
            || seed.is_some()
            || attack_steps.is_some()
    }
}

/// An attack of the evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackPlan {
    pub attack: AttackKind,
    #[serde(flatten)]
    pub settings: PgdConfig,
}

/// Everything that decides a reproduction's numbers, recorded in `DIR/reproduce.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub preset: Preset,
    /// Training and test data: `synthetic` or `cifar10:DIR`.
    pub data: String,
    /// The corrupted images: read from this CIFAR-10-C directory, else generated.
    pub cifar10c: Option<String>,
    pub train_subset: Option<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub sgd: SgdConfig,
    pub schedule: Schedule,
    /// Base width of the standard network.
    pub width: usize,
    /// Base width of every MoCSE expert.
    pub expert_width: usize,
    pub seed: u64,
    /// The attack of the adversarial-training cells.
    pub adversarial: AdversarialTraining,
    /// AugMix's Jensen-Shannon loss weight in the augmented cells (none: plain AugMix).
    pub jsd: Option<f32>,
    /// The test images of the per-epoch check during training [all when absent].
    pub epoch_test_subset: Option<usize>,
    /// The test images of the evaluation (clean, corrupted and attacked) [all when absent].
    pub test_subset: Option<usize>,
    pub eval_batch_size: usize,
    /// Seed of the generated corruptions.
    pub corruption_seed: u64,
    pub attacks: Vec<AttackPlan>,
}

const EPS: f32 = 8.0 / 255.0;

impl Settings {
    /// The preset's settings with `overrides` applied, on `data` (`synthetic` or `cifar10:DIR`).
    pub fn new(preset: Preset, data: &DataSpec, cifar10c: Option<&Path>, o: &Overrides) -> Result<Settings> {
        if matches!(data, DataSpec::Npy(_)) {
            bail!(
                "reproduce trains its models: --data takes synthetic or cifar10:DIR (npy:DIR is a test set only)"
            );
        }
        let quick = preset == Preset::Quick;
        let train_steps = if quick { 2 } else { 10 };
        let attack_steps = |kind: AttackKind| {
            o.attack_steps.unwrap_or(match (quick, kind) {
                (_, AttackKind::Pgd) => 20,
                (true, _) => 10,
                (false, _) => kind.default_steps(),
            })
        };
        let attack = |attack: AttackKind| AttackPlan {
            attack,
            settings: PgdConfig {
                norm: Norm::Linf,
                eps: EPS,
                alpha: if attack.is_apgd() { INITIAL_STEP * EPS } else { 2.0 / 255.0 },
                steps: attack_steps(attack),
                restarts: 1,
                random_start: true,
                bn: BnMode::Eval,
                seed: 0,
            },
        };
        let settings = Settings {
            preset,
            data: data.to_string(),
            cifar10c: cifar10c.map(|d| d.display().to_string()),
            train_subset: o.train_subset.or(quick.then_some(2000)),
            epochs: o.epochs.unwrap_or(if quick { 3 } else { 200 }),
            batch_size: 128,
            lr: 0.1,
            sgd: SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false },
            schedule: if quick { Schedule::Cosine } else { Schedule::Multistep },
            width: o.width.unwrap_or(if quick { 8 } else { 64 }),
            expert_width: o.expert_width.unwrap_or(if quick { 4 } else { 16 }),
            seed: o.seed.unwrap_or(0),
            adversarial: AdversarialTraining {
                norm: Norm::Linf,
                eps: EPS,
                // Quick: 2 steps of 2.5 eps / 2 (Madry et al.'s rule), so they reach the bound.
                alpha: if quick { 2.5 * EPS / train_steps as f32 } else { 2.0 / 255.0 },
                steps: train_steps,
                bn: BnMode::Train,
                eval_subset: if quick { 50 } else { 1000 },
                beta: None,
                early_stop: false,
            },
            jsd: (!quick).then_some(12.0),
            epoch_test_subset: o.test_subset.or(quick.then_some(100)),
            test_subset: o.test_subset.or(quick.then_some(100)),
            eval_batch_size: 256,
            corruption_seed: 0,
            attacks: vec![attack(AttackKind::Pgd), attack(AttackKind::AaLite)],
        };
        for cell in Cell::ALL {
            settings.train_config(cell).validate().with_context(|| format!("cell {}", cell.name()))?;
        }
        for a in &settings.attacks {
            a.settings.validate()?;
        }
        Ok(settings)
    }

    /// The training run of a cell.
    pub fn train_config(&self, cell: Cell) -> TrainConfig {
        TrainConfig {
            model: ModelConfig {
                kind: cell.model,
                num_classes: 10,
                width: match cell.model {
                    ModelKind::Preact18 => self.width,
                    ModelKind::Mocse => self.expert_width,
                },
                aggregate: Aggregate::Prob,
                bce_weight: 1.0,
            },
            data: self.data.clone(),
            train_subset: self.train_subset,
            test_subset: self.epoch_test_subset,
            augment: if cell.recipe == Recipe::Augmented { "augmix" } else { "standard" }.to_string(),
            jsd: if cell.recipe == Recipe::Augmented { self.jsd } else { None },
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            sgd: self.sgd,
            schedule: self.schedule,
            seed: self.seed,
            save_every: None,
            mode: match cell.recipe {
                Recipe::Adversarial => TrainingMode::Pgd(self.adversarial),
                _ => TrainingMode::Standard,
            },
            created_by: format!("mocse {}", crate::BUILD),
        }
    }

    pub fn data_spec(&self) -> Result<DataSpec> {
        Ok(self.data.parse()?)
    }
}

/// `DIR/reproduce.json`: the settings, and which mocse wrote them.
#[derive(Serialize, Deserialize)]
struct SettingsFile {
    settings: Settings,
    created_by: String,
}

/// What became of a cell in this process.
#[derive(Debug, Clone, PartialEq)]
pub enum CellOutcome {
    /// Trained (or continued) and evaluated now, in this many seconds.
    Ran(f64),
    /// Its report was already there.
    AlreadyDone,
    /// Another process holds it (its own description).
    Busy(String),
}

/// A reproduction in its output directory.
pub struct Reproduction {
    pub out: PathBuf,
    pub settings: Settings,
}

/// Waits (up to a minute) for the brief lock on DIR that guards its settings file and table.
fn lock_briefly(dir: &Path, purpose: &str) -> Result<DirLock> {
    let start = Instant::now();
    loop {
        match DirLock::try_acquire(dir, purpose)? {
            Ok(lock) => return Ok(lock),
            Err(holder) if start.elapsed() > Duration::from_secs(60) => {
                bail!("{} stayed locked for a minute by {holder}", dir.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The differences between two settings, "key was A, is now B".
fn settings_differences(recorded: &Settings, asked: &Settings) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    diff_values("", &serde_json::to_value(recorded)?, &serde_json::to_value(asked)?, &mut changes);
    Ok(changes)
}

impl Reproduction {
    /// Opens `out`: a new directory gets `settings` (which must then be given); an existing one
    /// must be a reproduction, and `settings`, when given, must be the ones it was started with.
    pub fn open(out: &Path, settings: Option<Settings>) -> Result<Reproduction> {
        if out.exists() && !out.is_dir() {
            bail!("--out {} exists and is not a directory", out.display());
        }
        let file = out.join(SETTINGS_FILE);
        if !file.exists() && settings.is_none() {
            bail!("--out {} holds no reproduction yet: give --preset quick or --preset paper", out.display());
        }
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        // Two processes starting at once must agree on one settings file: the checks and the
        // writing happen under the lock.
        let _lock = lock_briefly(out, "reproduce: settings")?;
        if !file.exists() && crate::dir_lock::holds_other_files(out)? {
            bail!(
                "--out {} already holds files and is not a reproduction (no {SETTINGS_FILE}); choose a new or \
                 empty directory",
                out.display()
            );
        }
        let recorded = if file.exists() {
            let text = read_text(&file, "reproduction settings")?;
            let parsed: SettingsFile = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a mocse reproduction's settings file", file.display()))?;
            Some(parsed.settings)
        } else {
            None
        };
        let settings = match (recorded, settings) {
            (Some(recorded), Some(asked)) => {
                let changes = settings_differences(&recorded, &asked)?;
                if !changes.is_empty() {
                    bail!(
                        "{} holds a reproduction with other settings ({}): {}. Its results must not be mixed with \
                         these: rerun with the settings it was started with (`mocse reproduce --out {}` alone \
                         continues it), or choose another --out",
                        out.display(),
                        file.display(),
                        changes.join(", "),
                        out.display()
                    );
                }
                recorded
            }
            (Some(recorded), None) => recorded,
            (None, Some(asked)) => {
                let record =
                    SettingsFile { settings: asked.clone(), created_by: format!("mocse {}", crate::BUILD) };
                write_atomic(&file, (serde_json::to_string_pretty(&record)? + "\n").as_bytes())?;
                asked
            }
            (None, None) => {
                bail!("{} holds no reproduction: give --preset quick or --preset paper", out.display())
            }
        };
        Ok(Reproduction { out: out.to_path_buf(), settings })
    }

    /// Checks before any training that the data loads and that a CIFAR-10-C directory holds
    /// every corruption at every severity for the same test images: a mistake found after the
    /// first cell's training would cost that training.
    pub fn check_inputs(&self) -> Result<()> {
        let s = &self.settings;
        let test =
            crate::data::Dataset::load(&s.data_spec()?, Split::Test, s.test_subset, SYNTHETIC_SET_SEED)?;
        let Some(dir) = &s.cifar10c else { return Ok(()) };
        let files = Cifar10C::open(Path::new(dir))?;
        let missing: Vec<&str> =
            Corruption::ALL.iter().filter(|c| !files.corruptions().contains(c)).map(|c| c.name()).collect();
        if !missing.is_empty() {
            bail!("{dir} lacks {}: Table 1 needs all 19 corruptions", missing.join(", "));
        }
        if let Some(s) = SEVERITIES.clone().find(|s| !files.severities().contains(s)) {
            bail!("{dir} lacks severity {s}: Table 1 needs severities 1-5");
        }
        let n = test.len();
        if files.images_per_severity() < n || files.labels()[..n] != test.labels()[..] {
            bail!("{dir} does not hold the first {n} test images of {}: its labels differ", s.data);
        }
        Ok(())
    }

    pub fn cell_dir(&self, cell: Cell) -> PathBuf {
        self.out.join("cells").join(cell.name())
    }

    pub fn run_dir(&self, cell: Cell) -> PathBuf {
        self.cell_dir(cell).join("run")
    }

    pub fn report_path(&self, cell: Cell) -> PathBuf {
        self.cell_dir(cell).join(REPORT_FILE)
    }

    /// The cell's report, when it is done.
    pub fn report(&self, cell: Cell) -> Result<Option<CorruptionReport>> {
        let path = self.report_path(cell);
        if !path.exists() {
            return Ok(None);
        }
        crate::compare::read_report(&path).map(Some)
    }

    /// Trains and evaluates `cell` unless it is done or another process holds it. `say` gets
    /// the progress lines (what runs, the epoch, the time left).
    pub fn run_cell(&self, cell: Cell, device: Device, say: &dyn Fn(String)) -> Result<CellOutcome> {
        let dir = self.cell_dir(cell);
        if self.report_path(cell).exists() {
            return Ok(CellOutcome::AlreadyDone);
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let _lock = match DirLock::try_acquire(&dir, &format!("reproduce cell {}", cell.name()))? {
            Ok(lock) => lock,
            Err(holder) => return Ok(CellOutcome::Busy(holder)),
        };
        // It may have finished between the check above and the lock.
        if self.report_path(cell).exists() {
            return Ok(CellOutcome::AlreadyDone);
        }
        let start = Instant::now();
        self.train_cell(cell, device, say)?;
        self.evaluate_cell(cell, device, say)?;
        Ok(CellOutcome::Ran(start.elapsed().as_secs_f64()))
    }

    fn train_cell(&self, cell: Cell, device: Device, say: &dyn Fn(String)) -> Result<()> {
        let run = self.run_dir(cell);
        let wanted = self.settings.train_config(cell);
        let mut trainer = if run.join(CONFIG_FILE).exists() {
            let existing = read_config(&run)?;
            let plain = |c: &TrainConfig| TrainConfig { created_by: String::new(), ..c.clone() };
            if plain(&existing) != plain(&wanted) {
                bail!(
                    "{} was started with other settings than {} asks for (another mocse version?); remove it \
                     to train the cell again",
                    run.display(),
                    self.out.join(SETTINGS_FILE).display()
                );
            }
            Trainer::resume(&run, device)?
        } else {
            Trainer::create(wanted, &run, device)?
        };
        let name = cell.name();
        let epochs = trainer.config.epochs;
        // The curves are drawn after the last epoch, also when an earlier process trained it.
        let curves =
            || -> Result<()> { write_run_curves(&run, &self.cell_dir(cell).join(CURVES_FILE)).map(|_| ()) };
        if trainer.is_finished() {
            return curves();
        }
        let first = trainer.progress.epoch;
        if first > 0 {
            say(format!("[{name}] continuing the training from its checkpoint of epoch {first}"));
        }
        say(format!(
            "[{name}] training {} ({} epochs, {} steps each) in {}",
            trainer.config.model.describe(),
            epochs,
            trainer.steps_per_epoch(),
            run.display()
        ));
        let start = Instant::now();
        while !trainer.is_finished() {
            let Some(log) = trainer.run(Some(1), false)?.pop() else { break };
            let done = log.epoch - first;
            let left = start.elapsed().as_secs_f64() / done as f64 * (epochs - log.epoch) as f64;
            let robust =
                log.robust_test_accuracy.map_or(String::new(), |r| format!(", PGD-10 {:.1}%", 100.0 * r));
            say(format!(
                "[{name}] epoch {}/{epochs}: loss {:.3}, test accuracy {:.1}%{robust}; training ends in {}",
                log.epoch,
                log.train_loss,
                100.0 * log.test_accuracy,
                duration_text(left)
            ));
        }
        curves()
    }

    fn evaluate_cell(&self, cell: Cell, device: Device, say: &dyn Fn(String)) -> Result<()> {
        let s = &self.settings;
        let target = EvalTarget::run(&self.run_dir(cell))?;
        let job = EvalJob::load(&target, s.data_spec()?, s.test_subset, s.eval_batch_size, device)?;
        let files = s.cifar10c.as_deref().map(|d| Cifar10C::open(Path::new(d))).transpose()?;
        let (source, described) = match &files {
            Some(f) => (CorruptedSource::Files(f), format!("cifar10c:{}", f.dir().display())),
            None => (
                CorruptedSource::Generate { seed: s.corruption_seed },
                format!("generated on {device} (seed {})", s.corruption_seed),
            ),
        };
        let severities: Vec<u8> = SEVERITIES.collect();
        say(format!(
            "[{}] evaluating on {} test images: clean, 19 corruptions x 5 severities ({described}), then {}",
            cell.name(),
            job.test.len(),
            s.attacks.iter().map(|a| a.attack.to_string()).collect::<Vec<_>>().join(" and ")
        ));
        let (mut report, clean_correct) =
            job.corruptions(&Corruption::ALL, &severities, &source, described, s.eval_batch_size, None)?;
        let attacks: Vec<(AttackKind, PgdConfig)> =
            s.attacks.iter().map(|a| (a.attack, a.settings)).collect();
        report.adversarial = job.attacks(&attacks, s.eval_batch_size, clean_correct, false, |r, _| {
            say(format!("[{}] {}", cell.name(), r.summary()));
            for w in &r.sanity.warnings {
                say(format!("[{}] warning: {}: {w}", cell.name(), r.attack));
            }
            Ok(())
        })?;
        let dir = self.cell_dir(cell);
        write_atomic(&dir.join("report.md"), report.to_markdown().as_bytes())?;
        write_atomic(&dir.join("report.csv"), report.to_csv().as_bytes())?;
        crate::diagnostics::figures::write_figures(&dir.join("figures"), &report)?;
        // Last: the report marks the cell done.
        write_atomic(&self.report_path(cell), (serde_json::to_string_pretty(&report)? + "\n").as_bytes())?;
        Ok(())
    }

    /// The reports of every cell when all six are done.
    pub fn all_reports(&self) -> Result<Option<Vec<CorruptionReport>>> {
        let mut reports = Vec::new();
        for cell in Cell::ALL {
            match self.report(cell)? {
                Some(r) => reports.push(r),
                None => return Ok(None),
            }
        }
        Ok(Some(reports))
    }

    /// Writes `DIR/table1.{md,csv,json,png}` when all six cells are done; returns the files.
    pub fn write_table(&self) -> Result<Option<Vec<PathBuf>>> {
        let Some(reports) = self.all_reports()? else { return Ok(None) };
        let _lock = lock_briefly(&self.out, "reproduce: writing the table")?;
        let table = table::Table1::new(&self.settings, &reports, |cell| {
            self.cell_dir(cell).strip_prefix(&self.out).unwrap_or(&self.cell_dir(cell)).display().to_string()
        });
        let files = [
            ("table1.md", table.to_markdown().into_bytes()),
            ("table1.csv", table.to_csv().into_bytes()),
            ("table1.json", (serde_json::to_string_pretty(&table)? + "\n").into_bytes()),
            ("table1.png", table.to_png()?),
        ];
        let mut written = Vec::new();
        for (name, bytes) in files {
            let path = self.out.join(name);
            write_atomic(&path, &bytes)?;
            written.push(path);
        }
        Ok(Some(written))
    }
}

/// "3 days 4 h", "1 h 05 min", "3 min 20 s", "42 s".
pub fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        3600..172_800 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        _ => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The estimated time of the cells on a device, from timed training steps of both networks.
pub struct Estimate {
    pub seconds_per_cell: Vec<(Cell, f64)>,
}

impl Estimate {
    /// Times a few training and inference steps of each network on `device` and scales them
    /// to each cell's work: its epochs (an adversarial step counts as 1 + its attack steps, a
    /// JSD step as 3 images per image), the per-epoch tests, the 96 evaluation passes and the
    /// attacks (an aa-lite target counted for half the images).
    pub fn measure(settings: &Settings, cells: &[Cell], device: Device) -> Result<Estimate> {
        let mut rates: Vec<(ModelKind, f64, f64)> = Vec::new();
        let mut seconds_per_cell = Vec::new();
        let train_images = settings.train_subset.unwrap_or(SYNTHETIC_TRAIN_LEN) as f64;
        let test_images = settings.test_subset.unwrap_or(SYNTHETIC_TEST_LEN) as f64;
        let epoch_test = settings.epoch_test_subset.unwrap_or(SYNTHETIC_TEST_LEN) as f64;
        for &cell in cells {
            let (train_rate, infer_rate) = match rates.iter().find(|r| r.0 == cell.model) {
                Some(&(_, t, i)) => (t, i),
                None => {
                    let config = settings.train_config(cell).model;
                    let b = crate::bench::bench_train_step(config, true, settings.batch_size, device, 1, 2)?;
                    rates.push((cell.model, b.train_images_per_s, b.infer_images_per_s));
                    (b.train_images_per_s, b.infer_images_per_s)
                }
            };
            let config = settings.train_config(cell);
            let per_image = match (&config.mode, config.jsd) {
                (TrainingMode::Pgd(a), _) => 1.0 + a.steps as f64,
                (_, Some(_)) => 3.0,
                _ => 1.0,
            };
            let robust_epoch_check = config.mode.adversarial().map_or(0.0, |a| a.eval_subset as f64 * 11.0);
            let training = settings.epochs as f64
                * (train_images * per_image / train_rate
                    + epoch_test / infer_rate
                    + robust_epoch_check / train_rate);
            let attack_passes: f64 = settings
                .attacks
                .iter()
                .map(|a| {
                    let steps = a.settings.steps as f64;
                    if a.attack == AttackKind::AaLite { steps * (1.0 + 9.0 * 0.5) } else { steps }
                })
                .sum();
            let evaluation = test_images * 96.0 / infer_rate + test_images * attack_passes / train_rate;
            seconds_per_cell.push((cell, training + evaluation));
        }
        Ok(Estimate { seconds_per_cell })
    }

    pub fn total(&self) -> f64 {
        self.seconds_per_cell.iter().map(|c| c.1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_names_parse_back() {
        let all = Cell::ALL.map(Cell::name).join(",");
        assert_eq!(Cell::parse_list(&all).unwrap(), Cell::ALL.to_vec());
        assert_eq!(Cell::parse_list("adv-mocse").unwrap(), vec![Cell::ALL[3]]);
        assert!(Cell::parse_list("adv-mocse,adv-mocse").is_err());
        assert!(Cell::parse_list("mocse").unwrap_err().to_string().contains("std-preact18"));
        for (i, c) in Cell::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    #[test]
    fn presets_follow_the_paper_recipe() {
        let paper = Settings::new(Preset::Paper, &DataSpec::Synthetic, None, &Overrides::default()).unwrap();
        assert_eq!((paper.width, paper.expert_width, paper.epochs, paper.batch_size), (64, 16, 200, 128));
        assert_eq!((paper.lr, paper.sgd.momentum, paper.sgd.weight_decay), (0.1, 0.9, 5e-4));
        assert_eq!((paper.adversarial.steps, paper.adversarial.eps), (10, 8.0 / 255.0));
        let adv = paper.train_config(Cell::ALL[3]);
        assert!(matches!(adv.mode, TrainingMode::Pgd(_)) && adv.model.kind == ModelKind::Mocse);
        let aug = paper.train_config(Cell::ALL[4]);
        assert_eq!((aug.augment.as_str(), aug.jsd), ("augmix", Some(12.0)));
        assert_eq!(paper.train_config(Cell::ALL[0]).augment, "standard");
        let kinds: Vec<_> = paper.attacks.iter().map(|a| (a.attack, a.settings.steps)).collect();
        assert_eq!(kinds, vec![(AttackKind::Pgd, 20), (AttackKind::AaLite, 100)]);
        let quick = Settings::new(
            Preset::Quick,
            &DataSpec::Synthetic,
            None,
            &Overrides { epochs: Some(1), ..Default::default() },
        )
        .unwrap();
        assert_eq!((quick.epochs, quick.train_subset), (1, Some(2000)));
        assert!(
            Settings::new(Preset::Quick, &DataSpec::Npy("x".into()), None, &Overrides::default()).is_err()
        );
        let zero = Overrides { epochs: Some(0), ..Default::default() };
        assert!(Settings::new(Preset::Quick, &DataSpec::Synthetic, None, &zero).is_err());
    }

    #[test]
    fn durations_read_plainly() {
        assert_eq!(duration_text(42.4), "42 s");
        assert_eq!(duration_text(200.0), "3 min 20 s");
        assert_eq!(duration_text(3900.0), "1 h 05 min");
        assert_eq!(duration_text(4346.6 * 3600.0), "181 days 2 h");
    }
}
