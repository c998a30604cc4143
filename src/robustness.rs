//! Corruption robustness evaluation: accuracy on the clean test set and on every (corruption,
//! severity) pair, with the corrupted images generated on the device batch by batch or read from
//! CIFAR-10-C files, and the report in JSON, Markdown and CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Result, bail, ensure};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::attack::evaluate::{
    AttackReports, attack_rows_markdown, deserialize_attack_reports, sanity_markdown,
};
use crate::corrupt::{Corruption, Group, SEVERITIES, StreamKey, corrupt, upload_images};
use crate::data::cifar10c::Cifar10C;
use crate::data::{Dataset, IMAGE_LEN};
use crate::diagnostics::markdown::{experts_markdown, predicted_share_markdown};
use crate::diagnostics::{DiagnosticCounts, ExpertDiagnostics, validate_class_map};
use crate::eval::{ConfusionCounts, PerClassReport, RunDescription, class_scores};
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::elementwise::scale_tensor;
use crate::ops::loss::count_correct;
use crate::predictions::{Condition, Predictions};
use crate::tensor::Tensor;

/// Where the corrupted images come from.
pub enum CorruptedSource<'a> {
    /// Generated on the device from the clean test images with this seed.
    Generate { seed: u64 },
    /// Read from CIFAR-10-C files (labels checked against the test set's).
    Files(&'a Cifar10C),
}

/// Correct predictions: clean and per (corruption, severity), over `num_images` each.
#[derive(Debug, Clone, PartialEq)]
pub struct CorruptionCounts {
    pub num_images: usize,
    pub clean: usize,
    /// The clean images by true and predicted class.
    pub clean_confusion: ConfusionCounts,
    pub corrupted: BTreeMap<(Corruption, u8), usize>,
    /// The predicted classes per condition and, for MoCSE, the experts' outcomes.
    pub diagnostics: DiagnosticCounts,
}

/// Evaluates `model` on `test` and on its corrupted versions; `predictions`, when given,
/// receives every image's scores.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_corruptions(
    model: &Model,
    weights: &Weights,
    test: &Dataset,
    corruptions: &[Corruption],
    severities: &[u8],
    source: &CorruptedSource,
    batch_size: usize,
    progress: Option<&ProgressBar>,
    mut predictions: Option<&mut Predictions>,
) -> Result<CorruptionCounts> {
    let device = weights.device();
    let n = test.len();
    let mut counts = CorruptionCounts {
        num_images: n,
        clean: 0,
        clean_confusion: ConfusionCounts::new(model.config.num_classes),
        corrupted: BTreeMap::new(),
        diagnostics: DiagnosticCounts::for_model(&model.config, test.class_names()),
    };
    let labels = test.labels();
    let files = match source {
        CorruptedSource::Files(dir) => {
            if dir.images_per_severity() < n {
                bail!(
                    "{} holds {} images per severity; the test set has {n}",
                    dir.dir().display(),
                    dir.images_per_severity()
                );
            }
            if dir.labels()[..n] != labels[..] {
                bail!(
                    "the labels of {} do not match the test set's: not the same images",
                    dir.dir().display()
                );
            }
            if let Some(s) = severities.iter().find(|s| !dir.severities().contains(s)) {
                bail!("{} holds severities {:?}, not {s}", dir.dir().display(), dir.severities());
            }
            corruptions.iter().map(|&c| dir.open_corruption(c)).collect::<Result<Vec<_>>>()?
        }
        CorruptedSource::Generate { .. } => {
            crate::corrupt::prepare(corruptions)?;
            Vec::new()
        }
    };
    let mut pixels = vec![0u8; batch_size.min(n) * IMAGE_LEN];
    for first in (0..n).step_by(batch_size) {
        let count = batch_size.min(n - first);
        let batch_labels: Vec<u32> = labels[first..first + count].iter().map(|&l| u32::from(l)).collect();
        test.images_u8(first, &mut pixels[..count * IMAGE_LEN]);
        let clean = upload_images(&pixels[..count * IMAGE_LEN], device)?;
        // The class scores of a condition, recorded as predictions when asked.
        let mut judge = |condition: Condition, images: &Tensor| -> Result<Tensor> {
            let scores = scores_on(model, weights, images)?;
            if let Some(p) = predictions.as_deref_mut() {
                p.record(condition, first, &scores)?;
            }
            Ok(scores)
        };
        let clean_scores = judge(Condition::Clean, &clean)?;
        counts.clean_confusion.add(&clean_scores, &batch_labels)?;
        counts.diagnostics.add_clean(&clean_scores, &batch_labels)?;
        counts.clean += count_correct(&clean_scores, &batch_labels)?;
        tick(progress, count);
        for (k, &c) in corruptions.iter().enumerate() {
            for &s in severities {
                let corrupted = match source {
                    CorruptedSource::Generate { seed } => {
                        corrupt(&clean, c, s, StreamKey { seed: *seed, first_image: first as u64 })?
                    }
                    CorruptedSource::Files(_) => upload_images(files[k].images(s, first, count)?, device)?,
                };
                let scores = judge(Condition::Corrupted(c, s), &corrupted)?;
                *counts.corrupted.entry((c, s)).or_default() += count_correct(&scores, &batch_labels)?;
                counts.diagnostics.add_corrupted(c, s, &scores, &batch_labels)?;
                tick(progress, count);
            }
        }
    }
    Ok(counts)
}

fn tick(progress: Option<&ProgressBar>, count: usize) {
    if let Some(pb) = progress {
        pb.inc(count as u64);
    }
}

/// Class scores of images of 0..255 values.
fn scores_on(model: &Model, weights: &Weights, images: &Tensor) -> Result<Tensor> {
    class_scores(model, weights, scale_tensor(images, 1.0 / 255.0)?)
}

/// What `mocse eval --corruptions` reports. Accuracies are fractions in [0, 1].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CorruptionReport {
    #[serde(flatten)]
    pub context: RunDescription,
    /// "generated on DEVICE (seed S)" or "cifar10c:DIR".
    pub corrupted_images: String,
    pub num_images: usize,
    pub severities: Vec<u8>,
    pub clean_accuracy: f64,
    /// corruption name -> severity ("1".."5") or "mean" -> accuracy.
    pub corruptions: BTreeMap<String, BTreeMap<String, f64>>,
    /// Severity -> mean accuracy over the evaluated corruptions.
    pub per_severity: BTreeMap<String, f64>,
    /// Group (Noise, Blur, Weather, Digital) -> mean over its evaluated corruptions.
    pub per_group: BTreeMap<String, f64>,
    /// Mean over all 19 corruptions; null unless all 19 were evaluated.
    pub mean_19: Option<f64>,
    /// Mean over the 15 benchmark corruptions (RobustBench); null unless all 15 were evaluated.
    pub mean_15: Option<f64>,
    /// Accuracy per class and the confusion matrix of the clean images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<PerClassReport>,
    /// With `--attack`: each attack on the clean test images, as in an evaluation report.
    #[serde(
        default,
        skip_serializing_if = "AttackReports::is_empty",
        deserialize_with = "deserialize_attack_reports"
    )]
    pub adversarial: AttackReports,
    /// "clean" or a corruption name -> the share of its images (all its severities) predicted as
    /// each class, in class order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub predicted_class_share: BTreeMap<String, Vec<f64>>,
    /// MoCSE: every expert as a binary classifier, clean and per corruption group, and its mean
    /// probability per corruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertDiagnostics>,
    pub mocse: String,
}

/// A report's number: rounded to 8 decimals (0.4296, not the summation's 0.42960000000000004;
/// 2/30 as 0.06666667). The change, below 5e-9, is far under one image of any test set, and the
/// reports carry the image counts for exact recomputation.
pub fn report_value(x: f64) -> f64 {
    (x * 1e8).round() / 1e8
}

fn mean(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.into_iter().fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| report_value(sum / n as f64))
}

impl CorruptionReport {
    pub fn new(
        context: RunDescription,
        corrupted_images: String,
        counts: &CorruptionCounts,
        severities: &[u8],
    ) -> CorruptionReport {
        let n = counts.num_images as f64;
        let evaluated: Vec<Corruption> =
            Corruption::ALL.into_iter().filter(|&c| counts.corrupted.keys().any(|&(k, _)| k == c)).collect();
        let accuracy = |c: Corruption, s: u8| report_value(counts.corrupted[&(c, s)] as f64 / n);
        let corruption_mean = |c: Corruption| mean(severities.iter().map(|&s| accuracy(c, s))).unwrap_or(0.0);
        let corruptions = evaluated
            .iter()
            .map(|&c| {
                let mut row: BTreeMap<String, f64> =
                    severities.iter().map(|&s| (s.to_string(), accuracy(c, s))).collect();
                row.insert("mean".into(), corruption_mean(c));
                (c.name().to_string(), row)
            })
            .collect();
        let per_severity = severities
            .iter()
            .filter_map(|&s| Some((s.to_string(), mean(evaluated.iter().map(|&c| accuracy(c, s)))?)))
            .collect();
        let per_group = Group::ALL
            .iter()
            .filter_map(|&g| {
                Some((
                    g.name().to_string(),
                    mean(evaluated.iter().filter(|c| c.group() == g).map(|&c| corruption_mean(c)))?,
                ))
            })
            .collect();
        let all_of = |set: &mut dyn Iterator<Item = Corruption>| -> Option<f64> {
            let set: Vec<Corruption> = set.collect();
            set.iter()
                .all(|c| evaluated.contains(c))
                .then(|| mean(set.iter().map(|&c| corruption_mean(c))))?
        };
        CorruptionReport {
            context,
            corrupted_images,
            num_images: counts.num_images,
            severities: severities.to_vec(),
            clean_accuracy: report_value(counts.clean as f64 / n),
            corruptions,
            per_severity,
            per_group,
            mean_19: all_of(&mut Corruption::ALL.into_iter()),
            mean_15: all_of(&mut Corruption::ALL.into_iter().filter(|c| c.is_benchmark())),
            per_class: None,
            adversarial: AttackReports::new(),
            predicted_class_share: counts.diagnostics.predicted_class_share(),
            experts: counts.diagnostics.expert_diagnostics(),
            mocse: crate::BUILD.to_string(),
        }
    }

    /// The class names: those of the per-class report, else the experts', else numbers.
    pub fn class_names(&self) -> Vec<String> {
        if let Some(p) = &self.per_class {
            return p.classes.clone();
        }
        if let Some(e) = &self.experts {
            return e.classes.clone();
        }
        let k = self.predicted_class_share.values().map(Vec::len).max().unwrap_or(0);
        (0..k).map(|i| i.to_string()).collect()
    }

    /// The evaluated corruptions in table order.
    pub fn evaluated(&self) -> Vec<Corruption> {
        Corruption::ALL.into_iter().filter(|c| self.corruptions.contains_key(c.name())).collect()
    }

    /// Checks a report read from a file: every accuracy is a fraction in [0, 1] (a report with
    /// percentages, say 7.5 for 7.5%, would otherwise be drawn as 750%), the corruption names and
    /// severity keys are known ones.
    pub fn validate(&self) -> Result<()> {
        let fraction = |what: String, v: f64| -> Result<()> {
            ensure!(
                v.is_finite() && (0.0..=1.0).contains(&v),
                "{what} is {v}; accuracies in a report are fractions between 0 and 1"
            );
            Ok(())
        };
        fraction("clean_accuracy".into(), self.clean_accuracy)?;
        for (name, by_severity) in &self.corruptions {
            ensure!(
                Corruption::ALL.iter().any(|c| c.name() == name),
                "corruptions.{name} is not one of the 19 corruptions"
            );
            for (key, &v) in by_severity {
                ensure!(
                    key == "mean" || key.parse::<u8>().is_ok_and(|s| SEVERITIES.contains(&s)),
                    "corruptions.{name}.{key}: expected a severity 1-5 or \"mean\""
                );
                fraction(format!("corruptions.{name}.{key}"), v)?;
            }
        }
        for (map, what) in [(&self.per_severity, "per_severity"), (&self.per_group, "per_group")] {
            for (key, &v) in map {
                fraction(format!("{what}.{key}"), v)?;
            }
        }
        for (v, what) in [(self.mean_15, "mean_15"), (self.mean_19, "mean_19")] {
            if let Some(v) = v {
                fraction(what.into(), v)?;
            }
        }
        for (kind, adv) in &self.adversarial {
            fraction(format!("adversarial.{kind}.robust_accuracy"), adv.robust_accuracy)?;
            ensure!(
                adv.robust_images <= adv.num_images,
                "adversarial.{kind}: {} robust images of {}",
                adv.robust_images,
                adv.num_images
            );
        }
        ensure!(
            self.severities.iter().all(|s| SEVERITIES.contains(s)),
            "severities {:?} are not within 1-5",
            self.severities
        );
        self.validate_diagnostics()
    }

    /// The per-class parts agree on the number of classes; shares and expert numbers are
    /// fractions under known names.
    fn validate_diagnostics(&self) -> Result<()> {
        let classes = [
            self.per_class.as_ref().map(|p| p.classes.len()),
            self.experts.as_ref().map(|e| e.classes.len()),
            self.predicted_class_share.values().next().map(Vec::len),
        ];
        let k = classes.iter().flatten().copied().next().unwrap_or(0);
        ensure!(
            classes.iter().flatten().all(|&c| c == k),
            "per_class, experts and predicted_class_share name different numbers of classes"
        );
        if let Some(p) = &self.per_class {
            ensure!(
                p.accuracy.len() == k && p.images.len() == k && p.confusion.iter().all(|r| r.len() == k),
                "per_class does not hold one entry per class"
            );
            ensure!(p.confusion.len() == k, "per_class.confusion does not hold a row per class");
        }
        validate_class_map(&self.predicted_class_share, k, "predicted_class_share", true)?;
        if let Some(e) = &self.experts {
            e.validate()?;
        }
        Ok(())
    }

    /// Accuracy of `c` at severity `s` (or "mean").
    pub fn accuracy(&self, c: Corruption, key: &str) -> Option<f64> {
        self.corruptions.get(c.name())?.get(key).copied()
    }

    /// A Markdown table: a row per corruption (grouped), columns severities and mean; then the
    /// per-severity means and the overall means. Percentages with two decimals.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let ctx = &self.context;
        let _ = writeln!(out, "# Corruption robustness: {}\n", ctx.model_description);
        let _ = writeln!(
            out,
            "Run `{}` ({}), {} test images of {}, corrupted images {}, device {}.\n",
            ctx.run,
            ctx.epoch_text(),
            self.num_images,
            ctx.data,
            self.corrupted_images,
            ctx.device
        );
        let _ = writeln!(out, "Clean accuracy: **{}**\n", pct(Some(self.clean_accuracy)));
        let sev: Vec<String> = self.severities.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(
            out,
            "| group | corruption | {} | mean |",
            sev.iter().map(|s| format!("s{s}")).collect::<Vec<_>>().join(" | ")
        );
        let _ = writeln!(out, "|---|---|{}---:|", "---:|".repeat(sev.len()));
        for c in self.evaluated() {
            let cells: Vec<String> = sev.iter().map(|s| pct(self.accuracy(c, s))).collect();
            let name = if c.is_benchmark() { c.name().to_string() } else { format!("{} (extra)", c.name()) };
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} |",
                c.group().name(),
                cells.join(" | "),
                pct(self.accuracy(c, "mean"))
            );
        }
        let cells: Vec<String> = sev.iter().map(|s| pct(self.per_severity.get(s).copied())).collect();
        let _ = writeln!(out, "| | **mean per severity** | {} | |", cells.join(" | "));
        let _ = writeln!(out);
        for g in Group::ALL {
            if let Some(v) = self.per_group.get(g.name()) {
                let _ = writeln!(out, "- {} mean: {}", g.name(), pct(Some(*v)));
            }
        }
        let _ = writeln!(out, "- mean over the 15 benchmark corruptions: {}", pct(self.mean_15));
        let _ = writeln!(out, "- mean over all 19 corruptions: {}", pct(self.mean_19));
        if !self.adversarial.is_empty() {
            let _ = writeln!(out, "\n## Under attack (the clean test images)\n");
            let _ = writeln!(out, "| condition | accuracy | images |\n|---|---:|---:|");
            out += &attack_rows_markdown(&self.adversarial);
            out += &sanity_markdown(&self.adversarial);
        }
        if let Some(per_class) = &self.per_class {
            out += "\n";
            out += &per_class.to_markdown();
        }
        if !self.predicted_class_share.is_empty() {
            out += "\n";
            out += &predicted_share_markdown(&self.class_names(), &self.predicted_class_share);
        }
        if let Some(experts) = &self.experts {
            out += "\n";
            out += &experts_markdown(experts);
        }
        out
    }

    /// Long-format CSV: `corruption,group,benchmark,severity,accuracy`, with `clean`, the means
    /// (severity `mean` or `all`) and each attack (group `adversarial`) as rows of their own.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("corruption,group,benchmark,severity,accuracy\n");
        let _ = writeln!(out, "clean,,,,{:.6}", self.clean_accuracy);
        for c in self.evaluated() {
            for key in self.severities.iter().map(|s| s.to_string()).chain(["mean".to_string()]) {
                if let Some(v) = self.accuracy(c, &key) {
                    let _ =
                        writeln!(out, "{},{},{},{key},{v:.6}", c.name(), c.group().name(), c.is_benchmark());
                }
            }
        }
        for (s, v) in &self.per_severity {
            let _ = writeln!(out, "mean_per_severity,,,{s},{v:.6}");
        }
        for (g, v) in &self.per_group {
            let _ = writeln!(out, "mean_group,{g},,all,{v:.6}");
        }
        if let Some(v) = self.mean_15 {
            let _ = writeln!(out, "mean_15,,true,all,{v:.6}");
        }
        if let Some(v) = self.mean_19 {
            let _ = writeln!(out, "mean_19,,,all,{v:.6}");
        }
        for (kind, adv) in &self.adversarial {
            let _ = writeln!(out, "{kind},adversarial,,all,{:.6}", adv.robust_accuracy);
        }
        out
    }
}

/// `12.34%`, or `n/a`.
pub fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.2}%", 100.0 * v))
}
