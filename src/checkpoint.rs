//! Checkpoints as safetensors files, saved as one transaction and read as untrusted input.
//!
//! `model.safetensors` is the network's state_dict with PyTorch's names and layouts (conv
//! weights OIHW, `num_batches_tracked` as int64), so `safetensors.torch.load_file` gives a
//! dict that PyTorch's PreAct ResNet-18 (or its grouped form) loads. `training_state.safetensors`
//! holds the SGD velocities (`<param>.momentum_buffer`) and, in its metadata, how far training
//! got and the epoch's log line. Both carry the run's settings (config.json as it was) and the
//! same checkpoint id, so a pair from different saves, or an edited config.json, is recognised.
//!
//! **The pair is one transaction.** Saving keeps the current pair as
//! `model.prev.safetensors` / `training_state.prev.safetensors` (hard links, so no copy) when it
//! is a matching pair, writes and syncs both new files, and only then renames them into place,
//! the training state first. Whenever the process dies, at least one matching pair is on disk:
//! the current one, or the previous one while the two renames are under way. Loading picks the
//! newest matching pair, so a run continues from its last complete checkpoint. Readers of
//! `model.safetensors` (evaluation, PyTorch) always find a complete file.
//!
//! **Reading is bounded and checked.** The header is read first (at most 16 MiB) and checked
//! against the model's tensor names, dtypes and shapes and against the file's size before the
//! data is read, so a huge, sparse, truncated or foreign file is refused without reading it;
//! every value is then checked (finite weights, finite non-negative running variances, a
//! positive normalisation std), so a diverged or tampered checkpoint is never used.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensors};

use crate::atomic_file::{sync_dir, write_synced_temporary};
use crate::fault;
use crate::input_file::{open_input, read_bounded};
use crate::nn::preact_resnet::{PreActResNet, TensorSpec, Weights};
use crate::tensor::Tensor;

pub const MODEL_FILE: &str = "model.safetensors";
pub const TRAINING_STATE_FILE: &str = "training_state.safetensors";
/// The pair before the last save, kept to fall back to.
pub const PREVIOUS_MODEL_FILE: &str = "model.prev.safetensors";
pub const PREVIOUS_TRAINING_STATE_FILE: &str = "training_state.prev.safetensors";

/// The largest header read; mocse's own are a few kilobytes.
const MAX_HEADER_BYTES: u64 = 16 << 20;

/// How far a run got, stored with its checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
}

/// What a training checkpoint records beside the tensors, as JSON text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRecord {
    /// The run's settings when the checkpoint was written (config.json's content).
    pub config: Option<String>,
    /// The log line of the checkpoint's epoch.
    pub epoch_log: Option<String>,
}

/// A training checkpoint as loaded: the newest matching pair of the run directory.
pub struct TrainingCheckpoint {
    pub weights: Weights,
    pub velocity: Vec<Tensor>,
    pub progress: Progress,
    pub record: RunRecord,
    /// Set when the current pair did not match and the previous one was used: why.
    pub fell_back: Option<String>,
}

type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// A tensor's bytes (copied back from its device) under `name`.
fn f32_entry(name: &str, t: &Tensor) -> Result<Entry> {
    Ok((name.to_string(), Dtype::F32, t.shape().to_vec(), bytemuck::cast_slice(&t.to_host()?).to_vec()))
}

fn serialize(tensors: Vec<Entry>, meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| Ok((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let mut bytes = safetensors::serialize(views, Some(meta))?;
    sort_header_keys(&mut bytes)?;
    Ok(bytes)
}

/// Rewrites the JSON header of serialized safetensors bytes with its keys sorted. The crate
/// writes the metadata from a HashMap, whose order changes from process to process; sorted,
/// identical runs write identical files. Only the order changes, so the length stays.
fn sort_header_keys(bytes: &mut [u8]) -> Result<()> {
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header = &bytes[8..8 + n];
    let text_len = header.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    // serde_json's maps are BTreeMaps: serializing a parsed Value sorts every object's keys.
    let value: serde_json::Value = serde_json::from_slice(&header[..text_len])?;
    let sorted = serde_json::to_vec(&value)?;
    ensure!(sorted.len() == text_len, "the sorted checkpoint header changed length");
    bytes[8..8 + text_len].copy_from_slice(&sorted);
    Ok(())
}

fn base_metadata(kind: &str, progress: Progress, id: &str) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("mocse_file".to_string(), kind.to_string()),
        ("epoch".to_string(), progress.epoch.to_string()),
        ("step".to_string(), progress.step.to_string()),
        ("checkpoint".to_string(), id.to_string()),
        ("mocse".to_string(), crate::BUILD.to_string()),
    ])
}

/// The model's tensors (copied back from the device), with PyTorch's batch counters.
fn model_entries(net: &PreActResNet, weights: &Weights, progress: Progress) -> Result<Vec<Entry>> {
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
    Ok(entries)
}

fn state_entries(net: &PreActResNet, velocity: &[Tensor]) -> Result<Vec<Entry>> {
    net.param_specs()
        .iter()
        .zip(velocity)
        .map(|(spec, t)| f32_entry(&format!("{}.momentum_buffer", spec.name), t))
        .collect()
}

/// The id both files of a save carry: a SHA-256 of its progress and of every tensor of both
/// files. Files of different saves never share one (unless the saves were identical, when
/// pairing them is harmless), and identical runs write identical ids.
fn checkpoint_id(progress: Progress, model: &[Entry], state: &[Entry]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(format!("epoch {} step {}", progress.epoch, progress.step));
    for (name, _, shape, bytes) in model.iter().chain(state) {
        hash.update(name.as_bytes());
        hash.update(format!("{shape:?}"));
        hash.update(bytes);
    }
    hash.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn model_bytes(model: Vec<Entry>, progress: Progress, id: &str, config: Option<&str>) -> Result<Vec<u8>> {
    let mut meta = base_metadata("model", progress, id);
    if let Some(c) = config {
        meta.insert("config".into(), c.to_string());
    }
    serialize(model, meta)
}

fn training_state_bytes(
    state: Vec<Entry>,
    progress: Progress,
    id: &str,
    record: &RunRecord,
) -> Result<Vec<u8>> {
    let mut meta = base_metadata("training_state", progress, id);
    if let Some(c) = &record.config {
        meta.insert("config".into(), c.clone());
    }
    if let Some(l) = &record.epoch_log {
        meta.insert("epoch_log".into(), l.clone());
    }
    serialize(state, meta)
}

/// A model file on its own (no training state), written atomically: for tests and exports.
pub fn save_model(path: &Path, net: &PreActResNet, weights: &Weights, progress: Progress) -> Result<()> {
    check_weights(net, weights)?;
    let model = model_entries(net, weights, progress)?;
    let id = checkpoint_id(progress, &model, &[]);
    crate::atomic_file::write_atomic(path, &model_bytes(model, progress, &id, None)?)
}

/// Saves weights and velocities of `run_dir` as one transaction (see the module documentation).
/// Refuses non-finite numbers before writing anything.
pub fn save_checkpoint(
    run_dir: &Path,
    net: &PreActResNet,
    weights: &Weights,
    velocity: &[Tensor],
    progress: Progress,
    record: &RunRecord,
) -> Result<()> {
    check_weights(net, weights).context("refusing to save a broken checkpoint")?;
    check_velocity(net, velocity).context("refusing to save a broken checkpoint")?;
    let (model, state) = (model_entries(net, weights, progress)?, state_entries(net, velocity)?);
    let id = checkpoint_id(progress, &model, &state);
    let model = model_bytes(model, progress, &id, record.config.as_deref())?;
    let state = training_state_bytes(state, progress, &id, record)?;
    let path = |name: &str| run_dir.join(name);

    // Keep the current pair to fall back to, if it is one; otherwise the previous pair is the
    // matching one and must stay.
    if is_matching_pair(&path(MODEL_FILE), &path(TRAINING_STATE_FILE)) {
        for (from, to) in
            [(TRAINING_STATE_FILE, PREVIOUS_TRAINING_STATE_FILE), (MODEL_FILE, PREVIOUS_MODEL_FILE)]
        {
            keep_as(&path(from), &path(to))?;
        }
        sync_dir(run_dir)?;
    }
    let state_tmp = write_synced_temporary(&path(TRAINING_STATE_FILE), &state)?;
    let model_tmp = match write_synced_temporary(&path(MODEL_FILE), &model) {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&state_tmp);
            return Err(e);
        }
    };
    fault::point(fault::points::CHECKPOINT_WRITTEN);
    let rename = |from: &Path, to: &str| {
        std::fs::rename(from, path(to))
            .with_context(|| format!("could not move {} into place", path(to).display()))
    };
    if let Err(e) = rename(&state_tmp, TRAINING_STATE_FILE) {
        let _ = std::fs::remove_file(&state_tmp);
        let _ = std::fs::remove_file(&model_tmp);
        return Err(e);
    }
    fault::point(fault::points::CHECKPOINT_HALF_SWITCHED);
    if let Err(e) = rename(&model_tmp, MODEL_FILE) {
        let _ = std::fs::remove_file(&model_tmp);
        return Err(e);
    }
    sync_dir(run_dir)
}

/// The name under which `keep_epoch` keeps an epoch's model.
pub fn epoch_file(epoch: usize) -> String {
    format!("epoch-{epoch:04}.safetensors")
}

/// Keeps the run's current model as [`epoch_file`] (a hard link: no space until the next save
/// replaces `model.safetensors`); returns its path.
pub fn keep_epoch(run_dir: &Path, epoch: usize) -> Result<std::path::PathBuf> {
    let kept = run_dir.join(epoch_file(epoch));
    keep_as(&run_dir.join(MODEL_FILE), &kept)?;
    sync_dir(run_dir)?;
    Ok(kept)
}

/// The directory of an adversarial run that keeps the model with the best robust test
/// accuracy (adversarial training overfits: the last epoch is rarely the most robust).
pub const BEST_DIR: &str = "best";

/// Keeps the run's current model as `best/model.safetensors`, with the run's config.json beside
/// it so that `eval --checkpoint RUN/best/model.safetensors` evaluates it. The model replaces
/// the previous best in one rename, so `best/` always holds a whole model.
pub fn keep_best(run_dir: &Path) -> Result<PathBuf> {
    let dir = run_dir.join(BEST_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let config_path = run_dir.join(crate::train::CONFIG_FILE);
    let config =
        std::fs::read(&config_path).with_context(|| format!("could not read {}", config_path.display()))?;
    crate::atomic_file::write_atomic(&dir.join(crate::train::CONFIG_FILE), &config)?;
    let temporary = dir.join(".model.safetensors.link");
    keep_as(&run_dir.join(MODEL_FILE), &temporary)?;
    let best = dir.join(MODEL_FILE);
    std::fs::rename(&temporary, &best).with_context(|| format!("could not write {}", best.display()))?;
    sync_dir(&dir)?;
    Ok(best)
}

/// `to` becomes another name of `from` (a hard link; a copy where links are not supported).
fn keep_as(from: &Path, to: &Path) -> Result<()> {
    match std::fs::remove_file(to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("could not replace {}", to.display())),
    }
    if std::fs::hard_link(from, to).is_err() {
        let bytes = std::fs::read(from).with_context(|| format!("could not read {}", from.display()))?;
        crate::atomic_file::write_atomic(to, &bytes)?;
    }
    Ok(())
}

/// Whether a model and a training state file both exist, parse and belong to the same save.
fn is_matching_pair(model: &Path, state: &Path) -> bool {
    match (read_header(model), read_header(state)) {
        (Ok(m), Ok(s)) => m.id() == s.id() && m.kind() == Some("model") && s.kind() == Some("training_state"),
        _ => false,
    }
}

/// A checkpoint file's header: its tensors and metadata, read without the data.
struct Header {
    path: PathBuf,
    meta: Metadata,
    file_len: u64,
}

impl Header {
    fn field(&self, key: &str) -> Option<&str> {
        self.meta.metadata().as_ref().and_then(|m| m.get(key)).map(String::as_str)
    }

    fn kind(&self) -> Option<&str> {
        self.field("mocse_file")
    }

    fn progress(&self) -> Result<Progress> {
        let number = |k: &str| -> Result<u64> {
            self.field(k).and_then(|v| v.parse().ok()).with_context(|| {
                format!("{}: metadata field '{k}' missing or not a number", self.path.display())
            })
        };
        Ok(Progress { epoch: number("epoch")? as usize, step: number("step")? })
    }

    /// The save this file belongs to; files written before ids existed are named by progress.
    fn id(&self) -> String {
        self.field("checkpoint").map_or_else(
            || format!("{}-{}", self.field("epoch").unwrap_or("?"), self.field("step").unwrap_or("?")),
            str::to_string,
        )
    }
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not a valid mocse checkpoint (corrupt or truncated safetensors file): {why}",
        path.display()
    )
}

/// Reads and validates the header of `path` (at most [`MAX_HEADER_BYTES`]) and checks that the
/// data it describes is exactly the rest of the file.
fn read_header(path: &Path) -> Result<Header> {
    let mut file = open_input(path, "checkpoint")?;
    let file_len = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(|_| corrupt(path, format!("only {file_len} bytes long")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(corrupt(path, format!("header length {header_len} in a file of {file_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| corrupt(path, e))?;
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| corrupt(path, e))?;
    let data_len = meta.data_len() as u64;
    if 8 + header_len + data_len != file_len {
        return Err(corrupt(
            path,
            format!(
                "the header describes {data_len} bytes of tensors, the file holds {}",
                file_len - 8 - header_len
            ),
        ));
    }
    Ok(Header { path: path.to_owned(), meta, file_len })
}

/// The tensors `expected` (name, shape; all f32) must be in the header; nothing else but
/// `num_batches_tracked` counters may be. Checked before any data is read.
/// Which files a load accepts.
#[derive(Clone, Copy, PartialEq)]
enum Origin {
    /// Only a file mocse wrote, of this kind ("model" or "training_state").
    Mocse(&'static str),
    /// A mocse model file, or any safetensors state_dict with the model's names (PyTorch's
    /// `save_file(model.state_dict())`): no metadata required.
    AnyModel,
}

fn check_header(header: &Header, origin: Origin, expected: &[(String, &[usize])]) -> Result<()> {
    let path = header.path.display();
    match (origin, header.kind()) {
        (Origin::Mocse(kind), found) if found != Some(kind) => {
            bail!("{path} is not a mocse {kind} checkpoint (its metadata does not say so)")
        }
        (Origin::AnyModel, Some(found)) if found != "model" => {
            bail!("{path} is a mocse {found} file, not a model")
        }
        _ => {}
    }
    for (name, shape) in expected {
        let info = header.meta.info(name).with_context(|| {
            if name.starts_with("normalize.") {
                format!(
                    "{path}: tensor '{name}' is missing. mocse models carry their input normalisation as two \
                     buffers, normalize.mean and normalize.std (shape [3], the per-channel mean and std of \
                     the training images on the 0..1 scale): add them to the state_dict before saving"
                )
            } else {
                format!("{path}: tensor '{name}' is missing; the checkpoint does not belong to this model")
            }
        })?;
        ensure!(info.dtype == Dtype::F32, "{path}: tensor '{name}' is {:?}, expected F32", info.dtype);
        ensure!(
            info.shape.as_slice() == *shape,
            "{path}: tensor '{name}' has shape {:?}, this model needs {shape:?}",
            info.shape
        );
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    for name in header.meta.offset_keys() {
        let counter = name.ends_with(".num_batches_tracked")
            && header.meta.info(&name).is_some_and(|i| i.dtype == Dtype::I64 && i.shape.is_empty());
        ensure!(
            known.contains(name.as_str()) || counter,
            "{path}: holds tensor '{name}', which this model does not have; the checkpoint belongs to another model"
        );
    }
    Ok(())
}

/// Reads a checkpoint file whose header passed [`check_header`]; its size is then known exactly.
fn read_checked(header: &Header) -> Result<Vec<u8>> {
    let file = open_input(&header.path, "checkpoint")?;
    let bytes = read_bounded(file, &header.path, "checkpoint", header.file_len)?;
    ensure!(bytes.len() as u64 == header.file_len, "{} changed while it was read", header.path.display());
    Ok(bytes)
}

fn read_f32(st: &SafeTensors<'_>, name: &str, spec: &TensorSpec) -> Result<Tensor> {
    let view = st.tensor(name)?;
    let values: Vec<f32> =
        view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Tensor::from_vec(&spec.shape, values))
}

fn model_spec(net: &PreActResNet) -> Vec<(String, &[usize])> {
    net.param_specs().iter().chain(net.buffer_specs()).map(|s| (s.name.clone(), s.shape.as_slice())).collect()
}

fn state_spec(net: &PreActResNet) -> Vec<(String, &[usize])> {
    net.param_specs().iter().map(|s| (format!("{}.momentum_buffer", s.name), s.shape.as_slice())).collect()
}

fn load_model_file(path: &Path, net: &PreActResNet, origin: Origin) -> Result<(Weights, Header)> {
    let header = read_header(path)?;
    check_header(&header, origin, &model_spec(net))?;
    let bytes = read_checked(&header)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
    let load = |specs: &[TensorSpec]| -> Result<Vec<Tensor>> {
        specs.iter().map(|s| read_f32(&st, &s.name, s)).collect()
    };
    let weights = Weights { params: load(net.param_specs())?, buffers: load(net.buffer_specs())? };
    check_weights(net, &weights).with_context(|| format!("{} holds a broken model", path.display()))?;
    Ok((weights, header))
}

fn load_state_file(path: &Path, net: &PreActResNet) -> Result<(Vec<Tensor>, Header)> {
    let header = read_header(path)?;
    check_header(&header, Origin::Mocse("training_state"), &state_spec(net))?;
    let bytes = read_checked(&header)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
    let velocity = net
        .param_specs()
        .iter()
        .map(|s| read_f32(&st, &format!("{}.momentum_buffer", s.name), s))
        .collect::<Result<Vec<_>>>()?;
    check_velocity(net, &velocity)
        .with_context(|| format!("{} holds a broken training state", path.display()))?;
    Ok((velocity, header))
}

/// The run settings recorded in a model file (its header only is read), if it has them.
pub fn recorded_config(path: &Path) -> Result<Option<String>> {
    Ok(read_header(path)?.field("config").map(str::to_string))
}

/// Loads a model file mocse wrote, checked (see the module documentation).
pub fn load_model(path: &Path, net: &PreActResNet) -> Result<(Weights, Progress)> {
    let (weights, header) = load_model_file(path, net, Origin::Mocse("model"))?;
    Ok((weights, header.progress()?))
}

/// Loads the weights of any safetensors state_dict with the model's tensor names and shapes:
/// a mocse model file (with its progress) or one saved elsewhere, e.g. by PyTorch (progress
/// `None`). The same checks apply to every value.
pub fn load_state_dict(path: &Path, net: &PreActResNet) -> Result<(Weights, Option<Progress>)> {
    let (weights, header) = load_model_file(path, net, Origin::AnyModel)?;
    let progress = if header.kind().is_some() { Some(header.progress()?) } else { None };
    Ok((weights, progress))
}

/// Loads the newest matching checkpoint pair of `run_dir`: the current pair, or the previous
/// one if the current is incomplete, broken or mixed. `Ok(None)` when the run has none yet.
pub fn load_checkpoint(run_dir: &Path, net: &PreActResNet) -> Result<Option<TrainingCheckpoint>> {
    let pair = |m: &str, s: &str| -> Result<TrainingCheckpoint> {
        let (weights, mh) = load_model_file(&run_dir.join(m), net, Origin::Mocse("model"))?;
        let (velocity, sh) = load_state_file(&run_dir.join(s), net)?;
        ensure!(
            mh.id() == sh.id(),
            "{m} and {s} are from different saves (epochs {} and {})",
            mh.field("epoch").unwrap_or("?"),
            sh.field("epoch").unwrap_or("?")
        );
        let record = RunRecord {
            config: sh.field("config").map(str::to_string),
            epoch_log: sh.field("epoch_log").map(str::to_string),
        };
        Ok(TrainingCheckpoint { weights, velocity, progress: mh.progress()?, record, fell_back: None })
    };
    let exists = |name: &str| std::fs::symlink_metadata(run_dir.join(name)).is_ok();
    let current = pair(MODEL_FILE, TRAINING_STATE_FILE);
    let current_err = match current {
        Ok(c) => return Ok(Some(c)),
        Err(e) => e,
    };
    if exists(PREVIOUS_MODEL_FILE) && exists(PREVIOUS_TRAINING_STATE_FILE) {
        match pair(PREVIOUS_MODEL_FILE, PREVIOUS_TRAINING_STATE_FILE) {
            Ok(mut previous) => {
                previous.fell_back = Some(format!("{current_err:#}"));
                return Ok(Some(previous));
            }
            Err(previous_err) => {
                bail!(
                    "no usable checkpoint in {}: the current pair is unusable ({current_err:#}), and so is the \
                     previous one ({previous_err:#})",
                    run_dir.display()
                )
            }
        }
    }
    if !exists(MODEL_FILE) && !exists(TRAINING_STATE_FILE) {
        return Ok(None);
    }
    if !exists(MODEL_FILE) {
        // The very first save was cut off between its two renames: no epoch is complete.
        return Ok(None);
    }
    Err(current_err.context(format!("no usable checkpoint in {}", run_dir.display())))
}

/// Every parameter finite; batch-norm running means finite and running variances finite and
/// >= 0; the input normalisation finite with a std above 0. The first broken tensor is named.
pub fn check_weights(net: &PreActResNet, weights: &Weights) -> Result<()> {
    for (spec, t) in net.param_specs().iter().zip(&weights.params) {
        check_values(&spec.name, t, |v| v.is_finite(), "not finite")?;
    }
    for (spec, t) in net.buffer_specs().iter().zip(&weights.buffers) {
        if spec.name.ends_with(".running_var") {
            check_values(&spec.name, t, |v| v.is_finite() && v >= 0.0, "not a finite number >= 0")?;
        } else if spec.name == "normalize.std" {
            check_values(&spec.name, t, |v| v.is_finite() && v > 0.0, "not a finite number > 0")?;
        } else {
            check_values(&spec.name, t, |v| v.is_finite(), "not finite")?;
        }
    }
    Ok(())
}

/// Every SGD velocity finite.
pub fn check_velocity(net: &PreActResNet, velocity: &[Tensor]) -> Result<()> {
    for (spec, t) in net.param_specs().iter().zip(velocity) {
        check_values(&format!("{}.momentum_buffer", spec.name), t, |v| v.is_finite(), "not finite")?;
    }
    Ok(())
}

fn check_values(name: &str, t: &Tensor, ok: impl Fn(f32) -> bool, what: &str) -> Result<()> {
    let host;
    let values = if t.device() == crate::device::Device::Cpu {
        t.as_slice()
    } else {
        host = t.to_host()?;
        &host
    };
    let bad = values.iter().filter(|&&v| !ok(v)).count();
    if let Some(i) = values.iter().position(|&v| !ok(v)) {
        bail!(
            "tensor '{name}' has {bad} of {} values {what} (the first, at index {i}, is {})",
            values.len(),
            values[i]
        );
    }
    Ok(())
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
        let wider = PreActResNet::new(NetShape { groups: 2, width: 8, outputs: 2 });
        let err = load_model(&path, &wider).unwrap_err().to_string();
        assert!(err.contains("shape"), "{err}");

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", load_model(&path, &net).unwrap_err());
        assert!(err.contains("corrupt or truncated"), "{err}");
        let err = format!("{:#}", load_model(&dir.path().join("none"), &net).unwrap_err());
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn broken_values_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let net = PreActResNet::new(NetShape { groups: 1, width: 2, outputs: 10 });
        let good = net.init_weights(1, [0.5; 3], [0.25; 3]);
        let path = dir.path().join(MODEL_FILE);
        let buffer = |name: &str| net.buffer_specs().iter().position(|s| s.name == name).unwrap();
        let cases: [(&str, bool, usize, f32, &str); 4] = [
            ("conv1.weight", true, 0, f32::NAN, "not finite"),
            ("layer2.0.bn1.running_var", false, buffer("layer2.0.bn1.running_var"), f32::INFINITY, ">= 0"),
            ("layer2.0.bn1.running_var", false, buffer("layer2.0.bn1.running_var"), -1.0, ">= 0"),
            ("normalize.std", false, buffer("normalize.std"), 0.0, "> 0"),
        ];
        for (name, is_param, index, value, needle) in cases {
            let mut w = good.clone();
            let list = if is_param { &mut w.params } else { &mut w.buffers };
            let mut v = list[index].to_vec();
            v[0] = value;
            list[index] = Tensor::from_vec(list[index].shape(), v);
            // Writing refuses it; a file written by someone else is refused when read.
            let err =
                format!("{:#}", save_model(&path, &net, &w, Progress { epoch: 1, step: 1 }).unwrap_err());
            assert!(err.contains(name) && err.contains(needle), "{err}");
            let progress = Progress { epoch: 1, step: 1 };
            let entries = model_entries(&net, &w, progress).unwrap();
            let id = checkpoint_id(progress, &entries, &[]);
            crate::atomic_file::write_atomic(&path, &model_bytes(entries, progress, &id, None).unwrap())
                .unwrap();
            let err = format!("{:#}", load_model(&path, &net).unwrap_err());
            assert!(err.contains(name) && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn huge_sparse_or_device_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let net = PreActResNet::new(NetShape { groups: 1, width: 2, outputs: 10 });
        let sparse = dir.path().join("sparse.safetensors");
        std::fs::File::create(&sparse).unwrap().set_len(2 << 30).unwrap();
        let err = format!("{:#}", load_model(&sparse, &net).unwrap_err());
        assert!(err.contains("corrupt or truncated"), "{err}");
        let err = format!("{:#}", load_model(Path::new("/dev/zero"), &net).unwrap_err());
        assert!(err.contains("character device"), "{err}");
        // A valid header that promises 2 GB of one huge tensor: refused by its shape.
        let header = br#"{"conv1.weight":{"dtype":"F32","shape":[536870912],"data_offsets":[0,2147483648]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        let big = dir.path().join("big.safetensors");
        std::fs::write(&big, &bytes).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(bytes.len() as u64 + (2 << 30))
            .unwrap();
        let err = format!("{:#}", load_model(&big, &net).unwrap_err());
        assert!(err.contains("metadata does not say") || err.contains("shape"), "{err}");
    }
}
