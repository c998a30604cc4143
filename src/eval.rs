//! Evaluation of a trained model: clean accuracy (later: corruptions and attacks).

use anyhow::Result;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::autograd::Tape;
use crate::data::{Augment, Dataset, batches, epoch_order, make_batch};
use crate::nn::model::Model;
use crate::nn::preact_resnet::Weights;
use crate::ops::loss::count_correct;
use crate::tensor::Tensor;

/// Correctly classified images of `data`, evaluated in batches without gradients.
pub fn count_correct_on(
    model: &Model,
    weights: &Weights,
    data: &Dataset,
    batch_size: usize,
    progress: Option<&ProgressBar>,
) -> Result<usize> {
    let order = epoch_order(data.len(), false, 0, 0);
    let mut correct = 0;
    for idx in batches(&order, batch_size) {
        let batch = make_batch(data, idx, Augment::None, 0, 0);
        let tape = Tape::no_grad();
        let params: Vec<_> = weights.params.iter().map(|p| tape.leaf(p.clone(), false)).collect();
        let x = tape.leaf(Tensor::from_vec(&[batch.size, 32, 32, 3], batch.images), false);
        let mut buffers = weights.buffers.clone();
        let out = model.forward(&tape, &params, &mut buffers, &x, false)?;
        let scores = model.scores(&tape, &out)?;
        correct += count_correct(scores.value(), &batch.labels);
        if let Some(pb) = progress {
            pb.inc(batch.size as u64);
        }
    }
    Ok(correct)
}

/// What `mocse eval --json` writes.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub model_description: String,
    pub run: String,
    pub checkpoint_epoch: usize,
    pub data: String,
    pub device: String,
    pub clean_accuracy: f64,
    pub num_images: usize,
    pub mocse: String,
}
