//! An evaluation's pictures, as heatmaps in one directory (`mocse eval --figures DIR`, and
//! every cell of `mocse reproduce`): the clean confusion matrix, the classes predicted under
//! each corruption and, for MoCSE, each expert's mean probability under each corruption (which
//! expert wins where).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::markdown::corruption_rows;
use super::{CLEAN, ExpertDiagnostics};
use crate::atomic_file::write_atomic;
use crate::eval::{EvalReport, PerClassReport};
use crate::raster::{Heatmap, heatmap_png};
use crate::robustness::CorruptionReport;

pub const CONFUSION_PNG: &str = "confusion.png";
pub const PREDICTED_CLASS_PNG: &str = "predicted_class.png";
pub const EXPERT_SCORES_PNG: &str = "expert_scores.png";

/// The files a fresh report's figures are written to: the confusion matrix always; with
/// corruptions the predicted classes, and for MoCSE the expert probabilities too. For checking
/// the outputs before the evaluation starts.
pub fn figure_names(corruptions: bool, mocse: bool) -> Vec<&'static str> {
    let mut names = vec![CONFUSION_PNG];
    if corruptions {
        names.push(PREDICTED_CLASS_PNG);
        if mocse {
            names.push(EXPERT_SCORES_PNG);
        }
    }
    names
}

/// The confusion matrix of the clean images: rows true classes (with their image counts),
/// columns predicted classes, each row in percent of its images.
pub fn confusion_png(per_class: &PerClassReport) -> Result<Vec<u8>> {
    let rows: Vec<String> =
        per_class.classes.iter().zip(&per_class.images).map(|(c, n)| format!("{c} ({n})")).collect();
    let values: Vec<Vec<f64>> = per_class
        .confusion
        .iter()
        .zip(&per_class.images)
        .map(|(row, &n)| {
            row.iter().map(|&c| if n == 0 { f64::NAN } else { 100.0 * c as f64 / n as f64 }).collect()
        })
        .collect();
    heatmap_png(&Heatmap {
        title: "Confusion matrix, clean test images (rows: true class (images), columns: predicted)",
        row_labels: &rows,
        column_labels: &per_class.classes,
        values: &values,
        range: (0.0, 100.0),
        decimals: 1,
        legend: "% of the true class's images",
    })
}

/// The share of the images predicted as each class (%): a row for the clean images and one per
/// corruption (its severities together). The colour scale ends at the largest share (rounded
/// up to 10%), so that shifts from the uniform 1/K stay visible.
pub fn predicted_class_png(
    classes: &[String],
    shares: &std::collections::BTreeMap<String, Vec<f64>>,
) -> Result<Vec<u8>> {
    let rows = corruption_rows(shares);
    let labels: Vec<String> = rows.iter().map(|(name, _)| name.clone()).collect();
    let values: Vec<Vec<f64>> = rows.iter().map(|(_, v)| v.iter().map(|s| 100.0 * s).collect()).collect();
    let largest = values.iter().flatten().fold(0.0f64, |m, &v| m.max(v));
    let top = ((largest / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    heatmap_png(&Heatmap {
        title: "Predicted class per condition (% of its images, severities together)",
        row_labels: &labels,
        column_labels: classes,
        values: &values,
        range: (0.0, top),
        decimals: 1,
        legend: "% of the condition's images predicted as the class",
    })
}

/// Each expert's mean probability p_n, clean and per corruption (its severities together).
pub fn expert_scores_png(d: &ExpertDiagnostics) -> Result<Vec<u8>> {
    let mut rows = vec![(CLEAN.to_string(), d.clean.experts.iter().map(|e| e.mean_probability).collect())];
    rows.extend(corruption_rows(&d.mean_probability_per_corruption));
    let labels: Vec<String> = rows.iter().map(|(name, _)| name.clone()).collect();
    let values: Vec<Vec<f64>> = rows.into_iter().map(|(_, v)| v).collect();
    heatmap_png(&Heatmap {
        title: "MoCSE: mean expert probability p_n per condition (severities together)",
        row_labels: &labels,
        column_labels: &d.classes,
        values: &values,
        range: (0.0, 1.0),
        decimals: 2,
        legend: "mean p_n of the expert (column) over the condition's images",
    })
}

/// The figures of a corruption report (file name, PNG), as far as it holds their data: the
/// confusion matrix, the predicted classes per corruption, and for MoCSE the experts' mean
/// probabilities per corruption. A report that holds none of them is refused.
pub fn corruption_figures(report: &CorruptionReport) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(p) = &report.per_class {
        out.push((CONFUSION_PNG, confusion_png(p)?));
    }
    if !report.predicted_class_share.is_empty() {
        out.push((
            PREDICTED_CLASS_PNG,
            predicted_class_png(&report.class_names(), &report.predicted_class_share)?,
        ));
    }
    if let Some(d) = &report.experts {
        out.push((EXPERT_SCORES_PNG, expert_scores_png(d)?));
    }
    ensure!(
        !out.is_empty(),
        "the report of {} holds no per-class counts, predicted classes or expert diagnostics to draw \
         (written by an older mocse: evaluate again)",
        report.context.run
    );
    Ok(out)
}

/// The figure of an evaluation without corruptions: the clean confusion matrix.
pub fn eval_figures(report: &EvalReport) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let p = report.per_class.as_ref().with_context(|| {
        format!(
            "the report of {} holds no per-class counts to draw (written by an older mocse: evaluate again)",
            report.run.run
        )
    })?;
    Ok(vec![(CONFUSION_PNG, confusion_png(p)?)])
}

/// Writes `figures` into `dir` (made if missing), each file atomically; returns their paths.
fn write_all(dir: &Path, figures: Vec<(&'static str, Vec<u8>)>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the figure directory {}", dir.display()))?;
    figures
        .into_iter()
        .map(|(name, png)| {
            let path = dir.join(name);
            write_atomic(&path, &png)?;
            Ok(path)
        })
        .collect()
}

/// Draws a corruption report's figures ([`corruption_figures`]) into `dir`; returns the files.
pub fn write_figures(dir: &Path, report: &CorruptionReport) -> Result<Vec<PathBuf>> {
    write_all(dir, corruption_figures(report)?)
}

/// Draws an evaluation report's figure ([`eval_figures`]) into `dir`; returns the file.
pub fn write_eval_figures(dir: &Path, report: &EvalReport) -> Result<Vec<PathBuf>> {
    write_all(dir, eval_figures(report)?)
}
