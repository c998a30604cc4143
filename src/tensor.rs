//! Dense f32 tensors. A tensor is a shape plus shared, immutable storage on one device, so
//! recording it on the tape or handing it to several consumers never copies data.

use std::fmt;
use std::sync::{Arc, Weak};

use anyhow::Result;

use crate::device::Device;
use crate::gpu::{Arg, GpuBuffer};

/// Where a tensor's numbers live: host memory for the cpu device, device memory (real, or the
/// emulator's) for the kernel devices.
pub enum Storage {
    Cpu(Vec<f32>),
    Gpu(GpuBuffer),
}

#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

impl Tensor {
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match shape {shape:?}");
        Tensor { shape: shape.to_vec(), storage: Arc::new(Storage::Cpu(data)) }
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::from_vec(shape, vec![0.0; shape.iter().product()])
    }

    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Tensor::from_vec(shape, vec![value; shape.iter().product()])
    }

    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_vec(&[], vec![value])
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A zero tensor on `device`.
    pub fn zeros_on(device: Device, shape: &[usize]) -> Result<Tensor> {
        let n = device_len(device, shape)?;
        let storage = match device {
            Device::Cpu => Storage::Cpu(vec![0.0; n]),
            d => Storage::Gpu(GpuBuffer::zeros(d, n * 4)?),
        };
        Ok(Tensor { shape: shape.to_vec(), storage: Arc::new(storage) })
    }

    /// A tensor over existing device memory.
    pub fn from_gpu(shape: &[usize], buffer: GpuBuffer) -> Tensor {
        assert_eq!(
            buffer.len_bytes(),
            shape.iter().product::<usize>() * 4,
            "buffer does not match shape {shape:?}"
        );
        Tensor { shape: shape.to_vec(), storage: Arc::new(Storage::Gpu(buffer)) }
    }

    /// The device memory of a kernel device's tensor.
    pub fn gpu_buffer(&self) -> Option<&GpuBuffer> {
        match &*self.storage {
            Storage::Gpu(b) => Some(b),
            Storage::Cpu(_) => None,
        }
    }

    /// An op's output, about to be written completely (zeros on the cpu device, NaN on emu so
    /// that a missed element is caught, undefined contents on cuda where a memset would cost).
    pub fn output_on(device: Device, shape: &[usize]) -> Result<Tensor> {
        match device {
            Device::Cpu => Tensor::zeros_on(device, shape),
            d => Ok(Tensor::from_gpu(shape, GpuBuffer::for_output(d, device_len(d, shape)? * 4)?)),
        }
    }

    /// Host numbers placed on `device`.
    pub fn from_vec_on(device: Device, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Tensor::from_vec(shape, data).to_device(device)
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(b) => b.device(),
        }
    }

    /// This tensor on `device` (shared, not copied, when it is already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        let storage = match device {
            Device::Cpu => Storage::Cpu(self.to_host()?),
            d => {
                device_len(d, &self.shape)?;
                Storage::Gpu(GpuBuffer::upload(d, &self.to_host()?)?)
            }
        };
        Ok(Tensor { shape: self.shape.clone(), storage: Arc::new(storage) })
    }

    /// The numbers, copied back from the device where necessary.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        match &*self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::Gpu(b) => b.download(),
        }
    }

    /// The numbers of a cpu tensor. Kernel devices' tensors are reached through `to_host`; an
    /// op's cpu branch is the only caller on a hot path.
    pub fn as_slice(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(v) => v,
            Storage::Gpu(b) => panic!("as_slice on a {} tensor (use to_host)", b.device()),
        }
    }

    /// The device address of a kernel device's tensor, as a kernel argument.
    pub fn arg(&self) -> Arg {
        Arg::Ptr(self.address())
    }

    /// The device address of a kernel device's tensor (for tables of addresses a kernel reads).
    pub fn address(&self) -> u64 {
        match &*self.storage {
            Storage::Gpu(b) => b.address(),
            Storage::Cpu(_) => panic!("a cpu tensor passed to a kernel"),
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.as_slice().to_vec()
    }

    /// The single value of a one-element cpu tensor.
    pub fn item(&self) -> f32 {
        assert_eq!(self.len(), 1, "item() on a tensor of shape {:?}", self.shape);
        self.as_slice()[0]
    }

    /// The single value of a one-element tensor on any device (a loss).
    pub fn scalar_value(&self) -> Result<f32> {
        anyhow::ensure!(self.len() == 1, "a scalar was expected, got shape {:?}", self.shape);
        Ok(self.to_host()?[0])
    }

    /// Same storage, new shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.len(),
            "cannot reshape {:?} to {shape:?}",
            self.shape
        );
        Tensor { shape: shape.to_vec(), storage: self.storage.clone() }
    }

    /// A weak reference to the storage: which data this tensor is, for caches of what is
    /// computed from it (the storage never changes, and while the reference lives no other
    /// tensor can take its address).
    pub(crate) fn storage_ref(&self) -> Weak<Storage> {
        Arc::downgrade(&self.storage)
    }

    /// A cpu tensor's data for writing in place, when nothing else refers to its storage (no
    /// other tensor, and no cache through `storage_ref`), so no one can see it change.
    pub(crate) fn unique_cpu_data(&mut self) -> Option<&mut [f32]> {
        match Arc::get_mut(&mut self.storage) {
            Some(Storage::Cpu(v)) => Some(v),
            _ => None,
        }
    }

    /// Takes a cpu tensor's data out without copying when this is the only reference.
    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.storage) {
            Ok(Storage::Cpu(v)) => v,
            Ok(Storage::Gpu(b)) => panic!("into_vec on a {} tensor", b.device()),
            Err(shared) => match &*shared {
                Storage::Cpu(v) => v.clone(),
                Storage::Gpu(b) => panic!("into_vec on a {} tensor", b.device()),
            },
        }
    }

    /// Whether every value is finite.
    pub fn all_finite(&self) -> Result<bool> {
        crate::ops::elementwise::all_finite(std::slice::from_ref(self))
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?} on {}", self.shape, self.device())
    }
}
/// The number of elements of `shape`, which a tensor on `device` may hold (at most
/// `gpu::MAX_ELEMENTS` on the kernel devices).
fn device_len(device: Device, shape: &[usize]) -> Result<usize> {
    let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match n {
        Some(n) if device == Device::Cpu || n <= crate::gpu::MAX_ELEMENTS => Ok(n),
        _ => anyhow::bail!(
            "a tensor of shape {shape:?} is larger than the {device} device's kernels index (at most {} elements); \
             use a smaller batch or width",
            crate::gpu::MAX_ELEMENTS
        ),
    }
}
