//! SGD with momentum, weight decay and optional Nesterov momentum, PyTorch's formulation:
//! g' = g + wd * w;  v = momentum * v + g';  step = nesterov ? g' + momentum * v : v;
//! w = w - lr * step. The velocity starts at zero, which makes the first step v = g'.

use anyhow::{Result, ensure};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::gpu::{self, Arg, LaunchConfig, int};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// Updates one parameter and its velocity in place (no copy when they are not shared).
pub fn sgd_step(
    param: &mut Tensor,
    velocity: &mut Tensor,
    grad: &Tensor,
    lr: f32,
    cfg: &SgdConfig,
) -> Result<()> {
    ensure!(
        param.shape() == grad.shape() && param.shape() == velocity.shape(),
        "sgd: parameter {:?}, gradient {:?} and velocity {:?} differ",
        param.shape(),
        grad.shape(),
        velocity.shape()
    );
    let shape = param.shape().to_vec();
    let SgdConfig { momentum, weight_decay, nesterov } = *cfg;
    if param.device() != Device::Cpu {
        let d = param.device();
        let (w_out, v_out) = (Tensor::output_on(d, &shape)?, Tensor::output_on(d, &shape)?);
        let args = [
            w_out.arg(),
            v_out.arg(),
            param.arg(),
            velocity.arg(),
            grad.arg(),
            int(param.len()),
            Arg::F32(lr),
            Arg::F32(momentum),
            Arg::F32(weight_decay),
            Arg::I32(nesterov as i32),
        ];
        gpu::launch(d, "sgd_update_f32", LaunchConfig::for_elements(param.len()), &args)?;
        *param = w_out;
        *velocity = v_out;
        return Ok(());
    }
    let mut w = std::mem::replace(param, Tensor::scalar(0.0)).into_vec();
    let mut v = std::mem::replace(velocity, Tensor::scalar(0.0)).into_vec();
    w.par_iter_mut().zip(v.par_iter_mut()).zip(grad.as_slice().par_iter()).with_min_len(4096).for_each(
        |((w, v), g)| {
            let g = g + weight_decay * *w;
            *v = momentum * *v + g;
            let step = if nesterov { g + momentum * *v } else { *v };
            *w -= lr * step;
        },
    );
    *param = Tensor::from_vec(&shape, w);
    *velocity = Tensor::from_vec(&shape, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps written out by hand in f64.
    #[test]
    fn matches_hand_computed_steps() {
        for nesterov in [false, true] {
            let cfg = SgdConfig { momentum: 0.9, weight_decay: 0.01, nesterov };
            let mut w = Tensor::from_vec(&[2], vec![1.0, -2.0]);
            let mut v = Tensor::zeros(&[2]);
            let grads = [[0.5f64, 0.25], [-1.0, 2.0]];
            let (mut we, mut ve) = ([1.0f64, -2.0], [0.0f64; 2]);
            for g in &grads {
                sgd_step(
                    &mut w,
                    &mut v,
                    &Tensor::from_vec(&[2], g.iter().map(|x| *x as f32).collect()),
                    0.1,
                    &cfg,
                )
                .unwrap();
                for i in 0..2 {
                    let gi = g[i] + 0.01 * we[i];
                    ve[i] = 0.9 * ve[i] + gi;
                    let step = if nesterov { gi + 0.9 * ve[i] } else { ve[i] };
                    we[i] -= 0.1 * step;
                }
            }
            for i in 0..2 {
                assert!((w.as_slice()[i] as f64 - we[i]).abs() < 1e-6);
                assert!((v.as_slice()[i] as f64 - ve[i]).abs() < 1e-6);
            }
        }
    }
}
