//! The evaluation job: what a model to evaluate is (a run's last checkpoint or a checkpoint
//! file), loading it with its test data onto a device, and the evaluations `mocse eval` (and
//! any later command) runs on it: clean, corrupted, and under attack with the sanity checks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::attack::evaluate::{
    AdversarialReport, AttackCounts, AttackReports, SANITY_IMAGES, attack_dataset, sanity_checks,
};
use crate::attack::{AttackKind, PgdConfig};
use crate::checkpoint::{self, MODEL_FILE};
use crate::corrupt::Corruption;
use crate::data::{DataSpec, Dataset, Split};
use crate::device::Device;
use crate::diagnostics::{ExpertDiagnostics, ExpertTally, class_labels, expert_aggregate};
use crate::eval::{ConfusionCounts, PerClassReport, RunDescription, confusion_and_experts_on};
use crate::input_file::files_in;
use crate::nn::model::{Model, ModelConfig};
use crate::nn::preact_resnet::Weights;
use crate::predictions::Predictions;
use crate::progress;
use crate::robustness::{CorruptedSource, CorruptionReport, evaluate_corruptions};
use crate::train::{CONFIG_FILE, SYNTHETIC_SET_SEED, TrainConfig, check_config_unchanged, read_config};

/// What to evaluate: a run's last checkpoint, or a checkpoint file.
pub struct EvalTarget {
    pub model: ModelConfig,
    /// The run's settings, when there is a run (its data is the default test data).
    pub run_config: Option<TrainConfig>,
    /// The run directory holding `run_config`.
    pub run_dir: Option<PathBuf>,
    pub checkpoint: PathBuf,
    /// How reports name it: the run directory, or the checkpoint file.
    pub name: String,
    /// Files an output must not replace.
    pub inputs: Vec<PathBuf>,
}

impl EvalTarget {
    /// The last checkpoint of the run in `run`.
    pub fn run(run: &Path) -> Result<EvalTarget> {
        let config = read_config(run)?;
        Ok(EvalTarget {
            model: config.model,
            run_config: Some(config),
            run_dir: Some(run.to_path_buf()),
            checkpoint: run.join(MODEL_FILE),
            name: run.display().to_string(),
            inputs: files_in(run),
        })
    }

    /// A checkpoint file; its model comes from the config.json beside it, else from `model`
    /// (`describe_flags` names the flags that give it, for the error when neither does).
    pub fn checkpoint_file(
        file: &Path,
        model: Option<ModelConfig>,
        describe_flags: &str,
    ) -> Result<EvalTarget> {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let mut inputs = vec![file.to_path_buf()];
        let beside = dir.join(CONFIG_FILE);
        let (model, run_config, run_dir) = if beside.exists() {
            if model.is_some() {
                bail!(
                    "{} describes the model of {}; leave out {describe_flags}",
                    beside.display(),
                    file.display()
                );
            }
            let config = read_config(&dir)?;
            inputs.extend(files_in(&dir));
            (config.model, Some(config), Some(dir))
        } else {
            let Some(model) = model else {
                bail!(
                    "{} has no config.json beside it, so the model must be given: {describe_flags}",
                    file.display()
                );
            };
            (model, None, None)
        };
        Ok(EvalTarget {
            model,
            run_config,
            run_dir,
            checkpoint: file.to_path_buf(),
            name: file.display().to_string(),
            inputs,
        })
    }

    /// The test data when none is given: the run's, else the synthetic set.
    pub fn default_data(&self) -> Result<DataSpec> {
        match &self.run_config {
            Some(config) => config.data_spec(),
            None => Ok(DataSpec::Synthetic),
        }
    }

    /// The checked weights, and the epoch when the file says (a run's own file always does). A
    /// run's config.json must still be the one its checkpoint was trained with.
    pub fn load(&self, model: &Model) -> Result<(Weights, Option<usize>)> {
        let (weights, progress) = checkpoint::load_state_dict(&self.checkpoint, model.fused())
            .with_context(|| format!("{} has no usable checkpoint", self.name))?;
        let recorded = checkpoint::recorded_config(&self.checkpoint)?;
        if let (Some(dir), Some(config), Some(recorded)) = (&self.run_dir, &self.run_config, recorded) {
            check_config_unchanged(dir, config, &recorded, progress.map_or(0, |p| p.epoch))?;
        }
        Ok((weights, progress.map(|p| p.epoch)))
    }
}

/// The clean test images evaluated: counted by true and predicted class, the per-class report,
/// and for MoCSE every expert as a binary classifier.
pub struct CleanEvaluation {
    pub counts: ConfusionCounts,
    pub per_class: PerClassReport,
    pub experts: Option<ExpertDiagnostics>,
}

/// A model loaded onto a device with its test set, ready to evaluate.
pub struct EvalJob {
    pub model: Model,
    pub weights: Weights,
    /// The checkpoint's epoch, when it says.
    pub epoch: Option<usize>,
    pub test: Dataset,
    pub spec: DataSpec,
    pub device: Device,
    pub run: RunDescription,
}

impl EvalJob {
    /// Loads `target` onto `device` with the first `test_subset` images of `spec`'s test split;
    /// checks first that batches of `batch_size` fit the device.
    pub fn load(
        target: &EvalTarget,
        spec: DataSpec,
        test_subset: Option<usize>,
        batch_size: usize,
        device: Device,
    ) -> Result<EvalJob> {
        let config = target.model;
        config.check_fits(batch_size.min(test_subset.unwrap_or(crate::data::SYNTHETIC_TEST_LEN)), device)?;
        let model = Model::new(config);
        let (weights, epoch) = target.load(&model)?;
        let weights = weights.to_device(device)?;
        let test = Dataset::load(&spec, Split::Test, test_subset, SYNTHETIC_SET_SEED)?;
        let run = RunDescription {
            model: config.kind.to_string(),
            model_description: config.describe(),
            run: target.name.clone(),
            checkpoint_epoch: epoch,
            data: spec.to_string(),
            device: device.to_string(),
        };
        Ok(EvalJob { model, weights, epoch, test, spec, device, run })
    }

    /// The test images counted by true and predicted class, with a progress bar, and their
    /// per-class report; `predictions` receives the scores.
    pub fn clean(
        &self,
        batch_size: usize,
        predictions: Option<&mut Predictions>,
    ) -> Result<(ConfusionCounts, PerClassReport)> {
        let CleanEvaluation { counts, per_class, .. } = self.clean_evaluation(batch_size, predictions)?;
        Ok((counts, per_class))
    }

    /// [`EvalJob::clean`] with, for MoCSE, the experts' diagnostics from the same scores.
    pub fn clean_evaluation(
        &self,
        batch_size: usize,
        predictions: Option<&mut Predictions>,
    ) -> Result<CleanEvaluation> {
        let config = &self.model.config;
        let mut experts = expert_aggregate(config).map(|a| ExpertTally::new(config.num_classes, a));
        let bar = progress::bar(self.test.len() as u64, "images");
        let counts = confusion_and_experts_on(
            &self.model,
            &self.weights,
            &self.test,
            batch_size,
            Some(&bar),
            predictions,
            experts.as_mut(),
        )?;
        bar.finish_and_clear();
        let names = self.test.class_names();
        let per_class = PerClassReport::new(&counts, names);
        let experts =
            experts.map(|t| ExpertDiagnostics::clean_only(class_labels(config.num_classes, names), &t));
        Ok(CleanEvaluation { counts, per_class, experts })
    }

    /// The test set under attack, then the sanity checks around it (`clean_correct` is the clean
    /// evaluation's count, which the attack at eps 0 must reproduce), with progress bars.
    /// `keep_images` keeps the adversarial images in the counts.
    pub fn robust(
        &self,
        kind: AttackKind,
        settings: &PgdConfig,
        batch_size: usize,
        clean_correct: usize,
        keep_images: bool,
    ) -> Result<(AdversarialReport, AttackCounts)> {
        let (model, weights, test) = (&self.model, &self.weights, &self.test);
        let n = test.len();
        let bar = progress::bar(n as u64, "image attacks");
        let counts =
            attack_dataset(model, weights, test, n, batch_size, kind, settings, keep_images, Some(&bar))?;
        bar.finish_and_clear();
        let subset = n.min(SANITY_IMAGES);
        let bar = progress::bar((n + 2 * subset) as u64, "image attacks (sanity checks)");
        let sanity = sanity_checks(
            model,
            weights,
            test,
            batch_size,
            kind,
            settings,
            &counts,
            clean_correct,
            Some(&bar),
        )?;
        bar.finish_and_clear();
        Ok((AdversarialReport::new(kind, *settings, &counts, sanity), counts))
    }

    /// Each attack in turn on the test set (see [`EvalJob::robust`]); `each` sees every report
    /// and its counts as it is made (to print it, or save its images).
    pub fn attacks(
        &self,
        attacks: &[(AttackKind, PgdConfig)],
        batch_size: usize,
        clean_correct: usize,
        keep_images: bool,
        mut each: impl FnMut(&AdversarialReport, &AttackCounts) -> Result<()>,
    ) -> Result<AttackReports> {
        let mut reports = AttackReports::new();
        for (kind, settings) in attacks {
            let (report, counts) = self.robust(*kind, settings, batch_size, clean_correct, keep_images)?;
            each(&report, &counts)?;
            reports.insert(*kind, report);
        }
        Ok(reports)
    }

    /// The clean test set and each of its corrupted versions, with a progress bar: the report
    /// (`described` names the corrupted images in it) and the clean images classified
    /// correctly. `predictions` receives every image's scores.
    pub fn corruptions(
        &self,
        corruptions: &[Corruption],
        severities: &[u8],
        source: &CorruptedSource,
        described: String,
        batch_size: usize,
        predictions: Option<&mut Predictions>,
    ) -> Result<(CorruptionReport, usize)> {
        // What the corruptions need (frost's photographs) first, so the rate counts only the work.
        crate::corrupt::prepare(corruptions)?;
        let passes = 1 + corruptions.len() * severities.len();
        let bar = progress::bar((self.test.len() * passes) as u64, "image evaluations");
        let counts = evaluate_corruptions(
            &self.model,
            &self.weights,
            &self.test,
            corruptions,
            severities,
            source,
            batch_size,
            Some(&bar),
            predictions,
        )?;
        bar.finish_and_clear();
        let mut report = CorruptionReport::new(self.run.clone(), described, &counts, severities);
        report.per_class = Some(PerClassReport::new(&counts.clean_confusion, self.test.class_names()));
        Ok((report, counts.clean))
    }
}
