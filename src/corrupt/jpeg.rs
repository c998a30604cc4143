//! (being written)

use anyhow::{Result, bail};

use crate::tensor::Tensor;

pub(super) fn apply(_input: &Tensor, _severity: u8) -> Result<Tensor> {
    bail!("jpeg_compression is not implemented yet")
}
