//! Checkpoints as safetensors files.
//!
//! `model.safetensors` is the network's state_dict with PyTorch's names and layouts (conv
//! weights OIHW, `num_batches_tracked` as int64), so `safetensors.torch.load_file` gives a
//! dict that PyTorch's PreAct ResNet-18 (or its grouped form) loads. `training_state.safetensors`
//! holds the SGD velocities (`<param>.momentum_buffer`) and, in its metadata, how far training
//! got. Both carry the epoch in their metadata so that a pair from different epochs is caught.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::atomic_file::write_atomic;
use crate::nn::preact_resnet::{PreActResNet, TensorSpec, Weights};
use crate::tensor::Tensor;

pub const MODEL_FILE: &str = "model.safetensors";
pub const TRAINING_STATE_FILE: &str = "training_state.safetensors";

/// How far a run got, stored with its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
}

fn serialize(
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    progress: Progress,
    kind: &str,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| Ok((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("mocse_file".to_string(), kind.to_string()),
        ("epoch".to_string(), progress.epoch.to_string()),
        ("step".to_string(), progress.step.to_string()),
    ]);
    Ok(safetensors::serialize(views, Some(meta))?)
}

type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// A tensor's bytes (copied back from its device) under `name`.
fn f32_entry(name: &str, t: &Tensor) -> Result<Entry> {
    Ok((name.to_string(), Dtype::F32, t.shape().to_vec(), bytemuck::cast_slice(&t.to_host()?).to_vec()))
}

pub fn save_model(path: &Path, net: &PreActResNet, weights: &Weights, progress: Progress) -> Result<()> {
    let mut entries = Vec::new();
    for (spec, t) in net.param_specs().iter().zip(&weights.params) {
        entries.push(f32_entry(&spec.name, t)?);
    }
    for (spec, t) in net.buffer_specs().iter().zip(&weights.buffers) {
        entries.push(f32_entry(&spec.name, t)?);
        if let Some(layer) = spec.name.strip_suffix(".running_var") {
            let count = (progress.step as i64).to_le_bytes().to_vec();
            entries.push((format!("{layer}.num_batches_tracked"), Dtype::I64, vec![], count));
        }
    }
    write_atomic(path, &serialize(entries, progress, "model")?)
}

pub fn save_training_state(
    path: &Path,
    net: &PreActResNet,
    velocity: &[Tensor],
    progress: Progress,
) -> Result<()> {
    let entries = net
        .param_specs()
        .iter()
        .zip(velocity)
        .map(|(spec, t)| f32_entry(&format!("{}.momentum_buffer", spec.name), t))
        .collect::<Result<_>>()?;
    write_atomic(path, &serialize(entries, progress, "training_state")?)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("could not read checkpoint {}", path.display()))
}

fn parse<'a>(path: &Path, bytes: &'a [u8], kind: &str) -> Result<(SafeTensors<'a>, Progress)> {
    let corrupt = || {
        format!(
            "{} is not a valid mocse {kind} checkpoint (corrupt or truncated safetensors file)",
            path.display()
        )
    };
    let st = SafeTensors::deserialize(bytes).with_context(corrupt)?;
    let (_, meta) = SafeTensors::read_metadata(bytes).with_context(corrupt)?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("mocse_file").map(String::as_str) != Some(kind) {
        bail!("{} is not a mocse {kind} checkpoint (its metadata does not say so)", path.display());
    }
    let field = |k: &str| -> Result<u64> {
        meta.get(k)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{}: metadata field '{k}' missing or not a number", path.display()))
    };
    Ok((st, Progress { epoch: field("epoch")? as usize, step: field("step")? }))
}

fn read_f32(path: &Path, st: &SafeTensors<'_>, name: &str, spec: &TensorSpec) -> Result<Tensor> {
    let view = st.tensor(name).with_context(|| {
        format!(
            "{}: tensor '{name}' is missing; the checkpoint does not belong to this model",
            path.display()
        )
    })?;
    ensure!(
        view.dtype() == Dtype::F32,
        "{}: tensor '{name}' is {:?}, expected F32",
        path.display(),
        view.dtype()
    );
    ensure!(
        view.shape() == spec.shape.as_slice(),
        "{}: tensor '{name}' has shape {:?}, this model needs {:?}",
        path.display(),
        view.shape(),
        spec.shape
    );
    let values: Vec<f32> =
        view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Tensor::from_vec(&spec.shape, values))
}

pub fn load_model(path: &Path, net: &PreActResNet) -> Result<(Weights, Progress)> {
    let bytes = read(path)?;
    let (st, progress) = parse(path, &bytes, "model")?;
    let load = |specs: &[TensorSpec]| -> Result<Vec<Tensor>> {
        specs.iter().map(|s| read_f32(path, &st, &s.name, s)).collect()
    };
    let weights = Weights { params: load(net.param_specs())?, buffers: load(net.buffer_specs())? };
    Ok((weights, progress))
}

pub fn load_training_state(path: &Path, net: &PreActResNet) -> Result<(Vec<Tensor>, Progress)> {
    let bytes = read(path)?;
    let (st, progress) = parse(path, &bytes, "training_state")?;
    let velocity = net
        .param_specs()
        .iter()
        .map(|s| read_f32(path, &st, &format!("{}.momentum_buffer", s.name), s))
        .collect::<Result<_>>()?;
    Ok((velocity, progress))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Tape;
    use crate::nn::preact_resnet::NetShape;

    fn outputs(net: &PreActResNet, w: &Weights, images: &Tensor) -> Vec<u32> {
        let tape = Tape::no_grad();
        let params: Vec<_> = w.params.iter().map(|p| tape.leaf(p.clone(), false)).collect();
        let x = tape.leaf(images.clone(), false);
        let out = net.forward(&tape, &params, &mut w.buffers.clone(), &x, false).unwrap();
        out.value().as_slice().iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn saved_and_loaded_model_evaluates_bit_identically() {
        let dir = tempfile::tempdir().unwrap();
        let net = PreActResNet::new(NetShape { groups: 3, width: 2, outputs: 2 });
        let w = net.init_weights(11, [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]);
        let path = dir.path().join(MODEL_FILE);
        save_model(&path, &net, &w, Progress { epoch: 1, step: 1 }).unwrap();
        let (back, _) = load_model(&path, &net).unwrap();
        let images = crate::ops::gradcheck::random_tensor(&[3, 32, 32, 3], 2);
        assert_eq!(outputs(&net, &w, &images), outputs(&net, &back, &images));
    }

    #[test]
    fn round_trip_is_bit_identical_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let net = PreActResNet::new(NetShape { groups: 2, width: 4, outputs: 2 });
        let w = net.init_weights(7, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]);
        let progress = Progress { epoch: 3, step: 120 };
        let path = dir.path().join(MODEL_FILE);
        save_model(&path, &net, &w, progress).unwrap();
        let (back, p) = load_model(&path, &net).unwrap();
        assert_eq!(p, progress);
        for (a, b) in w.params.iter().chain(&w.buffers).zip(back.params.iter().chain(&back.buffers)) {
            assert_eq!(a.shape(), b.shape());
            assert!(a.as_slice().iter().zip(b.as_slice()).all(|(x, y)| x.to_bits() == y.to_bits()));
        }

        let other = PreActResNet::new(NetShape { groups: 1, width: 4, outputs: 10 });
        let err = load_model(&path, &other).unwrap_err().to_string();
        assert!(err.contains("shape"), "{err}");

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", load_model(&path, &net).unwrap_err());
        assert!(err.contains("corrupt or truncated"), "{err}");
        let err = format!("{:#}", load_model(&dir.path().join("none"), &net).unwrap_err());
        assert!(err.contains("could not read checkpoint"), "{err}");
    }
}
