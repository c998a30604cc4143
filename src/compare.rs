//! Several corruption reports side by side, as the paper's Table 1: a column per run; rows the
//! natural (clean) accuracy, every corruption grouped as noise, blur, weather and digital, and
//! the averages. Reports measured on different images are refused unless forced, since their
//! differences would then say nothing about the models.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::attack::evaluate::{AdversarialReport, AttackReports, pixel_amount_text};
use crate::corrupt::{Corruption, Group};
use crate::diagnostics::markdown::{Measure, condition_header, mean_over_experts, percent};
use crate::diagnostics::{CLEAN, ExpertConditionReport, ExpertDiagnostics};
use crate::eval::EvalReport;
use crate::input_file::read_text;
use crate::robustness::CorruptionReport;

/// A report and the name of its column.
pub struct Column {
    pub label: String,
    pub report: CorruptionReport,
    /// A robust evaluation of the same model (`mocse eval --attack ... --json`) when the report
    /// holds no attacks of its own: its attacks are rows under the corruption averages.
    pub robust: Option<EvalReport>,
}

/// The attacks of a column and what they attacked.
struct ColumnAttacks<'a> {
    data: &'a str,
    num_images: usize,
    reports: &'a AttackReports,
}

impl Column {
    /// The column's attacks: its report's own (`eval --corruptions .. --attack ..`), else those
    /// of its robust evaluation.
    fn attacks(&self) -> Option<ColumnAttacks<'_>> {
        if !self.report.adversarial.is_empty() {
            let r = &self.report;
            return Some(ColumnAttacks {
                data: &r.context.data,
                num_images: r.num_images,
                reports: &r.adversarial,
            });
        }
        let r = self.robust.as_ref()?;
        Some(ColumnAttacks { data: &r.run.data, num_images: r.num_images, reports: &r.adversarial })
    }
}

/// Reads a report written by `mocse eval --attack ... --json`.
pub fn read_robust_report(path: &Path) -> Result<EvalReport> {
    let text = read_text(path, "report")?;
    let report: EvalReport = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an evaluation report (write one with `mocse eval --attack pgd --json FILE`)",
            path.display()
        )
    })?;
    ensure!(
        !report.adversarial.is_empty(),
        "{} holds no attack (write one with `mocse eval --attack pgd --json FILE`)",
        path.display()
    );
    for adv in report.adversarial.values() {
        ensure!(
            (0.0..=1.0).contains(&adv.robust_accuracy) && adv.robust_images <= adv.num_images,
            "{} holds an invalid robust accuracy for {}",
            path.display(),
            adv.attack
        );
    }
    Ok(report)
}

/// Every setting of an attack, for captions and messages.
fn attack_description(adv: &AdversarialReport) -> String {
    let s = &adv.settings;
    format!(
        "{} ({} {}, batch norm {}, seed {}{})",
        attack_row_name(adv),
        if adv.attack.is_apgd() { "first step" } else { "alpha" },
        pixel_amount_text(s.alpha),
        s.bn,
        s.seed,
        if s.random_start { "" } else { ", no random start" }
    )
}

/// The row name of a robust evaluation: its attack and settings.
fn attack_row_name(adv: &AdversarialReport) -> String {
    let s = &adv.settings;
    format!(
        "{}-{} {} eps {}{}",
        adv.attack.to_string().to_uppercase(),
        s.steps,
        s.norm,
        pixel_amount_text(s.eps),
        if s.restarts > 1 { format!(", {} restarts", s.restarts) } else { String::new() }
    )
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

/// The default column labels: the run directory's name, with as many of its parent
/// directories as it takes to tell the runs apart (`std-mocse/run` and `adv-mocse/run` for the
/// cells of a reproduction); the name numbered when even the whole paths are equal (one run
/// evaluated twice).
pub fn default_labels(reports: &[CorruptionReport]) -> Vec<String> {
    let paths: Vec<Vec<String>> = reports
        .iter()
        .map(|r| Path::new(&r.context.run).iter().map(|c| c.to_string_lossy().into_owned()).collect())
        .collect();
    let tail = |p: &Vec<String>, k: usize| p[p.len().saturating_sub(k)..].join("/");
    let longest = paths.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let k = (1..=longest)
        .find(|&k| {
            let labels: Vec<String> = paths.iter().map(|p| tail(p, k)).collect();
            labels.iter().enumerate().all(|(i, l)| !labels[..i].contains(l))
        })
        .unwrap_or(1);
    let base: Vec<String> = paths.iter().map(|p| tail(p, k)).collect();
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

/// Which corrupted images a report was measured on: the generator's seed (the device only
/// changes rounding), or the directory of files.
fn corrupted_image_source(corrupted_images: &str) -> String {
    match corrupted_images.strip_prefix("generated on").and_then(|rest| rest.split("(seed ").nth(1)) {
        Some(seed) => format!("generated with seed {}", seed.trim_end_matches(')')),
        None => corrupted_images.to_string(),
    }
}

/// What makes a column's numbers incomparable with the first column's: a different test set,
/// number of images, set of severities or set of corrupted images. One line per difference.
pub fn incomparabilities(columns: &[Column]) -> Vec<String> {
    let Some((first, rest)) = columns.split_first() else { return Vec::new() };
    let a = &first.report;
    let mut found = Vec::new();
    for col in rest {
        let b = &col.report;
        let mut differ = |what: &str, x: String, y: String| {
            if x != y {
                found.push(format!("{what}: {} has {x}, {} has {y}", first.label, col.label));
            }
        };
        differ("test data", a.context.data.clone(), b.context.data.clone());
        differ("test images", a.num_images.to_string(), b.num_images.to_string());
        differ("severities", format!("{:?}", a.severities), format!("{:?}", b.severities));
        differ(
            "corrupted images",
            corrupted_image_source(&a.corrupted_images),
            corrupted_image_source(&b.corrupted_images),
        );
        if let (Some(x), Some(y)) = (first.attacks(), col.attacks()) {
            differ("attack test data", x.data.to_string(), y.data.to_string());
            differ("attacked images", x.num_images.to_string(), y.num_images.to_string());
            for (kind, adv) in x.reports {
                if let Some(other) = y.reports.get(kind) {
                    differ("attack", attack_description(adv), attack_description(other));
                }
            }
        }
    }
    found
}

/// How `compare` lays out its table.
#[derive(Default)]
pub struct TableOptions {
    /// Add a column per run after the first: its value minus the first column's, in points.
    pub difference: bool,
    /// Differences the user chose to accept (`--force`); stated above the table.
    pub accepted_incomparabilities: Vec<String>,
}

/// The corruptions evaluated in any column, in table order.
fn rows(columns: &[Column]) -> Vec<Corruption> {
    Corruption::ALL
        .into_iter()
        .filter(|&c| columns.iter().any(|col| col.report.accuracy(c, "mean").is_some()))
        .collect()
}

/// The corruptions a column's group average covers, and its mark when that is part of the group.
#[derive(PartialEq)]
struct Coverage {
    corruptions: Vec<Corruption>,
    mark: String,
}

/// One table row's cells: every value (percent, 2 decimals) with the row's best in bold, then
/// the differences to the first column when asked. For a row of group averages, `coverage`
/// says what each column averaged: values over different corruptions are neither ranked nor
/// subtracted.
fn cells(values: &[Option<f64>], coverage: Option<&[Coverage]>, difference: bool) -> Vec<String> {
    let alike = |a: usize, b: usize| coverage.is_none_or(|c| c[a].corruptions == c[b].corruptions);
    let mark = |k: usize| coverage.map_or("", |c| c[k].mark.as_str());
    let present: Vec<usize> = (0..values.len()).filter(|&k| values[k].is_some()).collect();
    let ranked = present.len() > 1 && present.iter().all(|&k| alike(k, present[0]));
    // Compare what is shown (hundredths of a percent), so equal-looking values are both bold.
    let shown: Vec<Option<i64>> = values.iter().map(|v| v.map(|v| (v * 1e4).round() as i64)).collect();
    let best = shown.iter().flatten().max().copied();
    let mut out: Vec<String> = shown
        .iter()
        .enumerate()
        .map(|(k, s)| match *s {
            Some(s) if ranked && Some(s) == best => format!("**{:.2}**{}", s as f64 / 100.0, mark(k)),
            Some(s) => format!("{:.2}{}", s as f64 / 100.0, mark(k)),
            None => "n/a".to_string(),
        })
        .collect();
    if difference {
        for (k, v) in values.iter().enumerate().skip(1) {
            out.push(match (values[0], v) {
                (Some(a), Some(b)) if alike(0, k) => format!("{:+.2}", 100.0 * (b - a)),
                _ => "n/a".to_string(),
            });
        }
    }
    out
}

/// Table 1 in Markdown: accuracy in percent, the best of each row in bold, a corruption a run
/// did not evaluate as `n/a`, the 4 extra corruptions marked †, and group means over part of a
/// group marked with how many of its corruptions they cover.
pub fn table1_markdown(columns: &[Column], options: &TableOptions) -> Result<String> {
    ensure!(!columns.is_empty(), "no reports to compare");
    let mut out = String::new();
    if !options.accepted_incomparabilities.is_empty() {
        let _ = writeln!(
            out,
            "> **Not like for like** (compared with `--force`): a difference between these columns \
             may come from the test, not the models.\n>"
        );
        for line in &options.accepted_incomparabilities {
            let _ = writeln!(out, "> - {line}");
        }
        let _ = writeln!(out);
    }
    let severities = &columns[0].report.severities;
    let _ = writeln!(
        out,
        "Accuracy (%), higher is better; the best of each row in **bold**. A corruption's accuracy is \
         its mean over severities {}.{}\n",
        severities.iter().map(u8::to_string).collect::<Vec<_>>().join(", "),
        if options.difference && columns.len() > 1 {
            format!(" The last columns are differences to {} in percentage points.", columns[0].label)
        } else {
            String::new()
        }
    );
    let mut header: Vec<String> = columns.iter().map(|c| c.label.clone()).collect();
    if options.difference {
        header.extend(columns[1..].iter().map(|c| format!("{} − {}", c.label, columns[0].label)));
    }
    let _ = writeln!(out, "| | | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(header.len()));
    let line = |out: &mut String,
                group: &str,
                name: &str,
                values: Vec<Option<f64>>,
                coverage: Option<&[Coverage]>| {
        let _ = writeln!(
            out,
            "| {group} | {name} | {} |",
            cells(&values, coverage, options.difference).join(" | ")
        );
    };
    let clean: Vec<Option<f64>> = columns.iter().map(|c| Some(c.report.clean_accuracy)).collect();
    line(&mut out, "", "natural samples", clean, None);
    let corruptions = rows(columns);
    let mut any_extra = false;
    for g in Group::ALL {
        for (i, &c) in corruptions.iter().filter(|c| c.group() == g).enumerate() {
            let group = if i == 0 { g.name() } else { "" };
            let mut name = c.name().replace('_', " ");
            if !c.is_benchmark() {
                name.push_str(" †");
                any_extra = true;
            }
            let values = columns.iter().map(|col| col.report.accuracy(c, "mean")).collect();
            line(&mut out, group, &name, values, None);
        }
    }
    let mut any_partial = false;
    for g in Group::ALL {
        if !corruptions.iter().any(|c| c.group() == g) {
            continue;
        }
        let size = Corruption::ALL.iter().filter(|c| c.group() == g).count();
        let coverage: Vec<Coverage> = columns
            .iter()
            .map(|col| {
                let corruptions: Vec<Corruption> =
                    col.report.evaluated().into_iter().filter(|c| c.group() == g).collect();
                let covered = corruptions.len();
                let partial = covered > 0 && covered < size;
                any_partial |= partial;
                let mark = if partial { format!(" ({covered} of {size})") } else { String::new() };
                Coverage { corruptions, mark }
            })
            .collect();
        let values = columns.iter().map(|col| col.report.per_group.get(g.name()).copied()).collect();
        line(&mut out, "", &format!("*{} average*", g.name().to_lowercase()), values, Some(&coverage));
    }
    let mean_15 = columns.iter().map(|c| c.report.mean_15).collect();
    line(&mut out, "", "**average of 15** (benchmark)", mean_15, None);
    let mean_19 = columns.iter().map(|c| c.report.mean_19).collect();
    line(&mut out, "", "**average of 19**", mean_19, None);
    // A row per attack any column ran, named by the first column that ran it.
    let mut attacked: Vec<&AdversarialReport> =
        columns.iter().filter_map(|c| c.attacks()).flat_map(|a| a.reports.values()).collect();
    attacked.sort_by_key(|adv| adv.attack);
    attacked.dedup_by_key(|adv| adv.attack);
    for adv in attacked {
        let robust =
            columns.iter().map(|c| Some(c.attacks()?.reports.get(&adv.attack)?.robust_accuracy)).collect();
        line(&mut out, "", &format!("**{}** (adversarial)", attack_row_name(adv)), robust, None);
    }
    let _ = writeln!(out);
    if any_extra {
        let _ = writeln!(
            out,
            "† One of the 4 extra corruptions of CIFAR-10-C, outside the benchmark's average of 15.\n"
        );
    }
    if any_partial {
        let _ = writeln!(
            out,
            "(k of n): a partial average, over the k corruptions of the group that run evaluated; \
             averages over different corruptions are neither ranked nor subtracted.\n"
        );
    }
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
        if let Some(attacks) = col.attacks() {
            for a in attacks.reports.values() {
                let _ = writeln!(
                    out,
                    "  - attacked: {} images of {}, {}",
                    a.num_images,
                    attacks.data,
                    attack_description(a)
                );
            }
        }
    }
    out += &expert_comparison_markdown(columns);
    Ok(out)
}

/// " (k of n)" when a report evaluated only k of the n corruptions of group `g`.
fn partial_mark(report: &CorruptionReport, g: Group) -> String {
    let size = Corruption::ALL.iter().filter(|c| c.group() == g).count();
    let covered = report.evaluated().iter().filter(|c| c.group() == g).count();
    if covered > 0 && covered < size { format!(" ({covered} of {size})") } else { String::new() }
}

/// A condition's experts: "clean" or a group's name.
fn condition<'a>(d: &'a ExpertDiagnostics, name: &str) -> Option<&'a ExpertConditionReport> {
    if name == CLEAN { Some(&d.clean) } else { d.per_group.get(name) }
}

/// After the table, when any column is MoCSE: the experts as binary classifiers, their means
/// side by side per condition and measure, then each MoCSE column's experts one by one. Every
/// column without experts is named with the reason.
fn expert_comparison_markdown(columns: &[Column]) -> String {
    let mocse = crate::nn::model::ModelKind::Mocse.to_string();
    if !columns.iter().any(|c| c.report.context.model == mocse || c.report.experts.is_some()) {
        return String::new();
    }
    let mut out = String::from("\n## MoCSE experts\n\n");
    let with: Vec<(&Column, &ExpertDiagnostics)> =
        columns.iter().filter_map(|c| Some((c, c.report.experts.as_ref()?))).collect();
    for col in columns.iter().filter(|c| c.report.experts.is_none()) {
        let why = if col.report.context.model == mocse {
            "MoCSE, but its report holds no expert diagnostics (written by an older mocse; evaluate it again)"
        } else {
            "not MoCSE, so it has no class experts"
        };
        let _ = writeln!(out, "- {} ({}): {why}", col.label, col.report.context.model_description);
    }
    if with.is_empty() {
        return out;
    }
    if with.len() < columns.len() {
        out += "\n";
    }
    let _ = writeln!(
        out,
        "Each expert judged as a binary classifier of its class (yes when p_n > 0.5), in percent: the mean \
         over the experts of its binary accuracy, TPR, FPR (lower is better) and ECE (lower is better), on \
         the clean images and on each corruption group's images (its evaluated corruptions and severities \
         together; (k of n): over k of the group's n corruptions).\n"
    );
    let labels: Vec<&str> = with.iter().map(|(c, _)| c.label.as_str()).collect();
    let _ = writeln!(out, "| condition | measure | {} |", labels.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(labels.len()));
    let groups: Vec<Group> = Group::ALL
        .into_iter()
        .filter(|g| with.iter().any(|(_, d)| d.per_group.contains_key(g.name())))
        .collect();
    let names: Vec<(&str, Option<Group>)> =
        std::iter::once((CLEAN, None)).chain(groups.iter().map(|&g| (g.name(), Some(g)))).collect();
    for &(name, group) in &names {
        for (m, measure) in Measure::ALL.into_iter().enumerate() {
            let cells: Vec<String> = with
                .iter()
                .map(|(col, d)| match condition(d, name) {
                    Some(r) => {
                        let mark = group.map_or_else(String::new, |g| partial_mark(&col.report, g));
                        format!("{}{mark}", percent(mean_over_experts(&r.experts, measure), 2))
                    }
                    None => "n/a".to_string(),
                })
                .collect();
            let shown = if m == 0 { condition_header(name) } else { String::new() };
            let _ = writeln!(out, "| {shown} | {} | {} |", measure.name(), cells.join(" | "));
        }
    }
    for (col, d) in &with {
        let conditions = d.conditions();
        let _ = writeln!(out, "\n### {}: each expert\n\nTPR / FPR / ECE (%) of each expert.\n", col.label);
        let headers: Vec<String> = conditions
            .iter()
            .map(|&(name, _)| {
                let group = Group::ALL.into_iter().find(|g| g.name() == name);
                format!(
                    "{}{}",
                    condition_header(name),
                    group.map_or_else(String::new, |g| partial_mark(&col.report, g))
                )
            })
            .collect();
        let _ = writeln!(out, "| expert | {} |", headers.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(headers.len()));
        for (n, class) in d.classes.iter().enumerate() {
            let cells: Vec<String> = conditions
                .iter()
                .map(|(_, r)| match r.experts.get(n) {
                    Some(e) => {
                        format!("{} / {} / {}", percent(e.tpr, 1), percent(e.fpr, 1), percent(Some(e.ece), 1))
                    }
                    None => "n/a".to_string(),
                })
                .collect();
            let _ = writeln!(out, "| {class} | {} |", cells.join(" | "));
        }
    }
    out
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

/// Accuracy (%) against severity, one series per column.
#[derive(Debug)]
pub struct SeverityChart {
    /// "clean", then the severities 1-5.
    pub points: Vec<String>,
    /// (label, value per point); NaN where a report did not evaluate a severity.
    pub series: Vec<(String, Vec<f64>)>,
    /// How many corruptions each point averages.
    pub corruptions: usize,
}

/// The line chart's data. A point is the mean over the corruptions that every column evaluated,
/// so the lines measure the same thing.
pub fn severity_chart_data(columns: &[Column]) -> Result<SeverityChart> {
    let common: Vec<Corruption> = Corruption::ALL
        .into_iter()
        .filter(|&c| columns.iter().all(|col| col.report.corruptions.contains_key(c.name())))
        .collect();
    if common.is_empty() {
        bail!("the reports have no corruption in common, so accuracy against severity cannot be compared");
    }
    let mut labels = vec!["clean".to_string()];
    labels.extend((1..=5).map(|s| s.to_string()));
    let series = columns
        .iter()
        .map(|col| {
            let mut values = vec![100.0 * col.report.clean_accuracy];
            values.extend((1..=5u8).map(|s| {
                let at: Option<Vec<f64>> =
                    common.iter().map(|&c| col.report.accuracy(c, &s.to_string())).collect();
                at.map_or(f64::NAN, |v| 100.0 * v.iter().sum::<f64>() / v.len() as f64)
            }));
            (col.label.clone(), values)
        })
        .collect();
    Ok(SeverityChart { points: labels, series, corruptions: common.len() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::eval::RunDescription;
    use crate::robustness::CorruptionCounts;

    /// A report on 100 images: `clean` correct, and per (corruption, severity) the given counts.
    fn report(
        clean: usize,
        corrupted: &[(Corruption, u8, usize)],
        severities: &[u8],
        source: &str,
    ) -> CorruptionReport {
        let context = RunDescription {
            model: "mocse".into(),
            model_description: "MoCSE".into(),
            run: "runs/x".into(),
            checkpoint_epoch: Some(1),
            data: "synthetic".into(),
            device: "cpu".into(),
        };
        let corrupted: BTreeMap<(Corruption, u8), usize> =
            corrupted.iter().map(|&(c, s, n)| ((c, s), n)).collect();
        let clean_confusion = crate::eval::ConfusionCounts::new(10);
        let diagnostics = crate::diagnostics::DiagnosticCounts::new(Vec::new(), None);
        let counts = CorruptionCounts { num_images: 100, clean, clean_confusion, corrupted, diagnostics };
        CorruptionReport::new(context, source.into(), &counts, severities)
    }

    fn column(label: &str, report: CorruptionReport) -> Column {
        Column { label: label.into(), report, robust: None }
    }

    #[test]
    fn default_labels_take_the_parents_that_tell_runs_apart() {
        let labels = |runs: &[&str]| {
            let reports: Vec<CorruptionReport> = runs
                .iter()
                .map(|r| {
                    let mut x = report(50, &[], &[1], "s");
                    x.context.run = r.to_string();
                    x
                })
                .collect();
            default_labels(&reports)
        };
        assert_eq!(labels(&["runs/a", "runs/b"]), ["a", "b"]);
        assert_eq!(
            labels(&["t1/cells/std-mocse/run", "t1/cells/adv-mocse/run"]),
            ["std-mocse/run", "adv-mocse/run"]
        );
        assert_eq!(labels(&["x/run", "y/run", "z/other"]), ["x/run", "y/run", "z/other"]);
        assert_eq!(labels(&["runs/a", "runs/a"]), ["a (1)", "a (2)"]);
    }

    const SEED_0: &str = "generated on cpu (seed 0)";

    #[test]
    fn the_best_of_each_row_is_bold_and_differences_are_to_the_first_column() {
        use Corruption::{Fog, GaussianNoise};
        let a = report(80, &[(Fog, 1, 60), (GaussianNoise, 1, 30)], &[1], SEED_0);
        let b = report(70, &[(Fog, 1, 65), (GaussianNoise, 1, 30)], &[1], "generated on emu (seed 0)");
        let columns = [column("a", a), column("b", b)];
        assert!(incomparabilities(&columns).is_empty(), "the device only changes rounding");
        let table =
            table1_markdown(&columns, &TableOptions { difference: true, ..Default::default() }).unwrap();
        assert!(table.contains("| natural samples | **80.00** | 70.00 | -10.00 |"), "{table}");
        assert!(table.contains("| fog | 60.00 | **65.00** | +5.00 |"), "{table}");
        assert!(table.contains("| gaussian noise | **30.00** | **30.00** | +0.00 |"), "ties: {table}");
        let partial = "| *noise average* | **30.00** (1 of 4) | **30.00** (1 of 4) | +0.00 |";
        assert!(table.contains(partial) && table.contains("(k of n): a partial average"), "{table}");
        assert!(!table.contains("†") && !table.contains("Not like for like"), "{table}");
        // One column: nothing to be best against.
        let single = table1_markdown(&columns[..1], &TableOptions::default()).unwrap();
        assert!(single.contains("| natural samples | 80.00 |") && !single.contains("−"), "{single}");
    }

    #[test]
    fn reports_on_different_images_are_named_as_such() {
        use Corruption::Fog;
        let base = || report(50, &[(Fog, 1, 40), (Fog, 2, 30)], &[1, 2], SEED_0);
        let mut other_data = base();
        other_data.context.data = "cifar10:/data".into();
        let mut other_count = base();
        other_count.num_images = 200;
        let columns = [
            column("a", base()),
            column("seed", report(50, &[(Fog, 1, 40), (Fog, 2, 30)], &[1, 2], "generated on cpu (seed 1)")),
            column("files", report(50, &[(Fog, 1, 40), (Fog, 2, 30)], &[1, 2], "cifar10c:/c10c")),
            column("severities", report(50, &[(Fog, 2, 30)], &[2], SEED_0)),
            column("data", other_data),
            column("count", other_count),
            column("same", base()),
        ];
        let found = incomparabilities(&columns);
        assert_eq!(
            found,
            [
                "corrupted images: a has generated with seed 0, seed has generated with seed 1",
                "corrupted images: a has generated with seed 0, files has cifar10c:/c10c",
                "severities: a has [1, 2], severities has [2]",
                "test data: a has synthetic, data has cifar10:/data",
                "test images: a has 100, count has 200",
            ]
        );
        let table = table1_markdown(
            &columns,
            &TableOptions { accepted_incomparabilities: found, ..Default::default() },
        )
        .unwrap();
        assert!(table.starts_with("> **Not like for like**"), "{table}");
        assert!(table.contains("> - test images: a has 100, count has 200"), "{table}");
    }

    /// A robust evaluation of 100 images with `robust` of them robust under PGD-`steps`.
    fn robust_report(robust: usize, steps: usize) -> EvalReport {
        use crate::attack::evaluate::{AdversarialReport, AttackCounts, SanityReport};
        use crate::attack::{AttackKind, BnMode, Norm, PgdConfig};
        let settings = PgdConfig {
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
            alpha: 2.0 / 255.0,
            steps,
            restarts: 1,
            random_start: true,
            bn: BnMode::Eval,
            seed: 0,
        };
        let counts = AttackCounts {
            num_images: 100,
            robust_flags: (0..100).map(|i| i < robust).collect(),
            robust,
            zero_gradient: 0,
            predicted: vec![0; 100],
            adversarial: Vec::new(),
            robust_after_stage: Vec::new(),
        };
        let sanity = SanityReport {
            eps_zero_accuracy: 0.5,
            subset_images: 100,
            robust_on_subset: robust,
            double_eps_robust_on_subset: 0,
            large_eps: 0.5,
            large_eps_robust_on_subset: 0,
            zero_gradient_images: 0,
            warnings: Vec::new(),
        };
        EvalReport {
            run: report(50, &[], &[1], SEED_0).context,
            clean_accuracy: 0.5,
            num_images: 100,
            per_class: None,
            adversarial: [(
                AttackKind::Pgd,
                AdversarialReport::new(AttackKind::Pgd, settings, &counts, sanity),
            )]
            .into(),
            experts: None,
            mocse: String::new(),
        }
    }

    #[test]
    fn robust_accuracy_is_a_row_and_different_attacks_are_named() {
        use Corruption::Fog;
        let with = |label: &str, robust| Column {
            label: label.into(),
            report: report(50, &[(Fog, 1, 40)], &[1], SEED_0),
            robust: Some(robust),
        };
        let columns = [with("a", robust_report(12, 10)), with("b", robust_report(20, 10))];
        assert!(incomparabilities(&columns).is_empty());
        let table =
            table1_markdown(&columns, &TableOptions { difference: true, ..Default::default() }).unwrap();
        assert!(
            table.contains("| **PGD-10 linf eps 8/255** (adversarial) | 12.00 | **20.00** | +8.00 |"),
            "{table}"
        );
        assert!(
            table.contains("  - attacked: 100 images of synthetic, PGD-10 linf eps 8/255 (alpha 2/255"),
            "{table}"
        );
        let columns = [with("a", robust_report(12, 10)), with("b", robust_report(20, 20))];
        let found = incomparabilities(&columns);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("attack: a has PGD-10 linf eps 8/255"), "{found:?}");
    }

    #[test]
    fn a_report_of_one_attack_block_reads_as_that_attack_and_a_misfiled_block_is_refused() {
        let report = robust_report(12, 10);
        let mut json = serde_json::to_value(&report).unwrap();
        assert!(json["adversarial"]["pgd"]["robust_accuracy"].is_number(), "{json}");
        // Written before reports held several attacks: the block itself.
        json["adversarial"] = json["adversarial"]["pgd"].clone();
        assert_eq!(serde_json::from_value::<EvalReport>(json.clone()).unwrap(), report);
        json["adversarial"] = serde_json::json!({ "aa-lite": json["adversarial"].clone() });
        let err = serde_json::from_value::<EvalReport>(json).unwrap_err().to_string();
        assert!(err.contains("adversarial.aa-lite holds the results of pgd"), "{err}");
    }

    #[test]
    fn severity_points_average_the_corruptions_every_report_evaluated() {
        use Corruption::{Contrast, Fog, Spatter};
        let all = |c| [(c, 1, 80), (c, 2, 60)];
        let a: Vec<_> = [all(Fog), all(Contrast), [(Spatter, 1, 10), (Spatter, 2, 0)]].concat();
        let b: Vec<_> = [[(Fog, 1, 50), (Fog, 2, 40)], [(Contrast, 1, 70), (Contrast, 2, 20)]].concat();
        let columns =
            [column("a", report(90, &a, &[1, 2], SEED_0)), column("b", report(85, &b, &[1, 2], SEED_0))];
        let SeverityChart { points, series, corruptions: n } = severity_chart_data(&columns).unwrap();
        assert_eq!(n, 2, "spatter is in one report only");
        assert_eq!(points, ["clean", "1", "2", "3", "4", "5"]);
        let close = |x: &[f64], y: [f64; 3]| x[..3].iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-9);
        assert!(close(&series[0].1, [90.0, 80.0, 60.0]), "{series:?}");
        assert!(close(&series[1].1, [85.0, 60.0, 30.0]), "{series:?}");
        assert!(series[0].1[3..].iter().all(|v| v.is_nan()), "severities 3-5 not evaluated");
        let spatter = column("s", report(90, &[(Spatter, 1, 10)], &[1], SEED_0));
        let disjoint = [column("b", report(85, &b, &[1, 2], SEED_0)), spatter];
        assert!(severity_chart_data(&disjoint).unwrap_err().to_string().contains("no corruption in common"));
        // The extra corruption is marked.
        let table = table1_markdown(&columns, &TableOptions::default()).unwrap();
        assert!(
            table.contains("| spatter † | 5.00 | n/a |") && table.contains("† One of the 4 extra"),
            "{table}"
        );
    }
}
