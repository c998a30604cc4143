//! Input normalisation per channel, (x - mean) / std, as the model's first op. Keeping it in the
//! model means attacks and corruptions work on pixel values in [0, 1].

use anyhow::{Result, ensure};

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::int;
use crate::ops::elementwise::elementwise_kernel;
use crate::tensor::Tensor;

fn channels(x: &Tensor) -> usize {
    *x.shape().last().unwrap_or(&0)
}

pub fn normalize_forward(x: &Tensor, mean: &Tensor, std: &Tensor) -> Result<Tensor> {
    let c = channels(x);
    match x.device() {
        Device::Cpu => {
            let (m, s) = (mean.as_slice(), std.as_slice());
            let inv: Vec<f32> = s.iter().map(|s| 1.0 / s).collect();
            let y = x.as_slice().iter().enumerate().map(|(i, v)| (v - m[i % c]) * inv[i % c]).collect();
            Ok(Tensor::from_vec(x.shape(), y))
        }
        _ => elementwise_kernel("normalize_fwd_f32", x, &[x.arg(), mean.arg(), std.arg()], &[int(c)]),
    }
}

pub fn normalize_backward(dy: &Tensor, std: &Tensor) -> Result<Tensor> {
    let c = channels(dy);
    match dy.device() {
        Device::Cpu => {
            let inv: Vec<f32> = std.as_slice().iter().map(|s| 1.0 / s).collect();
            Ok(Tensor::from_vec(
                dy.shape(),
                dy.as_slice().iter().enumerate().map(|(i, v)| v * inv[i % c]).collect(),
            ))
        }
        _ => elementwise_kernel("normalize_bwd_f32", dy, &[dy.arg(), std.arg()], &[int(c)]),
    }
}

impl Tape {
    /// `mean` and `std` are [C] tensors on the input's device.
    pub fn normalize(&self, x: &Var, mean: &Tensor, std: &Tensor) -> Result<Var> {
        let c = channels(x.value());
        ensure!(mean.len() == c && std.len() == c, "normalize: {c} channels but {} means", mean.len());
        let y = normalize_forward(x.value(), mean, std)?;
        let std = std.clone();
        Ok(self.record(y, &[x], Box::new(move |g, _| Ok(vec![Some(normalize_backward(g, &std)?)]))))
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::gradcheck::{check_gradients, random_tensor};
    use crate::tensor::Tensor;

    #[test]
    fn gradient() {
        let x = random_tensor(&[2, 3, 3, 3], 1);
        let mean = Tensor::from_vec(&[3], vec![0.5, 0.4, 0.3]);
        let std = Tensor::from_vec(&[3], vec![0.25, 0.2, 0.3]);
        check_gradients(&[x], |t, v| t.normalize(&v[0], &mean, &std));
    }
}
