//! What an attack found on a batch, and the rule that decides it: an image is broken when any
//! iterate of any restart (the clean image included) is misclassified by the model in
//! evaluation mode, not only the last iterate or the highest-loss one.

use anyhow::Result;

use crate::attack::BnMode;
use crate::eval::class_scores;
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::loss::predicted_classes;
use crate::tensor::Tensor;

/// The result of an attack on a batch.
pub struct AttackOutcome {
    /// Per image: classified correctly at every iterate of every restart.
    pub robust: Vec<bool>,
    /// The first misclassified iterate of each broken image, the last iterate of the last
    /// restart of each robust one; [B, 32, 32, 3] in [0, 1], on the host.
    pub adversarial: Vec<f32>,
    /// The class predicted for each image's adversarial version.
    pub predicted: Vec<u32>,
    /// Images whose input gradient was exactly zero at the first step: no direction to follow
    /// (saturated scores mask the gradient).
    pub zero_gradient: usize,
}

/// Builds an [`AttackOutcome`] iterate by iterate.
pub struct Judge<'a> {
    labels: &'a [u32],
    per_image: usize,
    pub outcome: AttackOutcome,
}

impl<'a> Judge<'a> {
    pub fn new(labels: &'a [u32], images: &Tensor) -> Judge<'a> {
        let batch = labels.len();
        Judge {
            labels,
            per_image: images.len() / batch.max(1),
            outcome: AttackOutcome {
                robust: vec![true; batch],
                adversarial: vec![0.0; images.len()],
                predicted: labels.to_vec(),
                zero_gradient: 0,
            },
        }
    }

    pub fn any_robust(&self) -> bool {
        self.outcome.robust.iter().any(|&r| r)
    }

    /// Records the iterate's misclassified images (with `last`, also the still robust ones'
    /// final iterate); returns whether any image is still robust. The iterate is copied to the
    /// host only when it holds an image to record.
    pub fn judge(&mut self, x_adv: &Tensor, predicted: &[u32], last: bool) -> Result<bool> {
        let record: Vec<usize> = (0..self.labels.len())
            .filter(|&i| self.outcome.robust[i] && (predicted[i] != self.labels[i] || last))
            .collect();
        if !record.is_empty() {
            let host = x_adv.to_host()?;
            let n = self.per_image;
            for i in record {
                self.outcome.robust[i] = predicted[i] == self.labels[i];
                self.outcome.predicted[i] = predicted[i];
                self.outcome.adversarial[i * n..(i + 1) * n].copy_from_slice(&host[i * n..(i + 1) * n]);
            }
        }
        Ok(self.any_robust())
    }

    /// Judges an iterate from the scores the attack computed on it: as deployed, in
    /// evaluation mode (a second forward pass when the attack ran batch norm in training mode).
    pub fn judge_scores(
        &mut self,
        model: &Model,
        weights: &Weights,
        x_adv: &Tensor,
        scores: Tensor,
        bn: BnMode,
    ) -> Result<bool> {
        let scores = match bn {
            BnMode::Eval => scores,
            BnMode::Train => class_scores(model, weights, x_adv.clone())?,
        };
        self.judge(x_adv, &predicted_classes(&scores)?, false)
    }

    /// Counts the images whose first input gradient is all zero.
    pub fn count_zero_gradients(&mut self, grad: &Tensor) -> Result<()> {
        let g = grad.to_host()?;
        self.outcome.zero_gradient =
            g.chunks_exact(self.per_image).filter(|c| c.iter().all(|&v| v == 0.0)).count();
        Ok(())
    }
}
