//! Input normalisation per channel, (x - mean) / std, as the model's first op. Keeping it in the
//! model means attacks and corruptions work on pixel values in [0, 1].

use anyhow::{Result, ensure};

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

impl Tape {
    pub fn normalize(&self, x: &Var, mean: &[f32], std: &[f32]) -> Result<Var> {
        let c = *x.shape().last().unwrap_or(&0);
        ensure!(mean.len() == c && std.len() == c, "normalize: {c} channels but {} means", mean.len());
        let inv: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
        let y: Vec<f32> =
            x.value().as_slice().iter().enumerate().map(|(i, v)| (v - mean[i % c]) * inv[i % c]).collect();
        Ok(self.record(
            Tensor::from_vec(x.shape(), y),
            &[x],
            Box::new(move |g, _| {
                let d = g.as_slice().iter().enumerate().map(|(i, v)| v * inv[i % c]).collect();
                Ok(vec![Some(Tensor::from_vec(g.shape(), d))])
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::gradcheck::{check_gradients, random_tensor};

    #[test]
    fn gradient() {
        let x = random_tensor(&[2, 3, 3, 3], 1);
        check_gradients(&[x], |t, v| t.normalize(&v[0], &[0.5, 0.4, 0.3], &[0.25, 0.2, 0.3]));
    }
}
