//! Batch normalisation over the channel axis of NHWC activations (the last axis). In a fused
//! MoCSE network the channels of all experts sit side by side, so per-channel statistics are
//! automatically per expert.

use anyhow::{Result, ensure};
use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::parallel;
use crate::tensor::Tensor;

/// The statistics of one training batch, for the running averages.
pub struct BatchStats {
    pub mean: Vec<f32>,
    /// Unbiased (divided by n - 1), as PyTorch keeps in `running_var`.
    pub var_unbiased: Vec<f32>,
}

fn channels_of(x: &Tensor) -> usize {
    *x.shape().last().unwrap_or(&1)
}

/// Per-channel sums over all rows of a [rows, C] matrix, two f64 accumulators per channel.
fn channel_sums(
    rows: usize,
    c: usize,
    row: impl Fn(usize, &mut [f64], &mut [f64]) + Sync + Send,
) -> (Vec<f64>, Vec<f64>) {
    let parts = parallel::map_parts(rows, |range| {
        let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
        for r in range {
            row(r, &mut a, &mut b);
        }
        (a, b)
    });
    let (mut a, mut b) = (vec![0.0f64; c], vec![0.0f64; c]);
    for (pa, pb) in parts {
        for i in 0..c {
            a[i] += pa[i];
            b[i] += pb[i];
        }
    }
    (a, b)
}

/// y = x * scale[c] + shift[c].
fn scale_shift(x: &[f32], scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let c = scale.len();
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(c * 64).zip(x.par_chunks(c * 64)).for_each(|(yc, xc)| {
        for (yr, xr) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
            for i in 0..c {
                yr[i] = xr[i] * scale[i] + shift[i];
            }
        }
    });
    y
}

/// Sums of dy and dy * xhat per channel, where xhat = (x - mean) * inv_std.
fn grad_sums(x: &[f32], dy: &[f32], mean: &[f32], inv_std: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let c = mean.len();
    channel_sums(x.len() / c, c, |r, sum_dy, sum_dy_xhat| {
        let (xr, dr) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
        for i in 0..c {
            sum_dy[i] += dr[i] as f64;
            sum_dy_xhat[i] += (dr[i] * (xr[i] - mean[i]) * inv_std[i]) as f64;
        }
    })
}

fn batch_stats_cpu(x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / c;
    let (sum, sum_sq) = channel_sums(rows, c, |r, s, s2| {
        for (i, v) in x[r * c..(r + 1) * c].iter().enumerate() {
            s[i] += *v as f64;
            s2[i] += (*v as f64) * (*v as f64);
        }
    });
    let n = rows as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let var = sum_sq.iter().zip(&mean).map(|(s2, m)| (s2 / n - m * m).max(0.0) as f32);
    (mean.iter().map(|m| *m as f32).collect(), var.collect())
}

impl Tape {
    /// Training mode: normalises with the batch's own statistics and returns them.
    pub fn batch_norm_train(&self, x: &Var, gamma: &Var, beta: &Var, eps: f32) -> Result<(Var, BatchStats)> {
        let c = channels_of(x.value());
        ensure!(
            gamma.value().len() == c && beta.value().len() == c,
            "batch norm: {c} channels but affine parameters of {:?}",
            gamma.shape()
        );
        let rows = x.value().len() / c;
        ensure!(rows > 1, "batch norm in training mode needs more than one value per channel");
        let (mean, var) = batch_stats_cpu(x.value().as_slice(), c);
        let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let g = gamma.value().as_slice();
        let scale: Vec<f32> = (0..c).map(|i| g[i] * inv_std[i]).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta.value().as_slice()[i] - mean[i] * scale[i]).collect();
        let y = Tensor::from_vec(x.shape(), scale_shift(x.value().as_slice(), &scale, &shift));
        let unbiased = rows as f32 / (rows - 1) as f32;
        let stats =
            BatchStats { mean: mean.clone(), var_unbiased: var.iter().map(|v| v * unbiased).collect() };
        if !self.needs_grad(&[x, gamma, beta]) {
            return Ok((Var::constant(y), stats));
        }
        let (x_saved, gamma_saved) = (x.value().clone(), gamma.value().clone());
        let var = self.record(
            y,
            &[x, gamma, beta],
            Box::new(move |dy, needs| {
                let (xs, dys) = (x_saved.as_slice(), dy.as_slice());
                let (sum_dy, sum_dy_xhat) = grad_sums(xs, dys, &mean, &inv_std);
                let n = rows as f64;
                let dx = needs[0].then(|| {
                    let g = gamma_saved.as_slice();
                    // dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
                    let a: Vec<f32> = (0..c).map(|i| g[i] * inv_std[i]).collect();
                    let mdy: Vec<f32> = sum_dy.iter().map(|s| (s / n) as f32).collect();
                    let mdx: Vec<f32> = sum_dy_xhat.iter().map(|s| (s / n) as f32).collect();
                    let mut dx = vec![0.0; xs.len()];
                    dx.par_chunks_mut(c * 64).enumerate().for_each(|(k, out)| {
                        let base = k * c * 64;
                        for (r, o) in out.chunks_exact_mut(c).enumerate() {
                            let off = base + r * c;
                            for i in 0..c {
                                let xhat = (xs[off + i] - mean[i]) * inv_std[i];
                                o[i] = a[i] * (dys[off + i] - mdy[i] - xhat * mdx[i]);
                            }
                        }
                    });
                    Tensor::from_vec(x_saved.shape(), dx)
                });
                let dgamma =
                    needs[1].then(|| Tensor::from_vec(&[c], sum_dy_xhat.iter().map(|v| *v as f32).collect()));
                let dbeta =
                    needs[2].then(|| Tensor::from_vec(&[c], sum_dy.iter().map(|v| *v as f32).collect()));
                Ok(vec![dx, dgamma, dbeta])
            }),
        );
        Ok((var, stats))
    }

    /// Evaluation mode: normalises with the running statistics (a fixed affine map).
    pub fn batch_norm_eval(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Var> {
        let c = channels_of(x.value());
        ensure!(
            gamma.value().len() == c
                && beta.value().len() == c
                && running_mean.len() == c
                && running_var.len() == c,
            "batch norm: parameters do not match {c} channels"
        );
        let mean = running_mean.to_vec();
        let inv_std: Vec<f32> = running_var.as_slice().iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let g = gamma.value().as_slice();
        let scale: Vec<f32> = (0..c).map(|i| g[i] * inv_std[i]).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta.value().as_slice()[i] - mean[i] * scale[i]).collect();
        let y = Tensor::from_vec(x.shape(), scale_shift(x.value().as_slice(), &scale, &shift));
        if !self.needs_grad(&[x, gamma, beta]) {
            return Ok(Var::constant(y));
        }
        let x_saved = gamma.requires_grad().then(|| x.value().clone());
        Ok(self.record(
            y,
            &[x, gamma, beta],
            Box::new(move |dy, needs| {
                let dx = needs[0]
                    .then(|| Tensor::from_vec(dy.shape(), scale_shift(dy.as_slice(), &scale, &vec![0.0; c])));
                let mut dgamma = None;
                let mut dbeta = None;
                if needs[1] || needs[2] {
                    let (sum_dy, sum_dy_xhat) = match &x_saved {
                        Some(x) => grad_sums(x.as_slice(), dy.as_slice(), &mean, &inv_std),
                        None => grad_sums(dy.as_slice(), dy.as_slice(), &vec![0.0; c], &vec![0.0; c]),
                    };
                    dgamma = needs[1]
                        .then(|| Tensor::from_vec(&[c], sum_dy_xhat.iter().map(|v| *v as f32).collect()));
                    dbeta =
                        needs[2].then(|| Tensor::from_vec(&[c], sum_dy.iter().map(|v| *v as f32).collect()));
                }
                Ok(vec![dx, dgamma, dbeta])
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::autograd::Tape;
    use crate::ops::gradcheck::{check_gradients, random_tensor};
    use crate::tensor::Tensor;

    #[test]
    fn train_mode_normalises_and_reports_statistics() {
        let x = random_tensor(&[4, 3, 5, 6], 1);
        let t = Tape::no_grad();
        let (g, b) = (t.leaf(Tensor::full(&[6], 2.0), false), t.leaf(Tensor::full(&[6], 0.5), false));
        let (y, stats) = t.batch_norm_train(&t.leaf(x.clone(), false), &g, &b, 1e-5).unwrap();
        let (xs, ys) = (x.as_slice(), y.value().as_slice());
        let n = (xs.len() / 6) as f64;
        for c in 0..6 {
            let vals: Vec<f64> = xs.iter().skip(c).step_by(6).map(|v| *v as f64).collect();
            let mean = vals.iter().sum::<f64>() / n;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            assert!((stats.mean[c] as f64 - mean).abs() < 1e-6);
            assert!((stats.var_unbiased[c] as f64 - var * n / (n - 1.0)).abs() < 1e-5);
            let out: Vec<f64> = ys.iter().skip(c).step_by(6).map(|v| *v as f64).collect();
            let out_mean = out.iter().sum::<f64>() / n;
            let out_var = out.iter().map(|v| (v - out_mean).powi(2)).sum::<f64>() / n;
            assert!((out_mean - 0.5).abs() < 1e-5 && (out_var - 4.0).abs() < 1e-3);
        }
    }

    #[test]
    fn train_mode_gradients() {
        let x = random_tensor(&[3, 5, 3, 4], 2);
        let g = random_tensor(&[4], 3);
        let b = random_tensor(&[4], 4);
        check_gradients(&[x, g, b], |t, v| Ok(t.batch_norm_train(&v[0], &v[1], &v[2], 1e-5)?.0));
    }

    #[test]
    fn eval_mode_gradients() {
        let x = random_tensor(&[2, 3, 3, 5], 5);
        let g = random_tensor(&[5], 6);
        let b = random_tensor(&[5], 7);
        let rm = random_tensor(&[5], 8);
        let rv = Tensor::from_vec(&[5], vec![0.5, 1.0, 2.0, 0.1, 3.0]);
        check_gradients(&[x, g, b], |t, v| t.batch_norm_eval(&v[0], &v[1], &v[2], &rm, &rv, 1e-5));
    }
}
