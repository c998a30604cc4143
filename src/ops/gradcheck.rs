//! Test helper: checks an op's backward against central finite differences.
//!
//! The scalar under test is L = sum(f(inputs) * R) for a fixed random R. Its analytic gradient
//! comes from the tape; the reference is (L(x + h v) - L(x - h v)) / 2h along random directions
//! v, with L summed in f64 so that the f32 forward pass is the only source of rounding.

use anyhow::Result;

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

/// Deterministic test numbers in [-1, 1) (splitmix64), independent of the project's RNG.
pub fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn random_tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(shape, random_values(shape.iter().product(), seed))
}

/// Values whose magnitude is at least 0.2, so a finite difference never crosses a kink at 0.
pub fn random_tensor_away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let v = random_values(shape.iter().product(), seed)
        .into_iter()
        .map(|x| x.signum() * (0.2 + 0.8 * x.abs()))
        .collect();
    Tensor::from_vec(shape, v)
}

fn weighted_sum(y: &Tensor, r: &[f32]) -> f64 {
    y.as_slice().iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Checks d/dx_i sum(f(x) * R) for every input i along three random directions.
pub fn check_gradients(inputs: &[Tensor], f: impl Fn(&Tape, &[Var]) -> Result<Var>) {
    check_gradients_with(inputs, 1e-2, 3e-3, f)
}

pub fn check_gradients_with(
    inputs: &[Tensor],
    h: f64,
    tolerance: f64,
    f: impl Fn(&Tape, &[Var]) -> Result<Var>,
) {
    let tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone(), true)).collect();
    let y = f(&tape, &vars).expect("forward");
    let r = random_values(y.value().len(), 99);
    let r_tensor = Tensor::from_vec(y.shape(), r.clone());
    let loss = tape
        .record(
            Tensor::scalar(weighted_sum(y.value(), &r) as f32),
            &[&y],
            Box::new(move |g, _| {
                let s = g.item();
                let d = r_tensor.as_slice().iter().map(|v| v * s).collect();
                Ok(vec![Some(Tensor::from_vec(r_tensor.shape(), d))])
            }),
        )
        .clone();
    let grads = tape.backward(&loss).expect("backward");

    let eval = |xs: &[Tensor]| -> f64 {
        let t = Tape::no_grad();
        let vs: Vec<Var> = xs.iter().map(|x| t.leaf(x.clone(), false)).collect();
        weighted_sum(f(&t, &vs).expect("forward").value(), &r)
    };
    for (i, input) in inputs.iter().enumerate() {
        let analytic = grads.get(&vars[i]).unwrap_or_else(|| panic!("input {i} got no gradient")).clone();
        assert_eq!(analytic.shape(), input.shape(), "gradient shape of input {i}");
        for direction in 0..3u64 {
            let v = random_values(input.len(), 1000 + 17 * i as u64 + direction);
            let shifted = |sign: f64| {
                let mut xs = inputs.to_vec();
                let data = input
                    .as_slice()
                    .iter()
                    .zip(&v)
                    .map(|(x, d)| (*x as f64 + sign * h * *d as f64) as f32)
                    .collect();
                xs[i] = Tensor::from_vec(input.shape(), data);
                xs
            };
            let numeric = (eval(&shifted(1.0)) - eval(&shifted(-1.0))) / (2.0 * h);
            let exact: f64 = analytic.as_slice().iter().zip(&v).map(|(g, d)| *g as f64 * *d as f64).sum();
            let scale = numeric.abs().max(exact.abs()).max(1e-2);
            assert!(
                (numeric - exact).abs() / scale < tolerance,
                "input {i} direction {direction}: finite difference {numeric}, backward {exact}"
            );
        }
    }
}
