//! One module per op family. Each holds the op's forward and backward on every device and the
//! `Tape` method that records it, so an op can be read and reviewed on its own.

pub mod aggregate;
pub mod batchnorm;
pub mod bn_relu_conv;
pub mod conv;
pub mod conv_direct;
pub mod conv_winograd;
pub mod elementwise;
pub mod linear;
pub mod loss;
pub mod normalize;
pub mod pool;
pub mod sgd;

#[cfg(test)]
pub(crate) mod gradcheck;
