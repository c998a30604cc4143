//! Table 1 of a reproduction: a row per measure (natural samples, the 19 corruptions, group
//! means, the means of 15 and 19, each attack), and for each of the six cells our accuracy, the
//! paper's and ours minus the paper's, in percent. Written as Markdown, CSV, JSON and a chart.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use super::{Cell, Preset, Settings, paper};
use crate::corrupt::{Corruption, Group};
use crate::raster::bar_chart_png;
use crate::robustness::CorruptionReport;

/// One cell's entry in a row, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Entry {
    pub ours: Option<f64>,
    /// The paper's number; derived from its per-corruption numbers for the group means and the
    /// mean of 15; none where the paper has no such row (the attacks).
    pub paper: Option<f64>,
    /// Ours minus the paper's, in percentage points.
    pub difference: Option<f64>,
}

impl Entry {
    fn new(ours: Option<f64>, paper: Option<f64>) -> Entry {
        let round = |v: f64| (v * 100.0).round() / 100.0;
        let (ours, paper) = (ours.map(round), paper.map(round));
        let difference = ours.zip(paper).map(|(a, b)| round(a - b));
        Entry { ours, paper, difference }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// A stable key: `natural`, a corruption's name, `group:Noise`, `mean_15`, `mean_19`, or an
    /// attack's name.
    pub key: String,
    pub label: String,
    /// The corruption group of a corruption's row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Per cell, in the order of `columns`.
    pub entries: Vec<Entry>,
}

/// A column: a cell and where its results are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnInfo {
    pub cell: String,
    pub title: String,
    pub model: String,
    /// The cell's directory, relative to the reproduction's.
    pub directory: String,
    pub epoch: Option<usize>,
    pub test_images: usize,
    pub corrupted_images: String,
}

/// The whole table, as written to table1.json.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table1 {
    pub preset: Preset,
    pub settings: Settings,
    pub columns: Vec<ColumnInfo>,
    pub rows: Vec<Row>,
    pub mocse: String,
}

impl Table1 {
    /// The table of the six cells' reports (in [`Cell::ALL`] order); `directory` names a cell's
    /// directory for the captions.
    pub fn new(
        settings: &Settings,
        reports: &[CorruptionReport],
        directory: impl Fn(Cell) -> String,
    ) -> Table1 {
        let pct = |v: Option<f64>| v.map(|v| 100.0 * v);
        let row = |key: String,
                   label: String,
                   group: Option<&str>,
                   ours: &dyn Fn(&CorruptionReport) -> Option<f64>,
                   paper: &dyn Fn(usize) -> Option<f64>| Row {
            key,
            label,
            group: group.map(str::to_string),
            entries: reports.iter().enumerate().map(|(i, r)| Entry::new(pct(ours(r)), paper(i))).collect(),
        };
        let mut rows =
            vec![row("natural".into(), "natural samples".into(), None, &|r| Some(r.clean_accuracy), &|i| {
                Some(paper::NATURAL[i])
            })];
        for c in Corruption::ALL {
            rows.push(row(
                c.name().into(),
                c.name().replace('_', " "),
                Some(c.group().name()),
                &|r| r.accuracy(c, "mean"),
                &|i| Some(paper::corruption(c)[i]),
            ));
        }
        for g in Group::ALL {
            let members = || Corruption::ALL.into_iter().filter(move |c| c.group() == g);
            rows.push(row(
                format!("group:{}", g.name()),
                format!("{} average", g.name().to_lowercase()),
                None,
                &|r| r.per_group.get(g.name()).copied(),
                &|i| Some(paper::mean_over(members(), i)),
            ));
        }
        rows.push(row("mean_15".into(), "average of 15 (benchmark)".into(), None, &|r| r.mean_15, &|i| {
            Some(paper::mean_over(Corruption::ALL.into_iter().filter(|c| c.is_benchmark()), i))
        }));
        rows.push(row("mean_19".into(), "average of 19".into(), None, &|r| r.mean_19, &|i| {
            Some(paper::AVERAGE_OF_19[i])
        }));
        for a in &settings.attacks {
            let kind = a.attack;
            let s = &a.settings;
            let label = format!(
                "{}-{} {} eps {}",
                kind.to_string().to_uppercase(),
                s.steps,
                s.norm,
                crate::attack::evaluate::pixel_amount_text(s.eps)
            );
            rows.push(row(
                kind.to_string(),
                label,
                None,
                &|r| r.adversarial.get(&kind).map(|x| x.robust_accuracy),
                &|_| None,
            ));
        }
        let columns = Cell::ALL
            .iter()
            .zip(reports)
            .map(|(&cell, r)| ColumnInfo {
                cell: cell.name().to_string(),
                title: cell.title().to_string(),
                model: r.context.model_description.clone(),
                directory: directory(cell),
                epoch: r.context.checkpoint_epoch,
                test_images: r.num_images,
                corrupted_images: r.corrupted_images.clone(),
            })
            .collect();
        Table1 {
            preset: settings.preset,
            settings: settings.clone(),
            columns,
            rows,
            mocse: crate::BUILD.to_string(),
        }
    }

    fn row(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    /// The Markdown table: per cell three columns (ours, the paper's, the difference).
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("# Table 1, reproduced\n\n");
        if self.preset == Preset::Quick {
            out.push_str(
                "> **Preset quick: a smoke test of the pipeline, not the paper's experiment.** Small networks \
                 trained for a few epochs on a few thousand images; its numbers say that every part ran, not how \
                 the models compare. The paper's numbers stand beside them for the layout only.\n\n",
            );
        }
        let s = &self.settings;
        let _ = writeln!(
            out,
            "Accuracy (%), higher is better. Per cell: **mocse** (ours), **paper** (Kotyan & Vargas, Table 1) and \
             **Δ** (ours − paper, percentage points). A corruption's accuracy is its mean over severities 1-5.\n"
        );
        let mut header = String::from("| | |");
        let mut rule = String::from("|---|---|");
        for c in &self.columns {
            let _ = write!(header, " {}: mocse | paper | Δ |", c.title);
            rule.push_str("---:|---:|---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        let number = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.2}"));
        let signed = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:+.2}"));
        let mut last_group: Option<&str> = None;
        for row in &self.rows {
            let group = match row.group.as_deref() {
                Some(g) if last_group != Some(g) => {
                    last_group = Some(g);
                    g
                }
                _ => "",
            };
            let label = match row.key.as_str() {
                k if k.starts_with("group:") => format!("*{}*", row.label),
                "natural" | "mean_15" | "mean_19" => format!("**{}**", row.label),
                _ if row.group.is_none() => format!("**{}** (adversarial)", row.label),
                _ => row.label.clone(),
            };
            let _ = write!(out, "| {group} | {label} |");
            for e in &row.entries {
                let _ = write!(out, " {} | {} | {} |", number(e.ours), number(e.paper), signed(e.difference));
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\nThe paper prints the natural accuracy, the 19 corruptions and their average; its group averages and \
             its average of the 15 benchmark corruptions here are means of its printed rows (groups as in mocse's \
             reports). It publishes no attack results: their paper columns are empty.\n"
        );
        let _ = writeln!(out, "## Settings\n");
        let _ = writeln!(
            out,
            "- preset {}, data {}{}, {} epoch(s) of {} images, batch {}, SGD lr {} momentum {} weight decay {}, \
             {} schedule, seed {}",
            s.preset,
            s.data,
            s.train_subset.map_or(String::new(), |n| format!(" (first {n} training images)")),
            s.epochs,
            s.train_subset.map_or("all".to_string(), |n| n.to_string()),
            s.batch_size,
            s.lr,
            s.sgd.momentum,
            s.sgd.weight_decay,
            format!("{:?}", s.schedule).to_lowercase(),
            s.seed
        );
        let a = &s.adversarial;
        let _ = writeln!(
            out,
            "- adversarial training: PGD-{} {} eps {:.2}/255 step {:.2}/255 (batch norm {} while attacking)",
            a.steps,
            a.norm,
            a.eps * 255.0,
            a.alpha * 255.0,
            a.bn
        );
        let _ = writeln!(
            out,
            "- augmented set: crop, flip, then AugMix of autocontrast, equalize, posterize, rotate, solarize, shear \
             x/y, translate x/y (severity 3, width 3, depth 1-3, Dirichlet(1), Beta(1, 1)){}",
            s.jsd.map_or(String::new(), |l| format!(", Jensen-Shannon loss weight {l}"))
        );
        for c in &self.columns {
            let _ = writeln!(
                out,
                "- {} (`{}`): {}, epoch {}, {} test images, corrupted images {}",
                c.title,
                c.directory,
                c.model,
                c.epoch.map_or("?".to_string(), |e| e.to_string()),
                c.test_images,
                c.corrupted_images
            );
        }
        let _ = writeln!(out, "\nWritten by mocse {}.", self.mocse);
        out
    }

    /// One line per row and cell: `row,group,cell,ours,paper,difference` (percent).
    pub fn to_csv(&self) -> String {
        let mut out = String::from("row,label,cell,ours,paper,difference\n");
        let value = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
        for row in &self.rows {
            for (c, e) in self.columns.iter().zip(&row.entries) {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{}",
                    row.key,
                    row.label,
                    c.cell,
                    value(e.ours),
                    value(e.paper),
                    value(e.difference)
                );
            }
        }
        out
    }

    /// A bar chart per cell: natural accuracy and the average of 19, ours and the paper's, and
    /// ours under each attack.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let categories: Vec<String> = self.columns.iter().map(|c| c.title.clone()).collect();
        let values = |key: &str, paper: bool| -> Vec<f64> {
            self.row(key).map_or(vec![f64::NAN; categories.len()], |r| {
                r.entries.iter().map(|e| if paper { e.paper } else { e.ours }.unwrap_or(f64::NAN)).collect()
            })
        };
        let mut series = vec![
            ("natural, mocse".to_string(), values("natural", false)),
            ("natural, paper".to_string(), values("natural", true)),
            ("average of 19 corruptions, mocse".to_string(), values("mean_19", false)),
            ("average of 19 corruptions, paper".to_string(), values("mean_19", true)),
        ];
        for a in &self.settings.attacks {
            let label = self.row(&a.attack.to_string()).map_or(a.attack.to_string(), |r| r.label.clone());
            series.push((format!("{label}, mocse"), values(&a.attack.to_string(), false)));
        }
        let title = match self.preset {
            Preset::Quick => "Table 1, preset quick (a smoke test, not the paper's experiment): accuracy %",
            Preset::Paper => "Table 1: accuracy %, mocse and the paper",
        };
        bar_chart_png(title, &categories, &series)
    }
}
