//! MoCSE's experts as binary classifiers, the predicted classes per corruption and the
//! evaluation's figures: a hand-made case with known answers for both aggregates, and a tiny
//! MoCSE and a tiny PreAct ResNet-18 evaluated, drawn and compared through the command line.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{assert_clean_failure, mocse};
use mocse::corrupt::Corruption;
use mocse::diagnostics::{DiagnosticCounts, ExpertStats, ExpertTally};
use mocse::ops::aggregate::Aggregate;
use mocse::tensor::Tensor;

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-8, "{what}: {a} != {b}");
}

/// (TP, FP, TN, FN) of an expert.
fn outcomes(e: &ExpertStats) -> (usize, usize, usize, usize) {
    (e.true_positives, e.false_positives, e.true_negatives, e.false_negatives)
}

#[test]
fn hand_made_probabilities_give_the_known_rates_and_calibration() {
    // Three classes, four images; expert n's column is p_n. Every value is dyadic, so the sums
    // are exact.
    #[rustfmt::skip]
    let scores = [
        0.875, 0.25,    0.0625,  // label 0
        0.375, 0.78125, 0.03125, // label 0
        0.5625, 0.75,   0.25,    // label 1
        0.125, 0.5,     0.9375,  // label 2
    ];
    let labels = [0, 0, 1, 2];
    let mut tally = ExpertTally::new(3, Aggregate::Prob);
    tally.add(&Tensor::from_vec(&[4, 3], scores.to_vec()), &labels).unwrap();
    let r = tally.report();
    assert_eq!(r.images, 4);
    let [e0, e1, e2] = [&r.experts[0], &r.experts[1], &r.experts[2]];

    // Expert 0 says yes to 0.875 (its class: TP) and 0.5625 (class 1: FP), no to 0.375 (its
    // class: FN) and 0.125 (TN).
    assert_eq!(outcomes(e0), (1, 1, 1, 1));
    assert_eq!((e0.binary_accuracy, e0.tpr, e0.fpr), (0.5, Some(0.5), Some(0.5)));
    // Expert 1: 0.78125 on an image of class 0 is a false yes; 0.5 is no (not above 0.5).
    assert_eq!(outcomes(e1), (1, 1, 2, 0));
    assert_eq!((e1.binary_accuracy, e1.tpr, e1.fpr), (0.75, Some(1.0), Some(0.33333333)));
    assert_eq!(outcomes(e2), (1, 0, 3, 0));
    assert_eq!((e2.binary_accuracy, e2.tpr, e2.fpr), (1.0, Some(1.0), Some(0.0)));

    // ECE by hand, bins of width 1/15. Expert 0: each p alone in its bin (13, 5, 8, 1):
    // (|0.875 - 1| + |0.375 - 1| + 0.5625 + 0.125) / 4.
    close(e0.ece, (0.125 + 0.625 + 0.5625 + 0.125) / 4.0, "ECE of expert 0");
    // Expert 1: 0.78125 (class 0) and 0.75 (class 1) share bin 11: mean p 0.765625 against a
    // fraction 1/2 of its class, weighted 2/4; 0.25 (bin 3) and 0.5 (bin 7) alone.
    close(e1.ece, 0.25 / 4.0 + (0.765625 - 0.5) * 2.0 / 4.0 + 0.5 / 4.0, "ECE of expert 1");
    // Expert 2: 0.0625 and 0.03125 share bin 0 (no positive), 0.25 bin 3, 0.9375 (its class) bin 14.
    close(e2.ece, (0.09375 + 0.25 + 0.0625) / 4.0, "ECE of expert 2");
    close(e1.mean_probability, (0.25 + 0.78125 + 0.75 + 0.5) / 4.0, "mean p of expert 1");

    // Counted in two batches, the tally is the same.
    let mut split = ExpertTally::new(3, Aggregate::Prob);
    split.add_rows(&scores[..3], &labels[..1]).unwrap();
    split.add_rows(&scores[3..], &labels[1..]).unwrap();
    assert_eq!(split, tally);
}

#[test]
fn hand_made_log_odds_are_judged_by_their_sign_and_calibrated_through_the_sigmoid() {
    #[rustfmt::skip]
    let scores = [
        2.0, -1.0,  // label 0
        0.5, 0.0,   // label 1: expert 1's log-odds 0 is p = 0.5, a no
        -3.0, 4.0,  // label 1
    ];
    let mut tally = ExpertTally::new(2, Aggregate::LogOdds);
    tally.add(&Tensor::from_vec(&[3, 2], scores.to_vec()), &[0, 1, 1]).unwrap();
    let r = tally.report();
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let (e0, e1) = (&r.experts[0], &r.experts[1]);
    assert_eq!(outcomes(e0), (1, 1, 1, 0));
    assert_eq!((e0.tpr, e0.fpr), (Some(1.0), Some(0.5)));
    close(e0.binary_accuracy, 2.0 / 3.0, "binary accuracy of expert 0");
    assert_eq!(outcomes(e1), (1, 0, 1, 1));
    assert_eq!((e1.tpr, e1.fpr), (Some(0.5), Some(0.0)));
    // Every p in a bin of its own: sigmoid(2) in 13, sigmoid(0.5) in 9, sigmoid(-3) in 0;
    // sigmoid(-1) in 4, 0.5 in 7, sigmoid(4) in 14.
    let ece0 = ((sigmoid(2.0) - 1.0).abs() + sigmoid(0.5) + sigmoid(-3.0)) / 3.0;
    let ece1 = (sigmoid(-1.0) + 0.5 + (1.0 - sigmoid(4.0))) / 3.0;
    close(e0.ece, ece0, "ECE of expert 0");
    close(e1.ece, ece1, "ECE of expert 1");
    close(e1.mean_probability, (sigmoid(-1.0) + 0.5 + sigmoid(4.0)) / 3.0, "mean p of expert 1");
    // A score that is not a probability under prob is refused, not counted.
    let mut prob = ExpertTally::new(2, Aggregate::Prob);
    let err = prob.add(&Tensor::from_vec(&[3, 2], scores.to_vec()), &[0, 1, 1]).unwrap_err();
    assert!(err.to_string().contains("probabilities in [0, 1]"), "{err}");
    assert_eq!(prob.images(), 0);
}

#[test]
fn predicted_class_shares_sum_to_one() {
    let classes: Vec<String> = (0..10).map(|k| format!("c{k}")).collect();
    let mut counts = DiagnosticCounts::new(classes, None);
    // Pseudo-random logits, 37 images per condition, in batches of 5.
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32 * 8.0 - 4.0
    };
    let labels: Vec<u32> = (0..37).map(|i| i % 10).collect();
    for first in (0..37).step_by(5) {
        let batch = &labels[first..(first + 5).min(37)];
        let scores: Vec<f32> = (0..batch.len() * 10).map(|_| next()).collect();
        counts.add_clean(&Tensor::from_vec(&[batch.len(), 10], scores), batch).unwrap();
        for (c, s) in [(Corruption::Fog, 1), (Corruption::Fog, 3), (Corruption::Contrast, 2)] {
            let scores: Vec<f32> = (0..batch.len() * 10).map(|_| next()).collect();
            counts.add_corrupted(c, s, &Tensor::from_vec(&[batch.len(), 10], scores), batch).unwrap();
        }
    }
    let shares = counts.predicted_class_share();
    assert_eq!(shares.keys().collect::<Vec<_>>(), ["clean", "contrast", "fog"]);
    for (condition, share) in &shares {
        let sum: f64 = share.iter().sum();
        assert!((sum - 1.0).abs() < 1e-7, "{condition}: the shares sum to {sum}");
        assert!(share.iter().all(|s| (0.0..=1.0).contains(s)));
    }
    assert_eq!(counts.clean.images(), 37);
    assert_eq!(counts.corrupted.values().map(|t| t.images()).sum::<u64>(), 3 * 37);
    assert!(counts.expert_diagnostics().is_none(), "no experts without MoCSE");
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Width and height of a PNG file, decoded in full.
fn png_size(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(buf.chunks_exact(3).any(|p| p[0] < 100), "{}: nothing drawn", path.display());
    (info.width, info.height)
}

/// Per condition ("clean", "gaussian_noise_s1", ...), the label and class scores of every image
/// in a `--predictions` CSV.
fn predictions(path: &Path) -> BTreeMap<String, Vec<(usize, Vec<f32>)>> {
    let mut out: BTreeMap<String, Vec<(usize, Vec<f32>)>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let condition = if f[1] == "clean" { "clean".to_string() } else { format!("{}_s{}", f[1], f[2]) };
        let scores = f[5..].iter().map(|v| v.parse().unwrap()).collect();
        out.entry(condition).or_default().push((f[3].parse().unwrap(), scores));
    }
    out
}

/// An expert's numbers recounted from the images' scores (prob aggregate: the score is p_n).
fn recount(images: &[&(usize, Vec<f32>)], expert: usize) -> [f64; 5] {
    let (mut tp, mut fp, mut tn, mut fn_) = (0.0, 0.0, 0.0, 0.0);
    let mut bins = [(0.0f64, 0.0f64); 15];
    for (label, scores) in images {
        let p = f64::from(scores[expert]);
        let own = *label == expert;
        match (p > 0.5, own) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, false) => tn += 1.0,
            (false, true) => fn_ += 1.0,
        }
        let b = ((p * 15.0).floor() as usize).min(14);
        bins[b].0 += p;
        bins[b].1 += f64::from(u8::from(own));
    }
    let n = images.len() as f64;
    let ece = bins.iter().map(|(p, pos)| (p - pos).abs()).sum::<f64>() / n;
    [tp, fp, tn, fn_, ece]
}

/// A condition's expert report against the numbers recounted from its images' scores.
fn check_experts(report: &serde_json::Value, images: &[&(usize, Vec<f32>)]) {
    assert_eq!(report["images"].as_u64().unwrap() as usize, images.len());
    for n in 0..10 {
        let e = &report["experts"][n];
        let [tp, fp, tn, fn_, ece] = recount(images, n);
        let counted = ["true_positives", "false_positives", "true_negatives", "false_negatives"]
            .map(|k| e[k].as_f64().unwrap());
        assert_eq!(counted, [tp, fp, tn, fn_], "expert {n}: {report}");
        close(e["binary_accuracy"].as_f64().unwrap(), (tp + tn) / images.len() as f64, "binary accuracy");
        if tp + fn_ > 0.0 {
            close(e["tpr"].as_f64().unwrap(), tp / (tp + fn_), "TPR");
        } else {
            assert!(e["tpr"].is_null());
        }
        close(e["fpr"].as_f64().unwrap(), fp / (fp + tn), "FPR");
        assert!((e["ece"].as_f64().unwrap() - ece).abs() < 1e-7, "ECE of expert {n}: {e} vs {ece}");
    }
}

#[test]
fn a_tiny_mocse_and_preact_are_evaluated_drawn_and_compared() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let train = common::tiny_run(&p("mocse"), "1", &[]);
    assert!(train.ok, "{}", train.stderr);
    #[rustfmt::skip]
    let preact = mocse(&[
        "train", "--model", "preact18", "--width", "2", "--train-subset", "96", "--test-subset", "40",
        "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--out", &p("preact"),
    ]);
    assert!(preact.ok, "{}", preact.stderr);
    let eval = |run: &str, extra: &[&str]| {
        #[rustfmt::skip]
        let mut args = vec![
            "eval", "--run", run, "--device", "cpu", "--test-subset", "40", "--batch-size", "16",
            "--corruptions", "gaussian_noise,fog", "--severities", "1,5",
        ];
        args.extend_from_slice(extra);
        let r = mocse(&args);
        assert!(r.ok, "{}", r.stderr);
        r
    };
    #[rustfmt::skip]
    let r = eval(&p("mocse"), &[
        "--figures", &p("mocse-figures"), "--json", &p("mocse.json"), "--predictions", &p("mocse.csv"),
    ]);
    assert!(r.stdout.contains("## MoCSE experts as binary classifiers"), "{}", r.stdout);
    assert!(r.stdout.contains("## Predicted classes"), "{}", r.stdout);

    // The JSON's expert numbers, recounted from the scores of every image.
    let json = read_json(Path::new(&p("mocse.json")));
    let experts = &json["experts"];
    assert_eq!(experts["aggregate"], "prob");
    assert_eq!(experts["classes"].as_array().unwrap().len(), 10);
    let groups: Vec<&String> = experts["per_group"].as_object().unwrap().keys().collect();
    assert_eq!(groups, ["Noise", "Weather"]);
    let scores = predictions(Path::new(&p("mocse.csv")));
    let pooled = |conditions: &[&str]| -> Vec<&(usize, Vec<f32>)> {
        conditions.iter().flat_map(|c| scores[*c].iter()).collect()
    };
    check_experts(&experts["clean"], &pooled(&["clean"]));
    check_experts(&experts["per_group"]["Noise"], &pooled(&["gaussian_noise_s1", "gaussian_noise_s5"]));
    check_experts(&experts["per_group"]["Weather"], &pooled(&["fog_s1", "fog_s5"]));
    let means = &experts["mean_probability_per_corruption"];
    for (name, conditions) in
        [("gaussian_noise", ["gaussian_noise_s1", "gaussian_noise_s5"]), ("fog", ["fog_s1", "fog_s5"])]
    {
        let images = pooled(&conditions);
        for n in 0..10 {
            let mean = images.iter().map(|(_, s)| f64::from(s[n])).sum::<f64>() / images.len() as f64;
            assert!((means[name][n].as_f64().unwrap() - mean).abs() < 1e-7, "{name} expert {n}");
        }
    }
    // The predicted shares: one per class, summing to 1, the clean ones the confusion's columns.
    let shares = json["predicted_class_share"].as_object().unwrap();
    assert_eq!(shares.keys().collect::<Vec<_>>(), ["clean", "fog", "gaussian_noise"]);
    for share in shares.values() {
        let sum: f64 = share.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-7, "{share}");
    }
    let confusion = &json["per_class"]["confusion"];
    for k in 0..10 {
        let column: u64 = (0..10).map(|t| confusion[t][k].as_u64().unwrap()).sum();
        close(shares["clean"][k].as_f64().unwrap() * 40.0, column as f64, "clean share");
    }

    // The figures decode, a cell per class and condition.
    let figures = Path::new(&p("mocse-figures")).to_path_buf();
    let (w, h) = png_size(&figures.join("confusion.png"));
    assert!(w >= 10 * 24 && h >= 10 * 16 && w < 2000 && h < 2000, "confusion.png is {w} x {h}");
    let (w, h) = png_size(&figures.join("predicted_class.png"));
    assert!(w >= 10 * 24 && h >= 3 * 16 && w < 2000 && h < 1000, "predicted_class.png is {w} x {h}");
    let (w, h) = png_size(&figures.join("expert_scores.png"));
    assert!(w >= 10 * 24 && h >= 3 * 16 && w < 2000 && h < 1000, "expert_scores.png is {w} x {h}");

    // PreAct ResNet-18: predicted classes, but no experts and no expert figure.
    eval(&p("preact"), &["--figures", &p("preact-figures"), "--json", &p("preact.json")]);
    let json = read_json(Path::new(&p("preact.json")));
    assert!(json.get("experts").is_none(), "{json}");
    assert_eq!(json["predicted_class_share"].as_object().unwrap().len(), 3);
    let mut drawn: Vec<String> = std::fs::read_dir(p("preact-figures"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    drawn.sort();
    assert_eq!(drawn, ["confusion.png", "predicted_class.png"]);

    // compare: the main table, then the MoCSE column's experts, and the PreAct column named.
    let cmp = mocse(&[
        "compare",
        &p("preact.json"),
        &p("mocse.json"),
        "--labels",
        "preact,moe",
        "--out",
        &p("t.md"),
    ]);
    assert!(cmp.ok, "{}", cmp.stderr);
    let table = std::fs::read_to_string(p("t.md")).unwrap();
    assert!(table.contains("| natural samples |"), "{table}");
    assert!(table.contains("## MoCSE experts"), "{table}");
    assert!(table.contains("- preact (PreAct ResNet-18, width 2): not MoCSE"), "{table}");
    assert!(table.contains("| condition | measure | moe |"), "{table}");
    assert!(
        table.contains("| noise | binary accuracy |") && table.contains("| weather | binary accuracy |"),
        "{table}"
    );
    assert!(table.contains("|  | ECE |"), "{table}");
    assert!(table.contains("### moe: each expert"), "{table}");
    assert!(table.contains("| expert | clean | noise (1 of 4) | weather (1 of 4) |"), "{table}");

    // A report written before the diagnostics still reads, and says so in compare.
    let mut old = read_json(Path::new(&p("mocse.json")));
    let fields = old.as_object_mut().unwrap();
    fields.remove("experts");
    fields.remove("predicted_class_share");
    std::fs::write(p("old.json"), serde_json::to_string(&old).unwrap()).unwrap();
    let cmp = mocse(&["compare", &p("old.json"), &p("mocse.json"), "--labels", "old,new"]);
    assert!(cmp.ok, "{}", cmp.stderr);
    assert!(cmp.stdout.contains("- old (MoCSE"), "{}", cmp.stdout);
    assert!(cmp.stdout.contains("holds no expert diagnostics"), "{}", cmp.stdout);
    // And one whose experts do not add up is refused, naming the field.
    let mut bad = read_json(Path::new(&p("mocse.json")));
    bad["experts"]["per_group"]["Noise"]["experts"][3]["true_positives"] = serde_json::json!(1000);
    std::fs::write(p("bad.json"), serde_json::to_string(&bad).unwrap()).unwrap();
    assert_clean_failure(&mocse(&["compare", &p("bad.json")]), "experts.per_group.Noise");

    // Without corruptions: the clean experts in the report and the confusion matrix drawn.
    #[rustfmt::skip]
    let r = mocse(&[
        "eval", "--run", &p("mocse"), "--device", "cpu", "--test-subset", "40",
        "--json", &p("clean.json"), "--figures", &p("clean-figures"), "--predictions", &p("clean.csv"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("experts (mean over 10 on the clean images): binary accuracy"), "{}", r.stdout);
    let clean = read_json(Path::new(&p("clean.json")));
    let scores = predictions(Path::new(&p("clean.csv")));
    check_experts(&clean["experts"]["clean"], &scores["clean"].iter().collect::<Vec<_>>());
    assert!(clean["experts"].get("per_group").is_none());
    assert_eq!(std::fs::read_dir(p("clean-figures")).unwrap().count(), 1);
    png_size(&Path::new(&p("clean-figures")).join("confusion.png"));

    // --figures must be a directory, and the outputs are checked before any work.
    let model = format!("{}/model.safetensors", p("mocse"));
    let run = p("mocse");
    let refused = |figures: &str| mocse(&["eval", "--run", &run, "--device", "cpu", "--figures", figures]);
    assert_clean_failure(&refused(&model), "exists and is not a directory");
    assert_clean_failure(&refused(&p("missing/figures")), "does not exist");
    let existing = p("existing");
    std::fs::create_dir(&existing).unwrap();
    #[rustfmt::skip]
    let clash = mocse(&[
        "eval", "--run", &run, "--device", "cpu", "--figures", &existing,
        "--json", &format!("{existing}/confusion.png"),
    ]);
    assert_clean_failure(&clash, "name the same file");
}
