//! The loss an attack maximises, and its gradient with respect to the input images: the base of
//! every gradient attack. The loss is taken on the model's class scores (for MoCSE the
//! aggregated scores, the model's own criterion) and summed over the batch.

use anyhow::{Context, Result};

use crate::attack::BnMode;
use crate::autograd::{Tape, Var};
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::loss::{ClassLabels, cross_entropy_row, dlr_row, kl_row};
use crate::tensor::Tensor;

/// What an attack maximises, per image.
#[derive(Clone, Copy, Debug)]
pub enum AttackLoss<'a> {
    /// Cross-entropy of the class scores (PGD, APGD-CE).
    CrossEntropy,
    /// The difference-of-logits ratio, invariant to the scale of the scores (APGD-DLR).
    Dlr,
    /// The DLR towards a target class per image (APGD-T).
    DlrTargeted(&'a [u32]),
    /// KL(softmax(clean scores) || softmax(scores)), the clean scores [B, K] fixed (TRADES).
    Kl(&'a Tensor),
}

impl AttackLoss<'_> {
    /// The loss of every image from its class scores [B, K] on the host, in f64: what APGD
    /// tracks to keep each image's best point.
    pub fn per_image(&self, scores: &[f32], labels: &[u32]) -> Result<Vec<f64>> {
        let k = scores.len() / labels.len().max(1);
        let clean = match self {
            AttackLoss::Kl(clean) => clean.to_host()?,
            _ => Vec::new(),
        };
        let rows = scores.chunks_exact(k).zip(labels).enumerate();
        Ok(rows
            .map(|(b, (row, &y))| match self {
                AttackLoss::CrossEntropy => cross_entropy_row(row, y as usize),
                AttackLoss::Dlr => dlr_row(row, y as usize, None).0,
                AttackLoss::DlrTargeted(t) => dlr_row(row, y as usize, Some(t[b] as usize)).0,
                AttackLoss::Kl(_) => kl_row(&clean[b * k..(b + 1) * k], row).0,
            })
            .collect())
    }
}

/// The class scores [B, K] of `images` and the gradient of `loss`, summed over the batch, with
/// respect to the images. The weights enter the tape as constants, so only input gradients are
/// formed; in training mode batch norm uses the batch's statistics and the running statistics
/// stay as they are.
pub fn input_gradient(
    model: &Model,
    weights: &Weights,
    images: &Tensor,
    class_labels: &(impl ClassLabels + ?Sized),
    bn: BnMode,
    loss: AttackLoss,
) -> Result<(Tensor, Tensor)> {
    let labels = class_labels.host();
    let tape = Tape::new();
    let params: Vec<Var> = weights.params.iter().map(|p| Var::constant(p.clone())).collect();
    let x = tape.leaf(images.clone(), true);
    let out = model.forward(&tape, &params, &mut weights.buffers.clone(), &x, bn == BnMode::Train)?;
    let scores = model.scores(&tape, &out)?;
    let mean = match loss {
        AttackLoss::CrossEntropy => tape.softmax_cross_entropy(&scores, class_labels)?,
        AttackLoss::Dlr => tape.dlr_loss(&scores, labels, None)?,
        AttackLoss::DlrTargeted(targets) => tape.dlr_loss(&scores, labels, Some(targets))?,
        AttackLoss::Kl(clean) => tape.kl_divergence(&Var::constant(clean.clone()), &scores)?,
    };
    let total = tape.scale(&mean, labels.len() as f32)?;
    let scores = scores.value().clone();
    let grad = tape.backward(&total)?.take(&x).context("the loss does not depend on the images")?;
    Ok((scores, grad))
}

/// The class scores [B, K] of `images` without gradients, batch norm in `bn` mode (training
/// mode: the batch's own statistics; the running statistics stay as they are).
pub fn scores_in_mode(model: &Model, weights: &Weights, images: &Tensor, bn: BnMode) -> Result<Tensor> {
    let tape = Tape::no_grad();
    let params: Vec<Var> = weights.params.iter().map(|p| Var::constant(p.clone())).collect();
    let x = tape.leaf(images.clone(), false);
    let out = model.forward(&tape, &params, &mut weights.buffers.clone(), &x, bn == BnMode::Train)?;
    Ok(model.scores(&tape, &out)?.value().clone())
}
