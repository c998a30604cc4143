//! A training set resident on a kernel device: its images uploaded once as uint8 and its labels
//! once, each epoch's order uploaded once, and every batch assembled and augmented there
//! (`assemble_batch_f32`, kernels/batch.cu) and its labels gathered there (`batch_labels_u32`),
//! so a training step's host work is its launches. The batches are the same, bit for bit, as
//! `make_batch` makes on the host.

use anyhow::{Result, ensure};

use super::{Augment, Dataset, IMAGE_LEN};
use crate::device::Device;
use crate::gpu::{self, Arg, GpuBuffer, LaunchConfig, int};
use crate::rng::Purpose;
use crate::tensor::Tensor;

pub struct ResidentSet {
    device: Device,
    images: GpuBuffer,
    labels: GpuBuffer,
    len: usize,
}

/// One epoch's visiting order, on the device and on the host, and the (seed, epoch) that key
/// its images' augmentation streams.
pub struct EpochOrder {
    indices: Vec<usize>,
    on_device: GpuBuffer,
    seed: u64,
    epoch: u64,
}

impl ResidentSet {
    /// Uploads every image of `ds` to `device` (a kernel device), as uint8, and every label.
    pub fn upload(ds: &Dataset, device: Device) -> Result<ResidentSet> {
        ensure!(device != Device::Cpu, "a resident data set lives on a kernel device, not the cpu");
        let len = ds.len();
        let mut bytes = vec![0u8; len * IMAGE_LEN];
        ds.images_u8(0, &mut bytes);
        let labels: Vec<u32> = (0..len).map(|i| u32::from(ds.label(i))).collect();
        let (images, labels) = (GpuBuffer::upload(device, &bytes)?, GpuBuffer::upload(device, &labels)?);
        Ok(ResidentSet { device, images, labels, len })
    }

    /// The labels of images `order[first..first + count]`, gathered on the device (u32).
    pub fn batch_labels(&self, order: &EpochOrder, first: usize, count: usize) -> Result<GpuBuffer> {
        let out = GpuBuffer::for_output(self.device, count * 4)?;
        self.batch_labels_into(&out, order, first, count)?;
        Ok(out)
    }

    /// `batch_labels` written into `out`.
    pub fn batch_labels_into(
        &self,
        out: &GpuBuffer,
        order: &EpochOrder,
        first: usize,
        count: usize,
    ) -> Result<()> {
        ensure!(
            count > 0 && first + count <= order.indices.len() && out.len_bytes() >= count * 4,
            "the labels of {count} images from {first} of an epoch of {} into {} bytes",
            order.indices.len(),
            out.len_bytes()
        );
        let args = [out.arg(), self.labels.arg(), order.on_device.arg(), int(first), int(count)];
        gpu::launch(self.device, "batch_labels_u32", LaunchConfig::for_elements(count), &args)
    }

    /// Epoch `epoch`'s order (indices of this set) on the device, augmented from `seed`.
    pub fn order(&self, indices: Vec<usize>, seed: u64, epoch: u64) -> Result<EpochOrder> {
        ensure!(
            indices.iter().all(|&i| i < self.len),
            "an epoch order indexes past the set's {} images",
            self.len
        );
        let words: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        Ok(EpochOrder { on_device: GpuBuffer::upload(self.device, &words)?, indices, seed, epoch })
    }

    /// Images `order[first..first + count]` as a batch [copies * count, 32, 32, 3] in [0, 1]
    /// (the batch repeated `copies` times), augmented as `augment` says (AugMix's chains run
    /// afterwards, on the crops).
    pub fn batch(
        &self,
        order: &EpochOrder,
        first: usize,
        count: usize,
        copies: usize,
        augment: Augment,
    ) -> Result<Tensor> {
        ensure!(
            count > 0 && copies > 0 && first + count <= order.indices.len(),
            "a batch of {count} from {first} of an epoch of {}",
            order.indices.len()
        );
        let images = copies * count;
        let out = Tensor::output_on(self.device, &[images, 32, 32, 3])?;
        let args = [
            out.arg(),
            self.images.arg(),
            order.on_device.arg(),
            int(first),
            int(count),
            Arg::I32((augment != Augment::None) as i32),
            Arg::U64(order.seed),
            Arg::U32(Purpose::Augment.id()),
            Arg::U64(order.epoch),
        ];
        gpu::launch(
            self.device,
            "assemble_batch_f32",
            LaunchConfig::new([images as u32, 1, 1], [256, 1, 1]),
            &args,
        )?;
        Ok(out)
    }
}
