//! The cuDNN baseline (`--conv-impl cudnn`): the same convolutions, grouped included, in all
//! three directions, through cuDNN on the `cuda` device, so the project's kernels can be compared
//! with it in one process. NHWC activations like the kernels, and their precision: strict f32
//! (FMA math, no TF32), or bf16 tensors with f32 accumulation on the tensor cores (operands
//! rounded to bf16 for the call, the result widened back, as PyTorch's autocast does).
//!
//! Filters go to cuDNN as the kernels keep them (OIHW) where cuDNN supports that beside NHWC
//! activations; where it has no algorithm for a direction with them (an H200 with cuDNN 9 has
//! none for backward data), that direction takes cuDNN's NHWC filters (OHWI), transposed on the
//! device for the call. Per geometry and direction the plan (descriptors, the first algorithm
//! cuDNN's heuristics rank that it reports supported, its workspace) is made once and kept.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use anyhow::{Result, anyhow, bail};
use cudarc::cudnn::{result, sys};

use super::{Arg, GpuBuffer};
use crate::device::Device;
use crate::ops::conv::{ConvGeometry, Direction};
use crate::ops::elementwise::{round_to_bf16, transpose_batched, widen_bf16};
use crate::precision::Precision;
use crate::tensor::Tensor;

/// How many convolutions the calling thread has run through cuDNN so far.
pub fn calls() -> usize {
    CALLS.with(|c| c.get())
}

/// Whether the cuDNN library can be loaded.
pub fn available() -> bool {
    // SAFETY: only tries to load the library; cudarc panics on first use without it.
    unsafe { sys::is_culib_present() }
}

fn check(what: &str, status: Result<(), result::CudnnError>) -> Result<()> {
    status.map_err(|e| anyhow!("cuDNN {what}: {e:?}"))
}

/// A cuDNN handle on the stream the kernels use (bound to the thread that created it).
struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by `handle` and destroyed once.
        unsafe { result::destroy_handle(self.0) }.ok();
    }
}

struct Descriptors {
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each was created by `descriptors` and is destroyed once.
        unsafe {
            result::destroy_tensor_descriptor(self.x).ok();
            result::destroy_tensor_descriptor(self.y).ok();
            result::destroy_filter_descriptor(self.w).ok();
            result::destroy_convolution_descriptor(self.conv).ok();
        }
    }
}

#[derive(Clone, Copy)]
enum Algorithm {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    BackwardData(sys::cudnnConvolutionBwdDataAlgo_t),
    BackwardFilter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// One geometry's setup for one direction.
struct Plan {
    d: Descriptors,
    /// The filter in cuDNN's NHWC format (OHWI), transposed for the call.
    filter_ohwi: bool,
    algorithm: Algorithm,
    workspace_bytes: usize,
}

thread_local! {
    /// Convolutions this thread has run through cuDNN (the selftest checks the switch reaches it).
    static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static HANDLE: RefCell<Option<Rc<Handle>>> = const { RefCell::new(None) };
    static PLANS: RefCell<HashMap<(ConvGeometry, Direction, Precision), Rc<Plan>>> = RefCell::new(HashMap::new());
    static WORKSPACE: RefCell<Option<GpuBuffer>> = const { RefCell::new(None) };
}

fn handle() -> Result<Rc<Handle>> {
    if !available() {
        bail!("cuDNN (libcudnn.so.9) was not found on the loader path; --conv-impl cudnn needs it");
    }
    HANDLE.with(|h| {
        if let Some(handle) = h.borrow().as_ref() {
            return Ok(handle.clone());
        }
        let stream = &super::cuda::backend()?.stream;
        stream.context().bind_to_thread()?;
        let handle = Handle(result::create_handle().map_err(|e| anyhow!("cuDNN: {e:?}"))?);
        // SAFETY: both are live; the stream outlives the process's use of cuDNN (a static backend).
        check("stream", unsafe { result::set_stream(handle.0, stream.cu_stream() as *mut _) })?;
        let handle = Rc::new(handle);
        *h.borrow_mut() = Some(handle.clone());
        Ok(handle)
    })
}

fn dims(v: [usize; 4]) -> [i32; 4] {
    v.map(|d| d as i32)
}

fn descriptors(g: &ConvGeometry, filter_ohwi: bool, precision: Precision) -> Result<Descriptors> {
    let nhwc = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
    let f32_type = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
    let (data_type, math) = match precision {
        Precision::F32 => (f32_type, sys::cudnnMathType_t::CUDNN_FMA_MATH),
        Precision::Bf16 => {
            (sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16, sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH)
        }
    };
    let e = |e| anyhow!("cuDNN descriptor: {e:?}");
    let d = Descriptors {
        x: result::create_tensor_descriptor().map_err(e)?,
        y: result::create_tensor_descriptor().map_err(e)?,
        w: result::create_filter_descriptor().map_err(e)?,
        conv: result::create_convolution_descriptor().map_err(e)?,
    };
    let filter_format = if filter_ohwi { nhwc } else { sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW };
    let (p, s) = (g.padding as i32, g.stride as i32);
    // SAFETY: the descriptors were created above; dims are given in cuDNN's NCHW order whatever
    // the memory format.
    unsafe {
        check(
            "x",
            result::set_tensor4d_descriptor(
                d.x,
                nhwc,
                data_type,
                dims([g.batch, g.in_channels, g.height, g.width]),
            ),
        )?;
        let y = dims([g.batch, g.out_channels, g.out_height, g.out_width]);
        check("y", result::set_tensor4d_descriptor(d.y, nhwc, data_type, y))?;
        check("w", result::set_filter4d_descriptor(d.w, data_type, filter_format, dims(g.weight_shape())))?;
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        // f32 accumulation in both precisions.
        check("conv", result::set_convolution2d_descriptor(d.conv, p, p, s, s, 1, 1, mode, f32_type))?;
        check("groups", result::set_convolution_group_count(d.conv, g.groups as i32))?;
        check("math", result::set_convolution_math_type(d.conv, math))?;
    }
    Ok(d)
}

/// The first algorithm of cuDNN's heuristic ranking that it reports supported, with its
/// workspace, or None; `statuses` collects what each candidate reported.
fn pick(
    h: &Handle,
    d: &Descriptors,
    direction: Direction,
    statuses: &mut Vec<String>,
) -> Option<(Algorithm, usize)> {
    let mut count = 0;
    macro_rules! first_supported {
        ($perf:ty, $query:ident, $size:ident, $wrap:ident, ($($args:expr),*)) => {{
            // SAFETY: plain-data structs that cuDNN fills; the handle and descriptors are live.
            let mut perf: [$perf; 16] = unsafe { std::mem::zeroed() };
            unsafe { result::$query(h.0, $($args),*, 16, &mut count, perf.as_mut_ptr()) }.ok()?;
            perf[..count.max(0) as usize].iter().find_map(|p| {
                statuses.push(format!("{:?}: {:?}", p.algo, p.status));
                if p.status != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
                    return None;
                }
                let bytes = unsafe { result::$size(h.0, $($args),*, p.algo) }.ok()?;
                Some((Algorithm::$wrap(p.algo), bytes))
            })
        }};
    }
    match direction {
        Direction::Forward => first_supported!(
            sys::cudnnConvolutionFwdAlgoPerf_t,
            get_convolution_forward_algorithm,
            get_convolution_forward_workspace_size,
            Forward,
            (d.x, d.w, d.conv, d.y)
        ),
        Direction::BackwardData => first_supported!(
            sys::cudnnConvolutionBwdDataAlgoPerf_t,
            get_convolution_backward_data_algorithm,
            get_convolution_backward_data_workspace_size,
            BackwardData,
            (d.w, d.y, d.conv, d.x)
        ),
        Direction::BackwardWeight => first_supported!(
            sys::cudnnConvolutionBwdFilterAlgoPerf_t,
            get_convolution_backward_filter_algorithm,
            get_convolution_backward_filter_workspace_size,
            BackwardFilter,
            (d.x, d.y, d.conv, d.w)
        ),
    }
}

/// Whether the switch to OHWI filters was reported (once per process).
static SAID_OHWI: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn plan(h: &Handle, g: &ConvGeometry, direction: Direction, precision: Precision) -> Result<Rc<Plan>> {
    let key = (*g, direction, precision);
    if let Some(p) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
        return Ok(p);
    }
    let mut statuses = Vec::new();
    for filter_ohwi in [false, true] {
        let d = descriptors(g, filter_ohwi, precision)?;
        let tried_oihw = statuses.len();
        if let Some((algorithm, workspace_bytes)) = pick(h, &d, direction, &mut statuses) {
            if filter_ohwi && !SAID_OHWI.swap(true, std::sync::atomic::Ordering::Relaxed) {
                eprintln!(
                    "cuDNN has no {direction:?} algorithm for OIHW filters beside NHWC activations \
                     ({}); it gets the filters transposed to OHWI instead",
                    statuses[..tried_oihw].join(", ")
                );
            }
            let p = Rc::new(Plan { d, filter_ohwi, algorithm, workspace_bytes });
            PLANS.with(|plans| plans.borrow_mut().insert(key, p.clone()));
            return Ok(p);
        }
    }
    bail!(
        "cuDNN supports no {direction:?} algorithm for {g:?} in {precision} (OIHW or OHWI filters): {}",
        statuses.join(", ")
    )
}

/// The device address of a tensor or buffer (`arg()`) on the cuda device.
fn ptr(device: Device, arg: Arg) -> Result<*mut c_void> {
    match (device, arg) {
        (Device::Cuda, Arg::Ptr(p)) => Ok(p as *mut c_void),
        (d, _) => bail!("cuDNN needs tensors on the cuda device, not {d}"),
    }
}

/// An operand as cuDNN reads it: the f32 tensor itself, or a bf16 copy.
enum Operand<'a> {
    F32(&'a Tensor),
    Bf16(GpuBuffer),
}

impl Operand<'_> {
    fn of(t: &Tensor, precision: Precision) -> Result<Operand<'_>> {
        Ok(match precision {
            Precision::F32 => Operand::F32(t),
            Precision::Bf16 => Operand::Bf16(round_to_bf16(t)?),
        })
    }

    fn ptr(&self) -> Result<*mut c_void> {
        match self {
            Operand::F32(t) => ptr(t.device(), t.arg()),
            Operand::Bf16(b) => ptr(b.device(), b.arg()),
        }
    }
}

/// The result cuDNN writes: an f32 tensor, or bf16 widened to one after the call.
enum Output {
    F32(Tensor),
    Bf16(GpuBuffer),
}

impl Output {
    fn new(shape: &[usize], precision: Precision) -> Result<Output> {
        Ok(match precision {
            Precision::F32 => Output::F32(Tensor::output_on(Device::Cuda, shape)?),
            Precision::Bf16 => {
                Output::Bf16(GpuBuffer::for_output(Device::Cuda, shape.iter().product::<usize>() * 2)?)
            }
        })
    }

    fn ptr(&self) -> Result<*mut c_void> {
        match self {
            Output::F32(t) => ptr(t.device(), t.arg()),
            Output::Bf16(b) => ptr(b.device(), b.arg()),
        }
    }

    fn into_f32(self, shape: &[usize]) -> Result<Tensor> {
        match self {
            Output::F32(t) => Ok(t),
            Output::Bf16(b) => widen_bf16(&b, shape),
        }
    }
}

/// A device buffer of at least `bytes`, kept for the next call (null for none).
fn workspace(bytes: usize) -> Result<*mut c_void> {
    if bytes == 0 {
        return Ok(std::ptr::null_mut());
    }
    WORKSPACE.with(|w| {
        let mut w = w.borrow_mut();
        if w.as_ref().is_none_or(|b| b.len_bytes() < bytes) {
            *w = Some(GpuBuffer::for_output(Device::Cuda, bytes)?);
        }
        match w.as_ref().map(GpuBuffer::arg) {
            Some(Arg::Ptr(p)) => Ok(p as *mut c_void),
            _ => bail!("cuDNN workspace"),
        }
    })
}

/// OIHW -> OHWI (or back, `to_oihw`) on the device.
fn filter_layout(w: &Tensor, g: &ConvGeometry, to_oihw: bool) -> Result<Tensor> {
    let [o, i, k, _] = g.weight_shape();
    if to_oihw {
        transpose_batched(w, o, k * k, i, &[o, i, k, k])
    } else {
        transpose_batched(w, o, i, k * k, &[o, k, k, i])
    }
}

/// Runs one direction: `a` and `b` are its two operands in cuDNN's argument order (x and w, w
/// and dy, x and dy).
fn run(
    direction: Direction,
    a: &Tensor,
    b: &Tensor,
    g: &ConvGeometry,
    precision: Precision,
) -> Result<Tensor> {
    let h = handle()?;
    let p = plan(&h, g, direction, precision)?;
    let [o, i, k, _] = g.weight_shape();
    let out_shape = match direction {
        Direction::Forward => g.output_shape(),
        Direction::BackwardData => [g.batch, g.height, g.width, g.in_channels],
        // In the plan's filter layout; turned back to OIHW below.
        Direction::BackwardWeight if p.filter_ohwi => [o, k, k, i],
        Direction::BackwardWeight => [o, i, k, k],
    };
    let ohwi;
    let (a, b) = match (p.filter_ohwi, direction) {
        (true, Direction::Forward) => (a, {
            ohwi = filter_layout(b, g, false)?;
            &ohwi
        }),
        (true, Direction::BackwardData) => (
            {
                ohwi = filter_layout(a, g, false)?;
                &ohwi
            },
            b,
        ),
        _ => (a, b),
    };
    let (a, b) = (Operand::of(a, precision)?, Operand::of(b, precision)?);
    let out = Output::new(&out_shape, precision)?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (alpha, beta) = (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void);
    let ws = workspace(p.workspace_bytes)?;
    let (pa, pb, po, d) = (a.ptr()?, b.ptr()?, out.ptr()?, &p.d);
    let n = p.workspace_bytes;
    // SAFETY: the pointers are live device buffers of the descriptors' sizes, on the stream the
    // handle uses; the workspace has at least the bytes cuDNN asked for.
    let status = unsafe {
        match p.algorithm {
            Algorithm::Forward(algo) => {
                result::convolution_forward(h.0, alpha, d.x, pa, d.w, pb, d.conv, algo, ws, n, beta, d.y, po)
            }
            Algorithm::BackwardData(algo) => result::convolution_backward_data(
                h.0, alpha, d.w, pa, d.y, pb, d.conv, algo, ws, n, beta, d.x, po,
            ),
            Algorithm::BackwardFilter(algo) => result::convolution_backward_filter(
                h.0, alpha, d.x, pa, d.y, pb, d.conv, algo, ws, n, beta, d.w, po,
            ),
        }
    };
    check(&format!("{direction:?}"), status)?;
    CALLS.with(|c| c.set(c.get() + 1));
    let out = out.into_f32(&out_shape)?;
    if p.filter_ohwi && direction == Direction::BackwardWeight {
        return filter_layout(&out, g, true);
    }
    Ok(out)
}

pub fn forward(x: &Tensor, w: &Tensor, g: &ConvGeometry, precision: Precision) -> Result<Tensor> {
    run(Direction::Forward, x, w, g, precision)
}

pub fn backward_data(dy: &Tensor, w: &Tensor, g: &ConvGeometry, precision: Precision) -> Result<Tensor> {
    run(Direction::BackwardData, w, dy, g, precision)
}

pub fn backward_weight(x: &Tensor, dy: &Tensor, g: &ConvGeometry, precision: Precision) -> Result<Tensor> {
    run(Direction::BackwardWeight, x, dy, g, precision)
}
