//! The diagnostics as Markdown: the experts' rates as one table per measure (rows experts,
//! columns clean and the corruption groups, so a glance along a row shows what a corruption
//! does to an expert), their mean probability per corruption, and the predicted classes per
//! corruption.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{CLEAN, ExpertDiagnostics, ExpertStats};
use crate::corrupt::Corruption;

/// A measure of an expert as a binary classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    BinaryAccuracy,
    Tpr,
    Fpr,
    Ece,
}

impl Measure {
    pub const ALL: [Measure; 4] = [Measure::BinaryAccuracy, Measure::Tpr, Measure::Fpr, Measure::Ece];

    pub fn name(self) -> &'static str {
        match self {
            Measure::BinaryAccuracy => "binary accuracy",
            Measure::Tpr => "TPR",
            Measure::Fpr => "FPR",
            Measure::Ece => "ECE",
        }
    }

    /// What it measures, for the line above its table.
    fn meaning(self) -> &'static str {
        match self {
            Measure::BinaryAccuracy => {
                "images on which the expert's yes/no (p_n > 0.5) was right; higher is better"
            }
            Measure::Tpr => "images of the expert's class it said yes to; higher is better",
            Measure::Fpr => "images of other classes it said yes to; lower is better",
            Measure::Ece => {
                "expected calibration error of p_n (15 equal-width bins, |mean p_n - fraction of its class| \
                 weighted by the bin's share of the images); lower is better"
            }
        }
    }

    pub fn of(self, e: &ExpertStats) -> Option<f64> {
        match self {
            Measure::BinaryAccuracy => Some(e.binary_accuracy),
            Measure::Tpr => e.tpr,
            Measure::Fpr => e.fpr,
            Measure::Ece => Some(e.ece),
        }
    }
}

/// The mean over the experts that have a value (TPR and FPR lack one without images of a side).
pub fn mean_over_experts(experts: &[ExpertStats], measure: Measure) -> Option<f64> {
    let values: Vec<f64> = experts.iter().filter_map(|e| measure.of(e)).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// A fraction in percent with `decimals`, or `n/a`.
pub fn percent(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{:.decimals$}", 100.0 * v))
}

/// The condition's name as a column header: "clean", or the group in lower case.
pub fn condition_header(condition: &str) -> String {
    condition.to_lowercase()
}

/// The experts' section of a report: a table per measure (percent), then the mean p_n per
/// corruption when corruptions were evaluated.
pub fn experts_markdown(d: &ExpertDiagnostics) -> String {
    let mut out = String::from("## MoCSE experts as binary classifiers\n\n");
    let conditions = d.conditions();
    let _ = writeln!(
        out,
        "Expert n answers \"is this image of class n?\" with p_n ({}); it says yes when p_n > 0.5. \
         Percentages of the {} clean images{}.\n",
        match d.aggregate {
            crate::ops::aggregate::Aggregate::Prob => "its class score",
            crate::ops::aggregate::Aggregate::LogOdds => "the sigmoid of its class score",
        },
        d.clean.images,
        if conditions.len() > 1 {
            ", and of each corruption group's images (its evaluated corruptions and severities together)"
        } else {
            ""
        }
    );
    let headers: Vec<String> =
        conditions.iter().map(|(c, r)| format!("{} ({} images)", condition_header(c), r.images)).collect();
    for measure in Measure::ALL {
        let _ = writeln!(out, "**{}**: {}.\n", measure.name(), measure.meaning());
        let _ = writeln!(out, "| expert | {} |", headers.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(headers.len()));
        for (n, class) in d.classes.iter().enumerate() {
            let cells: Vec<String> = conditions
                .iter()
                .map(|(_, r)| percent(r.experts.get(n).and_then(|e| measure.of(e)), 2))
                .collect();
            let _ = writeln!(out, "| {class} | {} |", cells.join(" | "));
        }
        let means: Vec<String> =
            conditions.iter().map(|(_, r)| percent(mean_over_experts(&r.experts, measure), 2)).collect();
        let _ = writeln!(out, "| *mean* | {} |\n", means.join(" | "));
    }
    if !d.mean_probability_per_corruption.is_empty() {
        let _ = writeln!(
            out,
            "**Mean expert probability** p_n per corruption (its severities together); the clean row for \
             reference. The expert whose mean rises under a corruption is the one that wins there.\n"
        );
        let mut rows =
            vec![(CLEAN.to_string(), d.clean.experts.iter().map(|e| e.mean_probability).collect())];
        rows.extend(corruption_rows(&d.mean_probability_per_corruption));
        out += &class_table("condition", &d.classes, &rows, |v| format!("{v:.3}"));
    }
    out
}

/// The rows of a map keyed by corruption (and "clean"), in table order: clean first.
pub fn corruption_rows(map: &BTreeMap<String, Vec<f64>>) -> Vec<(String, Vec<f64>)> {
    let clean = map.get(CLEAN).map(|v| (CLEAN.to_string(), v.clone()));
    clean
        .into_iter()
        .chain(
            Corruption::ALL.iter().filter_map(|c| Some((c.name().to_string(), map.get(c.name())?.clone()))),
        )
        .collect()
}

/// A table with a row per (name, value per class) and a column per class.
fn class_table(
    corner: &str,
    classes: &[String],
    rows: &[(String, Vec<f64>)],
    cell: impl Fn(f64) -> String,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {corner} | {} |", classes.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(classes.len()));
    for (name, values) in rows {
        let cells: Vec<String> = values.iter().map(|&v| cell(v)).collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    out + "\n"
}

/// Which classes a model predicts, clean and under each corruption (its severities together),
/// in percent of the images: a class that soaks up a corruption's images shows here.
pub fn predicted_share_markdown(classes: &[String], shares: &BTreeMap<String, Vec<f64>>) -> String {
    let mut out = String::from(
        "## Predicted classes\n\nShare of the images predicted as each class (%), clean and per corruption \
         (its severities together).\n\n",
    );
    out += &class_table("condition", classes, &corruption_rows(shares), |v| format!("{:.1}", 100.0 * v));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::{DiagnosticCounts, ExpertTally};
    use crate::ops::aggregate::Aggregate;
    use crate::tensor::Tensor;

    #[test]
    fn the_experts_section_shows_every_measure_per_condition() {
        let mut counts = DiagnosticCounts::new(vec!["cat".into(), "dog".into()], Some(Aggregate::Prob));
        let scores = Tensor::from_vec(&[2, 2], vec![0.75, 0.125, 0.25, 0.625]);
        counts.add_clean(&scores, &[0, 0]).unwrap();
        counts.add_corrupted(Corruption::Fog, 3, &scores, &[0, 1]).unwrap();
        let d = counts.expert_diagnostics().unwrap();
        let md = experts_markdown(&d);
        assert!(md.contains("| expert | clean (2 images) | weather (2 images) |"), "{md}");
        // Clean: cat yes to image 0 (its own), no to image 1 (its own): TPR 50%; dog has no
        // image of its class: TPR n/a, and said yes to image 1: FPR 50%.
        let tpr = md.split("**TPR**").nth(1).unwrap();
        assert!(tpr.contains("| cat | 50.00 | 100.00 |") && tpr.contains("| dog | n/a | 100.00 |"), "{md}");
        assert!(md.contains("| fog | 0.500 | 0.375 |"), "{md}");
        let shares = predicted_share_markdown(&d.classes, &counts.predicted_class_share());
        assert!(
            shares.contains("| clean | 50.0 | 50.0 |") && shares.contains("| fog | 50.0 | 50.0 |"),
            "{shares}"
        );
        // Clean only: no group columns and no per-corruption table.
        let mut tally = ExpertTally::new(2, Aggregate::LogOdds);
        tally.add_rows(&[1.0, -1.0], &[0]).unwrap();
        let md =
            experts_markdown(&crate::diagnostics::ExpertDiagnostics::clean_only(d.classes.clone(), &tally));
        assert!(
            md.contains("| expert | clean (1 images) |\n") && !md.contains("Mean expert probability"),
            "{md}"
        );
        assert!(md.contains("the sigmoid of its class score"), "{md}");
    }
}
