//! `cargo bench`: training and inference images/s of the three reference configurations on
//! the CPU device (the same measurement as `mocse bench --what train-step`).

use mocse::bench::bench_train_step;
use mocse::device::Device;
use mocse::nn::model::{ModelConfig, ModelKind};
use mocse::ops::aggregate::Aggregate;

// As in the mocse binary: keep freed tensor pages mapped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let configs = [
        ("preact18 --width 16", ModelKind::Preact18, 16, true, 128),
        ("preact18 --width 64", ModelKind::Preact18, 64, true, 64),
        ("mocse --expert-width 16", ModelKind::Mocse, 16, true, 64),
        ("mocse --expert-width 16 (unfused)", ModelKind::Mocse, 16, false, 64),
    ];
    println!(
        "{:<36} {:>6} {:>14} {:>14} {:>12}",
        "config", "batch", "train img/s", "infer img/s", "train GFLOP/s"
    );
    for (name, kind, width, fused, batch) in configs {
        let config =
            ModelConfig { kind, num_classes: 10, width, aggregate: Aggregate::Prob, bce_weight: 1.0 };
        let r = bench_train_step(config, fused, batch, Device::Cpu, 1, 3)?;
        println!(
            "{name:<36} {batch:>6} {:>14.1} {:>14.1} {:>12.1}",
            r.train_images_per_s, r.infer_images_per_s, r.train_gflop_per_s
        );
    }
    Ok(())
}
