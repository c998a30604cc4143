//! mocse: Pre-activation ResNet-18 and its Mixture of Class-Specific Experts, trained and
//! evaluated for robustness research.

pub mod autograd;
pub mod device;
pub mod ops;
pub mod parallel;
pub mod tensor;
