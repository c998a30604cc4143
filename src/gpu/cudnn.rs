//! The cuDNN baseline (`--conv-impl cudnn`): the same convolutions, grouped included, through
//! cuDNN on the `cuda` device, so the project's kernels can be compared with it in one process.
//! Strict f32 (FMA math, no TF32), NHWC activations and OIHW filters like the kernels,
//! algorithms chosen by cuDNN's heuristics.

use std::cell::RefCell;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use cudarc::cudnn::{ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn, sys};
use cudarc::driver::CudaSlice;

use super::GpuBuffer;
use crate::ops::conv::ConvGeometry;
use crate::tensor::Tensor;

thread_local! {
    // A cuDNN handle is bound to the thread that created it.
    static HANDLE: RefCell<Option<Arc<Cudnn>>> = const { RefCell::new(None) };
}

/// Whether the cuDNN library can be loaded.
pub fn available() -> bool {
    // SAFETY: only tries to load the library; cudarc panics on first use without it.
    unsafe { sys::is_culib_present() }
}

fn handle() -> Result<Arc<Cudnn>> {
    if !available() {
        bail!("cuDNN (libcudnn.so.9) was not found on the loader path; --conv-impl cudnn needs it");
    }
    HANDLE.with(|h| {
        if let Some(handle) = h.borrow().as_ref() {
            return Ok(handle.clone());
        }
        let stream = super::cuda::backend()?.stream.clone();
        let handle = Cudnn::new(stream).map_err(|e| anyhow!("cuDNN: {e:?}"))?;
        *h.borrow_mut() = Some(handle.clone());
        Ok(handle)
    })
}

fn dims(v: [usize; 4]) -> [i32; 4] {
    v.map(|d| d as i32)
}

struct Descriptors {
    x: cudarc::cudnn::TensorDescriptor<f32>,
    w: cudarc::cudnn::FilterDescriptor<f32>,
    y: cudarc::cudnn::TensorDescriptor<f32>,
    conv: cudarc::cudnn::ConvDescriptor<f32>,
}

fn descriptors(cudnn: &Arc<Cudnn>, g: &ConvGeometry) -> Result<Descriptors> {
    let nhwc = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
    let e = |e| anyhow!("cuDNN descriptor: {e:?}");
    let x =
        cudnn.create_4d_tensor::<f32>(nhwc, dims([g.batch, g.in_channels, g.height, g.width])).map_err(e)?;
    let y = cudnn
        .create_4d_tensor::<f32>(nhwc, dims([g.batch, g.out_channels, g.out_height, g.out_width]))
        .map_err(e)?;
    let w = cudnn
        .create_4d_filter::<f32>(sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, dims(g.weight_shape()))
        .map_err(e)?;
    let (p, s) = (g.padding as i32, g.stride as i32);
    let mut conv = cudnn
        .create_conv2d::<f32>([p, p], [s, s], [1, 1], sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION)
        .map_err(e)?;
    conv.set_group_count(g.groups as i32).map_err(e)?;
    conv.set_math_type(sys::cudnnMathType_t::CUDNN_FMA_MATH).map_err(e)?;
    Ok(Descriptors { x, w, y, conv })
}

fn slice(t: &Tensor) -> Result<&CudaSlice<u8>> {
    t.gpu_buffer()
        .and_then(GpuBuffer::cuda_slice)
        .ok_or_else(|| anyhow!("cuDNN needs tensors on the cuda device"))
}

fn workspace(bytes: usize) -> Result<Option<CudaSlice<u8>>> {
    let stream = &super::cuda::backend()?.stream;
    Ok(if bytes == 0 { None } else { Some(stream.alloc_zeros::<u8>(bytes)?) })
}

/// An output of `n` floats: cuDNN writes into it, then it becomes a tensor.
fn output(n: usize) -> Result<CudaSlice<u8>> {
    Ok(super::cuda::backend()?.stream.alloc_zeros::<u8>(n * 4)?)
}

pub fn forward(x: &Tensor, w: &Tensor, g: &ConvGeometry) -> Result<Tensor> {
    let cudnn = handle()?;
    let d = descriptors(&cudnn, g)?;
    let op = ConvForward { conv: &d.conv, x: &d.x, w: &d.w, y: &d.y };
    let e = |e| anyhow!("cuDNN forward: {e:?}");
    let algo = op.pick_algorithm().map_err(e)?;
    let mut ws = workspace(op.get_workspace_size(algo).map_err(e)?)?;
    let mut y = output(g.output_shape().iter().product())?;
    // SAFETY: the views cover exactly the descriptors' tensors; all live on the stream cuDNN uses.
    unsafe {
        let (xv, wv) = (slice(x)?.transmute::<f32>(x.len()), slice(w)?.transmute::<f32>(w.len()));
        let n = y.len() / 4;
        let mut yv = y.transmute_mut::<f32>(n).ok_or_else(|| anyhow!("output view"))?;
        op.launch(algo, ws.as_mut(), (1.0, 0.0), &xv.expect("x view"), &wv.expect("w view"), &mut yv)
            .map_err(e)?;
    }
    Ok(Tensor::from_gpu(&g.output_shape(), GpuBuffer::from_cuda_slice(y)))
}

pub fn backward_data(dy: &Tensor, w: &Tensor, g: &ConvGeometry) -> Result<Tensor> {
    let cudnn = handle()?;
    let d = descriptors(&cudnn, g)?;
    let op = ConvBackwardData { conv: &d.conv, dx: &d.x, w: &d.w, dy: &d.y };
    let e = |e| anyhow!("cuDNN backward data: {e:?}");
    let algo = op.pick_algorithm().map_err(e)?;
    let mut ws = workspace(op.get_workspace_size(algo).map_err(e)?)?;
    let shape = [g.batch, g.height, g.width, g.in_channels];
    let mut dx = output(shape.iter().product())?;
    // SAFETY: as in `forward`.
    unsafe {
        let (dyv, wv) = (slice(dy)?.transmute::<f32>(dy.len()), slice(w)?.transmute::<f32>(w.len()));
        let n = dx.len() / 4;
        let mut dxv = dx.transmute_mut::<f32>(n).ok_or_else(|| anyhow!("output view"))?;
        op.launch(algo, ws.as_mut(), (1.0, 0.0), &mut dxv, &wv.expect("w view"), &dyv.expect("dy view"))
            .map_err(e)?;
    }
    Ok(Tensor::from_gpu(&shape, GpuBuffer::from_cuda_slice(dx)))
}

pub fn backward_weight(x: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Result<Tensor> {
    let cudnn = handle()?;
    let d = descriptors(&cudnn, g)?;
    let op = ConvBackwardFilter { conv: &d.conv, x: &d.x, dw: &d.w, dy: &d.y };
    let e = |e| anyhow!("cuDNN backward filter: {e:?}");
    let algo = op.pick_algorithm().map_err(e)?;
    let mut ws = workspace(op.get_workspace_size(algo).map_err(e)?)?;
    let mut dw = output(g.weight_shape().iter().product())?;
    // SAFETY: as in `forward`.
    unsafe {
        let (xv, dyv) = (slice(x)?.transmute::<f32>(x.len()), slice(dy)?.transmute::<f32>(dy.len()));
        let n = dw.len() / 4;
        let mut dwv = dw.transmute_mut::<f32>(n).ok_or_else(|| anyhow!("output view"))?;
        op.launch(algo, ws.as_mut(), (1.0, 0.0), &xv.expect("x view"), &mut dwv, &dyv.expect("dy view"))
            .map_err(e)?;
    }
    Ok(Tensor::from_gpu(&g.weight_shape(), GpuBuffer::from_cuda_slice(dw)))
}
