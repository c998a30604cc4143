//! SGD with momentum, weight decay and optional Nesterov momentum, PyTorch's formulation:
//! g' = g + wd * w;  v = momentum * v + g';  step = nesterov ? g' + momentum * v : v;
//! w = w - lr * step. The velocity starts at zero, which makes the first step v = g'.

use anyhow::{Result, ensure};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, LaunchConfig, int};
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
    sgd_step_all(
        std::slice::from_mut(param),
        std::slice::from_mut(velocity),
        std::slice::from_ref(grad),
        lr,
        cfg,
        None,
    )
}

fn check_shapes(params: &[Tensor], velocity: &[Tensor], grads: &[Tensor]) -> Result<()> {
    ensure!(
        params.len() == velocity.len() && params.len() == grads.len(),
        "sgd: {} parameters, {} velocities and {} gradients",
        params.len(),
        velocity.len(),
        grads.len()
    );
    for ((p, v), g) in params.iter().zip(velocity.iter()).zip(grads) {
        ensure!(
            p.shape() == g.shape() && p.shape() == v.shape(),
            "sgd: parameter {:?}, gradient {:?} and velocity {:?} differ",
            p.shape(),
            g.shape(),
            v.shape()
        );
    }
    Ok(())
}

/// One launch of `sgd_update_f32` over every tensor: parameter i and its velocity written to
/// the addresses `into[i]` (themselves, for an update in place); the learning rate `lr` (an
/// f32), or read from the device at `lr_at` (a pointer; null: `lr`).
#[allow(clippy::too_many_arguments)]
fn launch_update(
    into: &[[u64; 2]],
    params: &[Tensor],
    velocity: &[Tensor],
    grads: &[Tensor],
    lr: Arg,
    lr_at: Arg,
    cfg: &SgdConfig,
    refuse_if: Option<u64>,
) -> Result<()> {
    let Some(first) = params.first() else { return Ok(()) };
    let d = first.device();
    let table: Vec<u64> = params
        .iter()
        .zip(velocity)
        .zip(grads)
        .zip(into)
        .flat_map(|(((p, v), g), [w_out, v_out])| {
            [*w_out, *v_out, p.address(), v.address(), g.address(), p.len() as u64]
        })
        .collect();
    let table = GpuBuffer::upload(d, &table)?;
    let config = LaunchConfig::per_tensor(params.iter().map(Tensor::len), 512);
    let args = [
        table.arg(),
        int(params.len()),
        lr,
        Arg::F32(cfg.momentum),
        Arg::F32(cfg.weight_decay),
        Arg::I32(cfg.nesterov as i32),
        Arg::Ptr(refuse_if.unwrap_or(0)),
        lr_at,
    ];
    gpu::launch(d, "sgd_update_f32", config, &args)
}

/// The update of `sgd_step_all` written over the parameters and velocities themselves, on a
/// kernel device, with the learning rate read there at `lr_at` (an f32): what a graph of the
/// training step replays, whose tensors must keep their addresses and whose learning rate
/// changes between replays. Every other holder of these tensors sees the update.
pub fn sgd_update_in_place(
    params: &[Tensor],
    velocity: &[Tensor],
    grads: &[Tensor],
    lr_at: u64,
    cfg: &SgdConfig,
    refuse_if: Option<u64>,
) -> Result<()> {
    check_shapes(params, velocity, grads)?;
    ensure!(params.iter().all(|p| p.device() != Device::Cpu), "sgd in place is for a kernel device");
    let into: Vec<[u64; 2]> = params.iter().zip(velocity).map(|(p, v)| [p.address(), v.address()]).collect();
    launch_update(&into, params, velocity, grads, Arg::F32(0.0), Arg::Ptr(lr_at), cfg, refuse_if)
}

/// Updates every parameter and its velocity: on the cpu each in place (no copy when they are not
/// shared), on the kernel devices all in one launch into new tensors. There `refuse_if`, the
/// address of a u32 flag on the device, keeps them as they are when the flag is set by then
/// (`flag_nonfinite` on the gradients), without reading it back; the cpu takes no flag.
pub fn sgd_step_all(
    params: &mut [Tensor],
    velocity: &mut [Tensor],
    grads: &[Tensor],
    lr: f32,
    cfg: &SgdConfig,
    refuse_if: Option<u64>,
) -> Result<()> {
    check_shapes(params, velocity, grads)?;
    let Some(first) = params.first() else { return Ok(()) };
    let d = first.device();
    ensure!(d != Device::Cpu || refuse_if.is_none(), "sgd: a device flag on the cpu");
    if d != Device::Cpu {
        let outputs: Vec<(Tensor, Tensor)> = params
            .iter()
            .map(|p| Ok((Tensor::output_on(d, p.shape())?, Tensor::output_on(d, p.shape())?)))
            .collect::<Result<_>>()?;
        let into: Vec<[u64; 2]> = outputs.iter().map(|(w, v)| [w.address(), v.address()]).collect();
        launch_update(&into, params, velocity, grads, Arg::F32(lr), Arg::Ptr(0), cfg, refuse_if)?;
        for ((p, v), (w_out, v_out)) in params.iter_mut().zip(velocity.iter_mut()).zip(outputs) {
            *p = w_out;
            *v = v_out;
        }
        return Ok(());
    }
    let SgdConfig { momentum, weight_decay, nesterov } = *cfg;
    for ((param, velocity), grad) in params.iter_mut().zip(velocity.iter_mut()).zip(grads) {
        let shape = param.shape().to_vec();
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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several tensors of different lengths in one update on emu (one launch over a table)
    /// against the cpu's, step after step.
    #[test]
    fn all_parameters_in_one_launch_match_the_cpu() {
        let cfg = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true };
        let sizes = [5usize, 70_001, 1, 300];
        let make = |device, salt: f32| -> Vec<Tensor> {
            sizes
                .iter()
                .map(|&n| {
                    let v = (0..n).map(|i| (i as f32 * 0.37 + salt).sin() * 2.0).collect();
                    Tensor::from_vec_on(device, &[n], v).unwrap()
                })
                .collect()
        };
        let (mut wc, mut vc) = (make(Device::Cpu, 0.1), make(Device::Cpu, 0.0));
        let (mut we, mut ve) = (make(Device::Emu, 0.1), make(Device::Emu, 0.0));
        for step in 0..3 {
            let (gc, ge) = (make(Device::Cpu, 1.0 + step as f32), make(Device::Emu, 1.0 + step as f32));
            sgd_step_all(&mut wc, &mut vc, &gc, 0.05, &cfg, None).unwrap();
            sgd_step_all(&mut we, &mut ve, &ge, 0.05, &cfg, None).unwrap();
        }
        for (cpu, emu) in wc.iter().chain(&vc).zip(we.iter().chain(&ve)) {
            for (a, b) in cpu.to_vec().iter().zip(emu.to_host().unwrap().to_vec()) {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} against {b}");
            }
        }
    }

    /// A flag set on the device refuses the update there: parameters and velocities come out
    /// as they went in; a clear flag lets it through.
    #[test]
    fn a_set_flag_refuses_the_update_on_the_device() {
        let cfg = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false };
        let on = |v: Vec<f32>| Tensor::from_vec_on(Device::Emu, &[v.len()], v).unwrap();
        for set in [1u32, 0] {
            let flag = GpuBuffer::upload(Device::Emu, &[set]).unwrap();
            let (mut w, mut v) = (vec![on(vec![1.0, -2.0, 3.0])], vec![on(vec![0.5, 0.25, -1.0])]);
            let g = [on(vec![0.1, 0.2, 0.3])];
            sgd_step_all(&mut w, &mut v, &g, 0.1, &cfg, Some(flag.address())).unwrap();
            let (w, v) = (w[0].to_host().unwrap(), v[0].to_host().unwrap());
            if set == 1 {
                assert_eq!((w, v), (vec![1.0, -2.0, 3.0], vec![0.5, 0.25, -1.0]));
            } else {
                assert_ne!(w, vec![1.0, -2.0, 3.0]);
            }
        }
        let mut w = [Tensor::from_vec(&[1], vec![1.0])];
        let mut v = [Tensor::zeros(&[1])];
        assert!(sgd_step_all(&mut w, &mut v, &[Tensor::zeros(&[1])], 0.1, &cfg, Some(8)).is_err());
    }

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
