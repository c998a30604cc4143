//! Losses, each the mean over its terms: softmax cross-entropy over class scores, binary
//! cross-entropy with logits for every class expert's (False, True) pair, and the attack losses:
//! the difference-of-logits ratio (DLR, untargeted and targeted) and the KL divergence between
//! two rows' softmax distributions (TRADES). The per-row functions below are the cpu device's
//! arithmetic and the per-image losses attacks track on the host.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use anyhow::{Result, ensure};

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, LaunchConfig, int};
use crate::tensor::Tensor;

/// log(1 + e^z) without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Expert i % N's target for row i / N: 1 when the row's label is that expert's class.
fn expert_target(labels: &[u32], experts: usize, i: usize) -> f64 {
    if labels[i / experts] as usize == i % experts { 1.0 } else { 0.0 }
}

fn check_labels(labels: &[u32], rows: usize, classes: usize) -> Result<()> {
    ensure!(labels.len() == rows, "{} labels for {rows} rows", labels.len());
    ensure!(labels.iter().all(|&y| (y as usize) < classes), "a label is not below {classes}");
    Ok(())
}

/// Class labels as the losses read them: on the host, where they are checked against the class
/// count, and on a kernel device, uploaded for each op that reads them there, or once for all of
/// them (`Labels`).
pub trait ClassLabels {
    fn host(&self) -> &[u32];

    /// The labels on `device` (a kernel device).
    fn on(&self, device: Device) -> Result<Arc<GpuBuffer>> {
        Ok(Arc::new(GpuBuffer::upload(device, self.host())?))
    }
}

impl ClassLabels for [u32] {
    fn host(&self) -> &[u32] {
        self
    }
}

impl<const N: usize> ClassLabels for [u32; N] {
    fn host(&self) -> &[u32] {
        self
    }
}

impl ClassLabels for Vec<u32> {
    fn host(&self) -> &[u32] {
        self
    }
}

/// A batch's labels, kept on a kernel device once an op there reads them: uploaded once however
/// many losses read them, or never where they were gathered there (`with_device_copy`).
pub struct Labels {
    host: Vec<u32>,
    device: OnceLock<Arc<GpuBuffer>>,
}

impl Labels {
    pub fn new(host: Vec<u32>) -> Labels {
        Labels { host, device: OnceLock::new() }
    }

    /// Labels whose copy on a kernel device exists already, as u32 (the same values as `host`).
    pub fn with_device_copy(host: Vec<u32>, on_device: GpuBuffer) -> Result<Labels> {
        Labels::sharing(host, Arc::new(on_device))
    }

    /// `with_device_copy` of a copy shared with others (a graph's input, rewritten between
    /// its replays).
    pub fn sharing(host: Vec<u32>, on_device: Arc<GpuBuffer>) -> Result<Labels> {
        ensure!(on_device.len_bytes() == host.len() * 4, "a device copy of another length than the labels");
        Ok(Labels { host, device: OnceLock::from(on_device) })
    }
}

impl ClassLabels for Labels {
    fn host(&self) -> &[u32] {
        &self.host
    }

    fn on(&self, device: Device) -> Result<Arc<GpuBuffer>> {
        match self.device.get() {
            Some(b) if b.device() == device => Ok(b.clone()),
            Some(_) => Ok(Arc::new(GpuBuffer::upload(device, &self.host)?)),
            None => {
                let b = Arc::new(GpuBuffer::upload(device, &self.host)?);
                Ok(self.device.get_or_init(|| b).clone())
            }
        }
    }
}

impl Deref for Labels {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &self.host
    }
}

/// -log softmax(row)[label], in f64.
pub fn cross_entropy_row(row: &[f32], label: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    -(row[label] as f64 - max - sum.ln())
}

/// The indices of the four largest scores, largest first, ties to the lower index (None past
/// the row's length).
fn top4(row: &[f32]) -> [Option<usize>; 4] {
    let mut top: [Option<usize>; 4] = [None; 4];
    for (i, &v) in row.iter().enumerate() {
        let mut j = 4;
        while j > 0 && top[j - 1].is_none_or(|t| v > row[t]) {
            j -= 1;
        }
        if j < 4 {
            top[j..].rotate_right(1);
            top[j] = Some(i);
        }
    }
    top
}

/// The fewest classes DLR is defined for: untargeted, 3; targeted, 4.
pub fn dlr_min_classes(targeted: bool) -> usize {
    if targeted { 4 } else { 3 }
}

/// The difference-of-logits-ratio loss of one row of scores (Croce & Hein 2020) and its
/// gradient, in f64. Untargeted: -(s_y - max_{i != y} s_i) / (s_pi1 - s_pi3 + 1e-12); targeted
/// at class t: -(s_y - s_t) / (s_pi1 - (s_pi3 + s_pi4) / 2 + 1e-12), pi sorting the scores in
/// decreasing order. Invariant to shifting and scaling the scores. The row must have at least
/// [`dlr_min_classes`] entries.
pub fn dlr_row(row: &[f32], label: usize, target: Option<usize>) -> (f64, Vec<f64>) {
    assert!(row.len() >= dlr_min_classes(target.is_some()), "DLR needs at least 4 classes (3 untargeted)");
    // Entries past the row's length are never used: the untargeted loss reads three.
    let top = top4(row).map(|t| t.unwrap_or(usize::MAX));
    let s = |i: usize| row[i] as f64;
    let (other, den) = match target {
        Some(t) => (t, s(top[0]) - 0.5 * (s(top[2]) + s(top[3])) + 1e-12),
        None => (if top[0] == label { top[1] } else { top[0] }, s(top[0]) - s(top[2]) + 1e-12),
    };
    let num = s(label) - s(other);
    let q = num / (den * den);
    let targeted = target.is_some();
    let grad = (0..row.len())
        .map(|j| {
            let mut c = 0.0;
            if j == label {
                c -= 1.0 / den;
            }
            if j == other {
                c += 1.0 / den;
            }
            if j == top[0] {
                c += q;
            }
            if j == top[2] {
                c -= if targeted { 0.5 * q } else { q };
            }
            if targeted && j == top[3] {
                c -= 0.5 * q;
            }
            c
        })
        .collect();
    (-num / den, grad)
}

/// KL(softmax(p) || softmax(q)) of one pair of rows, and its gradients with respect to p and q,
/// in f64.
pub fn kl_row(p: &[f32], q: &[f32]) -> (f64, Vec<f64>, Vec<f64>) {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let sum: f64 = row.iter().map(|&v| (v as f64 - max as f64).exp()).sum();
        row.iter().map(|&v| v as f64 - max as f64 - sum.ln()).collect()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    let kl: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
    let dp = lp.iter().zip(&lq).map(|(a, b)| a.exp() * ((a - b) - kl)).collect();
    let dq = lp.iter().zip(&lq).map(|(a, b)| b.exp() - a.exp()).collect();
    (kl, dp, dq)
}

/// The floor of the mixture distribution in [`jsd_group`], as AugMix clamps it.
pub const JSD_MIXTURE_FLOOR: f64 = 1e-7;
/// The most views [`jsd_group`] (and its kernel) takes.
pub const JSD_MAX_VIEWS: usize = 4;

/// The Jensen-Shannon divergence of the softmax distributions of V rows of scores, AugMix's
/// consistency loss: (1/V) sum_v KL(p_v || M), M = max(mean_v p_v, 1e-7) (the clamp has no
/// gradient), and its gradient with respect to each row, in f64.
pub fn jsd_group(rows: &[&[f32]]) -> (f64, Vec<Vec<f64>>) {
    let views = rows.len() as f64;
    let log_softmax: Vec<Vec<f64>> = rows
        .iter()
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            row.iter().map(|&v| v as f64 - max - sum.ln()).collect()
        })
        .collect();
    let k = rows[0].len();
    let mean: Vec<f64> =
        (0..k).map(|j| log_softmax.iter().map(|lp| lp[j].exp()).sum::<f64>() / views).collect();
    let log_mixture: Vec<f64> = mean.iter().map(|m| m.max(JSD_MIXTURE_FLOOR).ln()).collect();
    let mut jsd = 0.0;
    let grads = log_softmax
        .iter()
        .map(|lp| {
            // d/dp_j, through p_j itself and through the mixture (unless clamped).
            let dp: Vec<f64> = (0..k)
                .map(|j| {
                    let through_mixture = if mean[j] >= JSD_MIXTURE_FLOOR { 1.0 } else { 0.0 };
                    (lp[j] - log_mixture[j] + 1.0 - through_mixture) / views
                })
                .collect();
            jsd += (0..k).map(|j| lp[j].exp() * (lp[j] - log_mixture[j])).sum::<f64>() / views;
            let dot: f64 = (0..k).map(|j| lp[j].exp() * dp[j]).sum();
            (0..k).map(|j| lp[j].exp() * (dp[j] - dot)).collect()
        })
        .collect();
    (jsd, grads)
}

/// A loss whose forward pass already formed each row's gradient: backward scales it by
/// dloss / rows (on the cpu here, on a device by `loss_grad_scale_f32`).
fn scaled_row_gradient(per_row: &Tensor, g: &Tensor, rows: usize) -> Result<Tensor> {
    let device = per_row.device();
    if device == Device::Cpu {
        let scale = g.item() / rows as f32;
        return Ok(Tensor::from_vec(per_row.shape(), per_row.as_slice().iter().map(|v| v * scale).collect()));
    }
    let d = Tensor::output_on(device, per_row.shape())?;
    let args = [d.arg(), per_row.arg(), g.arg(), int(rows), int(per_row.len())];
    gpu::launch(device, "loss_grad_scale_f32", LaunchConfig::for_elements(per_row.len()), &args)?;
    Ok(d)
}

impl Tape {
    /// mean_b -log softmax(logits_b)[y_b]; `logits`: [B, K].
    pub fn softmax_cross_entropy(
        &self,
        logits: &Var,
        class_labels: &(impl ClassLabels + ?Sized),
    ) -> Result<Var> {
        let labels = class_labels.host();
        let s = logits.shape();
        ensure!(s.len() == 2, "cross-entropy needs [B, K] scores, got {s:?}");
        let (b, k) = (s[0], s[1]);
        check_labels(labels, b, k)?;
        let device = logits.value().device();
        if device != Device::Cpu {
            let labels = class_labels.on(device)?;
            let (loss, probs) = (Tensor::output_on(device, &[])?, Tensor::output_on(device, &[b, k])?);
            let args = [loss.arg(), probs.arg(), logits.value().arg(), labels.arg(), int(b), int(k)];
            gpu::launch(device, "softmax_ce_fwd_f32", LaunchConfig::new([1, 1, 1], [256, 1, 1]), &args)?;
            return Ok(self.record(
                loss,
                &[logits],
                Box::new(move |g, _| {
                    let d = Tensor::output_on(device, &[b, k])?;
                    let args = [d.arg(), probs.arg(), labels.arg(), g.arg(), int(b), int(k)];
                    gpu::launch(device, "softmax_ce_bwd_f32", LaunchConfig::for_elements(b * k), &args)?;
                    Ok(vec![Some(d)])
                }),
            ));
        }
        // Softmax in f64 so that large scores are exact enough for the gradient check too.
        let mut probs = vec![0.0f64; b * k];
        let mut total = 0.0f64;
        for (n, row) in logits.value().as_slice().chunks_exact(k).enumerate() {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
            let p = &mut probs[n * k..(n + 1) * k];
            let mut sum = 0.0;
            for (pi, v) in p.iter_mut().zip(row) {
                *pi = (*v as f64 - max).exp();
                sum += *pi;
            }
            p.iter_mut().for_each(|pi| *pi /= sum);
            total += -(row[labels[n] as usize] as f64 - max - sum.ln());
        }
        let loss = Tensor::scalar((total / b as f64) as f32);
        let labels = labels.to_vec();
        Ok(self.record(
            loss,
            &[logits],
            Box::new(move |g, _| {
                let scale = g.item() as f64 / b as f64;
                let mut d = vec![0.0f32; b * k];
                for n in 0..b {
                    for c in 0..k {
                        let target = if labels[n] as usize == c { 1.0 } else { 0.0 };
                        d[n * k + c] = ((probs[n * k + c] - target) * scale) as f32;
                    }
                }
                Ok(vec![Some(Tensor::from_vec(&[b, k], d))])
            }),
        ))
    }

    /// mean over b and n of BCE(sigmoid(l_True - l_False), [y_b == n]); `logits`: [B, N, 2].
    /// Equal to a 2-way softmax cross-entropy per expert.
    pub fn expert_bce_with_logits(
        &self,
        logits: &Var,
        class_labels: &(impl ClassLabels + ?Sized),
    ) -> Result<Var> {
        let labels = class_labels.host();
        let s = logits.shape();
        ensure!(s.len() == 3 && s[2] == 2, "expert BCE needs [B, N, 2] logits, got {s:?}");
        let (b, n_exp) = (s[0], s[1]);
        check_labels(labels, b, n_exp)?;
        let device = logits.value().device();
        if device != Device::Cpu {
            let labels = class_labels.on(device)?;
            let loss = Tensor::output_on(device, &[])?;
            let saved = logits.value().clone();
            let args = [loss.arg(), saved.arg(), labels.arg(), int(b), int(n_exp)];
            gpu::launch(device, "expert_bce_fwd_f32", LaunchConfig::new([1, 1, 1], [256, 1, 1]), &args)?;
            return Ok(self.record(
                loss,
                &[logits],
                Box::new(move |g, _| {
                    let d = Tensor::output_on(device, saved.shape())?;
                    let args = [d.arg(), saved.arg(), labels.arg(), g.arg(), int(b), int(n_exp)];
                    gpu::launch(device, "expert_bce_bwd_f32", LaunchConfig::for_elements(b * n_exp), &args)?;
                    Ok(vec![Some(d)])
                }),
            ));
        }
        let l = logits.value().as_slice();
        let mut total = 0.0f64;
        for (pair, i) in l.chunks_exact(2).zip(0..) {
            let z = pair[1] as f64 - pair[0] as f64;
            total += softplus(z) - expert_target(labels, n_exp, i) * z;
        }
        let count = (b * n_exp) as f64;
        let loss = Tensor::scalar((total / count) as f32);
        let (saved, labels) = (logits.value().clone(), labels.to_vec());
        Ok(self.record(
            loss,
            &[logits],
            Box::new(move |g, _| {
                let l = saved.as_slice();
                let scale = g.item() as f64 / count;
                let mut d = vec![0.0f32; l.len()];
                for ((dp, lp), i) in d.chunks_exact_mut(2).zip(l.chunks_exact(2)).zip(0..) {
                    let t = expert_target(&labels, n_exp, i);
                    let dz = (sigmoid(lp[1] as f64 - lp[0] as f64) - t) * scale;
                    dp[1] = dz as f32;
                    dp[0] = -dz as f32;
                }
                Ok(vec![Some(Tensor::from_vec(saved.shape(), d))])
            }),
        ))
    }
}

impl Tape {
    /// The mean over rows of the DLR loss ([`dlr_row`]) of class scores [B, K]: untargeted, or
    /// targeted at `targets[b]` (each different from the label).
    pub fn dlr_loss(&self, scores: &Var, labels: &[u32], targets: Option<&[u32]>) -> Result<Var> {
        let s = scores.shape();
        ensure!(s.len() == 2, "the DLR loss needs [B, K] scores, got {s:?}");
        let (b, k) = (s[0], s[1]);
        check_labels(labels, b, k)?;
        let min = dlr_min_classes(targets.is_some());
        ensure!(k >= min, "the DLR loss needs at least {min} classes, the model has {k}");
        if let Some(t) = targets {
            check_labels(t, b, k)?;
            ensure!(t.iter().zip(labels).all(|(t, y)| t != y), "a DLR target class equals the label");
        }
        let device = scores.value().device();
        let (loss, per_row) = if device != Device::Cpu {
            let labels_buf = GpuBuffer::upload(device, labels)?;
            let targets_buf = GpuBuffer::upload(device, targets.unwrap_or(labels))?;
            let (loss, per_row) = (Tensor::output_on(device, &[])?, Tensor::output_on(device, &[b, k])?);
            let args = [
                loss.arg(),
                per_row.arg(),
                scores.value().arg(),
                labels_buf.arg(),
                targets_buf.arg(),
                int(targets.is_some() as usize),
                int(b),
                int(k),
            ];
            gpu::launch(device, "dlr_fwd_f32", LaunchConfig::new([1, 1, 1], [256, 1, 1]), &args)?;
            (loss, per_row)
        } else {
            let mut total = 0.0f64;
            let mut grad = Vec::with_capacity(b * k);
            for (n, row) in scores.value().as_slice().chunks_exact(k).enumerate() {
                let (l, g) = dlr_row(row, labels[n] as usize, targets.map(|t| t[n] as usize));
                total += l;
                grad.extend(g.iter().map(|&v| v as f32));
            }
            (Tensor::scalar((total / b as f64) as f32), Tensor::from_vec(&[b, k], grad))
        };
        Ok(self.record(
            loss,
            &[scores],
            Box::new(move |g, _| Ok(vec![Some(scaled_row_gradient(&per_row, g, b)?)])),
        ))
    }

    /// The mean over rows of KL(softmax(p) || softmax(q)) of two [B, K] score tensors (PyTorch's
    /// `kl_div(log_softmax(q), softmax(p), reduction="batchmean")`), differentiable in both.
    pub fn kl_divergence(&self, p: &Var, q: &Var) -> Result<Var> {
        let s = p.shape();
        ensure!(
            s.len() == 2 && q.shape() == s,
            "KL divergence needs two [B, K] scores of one shape, got {s:?} and {:?}",
            q.shape()
        );
        let (b, k) = (s[0], s[1]);
        let device = p.value().device();
        let (loss, dp, dq) = if device != Device::Cpu {
            let loss = Tensor::output_on(device, &[])?;
            let (dp, dq) = (Tensor::output_on(device, &[b, k])?, Tensor::output_on(device, &[b, k])?);
            let args = [loss.arg(), dp.arg(), dq.arg(), p.value().arg(), q.value().arg(), int(b), int(k)];
            gpu::launch(device, "kl_div_fwd_f32", LaunchConfig::new([1, 1, 1], [256, 1, 1]), &args)?;
            (loss, dp, dq)
        } else {
            let mut total = 0.0f64;
            let (mut dp, mut dq) = (Vec::with_capacity(b * k), Vec::with_capacity(b * k));
            let rows = p.value().as_slice().chunks_exact(k).zip(q.value().as_slice().chunks_exact(k));
            for (pr, qr) in rows {
                let (kl, gp, gq) = kl_row(pr, qr);
                total += kl;
                dp.extend(gp.iter().map(|&v| v as f32));
                dq.extend(gq.iter().map(|&v| v as f32));
            }
            let (dp, dq) = (Tensor::from_vec(&[b, k], dp), Tensor::from_vec(&[b, k], dq));
            (Tensor::scalar((total / b as f64) as f32), dp, dq)
        };
        Ok(self.record(
            loss,
            &[p, q],
            Box::new(move |g, _| {
                Ok(vec![Some(scaled_row_gradient(&dp, g, b)?), Some(scaled_row_gradient(&dq, g, b)?)])
            }),
        ))
    }
}

impl Tape {
    /// AugMix's consistency loss: the mean over b of the Jensen-Shannon divergence
    /// ([`jsd_group`]) of rows b, B + b, ..., (V - 1) B + b of scores [V B, K], V = `views` (2-4)
    /// views of the same B images, differentiable in every view.
    pub fn jensen_shannon(&self, scores: &Var, views: usize) -> Result<Var> {
        let s = scores.shape();
        ensure!(
            (2..=JSD_MAX_VIEWS).contains(&views) && s.len() == 2 && s[0].is_multiple_of(views) && s[0] > 0,
            "Jensen-Shannon divergence needs [V B, K] scores of 2 to {JSD_MAX_VIEWS} views, got {s:?} for {views} views"
        );
        let (b, k) = (s[0] / views, s[1]);
        let device = scores.value().device();
        let (loss, grad) = if device != Device::Cpu {
            let loss = Tensor::output_on(device, &[])?;
            let grad = Tensor::output_on(device, s)?;
            let args = [loss.arg(), grad.arg(), scores.value().arg(), int(b), int(k), int(views)];
            gpu::launch(device, "jsd_fwd_f32", LaunchConfig::new([1, 1, 1], [256, 1, 1]), &args)?;
            (loss, grad)
        } else {
            let values = scores.value().as_slice();
            let mut grad = vec![0.0f32; values.len()];
            let mut total = 0.0f64;
            for r in 0..b {
                let rows: Vec<&[f32]> = (0..views).map(|v| &values[(v * b + r) * k..][..k]).collect();
                let (jsd, grads) = jsd_group(&rows);
                total += jsd;
                for (v, g) in grads.iter().enumerate() {
                    for (dst, &src) in grad[(v * b + r) * k..][..k].iter_mut().zip(g) {
                        *dst = src as f32;
                    }
                }
            }
            (Tensor::scalar((total / b as f64) as f32), Tensor::from_vec(s, grad))
        };
        Ok(self.record(
            loss,
            &[scores],
            Box::new(move |g, _| Ok(vec![Some(scaled_row_gradient(&grad, g, b)?)])),
        ))
    }
}

/// The predicted class of every row: its largest score (ties go to the lowest index).
pub fn predicted_classes(scores: &Tensor) -> Result<Vec<u32>> {
    let k = scores.shape()[scores.shape().len() - 1];
    Ok(scores.to_host()?.chunks_exact(k).map(|row| argmax(row) as u32).collect())
}

/// Number of rows whose largest score is at the label (ties go to the lowest index).
pub fn count_correct(scores: &Tensor, labels: &[u32]) -> Result<usize> {
    Ok(predicted_classes(scores)?.iter().zip(labels).filter(|(p, y)| p == y).count())
}

/// `count_correct` on a kernel device, written as a u32 to the address `out` there and not read
/// back (a training step reads it with its other checks).
pub fn count_correct_into(scores: &Tensor, labels: &(impl ClassLabels + ?Sized), out: u64) -> Result<()> {
    let d = scores.device();
    ensure!(d != Device::Cpu, "a device count for scores on the cpu");
    let s = scores.shape();
    ensure!(s.len() == 2, "counting correct rows needs [B, K] scores, got {s:?}");
    check_labels(labels.host(), s[0], s[1])?;
    let labels = labels.on(d)?;
    let args = [Arg::Ptr(out), scores.arg(), labels.arg(), int(s[0]), int(s[1])];
    gpu::launch(d, "count_correct_f32", LaunchConfig::new([1, 1, 1], [256, 1, 1]), &args)
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_tensor};

    #[test]
    fn cross_entropy_value_and_gradient() {
        let t = Tape::no_grad();
        let logits = t.leaf(Tensor::from_vec(&[1, 3], vec![1.0, 2.0, 3.0]), false);
        let loss = t.softmax_cross_entropy(&logits, &[0]).unwrap().value().item();
        let expected = -(1.0f64 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln());
        assert!((loss as f64 - expected).abs() < 1e-6);
        let x = random_tensor(&[6, 5], 1);
        check_gradients(&[x], |t, v| t.softmax_cross_entropy(&v[0], &[0, 4, 2, 2, 1, 3]));
    }

    #[test]
    fn expert_bce_equals_two_way_cross_entropy() {
        let x = random_tensor(&[3, 4, 2], 2);
        let labels = [1, 3, 0];
        let t = Tape::no_grad();
        let bce = t.expert_bce_with_logits(&t.leaf(x.clone(), false), &labels).unwrap().value().item();
        let flat = t.leaf(x.reshape(&[12, 2]), false);
        let per_expert: Vec<u32> = (0..12).map(|i| (labels[i / 4] == (i % 4) as u32) as u32).collect();
        let ce = t.softmax_cross_entropy(&flat, &per_expert).unwrap().value().item();
        assert!((bce - ce).abs() < 1e-6, "{bce} vs {ce}");
        check_gradients(&[x], |t, v| t.expert_bce_with_logits(&v[0], &labels));
    }

    #[test]
    fn dlr_matches_its_definition_and_gradient() {
        // Scores 3 > 2 > 1 > 0 > -1: untargeted for label 1 (not the top), -(2 - 3) / (3 - 1).
        let row = [1.0f32, 3.0, 2.0, 0.0, -1.0];
        assert!((dlr_row(&row, 2, None).0 - 0.5).abs() < 1e-12);
        // Label at the top: the runner-up is the other class, -(3 - 2) / (3 - 1).
        assert!((dlr_row(&row, 1, None).0 + 0.5).abs() < 1e-12);
        // Targeted at class 4: -(s_y - s_t) / (s_pi1 - (s_pi3 + s_pi4) / 2) = -(2 + 1) / (3 - 0.5).
        assert!((dlr_row(&row, 2, Some(4)).0 + 3.0 / 2.5).abs() < 1e-12);
        // Invariant to shifting and scaling the scores.
        let moved: Vec<f32> = row.iter().map(|v| 7.0 * v - 3.0).collect();
        assert!((dlr_row(&moved, 2, Some(4)).0 - dlr_row(&row, 2, Some(4)).0).abs() < 1e-9);
        // Scores at least 0.3 apart, so that no finite-difference step reorders them (DLR is
        // smooth only between reorderings).
        let noise = random_tensor(&[6, 10], 3);
        let spread =
            (0..60).map(|i| 0.4 * ((i % 10 * 7 + i / 10 * 3) % 10) as f32 + 0.05 * noise.as_slice()[i]);
        let x = Tensor::from_vec(&[6, 10], spread.collect());
        let labels = [0, 4, 2, 9, 1, 3];
        check_gradients(std::slice::from_ref(&x), |t, v| t.dlr_loss(&v[0], &labels, None));
        check_gradients(&[x], |t, v| t.dlr_loss(&v[0], &labels, Some(&[1, 5, 3, 0, 2, 7])));
        let t = Tape::no_grad();
        let three = t.leaf(Tensor::zeros(&[2, 3]), false);
        assert!(t.dlr_loss(&three, &[0, 1], Some(&[1, 2])).err().unwrap().to_string().contains("at least 4"));
        assert!(t.dlr_loss(&three, &[0, 1], None).is_ok());
        let ten = t.leaf(Tensor::zeros(&[1, 10]), false);
        assert!(t.dlr_loss(&ten, &[2], Some(&[2])).err().unwrap().to_string().contains("equals the label"));
    }

    fn softmax(r: &[f32]) -> Vec<f64> {
        let e: Vec<f64> = r.iter().map(|&v| (v as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn kl_divergence_matches_its_definition_and_gradient() {
        let (p, q) = ([0.0f32, 1.0, 2.0], [2.0f32, 1.0, 0.0]);
        let (sp, sq) = (softmax(&p), softmax(&q));
        let expected: f64 = sp.iter().zip(&sq).map(|(a, b)| a * (a / b).ln()).sum();
        assert!((kl_row(&p, &q).0 - expected).abs() < 1e-12);
        assert!(kl_row(&p, &p).0.abs() < 1e-12);
        let (a, b) = (random_tensor(&[5, 10], 4), random_tensor(&[5, 10], 5));
        check_gradients(&[a, b], |t, v| t.kl_divergence(&v[0], &v[1]));
    }

    #[test]
    fn jensen_shannon_matches_its_definition_and_gradient() {
        // Two views: JS = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2.
        let (p, q) = ([0.0f32, 1.0, 2.0], [2.0f32, 1.0, 0.0]);
        let (sp, sq) = (softmax(&p), softmax(&q));
        let m: Vec<f64> = sp.iter().zip(&sq).map(|(a, b)| (a + b) / 2.0).collect();
        let kl = |x: &[f64]| -> f64 { x.iter().zip(&m).map(|(a, b)| a * (a / b).ln()).sum() };
        assert!((jsd_group(&[&p, &q]).0 - (kl(&sp) + kl(&sq)) / 2.0).abs() < 1e-12);
        assert!(jsd_group(&[&p, &p, &p]).0.abs() < 1e-12);
        // A mixture below the floor is clamped: finite, and (here) next to nothing.
        let (clamped, grads) = jsd_group(&[&[0.0, -40.0], &[0.0, -40.0]]);
        assert!(clamped.abs() < 1e-12 && grads.iter().flatten().all(|g| g.is_finite()));
        check_gradients(&[random_tensor(&[12, 10], 6)], |t, v| t.jensen_shannon(&v[0], 3));
        check_gradients(&[random_tensor(&[8, 5], 7)], |t, v| t.jensen_shannon(&v[0], 2));
        let t = Tape::no_grad();
        let x = t.leaf(Tensor::zeros(&[5, 3]), false);
        assert!(t.jensen_shannon(&x, 3).is_err() && t.jensen_shannon(&x, 5).is_err());
    }

    #[test]
    fn rejects_bad_labels() {
        let t = Tape::no_grad();
        let x = t.leaf(Tensor::zeros(&[2, 3]), false);
        assert!(t.softmax_cross_entropy(&x, &[0, 3]).is_err());
        assert!(t.softmax_cross_entropy(&x, &[0]).is_err());
    }
}
