//! Projected gradient descent (Madry et al. 2018) against a model, and the input gradient
//! every gradient attack is built on.

use anyhow::{Context, Result};

use crate::attack::step::{pgd_step, random_start};
use crate::attack::{BnMode, PgdConfig};
use crate::autograd::{Tape, Var};
use crate::eval::class_scores;
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::loss::predicted_classes;
use crate::tensor::Tensor;

/// The class scores [B, K] of `images` and the gradient of the attacked loss (cross-entropy on
/// the class scores, summed over the batch) with respect to the images. The weights enter the
/// tape as constants, so only input gradients are formed; in training mode batch norm uses the
/// batch's statistics and the running statistics stay as they are.
pub fn input_gradient(
    model: &Model,
    weights: &Weights,
    images: &Tensor,
    labels: &[u32],
    bn: BnMode,
) -> Result<(Tensor, Tensor)> {
    let tape = Tape::new();
    let params: Vec<Var> = weights.params.iter().map(|p| Var::constant(p.clone())).collect();
    let x = tape.leaf(images.clone(), true);
    let out = model.forward(&tape, &params, &mut weights.buffers.clone(), &x, bn == BnMode::Train)?;
    let scores = model.scores(&tape, &out)?;
    let mean = tape.softmax_cross_entropy(&scores, labels)?;
    let loss = tape.scale(&mean, labels.len() as f32)?;
    let scores = scores.value().clone();
    let grad = tape.backward(&loss)?.take(&x).context("the loss does not depend on the images")?;
    Ok((scores, grad))
}

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

/// Where a run of the attack starts: a random point of the eps-ball (round `round` of each
/// image's stream), or the images themselves.
fn start(x: &Tensor, image_index: &[u32], cfg: &PgdConfig, round: u32) -> Result<Tensor> {
    if cfg.random_start && cfg.eps > 0.0 {
        random_start(x, image_index, cfg.eps, cfg.norm, cfg.seed, round)
    } else {
        Ok(x.clone())
    }
}

/// PGD on a batch of images [B, 32, 32, 3] in [0, 1]; `image_index[b]` is image b's index in
/// its data set (it keys the random start, so the result does not depend on the batching).
/// An image counts as broken when any iterate of any restart, the start included, is
/// misclassified by the model in evaluation mode.
pub fn pgd(
    model: &Model,
    weights: &Weights,
    images: &Tensor,
    labels: &[u32],
    image_index: &[u32],
    cfg: &PgdConfig,
) -> Result<AttackOutcome> {
    cfg.validate()?;
    let batch = labels.len();
    let x = images.to_device(weights.device())?;
    let per_image = x.len() / batch.max(1);
    let mut outcome = AttackOutcome {
        robust: vec![true; batch],
        adversarial: vec![0.0; x.len()],
        predicted: labels.to_vec(),
        zero_gradient: 0,
    };
    // Records the iterate's misclassified images; false once every image is broken. The
    // iterate is copied to the host only when it holds an image to record.
    let mut judge = |x_adv: &Tensor, predicted: &[u32], last: bool| -> Result<bool> {
        let record: Vec<usize> =
            (0..batch).filter(|&i| outcome.robust[i] && (predicted[i] != labels[i] || last)).collect();
        if !record.is_empty() {
            let host = x_adv.to_host()?;
            for i in record {
                outcome.robust[i] = predicted[i] == labels[i];
                outcome.predicted[i] = predicted[i];
                outcome.adversarial[i * per_image..(i + 1) * per_image]
                    .copy_from_slice(&host[i * per_image..(i + 1) * per_image]);
            }
        }
        Ok(outcome.robust.iter().any(|&r| r))
    };
    // A misclassified clean image is not robust, whatever a random start would find.
    if cfg.random_start && cfg.eps > 0.0 {
        let predicted = predicted_classes(&class_scores(model, weights, x.clone())?)?;
        if !judge(&x, &predicted, false)? {
            return Ok(outcome);
        }
    }
    'restarts: for restart in 0..cfg.restarts {
        let mut x_adv = start(&x, image_index, cfg, restart as u32)?;
        for step in 0..=cfg.steps {
            let last = restart + 1 == cfg.restarts && step == cfg.steps;
            if step == cfg.steps {
                let predicted = predicted_classes(&class_scores(model, weights, x_adv.clone())?)?;
                if !judge(&x_adv, &predicted, last)? {
                    break 'restarts;
                }
                break;
            }
            let (scores, grad) = input_gradient(model, weights, &x_adv, labels, cfg.bn)?;
            // Judged as deployed: in evaluation mode (a second forward pass when attacking in
            // training mode).
            let scores = match cfg.bn {
                BnMode::Eval => scores,
                BnMode::Train => class_scores(model, weights, x_adv.clone())?,
            };
            if !judge(&x_adv, &predicted_classes(&scores)?, false)? {
                break 'restarts;
            }
            if restart == 0 && step == 0 {
                let g = grad.to_host()?;
                outcome.zero_gradient =
                    g.chunks_exact(per_image).filter(|c| c.iter().all(|&v| v == 0.0)).count();
            }
            x_adv = pgd_step(&x_adv, &grad, &x, cfg.alpha, cfg.eps, cfg.norm)?;
        }
    }
    Ok(outcome)
}

/// The last iterate of one PGD run on a batch, from the random start of round `round` of each
/// image's stream (adversarial training passes the epoch, so every epoch starts anew): the
/// adversarial examples that PGD adversarial training trains on (Madry et al.).
pub fn pgd_examples(
    model: &Model,
    weights: &Weights,
    images: &Tensor,
    labels: &[u32],
    image_index: &[u32],
    cfg: &PgdConfig,
    round: u32,
) -> Result<Tensor> {
    let x = images;
    let mut x_adv = start(x, image_index, cfg, round)?;
    for _ in 0..cfg.steps {
        let (_, grad) = input_gradient(model, weights, &x_adv, labels, cfg.bn)?;
        x_adv = pgd_step(&x_adv, &grad, x, cfg.alpha, cfg.eps, cfg.norm)?;
    }
    Ok(x_adv)
}
