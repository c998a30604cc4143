//! conv(relu(batch_norm(x))) as one op, the pre-activation network's pattern, in training and in
//! inference. The normalised, rectified activation is computed where the convolution reads its
//! input and never stored, in the forward pass and again for the weight gradient, while batch
//! norm's backward recomputes its relu mask from x as it always does: the activation is neither
//! written nor read back. The kernel devices do so in every layer (the convolution kernels'
//! gathers apply the map, `ChannelMap`, and add the residual as they write); the cpu where it
//! runs the convolution with the direct kernels (in the padded copy of the input they make
//! anyway). Every value is the same, bit for bit, as the two ops one after the other, which
//! cuDNN and the cpu's other layers run.

use anyhow::Result;

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::ops::batchnorm::{
    Activation, BatchStats, ReluAffine, ReluAfter, bn_grad_sums, bn_train_backward_data,
    check_eval_parameters, inv_std_of,
};
use crate::ops::conv::{
    Conv2dParams, ConvEngine, ConvGeometry, CpuConv, Direction, conv_engine, conv2d_backward_data,
    conv2d_backward_weight_mapped, conv2d_forward_mapped, cpu_conv,
};
use crate::tensor::Tensor;

/// Whether `device` applies the map as it reads in `g`'s forward pass and weight gradient: the
/// kernel devices always; the cpu where it computes both with the direct kernels, which apply
/// it in the padded copy they make anyway (Winograd and the GEMM would store map(x) first, once
/// in the forward pass and again for the weight gradient, which costs more than storing it
/// once: those layers run the two ops); cuDNN never.
fn maps_as_it_reads(device: Device, g: &ConvGeometry) -> Result<bool> {
    Ok(match conv_engine(device)? {
        ConvEngine::Cpu => {
            [Direction::Forward, Direction::BackwardWeight].iter().all(|d| cpu_conv(g, *d) == CpuConv::Direct)
        }
        ConvEngine::Kernels(_) => true,
        ConvEngine::Cudnn(_) => false,
    })
}

impl Tape {
    /// conv(relu(batch_norm(x)), w) + residual (nothing added without one) with batch norm in
    /// training mode (the batch's own statistics, returned for the running averages). Where the
    /// map is applied as the convolution reads, the residual is added as it writes y.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_relu_conv2d(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        eps: f32,
        w: &Var,
        p: Conv2dParams,
        residual: Option<&Var>,
    ) -> Result<(Var, BatchStats)> {
        let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
        let mut inputs = vec![x, gamma, beta, w];
        inputs.extend(residual);
        let one_device = inputs.iter().all(|v| v.value().device() == x.value().device());
        if !(one_device && self.needs_grad(&inputs) && maps_as_it_reads(x.value().device(), &g)?) {
            let (a, stats) = self.batch_norm_train(x, gamma, beta, eps, Activation::Relu)?;
            let y = self.conv2d(&a, w, p)?;
            let y = match residual {
                Some(r) => self.add_consuming(y, r)?,
                None => y,
            };
            return Ok((y, stats));
        }
        let (mean, inv_std, var_unbiased) = self.train_statistics(x, gamma, beta, eps)?;
        let map = ReluAffine::new(&mean, &inv_std, gamma.value(), beta.value())?;
        // y is summed per channel as it is written, for the batch norm that reads it next.
        let (y, sums) =
            conv2d_forward_mapped(x.value(), &map, w.value(), p, residual.map(Var::value), false, true)?;
        let stats = BatchStats { mean: mean.clone(), var_unbiased };
        let (x_saved, w_saved) = (x.value().clone(), w.value().clone());
        let relu = ReluAfter { gamma: gamma.value().clone(), beta: beta.value().clone() };
        let var = self.record(
            y,
            &inputs,
            Box::new(move |dy, needs| {
                let dw =
                    needs[3].then(|| conv2d_backward_weight_mapped(&x_saved, &map, dy, &g)).transpose()?;
                let (dx, dgamma, dbeta) = if needs[0] || needs[1] || needs[2] {
                    // The gradient at batch norm's output (the relu's, which its backward masks).
                    let da = conv2d_backward_data(dy, &w_saved, &g, false)?;
                    let sums = bn_grad_sums(&x_saved, &da, Some(&relu), &mean, &inv_std)?;
                    let dx = match needs[0] {
                        true => Some(bn_train_backward_data(
                            &da,
                            Some(&relu),
                            &x_saved,
                            &mean,
                            &inv_std,
                            &relu.gamma,
                            &sums,
                        )?),
                        false => None,
                    };
                    let (dbeta, dgamma) = sums;
                    (dx, needs[1].then_some(dgamma), needs[2].then_some(dbeta))
                } else {
                    (None, None, None)
                };
                let mut out = vec![dx, dgamma, dbeta, dw];
                // The residual's gradient is dy itself.
                if let Some(&wanted) = needs.get(4) {
                    out.push(wanted.then(|| dy.clone()));
                }
                Ok(out)
            }),
        );
        if let Some(sums) = sums {
            self.offer_channel_sums(&var, sums);
        }
        Ok((var, stats))
    }

    /// conv(relu(batch_norm(x)), w) + residual (nothing added without one) with batch norm in
    /// evaluation mode (the running statistics). Without gradients (inference, the corruption
    /// evaluation) the kernel devices and the cpu's direct kernels apply batch norm as they
    /// read, as in training, and add the residual as they write y (every cpu algorithm does,
    /// chunk by chunk), so the sum without it is not stored; with gradients (attacks), and on
    /// cuDNN, these are the ops one by one.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_relu_conv2d_eval(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        w: &Var,
        p: Conv2dParams,
        residual: Option<&Var>,
    ) -> Result<Var> {
        let mut inputs = vec![x, gamma, beta, w];
        inputs.extend(residual);
        let device = x.value().device();
        let one_device = inputs.iter().all(|v| v.value().device() == device);
        let mapped = one_device && !matches!(conv_engine(device)?, ConvEngine::Cudnn(_));
        if !mapped || self.needs_grad(&inputs) {
            let a = self.batch_norm_eval(x, gamma, beta, running_mean, running_var, eps, Activation::Relu)?;
            let y = self.conv2d(&a, w, p)?;
            return match residual {
                Some(r) => self.add_consuming(y, r),
                None => Ok(y),
            };
        }
        check_eval_parameters(x, gamma, beta, running_mean, running_var)?;
        let map = ReluAffine::new(running_mean, &inv_std_of(running_var, eps)?, gamma.value(), beta.value())?;
        // The weights are constants used again on the next batch: prepared once, as `conv2d` does.
        let (y, _) =
            conv2d_forward_mapped(x.value(), &map, w.value(), p, residual.map(Var::value), true, false)?;
        Ok(Var::constant(y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::random_tensor;
    use crate::precision::{self, Precision};
    use crate::tensor::Tensor;

    /// One training step's values through `bn_relu_conv2d` or through batch norm + relu, the
    /// convolution and the residual's add as ops one by one: y, the batch statistics, then dx,
    /// dgamma, dbeta, dw and (with a fifth input, the residual) its gradient.
    fn step(device: Device, inputs: &[Tensor], p: Conv2dParams, fused: bool) -> Vec<Vec<f32>> {
        let t = Tape::new();
        let v: Vec<Var> = inputs.iter().map(|x| t.leaf(x.to_device(device).unwrap(), true)).collect();
        let (y, stats) = if fused {
            t.bn_relu_conv2d(&v[0], &v[1], &v[2], 1e-5, &v[3], p, v.get(4)).unwrap()
        } else {
            let (a, stats) = t.batch_norm_train(&v[0], &v[1], &v[2], 1e-5, Activation::Relu).unwrap();
            let y = t.conv2d(&a, &v[3], p).unwrap();
            (v.get(4).map_or(y.clone(), |r| t.add(&y, r).unwrap()), stats)
        };
        let dy = random_tensor(y.shape(), 7).to_device(device).unwrap();
        let host = |t: &Tensor| t.to_host().unwrap();
        let mut out = vec![host(y.value()), host(&stats.mean), host(&stats.var_unbiased)];
        let grads = t.backward_from(&y, dy).unwrap();
        out.extend(v.iter().map(|v| host(grads.get(v).unwrap())));
        out
    }

    /// The devices and precisions the identities hold on: the cpu, and the kernels through the
    /// emulator in f32 and in bf16 (both forms round the same mapped values).
    fn settings() -> [(Device, Precision); 3] {
        [(Device::Cpu, Precision::F32), (Device::Emu, Precision::F32), (Device::Emu, Precision::Bf16)]
    }

    /// Fused and as two ops give the same bits, on the cpu on layers the direct kernels run
    /// (where the activation is never stored: 16 channels as in both models' first stage, grouped
    /// ones, a batch of 1, odd sizes, stride 2 where AVX-512 makes its weight gradient direct)
    /// and on layers that run the two ops (Winograd's); on the kernel devices on all of them.
    #[test]
    fn equals_batch_norm_relu_then_conv_bit_for_bit() {
        let p = |stride, groups| Conv2dParams { stride, padding: 1, groups };
        let layers = [
            ([3, 8, 8, 16], [16, 16, 3, 3], p(1, 1)),
            ([1, 7, 9, 16], [16, 16, 3, 3], p(1, 1)),
            ([2, 6, 6, 40], [40, 4, 3, 3], p(1, 10)),
            ([2, 9, 9, 32], [32, 32, 3, 3], p(1, 1)),
            ([2, 8, 8, 16], [32, 16, 3, 3], p(2, 1)),
        ];
        let mapped: Vec<bool> = layers
            .iter()
            .map(|(xs, ws, p)| {
                maps_as_it_reads(Device::Cpu, &ConvGeometry::new(xs, ws, *p).unwrap()).unwrap()
            })
            .collect();
        if !conv_forced() {
            assert!(mapped[0] && !mapped[3], "both kinds of layer are covered: {mapped:?}");
        }
        for (n, (xs, ws, p)) in layers.into_iter().enumerate() {
            let c = xs[3];
            let n = n as u64;
            let inputs = [
                random_tensor(&xs, n),
                random_tensor(&[c], 10 + n),
                random_tensor(&[c], 20 + n),
                random_tensor(&ws, 30 + n),
            ];
            for (device, precision) in settings() {
                let (fused, apart) = precision::scoped(precision, || {
                    (step(device, &inputs, p, true), step(device, &inputs, p, false))
                });
                for (i, (a, b)) in fused.iter().zip(&apart).enumerate() {
                    let same = a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{device} {precision} layer {n}, value {i} (y, mean, var, dx, dgamma, dbeta, dw)"
                    );
                }
            }
        }
    }

    /// In evaluation mode without gradients (inference), one op and the ops one by one (batch
    /// norm + relu, the convolution, the residual's add) give the same bits, with and without a
    /// residual, on layers of each algorithm: direct (16 channels, a grouped one, stride 2),
    /// Winograd F(4x4) (32 channels per group on 9x9 images) and F(2x2) (on 7x5 images, grouped,
    /// and on 4x4 ones).
    #[test]
    fn evaluation_equals_batch_norm_relu_conv_then_add_bit_for_bit() {
        let p = |stride, groups| Conv2dParams { stride, padding: 1, groups };
        let layers = [
            ([3, 8, 8, 16], [16, 16, 3, 3], p(1, 1)),
            ([2, 6, 6, 40], [40, 4, 3, 3], p(1, 10)),
            ([2, 8, 8, 16], [32, 16, 3, 3], p(2, 1)),
            ([2, 9, 9, 32], [32, 32, 3, 3], p(1, 1)),
            ([2, 7, 5, 64], [64, 32, 3, 3], p(1, 2)),
            ([3, 4, 4, 32], [32, 32, 3, 3], p(1, 1)),
        ];
        for ((n, (xs, ws, p)), (device, precision)) in
            layers.into_iter().enumerate().flat_map(|layer| settings().map(|s| (layer, s)))
        {
            precision::set(precision);
            let n = n as u64;
            let c = xs[3];
            let t = Tape::no_grad();
            let leaf = |v: Tensor| t.leaf(v.to_device(device).unwrap(), false);
            let (x, gamma, beta, w) = (
                leaf(random_tensor(&xs, n)),
                leaf(random_tensor(&[c], 10 + n)),
                leaf(random_tensor(&[c], 20 + n)),
                leaf(random_tensor(&ws, 30 + n)),
            );
            let mean = random_tensor(&[c], 40 + n).to_device(device).unwrap();
            let var = Tensor::from_vec(
                &[c],
                random_tensor(&[c], 50 + n).to_vec().iter().map(|v| v.abs() + 0.1).collect(),
            )
            .to_device(device)
            .unwrap();
            let a = t.batch_norm_eval(&x, &gamma, &beta, &mean, &var, 1e-5, Activation::Relu).unwrap();
            let apart = t.conv2d(&a, &w, p).unwrap();
            let residual = leaf(random_tensor(apart.shape(), 60 + n));
            let summed = t.add_consuming(t.conv2d(&a, &w, p).unwrap(), &residual).unwrap();
            for (with_residual, expected) in [(None, &apart), (Some(&residual), &summed)] {
                let one_op = t
                    .bn_relu_conv2d_eval(&x, &gamma, &beta, &mean, &var, 1e-5, &w, p, with_residual)
                    .unwrap();
                let bits =
                    |v: &Var| v.value().to_host().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(one_op.shape(), expected.shape());
                let what = format!("{device} {precision} layer {n}, residual {}", with_residual.is_some());
                assert!(bits(&one_op) == bits(expected), "{what}");
            }
        }
        precision::set(Precision::F32);
    }

    /// Whether MOCSE_CPU_CONV forces an algorithm (then any layer may be direct, or none).
    fn conv_forced() -> bool {
        std::env::var_os("MOCSE_CPU_CONV").is_some()
    }
}
