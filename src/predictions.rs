//! Per-image predictions of an evaluation (`mocse eval --predictions FILE`), for analysis
//! elsewhere: every image's label, predicted class and class scores, clean and under every
//! evaluated corruption and severity.
//!
//! `FILE.npz` (NumPy's format, `numpy.load` reads it): `labels` uint8 (N,), then per condition
//! `<condition>_scores` float32 (N, K) and `<condition>_predicted` uint8 (N,), where the
//! condition is `clean` or `<corruption>_s<severity>`. `FILE.csv`: one row per image and
//! condition, `image,corruption,severity,label,predicted,score_0..score_{K-1}` (corruption
//! `clean` and severity 0 for the clean images). The scores are the model's class scores: the
//! standard network's logits, MoCSE's aggregated expert scores (`--aggregate`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, bail, ensure};

use crate::atomic_file::write_atomic;
use crate::corrupt::Corruption;
use crate::npy::{npy_bytes, write_npz};
use crate::ops::loss::argmax;
use crate::tensor::Tensor;

/// What images a block of scores belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    Clean,
    Corrupted(Corruption, u8),
}

impl Condition {
    fn key(self) -> String {
        match self {
            Condition::Clean => "clean".to_string(),
            Condition::Corrupted(c, s) => format!("{}_s{s}", c.name()),
        }
    }
}

/// Scores collected batch by batch.
pub struct Predictions {
    labels: Vec<u8>,
    classes: usize,
    /// Per condition, in the order first seen: N x K scores (NaN where not yet recorded).
    scores: Vec<(Condition, Vec<f32>)>,
}

impl Predictions {
    pub fn new(labels: Vec<u8>, classes: usize) -> Predictions {
        Predictions { labels, classes, scores: Vec::new() }
    }

    /// Records the scores [B, K] of images `first..first + B` under `condition`.
    pub fn record(&mut self, condition: Condition, first: usize, scores: &Tensor) -> Result<()> {
        let (n, k) = (self.labels.len(), self.classes);
        ensure!(scores.shape().len() == 2 && scores.shape()[1] == k, "scores of shape {:?}", scores.shape());
        let b = scores.shape()[0];
        ensure!(first + b <= n, "images {first}..{} of {n}", first + b);
        let slot = match self.scores.iter().position(|(c, _)| *c == condition) {
            Some(i) => i,
            None => {
                self.scores.push((condition, vec![f32::NAN; n * k]));
                self.scores.len() - 1
            }
        };
        self.scores[slot].1[first * k..(first + b) * k].copy_from_slice(&scores.to_host()?);
        Ok(())
    }

    /// The predicted classes, as the accuracies count them.
    fn predicted(&self, scores: &[f32]) -> Vec<u8> {
        scores.chunks_exact(self.classes).map(|row| argmax(row) as u8).collect()
    }

    /// Writes `.npz` or `.csv`, as the file name says.
    pub fn write(&self, path: &Path) -> Result<()> {
        if self.scores.iter().any(|(_, s)| s.iter().any(|v| v.is_nan())) {
            bail!("internal: predictions incomplete");
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("npz") => self.write_npz(path),
            Some("csv") => self.write_csv(path),
            _ => bail!("--predictions {}: the file name must end in .npz or .csv", path.display()),
        }
    }

    fn write_npz(&self, path: &Path) -> Result<()> {
        let n = self.labels.len();
        let mut arrays = vec![("labels".to_string(), npy_bytes(&[n], &self.labels)?)];
        for (condition, scores) in &self.scores {
            arrays.push((format!("{}_scores", condition.key()), npy_bytes(&[n, self.classes], scores)?));
            arrays
                .push((format!("{}_predicted", condition.key()), npy_bytes(&[n], &self.predicted(scores))?));
        }
        write_npz(path, &arrays)
    }

    fn write_csv(&self, path: &Path) -> Result<()> {
        let mut out = String::from("image,corruption,severity,label,predicted");
        for k in 0..self.classes {
            let _ = write!(out, ",score_{k}");
        }
        out.push('\n');
        for (condition, scores) in &self.scores {
            let (name, severity) = match condition {
                Condition::Clean => ("clean", 0),
                Condition::Corrupted(c, s) => (c.name(), *s),
            };
            for (i, (row, predicted)) in
                scores.chunks_exact(self.classes).zip(self.predicted(scores)).enumerate()
            {
                let _ = write!(out, "{i},{name},{severity},{},{predicted}", self.labels[i]);
                for v in row {
                    let _ = write!(out, ",{v}");
                }
                out.push('\n');
            }
        }
        write_atomic(path, out.as_bytes())
    }
}

/// Checks a `--predictions` path's extension before any work.
pub fn check_path(path: &Path) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz" | "csv") => Ok(()),
        _ => bail!("--predictions {}: the file name must end in .npz or .csv", path.display()),
    }
}
