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
        jsd: None,
        epochs: 4,
        batch_size: 64,
        lr: 0.05,
        sgd: SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        schedule: Schedule::Cosine,
        seed: 1,
        save_every: None,
        mode: Default::default(),
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

/// Training `trainer` on at an infinite learning rate stops with a clear error that names the
/// last good checkpoint (of epoch `last_good`), and leaves that checkpoint as it was.
fn diverges_keeping_the_checkpoint(trainer: &mut Trainer, run: &std::path::Path, last_good: usize) {
    let saved = std::fs::read(run.join(mocse::checkpoint::MODEL_FILE)).unwrap();
    trainer.config.lr = f32::INFINITY;
    let err = format!("{:#}", trainer.run(None, false).unwrap_err());
    assert!(err.contains("infinite or NaN") || err.contains("the loss became"), "{err}");
    assert!(err.contains(&format!("last good checkpoint (epoch {last_good})")), "{err}");
    assert_eq!(std::fs::read(run.join(mocse::checkpoint::MODEL_FILE)).unwrap(), saved);
}

/// A loss that becomes NaN or infinite stops training with a clear error; the checkpoint of the
/// last good epoch stays as it was.
#[test]
fn diverging_loss_stops_and_keeps_the_last_good_checkpoint() {
    let config = TrainConfig {
        model: ModelConfig {
            kind: ModelKind::Mocse,
            num_classes: 10,
            width: 2,
            aggregate: Aggregate::LogOdds,
            bce_weight: 1.0,
        },
        data: "synthetic".into(),
        train_subset: Some(64),
        test_subset: Some(32),
        augment: "none".into(),
        jsd: None,
        epochs: 3,
        batch_size: 32,
        lr: 0.01,
        sgd: SgdConfig { momentum: 0.9, weight_decay: 0.0, nesterov: false },
        schedule: Schedule::Cosine,
        seed: 3,
        save_every: None,
        mode: Default::default(),
        created_by: String::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut trainer = Trainer::create(config, &run, Device::Cpu).unwrap();
    trainer.run(Some(1), false).unwrap();
    diverges_keeping_the_checkpoint(&mut trainer, &run, 1);
    assert_eq!(mocse::train::read_log(&run).unwrap().len(), 1);
}

/// On every device: a NaN loss is an error and changes nothing (on a kernel device the update is
/// refused there, from the flag the step reads back at its end).
#[test]
fn nan_loss_is_an_error_and_changes_nothing() {
    let config = ModelConfig {
        kind: ModelKind::Preact18,
        num_classes: 10,
        width: 2,
        aggregate: Aggregate::Prob,
        bce_weight: 1.0,
    };
    let model = mocse::nn::model::Model::new(config);
    for device in [Device::Cpu, Device::Emu] {
        let mut weights = model.fused().init_weights(0, [0.5; 3], [0.25; 3]).to_device(device).unwrap();
        let mut velocity: Vec<_> = weights
            .params
            .iter()
            .map(|p| mocse::tensor::Tensor::full(p.shape(), 0.25).to_device(device).unwrap())
            .collect();
        let host = |ts: &[mocse::tensor::Tensor]| -> Vec<Vec<f32>> {
            ts.iter().map(|t| t.to_host().unwrap()).collect()
        };
        let before = [host(&weights.params), host(&weights.buffers), host(&velocity)];
        let mut images = vec![0.5f32; 2 * 32 * 32 * 3];
        images[7] = f32::NAN;
        let sgd = SgdConfig { momentum: 0.9, weight_decay: 0.0, nesterov: false };
        let batch = mocse::train::TrainBatch::new(device, images, &[1, 2]).unwrap();
        let standard = mocse::train::TrainingMode::Standard;
        let err =
            mocse::train::train_step(&model, &mut weights, &mut velocity, &batch, 0.1, &sgd, &standard, 0)
                .unwrap_err()
                .to_string();
        assert!(err.contains("the loss became NaN"), "{device}: {err}");
        let after = [host(&weights.params), host(&weights.buffers), host(&velocity)];
        assert_eq!(before, after, "{device}");
    }
}

/// On a kernel device (the emulator) full batches replay a graph of the step and the last,
/// smaller one runs `train_step`: the same log, bit for bit, and the same checkpoint as every
/// step run by `train_step` (`step_graphs` off), over two epochs with a changing learning rate.
/// Then a diverging learning rate stops the graph's run with `train_step`'s error, keeping the
/// last good checkpoint.
#[test]
fn graph_replayed_steps_train_as_train_step_does() {
    graph_replayed_steps_train_as_train_step_does_on(Device::Emu);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
fn graph_replayed_steps_train_as_train_step_does_on_cuda() {
    graph_replayed_steps_train_as_train_step_does_on(Device::Cuda);
}

fn graph_replayed_steps_train_as_train_step_does_on(device: Device) {
    let config = TrainConfig {
        model: ModelConfig {
            kind: ModelKind::Mocse,
            num_classes: 10,
            width: 2,
            aggregate: Aggregate::Prob,
            bce_weight: 1.0,
        },
        data: "synthetic".into(),
        train_subset: Some(40),
        test_subset: Some(16),
        augment: "standard".into(),
        jsd: None,
        epochs: 3,
        batch_size: 16,
        lr: 0.05,
        sgd: SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        schedule: Schedule::Cosine,
        seed: 2,
        save_every: None,
        mode: Default::default(),
        created_by: String::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = Vec::new();
    for graphs in [true, false] {
        let run = dir.path().join(format!("graphs-{graphs}"));
        let mut trainer = Trainer::create(config.clone(), &run, device).unwrap();
        trainer.step_graphs = graphs;
        let logs = trainer.run(Some(2), false).unwrap();
        assert_eq!(trainer.replays_step_graph(), graphs, "whether the steps replayed a graph");
        let lines: Vec<_> =
            logs.iter().map(|l| (l.train_loss.to_bits(), l.train_accuracy, l.test_accuracy)).collect();
        outcomes.push((lines, std::fs::read(run.join(mocse::checkpoint::MODEL_FILE)).unwrap()));
        if graphs {
            diverges_keeping_the_checkpoint(&mut trainer, &run, 2);
        }
    }
    assert_eq!(outcomes[0].0, outcomes[1].0, "the epochs' logs");
    assert!(outcomes[0].1 == outcomes[1].1, "the checkpoints differ");
}
