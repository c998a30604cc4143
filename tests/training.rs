//! Both models learn: a few epochs on the built-in synthetic set take test accuracy far above
//! chance (10%). Sizes are small enough for CI; the accuracies reached are printed.

use mocse::device::Device;
use mocse::nn::model::{ModelConfig, ModelKind};
use mocse::ops::aggregate::Aggregate;
use mocse::ops::sgd::SgdConfig;
use mocse::train::{Schedule, TrainConfig, Trainer};

fn train(kind: ModelKind, width: usize, aggregate: Aggregate) -> f64 {
    let config = TrainConfig {
        model: ModelConfig { kind, num_classes: 10, width, aggregate, bce_weight: 1.0 },
        data: "synthetic".into(),
        train_subset: Some(3000),
        test_subset: Some(1000),
        augment: "standard".into(),
        epochs: 4,
        batch_size: 64,
        lr: 0.05,
        sgd: SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        schedule: Schedule::Cosine,
        seed: 1,
        created_by: String::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::create(config, &dir.path().join("run"), Device::Cpu).unwrap();
    let logs = trainer.run(None, false).unwrap();
    for l in &logs {
        println!(
            "{kind} width {width} {aggregate}: epoch {} loss {:.4} train {:.1}% test {:.1}%",
            l.epoch,
            l.train_loss,
            100.0 * l.train_accuracy,
            100.0 * l.test_accuracy
        );
    }
    assert!(logs[3].train_loss < logs[0].train_loss, "the training loss did not fall");
    logs[3].test_accuracy
}

#[test]
fn standard_network_learns_the_synthetic_set() {
    let acc = train(ModelKind::Preact18, 8, Aggregate::Prob);
    assert!(acc > 0.35, "test accuracy {acc}");
}

#[test]
fn mocse_learns_the_synthetic_set() {
    let acc = train(ModelKind::Mocse, 4, Aggregate::Prob);
    assert!(acc > 0.35, "test accuracy {acc}");
}

#[test]
fn mocse_with_log_odds_learns_the_synthetic_set() {
    let acc = train(ModelKind::Mocse, 4, Aggregate::LogOdds);
    assert!(acc > 0.35, "test accuracy {acc}");
}
