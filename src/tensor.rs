//! Dense f32 tensors. A tensor is a shape plus shared, immutable storage on one device, so
//! recording it on the tape or handing it to several consumers never copies data.

use std::fmt;
use std::sync::Arc;

use crate::device::Device;

/// Where a tensor's numbers live. The GPU and emulator back ends add their variants here.
#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
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

    pub fn device(&self) -> Device {
        match *self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    /// The host-side numbers. Every device can provide them (the GPU by copying back).
    pub fn as_slice(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(v) => v,
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.as_slice().to_vec()
    }

    /// The single value of a one-element tensor (a loss).
    pub fn item(&self) -> f32 {
        assert_eq!(self.len(), 1, "item() on a tensor of shape {:?}", self.shape);
        self.as_slice()[0]
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

    /// Takes the data out without copying when this is the only reference.
    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.storage) {
            Ok(Storage::Cpu(v)) => v,
            Err(shared) => match &*shared {
                Storage::Cpu(v) => v.clone(),
            },
        }
    }

    pub fn all_finite(&self) -> bool {
        self.as_slice().iter().all(|v| v.is_finite())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?} on {}", self.shape, self.device())
    }
}
