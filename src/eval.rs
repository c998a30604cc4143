//! Evaluation of a trained model: clean accuracy, and the report of `mocse eval` when it
//! evaluates no corruptions (clean, and under attack).

use anyhow::Result;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::attack::evaluate::{
    AttackReports, attack_rows_markdown, deserialize_attack_reports, sanity_markdown,
};
use crate::autograd::Tape;
use crate::data::{Augment, Dataset, batches, epoch_order, make_batch};
use crate::diagnostics::ExpertDiagnostics;
use crate::diagnostics::ExpertTally;
use crate::diagnostics::markdown::experts_markdown;
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::loss::predicted_classes;
use crate::predictions::{Condition, Predictions};
use crate::robustness::report_value;
use crate::tensor::Tensor;

/// Class scores [B, K] of images [B, 32, 32, 3] in [0, 1]: evaluation mode, no gradients.
pub fn class_scores(model: &Model, weights: &Weights, images: Tensor) -> Result<Tensor> {
    let tape = Tape::no_grad();
    let params: Vec<_> = weights.params.iter().map(|p| tape.leaf(p.clone(), false)).collect();
    let x = tape.leaf(images.to_device(weights.device())?, false);
    let out = model.forward(&tape, &params, &mut weights.buffers.clone(), &x, false)?;
    Ok(model.scores(&tape, &out)?.value().clone())
}

/// Images counted by true class (row) and predicted class (column).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionCounts(pub Vec<Vec<usize>>);

impl ConfusionCounts {
    pub fn new(classes: usize) -> ConfusionCounts {
        ConfusionCounts(vec![vec![0; classes]; classes])
    }

    /// Counts a batch: its class scores [B, K] and labels.
    pub fn add(&mut self, scores: &Tensor, labels: &[u32]) -> Result<()> {
        for (&p, &y) in predicted_classes(scores)?.iter().zip(labels) {
            self.0[y as usize][p as usize] += 1;
        }
        Ok(())
    }

    /// The images classified correctly.
    pub fn correct(&self) -> usize {
        self.0.iter().enumerate().map(|(i, row)| row[i]).sum()
    }
}

/// Accuracy per class and the confusion matrix of the clean test images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PerClassReport {
    /// The class names in label order.
    pub classes: Vec<String>,
    /// Per class: the fraction of its images classified correctly (null: no image of it).
    pub accuracy: Vec<Option<f64>>,
    /// Per class: its test images.
    pub images: Vec<usize>,
    /// `confusion[t][p]`: images of class t classified as p.
    pub confusion: Vec<Vec<usize>>,
}

impl PerClassReport {
    pub fn new(counts: &ConfusionCounts, names: &[&str]) -> PerClassReport {
        let images: Vec<usize> = counts.0.iter().map(|row| row.iter().sum()).collect();
        let accuracy = counts
            .0
            .iter()
            .enumerate()
            .map(|(i, row)| (images[i] > 0).then(|| report_value(row[i] as f64 / images[i] as f64)))
            .collect();
        let classes =
            (0..counts.0.len()).map(|i| names.get(i).map_or_else(|| i.to_string(), |n| n.to_string()));
        PerClassReport { classes: classes.collect(), accuracy, images, confusion: counts.0.clone() }
    }

    /// Accuracy per class, then the confusion matrix, as Markdown.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from(
            "## Per class (clean test images)\n\n| class | accuracy | images |\n|---|---:|---:|\n",
        );
        for ((name, accuracy), images) in self.classes.iter().zip(&self.accuracy).zip(&self.images) {
            let _ = writeln!(out, "| {name} | {} | {images} |", crate::robustness::pct(*accuracy));
        }
        let _ = writeln!(out, "\nConfusion matrix (rows: true class, columns: predicted class):\n");
        let _ = writeln!(out, "| | {} |", self.classes.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(self.classes.len()));
        for (name, row) in self.classes.iter().zip(&self.confusion) {
            let cells: Vec<String> = row.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(out, "| **{name}** | {} |", cells.join(" | "));
        }
        out
    }
}

/// The images of `data` counted by true and predicted class, evaluated in batches without
/// gradients; `predictions`, when given, receives every image's scores.
pub fn confusion_on(
    model: &Model,
    weights: &Weights,
    data: &Dataset,
    batch_size: usize,
    progress: Option<&ProgressBar>,
    predictions: Option<&mut Predictions>,
) -> Result<ConfusionCounts> {
    confusion_and_experts_on(model, weights, data, batch_size, progress, predictions, None)
}

/// [`confusion_on`], also counting every MoCSE expert's outcomes from the same scores into
/// `experts` when given.
pub fn confusion_and_experts_on(
    model: &Model,
    weights: &Weights,
    data: &Dataset,
    batch_size: usize,
    progress: Option<&ProgressBar>,
    mut predictions: Option<&mut Predictions>,
    mut experts: Option<&mut ExpertTally>,
) -> Result<ConfusionCounts> {
    let order = epoch_order(data.len(), false, 0, 0);
    let mut counts = ConfusionCounts::new(model.config.num_classes);
    let mut first = 0;
    for idx in batches(&order, batch_size) {
        let batch = make_batch(data, idx, Augment::None, 0, 0);
        let images = Tensor::from_vec(&[batch.size, 32, 32, 3], batch.images);
        let scores = class_scores(model, weights, images)?;
        if let Some(p) = predictions.as_deref_mut() {
            p.record(Condition::Clean, first, &scores)?;
        }
        first += batch.size;
        counts.add(&scores, &batch.labels)?;
        if let Some(e) = experts.as_deref_mut() {
            e.add(&scores, &batch.labels)?;
        }
        if let Some(pb) = progress {
            pb.inc(batch.size as u64);
        }
    }
    Ok(counts)
}

/// Which checkpoint was evaluated on what: the fields every evaluation report starts with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunDescription {
    pub model: String,
    pub model_description: String,
    pub run: String,
    /// `null` for a checkpoint that does not say (one saved outside mocse).
    pub checkpoint_epoch: Option<usize>,
    pub data: String,
    pub device: String,
}

impl RunDescription {
    /// "epoch 3", or "epoch unknown" for a checkpoint that does not say.
    pub fn epoch_text(&self) -> String {
        self.checkpoint_epoch.map_or_else(|| "epoch unknown".to_string(), |e| format!("epoch {e}"))
    }
}

/// What `mocse eval --json` writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    #[serde(flatten)]
    pub run: RunDescription,
    pub clean_accuracy: f64,
    pub num_images: usize,
    /// Accuracy per class and the confusion matrix of the clean images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<PerClassReport>,
    /// With `--attack`: each attack, its settings, the robust accuracy and the sanity checks.
    #[serde(
        default,
        skip_serializing_if = "AttackReports::is_empty",
        deserialize_with = "deserialize_attack_reports"
    )]
    pub adversarial: AttackReports,
    /// MoCSE: every expert as a binary classifier on the clean images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertDiagnostics>,
    pub mocse: String,
}

impl EvalReport {
    /// The clean accuracy and, with an attack, the robust accuracy (after each stage too), its
    /// settings and the sanity checks, as Markdown.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let r = &self.run;
        let mut out = format!("# Robust accuracy: {}\n\n", r.model_description);
        let _ = writeln!(
            out,
            "Run `{}` ({}), {} test images of {}, device {}.\n",
            r.run,
            r.epoch_text(),
            self.num_images,
            r.data,
            r.device
        );
        let _ = writeln!(out, "| condition | accuracy | images |\n|---|---:|---:|");
        let count = |accuracy: f64| (accuracy * self.num_images as f64).round() as usize;
        let _ = writeln!(
            out,
            "| clean | {:.2}% | {}/{} |",
            100.0 * self.clean_accuracy,
            count(self.clean_accuracy),
            self.num_images
        );
        out += &attack_rows_markdown(&self.adversarial);
        out += &sanity_markdown(&self.adversarial);
        if let Some(per_class) = &self.per_class {
            out += "\n";
            out += &per_class.to_markdown();
        }
        if let Some(experts) = &self.experts {
            out += "\n";
            out += &experts_markdown(experts);
        }
        out
    }

    /// One accuracy per line: `condition,accuracy,correct,images` (clean, each attack, and the
    /// robust images after each stage of an attack of several).
    pub fn to_csv(&self) -> String {
        use std::fmt::Write;
        let n = self.num_images;
        let mut out = String::from("condition,accuracy,correct,images\n");
        let clean = (self.clean_accuracy * n as f64).round() as usize;
        let _ = writeln!(out, "clean,{:.6},{clean},{n}", self.clean_accuracy);
        for adv in self.adversarial.values() {
            let _ = writeln!(out, "{},{:.6},{},{n}", adv.attack, adv.robust_accuracy, adv.robust_images);
            for stage in &adv.stages {
                let accuracy = stage.robust_images as f64 / n.max(1) as f64;
                let _ = writeln!(out, "after {},{accuracy:.6},{},{n}", stage.stage, stage.robust_images);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confusion_matrix_and_per_class_accuracy_of_a_hand_made_case() {
        // Three classes; rows of scores whose largest entry is the prediction.
        let scores = Tensor::from_vec(
            &[6, 3],
            vec![
                0.9, 0.1, 0.0, // label 0, predicted 0
                0.2, 0.7, 0.1, // label 0, predicted 1
                0.1, 0.8, 0.1, // label 1, predicted 1
                0.3, 0.3, 0.4, // label 1, predicted 2
                0.5, 0.5, 0.0, // label 1, predicted 0 (a tie goes to the lower class)
                0.0, 0.0, 1.0, // label 0, predicted 2
            ],
        );
        let mut counts = ConfusionCounts::new(3);
        counts.add(&scores, &[0, 0, 1, 1, 1, 0]).unwrap();
        assert_eq!(counts.0, vec![vec![1, 1, 1], vec![1, 1, 1], vec![0, 0, 0]]);
        assert_eq!(counts.correct(), 2);
        let report = PerClassReport::new(&counts, &["cat", "dog"]);
        assert_eq!(report.classes, ["cat", "dog", "2"]);
        assert_eq!(report.images, [3, 3, 0]);
        assert_eq!(report.accuracy, [Some(0.33333333), Some(0.33333333), None]);
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("| cat | 33.33% | 3 |") && markdown.contains("| 2 | n/a | 0 |"),
            "{markdown}"
        );
        assert!(markdown.contains("| **dog** | 1 | 1 | 1 |"), "{markdown}");
    }
}
