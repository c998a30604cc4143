//! Training curves of a run: loss, and clean (and, for adversarial training, robust) accuracy
//! per epoch, as one PNG of two charts. `mocse train` writes it at the end of a run; `mocse
//! plot RUN_DIR` draws it from any run's log.

use std::path::Path;

use anyhow::{Result, ensure};

use crate::atomic_file::write_atomic;
use crate::raster::{LineChart, ValueAxis, line_charts_png};
use crate::train::{EpochLog, read_log};

/// The curves' file in a run directory.
pub const CURVES_FILE: &str = "curves.png";

/// Draws the curves of the run in `run_dir` (its log.jsonl) to `out`, atomically; returns how
/// many epochs they show.
pub fn write_run_curves(run_dir: &Path, out: &Path) -> Result<usize> {
    let logs = read_log(run_dir)?;
    write_atomic(out, &training_curves_png(&logs)?)?;
    Ok(logs.len())
}

/// The curves of the epochs in `logs` (a run's log.jsonl, in order). Returns a PNG.
pub fn training_curves_png(logs: &[EpochLog]) -> Result<Vec<u8>> {
    ensure!(!logs.is_empty(), "the run has no finished epoch yet, so there is no curve to draw");
    let points: Vec<String> = logs.iter().map(|e| e.epoch.to_string()).collect();
    let percent = |f: fn(&EpochLog) -> Option<f64>| -> Vec<f64> {
        logs.iter().map(|e| f(e).map_or(f64::NAN, |v| 100.0 * v)).collect()
    };
    let mut accuracy = vec![
        ("train accuracy".to_string(), percent(|e| Some(e.train_accuracy))),
        ("test accuracy".to_string(), percent(|e| Some(e.test_accuracy))),
    ];
    if logs.iter().any(|e| e.robust_test_accuracy.is_some()) {
        accuracy.push(("robust test accuracy (PGD-10)".to_string(), percent(|e| e.robust_test_accuracy)));
    }
    let loss = vec![("train loss".to_string(), logs.iter().map(|e| e.train_loss).collect::<Vec<f64>>())];
    let max_loss = loss[0].1.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
    line_charts_png(&[
        LineChart {
            title: "Accuracy per epoch (%)",
            x_title: "epoch",
            points: &points,
            series: &accuracy,
            axis: ValueAxis::PERCENT,
        },
        LineChart {
            title: "Training loss per epoch",
            x_title: "epoch",
            points: &points,
            series: &loss,
            axis: ValueAxis::holding(max_loss, ""),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::test_support::decode;

    fn log(epoch: usize, loss: f64, test: f64, robust: Option<f64>) -> EpochLog {
        EpochLog {
            epoch,
            train_loss: loss,
            train_accuracy: test + 0.05,
            test_accuracy: test,
            lr: 0.1,
            seconds: None,
            images_per_s: None,
            robust_test_accuracy: robust,
            first_batch_robust_accuracy: None,
            precision: None,
        }
    }

    /// The tab10 colour of the third series (robust accuracy) appears only when a run has it.
    #[test]
    fn robust_curve_only_for_adversarial_runs() {
        let third = [44u8, 160, 44];
        let has = |pixels: &[u8]| pixels.chunks_exact(3).any(|p| p == third);
        let standard: Vec<EpochLog> = (1..=4).map(|e| log(e, 2.0 / e as f64, 0.1 * e as f64, None)).collect();
        let (w, h, pixels) = decode(&training_curves_png(&standard).unwrap());
        assert!(w > 300 && h > 800, "two charts one under the other: {w}x{h}");
        assert!(!has(&pixels));
        let adversarial: Vec<EpochLog> =
            (1..=4).map(|e| log(e, 2.0 / e as f64, 0.1 * e as f64, Some(0.05 * e as f64))).collect();
        assert!(has(&decode(&training_curves_png(&adversarial).unwrap()).2));
        assert!(training_curves_png(&[]).is_err());
    }

    /// 200 epochs fit a plot about 1,000 pixels wide.
    #[test]
    fn long_runs_stay_readable() {
        let logs: Vec<EpochLog> = (1..=200).map(|e| log(e, 1.0, 0.5, None)).collect();
        let (w, _, _) = decode(&training_curves_png(&logs).unwrap());
        assert!(w < 1200, "{w}");
    }

    #[test]
    fn loss_axis_is_round() {
        assert_eq!(ValueAxis::holding(2.31, "").top, 2.5);
        assert_eq!(ValueAxis::holding(0.7, "").top, 1.0);
        assert_eq!(ValueAxis::holding(13.0, "").top, 20.0);
        assert_eq!(ValueAxis::holding(0.0, "").top, 1.0);
    }
}
