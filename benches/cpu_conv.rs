//! `cargo bench --bench cpu_conv`: the CPU convolution algorithms side by side on the layers of
//! both models (batch 64: the 3x3 stride-1 layers, the first, stride-2 convolution of each later
//! stage and its 1x1 shortcut), in all three directions: the direct kernels, Winograd F(2x2,
//! 3x3) and F(4x4, 3x3) and unfolding + GEMM wherever each applies, each the fastest of 12
//! calls taken in turn (so a noisy machine slows every algorithm alike), weights packed or
//! transformed inside the timing as in a training step, and the algorithm `conv::cpu_conv`
//! chooses.
//! `cargo bench --bench cpu_conv -- B H C O G [K S]` measures one shape instead: batch, image
//! size, input and output channels, groups, and the kernel size and stride (3 and 1 unless
//! given).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use mocse::ops::conv::{Conv2dParams, ConvGeometry, CpuConv, Direction, cpu_conv};
use mocse::ops::conv_winograd::Tile;

// As in the mocse binary: keep freed tensor pages mapped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALGORITHMS: [CpuConv; 4] =
    [CpuConv::Direct, CpuConv::Winograd(Tile::F2), CpuConv::Winograd(Tile::F4), CpuConv::Gemm];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let shapes: Vec<(String, [usize; 7])> = if args.is_empty() {
        let mut all = vec![
            ("PreAct-18 w16 layer1".to_string(), [64, 32, 16, 16, 1, 3, 1]),
            ("PreAct-18 w16 layer2".to_string(), [64, 16, 32, 32, 1, 3, 1]),
        ];
        for (model, c, groups) in [("PreAct-18 w64", 64, 1), ("MoCSE", 160, 10)] {
            for (stage, size) in [(1, 32), (2, 16), (3, 8), (4, 4)] {
                let (cin, cout) = (c << (stage - 1) >> 1, c << (stage - 1));
                if stage > 1 {
                    let before = 2 * size;
                    all.push((
                        format!("{model} layer{stage} in, 3x3/2"),
                        [64, before, cin, cout, groups, 3, 2],
                    ));
                    all.push((
                        format!("{model} layer{stage} in, 1x1/2"),
                        [64, before, cin, cout, groups, 1, 2],
                    ));
                }
                all.push((format!("{model} layer{stage}"), [64, size, cout, cout, groups, 3, 1]));
            }
        }
        all
    } else {
        let v: Vec<usize> = args
            .iter()
            .map(|a| a.parse().with_context(|| format!("not a size: {a:?} (expected B H C O G [K S])")))
            .collect::<Result<_>>()?;
        let (b, h, c, o, g, k, stride) = match v[..] {
            [b, h, c, o, g] => (b, h, c, o, g, 3, 1),
            [b, h, c, o, g, k, s] => (b, h, c, o, g, k, s),
            _ => bail!("expected the sizes B H C O G [K S], got {} numbers", v.len()),
        };
        vec![(format!("{b}x{h}x{h}x{c} -> {o}, {g} groups, {k}x{k}/{stride}"), [b, h, c, o, g, k, stride])]
    };
    println!(
        "{:<32} {:<15} {:>14} {:>14} {:>14} {:>14}  chosen   (ms, fastest of 12; GFLOP/s as direct FLOPs)",
        "layer", "direction", "direct", "winograd 2x2", "winograd 4x4", "gemm"
    );
    for (name, [b, h, c, o, groups, k, stride]) in shapes {
        let p = Conv2dParams { stride, padding: k / 2, groups };
        let (xs, ws) = ([b, h, h, c], [o, c / groups, k, k]);
        let g = ConvGeometry::new(&xs, &ws, p)?;
        let flops = 2.0 * (b * g.out_height * g.out_width * o * (c / groups) * k * k) as f64;
        let x: Vec<f32> = (0..xs.iter().product()).map(|i: usize| (i % 97) as f32 / 97.0).collect();
        let w: Vec<f32> = (0..ws.iter().product()).map(|i: usize| (i % 89) as f32 / 89.0 - 0.5).collect();
        let dy = CpuConv::Gemm.run(Direction::Forward, &x, &w, &g);
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
            let mut best = [f64::MAX; ALGORITHMS.len()];
            for _ in 0..12 {
                for (k, algorithm) in ALGORITHMS.iter().enumerate() {
                    if !algorithm.computes(direction, &g) {
                        continue;
                    }
                    let start = Instant::now();
                    drop(std::hint::black_box(algorithm.run(direction, a, b, &g)));
                    best[k] = best[k].min(start.elapsed().as_secs_f64());
                }
            }
            let cell = |s: f64| match s {
                f64::MAX => "-".to_string(),
                s => format!("{:.2} ({:.0})", s * 1e3, flops / s / 1e9),
            };
            println!(
                "{name:<32} {label:<15} {:>14} {:>14} {:>14} {:>14}  {:?}",
                cell(best[0]),
                cell(best[1]),
                cell(best[2]),
                cell(best[3]),
                cpu_conv(&g, direction)
            );
        }
    }
    Ok(())
}
