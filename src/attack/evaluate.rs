//! Robust accuracy of a model on a test set under an attack, batch by batch, and its report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use indicatif::ProgressBar;
use serde::{Deserialize, Deserializer, Serialize};

use crate::attack::apgd::{ApgdLoss, TARGET_CLASSES, apgd};
use crate::attack::pgd::pgd;
use crate::attack::{AttackKind, Norm, PgdConfig};
use crate::data::{Augment, Dataset, IMAGE_LEN, batches, make_batch};
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::robustness::report_value;
use crate::tensor::Tensor;

/// What an attack on a test set found.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackCounts {
    pub num_images: usize,
    /// Per image: withstood every iterate of every restart of every stage (and was classified
    /// correctly without attack).
    pub robust_flags: Vec<bool>,
    pub robust: usize,
    /// Images whose input gradient was exactly zero at the first step of the first stage.
    pub zero_gradient: usize,
    /// Per image: the class predicted for its adversarial version.
    pub predicted: Vec<u32>,
    /// With `keep_images`: the adversarial images, [N, 32, 32, 3] in [0, 1] (see
    /// [`crate::attack::outcome::AttackOutcome::adversarial`]); empty otherwise.
    pub adversarial: Vec<f32>,
    /// Robust images after each stage of the attack (one stage for PGD, APGD-CE and APGD-DLR;
    /// a stage per target class for APGD-T; APGD-CE then each target for aa-lite).
    pub robust_after_stage: Vec<StageCount>,
}

/// Images still robust after one stage of an attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCount {
    pub stage: String,
    pub robust_images: usize,
}

/// One attack on a set of images: PGD, or APGD with one loss.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Pgd,
    Apgd(ApgdLoss),
}

impl Stage {
    fn name(self) -> String {
        match self {
            Stage::Pgd => "pgd".into(),
            Stage::Apgd(ApgdLoss::CrossEntropy) => "apgd-ce".into(),
            Stage::Apgd(ApgdLoss::Dlr) => "apgd-dlr".into(),
            Stage::Apgd(ApgdLoss::DlrTargeted { rank }) => format!("apgd-t (target ranked {})", rank + 1),
        }
    }
}

/// The stages of an attack, each run on the images the stages before left robust.
fn stages(kind: AttackKind, num_classes: usize) -> Vec<Stage> {
    let targeted =
        (1..=TARGET_CLASSES.min(num_classes - 1)).map(|rank| Stage::Apgd(ApgdLoss::DlrTargeted { rank }));
    match kind {
        AttackKind::Pgd => vec![Stage::Pgd],
        AttackKind::ApgdCe => vec![Stage::Apgd(ApgdLoss::CrossEntropy)],
        AttackKind::ApgdDlr => vec![Stage::Apgd(ApgdLoss::Dlr)],
        AttackKind::ApgdT => targeted.collect(),
        AttackKind::AaLite => std::iter::once(Stage::Apgd(ApgdLoss::CrossEntropy)).chain(targeted).collect(),
    }
}

/// Attacks the first `count` images of `data` with `kind`, `batch_size` at a time; an image's
/// random starts are keyed by its index in `data`, so the result does not depend on the batch
/// size or on which images share a batch. `keep_images` keeps the adversarial images. A
/// progress bar counts image attacks: its length grows by each later stage's images.
#[allow(clippy::too_many_arguments)]
pub fn attack_dataset(
    model: &Model,
    weights: &Weights,
    data: &Dataset,
    count: usize,
    batch_size: usize,
    kind: AttackKind,
    cfg: &PgdConfig,
    keep_images: bool,
    progress: Option<&ProgressBar>,
) -> Result<AttackCounts> {
    let n = count.min(data.len());
    let all_labels = data.labels();
    let mut counts = AttackCounts {
        num_images: n,
        robust_flags: vec![true; n],
        robust: 0,
        zero_gradient: 0,
        predicted: all_labels[..n].iter().map(|&y| u32::from(y)).collect(),
        adversarial: if keep_images { vec![0.0; n * IMAGE_LEN] } else { Vec::new() },
        robust_after_stage: Vec::new(),
    };
    let stages = stages(kind, model.config.num_classes);
    anyhow::ensure!(
        !stages.is_empty(),
        "{kind} needs at least 3 classes, the model has {}",
        model.config.num_classes
    );
    for (s, &stage) in stages.iter().enumerate() {
        let todo: Vec<usize> = (0..n).filter(|&i| counts.robust_flags[i]).collect();
        if let Some(pb) = progress.filter(|_| s > 0) {
            pb.inc_length(todo.len() as u64);
        }
        for idx in batches(&todo, batch_size) {
            let batch = make_batch(data, idx, Augment::None, 0, 0);
            let images = Tensor::from_vec(&[batch.size, 32, 32, 3], batch.images);
            let index: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            let outcome = match stage {
                Stage::Pgd => pgd(model, weights, &images, &batch.labels, &index, cfg)?,
                Stage::Apgd(loss) => apgd(model, weights, &images, &batch.labels, &index, cfg, loss)?,
            };
            for (j, &i) in idx.iter().enumerate() {
                counts.robust_flags[i] = outcome.robust[j];
                counts.predicted[i] = outcome.predicted[j];
                if keep_images {
                    counts.adversarial[i * IMAGE_LEN..(i + 1) * IMAGE_LEN]
                        .copy_from_slice(&outcome.adversarial[j * IMAGE_LEN..(j + 1) * IMAGE_LEN]);
                }
            }
            if s == 0 {
                counts.zero_gradient += outcome.zero_gradient;
            }
            if let Some(pb) = progress {
                pb.inc(batch.size as u64);
            }
        }
        let robust = counts.robust_flags.iter().filter(|&&r| r).count();
        counts.robust_after_stage.push(StageCount { stage: stage.name(), robust_images: robust });
    }
    counts.robust = counts.robust_flags.iter().filter(|&&r| r).count();
    Ok(counts)
}

/// Images the sanity checks attack again: the first of the test set.
pub const SANITY_IMAGES: usize = 100;

/// Checks that catch an evaluation fooled by gradient masking or a broken attack (Carlini et
/// al. 2019, "On evaluating adversarial robustness"): at eps 0 the attack must give the clean
/// accuracy; doubling eps must not raise the accuracy; a ball that holds the grey image must
/// leave almost nothing standing; few images may have a zero input gradient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SanityReport {
    /// The attack at eps 0 (one step), on every image: equals the clean accuracy.
    pub eps_zero_accuracy: f64,
    /// The first images of the test set, attacked again below.
    pub subset_images: usize,
    /// Of those, robust under the evaluated attack.
    pub robust_on_subset: usize,
    /// Of those, robust at twice the eps (and twice the step): at most `robust_on_subset`.
    pub double_eps_robust_on_subset: usize,
    /// An eps whose ball holds the all-grey image (0.5 for L-infinity, 0.5 * sqrt(3072) for L2).
    pub large_eps: f32,
    /// Of the subset, robust at `large_eps`: at most chance.
    pub large_eps_robust_on_subset: usize,
    pub zero_gradient_images: usize,
    /// What failed; empty when every check passed.
    pub warnings: Vec<String>,
}

impl SanityReport {
    /// One sentence: `eps 0 gives 45.00%; of the first 100 images ...`.
    pub fn summary(&self) -> String {
        format!(
            "eps 0 gives {:.2}%; of the first {} images {} robust, {} at twice eps, {} at eps {}; {} images with an \
             all-zero input gradient",
            100.0 * self.eps_zero_accuracy,
            self.subset_images,
            self.robust_on_subset,
            self.double_eps_robust_on_subset,
            self.large_eps_robust_on_subset,
            self.large_eps,
            self.zero_gradient_images
        )
    }
}

/// Runs the sanity checks around an attack that gave `counts` with `settings` on `data`, whose
/// clean accuracy is `clean_correct` images.
#[allow(clippy::too_many_arguments)]
pub fn sanity_checks(
    model: &Model,
    weights: &Weights,
    data: &Dataset,
    batch_size: usize,
    kind: AttackKind,
    settings: &PgdConfig,
    counts: &AttackCounts,
    clean_correct: usize,
    progress: Option<&ProgressBar>,
) -> Result<SanityReport> {
    let n = counts.num_images;
    let at_zero = PgdConfig { eps: 0.0, steps: 1, restarts: 1, ..*settings };
    let zero = attack_dataset(model, weights, data, n, batch_size, kind, &at_zero, false, progress)?;
    let subset = n.min(SANITY_IMAGES);
    let double = PgdConfig { eps: 2.0 * settings.eps, alpha: 2.0 * settings.alpha, ..*settings };
    let large_eps = match settings.norm {
        Norm::Linf => 0.5,
        Norm::L2 => 0.5 * (IMAGE_LEN as f32).sqrt(),
    };
    let large =
        PgdConfig { eps: large_eps, alpha: large_eps / 4.0, steps: settings.steps.max(10), ..*settings };
    let doubled = attack_dataset(model, weights, data, subset, batch_size, kind, &double, false, progress)?;
    let at_large = attack_dataset(model, weights, data, subset, batch_size, kind, &large, false, progress)?;
    let robust_on_subset = counts.robust_flags[..subset].iter().filter(|&&r| r).count();
    let mut warnings = Vec::new();
    if zero.robust != clean_correct {
        warnings.push(format!(
            "at eps 0 the attack gives {} correct images, the clean evaluation {clean_correct}: the attack or the \
             evaluation is broken",
            zero.robust
        ));
    }
    if doubled.robust > robust_on_subset {
        warnings.push(format!(
            "twice the eps leaves more images robust ({} of the first {subset}) than eps itself ({robust_on_subset}): \
             the attack is not converging; try more --steps or --restarts",
            doubled.robust
        ));
    }
    let chance = subset.div_ceil(model.config.num_classes);
    if at_large.robust > chance {
        warnings.push(format!(
            "at eps {large_eps} (a ball holding the all-grey image) {} of the first {subset} images stay robust, \
             more than chance: the gradients are masked and the robust accuracy overstates robustness",
            at_large.robust
        ));
    }
    if counts.zero_gradient * 100 > n {
        warnings.push(format!(
            "{} of {n} images had an all-zero input gradient (saturated scores mask the gradient; with `--aggregate \
             prob` the cross-entropy of probabilities saturates)",
            counts.zero_gradient
        ));
    }
    Ok(SanityReport {
        eps_zero_accuracy: report_value(zero.robust as f64 / n.max(1) as f64),
        subset_images: subset,
        robust_on_subset,
        double_eps_robust_on_subset: doubled.robust,
        large_eps,
        large_eps_robust_on_subset: at_large.robust,
        zero_gradient_images: counts.zero_gradient,
        warnings,
    })
}

/// The `adversarial` block of an evaluation report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdversarialReport {
    pub attack: AttackKind,
    #[serde(flatten)]
    pub settings: PgdConfig,
    pub num_images: usize,
    /// Images that withstood the attack, and their fraction.
    pub robust_images: usize,
    pub robust_accuracy: f64,
    /// Attacks of several stages (APGD-T, aa-lite): the robust images after each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageCount>,
    pub sanity: SanityReport,
}

impl AdversarialReport {
    pub fn new(
        attack: AttackKind,
        settings: PgdConfig,
        counts: &AttackCounts,
        sanity: SanityReport,
    ) -> AdversarialReport {
        AdversarialReport {
            attack,
            settings,
            num_images: counts.num_images,
            robust_images: counts.robust,
            robust_accuracy: report_value(counts.robust as f64 / counts.num_images.max(1) as f64),
            stages: if counts.robust_after_stage.len() > 1 {
                counts.robust_after_stage.clone()
            } else {
                Vec::new()
            },
            sanity,
        }
    }

    /// One line: `pgd linf eps 8/255 ...: robust accuracy 12.34% (123/1000 images)`.
    pub fn summary(&self) -> String {
        format!(
            "{}: robust accuracy {:.2}% ({}/{} images)",
            self.settings_text(),
            100.0 * self.robust_accuracy,
            self.robust_images,
            self.num_images,
        )
    }

    /// The attack and every setting: `pgd linf eps 8/255 alpha 2/255 steps 20 restarts 1 (batch
    /// norm eval, seed 0)`.
    pub fn settings_text(&self) -> String {
        let s = &self.settings;
        // APGD's alpha is its first step size, halved as the attack goes.
        let step = if self.attack.is_apgd() { "first step" } else { "alpha" };
        format!(
            "{} {} eps {} {step} {} steps {} restarts {} (batch norm {}, seed {}{})",
            self.attack,
            s.norm,
            pixel_amount_text(s.eps),
            pixel_amount_text(s.alpha),
            s.steps,
            s.restarts,
            s.bn,
            s.seed,
            if s.random_start { "" } else { ", no random start" },
        )
    }
}

/// Every attack of one evaluation, in [`AttackKind`] order: a report's `adversarial` block,
/// `{"pgd": {...}, "aa-lite": {...}}`.
pub type AttackReports = BTreeMap<AttackKind, AdversarialReport>;

/// Reads a report's `adversarial` block. A report written when a report held one attack holds
/// that attack's block itself, and reads as that attack. Each block must name the attack it is
/// filed under.
pub fn deserialize_attack_reports<'de, D: Deserializer<'de>>(d: D) -> Result<AttackReports, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Several(AttackReports),
        One(AdversarialReport),
    }
    let reports = match Stored::deserialize(d)? {
        Stored::Several(reports) => reports,
        Stored::One(report) => BTreeMap::from([(report.attack, report)]),
    };
    if let Some((kind, report)) = reports.iter().find(|(kind, report)| **kind != report.attack) {
        return Err(serde::de::Error::custom(format!(
            "adversarial.{kind} holds the results of {}",
            report.attack
        )));
    }
    Ok(reports)
}

/// Markdown rows `| attack and settings | accuracy | robust/images |` (and the robust images
/// after each stage of an attack of several), for a table of condition, accuracy and images.
pub fn attack_rows_markdown(reports: &AttackReports) -> String {
    let mut out = String::new();
    for adv in reports.values() {
        let _ = writeln!(
            out,
            "| {} | {:.2}% | {}/{} |",
            adv.settings_text(),
            100.0 * adv.robust_accuracy,
            adv.robust_images,
            adv.num_images
        );
        for stage in &adv.stages {
            let _ = writeln!(out, "| after {} | | {}/{} |", stage.stage, stage.robust_images, adv.num_images);
        }
    }
    out
}

/// Each attack's sanity checks and warnings, as Markdown paragraphs.
pub fn sanity_markdown(reports: &AttackReports) -> String {
    let mut out = String::new();
    for adv in reports.values() {
        let s = &adv.sanity;
        let _ = writeln!(out, "\nSanity checks of {}: {}.", adv.attack, s.summary());
        for w in &s.warnings {
            let _ = writeln!(out, "\n**Warning:** {w}");
        }
    }
    out
}

/// `8/255` (or `0.5/255`) when the amount is a whole number of quarter 255ths, else the number.
pub fn pixel_amount_text(v: f32) -> String {
    let quarters = v as f64 * 255.0 * 4.0;
    if (quarters - quarters.round()).abs() < 4e-4 && quarters.round() != 0.0 {
        format!("{}/255", quarters.round() / 4.0)
    } else {
        format!("{v}")
    }
}

/// Writes an attack's results for re-checking elsewhere, as `.npz`: `images` float32
/// (N, 32, 32, 3) in [0, 1] (the adversarial images), `labels`, `predicted` (the class predicted
/// on each adversarial image) and `robust` (1 where the image withstood the attack), uint8.
/// The model classifies exactly the `robust` images of `images` correctly.
pub fn save_adversarial(path: &std::path::Path, counts: &AttackCounts, labels: &[u8]) -> Result<()> {
    use crate::npy::{npy_bytes, write_npz};
    let n = counts.num_images;
    anyhow::ensure!(counts.adversarial.len() == n * IMAGE_LEN, "internal: adversarial images were not kept");
    let predicted: Vec<u8> = counts.predicted.iter().map(|&p| p as u8).collect();
    let robust: Vec<u8> = counts.robust_flags.iter().map(|&r| r as u8).collect();
    write_npz(
        path,
        &[
            ("images".to_string(), npy_bytes(&[n, 32, 32, 3], &counts.adversarial)?),
            ("labels".to_string(), npy_bytes(&[n], &labels[..n])?),
            ("predicted".to_string(), npy_bytes(&[n], &predicted)?),
            ("robust".to_string(), npy_bytes(&[n], &robust)?),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::pixel_amount_text;

    #[test]
    fn pixel_amounts_print_as_255ths_when_they_are() {
        assert_eq!(pixel_amount_text(8.0 / 255.0), "8/255");
        assert_eq!(pixel_amount_text(0.5 / 255.0), "0.5/255");
        assert_eq!(pixel_amount_text(2.25 / 255.0), "2.25/255");
        assert_eq!(pixel_amount_text(0.007), "0.007");
        assert_eq!(pixel_amount_text(0.0), "0");
    }
}
