//! (being written)

use anyhow::{Result, bail};

use super::{Corruption, StreamKey};
use crate::tensor::Tensor;

pub(super) fn apply(
    corruption: Corruption,
    _input: &Tensor,
    _severity: u8,
    _key: StreamKey,
) -> Result<Tensor> {
    bail!("{corruption} is not implemented yet")
}
