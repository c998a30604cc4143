//! Element-wise and shape ops: relu, add, scale, reshape, concatenation along the last axis.

use anyhow::{Result, ensure};
use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

/// Below this many elements a parallel loop costs more than it saves.
const PAR_MIN: usize = 1 << 15;

fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    if a.len() < PAR_MIN {
        a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
    } else {
        a.par_iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
    }
}

fn map(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    if a.len() < PAR_MIN { a.iter().map(|x| f(*x)).collect() } else { a.par_iter().map(|x| f(*x)).collect() }
}

/// a + b without recording anything (also used to accumulate gradients).
pub fn add_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure!(a.shape() == b.shape(), "add: shapes differ: {:?} vs {:?}", a.shape(), b.shape());
    Ok(Tensor::from_vec(a.shape(), zip_map(a.as_slice(), b.as_slice(), |x, y| x + y)))
}

impl Tape {
    pub fn relu(&self, x: &Var) -> Result<Var> {
        // `v < 0` rather than `v.max(0)`: a NaN must propagate (as in PyTorch), not become 0.
        let y = Tensor::from_vec(x.shape(), map(x.value().as_slice(), |v| if v < 0.0 { 0.0 } else { v }));
        if !self.needs_grad(&[x]) {
            return Ok(Var::constant(y));
        }
        // The output's sign pattern is all the backward needs.
        let saved = y.clone();
        Ok(self.record(
            y,
            &[x],
            Box::new(move |g, _| {
                let dx = zip_map(g.as_slice(), saved.as_slice(), |g, y| if y > 0.0 { g } else { 0.0 });
                Ok(vec![Some(Tensor::from_vec(saved.shape(), dx))])
            }),
        ))
    }

    pub fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        let y = add_tensors(a.value(), b.value())?;
        Ok(self.record(y, &[a, b], Box::new(|g, needs| Ok(needs.iter().map(|_| Some(g.clone())).collect()))))
    }

    /// s * x for a constant s.
    pub fn scale(&self, x: &Var, s: f32) -> Result<Var> {
        let y = Tensor::from_vec(x.shape(), map(x.value().as_slice(), |v| v * s));
        Ok(self.record(
            y,
            &[x],
            Box::new(move |g, _| Ok(vec![Some(Tensor::from_vec(g.shape(), map(g.as_slice(), |v| v * s)))])),
        ))
    }

    /// The same values viewed with another shape (no copy).
    pub fn reshape(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        ensure!(
            shape.iter().product::<usize>() == x.value().len(),
            "cannot reshape {:?} to {shape:?}",
            x.shape()
        );
        let original = x.shape().to_vec();
        Ok(self.record(
            x.value().reshape(shape),
            &[x],
            Box::new(move |g, _| Ok(vec![Some(g.reshape(&original))])),
        ))
    }

    /// Concatenates `[B, k_i]`-shaped values into `[B, sum k_i]` (the unfused experts' heads).
    pub fn concat_last(&self, xs: &[Var]) -> Result<Var> {
        ensure!(!xs.is_empty(), "concat of nothing");
        let rows = xs[0].shape()[0];
        let widths: Vec<usize> = xs.iter().map(|x| x.value().len() / rows.max(1)).collect();
        for x in xs {
            ensure!(x.shape()[0] == rows, "concat: batch sizes differ");
        }
        let total: usize = widths.iter().sum();
        let mut out = vec![0.0; rows * total];
        let mut offset = 0;
        for (x, &w) in xs.iter().zip(&widths) {
            for (r, src) in x.value().as_slice().chunks_exact(w).enumerate() {
                out[r * total + offset..r * total + offset + w].copy_from_slice(src);
            }
            offset += w;
        }
        let y = Tensor::from_vec(&[rows, total], out);
        let refs: Vec<&Var> = xs.iter().collect();
        let shapes: Vec<Vec<usize>> = xs.iter().map(|x| x.shape().to_vec()).collect();
        Ok(self.record(
            y,
            &refs,
            Box::new(move |g, needs| {
                let g = g.as_slice();
                let mut offset = 0;
                let mut grads = Vec::new();
                for ((&w, shape), need) in widths.iter().zip(&shapes).zip(needs) {
                    grads.push(need.then(|| {
                        let mut d = Vec::with_capacity(rows * w);
                        for r in 0..rows {
                            d.extend_from_slice(&g[r * total + offset..r * total + offset + w]);
                        }
                        Tensor::from_vec(shape, d)
                    }));
                    offset += w;
                }
                Ok(grads)
            }),
        ))
    }
}

#[cfg(test)]
mod tests {

    use crate::ops::gradcheck::{check_gradients, random_tensor, random_tensor_away_from_zero};

    #[test]
    fn relu_gradient() {
        let a = random_tensor_away_from_zero(&[3, 5, 7], 1);
        check_gradients(&[a], |t, v| t.relu(&v[0]));
    }

    #[test]
    fn add_scale_gradients() {
        let a = random_tensor(&[3, 5, 7], 1);
        let b = random_tensor(&[3, 5, 7], 2);
        check_gradients(&[a, b], |t, v| {
            let s = t.add(&v[0], &v[1])?;
            t.scale(&s, -1.5)
        });
    }

    #[test]
    fn concat_gradients() {
        let a = random_tensor(&[4, 2], 3);
        let b = random_tensor(&[4, 3], 4);
        check_gradients(&[a, b], |t, v| t.concat_last(v));
    }
}
