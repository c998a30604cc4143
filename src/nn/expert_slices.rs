//! Fused MoCSE inference on the cpu, slice of experts by slice of experts. The grouped network's
//! experts never mix until their logits are aggregated, so it can run depth-first: every layer
//! for a few experts, then every layer for the next few. Layer by layer over all N experts, each
//! activation of the first stage (N x width x 32 x 32 per image) leaves the caches before the
//! next layer reads it; in slices of 32 channels it does not. Measured on a 2-core AVX-512 Xeon
//! (BENCHMARKS.md): 10 experts of width 16 infer 1.18-1.27x faster in slices of 2 than all at
//! once, and the bits are the same (each output channel is the same sums in the same order).

use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

use anyhow::Result;

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::nn::preact_resnet::{NetShape, PreActResNet, TensorSpec, Weights};
use crate::parallel;
use crate::tensor::{Storage, Tensor};

/// Experts per slice: 32 channels in the first stage (2 experts of width 16, 1 of width 32 or
/// more). Slices of 2 and 3 experts of width 16 were equally fast, 4 and more slower; single
/// experts of width 32 1.1x faster than pairs.
pub fn experts_per_slice(width: usize) -> usize {
    (32 / width.max(1)).max(1)
}

/// The slices of `experts` experts of width `width`: nearly equal contiguous ranges.
pub fn slices(experts: usize, width: usize) -> Vec<Range<usize>> {
    parallel::split(experts, experts.div_ceil(experts_per_slice(width)))
}

/// The weights of the experts in each of `slices` as a network of their own: every fused
/// parameter and buffer holds the experts' parts one after another along its first axis, except
/// the input normalisation, which every expert shares.
pub fn split_groups(net: &PreActResNet, fused: &Weights, slices: &[Range<usize>]) -> Vec<Weights> {
    let n = net.shape.groups;
    let split = |specs: &[TensorSpec], tensors: &[Tensor]| -> Vec<Vec<Tensor>> {
        let mut per_slice = vec![Vec::with_capacity(tensors.len()); slices.len()];
        for (spec, t) in specs.iter().zip(tensors) {
            if spec.name.starts_with("normalize.") {
                per_slice.iter_mut().for_each(|out| out.push(t.clone()));
                continue;
            }
            let chunk = t.len() / n;
            for (range, out) in slices.iter().zip(per_slice.iter_mut()) {
                let mut shape = t.shape().to_vec();
                shape[0] = shape[0] / n * range.len();
                let data = t.as_slice()[range.start * chunk..range.end * chunk].to_vec();
                out.push(Tensor::from_vec(&shape, data));
            }
        }
        per_slice
    };
    let params = split(net.param_specs(), &fused.params);
    let buffers = split(net.buffer_specs(), &fused.buffers);
    params.into_iter().zip(buffers).map(|(params, buffers)| Weights { params, buffers }).collect()
}

/// One fused network's weights split into slices, kept while the fused tensors live (which
/// never change: a new step's weights are new tensors), so that repeated inference (evaluation
/// batches, the corruptions) splits them once and the convolutions' prepared weights, cached per
/// tensor, are prepared once per slice. An entry whose fused tensors are gone is dropped at the
/// next sliced inference (until then it holds a copy of the weights, as the prepared-weights
/// cache holds their packed forms).
struct SlicedWeights {
    of: Vec<Weak<Storage>>,
    slices: Vec<(Range<usize>, Weights)>,
}

/// The most fused weight sets kept split (a model and, say, an averaged copy of it).
const KEPT: usize = 4;

static SLICED: Mutex<Vec<Arc<SlicedWeights>>> = Mutex::new(Vec::new());

fn sliced_weights(net: &PreActResNet, params: &[Var], buffers: &[Tensor]) -> Arc<SlicedWeights> {
    let tensors: Vec<&Tensor> = params.iter().map(Var::value).chain(buffers).collect();
    let of: Vec<Weak<Storage>> = tensors.iter().map(|t| t.storage_ref()).collect();
    let mut kept = SLICED.lock().unwrap_or_else(|e| e.into_inner());
    kept.retain(|s| s.of.iter().all(|w| w.strong_count() > 0));
    let same =
        |s: &&Arc<SlicedWeights>| s.of.len() == of.len() && s.of.iter().zip(&of).all(|(a, b)| a.ptr_eq(b));
    if let Some(found) = kept.iter().find(same) {
        return found.clone();
    }
    let ranges = slices(net.shape.groups, net.shape.width);
    let fused =
        Weights { params: params.iter().map(|p| p.value().clone()).collect(), buffers: buffers.to_vec() };
    let split = split_groups(net, &fused, &ranges);
    let entry = Arc::new(SlicedWeights { of, slices: ranges.into_iter().zip(split).collect() });
    if kept.len() >= KEPT {
        kept.remove(0);
    }
    kept.push(entry.clone());
    entry
}

/// Whether `forward_by_slices` runs this call: inference (no gradient to any input, running
/// statistics) of a grouped network on the cpu that has more than one slice.
pub fn applies(net: &PreActResNet, tape: &Tape, params: &[Var], images: &Var, train: bool) -> bool {
    let inputs: Vec<&Var> = params.iter().chain([images]).collect();
    !train
        && !tape.needs_grad(&inputs)
        && images.value().device() == Device::Cpu
        && params.iter().all(|p| p.value().device() == Device::Cpu)
        && slices(net.shape.groups, net.shape.width).len() > 1
}

/// `net.forward` in inference, slice by slice (see the module's comment): the logits
/// [B, groups * outputs], the same bits as the fused network's.
pub fn forward_by_slices(
    net: &PreActResNet,
    tape: &Tape,
    params: &[Var],
    buffers: &[Tensor],
    images: &Var,
) -> Result<Var> {
    let sliced = sliced_weights(net, params, buffers);
    // Every expert normalises the same images the same way: once for all slices.
    let x = net.normalize(tape, buffers, images)?;
    let mut logits = Vec::with_capacity(sliced.slices.len());
    for (range, weights) in &sliced.slices {
        let slice_net = PreActResNet::new(NetShape { groups: range.len(), ..net.shape });
        let params: Vec<Var> = weights.params.iter().map(|p| tape.leaf(p.clone(), false)).collect();
        logits.push(slice_net.forward_normalized(tape, &params, &mut weights.buffers.clone(), &x, false)?);
    }
    tape.concat_last(&logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::random_tensor;

    /// A network's initial weights with batch norms that are not the identity: random scales,
    /// shifts and running statistics, so that a slice taking the wrong channels shows.
    fn trained_looking(net: &PreActResNet, seed: u64) -> Weights {
        let mut w = net.init_weights(seed, [0.5; 3], [0.25; 3]);
        let specs = net.param_specs().iter().zip(w.params.iter_mut());
        let buffers = net.buffer_specs().iter().zip(w.buffers.iter_mut());
        for (k, (spec, t)) in specs.chain(buffers).enumerate() {
            let r = random_tensor(t.shape(), seed * 1000 + k as u64).to_vec();
            let around = |centre: f32, spread: f32| r.iter().map(|v| centre + spread * v).collect();
            let values: Option<Vec<f32>> = match spec.name.rsplit('.').next() {
                Some("running_var") => Some(around(1.0, 0.5)),
                Some("running_mean") | Some("bias") if spec.name.contains("bn") => Some(around(0.0, 0.2)),
                Some("weight") if spec.name.contains("bn") => Some(around(1.0, 0.3)),
                _ => None,
            };
            if let Some(values) = values {
                *t = Tensor::from_vec(t.shape(), values);
            }
        }
        w
    }

    /// Slice by slice gives the fused network's logits bit for bit, in slices of 2 experts
    /// (width 16; 3 experts make slices of 1 and 2) and of 1 (width 32); the split is kept for
    /// the same weights and made anew for others.
    #[test]
    fn slices_give_the_fused_bits() {
        for (width, experts, seed) in [(16, 3, 1), (32, 2, 2)] {
            let net = PreActResNet::new(NetShape { groups: experts, width, outputs: 2 });
            let w = trained_looking(&net, seed);
            let tape = Tape::no_grad();
            let params: Vec<Var> = w.params.iter().map(|p| tape.leaf(p.clone(), false)).collect();
            let images: Vec<f32> =
                random_tensor(&[2, 32, 32, 3], seed).to_vec().iter().map(|v| v.abs()).collect();
            let x = tape.leaf(Tensor::from_vec(&[2, 32, 32, 3], images), false);
            assert!(applies(&net, &tape, &params, &x, false));
            assert!(!applies(&net, &tape, &params, &x, true), "training runs the fused network");
            let fused = net.forward(&tape, &params, &mut w.buffers.clone(), &x, false).unwrap();
            let sliced = forward_by_slices(&net, &tape, &params, &w.buffers, &x).unwrap();
            assert_eq!(fused.shape(), sliced.shape());
            let bits = |v: &Var| v.value().to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fused), bits(&sliced), "width {width}, {experts} experts");
            assert!(fused.value().to_vec().iter().all(|v| v.is_finite()));

            let kept = sliced_weights(&net, &params, &w.buffers);
            assert!(Arc::ptr_eq(&kept, &sliced_weights(&net, &params, &w.buffers)), "split once");
            let other: Vec<Var> =
                w.params.iter().map(|p| tape.leaf(Tensor::from_vec(p.shape(), p.to_vec()), false)).collect();
            assert!(!Arc::ptr_eq(&kept, &sliced_weights(&net, &other, &w.buffers)), "other weights");
        }
    }

    #[test]
    fn slices_hold_32_channels_of_the_first_stage() {
        assert_eq!(slices(10, 16), vec![0..2, 2..4, 4..6, 6..8, 8..10]);
        assert_eq!(slices(3, 16), vec![0..1, 1..3]);
        assert_eq!(slices(10, 8).len(), 3);
        assert_eq!(slices(4, 64), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(slices(1, 16), vec![0..1]);
    }
}
