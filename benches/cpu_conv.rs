//! `cargo bench --bench cpu_conv`: the CPU convolution algorithms side by side on the 3x3,
//! stride-1 layers of both models (batch 64), in all three directions: the direct kernels,
//! Winograd F(2x2, 3x3) and unfolding + GEMM, each the fastest of 12 calls taken in turn (so a
//! noisy machine slows every algorithm alike), weights packed or transformed inside the timing
//! as in a training step, and the algorithm `conv::cpu_conv` chooses.
//! `cargo bench --bench cpu_conv -- B H C O G` measures one shape instead: batch, image size,
//! input and output channels, groups.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use mocse::ops::conv::{Conv2dParams, ConvGeometry, CpuConv, Direction, cpu_conv};

// As in the mocse binary: keep freed tensor pages mapped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALGORITHMS: [CpuConv; 3] = [CpuConv::Direct, CpuConv::Winograd, CpuConv::Gemm];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let shapes: Vec<(String, [usize; 5])> = if args.is_empty() {
        vec![
            ("PreAct-18 w16 layer1".into(), [64, 32, 16, 16, 1]),
            ("PreAct-18 w16 layer2".into(), [64, 16, 32, 32, 1]),
            ("PreAct-18 w64 layer1".into(), [64, 32, 64, 64, 1]),
            ("PreAct-18 w64 layer2".into(), [64, 16, 128, 128, 1]),
            ("PreAct-18 w64 layer3".into(), [64, 8, 256, 256, 1]),
            ("PreAct-18 w64 layer4".into(), [64, 4, 512, 512, 1]),
            ("MoCSE layer1".into(), [64, 32, 160, 160, 10]),
            ("MoCSE layer2".into(), [64, 16, 320, 320, 10]),
            ("MoCSE layer3".into(), [64, 8, 640, 640, 10]),
            ("MoCSE layer4".into(), [64, 4, 1280, 1280, 10]),
        ]
    } else {
        let v: Vec<usize> = args
            .iter()
            .map(|a| a.parse().with_context(|| format!("not a size: {a:?} (expected B H C O G)")))
            .collect::<Result<_>>()?;
        let [b, h, c, o, g] = v[..] else { bail!("expected five sizes B H C O G, got {}", v.len()) };
        vec![(format!("{b}x{h}x{h}x{c} -> {o}, {g} groups"), [b, h, c, o, g])]
    };
    println!(
        "{:<28} {:<15} {:>14} {:>14} {:>14}  chosen   (ms, fastest of 12; GFLOP/s as direct FLOPs)",
        "layer", "direction", "direct", "winograd", "gemm"
    );
    for (name, [b, h, c, o, groups]) in shapes {
        let p = Conv2dParams { stride: 1, padding: 1, groups };
        let (xs, ws) = ([b, h, h, c], [o, c / groups, 3, 3]);
        let g = ConvGeometry::new(&xs, &ws, p)?;
        let flops = 2.0 * (b * h * h * o * (c / groups) * 9) as f64;
        let x: Vec<f32> = (0..xs.iter().product()).map(|i: usize| (i % 97) as f32 / 97.0).collect();
        let w: Vec<f32> = (0..ws.iter().product()).map(|i: usize| (i % 89) as f32 / 89.0 - 0.5).collect();
        let dy = CpuConv::Direct.run(Direction::Forward, &x, &w, &g);
        for (direction, label) in [
            (Direction::Forward, "forward"),
            (Direction::BackwardData, "backward data"),
            (Direction::BackwardWeight, "weight gradient"),
        ] {
            let (a, b) = match direction {
                Direction::Forward => (&x, &w),
                Direction::BackwardData => (&dy, &w),
                Direction::BackwardWeight => (&x, &dy),
            };
            let mut best = [f64::MAX; 3];
            for _ in 0..12 {
                for (k, algorithm) in ALGORITHMS.iter().enumerate() {
                    let start = Instant::now();
                    drop(std::hint::black_box(algorithm.run(direction, a, b, &g)));
                    best[k] = best[k].min(start.elapsed().as_secs_f64());
                }
            }
            let cell = |s: f64| format!("{:.2} ({:.0})", s * 1e3, flops / s / 1e9);
            println!(
                "{name:<28} {label:<15} {:>14} {:>14} {:>14}  {:?}",
                cell(best[0]),
                cell(best[1]),
                cell(best[2]),
                cpu_conv(&g, direction)
            );
        }
    }
    Ok(())
}
