//! Adversarial attacks on a trained model, for robust evaluation and adversarial training.
//! Images are pixels in [0, 1] (the normalisation is inside the model); the attacked loss is
//! the model's own criterion on its class scores, sum-reduced over the batch. Attack steps
//! compute input gradients only: the weights enter the tape as constants, so no weight
//! gradient is ever formed.

pub mod apgd;
pub mod evaluate;
pub mod gradient;
pub mod outcome;
pub mod pgd;
pub mod step;

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

/// The norm of the threat model: the ball the perturbation stays in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Linf,
    L2,
}

impl FromStr for Norm {
    type Err = String;
    fn from_str(s: &str) -> Result<Norm, String> {
        match s {
            "linf" | "Linf" | "inf" => Ok(Norm::Linf),
            "l2" | "L2" => Ok(Norm::L2),
            _ => Err(format!("unknown norm '{s}'; expected linf or l2")),
        }
    }
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        })
    }
}

/// Batch norm while attacking: the running statistics (evaluation mode, the default for
/// evaluation) or the batch's own statistics (training mode, as in adversarial training).
/// The running statistics are never updated by an attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    Eval,
    Train,
}

impl FromStr for BnMode {
    type Err = String;
    fn from_str(s: &str) -> Result<BnMode, String> {
        match s {
            "eval" => Ok(BnMode::Eval),
            "train" => Ok(BnMode::Train),
            _ => Err(format!("unknown batch-norm mode '{s}'; expected eval or train")),
        }
    }
}

impl fmt::Display for BnMode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            BnMode::Eval => "eval",
            BnMode::Train => "train",
        })
    }
}

/// The attacks `mocse eval --attack` runs (reports list them in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// Projected gradient descent on the cross-entropy (Madry et al.).
    Pgd,
    /// APGD on the cross-entropy (Croce & Hein).
    ApgdCe,
    /// APGD on the difference-of-logits ratio, which the scale of the scores cannot mask.
    ApgdDlr,
    /// APGD on the targeted DLR, towards each of the 9 classes ranked highest after the label.
    ApgdT,
    /// AutoAttack without its black-box parts: APGD-CE, then APGD-T on the images still robust.
    AaLite,
}

impl AttackKind {
    pub const ALL: [AttackKind; 5] =
        [AttackKind::Pgd, AttackKind::ApgdCe, AttackKind::ApgdDlr, AttackKind::ApgdT, AttackKind::AaLite];

    /// APGD attacks choose their own step size (2 eps, halved at checkpoints).
    pub fn is_apgd(self) -> bool {
        self != AttackKind::Pgd
    }

    /// The gradient steps of a run when `--steps` is not given: 20 for PGD, 100 for APGD (as
    /// AutoAttack).
    pub fn default_steps(self) -> usize {
        if self.is_apgd() { 100 } else { 20 }
    }
}

impl FromStr for AttackKind {
    type Err = String;
    fn from_str(s: &str) -> Result<AttackKind, String> {
        AttackKind::ALL.into_iter().find(|k| k.to_string() == s).ok_or_else(|| {
            format!("unknown attack '{s}'; expected pgd, apgd-ce, apgd-dlr, apgd-t or aa-lite")
        })
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            AttackKind::Pgd => "pgd",
            AttackKind::ApgdCe => "apgd-ce",
            AttackKind::ApgdDlr => "apgd-dlr",
            AttackKind::ApgdT => "apgd-t",
            AttackKind::AaLite => "aa-lite",
        })
    }
}

/// A perturbation size or step: a number (`0.03`) or a fraction (`8/255`), in pixel units of
/// [0, 1].
pub fn parse_pixel_amount(s: &str) -> Result<f32> {
    let value = match s.split_once('/') {
        Some((num, den)) => {
            let (num, den): (f64, f64) = (num.trim().parse()?, den.trim().parse()?);
            ensure!(den != 0.0, "'{s}': division by zero");
            num / den
        }
        None => s.trim().parse::<f64>()?,
    };
    ensure!(value.is_finite(), "'{s}' is not a finite number");
    Ok(value as f32)
}

/// Projected gradient descent (Madry et al.): `restarts` runs of `steps` signed (L-infinity) or
/// normalised (L2) gradient steps of size `alpha` from a random point of the eps-ball (or from
/// the image itself without `random_start`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgdConfig {
    pub norm: Norm,
    pub eps: f32,
    pub alpha: f32,
    pub steps: usize,
    pub restarts: usize,
    pub random_start: bool,
    pub bn: BnMode,
    pub seed: u64,
}

impl PgdConfig {
    /// Refuses settings that cannot be meant: a negative or over-large eps, no steps, a zero
    /// step size, no restarts.
    pub fn validate(&self) -> Result<()> {
        let eps_limit = match self.norm {
            Norm::Linf => 1.0,
            // The diameter of [0, 1]^(32*32*3).
            Norm::L2 => (32.0f32 * 32.0 * 3.0).sqrt(),
        };
        ensure!(
            self.eps.is_finite() && (0.0..=eps_limit).contains(&self.eps),
            "--eps must be between 0 and {eps_limit} for the {} norm (pixels are in [0, 1]), got {}",
            self.norm,
            self.eps
        );
        ensure!(self.steps >= 1, "--steps must be at least 1");
        // At eps 0 nothing can move, so a zero step (eps / 4, 2 eps) is no mistake.
        ensure!(
            self.alpha.is_finite() && (self.alpha > 0.0 || (self.eps == 0.0 && self.alpha == 0.0)),
            "--alpha must be above 0, got {}",
            self.alpha
        );
        ensure!(self.restarts >= 1, "--restarts must be at least 1");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_amounts_read_as_fractions_or_numbers() {
        assert_eq!(parse_pixel_amount("8/255").unwrap(), (8.0f64 / 255.0) as f32);
        assert_eq!(parse_pixel_amount("0.5").unwrap(), 0.5);
        for bad in ["8/0", "x", "1/y", "inf", ""] {
            assert!(parse_pixel_amount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_that_cannot_be_meant_are_refused() {
        let ok = PgdConfig {
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
            alpha: 2.0 / 255.0,
            steps: 10,
            restarts: 1,
            random_start: true,
            bn: BnMode::Eval,
            seed: 0,
        };
        assert!(ok.validate().is_ok());
        assert!(PgdConfig { eps: 0.0, ..ok }.validate().is_ok());
        assert!(PgdConfig { eps: 0.0, alpha: 0.0, ..ok }.validate().is_ok());
        for (bad, says) in [
            (PgdConfig { eps: -0.1, ..ok }, "--eps"),
            (PgdConfig { eps: 1.5, ..ok }, "--eps"),
            (PgdConfig { steps: 0, ..ok }, "--steps"),
            (PgdConfig { alpha: 0.0, ..ok }, "--alpha"),
            (PgdConfig { restarts: 0, ..ok }, "--restarts"),
        ] {
            assert!(bad.validate().unwrap_err().to_string().contains(says), "{bad:?}");
        }
        assert!(PgdConfig { norm: Norm::L2, eps: 1.5, ..ok }.validate().is_ok());
        assert!("l3".parse::<Norm>().is_err() && "batch".parse::<BnMode>().is_err());
    }
}
