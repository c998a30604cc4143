//! Element-wise and shape ops: relu, add, scale, reshape, concatenation along the last axis.

use anyhow::{Result, ensure};
use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, LaunchConfig, int};
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

/// Runs an element-wise kernel `name(out, args.., n, tail..)` over a new tensor shaped like `like`.
pub(crate) fn elementwise_kernel(name: &str, like: &Tensor, args: &[Arg], tail: &[Arg]) -> Result<Tensor> {
    let out = Tensor::output_on(like.device(), like.shape())?;
    let mut all = vec![out.arg()];
    all.extend_from_slice(args);
    all.push(int(like.len()));
    all.extend_from_slice(tail);
    gpu::launch(like.device(), name, LaunchConfig::for_elements(like.len()), &all)?;
    Ok(out)
}

/// a + b without recording anything (also used to accumulate gradients).
pub fn add_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ensure!(a.shape() == b.shape(), "add: shapes differ: {:?} vs {:?}", a.shape(), b.shape());
    match a.device() {
        Device::Cpu => Ok(Tensor::from_vec(a.shape(), zip_map(a.as_slice(), b.as_slice(), |x, y| x + y))),
        _ => elementwise_kernel("add_f32", a, &[a.arg(), b.arg()], &[]),
    }
}

/// a + b, written over whichever of the two is a cpu tensor that nothing else holds (no new
/// buffer, whose pages would be cleared first), else into a new one. The same values as
/// `add_tensors` either way.
pub fn sum_owned(mut a: Tensor, mut b: Tensor) -> Result<Tensor> {
    ensure!(a.shape() == b.shape(), "add: shapes differ: {:?} vs {:?}", a.shape(), b.shape());
    let add_into = |into: &mut [f32], other: &Tensor| {
        let other = other.as_slice();
        if into.len() < PAR_MIN {
            into.iter_mut().zip(other).for_each(|(x, y)| *x += y);
        } else {
            into.par_iter_mut().zip(other).for_each(|(x, y)| *x += y);
        }
    };
    if let Some(data) = a.unique_cpu_data() {
        add_into(data, &b);
        return Ok(a);
    }
    if let Some(data) = b.unique_cpu_data() {
        add_into(data, &a);
        return Ok(b);
    }
    add_tensors(&a, &b)
}

pub fn relu_forward(x: &Tensor) -> Result<Tensor> {
    match x.device() {
        // `v < 0` rather than `v.max(0)`: a NaN must propagate (as in PyTorch), not become 0.
        Device::Cpu => Ok(Tensor::from_vec(x.shape(), map(x.as_slice(), |v| if v < 0.0 { 0.0 } else { v }))),
        _ => elementwise_kernel("relu_fwd_f32", x, &[x.arg()], &[]),
    }
}

/// The output's sign pattern is all the backward needs.
pub fn relu_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    match dy.device() {
        Device::Cpu => Ok(Tensor::from_vec(
            y.shape(),
            zip_map(dy.as_slice(), y.as_slice(), |g, y| if y > 0.0 { g } else { 0.0 }),
        )),
        _ => elementwise_kernel("relu_bwd_f32", y, &[dy.arg(), y.arg()], &[]),
    }
}

pub fn scale_tensor(x: &Tensor, s: f32) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => Ok(Tensor::from_vec(x.shape(), map(x.as_slice(), |v| v * s))),
        _ => elementwise_kernel("scale_f32", x, &[x.arg(), Arg::F32(s)], &[]),
    }
}

/// s * x written at `out`, an address of x's length on x's kernel device (a result a graph's
/// replay leaves there, such as its loss).
pub fn scale_tensor_into(x: &Tensor, s: f32, out: u64) -> Result<()> {
    let d = x.device();
    ensure!(d != Device::Cpu, "a device address for a tensor on the cpu");
    let args = [Arg::Ptr(out), x.arg(), Arg::F32(s), int(x.len())];
    gpu::launch(d, "scale_f32", LaunchConfig::for_elements(x.len()), &args)
}

/// (1 - t) * a + t * b: the running averages of batch norm.
pub fn lerp(a: &Tensor, b: &Tensor, t: f32) -> Result<Tensor> {
    ensure!(a.shape() == b.shape(), "lerp: shapes differ: {:?} vs {:?}", a.shape(), b.shape());
    match a.device() {
        Device::Cpu => {
            Ok(Tensor::from_vec(a.shape(), zip_map(a.as_slice(), b.as_slice(), |x, y| (1.0 - t) * x + t * y)))
        }
        _ => elementwise_kernel("lerp_f32", a, &[a.arg(), b.arg(), Arg::F32(t)], &[]),
    }
}

/// Whether every value of every tensor is finite. On a kernel device one flag is set on the
/// device and read back once, instead of copying the tensors back.
pub fn all_finite(tensors: &[Tensor]) -> Result<bool> {
    let Some(first) = tensors.first() else { return Ok(true) };
    match first.device() {
        Device::Cpu => {
            // Blocks checked whole (no early exit inside one, so the check vectorises), in parallel.
            let finite = |block: &[f32]| block.iter().fold(true, |ok, v| ok & v.is_finite());
            Ok(tensors.iter().all(|t| t.as_slice().par_chunks(PAR_MIN).all(finite)))
        }
        d => {
            let flag = GpuBuffer::zeros(d, 4)?;
            flag_nonfinite(tensors, flag.address())?;
            Ok(flag.download::<u32>()?[0] == 0)
        }
    }
}

/// dst = src in place on a kernel device, unless the u32 at `flag` there is set.
pub fn copy_unless_flagged(dst: &Tensor, src: &Tensor, flag: u64) -> Result<()> {
    ensure!(dst.shape() == src.shape(), "copy: shapes differ: {:?} vs {:?}", dst.shape(), src.shape());
    let d = dst.device();
    ensure!(d != Device::Cpu && src.device() == d, "a flagged copy on one kernel device");
    let args = [dst.arg(), src.arg(), Arg::Ptr(flag), int(dst.len())];
    gpu::launch(d, "copy_unless_flagged_f32", LaunchConfig::for_elements(dst.len()), &args)
}

/// Sets the u32 at `flag`, an address on the tensors' kernel device, to nonzero where a value of
/// a tensor is not finite (else leaves it): one launch over a table of (address, length),
/// blockIdx.y the tensor, and nothing read back.
pub fn flag_nonfinite(tensors: &[Tensor], flag: u64) -> Result<()> {
    let Some(first) = tensors.first() else { return Ok(()) };
    let d = first.device();
    ensure!(d != Device::Cpu, "a device flag for tensors on the cpu");
    ensure!(tensors.iter().all(|t| t.device() == d), "flagging tensors on several devices");
    let table: Vec<u64> = tensors.iter().flat_map(|t| [t.address(), t.len() as u64]).collect();
    let table = GpuBuffer::upload(d, &table)?;
    let config = LaunchConfig::per_tensor(tensors.iter().map(Tensor::len), 256);
    gpu::launch(d, "flag_nonfinite_f32", config, &[Arg::Ptr(flag), table.arg(), int(tensors.len())])
}

/// The cpu side of `transpose_batched`: each `rows` x `cols` matrix of `x` transposed, in
/// parallel over the matrices.
pub(crate) fn transpose_matrices(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(rows * cols).zip(x.par_chunks(rows * cols)).for_each(|(to, from)| {
        for (r, row) in from.chunks_exact(cols).enumerate() {
            row.iter().enumerate().for_each(|(c, v)| to[c * rows + r] = *v);
        }
    });
    y
}

/// y[b, c, r] = x[b, r, c]: `batches` matrices of `rows` x `cols` each transposed, into a tensor
/// of shape `shape` (the filter layouts OIHW <-> OHWI for cuDNN's NHWC filters).
pub fn transpose_batched(
    x: &Tensor,
    batches: usize,
    rows: usize,
    cols: usize,
    shape: &[usize],
) -> Result<Tensor> {
    ensure!(
        x.len() == batches * rows * cols && shape.iter().product::<usize>() == x.len(),
        "transpose: {batches} x {rows} x {cols} does not fit {:?} -> {shape:?}",
        x.shape()
    );
    match x.device() {
        Device::Cpu => Ok(Tensor::from_vec(shape, transpose_matrices(x.as_slice(), rows, cols))),
        d => {
            let out = Tensor::output_on(d, shape)?;
            let args = [out.arg(), x.arg(), int(batches), int(rows), int(cols)];
            gpu::launch(d, "transpose_batched_f32", LaunchConfig::for_elements(x.len()), &args)?;
            Ok(out)
        }
    }
}

/// x rounded to bf16, as a device buffer of bf16 bits (2 bytes per element): the operands of
/// cuDNN's bf16 mode. Rounds to nearest even, as `half::bf16::from_f32`.
pub fn round_to_bf16(x: &Tensor) -> Result<GpuBuffer> {
    let d = x.device();
    ensure!(d != Device::Cpu, "bf16 buffers live on the kernel devices, not the cpu");
    let out = GpuBuffer::for_output(d, x.len() * 2)?;
    gpu::launch(
        d,
        "round_to_bf16",
        LaunchConfig::for_elements(x.len()),
        &[out.arg(), x.arg(), int(x.len())],
    )?;
    Ok(out)
}

/// The f32 tensor of shape `shape` holding the values of a buffer of bf16 bits.
pub fn widen_bf16(x: &GpuBuffer, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    ensure!(x.len_bytes() == 2 * n, "{} bytes of bf16 for a tensor of shape {shape:?}", x.len_bytes());
    let out = Tensor::output_on(x.device(), shape)?;
    gpu::launch(x.device(), "widen_bf16", LaunchConfig::for_elements(n), &[out.arg(), x.arg(), int(n)])?;
    Ok(out)
}

/// dst[r, dst_offset..dst_offset + width] = src[r, src_offset..src_offset + width] for every row,
/// into a new [rows, dst_width] tensor assembled from several sources.
fn copy_columns(
    device: Device,
    rows: usize,
    dst_width: usize,
    parts: &[(&Tensor, usize, usize, usize)],
) -> Result<Tensor> {
    let out = Tensor::output_on(device, &[rows, dst_width])?;
    match device {
        Device::Cpu => {
            let mut data = out.into_vec();
            for &(src, src_offset, dst_offset, width) in parts {
                let src_width = src.len() / rows.max(1);
                for (r, row) in data.chunks_exact_mut(dst_width).enumerate() {
                    row[dst_offset..dst_offset + width]
                        .copy_from_slice(&src.as_slice()[r * src_width + src_offset..][..width]);
                }
            }
            Ok(Tensor::from_vec(&[rows, dst_width], data))
        }
        _ => {
            for &(src, src_offset, dst_offset, width) in parts {
                let src_width = src.len() / rows.max(1);
                let args = [
                    out.arg(),
                    int(dst_width),
                    int(dst_offset),
                    src.arg(),
                    int(src_width),
                    int(src_offset),
                    int(rows),
                    int(width),
                ];
                gpu::launch(device, "copy_columns_f32", LaunchConfig::for_elements(rows * width), &args)?;
            }
            Ok(out)
        }
    }
}

impl Tape {
    pub fn relu(&self, x: &Var) -> Result<Var> {
        let y = relu_forward(x.value())?;
        if !self.needs_grad(&[x]) {
            return Ok(Var::constant(y));
        }
        let saved = y.clone();
        Ok(self.record(y, &[x], Box::new(move |g, _| Ok(vec![Some(relu_backward(g, &saved)?)]))))
    }

    pub fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        let y = add_tensors(a.value(), b.value())?;
        Ok(self.record(y, &[a, b], Box::new(|g, needs| Ok(needs.iter().map(|_| Some(g.clone())).collect()))))
    }

    /// `add` that may write the sum over `a`'s tensor when nothing else holds it (a residual
    /// block's last convolution output, which no backward keeps), saving a new buffer.
    pub fn add_consuming(&self, a: Var, b: &Var) -> Result<Var> {
        let (a_value, a) = a.split_value();
        let y = sum_owned(a_value, b.value().clone())?;
        Ok(self.record(y, &[&a, b], Box::new(|g, needs| Ok(needs.iter().map(|_| Some(g.clone())).collect()))))
    }

    /// s * x for a constant s.
    pub fn scale(&self, x: &Var, s: f32) -> Result<Var> {
        let y = scale_tensor(x.value(), s)?;
        Ok(self.record(y, &[x], Box::new(move |g, _| Ok(vec![Some(scale_tensor(g, s)?)]))))
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

    /// The first `count` entries of `x` along its first axis (the clean third of AugMix's
    /// batch of three views); the gradient of the rest is zero.
    pub fn leading_rows(&self, x: &Var, count: usize) -> Result<Var> {
        let shape = x.shape().to_vec();
        ensure!(
            !shape.is_empty() && (1..=shape[0]).contains(&count),
            "leading_rows: {count} rows of {shape:?}"
        );
        let device = x.value().device();
        let (kept, total) = (x.value().len() / shape[0] * count, x.value().len());
        let mut out_shape = shape.clone();
        out_shape[0] = count;
        let y = copy_columns(device, 1, kept, &[(x.value(), 0, 0, kept)])?.reshape(&out_shape);
        Ok(self.record(
            y,
            &[x],
            Box::new(move |g, _| {
                if kept == total {
                    return Ok(vec![Some(g.reshape(&shape))]);
                }
                let rest = Tensor::zeros_on(device, &[1, total - kept])?;
                let parts = [(g, 0, 0, kept), (&rest, 0, kept, total - kept)];
                Ok(vec![Some(copy_columns(device, 1, total, &parts)?.reshape(&shape))])
            }),
        ))
    }

    /// Concatenates `[B, k_i]`-shaped values into `[B, sum k_i]` (the unfused experts' heads).
    pub fn concat_last(&self, xs: &[Var]) -> Result<Var> {
        ensure!(!xs.is_empty(), "concat of nothing");
        let rows = xs[0].shape()[0];
        let device = xs[0].value().device();
        let widths: Vec<usize> = xs.iter().map(|x| x.value().len() / rows.max(1)).collect();
        for x in xs {
            ensure!(x.shape()[0] == rows, "concat: batch sizes differ");
        }
        let total: usize = widths.iter().sum();
        let offsets: Vec<usize> =
            widths.iter().scan(0, |acc, w| Some(std::mem::replace(acc, *acc + w))).collect();
        let parts: Vec<_> =
            xs.iter().zip(&widths).zip(&offsets).map(|((x, &w), &o)| (x.value(), 0, o, w)).collect();
        let y = copy_columns(device, rows, total, &parts)?;
        let refs: Vec<&Var> = xs.iter().collect();
        Ok(self.record(
            y,
            &refs,
            Box::new(move |g, needs| {
                let mut grads = Vec::new();
                for ((&w, &o), need) in widths.iter().zip(&offsets).zip(needs) {
                    grads.push(if *need {
                        Some(copy_columns(device, rows, w, &[(g, o, 0, w)])?)
                    } else {
                        None
                    });
                }
                Ok(grads)
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::device::Device;
    use crate::tensor::Tensor;

    /// One launch checks every tensor, each whole: a non-finite value anywhere in any of them
    /// (past the first blocks of a long one, in the last of many) is found, on emu as on cpu.
    #[test]
    fn all_finite_finds_any_nonfinite_value_in_any_tensor() {
        let sizes = [3usize, 70_000, 1, 513];
        for device in [Device::Cpu, Device::Emu] {
            let make = |bad: Option<(usize, usize, f32)>| -> Vec<Tensor> {
                sizes
                    .iter()
                    .enumerate()
                    .map(|(t, &n)| {
                        let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
                        if let Some((bt, bi, value)) = bad
                            && bt == t
                        {
                            v[bi] = value;
                        }
                        Tensor::from_vec_on(device, &[n], v).unwrap()
                    })
                    .collect()
            };
            assert!(super::all_finite(&make(None)).unwrap(), "{device}");
            for (t, i, value) in
                [(1, 69_999, f32::NAN), (3, 512, f32::INFINITY), (0, 0, f32::NEG_INFINITY), (2, 0, f32::NAN)]
            {
                assert!(
                    !super::all_finite(&make(Some((t, i, value)))).unwrap(),
                    "{device}: {value} in tensor {t} at {i}"
                );
            }
        }
    }

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
    fn consuming_add_reuses_an_unshared_buffer_and_matches_add() {
        use crate::autograd::Tape;
        use crate::tensor::Tensor;
        // Large enough for the parallel path.
        let (a, b) = (random_tensor(&[70, 1000], 3), random_tensor(&[70, 1000], 4));
        let tape = Tape::new();
        let (va, vb) = (tape.leaf(a.clone(), true), tape.leaf(b.clone(), true));
        // `a` itself still holds the buffer: a new one is written, `a` is untouched.
        let shared = tape.add_consuming(va.clone(), &vb).unwrap();
        assert_eq!(shared.value().to_vec(), super::add_tensors(&a, &b).unwrap().to_vec());
        assert_eq!(va.value().to_vec(), a.to_vec());
        // A product no one else holds is overwritten with the sum.
        let product = tape.scale(&va, 2.0).unwrap();
        let at = product.value().as_slice().as_ptr();
        let expected = super::add_tensors(product.value(), &b).unwrap().to_vec();
        let sum = tape.add_consuming(product, &vb).unwrap();
        assert_eq!(sum.value().as_slice().as_ptr(), at);
        assert_eq!(sum.value().to_vec(), expected);
        // Gradients as `add`'s: d(2a + b + a + b)/da = 3, /db = 2.
        let total = tape.add(&sum, &shared).unwrap();
        let grads = tape.backward_from(&total, Tensor::full(total.shape(), 1.0)).unwrap();
        assert!(grads.get(&va).unwrap().to_vec().iter().all(|g| *g == 3.0));
        assert!(grads.get(&vb).unwrap().to_vec().iter().all(|g| *g == 2.0));
    }

    #[test]
    fn leading_rows_gradients() {
        check_gradients(&[random_tensor(&[6, 3, 2], 5)], |t, v| t.leading_rows(&v[0], 2));
        check_gradients(&[random_tensor(&[4, 3], 6)], |t, v| t.leading_rows(&v[0], 4));
    }

    #[test]
    fn concat_gradients() {
        let a = random_tensor(&[4, 2], 3);
        let b = random_tensor(&[4, 3], 4);
        check_gradients(&[a, b], |t, v| t.concat_last(v));
    }
}
