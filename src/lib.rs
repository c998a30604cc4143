//! mocse: Pre-activation ResNet-18 and its Mixture of Class-Specific Experts, trained and
//! evaluated for robustness research.

pub mod atomic_file;
pub mod attack;
pub mod autograd;
pub mod bench;
pub mod cache_dir;
pub mod checkpoint;
pub mod compare;
pub mod corrupt;
pub mod curves;
pub mod data;
pub mod device;
pub mod diagnostics;
pub mod dir_lock;
pub mod eval;
pub mod eval_job;
pub mod fault;
pub mod gpu;
pub mod input_file;
pub mod mapped_file;
pub mod nn;
pub mod npy;
pub mod ops;
pub mod output_paths;
pub mod parallel;
pub mod precision;
pub mod predictions;
pub mod progress;
pub mod raster;
pub mod reproduce;
pub mod rng;
pub mod robustness;
pub mod selftest;
pub mod step_graph;
pub mod tensor;
pub mod train;

/// The version and source commit of this build, recorded in every run and report.
pub const BUILD: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("MOCSE_COMMIT"), ")");
