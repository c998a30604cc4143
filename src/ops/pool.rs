//! Global average pooling: [B, H, W, C] -> [B, C].

use anyhow::{Result, ensure};

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, LaunchConfig, int};
use crate::tensor::Tensor;

pub fn global_avg_pool_forward(x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    let (b, hw, c) = (s[0], s[1] * s[2], s[3]);
    match x.device() {
        Device::Cpu => {
            let xs = x.as_slice();
            let mut y = vec![0.0f32; b * c];
            for (n, out) in y.chunks_exact_mut(c).enumerate() {
                for p in 0..hw {
                    for (o, v) in out.iter_mut().zip(&xs[(n * hw + p) * c..][..c]) {
                        *o += v;
                    }
                }
                out.iter_mut().for_each(|o| *o /= hw as f32);
            }
            Ok(Tensor::from_vec(&[b, c], y))
        }
        d => {
            let y = Tensor::output_on(d, &[b, c])?;
            let args = [y.arg(), x.arg(), int(b), int(hw), int(c)];
            gpu::launch(d, "gap_fwd_f32", LaunchConfig::for_elements(b * c), &args)?;
            Ok(y)
        }
    }
}

/// dx[b, p, c] = dy[b, c] / (H * W); `shape` is the input's.
pub fn global_avg_pool_backward(dy: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let (b, hw, c) = (shape[0], shape[1] * shape[2], shape[3]);
    match dy.device() {
        Device::Cpu => {
            let g = dy.as_slice();
            let mut dx = vec![0.0f32; b * hw * c];
            for (i, d) in dx.chunks_exact_mut(c).enumerate() {
                let n = i / hw;
                for (dv, gv) in d.iter_mut().zip(&g[n * c..(n + 1) * c]) {
                    *dv = gv / hw as f32;
                }
            }
            Ok(Tensor::from_vec(shape, dx))
        }
        d => {
            let dx = Tensor::output_on(d, shape)?;
            let args = [dx.arg(), dy.arg(), int(b), int(hw), int(c)];
            gpu::launch(d, "gap_bwd_f32", LaunchConfig::for_elements(dx.len()), &args)?;
            Ok(dx)
        }
    }
}

impl Tape {
    pub fn global_avg_pool(&self, x: &Var) -> Result<Var> {
        let s = x.shape().to_vec();
        ensure!(s.len() == 4, "global average pool needs [B, H, W, C], got {s:?}");
        let y = global_avg_pool_forward(x.value())?;
        Ok(self.record(y, &[x], Box::new(move |g, _| Ok(vec![Some(global_avg_pool_backward(g, &s)?)]))))
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::gradcheck::{check_gradients, random_tensor};

    #[test]
    fn gradient() {
        let x = random_tensor(&[3, 4, 5, 6], 1);
        check_gradients(&[x], |t, v| t.global_avg_pool(&v[0]));
    }
}
