//! Why a model fails where it fails: which classes it predicts under each corruption (any
//! model), and, for MoCSE, each expert judged as the binary classifier it is trained to be
//! ("is this image of class n?"): binary accuracy, true- and false-positive rate and
//! calibration (ECE), clean and per corruption group.
//!
//! Everything is counted from the class scores the evaluation computes anyway, so no forward
//! pass is added. Expert n's probability p_n is its class score under `prob` and the sigmoid of
//! it under `logodds`; the expert says "class n" when p_n > 0.5. Outcomes and bins are integer
//! counts; probability sums are f64, added image by image per (condition, severity) and merged
//! in a fixed order, so the numbers do not depend on the batch size.

pub mod figures;
pub mod markdown;

use std::collections::BTreeMap;

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::corrupt::{Corruption, Group};
use crate::nn::model::{MAX_CLASSES, ModelConfig, ModelKind};
use crate::ops::aggregate::Aggregate;
use crate::ops::loss::argmax;
use crate::robustness::report_value;
use crate::tensor::Tensor;

/// Equal-width bins of p_n over [0, 1] for the calibration error (the usual 15).
pub const ECE_BINS: usize = 15;

/// The key of the clean test images in maps keyed by condition.
pub const CLEAN: &str = "clean";

/// The ECE bin of a probability: bin b holds [b/15, (b+1)/15), the last one also 1.
pub fn ece_bin(p: f64) -> usize {
    ((p * ECE_BINS as f64) as usize).min(ECE_BINS - 1)
}

/// Why an evaluation stops at a NaN score: it comes from weights that overflow in the forward
/// pass, and no prediction of such a model means anything.
const NAN_SCORES: &str = "the model's class scores are NaN on some images (its weights overflow in the forward pass), \
                          so nothing it predicts can be evaluated";

/// Expert n's probability p_n and whether it says "class n", from its class score. Under
/// `logodds` the decision is taken on the score itself (z > 0 is p > 0.5 exactly; a rounded
/// sigmoid of a tiny z could land on 0.5). A score that is not a probability is refused.
pub fn expert_probability(score: f32, aggregate: Aggregate) -> Result<(f64, bool)> {
    ensure!(!score.is_nan(), NAN_SCORES);
    match aggregate {
        Aggregate::Prob => {
            ensure!(
                (0.0..=1.0).contains(&score),
                "an expert probability is {score}; the prob aggregate gives probabilities in [0, 1]"
            );
            Ok((f64::from(score), score > 0.5))
        }
        Aggregate::LogOdds => Ok((1.0 / (1.0 + (-f64::from(score)).exp()), score > 0.0)),
    }
}

/// Images whose p_n fell into one ECE bin: how many, how many were of the expert's class, and
/// the sum of their p_n.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CalibrationBin {
    pub images: u64,
    pub positives: u64,
    pub probability_sum: f64,
}

/// One expert's binary outcomes and calibration bins over a set of images.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExpertCounts {
    pub true_positives: u64,
    pub false_positives: u64,
    pub true_negatives: u64,
    pub false_negatives: u64,
    pub probability_sum: f64,
    pub bins: [CalibrationBin; ECE_BINS],
}

impl ExpertCounts {
    /// One image: the expert's p_n, its decision, and whether the image is of its class.
    fn add(&mut self, p: f64, says_yes: bool, is_class: bool) {
        match (says_yes, is_class) {
            (true, true) => self.true_positives += 1,
            (true, false) => self.false_positives += 1,
            (false, false) => self.true_negatives += 1,
            (false, true) => self.false_negatives += 1,
        }
        self.probability_sum += p;
        let bin = &mut self.bins[ece_bin(p)];
        bin.images += 1;
        bin.positives += u64::from(is_class);
        bin.probability_sum += p;
    }

    fn merge(&mut self, other: &ExpertCounts) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.true_negatives += other.true_negatives;
        self.false_negatives += other.false_negatives;
        self.probability_sum += other.probability_sum;
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            a.images += b.images;
            a.positives += b.positives;
            a.probability_sum += b.probability_sum;
        }
    }

    pub fn images(&self) -> u64 {
        self.true_positives + self.false_positives + self.true_negatives + self.false_negatives
    }

    /// Binary ECE: per bin |mean p_n - fraction of the expert's class|, weighted by the bin's
    /// share of the images; that is sum over bins |sum p_n - positives| / images.
    pub fn ece(&self) -> f64 {
        let gap: f64 = self.bins.iter().map(|b| (b.probability_sum - b.positives as f64).abs()).sum();
        gap / self.images().max(1) as f64
    }

    /// The rates (fractions rounded as every report number), with the counts they come from.
    pub fn stats(&self) -> ExpertStats {
        let fraction = |a: u64, b: u64| (b > 0).then(|| report_value(a as f64 / b as f64));
        let n = self.images();
        ExpertStats {
            binary_accuracy: fraction(self.true_positives + self.true_negatives, n).unwrap_or(0.0),
            tpr: fraction(self.true_positives, self.true_positives + self.false_negatives),
            fpr: fraction(self.false_positives, self.false_positives + self.true_negatives),
            ece: report_value(self.ece()),
            mean_probability: report_value(self.probability_sum / n.max(1) as f64),
            true_positives: self.true_positives as usize,
            false_positives: self.false_positives as usize,
            true_negatives: self.true_negatives as usize,
            false_negatives: self.false_negatives as usize,
        }
    }
}

/// Every expert's counts over one set of images.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertTally {
    pub aggregate: Aggregate,
    pub experts: Vec<ExpertCounts>,
}

impl ExpertTally {
    pub fn new(experts: usize, aggregate: Aggregate) -> ExpertTally {
        ExpertTally { aggregate, experts: vec![ExpertCounts::default(); experts] }
    }

    /// Counts a batch: its class scores [B, N] and labels.
    pub fn add(&mut self, scores: &Tensor, labels: &[u32]) -> Result<()> {
        check_scores(scores, self.experts.len(), labels)?;
        self.add_rows(&scores.to_host()?, labels)
    }

    /// Counts rows of N class scores (row-major) with their labels.
    pub fn add_rows(&mut self, scores: &[f32], labels: &[u32]) -> Result<()> {
        let n = self.experts.len();
        ensure!(
            scores.len() == n * labels.len(),
            "{} class scores for {} images of {n} classes",
            scores.len(),
            labels.len()
        );
        // Check the whole batch first, so an error leaves the tally as it was.
        let judged: Vec<(f64, bool)> =
            scores.iter().map(|&s| expert_probability(s, self.aggregate)).collect::<Result<_>>()?;
        check_labels(labels, n)?;
        for (row, &label) in judged.chunks_exact(n).zip(labels) {
            for (expert, (counts, &(p, yes))) in self.experts.iter_mut().zip(row).enumerate() {
                counts.add(p, yes, label as usize == expert);
            }
        }
        Ok(())
    }

    pub fn merge(&mut self, other: &ExpertTally) {
        for (a, b) in self.experts.iter_mut().zip(&other.experts) {
            a.merge(b);
        }
    }

    pub fn images(&self) -> u64 {
        self.experts.first().map_or(0, ExpertCounts::images)
    }

    pub fn report(&self) -> ExpertConditionReport {
        ExpertConditionReport {
            images: self.images() as usize,
            experts: self.experts.iter().map(ExpertCounts::stats).collect(),
        }
    }
}

fn check_scores(scores: &Tensor, classes: usize, labels: &[u32]) -> Result<()> {
    ensure!(
        scores.shape() == [labels.len(), classes],
        "class scores of shape {:?} for {} images of {classes} classes",
        scores.shape(),
        labels.len()
    );
    Ok(())
}

fn check_labels(labels: &[u32], classes: usize) -> Result<()> {
    if let Some(l) = labels.iter().find(|&&l| l as usize >= classes) {
        bail!("label {l} is outside the model's {classes} classes");
    }
    Ok(())
}

/// One condition's images: how many each class was predicted for and, for MoCSE, the experts.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionTally {
    pub predicted: Vec<u64>,
    pub experts: Option<ExpertTally>,
}

impl ConditionTally {
    pub fn new(classes: usize, aggregate: Option<Aggregate>) -> ConditionTally {
        ConditionTally {
            predicted: vec![0; classes],
            experts: aggregate.map(|a| ExpertTally::new(classes, a)),
        }
    }

    /// Counts a batch: its class scores [B, K] and labels (the prediction is the argmax, ties
    /// to the lower class, as in the accuracies).
    pub fn add(&mut self, scores: &Tensor, labels: &[u32]) -> Result<()> {
        let k = self.predicted.len();
        check_scores(scores, k, labels)?;
        check_labels(labels, k)?;
        let host = scores.to_host()?;
        ensure!(!host.iter().any(|v| v.is_nan()), NAN_SCORES);
        if let Some(experts) = &mut self.experts {
            experts.add_rows(&host, labels)?;
        }
        for row in host.chunks_exact(k) {
            self.predicted[argmax(row)] += 1;
        }
        Ok(())
    }

    fn merge(&mut self, other: &ConditionTally) {
        for (a, b) in self.predicted.iter_mut().zip(&other.predicted) {
            *a += b;
        }
        if let (Some(a), Some(b)) = (&mut self.experts, &other.experts) {
            a.merge(b);
        }
    }

    pub fn images(&self) -> u64 {
        self.predicted.iter().sum()
    }

    /// The share of the images predicted as each class (they sum to 1 up to the rounding).
    pub fn predicted_share(&self) -> Vec<f64> {
        let n = self.images().max(1) as f64;
        self.predicted.iter().map(|&c| report_value(c as f64 / n)).collect()
    }
}

/// What a corruption evaluation counts besides accuracy: per condition (clean, and each
/// corruption and severity) the predicted classes and, for MoCSE, the experts' outcomes.
#[derive(Clone, Debug, PartialEq)]
pub struct DiagnosticCounts {
    /// The class names in label order (also the experts' names).
    pub classes: Vec<String>,
    /// MoCSE's aggregate; `None` for a model without experts.
    pub aggregate: Option<Aggregate>,
    pub clean: ConditionTally,
    pub corrupted: BTreeMap<(Corruption, u8), ConditionTally>,
}

/// `names[i]`, or the number of a class beyond the names.
pub fn class_labels(classes: usize, names: &[&str]) -> Vec<String> {
    (0..classes).map(|i| names.get(i).map_or_else(|| i.to_string(), |n| n.to_string())).collect()
}

/// MoCSE's aggregate, or `None` for a model without experts.
pub fn expert_aggregate(model: &ModelConfig) -> Option<Aggregate> {
    (model.kind == ModelKind::Mocse).then_some(model.aggregate)
}

impl DiagnosticCounts {
    /// Empty counts for `classes` (named) classes; `aggregate` for MoCSE.
    pub fn new(classes: Vec<String>, aggregate: Option<Aggregate>) -> DiagnosticCounts {
        let clean = ConditionTally::new(classes.len(), aggregate);
        DiagnosticCounts { classes, aggregate, clean, corrupted: BTreeMap::new() }
    }

    /// Empty counts for `model` with the test set's class names.
    pub fn for_model(model: &ModelConfig, names: &[&str]) -> DiagnosticCounts {
        DiagnosticCounts::new(class_labels(model.num_classes, names), expert_aggregate(model))
    }

    pub fn add_clean(&mut self, scores: &Tensor, labels: &[u32]) -> Result<()> {
        self.clean.add(scores, labels)
    }

    pub fn add_corrupted(&mut self, c: Corruption, s: u8, scores: &Tensor, labels: &[u32]) -> Result<()> {
        let (k, aggregate) = (self.classes.len(), self.aggregate);
        self.corrupted.entry((c, s)).or_insert_with(|| ConditionTally::new(k, aggregate)).add(scores, labels)
    }

    /// The evaluated corruptions in table order.
    fn evaluated(&self) -> Vec<Corruption> {
        Corruption::ALL.into_iter().filter(|&c| self.corrupted.keys().any(|&(k, _)| k == c)).collect()
    }

    /// The conditions of `keep` pooled: merged in (corruption, severity) order.
    fn pooled(&self, keep: impl Fn(Corruption) -> bool) -> Option<ConditionTally> {
        let mut parts = self.corrupted.iter().filter(|((c, _), _)| keep(*c)).map(|(_, t)| t);
        let mut total = parts.next()?.clone();
        for t in parts {
            total.merge(t);
        }
        Some(total)
    }

    /// Per condition ("clean", then each corruption pooled over its severities): the share of
    /// the images predicted as each class.
    pub fn predicted_class_share(&self) -> BTreeMap<String, Vec<f64>> {
        let mut out = BTreeMap::new();
        if self.clean.images() > 0 {
            out.insert(CLEAN.to_string(), self.clean.predicted_share());
        }
        for c in self.evaluated() {
            if let Some(t) = self.pooled(|k| k == c).filter(|t| t.images() > 0) {
                out.insert(c.name().to_string(), t.predicted_share());
            }
        }
        out
    }

    /// For MoCSE: every expert, clean and per corruption group (pooled over the group's
    /// evaluated corruptions and severities), and its mean p_n per corruption.
    pub fn expert_diagnostics(&self) -> Option<ExpertDiagnostics> {
        let clean = self.clean.experts.as_ref()?;
        let mut report = ExpertDiagnostics::clean_only(self.classes.clone(), clean);
        for g in Group::ALL {
            if let Some(experts) = self.pooled(|c| c.group() == g).and_then(|t| t.experts) {
                report.per_group.insert(g.name().to_string(), experts.report());
            }
        }
        for c in self.evaluated() {
            if let Some(experts) = self.pooled(|k| k == c).and_then(|t| t.experts) {
                let means = experts.report().experts.iter().map(|e| e.mean_probability).collect();
                report.mean_probability_per_corruption.insert(c.name().to_string(), means);
            }
        }
        Some(report)
    }
}

/// One expert as a binary classifier over a set of images. Rates are fractions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpertStats {
    /// Images on which the expert's yes/no (p_n > 0.5) was right, of all images.
    pub binary_accuracy: f64,
    /// Images of the expert's class it said yes to; null without an image of its class.
    pub tpr: Option<f64>,
    /// Images of other classes it said yes to; null without an image of another class.
    pub fpr: Option<f64>,
    /// Expected calibration error of p_n (15 equal-width bins).
    pub ece: f64,
    /// The mean p_n over all images.
    pub mean_probability: f64,
    pub true_positives: usize,
    pub false_positives: usize,
    pub true_negatives: usize,
    pub false_negatives: usize,
}

/// Every expert over one condition's images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpertConditionReport {
    /// The images each expert judged (the condition's test images, times its severities).
    pub images: usize,
    /// In class order.
    pub experts: Vec<ExpertStats>,
}

impl ExpertConditionReport {
    fn validate(&self, classes: usize, what: &str) -> Result<()> {
        ensure!(
            self.experts.len() == classes,
            "{what} holds {} experts for {classes} classes",
            self.experts.len()
        );
        for (n, e) in self.experts.iter().enumerate() {
            let counts = [e.true_positives, e.false_positives, e.true_negatives, e.false_negatives];
            ensure!(
                counts.iter().try_fold(0usize, |s, &c| s.checked_add(c)) == Some(self.images),
                "{what}: expert {n}'s outcomes do not add up to its {} images",
                self.images
            );
            let values = [Some(e.binary_accuracy), e.tpr, e.fpr, Some(e.ece), Some(e.mean_probability)];
            for v in values.into_iter().flatten() {
                ensure!(
                    v.is_finite() && (0.0..=1.0).contains(&v),
                    "{what}: expert {n} holds {v}; its rates are fractions between 0 and 1"
                );
            }
        }
        Ok(())
    }
}

/// MoCSE's experts as binary classifiers: clean, per corruption group, and their mean
/// probability per corruption.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpertDiagnostics {
    pub aggregate: Aggregate,
    /// The experts' classes in order.
    pub classes: Vec<String>,
    pub clean: ExpertConditionReport,
    /// Group (Noise, Blur, Weather, Digital) -> the experts over its evaluated corruptions and
    /// severities together.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_group: BTreeMap<String, ExpertConditionReport>,
    /// Corruption -> each expert's mean p_n over its images at every evaluated severity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mean_probability_per_corruption: BTreeMap<String, Vec<f64>>,
}

impl ExpertDiagnostics {
    /// The clean images' diagnostics alone (the report of an evaluation without corruptions).
    pub fn clean_only(classes: Vec<String>, clean: &ExpertTally) -> ExpertDiagnostics {
        ExpertDiagnostics {
            aggregate: clean.aggregate,
            classes,
            clean: clean.report(),
            per_group: BTreeMap::new(),
            mean_probability_per_corruption: BTreeMap::new(),
        }
    }

    /// One line: the means over the experts on the clean images.
    pub fn summary(&self) -> String {
        use markdown::{Measure, mean_over_experts};
        let means: Vec<String> = Measure::ALL
            .into_iter()
            .map(|m| {
                format!("{} {}", m.name(), crate::robustness::pct(mean_over_experts(&self.clean.experts, m)))
            })
            .collect();
        format!("experts (mean over {} on the clean images): {}", self.classes.len(), means.join(", "))
    }

    /// The conditions in table order: clean, then the groups present.
    pub fn conditions(&self) -> Vec<(&str, &ExpertConditionReport)> {
        let mut out = vec![(CLEAN, &self.clean)];
        out.extend(Group::ALL.iter().filter_map(|g| Some((g.name(), self.per_group.get(g.name())?))));
        out
    }

    /// Checks diagnostics read from a file: one entry per class everywhere, outcomes that add
    /// up, fractions in [0, 1], known group and corruption names.
    pub fn validate(&self) -> Result<()> {
        let k = self.classes.len();
        ensure!(
            (2..=MAX_CLASSES).contains(&k),
            "experts.classes names {k} classes; expected 2 to {MAX_CLASSES}"
        );
        self.clean.validate(k, "experts.clean")?;
        for (group, report) in &self.per_group {
            ensure!(
                Group::ALL.iter().any(|g| g.name() == group),
                "experts.per_group.{group} is not one of the groups Noise, Blur, Weather, Digital"
            );
            report.validate(k, &format!("experts.per_group.{group}"))?;
        }
        validate_class_map(
            &self.mean_probability_per_corruption,
            k,
            "experts.mean_probability_per_corruption",
            false,
        )
    }
}

/// Checks a map from condition to one fraction per class: known keys (a corruption, or also
/// "clean" when `clean` is allowed), `classes` values each, all in [0, 1].
pub fn validate_class_map(
    map: &BTreeMap<String, Vec<f64>>,
    classes: usize,
    what: &str,
    clean: bool,
) -> Result<()> {
    for (key, values) in map {
        ensure!(
            (clean && key == CLEAN) || Corruption::ALL.iter().any(|c| c.name() == key),
            "{what}.{key} is not {}one of the 19 corruptions",
            if clean { "\"clean\" or " } else { "" }
        );
        ensure!(values.len() == classes, "{what}.{key} holds {} values for {classes} classes", values.len());
        if let Some(v) = values.iter().find(|v| !(v.is_finite() && (0.0..=1.0).contains(*v))) {
            bail!("{what}.{key} holds {v}; expected fractions between 0 and 1");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_and_decisions_of_both_aggregates() {
        assert_eq!(expert_probability(0.75, Aggregate::Prob).unwrap(), (0.75, true));
        assert_eq!(expert_probability(0.5, Aggregate::Prob).unwrap(), (0.5, false), "0.5 is not > 0.5");
        let (p, yes) = expert_probability(1e-30, Aggregate::LogOdds).unwrap();
        assert!(yes && p >= 0.5, "a positive log-odds says yes");
        let (p, yes) = expert_probability(-2.0, Aggregate::LogOdds).unwrap();
        assert!(!yes && (p - 1.0 / (1.0 + 2f64.exp())).abs() < 1e-15);
        assert!(expert_probability(1.5, Aggregate::Prob).is_err());
        assert!(expert_probability(f32::NAN, Aggregate::Prob).is_err());
        assert!(expert_probability(f32::NAN, Aggregate::LogOdds).is_err());
        assert_eq!(expert_probability(f32::INFINITY, Aggregate::LogOdds).unwrap(), (1.0, true));
    }

    #[test]
    fn ece_bins_are_equal_width_with_the_last_closed() {
        assert_eq!(ece_bin(0.0), 0);
        assert_eq!(ece_bin(0.06), 0);
        assert_eq!(ece_bin(0.07), 1);
        assert_eq!(ece_bin(0.999), 14);
        assert_eq!(ece_bin(1.0), 14);
    }

    #[test]
    fn a_bad_batch_leaves_the_tally_as_it_was() {
        let mut tally = ExpertTally::new(2, Aggregate::Prob);
        tally.add_rows(&[0.9, 0.2], &[0]).unwrap();
        let before = tally.clone();
        assert!(tally.add_rows(&[0.9, 2.0], &[0]).is_err());
        assert!(tally.add_rows(&[0.9, 0.2], &[2]).unwrap_err().to_string().contains("label 2"));
        assert!(tally.add_rows(&[0.9], &[0]).is_err());
        assert_eq!(tally, before);
    }

    #[test]
    fn groups_pool_their_corruptions_and_severities() {
        let mut counts = DiagnosticCounts::new(vec!["a".into(), "b".into()], Some(Aggregate::Prob));
        let scores = |rows: &[[f32; 2]]| Tensor::from_vec(&[rows.len(), 2], rows.concat());
        // Dyadic values, so the means are exact.
        counts.add_clean(&scores(&[[0.875, 0.125], [0.25, 0.75]]), &[0, 1]).unwrap();
        // Noise: two corruptions, fog (weather) one.
        let gaussian = scores(&[[0.875, 0.125], [0.75, 0.25]]);
        counts.add_corrupted(Corruption::GaussianNoise, 1, &gaussian, &[0, 1]).unwrap();
        counts
            .add_corrupted(Corruption::ShotNoise, 5, &scores(&[[0.125, 0.625], [0.375, 0.875]]), &[0, 1])
            .unwrap();
        counts.add_corrupted(Corruption::Fog, 1, &scores(&[[0.5, 0.5], [0.125, 0.25]]), &[0, 1]).unwrap();
        let d = counts.expert_diagnostics().unwrap();
        assert_eq!(d.per_group.keys().collect::<Vec<_>>(), ["Noise", "Weather"]);
        let noise = &d.per_group["Noise"];
        assert_eq!(noise.images, 4);
        // Expert a over noise: yes to both gaussian images (one its own), no to both shot ones.
        let a = &noise.experts[0];
        assert_eq!((a.true_positives, a.false_positives, a.true_negatives, a.false_negatives), (1, 1, 1, 1));
        assert_eq!(d.mean_probability_per_corruption["gaussian_noise"], [0.8125, 0.1875]);
        assert_eq!(d.mean_probability_per_corruption["fog"], [0.3125, 0.375]);
        let share = counts.predicted_class_share();
        assert_eq!(share["clean"], [0.5, 0.5]);
        assert_eq!(share["gaussian_noise"], [1.0, 0.0]);
        assert_eq!(share["fog"], [0.5, 0.5], "a tie goes to the lower class");
        d.validate().unwrap();
        // A model without experts counts predictions only.
        let mut plain = DiagnosticCounts::new(vec!["a".into(), "b".into()], None);
        plain.add_clean(&scores(&[[3.0, -1.0]]), &[1]).unwrap();
        assert!(plain.expert_diagnostics().is_none());
        assert_eq!(plain.predicted_class_share()["clean"], [1.0, 0.0]);
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let mut tally = ExpertTally::new(2, Aggregate::LogOdds);
        tally.add_rows(&[1.0, -1.0, -2.0, 3.0], &[0, 1]).unwrap();
        let good = ExpertDiagnostics::clean_only(vec!["a".into(), "b".into()], &tally);
        good.validate().unwrap();
        let err = |d: ExpertDiagnostics| d.validate().unwrap_err().to_string();
        let mut d = good.clone();
        d.clean.experts[1].tpr = Some(1.5);
        assert!(err(d).contains("fractions between 0 and 1"));
        let mut d = good.clone();
        d.clean.experts.pop();
        assert!(err(d).contains("1 experts for 2 classes"));
        let mut d = good.clone();
        d.clean.images = 3;
        assert!(err(d).contains("do not add up"));
        let mut d = good.clone();
        d.per_group.insert("Rain".into(), good.clean.clone());
        assert!(err(d).contains("Rain"));
        let mut d = good.clone();
        d.mean_probability_per_corruption.insert("clean".into(), vec![0.5, 0.5]);
        assert!(err(d).contains("not one of the 19 corruptions"));
        let mut d = good;
        d.mean_probability_per_corruption.insert("fog".into(), vec![0.5]);
        assert!(err(d).contains("1 values for 2 classes"));
    }
}
