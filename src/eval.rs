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
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::loss::count_correct;
use crate::predictions::{Condition, Predictions};
use crate::tensor::Tensor;

/// Class scores [B, K] of images [B, 32, 32, 3] in [0, 1]: evaluation mode, no gradients.
pub fn class_scores(model: &Model, weights: &Weights, images: Tensor) -> Result<Tensor> {
    let tape = Tape::no_grad();
    let params: Vec<_> = weights.params.iter().map(|p| tape.leaf(p.clone(), false)).collect();
    let x = tape.leaf(images.to_device(weights.device())?, false);
    let out = model.forward(&tape, &params, &mut weights.buffers.clone(), &x, false)?;
    Ok(model.scores(&tape, &out)?.value().clone())
}

/// Correctly classified images of `data`, evaluated in batches without gradients;
/// `predictions`, when given, receives every image's scores.
pub fn count_correct_on(
    model: &Model,
    weights: &Weights,
    data: &Dataset,
    batch_size: usize,
    progress: Option<&ProgressBar>,
    mut predictions: Option<&mut Predictions>,
) -> Result<usize> {
    let order = epoch_order(data.len(), false, 0, 0);
    let mut correct = 0;
    let mut first = 0;
    for idx in batches(&order, batch_size) {
        let batch = make_batch(data, idx, Augment::None, 0, 0);
        let images = Tensor::from_vec(&[batch.size, 32, 32, 3], batch.images);
        let scores = class_scores(model, weights, images)?;
        if let Some(p) = predictions.as_deref_mut() {
            p.record(Condition::Clean, first, &scores)?;
        }
        first += batch.size;
        correct += count_correct(&scores, &batch.labels)?;
        if let Some(pb) = progress {
            pb.inc(batch.size as u64);
        }
    }
    Ok(correct)
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
    /// With `--attack`: each attack, its settings, the robust accuracy and the sanity checks.
    #[serde(
        default,
        skip_serializing_if = "AttackReports::is_empty",
        deserialize_with = "deserialize_attack_reports"
    )]
    pub adversarial: AttackReports,
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
        out + &attack_rows_markdown(&self.adversarial) + &sanity_markdown(&self.adversarial)
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
