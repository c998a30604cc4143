//! (being written)

use anyhow::{Result, bail};

use super::StreamKey;
use crate::tensor::Tensor;

pub(super) fn apply(_input: &Tensor, _severity: u8, _key: StreamKey) -> Result<Tensor> {
    bail!("frost is not implemented yet")
}
