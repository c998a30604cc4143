//! Projected gradient descent (Madry et al. 2018) against a model.

use anyhow::Result;

use crate::attack::PgdConfig;
use crate::attack::gradient::{AttackLoss, input_gradient};
use crate::attack::outcome::{AttackOutcome, Judge};
use crate::attack::step::{pgd_step, random_start};
use crate::eval::class_scores;
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::loss::{ClassLabels, predicted_classes};
use crate::tensor::Tensor;

/// Where a run of the attack starts: a random point of the eps-ball (round `round` of each
/// image's stream), or the images themselves.
pub fn start(x: &Tensor, image_index: &[u32], cfg: &PgdConfig, round: u32) -> Result<Tensor> {
    if cfg.random_start && cfg.eps > 0.0 {
        random_start(x, image_index, cfg.eps, cfg.norm, cfg.seed, round)
    } else {
        Ok(x.clone())
    }
}

/// Judges the clean images before a random start: a misclassified clean image is not robust,
/// whatever the start would find. Returns whether any image is still robust.
fn judge_clean(
    model: &Model,
    weights: &Weights,
    x: &Tensor,
    cfg: &PgdConfig,
    judge: &mut Judge,
) -> Result<bool> {
    if cfg.random_start && cfg.eps > 0.0 {
        let predicted = predicted_classes(&class_scores(model, weights, x.clone())?)?;
        return judge.judge(x, &predicted, false);
    }
    Ok(judge.any_robust())
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
    let x = images.to_device(weights.device())?;
    let mut judge = Judge::new(labels, &x);
    if !judge_clean(model, weights, &x, cfg, &mut judge)? {
        return Ok(judge.outcome);
    }
    'restarts: for restart in 0..cfg.restarts {
        let mut x_adv = start(&x, image_index, cfg, restart as u32)?;
        for step in 0..cfg.steps {
            let (scores, grad) =
                input_gradient(model, weights, &x_adv, labels, cfg.bn, AttackLoss::CrossEntropy)?;
            if !judge.judge_scores(model, weights, &x_adv, scores, cfg.bn)? {
                break 'restarts;
            }
            if restart == 0 && step == 0 {
                judge.count_zero_gradients(&grad)?;
            }
            x_adv = pgd_step(&x_adv, &grad, &x, cfg.alpha, cfg.eps, cfg.norm)?;
        }
        let predicted = predicted_classes(&class_scores(model, weights, x_adv.clone())?)?;
        if !judge.judge(&x_adv, &predicted, restart + 1 == cfg.restarts)? {
            break;
        }
    }
    Ok(judge.outcome)
}

/// The last iterate of one PGD run on `loss` from `x_start`: the adversarial examples that PGD
/// adversarial training (cross-entropy, from a random start that is new every epoch) and TRADES
/// (the KL from the clean prediction, from a Gaussian start) train on.
pub fn pgd_examples(
    model: &Model,
    weights: &Weights,
    x: &Tensor,
    x_start: Tensor,
    labels: &(impl ClassLabels + ?Sized),
    cfg: &PgdConfig,
    loss: AttackLoss,
) -> Result<Tensor> {
    let mut x_adv = x_start;
    for _ in 0..cfg.steps {
        let (_, grad) = input_gradient(model, weights, &x_adv, labels, cfg.bn, loss)?;
        x_adv = pgd_step(&x_adv, &grad, x, cfg.alpha, cfg.eps, cfg.norm)?;
    }
    Ok(x_adv)
}
