//! Several corruption reports side by side, as the paper's Table 1: a column per run; rows the
//! natural (clean) accuracy, every corruption grouped as noise, blur, weather and digital, and
//! the averages.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::corrupt::{Corruption, Group};
use crate::input_file::read_text;
use crate::robustness::{CorruptionReport, pct};

/// A report and the name of its column.
pub struct Column {
    pub label: String,
    pub report: CorruptionReport,
}

/// Reads a report written by `mocse eval --corruptions ... --json`.
pub fn read_report(path: &Path) -> Result<CorruptionReport> {
    let text = read_text(path, "report")?;
    let report: CorruptionReport = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a corruption report (write one with `mocse eval --corruptions all --json FILE`)",
            path.display()
        )
    })?;
    report.validate().with_context(|| format!("{} holds an invalid report", path.display()))?;
    Ok(report)
}

/// The default column label: the run directory's name, made unique with a number if needed.
pub fn default_labels(reports: &[CorruptionReport]) -> Vec<String> {
    let base: Vec<String> = reports
        .iter()
        .map(|r| {
            Path::new(&r.context.run)
                .file_name()
                .map_or_else(|| r.context.run.clone(), |n| n.to_string_lossy().into_owned())
        })
        .collect();
    base.iter()
        .enumerate()
        .map(
            |(i, b)| {
                if base.iter().filter(|x| *x == b).count() > 1 {
                    format!("{b} ({})", i + 1)
                } else {
                    b.clone()
                }
            },
        )
        .collect()
}

/// The corruptions evaluated in any column, in table order.
fn rows(columns: &[Column]) -> Vec<Corruption> {
    Corruption::ALL
        .into_iter()
        .filter(|&c| columns.iter().any(|col| col.report.accuracy(c, "mean").is_some()))
        .collect()
}

/// Table 1 in Markdown (accuracy %; a corruption a run did not evaluate shows `n/a`).
pub fn table1_markdown(columns: &[Column]) -> Result<String> {
    if columns.is_empty() {
        bail!("no reports to compare");
    }
    let mut out = String::new();
    let header: Vec<&str> = columns.iter().map(|c| c.label.as_str()).collect();
    let _ = writeln!(out, "| | | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(columns.len()));
    let line = |out: &mut String, group: &str, name: &str, values: Vec<Option<f64>>| {
        let cells: Vec<String> =
            values.into_iter().map(|v| pct(v).trim_end_matches('%').to_string()).collect();
        let _ = writeln!(out, "| {group} | {name} | {} |", cells.join(" | "));
    };
    line(&mut out, "", "natural samples", columns.iter().map(|c| Some(c.report.clean_accuracy)).collect());
    let corruptions = rows(columns);
    for g in Group::ALL {
        for (i, &c) in corruptions.iter().filter(|c| c.group() == g).enumerate() {
            let group = if i == 0 { g.name() } else { "" };
            let name = c.name().replace('_', " ");
            line(&mut out, group, &name, columns.iter().map(|col| col.report.accuracy(c, "mean")).collect());
        }
    }
    for g in Group::ALL {
        if corruptions.iter().any(|c| c.group() == g) {
            let values = columns.iter().map(|col| col.report.per_group.get(g.name()).copied()).collect();
            line(&mut out, "", &format!("*{} average*", g.name().to_lowercase()), values);
        }
    }
    line(&mut out, "", "**average of 15** (benchmark)", columns.iter().map(|c| c.report.mean_15).collect());
    line(&mut out, "", "**average of 19**", columns.iter().map(|c| c.report.mean_19).collect());
    let _ = writeln!(out);
    for col in columns {
        let r = &col.report;
        let _ = writeln!(
            out,
            "- {}: {} (`{}`, {}), {} images of {}, corrupted images {}, severities {:?}",
            col.label,
            r.context.model_description,
            r.context.run,
            r.context.epoch_text(),
            r.num_images,
            r.context.data,
            r.corrupted_images,
            r.severities
        );
    }
    Ok(out)
}

/// The per-corruption accuracies (%) of every column, for the bar chart: (categories, series).
pub fn chart_data(columns: &[Column]) -> (Vec<String>, Vec<(String, Vec<f64>)>) {
    let corruptions = rows(columns);
    let mut categories = vec!["clean".to_string()];
    categories.extend(corruptions.iter().map(|c| c.name().to_string()));
    let series = columns
        .iter()
        .map(|col| {
            let mut values = vec![100.0 * col.report.clean_accuracy];
            values.extend(
                corruptions.iter().map(|&c| col.report.accuracy(c, "mean").map_or(f64::NAN, |v| 100.0 * v)),
            );
            (col.label.clone(), values)
        })
        .collect();
    (categories, series)
}
