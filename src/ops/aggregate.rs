//! The MoCSE aggregator (no parameters): expert n's (False, True) logits [B, N, 2] become the
//! class score of class n, [B, N]. `Prob` gives p_n = softmax(l_n)[True] = sigmoid(l_True -
//! l_False), the paper's wording; `LogOdds` gives l_True - l_False, the logit of p_n.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, LaunchConfig, int};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Prob,
    LogOdds,
}

impl FromStr for Aggregate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prob" => Ok(Aggregate::Prob),
            "logodds" => Ok(Aggregate::LogOdds),
            _ => Err(format!("unknown aggregate '{s}'; expected prob or logodds")),
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Aggregate::Prob => "prob",
            Aggregate::LogOdds => "logodds",
        })
    }
}

impl Aggregate {
    fn kernel_mode(self) -> i32 {
        match self {
            Aggregate::Prob => 0,
            Aggregate::LogOdds => 1,
        }
    }
}

pub fn aggregate_forward(logits: &Tensor, mode: Aggregate) -> Result<Tensor> {
    let s = logits.shape();
    match logits.device() {
        Device::Cpu => {
            let scores = logits
                .as_slice()
                .chunks_exact(2)
                .map(|p| {
                    let z = p[1] - p[0];
                    match mode {
                        Aggregate::Prob => 1.0 / (1.0 + (-z).exp()),
                        Aggregate::LogOdds => z,
                    }
                })
                .collect();
            Ok(Tensor::from_vec(&s[..2], scores))
        }
        d => {
            let y = Tensor::output_on(d, &s[..2])?;
            let args = [y.arg(), logits.arg(), int(y.len()), mode.kernel_mode().into()];
            gpu::launch(d, "aggregate_fwd_f32", LaunchConfig::for_elements(y.len()), &args)?;
            Ok(y)
        }
    }
}

pub fn aggregate_backward(dscores: &Tensor, scores: &Tensor, mode: Aggregate) -> Result<Tensor> {
    let shape = [scores.shape()[0], scores.shape()[1], 2];
    match scores.device() {
        Device::Cpu => {
            let mut d = vec![0.0f32; scores.len() * 2];
            for (i, (gv, sv)) in dscores.as_slice().iter().zip(scores.as_slice()).enumerate() {
                let dz = match mode {
                    Aggregate::Prob => gv * sv * (1.0 - sv),
                    Aggregate::LogOdds => *gv,
                };
                d[2 * i + 1] = dz;
                d[2 * i] = -dz;
            }
            Ok(Tensor::from_vec(&shape, d))
        }
        d => {
            let dl = Tensor::output_on(d, &shape)?;
            let args = [dl.arg(), dscores.arg(), scores.arg(), int(scores.len()), mode.kernel_mode().into()];
            gpu::launch(d, "aggregate_bwd_f32", LaunchConfig::for_elements(scores.len()), &args)?;
            Ok(dl)
        }
    }
}

impl Tape {
    pub fn aggregate(&self, logits: &Var, mode: Aggregate) -> Result<Var> {
        let s = logits.shape();
        ensure!(s.len() == 3 && s[2] == 2, "aggregate needs [B, N, 2] logits, got {s:?}");
        let y = aggregate_forward(logits.value(), mode)?;
        let saved = y.clone();
        Ok(self.record(
            y,
            &[logits],
            Box::new(move |g, _| Ok(vec![Some(aggregate_backward(g, &saved, mode)?)])),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_tensor};

    #[test]
    fn values_and_gradients() {
        let t = Tape::no_grad();
        let l = t.leaf(Tensor::from_vec(&[1, 2, 2], vec![0.0, 0.0, 1.0, 3.0]), false);
        let p = t.aggregate(&l, Aggregate::Prob).unwrap();
        assert!((p.value().as_slice()[0] - 0.5).abs() < 1e-7);
        assert!((p.value().as_slice()[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
        let z = t.aggregate(&l, Aggregate::LogOdds).unwrap();
        assert_eq!(z.value().as_slice(), &[0.0, 2.0]);
        for mode in [Aggregate::Prob, Aggregate::LogOdds] {
            let x = random_tensor(&[3, 5, 2], 1);
            check_gradients(&[x], |t, v| t.aggregate(&v[0], mode));
        }
    }
}
