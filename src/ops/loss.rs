//! Losses, each the mean over its terms: softmax cross-entropy over class scores, and binary
//! cross-entropy with logits for every class expert's (False, True) pair.

use anyhow::{Result, ensure};

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, GpuBuffer, LaunchConfig, int};
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

impl Tape {
    /// mean_b -log softmax(logits_b)[y_b]; `logits`: [B, K].
    pub fn softmax_cross_entropy(&self, logits: &Var, labels: &[u32]) -> Result<Var> {
        let s = logits.shape();
        ensure!(s.len() == 2, "cross-entropy needs [B, K] scores, got {s:?}");
        let (b, k) = (s[0], s[1]);
        check_labels(labels, b, k)?;
        let device = logits.value().device();
        if device != Device::Cpu {
            let labels = GpuBuffer::upload(device, labels)?;
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
    pub fn expert_bce_with_logits(&self, logits: &Var, labels: &[u32]) -> Result<Var> {
        let s = logits.shape();
        ensure!(s.len() == 3 && s[2] == 2, "expert BCE needs [B, N, 2] logits, got {s:?}");
        let (b, n_exp) = (s[0], s[1]);
        check_labels(labels, b, n_exp)?;
        let device = logits.value().device();
        if device != Device::Cpu {
            let labels = GpuBuffer::upload(device, labels)?;
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

/// The predicted class of every row: its largest score (ties go to the lowest index).
pub fn predicted_classes(scores: &Tensor) -> Result<Vec<u32>> {
    let k = scores.shape()[scores.shape().len() - 1];
    Ok(scores.to_host()?.chunks_exact(k).map(|row| argmax(row) as u32).collect())
}

/// Number of rows whose largest score is at the label (ties go to the lowest index).
pub fn count_correct(scores: &Tensor, labels: &[u32]) -> Result<usize> {
    Ok(predicted_classes(scores)?.iter().zip(labels).filter(|(p, y)| p == y).count())
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
    fn rejects_bad_labels() {
        let t = Tape::no_grad();
        let x = t.leaf(Tensor::zeros(&[2, 3]), false);
        assert!(t.softmax_cross_entropy(&x, &[0, 3]).is_err());
        assert!(t.softmax_cross_entropy(&x, &[0]).is_err());
    }
}
