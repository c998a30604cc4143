//! APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
//! diverse parameter-free attacks"): projected gradient ascent with momentum 0.75 and a step
//! size per image, starting at 2 eps and halved at checkpoints where the loss stopped rising,
//! each halving going back to the image's best point. APGD-CE maximises the cross-entropy,
//! APGD-DLR the difference-of-logits ratio, APGD-T the targeted DLR towards each of the
//! classes ranked 2nd to 10th by the clean scores in turn.

use anyhow::{Result, ensure};

use crate::attack::PgdConfig;
use crate::attack::gradient::{AttackLoss, input_gradient};
use crate::attack::outcome::{AttackOutcome, Judge};
use crate::attack::pgd::start;
use crate::attack::step::{apgd_step, select_images};
use crate::eval::class_scores;
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::loss::predicted_classes;
use crate::tensor::Tensor;

/// The weight of the new step against the last one (Croce & Hein's alpha).
pub const MOMENTUM: f32 = 0.75;
/// A checkpoint halves the step when the loss rose in at most this fraction of the steps since
/// the last checkpoint (Croce & Hein's rho).
pub const RHO: f64 = 0.75;
/// The first step size, in units of eps.
pub const INITIAL_STEP: f32 = 2.0;
/// Target classes of APGD-T: the classes ranked 2nd, 3rd, ... by the clean scores.
pub const TARGET_CLASSES: usize = 9;

/// The checkpointed step-size rule of APGD for a run of `steps` iterations, per image, as in the
/// reference implementation: checkpoints after 22% of the steps, then at intervals shrinking by
/// 3% of the steps down to 6%. At a checkpoint an image's step is halved, and the image goes
/// back to its best point, when (1) its loss rose in at most `RHO` of the steps since the last
/// checkpoint, or (2) the last checkpoint did not halve its step and its best loss has not
/// risen since. (The reference compares the first step's loss with an unwritten zero; here it
/// is compared with the start's loss.)
pub struct StepSizeSchedule {
    interval: usize,
    min_interval: usize,
    decrease: usize,
    since_check: usize,
    /// Per image: the current step size.
    pub step: Vec<f32>,
    /// Per image: the best loss so far.
    pub best_loss: Vec<f64>,
    previous_loss: Vec<f64>,
    increases: Vec<usize>,
    best_at_last_check: Vec<f64>,
    halved_at_last_check: Vec<bool>,
}

/// What a new iterate changes, per image.
pub struct ScheduleUpdate {
    /// The iterate has the highest loss so far: it becomes the image's best point.
    pub improved: Vec<bool>,
    /// A checkpoint halved the step: the image goes back to its best point.
    pub halved: Vec<bool>,
}

impl StepSizeSchedule {
    /// The schedule of a run of `steps` iterations with the first step size `first_step`, from a
    /// start whose losses are `start_loss`.
    pub fn new(steps: usize, first_step: f32, start_loss: &[f64]) -> StepSizeSchedule {
        let fraction = |f: f64| ((f * steps as f64) as usize).max(1);
        let n = start_loss.len();
        StepSizeSchedule {
            interval: fraction(0.22),
            min_interval: fraction(0.06),
            decrease: fraction(0.03),
            since_check: 0,
            step: vec![first_step; n],
            best_loss: start_loss.to_vec(),
            previous_loss: start_loss.to_vec(),
            increases: vec![0; n],
            best_at_last_check: start_loss.to_vec(),
            // As the reference: no improvement test at the first checkpoint.
            halved_at_last_check: vec![true; n],
        }
    }

    /// Records the losses of the iterate just made.
    #[allow(clippy::needless_range_loop)] // per-image state in parallel vectors
    pub fn record(&mut self, loss: &[f64]) -> ScheduleUpdate {
        let n = loss.len();
        let mut improved = vec![false; n];
        for i in 0..n {
            if loss[i] > self.previous_loss[i] {
                self.increases[i] += 1;
            }
            self.previous_loss[i] = loss[i];
            if loss[i] > self.best_loss[i] {
                self.best_loss[i] = loss[i];
                improved[i] = true;
            }
        }
        self.since_check += 1;
        let mut halved = vec![false; n];
        if self.since_check == self.interval {
            for i in 0..n {
                let oscillating = self.increases[i] as f64 <= RHO * self.interval as f64;
                let stalled =
                    !self.halved_at_last_check[i] && self.best_at_last_check[i] >= self.best_loss[i];
                halved[i] = oscillating || stalled;
                if halved[i] {
                    self.step[i] /= 2.0;
                }
                self.halved_at_last_check[i] = halved[i];
                self.best_at_last_check[i] = self.best_loss[i];
                self.increases[i] = 0;
            }
            self.since_check = 0;
            self.interval = self.interval.saturating_sub(self.decrease).max(self.min_interval);
        }
        ScheduleUpdate { improved, halved }
    }
}

/// Which loss an APGD run maximises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApgdLoss {
    CrossEntropy,
    Dlr,
    /// The targeted DLR towards the class ranked `rank + 1` by the clean scores (rank 1: the
    /// runner-up).
    DlrTargeted {
        rank: usize,
    },
}

/// The classes ranked `rank + 1` by each row of `scores` (ties to the lower index).
fn ranked_classes(scores: &Tensor, rank: usize) -> Result<Vec<u32>> {
    let k = *scores.shape().last().unwrap_or(&0);
    ensure!(rank < k, "no class ranked {} among {k}", rank + 1);
    Ok(scores
        .to_host()?
        .chunks_exact(k)
        .map(|row| {
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order[rank] as u32
        })
        .collect())
}

/// APGD on a batch of images [B, 32, 32, 3] in [0, 1], `cfg.restarts` runs of `cfg.steps`
/// iterations (the step size starts at 2 eps; `cfg.alpha` is not used). An image counts as
/// broken when any iterate of any run, the start and the clean image included, is
/// misclassified by the model in evaluation mode. The random starts are keyed by
/// `image_index` and, for the targeted loss, the target's rank.
pub fn apgd(
    model: &Model,
    weights: &Weights,
    images: &Tensor,
    labels: &[u32],
    image_index: &[u32],
    cfg: &PgdConfig,
    loss: ApgdLoss,
) -> Result<AttackOutcome> {
    cfg.validate()?;
    let x = images.to_device(weights.device())?;
    let mut judge = Judge::new(labels, &x);
    let clean = class_scores(model, weights, x.clone())?;
    // The clean images are judged whether or not the run starts at them.
    if !judge.judge(&x, &predicted_classes(&clean)?, false)? {
        return Ok(judge.outcome);
    }
    let targets = match loss {
        ApgdLoss::DlrTargeted { rank } => targets_for(&clean, labels, rank)?,
        _ => Vec::new(),
    };
    let attack_loss = match loss {
        ApgdLoss::CrossEntropy => AttackLoss::CrossEntropy,
        ApgdLoss::Dlr => AttackLoss::Dlr,
        ApgdLoss::DlrTargeted { .. } => AttackLoss::DlrTargeted(&targets),
    };
    let round_base = match loss {
        ApgdLoss::DlrTargeted { rank } => (rank as u32) << 16,
        _ => 0,
    };
    'restarts: for restart in 0..cfg.restarts {
        let last_restart = restart + 1 == cfg.restarts;
        let mut x_adv = start(&x, image_index, cfg, round_base | restart as u32)?;
        let (scores, mut grad) = input_gradient(model, weights, &x_adv, labels, cfg.bn, attack_loss)?;
        let start_loss = attack_loss.per_image(&scores.to_host()?, labels)?;
        if !judge.judge_scores(model, weights, &x_adv, scores, cfg.bn)? {
            break;
        }
        if restart == 0 {
            judge.count_zero_gradients(&grad)?;
        }
        let mut schedule = StepSizeSchedule::new(cfg.steps, INITIAL_STEP * cfg.eps, &start_loss);
        let (mut x_best, mut grad_best) = (x_adv.clone(), grad.clone());
        let mut x_prev = x_adv.clone();
        for i in 0..cfg.steps {
            let momentum = if i == 0 { 1.0 } else { MOMENTUM };
            let x_new = apgd_step(&x_adv, &x_prev, &grad, &x, &schedule.step, momentum, cfg.eps, cfg.norm)?;
            x_prev = std::mem::replace(&mut x_adv, x_new);
            if i + 1 == cfg.steps {
                // The last iterate needs no gradient, only a verdict.
                let predicted = predicted_classes(&class_scores(model, weights, x_adv.clone())?)?;
                if !judge.judge(&x_adv, &predicted, last_restart)? {
                    break 'restarts;
                }
                break;
            }
            let (scores, g) = input_gradient(model, weights, &x_adv, labels, cfg.bn, attack_loss)?;
            grad = g;
            let losses = attack_loss.per_image(&scores.to_host()?, labels)?;
            if !judge.judge_scores(model, weights, &x_adv, scores, cfg.bn)? {
                break 'restarts;
            }
            let update = schedule.record(&losses);
            if update.improved.iter().any(|&b| b) {
                x_best = select_images(&update.improved, &x_adv, &x_best)?;
                grad_best = select_images(&update.improved, &grad, &grad_best)?;
            }
            if update.halved.iter().any(|&b| b) {
                x_adv = select_images(&update.halved, &x_best, &x_adv)?;
                grad = select_images(&update.halved, &grad_best, &grad)?;
            }
        }
    }
    Ok(judge.outcome)
}

/// The class ranked `rank + 1` by each image's clean scores; for an image whose top class is not
/// its label (already broken, never attacked further) a class other than the label.
fn targets_for(clean: &Tensor, labels: &[u32], rank: usize) -> Result<Vec<u32>> {
    let k = *clean.shape().last().unwrap_or(&0);
    let ranked = ranked_classes(clean, rank)?;
    Ok(ranked.iter().zip(labels).map(|(&t, &y)| if t == y { (y + 1) % k as u32 } else { t }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference algorithm's checkpoint rule transcribed as written (its loss history
    /// indexed from the start, whose loss stands at index -1 here), to compare the schedule
    /// with on many random loss sequences.
    fn reference_halvings(steps: usize, losses: &[Vec<f64>], start: f64) -> Vec<(usize, bool)> {
        let n_iter_2 = ((0.22 * steps as f64) as usize).max(1);
        let n_iter_min = ((0.06 * steps as f64) as usize).max(1);
        let size_decr = ((0.03 * steps as f64) as usize).max(1);
        let at = |i: isize| if i < 0 { start } else { losses[i as usize][0] };
        let (mut k, mut counter3) = (n_iter_2, 0);
        let (mut loss_best, mut best_last_check, mut reduced_last_check) = (start, start, true);
        let mut out = Vec::new();
        for (i, loss) in losses.iter().enumerate() {
            loss_best = loss_best.max(loss[0]);
            counter3 += 1;
            if counter3 == k {
                let t =
                    (0..k).filter(|&c| at(i as isize - c as isize) > at(i as isize - c as isize - 1)).count();
                let oscillation = t as f64 <= k as f64 * RHO;
                let no_improvement = !reduced_last_check && best_last_check >= loss_best;
                let reduce = oscillation || no_improvement;
                reduced_last_check = reduce;
                best_last_check = loss_best;
                out.push((i, reduce));
                k = k.saturating_sub(size_decr).max(n_iter_min);
                counter3 = 0;
            }
        }
        out
    }

    #[test]
    fn checkpoints_of_a_hundred_steps_follow_the_paper() {
        // p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): checkpoints after
        // 22, 41, 57, 70, 80, 87, 93, 99 steps.
        let mut schedule = StepSizeSchedule::new(100, 1.0, &[0.0]);
        let mut checks = Vec::new();
        for i in 0..100 {
            // A rising loss: never oscillating, always improving; nothing is halved.
            let update = schedule.record(&[i as f64 + 1.0]);
            assert!(!update.halved[0]);
            if schedule.since_check == 0 {
                checks.push(i + 1);
            }
        }
        assert_eq!(checks, [22, 41, 57, 70, 80, 87, 93, 99]);
        assert_eq!(schedule.step, [1.0]);
    }

    #[test]
    fn a_hand_made_loss_sequence_halves_where_the_reference_does() {
        // 20 steps: checkpoints after 4, 7, 9, 10, 11, ... steps (intervals 4, 3, 2, 1, 1, ...).
        // Steps 1-4 rise three times of four (<= 0.75 * 4: oscillating): halve. Steps 5-7 rise
        // every time with a new best: keep. Steps 8-9 fall: oscillating: halve. Step 10 rises
        // (1 of 1, above 0.75) but stays below the best, and the last checkpoint halved: keep.
        // Step 11 rises past nothing new and the last checkpoint kept: no improvement: halve.
        let losses = [1.0, 2.0, 1.5, 3.0, 4.0, 5.0, 6.0, 5.5, 5.0, 5.2, 5.3];
        let mut schedule = StepSizeSchedule::new(20, 8.0, &[0.5]);
        let mut halved_at = Vec::new();
        let mut best = Vec::new();
        for (i, &l) in losses.iter().enumerate() {
            let update = schedule.record(&[l]);
            if update.halved[0] {
                halved_at.push(i + 1);
            }
            best.push(update.improved[0]);
        }
        assert_eq!(halved_at, [4, 9, 11]);
        assert_eq!(schedule.step, [1.0]);
        assert_eq!(best, [true, true, false, true, true, true, true, false, false, false, false]);
        let seq: Vec<Vec<f64>> = losses.iter().map(|&l| vec![l]).collect();
        let reference: Vec<usize> =
            reference_halvings(20, &seq, 0.5).into_iter().filter(|r| r.1).map(|r| r.0 + 1).collect();
        assert_eq!(reference, halved_at);
    }

    #[test]
    fn the_schedule_equals_the_reference_rule_on_random_sequences() {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        for steps in [5, 10, 20, 37, 100] {
            for _ in 0..50 {
                let start = next();
                let seq: Vec<Vec<f64>> = (0..steps).map(|i| vec![next() + 0.02 * i as f64]).collect();
                let mut schedule = StepSizeSchedule::new(steps, 1.0, &[start]);
                let ours: Vec<(usize, bool)> = seq
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| {
                        let update = schedule.record(l);
                        (schedule.since_check == 0).then_some((i, update.halved[0]))
                    })
                    .collect();
                assert_eq!(ours, reference_halvings(steps, &seq, start), "steps {steps}");
            }
        }
    }

    #[test]
    fn targets_are_the_ranked_classes_never_the_label() {
        let scores = Tensor::from_vec(&[2, 4], vec![0.1, 0.9, 0.5, 0.3, 0.2, 0.1, 0.4, 0.3]);
        assert_eq!(ranked_classes(&scores, 0).unwrap(), [1, 2]);
        assert_eq!(ranked_classes(&scores, 1).unwrap(), [2, 3]);
        // Image 1 is misclassified (top class 2, label 3): its rank-1 class is the label, so
        // another class is the target.
        assert_eq!(targets_for(&scores, &[1, 3], 1).unwrap(), [2, 0]);
        assert!(ranked_classes(&scores, 4).is_err());
    }
}
